// Appended to page_select.wgsl (with group_similarity.wgsl) to decide the
// correction in the same dispatch: the first lane runs the check of the
// workgroup's row on q (already in q_sh) and q_prev, as query_similarity.wgsl
// does (storing q as q_prev with params.store_q); FLAGGED uses the flag.

@group(0) @binding(6) var<storage, read_write> flags: array<u32>; // [b][Hkv]
// Written only with params.store_q, each element after it was read.
@group(0) @binding(8) var<storage, read_write> q_prev: array<f32>; // [b][Hq][d]
@group(0) @binding(9) var<storage, read_write> cosine: array<f32>; // [b][Hq]
@group(0) @binding(10) var<storage, read_write> group_mean: array<f32>; // [b][Hkv]

var<workgroup> similarity_flag: u32;

fn q_now_at(g: u32, head: u32, c: u32) -> f32 {
  return q_sh[g * (HEAD_DIM / 4u) + c / 4u][c % 4u];
}

fn check_similarity(t: u32, b: u32, kvh: u32, row: u32) {
  if (t == 0u) {
    similarity_flag = group_similarity(row);
  }
}

fn row_flag(row: u32) -> u32 {
  return similarity_flag;
}
