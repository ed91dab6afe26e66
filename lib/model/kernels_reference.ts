/**
 * Plain-loop CPU oracles of the kernels in `kernels.ts`, with the same
 * layouts: row-major, `[rows, heads, headDim]` for queries and keys.
 *
 * @module
 */

import type { RopeStyle, Tensor } from "./types.ts";
import { tensorToFloat32 } from "./weight_convert.ts";
// The batched oracles loop over the single-vector ones of the CPU forward
// pass; RoPE stays separate (f64 angles here, llama2.c's f32 angles there).
import { matvec, rmsnorm, swiglu } from "./reference.ts";
import { createSampler } from "./sampling.ts";

/**
 * Embedding lookup: row `tokens[t]` of `table` for each token.
 *
 * @example
 * ```ts
 * import { embeddingReference } from "./kernels_reference.ts";
 * const table = { dtype: "f32" as const, shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) };
 * console.log(embeddingReference(table, [1])); // Float32Array [3, 4]
 * ```
 */
export function embeddingReference(table: Tensor, tokens: ArrayLike<number>): Float32Array {
  const [, dim] = table.shape;
  const w = tensorToFloat32(table);
  const out = new Float32Array(tokens.length * dim);
  for (let t = 0; t < tokens.length; t++) {
    for (let c = 0; c < dim; c++) out[t * dim + c] = w[tokens[t] * dim + c];
  }
  return out;
}

/**
 * RMSNorm of each `dim`-long row of `x`: `weight * x / sqrt(mean(x^2) + eps)`.
 *
 * @example
 * ```ts
 * import { rmsnormReference } from "./kernels_reference.ts";
 * console.log(rmsnormReference(new Float32Array([3, 4]), new Float32Array([1, 1]), { eps: 0 }));
 * ```
 */
export function rmsnormReference(
  x: Float32Array,
  weight: Float32Array,
  options: { eps: number },
): Float32Array {
  const dim = weight.length;
  const out = new Float32Array(x.length);
  for (let r = 0; r < x.length / dim; r++) {
    const row = (a: Float32Array) => a.subarray(r * dim, (r + 1) * dim);
    rmsnorm(row(x), weight, { eps: options.eps, out: row(out) });
  }
  return out;
}

/**
 * `Y = X W^T (+ bias)` for `X` `[tokens, in]` and `W` `[out, in]` of any
 * weight type; one row for a matrix-vector product.
 *
 * @example
 * ```ts
 * import { matmulReference } from "./kernels_reference.ts";
 * const w = { dtype: "f32" as const, shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) };
 * console.log(matmulReference(w, new Float32Array([1, 1]))); // Float32Array [3, 7]
 * ```
 */
export function matmulReference(
  weight: Tensor,
  x: Float32Array,
  options: { bias?: Float32Array } = {},
): Float32Array {
  const [rows, cols] = weight.shape;
  const w = tensorToFloat32(weight);
  const tokens = x.length / cols;
  const out = new Float32Array(tokens * rows);
  for (let t = 0; t < tokens; t++) {
    matvec(w, x.subarray(t * cols, (t + 1) * cols), {
      bias: options.bias,
      out: out.subarray(t * rows, (t + 1) * rows),
    });
  }
  return out;
}

/** Shape of {@linkcode ropeReference}'s input. */
export interface RopeReferenceOptions {
  /** Heads per row. */
  heads: number;
  /** Per-head size. */
  headDim: number;
  /** Position of row 0. */
  start: number;
  /** RoPE base. */
  theta: number;
  /** Pairing. */
  style: RopeStyle;
}

/**
 * RoPE of `x` `[rows, heads, headDim]` (a new array); row `r` is at
 * position `start + r`; angles in f64.
 *
 * @example
 * ```ts
 * import { ropeReference } from "./kernels_reference.ts";
 * const y = ropeReference(new Float32Array([1, 0]), {
 *   heads: 1, headDim: 2, start: 1, theta: 10000, style: "adjacent",
 * });
 * console.log(y); // ≈ [cos 1, sin 1]
 * ```
 */
export function ropeReference(x: Float32Array, options: RopeReferenceOptions): Float32Array {
  const { heads, headDim, start, theta, style } = options;
  const half = headDim / 2;
  const out = Float32Array.from(x);
  const rows = x.length / (heads * headDim);
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < heads; h++) {
      const base = (r * heads + h) * headDim;
      for (let j = 0; j < half; j++) {
        const angle = (start + r) * Math.pow(theta, -(2 * j) / headDim);
        const a = style === "adjacent" ? base + 2 * j : base + j;
        const b = style === "adjacent" ? a + 1 : a + half;
        const x0 = x[a], x1 = x[b];
        out[a] = x0 * Math.cos(angle) - x1 * Math.sin(angle);
        out[b] = x0 * Math.sin(angle) + x1 * Math.cos(angle);
      }
    }
  }
  return out;
}

