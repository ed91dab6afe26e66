// Merges the per-split partial results of paged_attention.wgsl (flash-decoding
// style): one workgroup per (query head, sequence); sequences with a single
// split were finished by the split kernel and are skipped.

override NUM_QUERY_HEADS: u32; // Hq
override NUM_COLS: u32; // HEAD_DIM / 4
override WORKGROUP_SIZE: u32; // at most NUM_COLS

struct Params {
  batch: u32,
  max_pages: u32,
  pages_per_split: u32,
  max_splits: u32,
  table_offset: u32,
  ml_offset: u32,
  scale: f32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> seq_meta: array<u32>; // [b][4] = (pages, last, splits, 0)
@group(0) @binding(2) var<storage, read> partial: array<vec4f>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4f>; // [b][Hq][d/4]
@group(0) @binding(4) var<storage, read_write> lse: array<f32>; // [b][Hq]

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let hq = wid.y * NUM_QUERY_HEADS + wid.x;
  let num_splits = seq_meta[wid.y * 4u + 2u];
  if (num_splits <= 1u) { return; }
  let e0 = hq * params.max_splits;
  var m = -3.0e38;
  for (var s = 0u; s < num_splits; s++) { m = max(m, partial[params.ml_offset + e0 + s].x); }
  var l = 0.0;
  for (var s = 0u; s < num_splits; s++) {
    let ml = partial[params.ml_offset + e0 + s];
    l += ml.y * exp(ml.x - m);
  }
  for (var c = lid; c < NUM_COLS; c += WORKGROUP_SIZE) {
    var a = vec4f(0.0);
    for (var s = 0u; s < num_splits; s++) {
      let w = exp(partial[params.ml_offset + e0 + s].x - m);
      a += w * partial[(e0 + s) * NUM_COLS + c];
    }
    out[hq * NUM_COLS + c] = a / l;
  }
  if (lid == 0u) { lse[hq] = m + log(l); }
}
