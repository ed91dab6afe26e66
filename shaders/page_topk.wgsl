// GQA pooling and top-k of one (sequence, KV head) per workgroup (with
// page_pool.wgsl appended).
// 1. pooled score per candidate page from the GROUP raw scores
//    (softmax-mean: softmax over the candidates per query head, with the
//    logits scaled by `scale`, then the mean over the group; mean; max),
//    stored as an order-preserving u32 key (NaN lowest);
// 2. up to COUNTING_MAX candidates, each one's rank by counting the keys
//    that beat it (larger, or equal at a lower index); above it, a radix
//    select, 8 bits a round, of the k-th largest composite key
//    (key, inverted candidate index): 4 rounds on the key, then, only when
//    the k-th key is tied, 4 rounds on the inverted index so that the lowest
//    indices win the tie;
// 3. the k winners are appended to a list and each one's rank (descending
//    key, ascending index) is counted over the list: `selected[rank]`.
// Every thread handles candidates t, t + WG, ... in all phases, so keys are
// only read back by their writer until the storage barrier before step 3.

override GROUP: u32; // query heads per KV head
override POOLING: u32; // 0: softmax-mean, 1: mean, 2: max
// Resident-only top-k: candidates whose `mask` entry is 0xffffffff (not
// resident) get the lowest key, so they are picked only when fewer than k
// candidates are resident. Rows of `mask` are MASK_STRIDE logical pages.
// It runs after the unmasked pass of the same plan and takes the pooled
// keys that pass left in `keys`. Where at most COUNTING_MAX candidates are
// resident (the usual case: a head's resident pages are its slots), they
// rank among themselves by counting; otherwise the masked keys go through
// the radix select.
override MASKED: bool = false;
override MASK_STRIDE: u32 = 0u;
// With MASKED: only KV heads whose `flags` entry is 1 (corrected) run; the
// others leave their rows of `selected` as they were, as nothing reads them.
override FLAGGED: bool = false;

const WG: u32 = 64u;
const SIDE: u32 = 8u; // WG = SIDE * SIDE

struct Params {
  num_kv_heads: u32,
  max_count: u32, // candidate stride of `scores` and `keys`
  k: u32,
  scale: f32, // logit scale inside the softmax
}

@group(0) @binding(0) var<uniform> params: Params;
// Per sequence: (pageOffset, candidateStart, candidate count, unused).
@group(0) @binding(1) var<storage, read> seqs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scores: array<f32>; // [b][Hq][max_count]
@group(0) @binding(3) var<storage, read_write> keys: array<u32>; // [b][Hkv][max_count]
@group(0) @binding(4) var<storage, read_write> winners: array<u32>; // [b][Hkv][k]
@group(0) @binding(5) var<storage, read_write> selected: array<u32>; // [b][Hkv][k]
@group(0) @binding(6) var<storage, read> mask: array<u32>; // [b][Hkv][MASK_STRIDE] when MASKED
@group(0) @binding(7) var<storage, read> flags: array<u32>; // [b][Hkv] when FLAGGED

// Two 256-bin histograms, alternating between rounds so that clearing the
// next one needs no extra barrier; per round also the sums of 16 bins each.
var<workgroup> hist: array<atomic<u32>, 512>;
var<workgroup> group_sums: array<u32, 16>;
var<workgroup> winner_count: atomic<u32>;
var<workgroup> tied: u32;
var<workgroup> skip_head: u32;
// Up to COUNTING_MAX candidates, every candidate is ranked by counting
// instead (0: always radix select).
override COUNTING_MAX: u32 = 128u;
var<workgroup> ranked_keys: array<u32, max(COUNTING_MAX, 1u)>;
// MASKED: the resident candidates with a key above the lowest (their keys
// in `ranked_keys`), and how many there are.
var<workgroup> resident_list: array<u32, max(COUNTING_MAX, 1u)>;
var<workgroup> resident_count: atomic<u32>;