/**
 * SwiGLU gate: `silu(gate) * up`.
 *
 * @example
 * ```ts
 * import { swigluReference } from "./kernels_reference.ts";
 * console.log(swigluReference(new Float32Array([0, 1]), new Float32Array([5, 2])));
 * ```
 */
export function swigluReference(gate: Float32Array, up: Float32Array): Float32Array {
  return swiglu(gate, up);
}

/**
 * Residual connection: `x + y`.
 *
 * @example
 * ```ts
 * import { residualAddReference } from "./kernels_reference.ts";
 * console.log(residualAddReference(new Float32Array([1]), new Float32Array([2]))); // [3]
 * ```
 */
export function residualAddReference(x: Float32Array, y: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] + y[i];
  return out;
}

/** Shape of {@linkcode causalAttentionReference}'s inputs. */
export interface CausalAttentionReferenceOptions {
  /** Query heads. */
  numQueryHeads: number;
  /** Key/value heads. */
  numKvHeads: number;
  /** Per-head size. */
  headDim: number;
  /** Position of query row 0; row `i` sees keys `0 ..= start + i`. */
  start: number;
  /** Score scale; default `1 / sqrt(headDim)`. */
  scale?: number;
  /** Sliding window: row `i` sees only the last `window` of its keys; default 0 (all). */
  window?: number;
}

/**
 * Causal GQA attention: q `[rows, Hq, d]`, k and v `[positions, Hkv, d]`
 * -> `[rows, Hq, d]` (f64 softmax, llama2.c style loops).
 *
 * @example
 * ```ts
 * import { causalAttentionReference } from "./kernels_reference.ts";
 * const out = causalAttentionReference(
 *   new Float32Array([1, 0]), new Float32Array([1, 0]), new Float32Array([3, 4]),
 *   { numQueryHeads: 1, numKvHeads: 1, headDim: 2, start: 0 },
 * );
 * console.log(out); // Float32Array [3, 4]
 * ```
 */
export function causalAttentionReference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  options: CausalAttentionReferenceOptions,
): Float32Array {
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d, start } = options;
  const scale = options.scale ?? 1 / Math.sqrt(d);
  const rows = q.length / (hq * d);
  const group = hq / hkv;
  const out = new Float32Array(q.length);
  const window = options.window ?? 0;
  for (let i = 0; i < rows; i++) {
    const n = start + i + 1;
    const first = window > 0 ? Math.max(0, n - window) : 0;
    for (let h = 0; h < hq; h++) {
      const kvh = Math.floor(h / group);
      const qb = (i * hq + h) * d;
      const scores = new Float64Array(n);
      let max = -Infinity;
      for (let j = first; j < n; j++) {
        let dot = 0;
        for (let c = 0; c < d; c++) dot += q[qb + c] * k[(j * hkv + kvh) * d + c];
        scores[j] = dot * scale;
        if (scores[j] > max) max = scores[j];
      }
      let sum = 0;
      for (let j = first; j < n; j++) sum += scores[j] = Math.exp(scores[j] - max);
      for (let c = 0; c < d; c++) {
        let acc = 0;
        for (let j = first; j < n; j++) acc += scores[j] * v[(j * hkv + kvh) * d + c];
        out[qb + c] = acc / sum;
      }
    }
  }
  return out;
}

/**
 * Token sampling (the oracle of `planSampleToken`): what the CPU sampler
 * ({@linkcode createSampler}) picks with `coin` as its draw. At temperature
 * 0 the largest logit (lowest index on ties); otherwise the first token
 * whose cumulative `softmax(logits / temperature)` mass, in f64, exceeds
 * `coin` (the last token of nonzero mass if rounding leaves none).
 *
 * @example
 * ```ts
 * import { sampleTokenReference } from "./kernels_reference.ts";
 * console.log(sampleTokenReference([0, 2, 2], 0, 0)); // 1
 * console.log(sampleTokenReference([0, 0], 1, 0.75)); // 1
 * ```
 */
export function sampleTokenReference(
  logits: ArrayLike<number>,
  temperature: number,
  coin: number,
): number {
  // The CPU sampler with one given draw: the GPU kernel must pick what it picks.
  return createSampler({ temperature, random: { next: () => coin } }).sample(logits);
}
