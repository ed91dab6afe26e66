/**
 * The plain-loop CPU reference of paged attention, the oracle of the tests.
 *
 * @module
 */

import {
  type AttentionShape,
  EMPTY_SLOT,
  type PagedAttentionInputs,
  type PagedAttentionResult,
  REFERENCE_TRAITS,
  validateInputs,
  validateOptions,
} from "./attention_options.ts";
import { slotStrides } from "./slot_layout.ts";

/**
 * The CPU oracle of `pagedAttention`: a plain loop in double
 * precision over the attended tokens of every query head (llama2.c style).
 * Validates like the GPU version.
 *
 * @example
 * ```ts
 * import { pagedAttentionReference } from "./attention_reference.ts";
 * const { out, lse } = pagedAttentionReference({
 *   q: new Float32Array([1, 0, 0, 0]),
 *   kCache: new Float32Array([1, 0, 0, 0, 0, 0, 0, 0]),
 *   vCache: new Float32Array([1, 1, 1, 1, 3, 3, 3, 3]),
 *   pageTable: new Uint32Array([0]), numPages: [1], lastPageLen: [2],
 * }, { numQueryHeads: 1, numKvHeads: 1, headDim: 4, pageSize: 2 });
 * console.log(out[0].toFixed(3), lse[0].toFixed(3)); // 1.755 0.974
 * ```
 */
export function pagedAttentionReference(
  inputs: PagedAttentionInputs,
  shape: AttentionShape,
): PagedAttentionResult {
  const config = validateOptions({ ...shape, dtype: "f32" }, REFERENCE_TRAITS);
  const x = validateInputs(config.shape, inputs);
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d, pageSize: P } = config.shape;
  const strides = slotStrides(config.shape.slotLayout ?? "nhd", P, hkv);
  const group = hq / hkv;
  const scale = 1 / Math.sqrt(d);
  const out = new Float32Array(x.batch * hq * d);
  const lse = new Float32Array(x.batch * hq);
  const scores: number[] = [];
  const rows: number[] = [];
  const acc = new Float64Array(d);
  for (let b = 0; b < x.batch; b++) {
    const pages = x.numPages[b];
    for (let h = 0; h < hq; h++) {
      const kvh = Math.floor(h / group);
      const qo = (b * hq + h) * d;
      scores.length = 0;
      rows.length = 0;
      for (let p = 0; p < pages; p++) {
        const slot = x.pageTable![(b * hkv + kvh) * x.maxPages + p];
        if (slot === EMPTY_SLOT) continue;
        const len = p === pages - 1 ? x.lastPageLen[b] : P;
        const first = x.firstToken ? x.firstToken[b] : 0;
        const pageId = first > 0 ? x.pageIds![(b * hkv + kvh) * x.maxPages + p] : 0;
        for (let t = 0; t < len; t++) {
          if (pageId * P + t < first) continue; // outside the sliding window
          const row = (slot * strides.slot + t * strides.token + kvh * strides.head) * d;
          let s = 0;
          for (let i = 0; i < d; i++) s += x.q[qo + i] * x.kCache[row + i];
          scores.push(s * scale);
          rows.push(row);
        }
      }
      let max = -Infinity;
      for (const s of scores) max = Math.max(max, s);
      let sum = 0;
      acc.fill(0);
      for (let j = 0; j < scores.length; j++) {
        const w = Math.exp(scores[j] - max);
        sum += w;
        for (let i = 0; i < d; i++) acc[i] += w * x.vCache[rows[j] + i];
      }
      for (let i = 0; i < d; i++) out[qo + i] = acc[i] / sum;
      lse[b * hq + h] = max + Math.log(sum);
    }
  }
  return { out, lse };
}