// The scores' row of the workgroup's first query head (raw_score).
var<private> head0: u32;

fn raw_score(g: u32, n: u32) -> f32 {
  return scores[(head0 + g) * params.max_count + n];
}

fn listed(j: u32) -> vec2<u32> {
  return vec2<u32>(ranked_keys[j], resident_list[j]);
}

// After a round's histogram: sums of its 16-bin groups, and the clearing of
// the other histogram for the next round.
fn finish_histogram(t: u32, round: u32) {
  let buf = (round % 2u) * 256u;
  if (t < 16u) {
    var s = 0u;
    for (var i = 0u; i < 16u; i++) {
      s += atomicLoad(&hist[buf + t * 16u + i]);
    }
    group_sums[t] = s;
  }
  let other = 256u - buf;
  for (var i = t; i < 256u; i += WG) {
    atomicStore(&hist[other + i], 0u);
  }
}

// Picks the digit (255 down to 0) of the round's histogram holding the
// `rem_in`-th largest counted element, first by 16-bin group, then by bin;
// returns (digit, rank within that digit).
fn pick_digit(round: u32, rem_in: u32) -> vec2<u32> {
  var rem = rem_in;
  var grp = 15u;
  loop {
    let c = group_sums[grp];
    if (rem <= c || grp == 0u) {
      break;
    }
    rem -= c;
    grp--;
  }
  let buf = (round % 2u) * 256u;
  var d = grp * 16u + 15u;
  loop {
    let c = atomicLoad(&hist[buf + d]);
    if (rem <= c || d == grp * 16u) {
      break;
    }
    rem -= c;
    d--;
  }
  return vec2<u32>(d, rem);
}

