/**
 * The accuracy metrics of the evaluation harness as plain functions on
 * arrays: next-token agreement, KL divergence of next-token distributions,
 * attention-mass recall, adjacent-query cosine, greedy agreement, and the
 * summaries (mean, percentile) the reports use.
 *
 * @module
 */

import { querySimilarityReference } from "../kernels/similarity_reference.ts";

/**
 * Log-softmax of a logit vector, in f64.
 *
 * @example
 * ```ts
 * import { logSoftmax } from "./metrics.ts";
 * const l = logSoftmax([0, 0]);
 * console.log(l[0].toFixed(4)); // -0.6931
 * ```
 */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  if (logits.length === 0) {
    throw new RangeError(
      "Cannot take a log-softmax as 'logits' must not be empty: received length 0",
    );
  }
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/**
 * KL(p || q) in nats between two distributions given as log-probabilities
 * (see {@linkcode logSoftmax}). Terms where p is 0 contribute 0.
 *
 * @example
 * ```ts
 * import { klFromLogProbs } from "./metrics.ts";
 * const p = [Math.log(0.5), Math.log(0.5)], q = [Math.log(0.25), Math.log(0.75)];
 * console.log(klFromLogProbs(p, q).toFixed(4)); // 0.1438
 * ```
 */
export function klFromLogProbs(logP: ArrayLike<number>, logQ: ArrayLike<number>): number {
  if (logP.length !== logQ.length) {
    throw new RangeError(
      `Cannot compute a KL divergence as both distributions must have the same length (${logP.length}): received ${logQ.length}`,
    );
  }
  let d = 0;
  for (let i = 0; i < logP.length; i++) {
    const p = Math.exp(logP[i]);
    if (p > 0) d += p * (logP[i] - logQ[i]);
  }
  // Rounding can leave a tiny negative value for identical distributions.
  return Math.max(0, d);
}

/**
 * KL(softmax(pLogits) || softmax(qLogits)) in nats.
 *
 * @example
 * ```ts
 * import { klDivergence } from "./metrics.ts";
 * console.log(klDivergence([1, 2, 3], [1, 2, 3])); // 0
 * ```
 */
export function klDivergence(pLogits: ArrayLike<number>, qLogits: ArrayLike<number>): number {
  return klFromLogProbs(logSoftmax(pLogits), logSoftmax(qLogits));
}

/**
 * Share of positions where two token sequences hold the same token (over
 * the shorter length; 1 for two empty sequences).
 *
 * @example
 * ```ts
 * import { shareIdentical } from "./metrics.ts";
 * console.log(shareIdentical([1, 2, 3, 4], [1, 2, 9, 4])); // 0.75
 * ```
 */
export function shareIdentical(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.min(a.length, b.length);
  if (n === 0) return 1;
  let same = 0;
  for (let i = 0; i < n; i++) if (a[i] === b[i]) same++;
  return same / n;
}

/**
 * Tokens before the first position where two sequences differ (the shorter
 * length when one is a prefix of the other).
 *
 * @example
 * ```ts
 * import { matchLength } from "./metrics.ts";
 * console.log(matchLength([1, 2, 3, 4], [1, 2, 9, 4])); // 2
 * ```
 */
export function matchLength(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * Attention-mass recall of one decode step of one layer, per KV head: the
 * share of full attention's softmax probability (scores `q·k / sqrt(d)`
 * over every cached position, summed over the group's query heads and
 * averaged) that falls on the positions of the attended pages.
 *
 * @param q queries `[Hq][d]` of the step
 * @param keys cached keys `[length][Hkv][d]` (position-major), the step's own key included
 * @param length positions cached (the attended range is `0..length-1`)
 * @param attended logical pages attended per KV head (`attended[h]`)
 * @returns recall per KV head `[Hkv]`
 *
 * @example
 * ```ts
 * import { attentionMassRecall } from "./metrics.ts";
 * // One head, d = 1, three positions in pages of 2; all pages attended.
 * const r = attentionMassRecall(new Float32Array([1]), new Float32Array([1, 2, 3]), 3, {
 *   numQueryHeads: 1, numKvHeads: 1, headDim: 1, pageSize: 2, attended: [[0, 1]],
 * });
 * console.log(r[0].toFixed(6)); // 1.000000
 * ```
 */
