// Appended to page_select.wgsl (with page_table_row.wgsl) to build the
// attention page table of the workgroup's (sequence, KV head) in the same
// dispatch: `selected` is this step's fresh selection, `best` its
// resident-only top-k, and `row_flag` the row's flag.

@group(0) @binding(11) var<uniform> table_params: TableParams;
@group(0) @binding(12) var<storage, read> table_seq: array<vec4u>;
@group(0) @binding(13) var<storage, read> spec: array<u32>; // [b][h][k]
@group(0) @binding(14) var<storage, read> residency: array<u32>; // [b][h][max_pages]
@group(0) @binding(15) var<storage, read_write> table: array<u32>; // [b][h][max_entries]
@group(0) @binding(16) var<storage, read_write> pages: array<u32>; // [b][h][max_entries]
@group(0) @binding(17) var<storage, read_write> hits: array<u32>; // [b][h]

fn fresh_page(i: u32) -> u32 {
  return selected[i];
}

fn finish_row(t: u32, b: u32, bh: u32) {
  // The lanes' writes of `selected` and `best` become visible to lane 0.
  storageBarrier();
  if (t == 0u) {
    build_table_row(b, bh);
  }
}
