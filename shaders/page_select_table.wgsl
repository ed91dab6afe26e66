// Appended to page_select.wgsl to build the attention page table of the
// workgroup's (sequence, KV head) in the same dispatch, as page_table.wgsl
// does (its comments say what each part means): `selected` is this step's
// `fresh`, `best` its resident-only top-k, and `row_flag` the row's flag.

const EMPTY: u32 = 0xffffffffu;

struct TableParams {
  batch: u32,
  kv_heads: u32,
  k: u32,
  max_pages: u32,
  max_entries: u32,
  slots_per_seq: u32,
  sink_pages: u32,
  window_pages: u32,
  identity: u32,
  use_flags: u32,
  use_best: u32,
  _pad1: u32,
}

@group(0) @binding(11) var<uniform> table_params: TableParams;
@group(0) @binding(12) var<storage, read> table_seq: array<vec4u>;
@group(0) @binding(13) var<storage, read> spec: array<u32>; // [b][h][k]
@group(0) @binding(14) var<storage, read> residency: array<u32>; // [b][h][max_pages]
@group(0) @binding(15) var<storage, read_write> table: array<u32>; // [b][h][max_entries]
@group(0) @binding(16) var<storage, read_write> pages: array<u32>; // [b][h][max_entries]
@group(0) @binding(17) var<storage, read_write> hits: array<u32>; // [b][h]

fn home_slot(p: u32) -> u32 {
  if (table_params.identity == 1u || p < table_params.sink_pages) {
    return p;
  }
  return table_params.sink_pages + (p - table_params.sink_pages) % table_params.window_pages;
}

fn pool_slot(bh: u32, p: u32) -> u32 {
  if (table_params.identity == 1u) {
    return p;
  }
  let r = residency[bh * table_params.max_pages + p];
  if (r == EMPTY) {
    return EMPTY;
  }
  return table_params.sink_pages + table_params.window_pages + r;
}

fn finish_row(t: u32, b: u32, bh: u32) {
  // The lanes' writes of `selected` and `best` become visible to lane 0.
  storageBarrier();
  if (t != 0u) {
    return;
  }
  let s = table_seq[2u * b];
  let candidate_start = table_seq[2u * b + 1u].x;
  let sink_count = s.y;
  let window_start = s.z;
  let num_pages = s.w;
  let k = table_params.k;
  let base = b * table_params.slots_per_seq;
  let row = bh * table_params.max_entries;
  var n = 0u;
  var resident = 0u;
  for (var p = s.x; p < sink_count; p++) {
    table[row + n] = base + home_slot(p);
    pages[row + n] = p;
    n++;
  }
  if (window_start - candidate_start <= k) {
    for (var p = candidate_start; p < window_start; p++) {
      let slot = pool_slot(bh, p);
      table[row + n] = select(base + slot, EMPTY, slot == EMPTY);
      pages[row + n] = select(p, EMPTY, slot == EMPTY);
      resident += select(1u, 0u, slot == EMPTY);
      n++;
    }
  } else {
    let flag = select(1u, row_flag(bh), table_params.use_flags == 1u);
    let use_fresh = flag != 0u;
    let use_best = flag == 1u && table_params.use_best == 1u;
    for (var i = 0u; i < k; i++) {
      var p = spec[bh * k + i];
      if (use_fresh) {
        p = selected[bh * k + i];
      }
      var slot = EMPTY;
      if (p < table_params.max_pages) {
        slot = pool_slot(bh, p);
      }
      resident += select(1u, 0u, slot == EMPTY);
      if (use_best) {
        p = best[bh * k + i];
        slot = EMPTY;
        if (p < table_params.max_pages) {
          slot = pool_slot(bh, p);
        }
      }
      table[row + n] = select(base + slot, EMPTY, slot == EMPTY);
      pages[row + n] = select(p, EMPTY, slot == EMPTY);
      n++;
    }
  }
  for (var p = window_start; p < num_pages; p++) {
    table[row + n] = base + home_slot(p);
    pages[row + n] = p;
    n++;
  }
  hits[bh] = resident;
}
