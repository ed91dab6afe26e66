// RMSNorm of each row: out[r][c] = weight[c] * x[r][c] / sqrt(mean(x[r]^2) + eps).
// One workgroup per row.
struct Params {
  rows: u32,
  dim: u32,
  eps: f32,
}

const WG = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= p.rows) {
    return;
  }
  let base = r * p.dim;
  var ss = 0.0;
  for (var c = lid; c < p.dim; c += WG) {
    let v = x[base + c];
    ss += v * v;
  }
  red[lid] = ss;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      red[lid] += red[lid + s];
    }
    workgroupBarrier();
  }
  let scale = 1.0 / sqrt(red[0] / f32(p.dim) + p.eps);
  for (var c = lid; c < p.dim; c += WG) {
    out[base + c] = weight[c] * (scale * x[base + c]);
  }
}