// MASKED, from the unmasked pass's keys: lists the resident candidates
// with a key above the lowest and, when at most COUNTING_MAX are listed,
// writes the top-k (listed ones by counting among themselves, then the
// lowest-key candidates in index order) and returns true. Otherwise it
// leaves the masked keys in `keys` for the radix select.
fn resident_top_k(t: u32, count: u32, k: u32, kbase: u32, obase: u32, first: u32, mbase: u32) -> bool {
  for (var n = t; n < count; n += WG) {
    let key = keys[kbase + n];
    if (key != 0u && mask[mbase + first + n] != 0xffffffffu) {
      let i = atomicAdd(&resident_count, 1u);
      if (i < COUNTING_MAX) {
        resident_list[i] = n;
        ranked_keys[i] = key;
      }
    }
  }
  let listed = workgroupUniformLoad(&resident_count);
  if (listed > COUNTING_MAX) {
    // Each thread masks the keys it reads in the radix rounds.
    for (var n = t; n < count; n += WG) {
      if (mask[mbase + first + n] == 0xffffffffu) {
        keys[kbase + n] = 0u;
      }
    }
    return false;
  }
  for (var i = t; i < listed; i += WG) {
    let n = resident_list[i];
    let rank = listed_rank(ranked_keys[i], n, listed);
    if (rank < k) {
      selected[obase + rank] = first + n;
    }
  }
  // Fewer listed than k (rare): one thread fills the rest in index order.
  if (t == 0u) {
    var rank = listed;
    for (var n = 0u; n < count && rank < k; n++) {
      if (keys[kbase + n] == 0u || mask[mbase + first + n] == 0xffffffffu) {
        selected[obase + rank] = first + n;
        rank++;
      }
    }
  }
  return true;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3u) {
  let kvh = wg.x;
  let b = wg.y;
  let seq = seqs[b];
  let count = seq.z;
  let k = params.k;
  head0 = (b * params.num_kv_heads + kvh) * GROUP;
  let kbase = (b * params.num_kv_heads + kvh) * params.max_count;
  let obase = (b * params.num_kv_heads + kvh) * k;
  if (MASKED && FLAGGED) {
    if (t == 0u) {
      skip_head = select(1u, 0u, flags[b * params.num_kv_heads + kvh] == 1u);
    }
    // A uniform load, so that the whole workgroup leaves together.
    if (workgroupUniformLoad(&skip_head) == 1u) {
      return;
    }
  }

  for (var i = t; i < 256u; i += WG) {
    atomicStore(&hist[i], 0u); // the first round's histogram
  }
  if (t == 0u) {
    atomicStore(&winner_count, 0u);
  }

  if (MASKED) {
    if (resident_top_k(t, count, k, kbase, obase, seq.y, (b * params.num_kv_heads + kvh) * MASK_STRIDE)) {
      return;
    }
  } else {
    // 1. Softmax statistics per query head, then the pooled keys.
    pool_stats(t, count);
    for (var n = t; n < count; n += WG) {
      let key = pooled_key(n);
      keys[kbase + n] = key;
      if (count <= COUNTING_MAX) {
        ranked_keys[n] = key;
      }
    }
  }

  // Few candidates: each one's rank is the count of keys that beat it
  // (larger, or equal at a lower index), with no radix rounds: far fewer
  // barriers and atomics, which a CPU adapter pays dearly for.
  if (count <= COUNTING_MAX) {
    workgroupBarrier();
    for (var n = t; n < count; n += WG) {
      let rank = key_rank(n, count);
      if (rank < k) {
        selected[obase + rank] = seq.y + n;
      }
    }
    return;
  }

  // 2. Radix select on the key.
  var prefix = 0u;
  var mask = 0u;
  var rem = k;
  for (var round = 0u; round < 4u; round++) {
    let shift = 24u - 8u * round;
    let buf = (round % 2u) * 256u;
    for (var n = t; n < count; n += WG) {
      let key = keys[kbase + n];
      if ((key & mask) == prefix) {
        atomicAdd(&hist[buf + ((key >> shift) & 255u)], 1u);
      }
    }
    workgroupBarrier();
    finish_histogram(t, round);
    workgroupBarrier();
    let pick = pick_digit(round, rem);
    prefix |= pick.x << shift;
    mask |= 255u << shift;
    rem = pick.y;
  }
  let threshold = prefix;
  // Keys equal to the threshold: the last round's bin count.
  if (t == 0u) {
    tied = select(0u, 1u, rem < atomicLoad(&hist[256u + (threshold & 255u)]));
  }
  var last_index = 0xffffffffu;
  if (workgroupUniformLoad(&tied) != 0u) {
    // Among the keys equal to the threshold take the `rem` lowest indices:
    // radix select on the inverted index.
    var iprefix = 0u;
    var imask = 0u;
    for (var round = 4u; round < 8u; round++) {
      let shift = 24u - 8u * (round - 4u);
      let buf = (round % 2u) * 256u;
      for (var n = t; n < count; n += WG) {
        let inv = ~n;
        if (keys[kbase + n] == threshold && (inv & imask) == iprefix) {
          atomicAdd(&hist[buf + ((inv >> shift) & 255u)], 1u);
        }
      }
      workgroupBarrier();
      finish_histogram(t, round);
      workgroupBarrier();
      let pick = pick_digit(round, rem);
      iprefix |= pick.x << shift;
      imask |= 255u << shift;
      rem = pick.y;
    }
    last_index = ~iprefix;
  }

  // 3. Winners, then their ranks.
  for (var n = t; n < count; n += WG) {
    let key = keys[kbase + n];
    if (key > threshold || (key == threshold && n <= last_index)) {
      let at = atomicAdd(&winner_count, 1u);
      if (at < k) {
        winners[obase + at] = n;
      }
    }
  }
  storageBarrier();
  for (var i = t; i < k; i += WG) {
    let ni = winners[obase + i];
    let ki = keys[kbase + ni];
    var rank = 0u;
    for (var j = 0u; j < k; j++) {
      let nj = winners[obase + j];
      let kj = keys[kbase + nj];
      if (kj > ki || (kj == ki && nj < ni)) {
        rank++;
      }
    }
    selected[obase + rank] = seq.y + ni;
  }
}
