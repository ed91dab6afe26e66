// Rotary position embedding, in place on rows [row][head][d] whose position is
// seq.start + row. ADJACENT rotates (x[2i], x[2i+1]) (llama2.c); otherwise
// (x[i], x[i + d/2]) (Hugging Face). Pair i turns by pos * inv_freq[i].
struct Params {
  rows: u32,
  heads: u32,
  head_dim: u32,
}

struct Seq {
  start: u32,
}

override ADJACENT: bool = true;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> seq: Seq;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read_write> data: array<f32>;

// 2*pi split so that n * TWO_PI_HI is exact for n < 2^15 (Cody-Waite).
const TWO_PI_HI = 6.28125;
const TWO_PI_LO = 0.0019353071795864769;
const INV_TWO_PI = 0.15915494309189535;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let half = p.head_dim / 2u;
  let i = (wid.x + wid.y * nwg.x) * 64u + lid;
  if (i >= p.rows * p.heads * half) {
    return;
  }
  let j = i % half;
  let vec_index = i / half;
  let row = vec_index / p.heads;
  let base = vec_index * p.head_dim;
  var a = base + j;
  var b = base + j + half;
  if (ADJACENT) {
    a = base + 2u * j;
    b = a + 1u;
  }
  let angle = f32(seq.start + row) * inv_freq[j];
  // Reduce to [-pi, pi] where every implementation's sin/cos is accurate.
  let n = round(angle * INV_TWO_PI);
  let reduced = (angle - n * TWO_PI_HI) - n * TWO_PI_LO;
  let c = cos(reduced);
  let s = sin(reduced);
  let x0 = data[a];
  let x1 = data[b];
  data[a] = x0 * c - x1 * s;
  data[b] = x0 * s + x1 * c;
}
