// GQA pooling of raw page scores into order-preserving keys, and ranking
// by counting, appended to page_topk.wgsl and page_select.wgsl. The
// including shader declares `override GROUP` (query heads per KV head),
// `override POOLING` (0: softmax-mean, 1: mean, 2: max), `const WG` and
// `const SIDE` (WG = SIDE * SIDE, for the two-level reductions),
// `params.scale` (the logit scale inside the softmax), `fn raw_score(g, n)
// -> f32` (the raw score of candidate n for query head g of the group) and
// `var<workgroup> ranked_keys` (an array of at least `count` u32 keys) and
// `fn listed(j) -> vec2<u32>` (the key and candidate of entry j of its
// resident list).

const NEG_INF: f32 = -3.4028234663852886e38; // lowest finite f32: no inf literal in WGSL

var<workgroup> red: array<vec2<f32>, WG>;
var<workgroup> red2: array<vec2<f32>, SIDE>;
var<workgroup> stats: array<vec2<f32>, GROUP>; // (max logit, 1 / sum of exp) per query head

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

// Merges two partial softmax sums (max logit, sum of exp((x - max) * scale)).
fn merge_softmax(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  return vec2<f32>(m, a.y * exp((a.x - m) * params.scale) + b.y * exp((b.x - m) * params.scale));
}

// Two-level reduction of partial softmax sums: 2 barriers. `red2` is
// rewritten only after the first barrier of the next call, which every
// reader of this call has passed.
fn reduce_softmax(t: u32, v: vec2<f32>) -> vec2<f32> {
  red[t] = v;
  workgroupBarrier();
  if (t < SIDE) {
    var acc = red[t * SIDE];
    for (var i = 1u; i < SIDE; i++) {
      acc = merge_softmax(acc, red[t * SIDE + i]);
    }
    red2[t] = acc;
  }
  workgroupBarrier();
  var acc = red2[0];
  for (var i = 1u; i < SIDE; i++) {
    acc = merge_softmax(acc, red2[i]);
  }
  return acc;
}

// Softmax statistics of every query head of the group over the `count`
// candidates (softmax-mean only), then a barrier; every thread calls it.
fn pool_stats(t: u32, count: u32) {
  if (POOLING == 0u) {
    for (var g = 0u; g < GROUP; g++) {
      // Online softmax sum: rescale when the running max grows.
      var acc = vec2<f32>(NEG_INF, 0.0);
      for (var n = t; n < count; n += WG) {
        let x = raw_score(g, n);
        if (x > acc.x) {
          acc = vec2<f32>(x, acc.y * exp((acc.x - x) * params.scale) + 1.0);
        } else {
          acc.y += exp((x - acc.x) * params.scale);
        }
      }
      acc = reduce_softmax(t, acc);
      if (t == 0u) {
        stats[g] = vec2<f32>(acc.x, 1.0 / acc.y);
      }
    }
  }
  workgroupBarrier();
}

// The pooled score of candidate n as an order-preserving key (after pool_stats).
fn pooled_key(n: u32) -> u32 {
  var pooled: f32;
  if (POOLING == 0u) {
    pooled = 0.0;
    for (var g = 0u; g < GROUP; g++) {
      let st = stats[g];
      pooled += exp((raw_score(g, n) - st.x) * params.scale) * st.y;
    }
    pooled *= 1.0 / f32(GROUP);
  } else if (POOLING == 1u) {
    pooled = 0.0;
    for (var g = 0u; g < GROUP; g++) {
      pooled += raw_score(g, n);
    }
    pooled *= 1.0 / f32(GROUP);
  } else {
    pooled = raw_score(0u, n);
    for (var g = 1u; g < GROUP; g++) {
      pooled = max(pooled, raw_score(g, n));
    }
  }
  return order_key(pooled);
}

// The rank of candidate n among the `count` keys of `ranked_keys`: how many
// beat it (larger, or equal at a lower index).
fn key_rank(n: u32, count: u32) -> u32 {
  let kn = ranked_keys[n];
  var rank = 0u;
  for (var j = 0u; j < count; j++) {
    let kj = ranked_keys[j];
    rank += select(0u, 1u, kj > kn || (kj == kn && j < n));
  }
  return rank;
}

// The rank of the listed candidate n (key kn) among the `count` entries of
// the resident list: how many beat it (larger, or equal at a lower index).
fn listed_rank(kn: u32, n: u32, count: u32) -> u32 {
  var rank = 0u;
  for (var j = 0u; j < count; j++) {
    let e = listed(j);
    rank += select(0u, 1u, e.x > kn || (e.x == kn && e.y < n));
  }
  return rank;
}
