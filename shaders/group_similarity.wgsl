// Correction check of one (sequence, KV head) row, appended to
// query_similarity.wgsl and page_select_similarity.wgsl: per query head of
// the group the cosine of q_now and q_prev (0 when either vector is zero,
// clamped to [-1, 1]), summed in index order; per KV head the mean over the
// group and the flag !(mean >= tau), i.e. mean < tau, with NaN flagged too
// (correct when unsure). With params.store_q, q_now is stored as the next
// step's q_prev, each element after it was read. The includer declares
// `override HEAD_DIM`, `override GROUP`, `params.tau`, `params.store_q`,
// `q_prev` (`[b][Hq][d]` f32, read_write), the outputs `cosine`,
// `group_mean` and `flags`, and `fn q_now_at(g: u32, head: u32, c: u32) ->
// f32` (g: the head's index in the group).

fn q_prev_at(head: u32, c: u32) -> f32 {
  return q_prev[head * HEAD_DIM + c];
}

fn keep_q(head: u32, c: u32, x: f32) {
  if (params.store_q != 0u) {
    q_prev[head * HEAD_DIM + c] = x;
  }
}

// Writes row `row`'s cosines, group mean and flag; returns the flag.
fn group_similarity(row: u32) -> u32 {
  var total = 0.0;
  for (var g = 0u; g < GROUP; g++) {
    let head = row * GROUP + g;
    // (dot, |now|^2, |prev|^2)
    var acc = vec3<f32>(0.0);
    for (var c = 0u; c < HEAD_DIM; c++) {
      let x = q_now_at(g, head, c);
      let y = q_prev_at(head, c);
      keep_q(head, c, x);
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
  return flag;
}
