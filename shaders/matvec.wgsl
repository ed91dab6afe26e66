// Decode projection: y[out_offset + r] = sum_c W[r][c] * x[c] (+ bias[out_offset + r])
// for the rows r of one part of W. A workgroup of 64 invocations computes
// 64 / LANES rows, LANES invocations per row: short rows get few lanes, so
// that most invocations do work and a small matrix needs few workgroups
// (one row per workgroup of 64 lanes wastes both, worst on a CPU adapter).
struct Params {
  rows: u32,
  cols: u32,
  out_offset: u32,
}

const WG = 64u;
override HAS_BIAS: bool = false;
override LANES: u32 = 64u; // a power of two, at most WG

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let lane = lid % LANES;
  let r = (wid.x + wid.y * nwg.x) * (WG / LANES) + lid / LANES;
  // Rows past the end still take part in the barriers below.
  let live = r < p.rows;
  var acc = 0.0;
  if (live) {
    let base = r * p.cols;
    if (WDTYPE != 0u && (p.cols & 1u) == 0u) {
      // Even rows of 16-bit weights start on a word: read both halves at once.
      let half_cols = p.cols / 2u;
      let word_base = base / 2u;
      for (var k = lane; k < half_cols; k += LANES) {
        let pair = load_pair(word_base + k);
        acc += pair.x * x[2u * k] + pair.y * x[2u * k + 1u];
      }
    } else {
      for (var c = lane; c < p.cols; c += LANES) {
        acc += load_weight(base + c) * x[c];
      }
    }
  }
  red[lid] = acc;
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) {
      red[lid] += red[lid + s];
    }
    workgroupBarrier();
  }
  if (live && lane == 0u) {
    var result = red[lid];
    if (HAS_BIAS) {
      result += bias[p.out_offset + r];
    }
    y[p.out_offset + r] = result;
  }
}
