// The attention page table of one (sequence, KV head) row: its sink pages,
// its selected pages and its window pages, in that order (the partial last
// page stays last), appended to page_table.wgsl and page_select_table.wgsl.
//
// Selected pages come from top-k (`fresh_page`, this step's query) or from
// the previous step's selection (`spec`), per head by the correction flag
// (`row_flag`). A page that is not resident becomes a hole (EMPTY), which
// attention skips. When every candidate fits the budget the candidates
// themselves are attended. Under a sliding window the sink pages before the
// window are left out and candidates start at the window's first page
// (attention masks the tokens before the window within that page).
//
// The includer declares `table_params: TableParams`, `table_seq` ([2b] =
// (sinkFrom, sinkCount, windowStart, numPages), [2b + 1] = (candidateStart,
// 0, 0, 0)), `spec`, `residency`, `best`, the outputs `table`, `pages` and
// `hits`, and `fn fresh_page(i: u32) -> u32` and `fn row_flag(bh: u32) -> u32`.

const EMPTY: u32 = 0xffffffffu;

struct TableParams {
  batch: u32,
  kv_heads: u32,
  k: u32, // selected pages per head
  max_pages: u32, // page ids per sequence (rows of `residency`)
  max_entries: u32, // row length of `table` and `pages`
  slots_per_seq: u32,
  sink_pages: u32, // S: sink slots come first
  window_pages: u32, // W: the window ring follows
  identity: u32, // 1: every page is resident in slot = page id (all-on-GPU policies)
  use_flags: u32, // 1: flags pick fresh (1) or spec (0) per head; 0: always fresh
  use_best: u32, // 1: a head whose flag is 1 attends `best` (its resident-only top-k)
  _pad1: u32,
}

fn home_slot(p: u32) -> u32 {
  if (table_params.identity == 1u || p < table_params.sink_pages) {
    return p;
  }
  return table_params.sink_pages + (p - table_params.sink_pages) % table_params.window_pages;
}

// Local slot of a selected or candidate page, or EMPTY when it is not resident.
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

// Writes row `bh` (of sequence `b`) of `table`, `pages` and `hits`.
fn build_table_row(b: u32, bh: u32) {
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
    // Flags: 0 speculation, 1 corrected (fresh, or best with use_best), 2 fresh.
    let flag = select(1u, row_flag(bh), table_params.use_flags == 1u);
    let use_fresh = flag != 0u;
    let use_best = flag == 1u && table_params.use_best == 1u;
    for (var i = 0u; i < k; i++) {
      var p = spec[bh * k + i];
      if (use_fresh) {
        p = fresh_page(bh * k + i);
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
