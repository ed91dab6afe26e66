// Page selection of one (sequence, KV head) per workgroup in one dispatch,
// when its candidates fit workgroup memory (at most MAX_COUNT): the raw
// scores of every query head of the group (page_score.wgsl's sum over
// channels of max(q * lower, q * upper), in the same order), the pooled keys
// (page_pool.wgsl, appended), and each candidate's rank by counting the keys
// that beat it (larger, or equal at a lower index). With MASKED, also the
// resident-only top-k of the same keys into `best` (non-resident pages get
// the lowest key; resident ones rank among themselves), for every KV head
// or, with FLAGGED, the flagged ones.
// Replaces page_score + page_topk (+ the resident-only page_topk).
// The selection module appends page_pool.wgsl and one of
// page_select_flags.wgsl (FLAGGED reads the given `flags`) or
// page_select_similarity.wgsl (the workgroup first computes its KV head's
// correction flag from q and the previous q, as query_similarity.wgsl does,
// and writes the flag, the group mean and the cosines), and one of
// page_select_no_table.wgsl or page_select_table.wgsl (lane 0 then builds
// the row's attention page table as page_table.wgsl does, from this
// dispatch's selections), and one of page_select_no_append.wgsl or
// page_select_append.wgsl (the workgroup first stores its KV head's part of
// the step's new K and V rows).

override HEAD_DIM: u32; // d, a multiple of 4
override GROUP: u32; // query heads per KV head
override POOLING: u32; // 0: softmax-mean, 1: mean, 2: max
override MAX_COUNT: u32; // most candidates per (sequence, KV head)
override MASKED: bool = false;
override MASK_STRIDE: u32 = 0u; // logical pages per row of `mask`
override FLAGGED: bool = false;

// Lanes: 16 for small heads (a few candidates per lane, and each barrier
// costs less where barriers are emulated), 64 where scoring dominates.
override WG: u32 = 64u;
override SIDE: u32 = 8u; // WG = SIDE * SIDE

struct Params {
  num_kv_heads: u32,
  max_count: u32, // unused here (page_topk's candidate stride)
  k: u32,
  scale: f32, // logit scale inside the softmax
  tau: f32, // correction threshold (page_select_similarity.wgsl)
  store_q: u32, // 1: the check stores q as q_prev (page_select_similarity.wgsl)
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// Per sequence: (pageOffset, candidateStart, candidate count, unused).
@group(0) @binding(1) var<storage, read> seqs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>; // [b][Hq][d/4]
@group(0) @binding(3) var<storage, read> summaries: array<vec4<f32>>; // [page][Hkv][2][d/4]
@group(0) @binding(4) var<storage, read_write> selected: array<u32>; // [b][Hkv][k]
@group(0) @binding(5) var<storage, read> mask: array<u32>; // [b][Hkv][MASK_STRIDE] when MASKED
@group(0) @binding(7) var<storage, read_write> best: array<u32>; // [b][Hkv][k] when MASKED

var<workgroup> q_sh: array<vec4<f32>, GROUP * HEAD_DIM / 4u>;
var<workgroup> raw: array<f32, GROUP * MAX_COUNT>; // [g][candidate]
var<workgroup> ranked_keys: array<u32, MAX_COUNT>;
var<workgroup> skip_head: u32;
// MASKED: the candidates that are resident and have a key above the lowest
// (workgroup memory starts zeroed, so the count needs no reset).
var<workgroup> resident_list: array<u32, MAX_COUNT>;
var<workgroup> resident_count: atomic<u32>;

fn raw_score(g: u32, n: u32) -> f32 {
  return raw[g * MAX_COUNT + n];
}

fn listed(j: u32) -> vec2<u32> {
  let n = resident_list[j];
  return vec2<u32>(ranked_keys[n], n);
}

// Writes first + n for each of the `count` candidates n that ranks below k.
fn write_top_k(t: u32, count: u32, k: u32, first: u32, out_base: u32) {
  for (var n = t; n < count; n += WG) {
    let rank = key_rank(n, count);
    if (rank < k) {
      selected[out_base + rank] = first + n;
    }
  }
}

// The resident-only top-k into `best`, once every other candidate has the
// lowest key: only the `listed` candidates can beat a listed one, so they
// rank among themselves (R x R comparisons, not count x count); the
// lowest-key candidates rank after them in index order, and matter only
// when fewer than k are listed (rare: one thread fills them in, as
// page_topk.wgsl does).
fn write_resident_top_k(t: u32, listed: u32, count: u32, k: u32, first: u32, out_base: u32) {
  for (var i = t; i < listed; i += WG) {
    let n = resident_list[i];
    let rank = listed_rank(ranked_keys[n], n, listed);
    if (rank < k) {
      best[out_base + rank] = first + n;
    }
  }
  if (t == 0u) {
    var rank = listed;
    for (var n = 0u; n < count && rank < k; n++) {
      if (ranked_keys[n] == 0u) {
        best[out_base + rank] = first + n;
        rank++;
      }
    }
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3u) {
  let kvh = wg.x;
  let b = wg.y;
  let seq = seqs[b];
  let count = seq.z;
  let k = params.k;
  let row = b * params.num_kv_heads + kvh;
  // The step's K and V rows, when the module appended page_select_append.wgsl.
  append_row(t, b, kvh);
  let v4 = HEAD_DIM / 4u;
  for (var i = t; i < GROUP * v4; i += WG) {
    q_sh[i] = q[row * GROUP * v4 + i];
  }
  workgroupBarrier();
  check_similarity(t, b, kvh, row);
  // 1. Raw scores: a candidate per thread, every query head of the group.
  for (var n = t; n < count; n += WG) {
    let sbase = ((seq.x + seq.y + n) * params.num_kv_heads + kvh) * 2u * v4;
    for (var g = 0u; g < GROUP; g++) {
      raw[g * MAX_COUNT + n] = 0.0;
    }
    for (var j = 0u; j < v4; j++) {
      let lo = summaries[sbase + j];
      let hi = summaries[sbase + v4 + j];
      for (var g = 0u; g < GROUP; g++) {
        let qv = q_sh[g * v4 + j];
        let m = max(qv * lo, qv * hi);
        raw[g * MAX_COUNT + n] += (m.x + m.y) + (m.z + m.w);
      }
    }
  }
  // 2. Pooled keys (each thread reads only the scores it wrote), then ranks.
  pool_stats(t, count);
  for (var n = t; n < count; n += WG) {
    ranked_keys[n] = pooled_key(n);
  }
  workgroupBarrier();
  write_top_k(t, count, k, seq.y, row * k);
  // 3. Resident-only top-k: once every thread has ranked, non-resident
  // pages drop to the lowest key.
  if (MASKED) {
    var skip = false;
    if (FLAGGED) {
      if (t == 0u) {
        skip_head = select(1u, 0u, row_flag(row) == 1u);
      }
      skip = workgroupUniformLoad(&skip_head) == 1u;
    } else {
      workgroupBarrier();
    }
    if (!skip) {
      for (var n = t; n < count; n += WG) {
        if (mask[row * MASK_STRIDE + seq.y + n] == 0xffffffffu) {
          ranked_keys[n] = 0u;
        } else if (ranked_keys[n] != 0u) {
          resident_list[atomicAdd(&resident_count, 1u)] = n;
        }
      }
      let listed = workgroupUniformLoad(&resident_count);
      write_resident_top_k(t, listed, count, k, seq.y, row * k);
    }
  }
  // 4. The page table, when the module appended page_select_table.wgsl.
  finish_row(t, b, row);
}
