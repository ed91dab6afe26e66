// Raw page scores: for every candidate page of one (sequence, KV head) and
// each of its GROUP query heads, sum_d max(q_d * lower_d, q_d * upper_d).
// LANES threads share a page, each reading every LANES-th vec4 of its bounds
// (a coalesced run per step); their partial sums meet in workgroup memory.
// Grid: (page chunks of WG / LANES, Hkv, batch).

override HEAD_DIM: u32; // d, a multiple of 4
override GROUP: u32; // query heads per KV head
override LANES: u32; // threads per page, a power of two dividing HEAD_DIM / 4
override WG: u32; // workgroup size, a multiple of LANES

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

// Sum over 4 channels of max(q * lower, q * upper) for head g of the chunk.
// Heads past the chunk read stale q_sh entries; their sums are never stored.
fn head_term(g: u32, v4: u32, j: u32, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
  let qv = q_sh[g * v4 + j];
  let m = max(qv * lo, qv * hi);
  return (m.x + m.y) + (m.z + m.w);
}

// This thread's share (every LANES-th vec4) of the page's scores for the
// first 1, 2, 4 or 8 heads of the chunk.
fn sweep1(sbase: u32, lane: u32, v4: u32) -> f32 {
  var a = 0.0;
  for (var j = lane; j < v4; j += LANES) {
    a += head_term(0u, v4, j, summaries[sbase + j], summaries[sbase + v4 + j]);
  }
  return a;
}

fn sweep2(sbase: u32, lane: u32, v4: u32) -> vec2<f32> {
  var a = vec2<f32>(0.0);
  for (var j = lane; j < v4; j += LANES) {
    let lo = summaries[sbase + j];
    let hi = summaries[sbase + v4 + j];
    a += vec2<f32>(head_term(0u, v4, j, lo, hi), head_term(1u, v4, j, lo, hi));
  }
  return a;
}

fn sweep4(sbase: u32, lane: u32, v4: u32) -> vec4<f32> {
  var a = vec4<f32>(0.0);
  for (var j = lane; j < v4; j += LANES) {
    let lo = summaries[sbase + j];
    let hi = summaries[sbase + v4 + j];
    a += vec4<f32>(
      head_term(0u, v4, j, lo, hi),
      head_term(1u, v4, j, lo, hi),
      head_term(2u, v4, j, lo, hi),
      head_term(3u, v4, j, lo, hi),
    );
  }
  return a;
}

fn sweep8(sbase: u32, lane: u32, v4: u32) -> array<vec4<f32>, 2> {
  var a = vec4<f32>(0.0);
  var b = vec4<f32>(0.0);
  for (var j = lane; j < v4; j += LANES) {
    let lo = summaries[sbase + j];
    let hi = summaries[sbase + v4 + j];
    a += vec4<f32>(
      head_term(0u, v4, j, lo, hi),
      head_term(1u, v4, j, lo, hi),
      head_term(2u, v4, j, lo, hi),
      head_term(3u, v4, j, lo, hi),
    );
    b += vec4<f32>(
      head_term(4u, v4, j, lo, hi),
      head_term(5u, v4, j, lo, hi),
      head_term(6u, v4, j, lo, hi),
      head_term(7u, v4, j, lo, hi),
    );
  }
  return array<vec4<f32>, 2>(a, b);
}

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
    // Sweeps specialised by chunk size keep the sums in registers and the
    // loop free of branches.
    var acc = array<f32, GCHUNK>();
    if (live) {
      if (gc == 1u) {
        acc[0] = sweep1(sbase, lane, v4);
      } else if (gc == 2u) {
        let s = sweep2(sbase, lane, v4);
        acc[0] = s.x;
        acc[1] = s.y;
      } else if (gc <= 4u) {
        let s = sweep4(sbase, lane, v4);
        acc[0] = s.x;
        acc[1] = s.y;
        acc[2] = s.z;
        acc[3] = s.w;
      } else {
        let s = sweep8(sbase, lane, v4);
        acc[0] = s[0].x;
        acc[1] = s[0].y;
        acc[2] = s[0].z;
        acc[3] = s[0].w;
        acc[4] = s[1].x;
        acc[5] = s[1].y;
        acc[6] = s[1].z;
        acc[7] = s[1].w;
      }
    }
    if (LANES == 1u) {
      // A page per thread: its sums are the scores.
      if (live) {
        for (var g = 0u; g < gc; g++) {
          scores[(head0 + g0 + g) * params.max_count + n] = acc[g];
        }
      }
      workgroupBarrier();
      continue;
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
