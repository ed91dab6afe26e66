// Appends one token's K and V rows per sequence into an f16 NHD slot cache
// viewed as u32 words (two halves each), so devices without shader-f16 can
// hold f16 KV. Offsets and lengths are in words.

struct Params {
  row_words: u32, // Hkv * d / 2
  batch: u32,
  row_base: u32, // first row of this dispatch
  head_len: u32, // words per head of a row (the whole row when its heads are contiguous)
  head_stride: u32, // words between heads in the cache (unused when head_len is the row)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> k_new: array<f32>;
@group(0) @binding(2) var<storage, read> v_new: array<f32>;
@group(0) @binding(3) var<storage, read> dst_offsets: array<u32>; // word offset per row
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x;
  let b = params.row_base + id.y;
  if (i >= params.row_words || b >= params.batch) { return; }
  let dst = dst_offsets[b] + (i / params.head_len) * params.head_stride + i % params.head_len;
  let src = 2u * (b * params.row_words + i);
  k_cache[dst] = pack2x16float(vec2f(k_new[src], k_new[src + 1u]));
  v_cache[dst] = pack2x16float(vec2f(v_new[src], v_new[src + 1u]));
}
