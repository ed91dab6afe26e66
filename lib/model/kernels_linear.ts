/**
 * Model kernels that read weight matrices: the embedding lookup and the
 * projections (matrix-vector for decode, matrix-matrix for prefill).
 *
 * @module
 */

import embeddingSrc from "../../shaders/embedding.wgsl" with { type: "text" };
import matvecSrc from "../../shaders/matvec.wgsl" with { type: "text" };
import matmulSrc from "../../shaders/matmul.wgsl" with { type: "text" };
import type { BufferSlice } from "../gpu/buffers.ts";
import { assertInteger } from "../gpu/errors.ts";
import {
  bindGroup,
  checkFits,
  type Dispatch,
  grid,
  type KernelPlan,
  makePlan,
  uniform,
} from "./kernels_plan.ts";
import { type GpuMatrix, type GpuMatrixPart, noBias, weightPipeline } from "./kernels_weights.ts";

/** Options of {@linkcode planEmbedding}. */
export interface EmbeddingPlanOptions {
  /** Token embedding `[vocab, dim]`. */
  table: GpuMatrix;
  /** u32 token ids, `count` of them. */
  tokens: GPUBuffer | BufferSlice;
  /** f32 `[count, dim]`. */
  output: GPUBuffer | BufferSlice;
  /** Tokens to look up. */
  count: number;
}

/**
 * Plans the embedding lookup `output[t] = table[tokens[t]]` (one dispatch
 * per row block of the table). Token ids are not checked on the GPU: ids
 * outside the table leave their output rows unwritten, so check them first.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planEmbedding, recordPlans, uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device;
 * using table = uploadMatrix(d, { dtype: "f32", shape: [3, 2], data: new Float32Array([0, 1, 2, 3, 4, 5]) });
 * const tokens = createBuffer(d, "tokens", GPUBufferUsage.STORAGE, new Uint32Array([2]));
 * const out = createBuffer(d, "out", GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, 8);
 * using plan = planEmbedding(d, { table, tokens, output: out, count: 1 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, out))); // Float32Array [4, 5]
 * ```
 */
export function planEmbedding(device: GPUDevice, options: EmbeddingPlanOptions): KernelPlan {
  const action = "plan an embedding lookup";
  const { table, count } = options;
  assertInteger("count", count, action, 1);
  checkFits("output", options.output, count * table.cols, action);
  const pipeline = weightPipeline(device, "embedding", embeddingSrc, table.dtype);
  const owned: GPUBuffer[] = [];
  const dispatches: Dispatch[] = table.parts.map((part, i) => {
    const label = `embedding part ${i}`;
    const u = uniform(device, label, [count, table.cols, part.rowStart, part.rows]);
    owned.push(u);
    return {
      pipeline,
      bindGroup: bindGroup(device, label, pipeline, [
        u,
        options.tokens,
        part.buffer,
        options.output,
      ]),
      workgroups: grid(Math.ceil(count * table.cols / 64), action),
    };
  });
  return makePlan("embedding", dispatches, owned);
}

/**
 * Invocations per row of the matrix-vector kernel: about 32 columns each,
 * a power of two from 1 to 64 (64 lanes, one row per workgroup, from 2048
 * columns up).
 */
function matvecLanes(cols: number): number {
  return Math.min(64, 2 ** Math.max(0, Math.ceil(Math.log2(cols / 32))));
}

/** Options of {@linkcode planMatmul} and {@linkcode planMatvec}. */
export interface LinearPlanOptions {
  /** Weight `[out, in]`. */
  weight: GpuMatrix;
  /** f32 `[tokens, in]`. */
  input: GPUBuffer | BufferSlice;
  /** f32 `[tokens, out]`. */
  output: GPUBuffer | BufferSlice;
  /** Rows of `input` (1 for {@linkcode planMatvec}). */
  tokens?: number;
  /** Optional f32 bias `[out]`. */
  bias?: GPUBuffer;
}

function checkLinear(options: LinearPlanOptions, tokens: number, action: string) {
  const { weight } = options;
  assertInteger("tokens", tokens, action, 1);
  checkFits("input", options.input, tokens * weight.cols, action);
  checkFits("output", options.output, tokens * weight.rows, action);
  if (options.bias) checkFits("bias", options.bias, weight.rows, action);
}

// Input, one weight part, bias (or the placeholder) and output, after the uniforms.
function linearBindGroup(
  device: GPUDevice,
  label: string,
  pipeline: GPUComputePipeline,
  params: GPUBuffer,
  part: GpuMatrixPart,
  options: LinearPlanOptions,
): GPUBindGroup {
  return bindGroup(device, label, pipeline, [
    params,
    options.input,
    part.buffer,
    options.bias ?? noBias(device),
    options.output,
  ]);
}

