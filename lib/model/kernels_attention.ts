/**
 * Causal attention of the model's dense backend (GQA, optional sliding
 * window) over contiguous K/V.
 *
 * @module
 */

import causalAttentionSrc from "../../shaders/causal_attention.wgsl" with { type: "text" };
import type { BufferSlice } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { assertFinite, assertHeadsDivide, assertInteger } from "../gpu/errors.ts";
import { bindGroup, checkFits, grid, type KernelPlan, makePlan, uniform } from "./kernels_plan.ts";

/** Options of {@linkcode planCausalAttention}. */
export interface CausalAttentionPlanOptions {
  /** f32 queries `[rows, Hq, d]`. */
  q: GPUBuffer | BufferSlice;
  /** f32 keys `[positions, Hkv, d]` (at least `seq.start + rows` positions). */
  k: GPUBuffer | BufferSlice;
  /** f32 values `[positions, Hkv, d]`. */
  v: GPUBuffer | BufferSlice;
  /** f32 attention output `[rows, Hq, d]`. */
  output: GPUBuffer | BufferSlice;
  /** Query rows. */
  rows: number;
  /** Query heads. */
  numQueryHeads: number;
  /** Key/value heads (divides `numQueryHeads`). */
  numKvHeads: number;
  /** Per-head size, at most 256. */
  headDim: number;
  /** Uniform from {@linkcode createSeqUniform}: position of query row 0. */
  seq: GPUBuffer;
  /** Score scale; default `1 / sqrt(headDim)`. */
  scale?: number;
  /**
   * Sliding window in tokens: query position `p` sees only keys
   * `p - window + 1 ..= p`; default 0, all keys `0 ..= p`.
   */
  window?: number;
}

/** Largest head size {@linkcode planCausalAttention} supports. */
export const MAX_ATTENTION_HEAD_DIM = 256;

/**
 * Plans causal attention: query row `i` (position `seq.start + i`) attends
 * to keys `0 ..= seq.start + i`; query head `h` reads KV head
 * `h / (Hq / Hkv)`. With one row and `seq.start = pos` it is decode
 * attention over a contiguous cache. With `window` it is sliding-window
 * attention (Mistral, Qwen2) over the same cache.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createSeqUniform, planCausalAttention, recordPlans } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const q = createBuffer(d, "q", S, new Float32Array([1, 0]));
 * const k = createBuffer(d, "k", S, new Float32Array([1, 0]));
 * const v = createBuffer(d, "v", S, new Float32Array([3, 4]));
 * const output = createBuffer(d, "o", S | GPUBufferUsage.COPY_SRC, 8);
 * const seq = createSeqUniform(d, "seq", 0);
 * using plan = planCausalAttention(d, {
 *   q, k, v, output, rows: 1, numQueryHeads: 1, numKvHeads: 1, headDim: 2, seq,
 * });
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, output))); // Float32Array [3, 4]
 * ```
 */
export function planCausalAttention(
  device: GPUDevice,
  options: CausalAttentionPlanOptions,
): KernelPlan {
  const action = "plan causal attention";
  const { rows, numQueryHeads, numKvHeads, headDim } = options;
  assertInteger("rows", rows, action, 1);
  assertHeadsDivide(numQueryHeads, numKvHeads, action);
  assertInteger("headDim", headDim, action, 1, MAX_ATTENTION_HEAD_DIM);
  const scale = options.scale ?? 1 / Math.sqrt(headDim);
  assertFinite("scale", scale, action);
  const window = options.window ?? 0;
  assertInteger("window", window, action, 0, 0xffffffff);
  checkFits("q", options.q, rows * numQueryHeads * headDim, action);
  checkFits("output", options.output, rows * numQueryHeads * headDim, action);
  const pipeline = cachedPipeline(device, "causal_attention", causalAttentionSrc);
  const u = uniform(device, "causal attention", [
    rows,
    numQueryHeads,
    numKvHeads,
    headDim,
    { f32: scale },
    window,
  ]);
  return makePlan("causal attention", [{
    pipeline,
    bindGroup: bindGroup(device, "causal attention", pipeline, [
      u,
      options.seq,
      options.q,
      options.k,
      options.v,
      options.output,
    ]),
    workgroups: grid(rows * numQueryHeads, action),
  }], [u]);
}
