// GQA pooling and top-k of one (sequence, KV head) per workgroup.
// 1. pooled score per candidate page from the GROUP raw scores
//    (softmax-mean: softmax over the candidates per query head, with the
//    logits scaled by `scale`, then the mean over the group; mean; max),
//    stored as an order-preserving u32 key (NaN lowest);
// 2. radix select, 4 bits a sweep, of the k-th largest composite key
//    (key, inverted candidate index): 8 passes on the key, then, only when
//    the k-th key is tied, 8 passes on the inverted index so that the lowest
//    indices win the tie;
// 3. the k winners are appended to a list and each one's rank (descending
//    key, ascending index) is counted over the list: `selected[rank]`.
// Every thread handles candidates t, t + WG, ... in all phases, so keys are
// only read back by their writer until the storage barrier before step 3.

override GROUP: u32; // query heads per KV head
override POOLING: u32; // 0: softmax-mean, 1: mean, 2: max

const WG: u32 = 256u;
const SIDE: u32 = 16u; // WG = SIDE * SIDE, for the two-level reductions

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

var<workgroup> red: array<f32, WG>;
var<workgroup> red2: array<f32, SIDE>;
var<workgroup> stats: array<vec2<f32>, GROUP>; // (max logit, 1 / sum of exp) per query head
var<workgroup> hist: array<atomic<u32>, 256>; // 16 passes x 16 digits
var<workgroup> winner_count: atomic<u32>;
var<workgroup> tied: u32;

const NEG_INF: f32 = -3.4028234663852886e38; // lowest finite f32: no inf literal in WGSL

// Order-preserving map of f32 to u32 (larger float, larger key); -0 counts
// as +0 so that equal floats give equal keys, NaN maps below everything.
fn order_key(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return 0u;
  }
  if (u == 0x80000000u) {
    return 0x80000000u;
  }
  return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}

// Two-level reductions: 2 barriers each. `red2` is rewritten only after the
// first barrier of the next call, which every reader of this call has passed.
fn reduce_max(t: u32, v: f32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  if (t < SIDE) {
    var m = red[t * SIDE];
    for (var i = 1u; i < SIDE; i++) {
      m = max(m, red[t * SIDE + i]);
    }
    red2[t] = m;
  }
  workgroupBarrier();
  var m = red2[0];
  for (var i = 1u; i < SIDE; i++) {
    m = max(m, red2[i]);
  }
  return m;
}

fn reduce_sum(t: u32, v: f32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  if (t < SIDE) {
    var s = 0.0;
    for (var i = 0u; i < SIDE; i++) {
      s += red[t * SIDE + i];
    }
    red2[t] = s;
  }
  workgroupBarrier();
  var s = 0.0;
  for (var i = 0u; i < SIDE; i++) {
    s += red2[i];
  }
  return s;
}

// Picks the digit (15 down to 0) holding the `rem`-th largest element of the
// sweep's histogram; returns (digit, rem within that digit).
fn pick_digit(sweep: u32, rem_in: u32) -> vec2<u32> {
  var rem = rem_in;
  var d = 15u;
  loop {
    let c = atomicLoad(&hist[sweep * 16u + d]);
    if (rem <= c || d == 0u) {
      break;
    }
    rem -= c;
    d--;
  }
  return vec2<u32>(d, rem);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3u) {
  let kvh = wg.x;
  let b = wg.y;
  let seq = seqs[b];
  let count = seq.z;
  let k = params.k;
  let head0 = (b * params.num_kv_heads + kvh) * GROUP;
  let kbase = (b * params.num_kv_heads + kvh) * params.max_count;
  let obase = (b * params.num_kv_heads + kvh) * k;

  atomicStore(&hist[t], 0u);
  if (t == 0u) {
    atomicStore(&winner_count, 0u);
  }

  // 1. Softmax statistics per query head, then the pooled keys.
  if (POOLING == 0u) {
    for (var g = 0u; g < GROUP; g++) {
      let row = (head0 + g) * params.max_count;
      var m = NEG_INF;
      for (var n = t; n < count; n += WG) {
        m = max(m, scores[row + n]);
      }
      m = reduce_max(t, m);
      var s = 0.0;
      for (var n = t; n < count; n += WG) {
        s += exp((scores[row + n] - m) * params.scale);
      }
      s = reduce_sum(t, s);
      if (t == 0u) {
        stats[g] = vec2<f32>(m, 1.0 / s);
      }
    }
  }
  workgroupBarrier();
  let inv_group = 1.0 / f32(GROUP);
  for (var n = t; n < count; n += WG) {
    var pooled: f32;
    if (POOLING == 0u) {
      pooled = 0.0;
      for (var g = 0u; g < GROUP; g++) {
        let st = stats[g];
        pooled += exp((scores[(head0 + g) * params.max_count + n] - st.x) * params.scale) * st.y;
      }
      pooled *= inv_group;
    } else if (POOLING == 1u) {
      pooled = 0.0;
      for (var g = 0u; g < GROUP; g++) {
        pooled += scores[(head0 + g) * params.max_count + n];
      }
      pooled *= inv_group;
    } else {
      pooled = scores[head0 * params.max_count + n];
      for (var g = 1u; g < GROUP; g++) {
        pooled = max(pooled, scores[(head0 + g) * params.max_count + n]);
      }
    }
    keys[kbase + n] = order_key(pooled);
  }

  // 2. Radix select on the key.
  var prefix = 0u;
  var mask = 0u;
  var rem = k;
  for (var sweep = 0u; sweep < 8u; sweep++) {
    let shift = 28u - 4u * sweep;
    for (var n = t; n < count; n += WG) {
      let key = keys[kbase + n];
      if ((key & mask) == prefix) {
        atomicAdd(&hist[sweep * 16u + ((key >> shift) & 15u)], 1u);
      }
    }
    workgroupBarrier();
    let pick = pick_digit(sweep, rem);
    prefix |= pick.x << shift;
    mask |= 15u << shift;
    rem = pick.y;
  }
  let threshold = prefix;
  // Elements equal to the threshold: the last sweep's bin count.
  if (t == 0u) {
    tied = select(0u, 1u, rem < atomicLoad(&hist[7u * 16u + (threshold & 15u)]));
  }
  var last_index = 0xffffffffu;
  if (workgroupUniformLoad(&tied) != 0u) {
    // Among the keys equal to the threshold take the `rem` lowest indices:
    // radix select on the inverted index.
    var iprefix = 0u;
    var imask = 0u;
    for (var sweep = 8u; sweep < 16u; sweep++) {
      let shift = 28u - 4u * (sweep - 8u);
      for (var n = t; n < count; n += WG) {
        let inv = ~n;
        if (keys[kbase + n] == threshold && (inv & imask) == iprefix) {
          atomicAdd(&hist[sweep * 16u + ((inv >> shift) & 15u)], 1u);
        }
      }
      workgroupBarrier();
      let pick = pick_digit(sweep, rem);
      iprefix |= pick.x << shift;
      imask |= 15u << shift;
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
