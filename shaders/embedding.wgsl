// Embedding lookup: out[t][c] = table[tokens[t]][c] for the tokens whose row
// lies in this part of the table (a large table is split into parts that each
// fit one storage binding; one dispatch per part).
struct Params {
  tokens: u32,
  dim: u32,
  row_start: u32,
  part_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let i = (wid.x + wid.y * nwg.x) * 64u + lid;
  if (i >= p.tokens * p.dim) {
    return;
  }
  let t = i / p.dim;
  let c = i - t * p.dim;
  let token = tokens[t];
  if (token < p.row_start || token - p.row_start >= p.part_rows) {
    return;
  }
  out[i] = load_weight((token - p.row_start) * p.dim + c);
}
