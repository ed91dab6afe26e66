// Appended to page_select.wgsl to decide the correction in the same
// dispatch: the first lane computes, per query head of the workgroup's group,
// the cosine of q (already in q_sh) and q_prev (0 when either is zero,
// clamped to [-1, 1]) with query_similarity.wgsl's sums in index order, then
// the group mean and the flag !(mean >= tau); FLAGGED uses that flag.

@group(0) @binding(6) var<storage, read_write> flags: array<u32>; // [b][Hkv]
@group(0) @binding(8) var<storage, read> q_prev: array<f32>; // [b][Hq][d]
@group(0) @binding(9) var<storage, read_write> cosine: array<f32>; // [b][Hq]
@group(0) @binding(10) var<storage, read_write> group_mean: array<f32>; // [b][Hkv]

var<workgroup> similarity_flag: u32;

fn check_similarity(t: u32, b: u32, kvh: u32, row: u32) {
  if (t != 0u) {
    return;
  }
  let v4 = HEAD_DIM / 4u;
  var total = 0.0;
  for (var g = 0u; g < GROUP; g++) {
    let head = row * GROUP + g;
    var acc = vec3<f32>(0.0);
    for (var c = 0u; c < HEAD_DIM; c++) {
      let x = q_sh[g * v4 + c / 4u][c % 4u];
      let y = q_prev[head * HEAD_DIM + c];
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
  group_mean[row] = mean;
  let flag = select(1u, 0u, mean >= params.tau);
  flags[row] = flag;
  similarity_flag = flag;
}

fn row_flag(row: u32) -> u32 {
  return similarity_flag;
}