/**
 * Plans `y = W x (+ b)` for one input vector (decode): one workgroup per
 * output row, one dispatch per row block of `W`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planMatvec, recordPlans, uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * using weight = uploadMatrix(d, { dtype: "f32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
 * const input = createBuffer(d, "x", S, new Float32Array([1, 1]));
 * const output = createBuffer(d, "y", S | GPUBufferUsage.COPY_SRC, 8);
 * using plan = planMatvec(d, { weight, input, output });
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, output))); // Float32Array [3, 7]
 * ```
 */
export function planMatvec(device: GPUDevice, options: LinearPlanOptions): KernelPlan {
  const action = "plan a matrix-vector product";
  checkLinear(options, 1, action);
  const { weight } = options;
  const lanes = matvecLanes(weight.cols);
  const pipeline = weightPipeline(device, "matvec", matvecSrc, weight.dtype, !!options.bias, {
    LANES: lanes,
  });
  const rowsPerGroup = 64 / lanes;
  const owned: GPUBuffer[] = [];
  const dispatches = weight.parts.map((part, i): Dispatch => {
    const label = `matvec part ${i}`;
    const u = uniform(device, label, [part.rows, weight.cols, part.rowStart]);
    owned.push(u);
    return {
      pipeline,
      bindGroup: linearBindGroup(device, label, pipeline, u, part, options),
      workgroups: grid(Math.ceil(part.rows / rowsPerGroup), action),
    };
  });
  return makePlan("matvec", dispatches, owned);
}

/**
 * Plans `Y = X W^T (+ b)` over `tokens` rows of `X` (prefill) with 64x64
 * output tiles (4x4 per thread); one dispatch per row block of `W`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planMatmul, recordPlans, uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * using weight = uploadMatrix(d, { dtype: "f32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
 * const input = createBuffer(d, "x", S, new Float32Array([1, 1, 1, 0]));
 * const output = createBuffer(d, "y", S | GPUBufferUsage.COPY_SRC, 16);
 * using plan = planMatmul(d, { weight, input, output, tokens: 2 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, output))); // Float32Array [3, 7, 1, 3]
 * ```
 */
export function planMatmul(device: GPUDevice, options: LinearPlanOptions): KernelPlan {
  const action = "plan a matrix-matrix product";
  const tokens = options.tokens ?? 1;
  checkLinear(options, tokens, action);
  const { weight } = options;
  const pipeline = weightPipeline(device, "matmul", matmulSrc, weight.dtype, !!options.bias);
  const owned: GPUBuffer[] = [];
  const tokenTiles = Math.ceil(tokens / 64);
  if (tokenTiles > 65535) {
    throw new RangeError(
      `Cannot ${action} as 'tokens' must be at most ${65535 * 64}: received ${tokens}`,
    );
  }
  const dispatches = weight.parts.map((part, i): Dispatch => {
    const label = `matmul part ${i}`;
    const rowTiles = Math.ceil(part.rows / 64);
    if (rowTiles > 65535) {
      throw new RangeError(
        `Cannot ${action} as a weight part must have at most ${
          65535 * 64
        } rows: received ${part.rows}`,
      );
    }
    const u = uniform(device, label, [tokens, part.rows, weight.cols, part.rowStart, weight.rows]);
    owned.push(u);
    return {
      pipeline,
      bindGroup: linearBindGroup(device, label, pipeline, u, part, options),
      workgroups: [rowTiles, tokenTiles, 1],
    };
  });
  return makePlan("matmul", dispatches, owned);
}

/**
 * Plans a projection over `tokens` rows: {@linkcode planMatvec} for one row,
 * {@linkcode planMatmul} otherwise.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer } from "../gpu/buffers.ts";
 * import { planLinear, uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * using weight = uploadMatrix(d, { dtype: "f32", shape: [2, 2], data: new Float32Array(4) });
 * const x = createBuffer(d, "x", S, 8), y = createBuffer(d, "y", S, 8);
 * using plan = planLinear(d, { weight, input: x, output: y, tokens: 1 });
 * console.log(plan.label); // matvec
 * ```
 */
export function planLinear(device: GPUDevice, options: LinearPlanOptions): KernelPlan {
  return (options.tokens ?? 1) === 1 ? planMatvec(device, options) : planMatmul(device, options);
}
