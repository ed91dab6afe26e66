// Attention page tables built on the GPU: one invocation per (sequence, KV
// head) writes the slots of its sink pages, of its selected pages and of its
// window pages, in that order (the partial last page stays last).
//
// Selected pages come from top-k (`fresh`, this step's query) or from the
// previous step's selection (`spec`), per head by the correction flag. A page
// that is not resident becomes a hole (EMPTY), which attention skips. When
// every candidate fits the budget the candidates themselves are attended.
// Under a sliding window the sink pages before the window are left out and
// candidates start at the window's first page (attention masks the tokens
// before the window within that page).

const EMPTY: u32 = 0xffffffffu;

struct Params {
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

@group(0) @binding(0) var<uniform> params: Params;
// [2b] = (sinkFrom, sinkCount, windowStart, numPages), [2b + 1] = (candidateStart, 0, 0, 0)
@group(0) @binding(1) var<storage, read> seq: array<vec4u>;
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

fn home_slot(p: u32) -> u32 {
  if (params.identity == 1u || p < params.sink_pages) {
    return p;
  }
  return params.sink_pages + (p - params.sink_pages) % params.window_pages;
}

// Local slot of a selected or candidate page, or EMPTY when it is not resident.
fn pool_slot(bh: u32, p: u32) -> u32 {
  if (params.identity == 1u) {
    return p;
  }
  let r = residency[bh * params.max_pages + p];
  if (r == EMPTY) {
    return EMPTY;
  }
  return params.sink_pages + params.window_pages + r;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let bh = gid.x;
  if (bh >= params.batch * params.kv_heads) {
    return;
  }
  let b = bh / params.kv_heads;
  let s = seq[2u * b];
  let candidate_start = seq[2u * b + 1u].x;
  let sink_count = s.y;
  let window_start = s.z;
  let num_pages = s.w;
  let base = b * params.slots_per_seq;
  let row = bh * params.max_entries;
  var n = 0u;
  var resident = 0u;
  for (var p = s.x; p < sink_count; p++) {
    table[row + n] = base + home_slot(p);
    pages[row + n] = p;
    n++;
  }
  if (window_start - candidate_start <= params.k) {
    for (var p = candidate_start; p < window_start; p++) {
      let slot = pool_slot(bh, p);
      table[row + n] = select(base + slot, EMPTY, slot == EMPTY);
      pages[row + n] = select(p, EMPTY, slot == EMPTY);
      resident += select(1u, 0u, slot == EMPTY);
      n++;
    }
  } else {
    // Flags: 0 speculation, 1 corrected (fresh, or best with use_best), 2 fresh.
    let flag = select(1u, flags[bh], params.use_flags == 1u);
    let use_fresh = flag != 0u;
    let use_best = flag == 1u && params.use_best == 1u;
    for (var i = 0u; i < params.k; i++) {
      var p = spec[bh * params.k + i];
      if (use_fresh) {
        p = fresh[bh * params.k + i];
      }
      var slot = EMPTY;
      if (p < params.max_pages) {
        slot = pool_slot(bh, p);
      }
      resident += select(1u, 0u, slot == EMPTY);
      if (use_best) {
        p = best[bh * params.k + i];
        slot = EMPTY;
        if (p < params.max_pages) {
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
