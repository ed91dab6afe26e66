// Attention page tables built on the GPU: one invocation per (sequence, KV
// head) writes its row (page_table_row.wgsl, appended by the module).

@group(0) @binding(0) var<uniform> table_params: TableParams;
@group(0) @binding(1) var<storage, read> table_seq: array<vec4u>;
@group(0) @binding(2) var<storage, read> fresh: array<u32>; // [b][h][k]
@group(0) @binding(3) var<storage, read> spec: array<u32>; // [b][h][k]
@group(0) @binding(4) var<storage, read> flags: array<u32>; // [b][h]
// [b][h][max_pages]: local pool slot of a page (after the S + W home slots), or EMPTY
@group(0) @binding(5) var<storage, read> residency: array<u32>;
@group(0) @binding(6) var<storage, read_write> table: array<u32>; // [b][h][max_entries] slots
@group(0) @binding(7) var<storage, read_write> pages: array<u32>; // [b][h][max_entries] page ids
// [b][h] pages of the head's fresh selection (or of its speculation, when
// that is what it attends) that were resident
@group(0) @binding(8) var<storage, read_write> hits: array<u32>;
@group(0) @binding(9) var<storage, read> best: array<u32>; // [b][h][k] resident-only top-k

fn fresh_page(i: u32) -> u32 {
  return fresh[i];
}

fn row_flag(bh: u32) -> u32 {
  return flags[bh];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let bh = gid.x;
  if (bh >= table_params.batch * table_params.kv_heads) {
    return;
  }
  build_table_row(bh / table_params.kv_heads, bh);
}
