/**
 * The plain-loop CPU reference of the page summary kernel.
 *
 * @module
 */

import {
  checkSummaryInputs,
  type PageSummaryInputs,
  type PageSummaryOptions,
  summaryFloatsPerPage,
} from "./summaries.ts";
import { slotStrides } from "./slot_layout.ts";

/**
 * CPU oracle of the summaries (plain loops, f64 arithmetic rounded to f32 on
 * store): returns `[numPages][Hkv][2][d]` with the jobs' pages filled and the
 * other pages 0.
 *
 * @example
 * ```ts
 * import { pageSummariesReference } from "./summaries_reference.ts";
 * const s = pageSummariesReference({
 *   kCache: new Float32Array([1, -2, 3, 4]),
 *   jobs: [{ srcSlot: 0, dstPage: 0, numTokens: 2 }],
 *   numPages: 1,
 * }, { numKvHeads: 1, headDim: 2, pageSize: 2 });
 * console.log(s); // [1, -2, 3, 4]
 * ```
 */
export function pageSummariesReference(
  inputs: PageSummaryInputs,
  options: PageSummaryOptions,
): Float32Array {
  const { packed, options: checked } = checkSummaryInputs(inputs, options);
  const { numKvHeads: hkv, headDim: d, pageSize: p, summary, slotLayout } = checked;
  const strides = slotStrides(slotLayout, p, hkv);
  const k = inputs.kCache;
  const out = new Float32Array(inputs.numPages * summaryFloatsPerPage(checked));
  for (let j = 0; j < packed.length / 4; j++) {
    const slot = packed[4 * j], page = packed[4 * j + 1], n = packed[4 * j + 2];
    for (let h = 0; h < hkv; h++) {
      for (let c = 0; c < d; c++) {
        const at = (t: number) =>
          k[(slot * strides.slot + t * strides.token + h * strides.head) * d + c];
        let lo = Infinity, hi = -Infinity;
        for (let t = 0; t < n; t++) {
          lo = Math.min(lo, at(t));
          hi = Math.max(hi, at(t));
        }
        if (summary === "box") {
          const center = (lo + hi) / 2;
          let dev = 0;
          for (let t = 0; t < n; t++) dev += Math.abs(at(t) - center);
          const spread = dev / n;
          lo = center - spread;
          hi = center + spread;
        }
        const o = ((page * hkv + h) * 2) * d + c;
        out[o] = lo;
        out[o + d] = hi;
      }
    }
  }
  return out;
}
