// Prefill projection over a block of tokens:
// y[t][out_offset + r] = sum_c x[t][c] * W[r][c] (+ bias[out_offset + r]),
// with y rows `out_stride` wide. A workgroup of 16x16 threads computes a
// 64 (rows) x 64 (tokens) tile, each thread a 4x4 block of it (rows tx + 16j,
// tokens ty + 16i), from 64x16 slices of W and x staged in workgroup memory.
struct Params {
  tokens: u32,
  rows: u32,
  cols: u32,
  out_offset: u32,
  out_stride: u32,
}

const TILE = 64u;
const KS = 16u;
const PAD = 17u; // row stride of the staged slices (avoids bank conflicts)
override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> xs: array<f32, 1088>; // TILE * PAD
var<workgroup> ws: array<f32, 1088>;

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let r0 = wid.x * TILE;
  let t0 = wid.y * TILE;
  var acc: array<f32, 16>;
  for (var k0 = 0u; k0 < p.cols; k0 += KS) {
    // 256 threads stage 64x16 values of each operand, 4 apiece.
    for (var m = 0u; m < 4u; m++) {
      let e = li + 256u * m;
      let local_row = e / KS;
      let kk = e % KS;
      let k = k0 + kk;
      var xv = 0.0;
      let t = t0 + local_row;
      if (t < p.tokens && k < p.cols) {
        xv = x[t * p.cols + k];
      }
      xs[local_row * PAD + kk] = xv;
      var wv = 0.0;
      let r = r0 + local_row;
      if (r < p.rows && k < p.cols) {
        wv = load_weight(r * p.cols + k);
      }
      ws[local_row * PAD + kk] = wv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < KS; kk++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) {
        a[i] = xs[(lid.y + 16u * i) * PAD + kk];
        b[i] = ws[(lid.x + 16u * i) * PAD + kk];
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
          acc[i * 4u + j] += a[i] * b[j];
        }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let t = t0 + lid.y + 16u * i;
    for (var j = 0u; j < 4u; j++) {
      let r = r0 + lid.x + 16u * j;
      if (t < p.tokens && r < p.rows) {
        var result = acc[i * 4u + j];
        if (HAS_BIAS) {
          result += bias[p.out_offset + r];
        }
        y[t * p.out_stride + p.out_offset + r] = result;
      }
    }
  }
}
