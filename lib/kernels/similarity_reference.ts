/**
 * The plain-loop CPU reference of the query similarity kernel.
 *
 * @module
 */

import {
  checkSimilarityInputs,
  checkSimilarityOptions,
  type QuerySimilarityInputs,
  type QuerySimilarityOptions,
  type QuerySimilarityResult,
} from "./similarity.ts";

/**
 * CPU oracle of the query similarity (plain loops in f64, rounded to f32 on
 * store; flags compare the stored f32 mean with `tau` rounded to f32, as the
 * GPU does).
 *
 * @example
 * ```ts
 * import { querySimilarityReference } from "./similarity_reference.ts";
 * const r = querySimilarityReference({
 *   qNow: new Float32Array([1, 0, 0, 0]),
 *   qPrev: new Float32Array([1, 1, 1, 0]),
 *   tau: 0.9,
 * }, { numQueryHeads: 2, numKvHeads: 1, headDim: 2 });
 * console.log(r.cosine, r.flags); // [0.7071..., 0] (the zero vector gives 0) [1]
 * ```
 */
export function querySimilarityReference(
  inputs: QuerySimilarityInputs,
  options: QuerySimilarityOptions,
): QuerySimilarityResult {
  const opts = checkSimilarityOptions(options);
  const batch = checkSimilarityInputs(inputs, opts);
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d } = opts;
  const group = hq / hkv;
  const { qNow, qPrev } = inputs;
  const cosine = new Float32Array(batch * hq);
  const groupMean = new Float32Array(batch * hkv);
  const flags = new Uint32Array(batch * hkv);
  const tau = Math.fround(inputs.tau);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < hkv; h++) {
      let total = 0;
      for (let g = 0; g < group; g++) {
        const head = b * hq + h * group + g;
        let dot = 0, nx = 0, ny = 0;
        for (let c = 0; c < d; c++) {
          const x = qNow[head * d + c], y = qPrev[head * d + c];
          dot += x * y;
          nx += x * x;
          ny += y * y;
        }
        const cos = nx > 0 && ny > 0
          ? Math.min(1, Math.max(-1, dot / (Math.sqrt(nx) * Math.sqrt(ny))))
          : 0;
        cosine[head] = cos;
        total += cos;
      }
      groupMean[b * hkv + h] = total / group;
      flags[b * hkv + h] = groupMean[b * hkv + h] >= tau ? 0 : 1;
    }
  }
  return { cosine, groupMean, flags };
}
