// Causal attention of query rows over a contiguous K/V buffer, with GQA.
// q [rows][Hq][d] at positions seq.start + i; k, v [positions][Hkv][d];
// query i sees keys 0..seq.start + i, or with a sliding window (p.window > 0)
// only the last p.window of them. out [rows][Hq][d].
// One workgroup per (row, query head). Keys are taken in tiles of WG: each
// thread scores one key, the tile's max and sum are reduced in workgroup
// memory, and each thread folds the tile into its channels' running sums
// (online softmax).
struct Params {
  rows: u32,
  q_heads: u32,
  kv_heads: u32,
  head_dim: u32,
  scale: f32,
  window: u32,
}

struct Seq {
  start: u32,
}

const WG = 64u;
const MAX_D = 256u;
const PER_THREAD = MAX_D / WG;
const NEG = -1.0e30;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> seq: Seq;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, MAX_D>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = wid.x + wid.y * nwg.x;
  if (id >= p.rows * p.q_heads) {
    return;
  }
  let row = id / p.q_heads;
  let h = id - row * p.q_heads;
  let kvh = h / (p.q_heads / p.kv_heads);
  let d = p.head_dim;
  let kv_stride = p.kv_heads * d;
  let q_base = id * d;
  for (var c = lid; c < d; c += WG) {
    qs[c] = q[q_base + c];
  }
  workgroupBarrier();

  let n_keys = seq.start + row + 1u;
  var first = 0u;
  if (p.window > 0u && n_keys > p.window) {
    first = n_keys - p.window;
  }
  var acc: array<f32, PER_THREAD>;
  var m_run = NEG;
  var l_run = 0.0;
  for (var j0 = first; j0 < n_keys; j0 += WG) {
    let j = j0 + lid;
    var score = NEG;
    if (j < n_keys) {
      let k_base = j * kv_stride + kvh * d;
      var dot = 0.0;
      for (var c = 0u; c < d; c++) {
        dot += qs[c] * k[k_base + c];
      }
      score = dot * p.scale;
    }
    red[lid] = score;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
      if (lid < s) {
        red[lid] = max(red[lid], red[lid + s]);
      }
      workgroupBarrier();
    }
    let m_new = max(m_run, red[0]);
    workgroupBarrier();
    var prob = 0.0;
    if (j < n_keys) {
      prob = exp(score - m_new);
    }
    probs[lid] = prob;
    red[lid] = prob;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
      if (lid < s) {
        red[lid] += red[lid + s];
      }
      workgroupBarrier();
    }
    let alpha = exp(m_run - m_new);
    l_run = l_run * alpha + red[0];
    let count = min(WG, n_keys - j0);
    for (var m = 0u; m < PER_THREAD; m++) {
      let c = lid + m * WG;
      if (c < d) {
        var sum = acc[m] * alpha;
        for (var jj = 0u; jj < count; jj++) {
          sum += probs[jj] * v[(j0 + jj) * kv_stride + kvh * d + c];
        }
        acc[m] = sum;
      }
    }
    m_run = m_new;
    workgroupBarrier();
  }
  let inv = 1.0 / l_run;
  for (var m = 0u; m < PER_THREAD; m++) {
    let c = lid + m * WG;
    if (c < d) {
      out[q_base + c] = acc[m] * inv;
    }
  }
}
