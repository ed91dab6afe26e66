// Raw page scores: for every candidate page of one (sequence, KV head) and
// each of its GROUP query heads, sum_d max(q_d * lower_d, q_d * upper_d).
// LANES threads share a page, each reading every LANES-th vec4 of its bounds
// (a coalesced run per step); their partial sums meet in workgroup memory.
// Grid: (page chunks of WG / LANES, Hkv, batch).

override HEAD_DIM: u32; // d, a multiple of 4
override GROUP: u32; // query heads per KV head
override LANES: u32; // threads per page, a power of two dividing HEAD_DIM / 4

const WG: u32 = 256u;
// Query heads scored per sweep over the bounds: their sums live in registers.
const GCHUNK: u32 = 8u;

struct Params {
  num_kv_heads: u32,
  max_count: u32, // candidate stride of `scores`
}

@group(0) @binding(0) var<uniform> params: Params;
// Per sequence: (pageOffset, candidateStart, candidate count, unused).
@group(0) @binding(1) var<storage, read> seqs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>; // [b][Hq][d/4]
@group(0) @binding(3) var<storage, read> summaries: array<vec4<f32>>; // [page][Hkv][2][d/4]
@group(0) @binding(4) var<storage, read_write> scores: array<f32>; // [b][Hq][max_count]

var<workgroup> q_sh: array<vec4<f32>, GCHUNK * HEAD_DIM / 4u>;
var<workgroup> partial: array<f32, GCHUNK * WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3u) {
  let b = wg.z;
  let kvh = wg.y;
  let seq = seqs[b];
  let per_wg = WG / LANES;
  let first = wg.x * per_wg;
  if (first >= seq.z) {
    return;
  }
  let v4 = HEAD_DIM / 4u;
  let lane = t % LANES;
  let slot = t / LANES;
  let n = first + slot;
  let live = n < seq.z;
  let sbase = ((seq.x + seq.y + n) * params.num_kv_heads + kvh) * 2u * v4;
  let head0 = (b * params.num_kv_heads + kvh) * GROUP;
  for (var g0 = 0u; g0 < GROUP; g0 += GCHUNK) {
    let gc = min(GCHUNK, GROUP - g0);
    for (var i = t; i < gc * v4; i += WG) {
      q_sh[i] = q[(head0 + g0) * v4 + i];
    }
    workgroupBarrier();
    var acc: array<f32, GCHUNK>;
    if (live) {
      for (var j = lane; j < v4; j += LANES) {
        let lo = summaries[sbase + j];
        let hi = summaries[sbase + v4 + j];
        for (var g = 0u; g < gc; g++) {
          let qv = q_sh[g * v4 + j];
          let m = max(qv * lo, qv * hi);
          acc[g] += (m.x + m.y) + (m.z + m.w);
        }
      }
    }
    for (var g = 0u; g < gc; g++) {
      partial[g * WG + t] = acc[g];
    }
    workgroupBarrier();
    for (var r = t; r < per_wg * gc; r += WG) {
      let s = r / gc;
      let g = r % gc;
      if (first + s < seq.z) {
        var sum = 0.0;
        for (var l = 0u; l < LANES; l++) {
          sum += partial[g * WG + s * LANES + l];
        }
        scores[(head0 + g0 + g) * params.max_count + first + s] = sum;
      }
    }
    workgroupBarrier();
  }
}
