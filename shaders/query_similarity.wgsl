// Query similarity for the fine-grained correction: per query head the
// cosine of q_now and q_prev (0 when either vector is zero, clamped to
// [-1, 1]), per KV head the mean over its GQA group and the flag
// !(mean >= tau), i.e. mean < tau, with NaN flagged too (correct when unsure).
// One invocation per (KV head, sequence), dispatched as workgroups of one:
// the work is a few hundred multiply-adds, and a tree reduction's barriers
// cost more than that wherever barriers are emulated (CPU adapters such as
// lavapipe switch every invocation's coroutine at each barrier).

override HEAD_DIM: u32; // d
override GROUP: u32; // query heads per KV head

struct Params {
  tau: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q_now: array<f32>; // [b][Hq][d]
@group(0) @binding(2) var<storage, read> q_prev: array<f32>; // [b][Hq][d]
@group(0) @binding(3) var<storage, read_write> cosine: array<f32>; // [b][Hq]
@group(0) @binding(4) var<storage, read_write> group_mean: array<f32>; // [b][Hkv]
@group(0) @binding(5) var<storage, read_write> flags: array<u32>; // [b][Hkv]

@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let kvh = wg.x;
  let num_kv_heads = nwg.x;
  let b = wg.y;
  var total = 0.0;
  for (var g = 0u; g < GROUP; g++) {
    let head = (b * num_kv_heads + kvh) * GROUP + g;
    let base = head * HEAD_DIM;
    // (dot, |now|^2, |prev|^2), in index order as the CPU reference sums
    var acc = vec3<f32>(0.0);
    for (var c = 0u; c < HEAD_DIM; c++) {
      let x = q_now[base + c];
      let y = q_prev[base + c];
      acc += vec3<f32>(x * y, x * x, y * y);
    }
    var cos = 0.0;
    if (acc.y > 0.0 && acc.z > 0.0) {
      cos = clamp(acc.x / (sqrt(acc.y) * sqrt(acc.z)), -1.0, 1.0);
    }
    cosine[head] = cos;
    total += cos;
  }
  let mean = total / f32(GROUP);
  let at = b * num_kv_heads + kvh;
  group_mean[at] = mean;
  flags[at] = select(1u, 0u, mean >= params.tau);
}