export function attentionMassRecall(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  length: number,
  options: {
    numQueryHeads: number;
    numKvHeads: number;
    headDim: number;
    pageSize: number;
    attended: ReadonlyArray<ArrayLike<number>>;
  },
): Float64Array {
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d, pageSize, attended } = options;
  const group = hq / hkv;
  const scale = 1 / Math.sqrt(d);
  const recall = new Float64Array(hkv);
  const scores = new Float64Array(length);
  const inPage = new Uint8Array(Math.ceil(length / pageSize));
  for (let kh = 0; kh < hkv; kh++) {
    inPage.fill(0);
    const pages = attended[kh] ?? [];
    for (let i = 0; i < pages.length; i++) {
      if (pages[i] >= 0 && pages[i] < inPage.length) inPage[pages[i]] = 1;
    }
    for (let g = 0; g < group; g++) {
      const h = kh * group + g;
      let max = -Infinity;
      for (let t = 0; t < length; t++) {
        let dot = 0;
        const kBase = (t * hkv + kh) * d;
        for (let j = 0; j < d; j++) dot += q[h * d + j] * keys[kBase + j];
        scores[t] = dot * scale;
        if (scores[t] > max) max = scores[t];
      }
      let sum = 0, hit = 0;
      for (let t = 0; t < length; t++) {
        const e = Math.exp(scores[t] - max);
        sum += e;
        if (inPage[Math.floor(t / pageSize)]) hit += e;
      }
      recall[kh] += hit / sum / group;
    }
  }
  return recall;
}

/**
 * Cosine similarity of two query vectors per KV head, averaged over the
 * head's group of query heads (the quantity freekv compares with `tau`).
 *
 * @example
 * ```ts
 * import { groupMeanCosine } from "./metrics.ts";
 * const c = groupMeanCosine([1, 0, 0, 1], [1, 0, 1, 0], { numQueryHeads: 2, numKvHeads: 1, headDim: 2 });
 * console.log(c[0]); // 0.5
 * ```
 */
export function groupMeanCosine(
  qNow: ArrayLike<number>,
  qPrev: ArrayLike<number>,
  shape: { numQueryHeads: number; numKvHeads: number; headDim: number },
): Float64Array {
  // The similarity kernel's own oracle: the statistic is what freekv compares with tau.
  const { groupMean } = querySimilarityReference(
    { qNow: Float32Array.from(qNow), qPrev: Float32Array.from(qPrev), tau: 0 },
    shape,
  );
  return Float64Array.from(groupMean);
}

/**
 * Mean of a list (NaN when empty).
 *
 * @example
 * ```ts
 * import { mean } from "./metrics.ts";
 * console.log(mean([1, 2, 6])); // 3
 * ```
 */
export function mean(xs: ArrayLike<number>): number {
  if (xs.length === 0) return NaN;
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i];
  return s / xs.length;
}

/**
 * The `p`-th percentile (0..100) with linear interpolation between order
 * statistics (NaN when empty).
 *
 * @example
 * ```ts
 * import { percentile } from "./metrics.ts";
 * console.log(percentile([1, 2, 3, 4, 5], 10)); // 1.4
 * ```
 */
export function percentile(xs: ArrayLike<number>, p: number): number {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  const at = (Math.min(100, Math.max(0, p)) / 100) * (s.length - 1);
  const lo = Math.floor(at), hi = Math.ceil(at);
  return s[lo] + (s[hi] - s[lo]) * (at - lo);
}
