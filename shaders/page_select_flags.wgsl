// Appended to page_select.wgsl when the correction flags are given: FLAGGED
// reads them.

@group(0) @binding(6) var<storage, read> flags: array<u32>; // [b][Hkv] when FLAGGED

fn check_similarity(t: u32, b: u32, kvh: u32, row: u32) {}

fn row_flag(row: u32) -> u32 {
  return flags[row];
}
