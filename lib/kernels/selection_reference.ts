/**
 * The plain-loop CPU reference of page selection: scoring, GQA pooling and
 * top-k with the kernel's tie rule.
 *
 * @module
 */

import {
  checkSelectionInputs,
  checkSelectorOptions,
  type PageSelectionInputs,
  type PageSelectorOptions,
} from "./selection.ts";

/** What {@linkcode selectPagesReference} returns. */
export interface PageSelectionReference {
  /** `[batch][Hkv][k]` logical page ids, best first. */
  selected: Uint32Array;
  /**
   * Pooled scores (f64) per `b * Hkv + kvHead`, indexed by candidate
   * (`page - candidateStart[b]`): for checking margins around the k-th page.
   */
  pooled: Float64Array[];
}

/**
 * CPU oracle of the selection: plain loops in f64, the same pooling and the
 * same tie rule (higher pooled score first, then the lower page index).
 * Returns the selection and the pooled scores.
 *
 * @example
 * ```ts
 * import { selectPagesReference } from "./selection_reference.ts";
 * const { selected } = selectPagesReference({
 *   q: new Float32Array([1, 0, 0, 0]),
 *   summaries: new Float32Array([1, 3, 2, 3].flatMap((v) => Array(8).fill(v))),
 *   pageOffset: [0],
 *   candidateStart: [0],
 *   candidateEnd: [4],
 *   k: 3,
 * }, { numQueryHeads: 1, numKvHeads: 1, headDim: 4 });
 * console.log(selected); // [1, 3, 2]
 * ```
 */
export function selectPagesReference(
  inputs: PageSelectionInputs,
  options: PageSelectorOptions,
): PageSelectionReference {
  const opts = checkSelectorOptions(options);
  const plan = checkSelectionInputs(inputs, opts);
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d, pooling, scale } = opts;
  const group = hq / hkv;
  const { q, summaries } = inputs;
  const selected = new Uint32Array(plan.batch * hkv * plan.k);
  const pooledAll: Float64Array[] = [];
  for (let b = 0; b < plan.batch; b++) {
    const offset = plan.seqs[4 * b], start = plan.seqs[4 * b + 1], count = plan.seqs[4 * b + 2];
    for (let h = 0; h < hkv; h++) {
      // Raw scores per query head of the group.
      const raw: Float64Array[] = [];
      for (let g = 0; g < group; g++) {
        const qb = (b * hq + h * group + g) * d;
        const row = new Float64Array(count);
        for (let n = 0; n < count; n++) {
          const sb = ((offset + start + n) * hkv + h) * 2 * d;
          let s = 0;
          for (let c = 0; c < d; c++) {
            s += Math.max(q[qb + c] * summaries[sb + c], q[qb + c] * summaries[sb + d + c]);
          }
          row[n] = s;
        }
        raw.push(row);
      }
      const pooled = new Float64Array(count);
      if (pooling === "softmax-mean") {
        for (const row of raw) {
          let m = -Infinity;
          for (let n = 0; n < count; n++) m = Math.max(m, row[n] * scale);
          let sum = 0;
          for (let n = 0; n < count; n++) sum += Math.exp(row[n] * scale - m);
          for (let n = 0; n < count; n++) pooled[n] += Math.exp(row[n] * scale - m) / sum / group;
        }
      } else if (pooling === "mean") {
        for (const row of raw) for (let n = 0; n < count; n++) pooled[n] += row[n] / group;
      } else {
        pooled.fill(-Infinity);
        for (const row of raw) {
          for (let n = 0; n < count; n++) pooled[n] = Math.max(pooled[n], row[n]);
        }
      }
      const order = Array.from({ length: count }, (_, n) => n);
      order.sort((x, y) => pooled[y] - pooled[x] || x - y);
      for (let i = 0; i < plan.k; i++) selected[(b * hkv + h) * plan.k + i] = start + order[i];
      pooledAll.push(pooled);
    }
  }
  return { selected, pooled: pooledAll };
}
