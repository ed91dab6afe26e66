// Prefill projection over a block of tokens:
// y[t][out_offset + r] = sum_c x[t][c] * W[r][c] (+ bias[out_offset + r]),
// with y rows `out_stride` wide. 16x16 output tiles staged through workgroup
// memory; x and W tiles are 16 deep along c.
struct Params {
  tokens: u32,
  rows: u32,
  cols: u32,
  out_offset: u32,
  out_stride: u32,
}

const T = 16u;
override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> xs: array<f32, 256>;
var<workgroup> ws: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let r0 = wid.x * T;
  let t0 = wid.y * T;
  let r = r0 + lid.x;
  let t = t0 + lid.y;
  var acc = 0.0;
  for (var k0 = 0u; k0 < p.cols; k0 += T) {
    let k = k0 + lid.x;
    // Thread (x, y) stages x[t0 + y][k0 + x] and W[r0 + y][k0 + x].
    var xv = 0.0;
    if (t < p.tokens && k < p.cols) {
      xv = x[t * p.cols + k];
    }
    xs[lid.y * T + lid.x] = xv;
    var wv = 0.0;
    if (r0 + lid.y < p.rows && k < p.cols) {
      wv = load_weight((r0 + lid.y) * p.cols + k);
    }
    ws[lid.y * T + lid.x] = wv;
    workgroupBarrier();
    for (var j = 0u; j < T; j++) {
      acc += xs[lid.y * T + j] * ws[lid.x * T + j];
    }
    workgroupBarrier();
  }
  if (t < p.tokens && r < p.rows) {
    var result = acc;
    if (HAS_BIAS) {
      result += bias[p.out_offset + r];
    }
    y[t * p.out_stride + p.out_offset + r] = result;
  }
}
