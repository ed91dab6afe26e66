/**
 * WebGPU kernels of a Llama-family forward pass: embedding lookup, RMSNorm,
 * projections (matrix-vector for decode, matrix-matrix for prefill) over f32,
 * f16 or bf16 weights, RoPE, SwiGLU, residual add and causal attention.
 *
 * Each `plan*` function validates its sizes, creates the uniforms and bind
 * groups once and returns a {@linkcode KernelPlan} whose `record` only
 * records dispatches into the caller's compute pass; the caller submits.
 * The plain-loop CPU oracles live in `kernels_reference.ts`.
 *
 * @module
 */

import embeddingSrc from "../../shaders/embedding.wgsl" with { type: "text" };
import rmsnormSrc from "../../shaders/rmsnorm.wgsl" with { type: "text" };
import matvecSrc from "../../shaders/matvec.wgsl" with { type: "text" };
import matmulSrc from "../../shaders/matmul.wgsl" with { type: "text" };
import ropeSrc from "../../shaders/rope.wgsl" with { type: "text" };
import swigluSrc from "../../shaders/swiglu.wgsl" with { type: "text" };
import residualAddSrc from "../../shaders/residual_add.wgsl" with { type: "text" };
import causalAttentionSrc from "../../shaders/causal_attention.wgsl" with { type: "text" };
import weightLoadSrc from "../../shaders/weight_load.wgsl" with { type: "text" };
import { type BufferSlice, createBuffer, packUniforms } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { assertFinite, assertHeadsDivide, assertInteger, assertOneOf } from "../gpu/errors.ts";
import type { RopeStyle, Tensor, WeightDtype } from "./types.ts";
import { convertTensor } from "./weight_convert.ts";

export type { BufferSlice } from "../gpu/buffers.ts";

/** Recorded work of one kernel (or several), planned once, recorded many times. */
export interface KernelPlan {
  /** What the plan computes, for debugging. */
  readonly label: string;
  /** Records the plan's dispatches into `pass`. */
  record(pass: GPUComputePassEncoder): void;
  /** Destroys the uniform buffers the plan created. */
  [Symbol.dispose](): void;
}

/** One row block of a weight matrix, in its own buffer. */
export interface GpuMatrixPart {
  /** Rows `rowStart .. rowStart + rows` of the matrix, row-major, packed words. */
  buffer: GPUBuffer;
  /** First row of the matrix held by this part. */
  rowStart: number;
  /** Rows held. */
  rows: number;
}

/** A `[rows, cols]` weight matrix on the GPU, split into row blocks that each fit one binding. */
export interface GpuMatrix {
  /** Storage type on the GPU (16-bit types two per 32-bit word, low half first). */
  readonly dtype: WeightDtype;
  /** Output features. */
  readonly rows: number;
  /** Input features. */
  readonly cols: number;
  /** Row blocks, in order. */
  readonly parts: readonly GpuMatrixPart[];
  /** Bytes on the GPU. */
  readonly byteLength: number;
  /** Destroys the part buffers. */
  [Symbol.dispose](): void;
}

/** Options of {@linkcode uploadMatrix}. */
export interface UploadMatrixOptions {
  /** Store as this type (converting on the host); default: the tensor's own type. */
  dtype?: WeightDtype;
  /** Label prefix of the buffers. */
  label?: string;
  /** Largest part in bytes; default: the device's `maxStorageBufferBindingSize` (and `maxBufferSize`). */
  maxPartBytes?: number;
}

const WEIGHT_DTYPES: readonly WeightDtype[] = ["f32", "f16", "bf16"];
const DTYPE_CODE: Record<WeightDtype, number> = { f32: 0, f16: 1, bf16: 2 };

/**
 * Uploads a `[rows, cols]` tensor as a {@linkcode GpuMatrix}, split into
 * row blocks no larger than one storage binding.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const t = { dtype: "f32" as const, shape: [3, 2], data: new Float32Array(6) };
 * using m = uploadMatrix(gpu.device, t, { dtype: "bf16" });
 * console.log(m.parts.length, m.byteLength); // 1 12
 * ```
 */
export function uploadMatrix(
  device: GPUDevice,
  tensor: Tensor,
  options: UploadMatrixOptions = {},
): GpuMatrix {
  const action = "upload a weight matrix";
  const dtype = options.dtype ?? tensor.dtype;
  assertOneOf("dtype", dtype, WEIGHT_DTYPES, action);
  if (tensor.shape.length !== 2) {
    throw new RangeError(
      `Cannot ${action} as 'tensor.shape' must have 2 dimensions: received [${tensor.shape}]`,
    );
  }
  const [rows, cols] = tensor.shape;
  assertInteger("rows", rows, action, 1);
  assertInteger("cols", cols, action, 1);
  if (tensor.data.length !== rows * cols) {
    throw new RangeError(
      `Cannot ${action} as 'tensor.data' must hold ${
        rows * cols
      } elements: received ${tensor.data.length}`,
    );
  }
  const limit = Math.min(
    options.maxPartBytes ?? Infinity,
    device.limits.maxStorageBufferBindingSize,
    device.limits.maxBufferSize,
  );
  const bytesPer = dtype === "f32" ? 4 : 2;
  // Each part is its own buffer, so 16-bit parts always start on a word.
  const rowBytes = cols * bytesPer;
  const partRows = Math.floor((limit - 4) / rowBytes);
  if (partRows < 1) {
    throw new RangeError(
      `Cannot ${action} as one row (${rowBytes} bytes) must fit a storage binding of ${limit} bytes: received cols ${cols}`,
    );
  }
  const data = convertTensor(tensor, dtype).data;
  const label = options.label ?? "weight";
  const parts: GpuMatrixPart[] = [];
  let byteLength = 0;
  for (let rowStart = 0; rowStart < rows; rowStart += partRows) {
    const n = Math.min(partRows, rows - rowStart);
    const view = data.subarray(rowStart * cols, (rowStart + n) * cols);
    const buffer = createBuffer(
      device,
      parts.length === 0 && n === rows ? label : `${label} rows ${rowStart}..${rowStart + n}`,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      view,
    );
    byteLength += buffer.size;
    parts.push({ buffer, rowStart, rows: n });
  }
  return {
    dtype,
    rows,
    cols,
    parts,
    byteLength,
    [Symbol.dispose]() {
      for (const p of parts) p.buffer.destroy();
    },
  };
}

/**
 * Uploads a vector (a norm weight or a bias) as an f32 storage buffer.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { uploadVector } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const b = uploadVector(gpu.device, { dtype: "f32", shape: [4], data: new Float32Array(4) }, "norm");
 * console.log(b.size); // 16
 * b.destroy();
 * ```
 */
export function uploadVector(device: GPUDevice, tensor: Tensor, label: string): GPUBuffer {
  return createBuffer(
    device,
    label,
    GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    convertTensor(tensor, "f32").data,
  );
}

/**
 * The RoPE inverse frequencies `theta^(-2i/d)` for `i < d/2`, computed in f64.
 *
 * @example
 * ```ts
 * import { ropeInvFreq } from "./kernels.ts";
 * console.log(ropeInvFreq(4, 10000)); // Float32Array [1, 0.01]
 * ```
 */
export function ropeInvFreq(headDim: number, theta: number): Float32Array {
  assertInteger("headDim", headDim, "compute RoPE frequencies", 2);
  assertFinite("theta", theta, "compute RoPE frequencies");
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < out.length; i++) out[i] = Math.pow(theta, -(2 * i) / headDim);
  return out;
}

/**
 * Creates the small uniform buffer that carries a sequence position
 * (`start`: position of the first row) to RoPE and attention; rewrite it with
 * {@linkcode writeSeqStart} between submits.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createSeqUniform } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const seq = createSeqUniform(gpu.device, "seq", 0);
 * seq.destroy();
 * ```
 */
export function createSeqUniform(device: GPUDevice, label: string, start: number): GPUBuffer {
  assertInteger("start", start, "create a sequence uniform", 0, 0xffffffff);
  return createBuffer(
    device,
    label,
    GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    new Uint32Array([start, 0, 0, 0]),
  );
}

/**
 * Queues a write of the position `start` into a buffer made by
 * {@linkcode createSeqUniform}; it takes effect for later submits.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createSeqUniform, writeSeqStart } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const seq = createSeqUniform(gpu.device, "seq", 0);
 * writeSeqStart(gpu.device, seq, 7);
 * seq.destroy();
 * ```
 */
export function writeSeqStart(device: GPUDevice, seq: GPUBuffer, start: number): void {
  assertInteger("start", start, "write a sequence position", 0, 0xffffffff);
  device.queue.writeBuffer(seq, 0, new Uint32Array([start]));
}

/**
 * Joins plans into one that records them in order and disposes them all.
 *
 * @example
 * ```ts
 * import { combinePlans } from "./kernels.ts";
 * const none = combinePlans("nothing", []);
 * console.log(none.label); // nothing
 * ```
 */
export function combinePlans(label: string, plans: KernelPlan[]): KernelPlan {
  return {
    label,
    record(pass) {
      for (const p of plans) p.record(pass);
    },
    [Symbol.dispose]() {
      for (const p of plans) p[Symbol.dispose]();
    },
  };
}

// ---------------------------------------------------------------------------

interface Dispatch {
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number, number];
}

function makePlan(label: string, dispatches: Dispatch[], owned: GPUBuffer[]): KernelPlan {
  return {
    label,
    record(pass) {
      for (const d of dispatches) {
        pass.setPipeline(d.pipeline);
        pass.setBindGroup(0, d.bindGroup);
        pass.dispatchWorkgroups(...d.workgroups);
      }
    },
    [Symbol.dispose]() {
      for (const b of owned) b.destroy();
    },
  };
}

/** Splits `n` workgroups over x and y; shaders rebuild the index as `x + y * num_x`. */
function grid(n: number, action: string): [number, number, number] {
  const x = Math.max(1, Math.min(n, 65535));
  const y = Math.ceil(n / x);
  if (y > 65535) {
    throw new RangeError(`Cannot ${action} as it needs ${n} workgroups, more than 65535^2`);
  }
  return [x, Math.max(1, y), 1];
}

function uniform(device: GPUDevice, label: string, values: Parameters<typeof packUniforms>[0]) {
  return createBuffer(
    device,
    `${label} params`,
    GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    new Uint8Array(packUniforms(values)),
  );
}

function entries(resources: Array<GPUBuffer | BufferSlice>): GPUBindGroupEntry[] {
  return resources.map((r, binding) => ({
    binding,
    resource: r instanceof GPUBuffer ? { buffer: r } : {
      buffer: r.buffer,
      offset: r.offset ?? 0,
      size: r.size,
    },
  }));
}

function bindGroup(
  device: GPUDevice,
  label: string,
  pipeline: GPUComputePipeline,
  resources: Array<GPUBuffer | BufferSlice>,
): GPUBindGroup {
  return device.createBindGroup({
    label,
    layout: pipeline.getBindGroupLayout(0),
    entries: entries(resources),
  });
}

const dummyBias = new WeakMap<GPUDevice, GPUBuffer>();
function noBias(device: GPUDevice): GPUBuffer {
  let b = dummyBias.get(device);
  if (!b) {
    b = createBuffer(device, "freekv no-bias placeholder", GPUBufferUsage.STORAGE, 16);
    dummyBias.set(device, b);
  }
  return b;
}

function weightPipeline(
  device: GPUDevice,
  name: string,
  src: string,
  dtype: WeightDtype,
  hasBias?: boolean,
): GPUComputePipeline {
  const constants: Record<string, number> = { WDTYPE: DTYPE_CODE[dtype] };
  if (hasBias !== undefined) constants.HAS_BIAS = hasBias ? 1 : 0;
  return cachedPipeline(device, name, weightLoadSrc + "\n" + src, constants);
}

function sliceBytes(s: GPUBuffer | BufferSlice): number {
  if (s instanceof GPUBuffer) return s.size;
  return s.size ?? s.buffer.size - (s.offset ?? 0);
}

function checkFits(name: string, s: GPUBuffer | BufferSlice, floats: number, action: string) {
  const bytes = sliceBytes(s);
  if (bytes < floats * 4) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must hold ${floats} f32 values (${
        floats * 4
      } bytes): received ${bytes} bytes`,
    );
  }
}

// ---------------------------------------------------------------------------

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
 * import { planEmbedding, uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device;
 * using table = uploadMatrix(d, { dtype: "f32", shape: [3, 2], data: new Float32Array([0, 1, 2, 3, 4, 5]) });
 * const tokens = createBuffer(d, "tokens", GPUBufferUsage.STORAGE, new Uint32Array([2]));
 * const out = createBuffer(d, "out", GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, 8);
 * using plan = planEmbedding(d, { table, tokens, output: out, count: 1 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * const pass = enc.beginComputePass({ label: "example" });
 * plan.record(pass);
 * pass.end();
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

/** Options of {@linkcode planRmsNorm}. */
export interface RmsNormPlanOptions {
  /** f32 `[rows, dim]`. */
  input: GPUBuffer | BufferSlice;
  /** f32 `[dim]` gain. */
  weight: GPUBuffer;
  /** f32 `[rows, dim]` (a different buffer from `input`). */
  output: GPUBuffer | BufferSlice;
  /** Rows to normalise. */
  rows: number;
  /** Row length. */
  dim: number;
  /** Added to the mean square. */
  eps: number;
}

/**
 * Plans RMSNorm of each row: `out = weight * x / sqrt(mean(x^2) + eps)`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planRmsNorm } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const input = createBuffer(d, "x", S, new Float32Array([3, 4]));
 * const weight = createBuffer(d, "w", S, new Float32Array([1, 2]));
 * const output = createBuffer(d, "y", S | GPUBufferUsage.COPY_SRC, 8);
 * using plan = planRmsNorm(d, { input, weight, output, rows: 1, dim: 2, eps: 0 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * const pass = enc.beginComputePass({ label: "example" });
 * plan.record(pass);
 * pass.end();
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, output))); // ≈ [0.8485, 2.2627]
 * ```
 */
export function planRmsNorm(device: GPUDevice, options: RmsNormPlanOptions): KernelPlan {
  const action = "plan an RMSNorm";
  const { rows, dim, eps } = options;
  assertInteger("rows", rows, action, 1);
  assertInteger("dim", dim, action, 1);
  assertFinite("eps", eps, action);
  checkFits("input", options.input, rows * dim, action);
  checkFits("output", options.output, rows * dim, action);
  checkFits("weight", options.weight, dim, action);
  const pipeline = cachedPipeline(device, "rmsnorm", rmsnormSrc);
  const u = uniform(device, "rmsnorm", [rows, dim, { f32: eps }]);
  return makePlan("rmsnorm", [{
    pipeline,
    bindGroup: bindGroup(device, "rmsnorm", pipeline, [
      u,
      options.input,
      options.weight,
      options.output,
    ]),
    workgroups: grid(rows, action),
  }], [u]);
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

/**
 * Plans `y = W x (+ b)` for one input vector (decode): one workgroup per
 * output row, one dispatch per row block of `W`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planMatvec, uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * using weight = uploadMatrix(d, { dtype: "f32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
 * const input = createBuffer(d, "x", S, new Float32Array([1, 1]));
 * const output = createBuffer(d, "y", S | GPUBufferUsage.COPY_SRC, 8);
 * using plan = planMatvec(d, { weight, input, output });
 * const enc = d.createCommandEncoder({ label: "example" });
 * const pass = enc.beginComputePass({ label: "example" });
 * plan.record(pass);
 * pass.end();
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, output))); // Float32Array [3, 7]
 * ```
 */
export function planMatvec(device: GPUDevice, options: LinearPlanOptions): KernelPlan {
  const action = "plan a matrix-vector product";
  checkLinear(options, 1, action);
  const { weight } = options;
  const pipeline = weightPipeline(device, "matvec", matvecSrc, weight.dtype, !!options.bias);
  const owned: GPUBuffer[] = [];
  const dispatches = weight.parts.map((part, i): Dispatch => {
    const label = `matvec part ${i}`;
    const u = uniform(device, label, [part.rows, weight.cols, part.rowStart]);
    owned.push(u);
    return {
      pipeline,
      bindGroup: bindGroup(device, label, pipeline, [
        u,
        options.input,
        part.buffer,
        options.bias ?? noBias(device),
        options.output,
      ]),
      workgroups: grid(part.rows, action),
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
 * import { planMatmul, uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * using weight = uploadMatrix(d, { dtype: "f32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
 * const input = createBuffer(d, "x", S, new Float32Array([1, 1, 1, 0]));
 * const output = createBuffer(d, "y", S | GPUBufferUsage.COPY_SRC, 16);
 * using plan = planMatmul(d, { weight, input, output, tokens: 2 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * const pass = enc.beginComputePass({ label: "example" });
 * plan.record(pass);
 * pass.end();
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
      bindGroup: bindGroup(device, label, pipeline, [
        u,
        options.input,
        part.buffer,
        options.bias ?? noBias(device),
        options.output,
      ]),
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

/** Options of {@linkcode planRope}. */
export interface RopePlanOptions {
  /** f32 `[rows, heads, headDim]`, rotated in place. */
  data: GPUBuffer | BufferSlice;
  /** Rows (tokens). */
  rows: number;
  /** Heads per row. */
  heads: number;
  /** Per-head size (even). */
  headDim: number;
  /** Pairing of the rotated elements. */
  style: RopeStyle;
  /** f32 `[headDim / 2]` inverse frequencies ({@linkcode ropeInvFreq}). */
  invFreq: GPUBuffer;
  /** Uniform from {@linkcode createSeqUniform}: position of row 0. */
  seq: GPUBuffer;
}

/**
 * Plans RoPE in place; row `r` sits at position `seq.start + r`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createSeqUniform, planRope, ropeInvFreq } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const data = createBuffer(d, "q", S | GPUBufferUsage.COPY_SRC, new Float32Array([1, 0]));
 * const invFreq = createBuffer(d, "f", S, ropeInvFreq(2, 10000));
 * const seq = createSeqUniform(d, "seq", 1);
 * using plan = planRope(d, { data, rows: 1, heads: 1, headDim: 2, style: "adjacent", invFreq, seq });
 * const enc = d.createCommandEncoder({ label: "example" });
 * const pass = enc.beginComputePass({ label: "example" });
 * plan.record(pass);
 * pass.end();
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, data))); // ≈ [cos 1, sin 1]
 * ```
 */
export function planRope(device: GPUDevice, options: RopePlanOptions): KernelPlan {
  const action = "plan RoPE";
  const { rows, heads, headDim } = options;
  assertInteger("rows", rows, action, 1);
  assertInteger("heads", heads, action, 1);
  assertInteger("headDim", headDim, action, 2);
  if (headDim % 2 !== 0) {
    throw new RangeError(`Cannot ${action} as 'headDim' must be even: received ${headDim}`);
  }
  assertOneOf("style", options.style, ["adjacent", "half"] as const, action);
  checkFits("data", options.data, rows * heads * headDim, action);
  checkFits("invFreq", options.invFreq, headDim / 2, action);
  const pipeline = cachedPipeline(device, "rope", ropeSrc, {
    ADJACENT: options.style === "adjacent" ? 1 : 0,
  });
  const u = uniform(device, "rope", [rows, heads, headDim]);
  return makePlan("rope", [{
    pipeline,
    bindGroup: bindGroup(device, "rope", pipeline, [u, options.seq, options.invFreq, options.data]),
    workgroups: grid(Math.ceil(rows * heads * headDim / 2 / 64), action),
  }], [u]);
}

/** Options of {@linkcode planSwiglu}. */
export interface SwigluPlanOptions {
  /** f32 gate projections; overwritten with the result. */
  gate: GPUBuffer | BufferSlice;
  /** f32 up projections. */
  up: GPUBuffer | BufferSlice;
  /** Elements. */
  n: number;
}

/**
 * Plans the SwiGLU gate in place: `gate = silu(gate) * up`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planSwiglu } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const gate = createBuffer(d, "g", S | GPUBufferUsage.COPY_SRC, new Float32Array([0, 1]));
 * const up = createBuffer(d, "u", S, new Float32Array([5, 2]));
 * using plan = planSwiglu(d, { gate, up, n: 2 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * const pass = enc.beginComputePass({ label: "example" });
 * plan.record(pass);
 * pass.end();
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, gate))); // ≈ [0, 1.4621]
 * ```
 */
export function planSwiglu(device: GPUDevice, options: SwigluPlanOptions): KernelPlan {
  return planInPlace(device, "swiglu", swigluSrc, ["gate", options.gate], ["up", options.up], {
    n: options.n,
    action: "plan SwiGLU",
  });
}

/** An element-wise kernel `a = f(a, b)` over `n` f32 values (SwiGLU, residual add). */
function planInPlace(
  device: GPUDevice,
  name: string,
  source: string,
  [aName, a]: [string, GPUBuffer | BufferSlice],
  [bName, b]: [string, GPUBuffer | BufferSlice],
  { n, action }: { n: number; action: string },
): KernelPlan {
  assertInteger("n", n, action, 1);
  checkFits(aName, a, n, action);
  checkFits(bName, b, n, action);
  const pipeline = cachedPipeline(device, name, source);
  const u = uniform(device, name, [n]);
  return makePlan(name, [{
    pipeline,
    bindGroup: bindGroup(device, name, pipeline, [u, a, b]),
    workgroups: grid(Math.ceil(n / 64), action),
  }], [u]);
}

/** Options of {@linkcode planResidualAdd}. */
export interface ResidualAddPlanOptions {
  /** f32 residual stream; `target += addend`. */
  target: GPUBuffer | BufferSlice;
  /** f32 values to add. */
  addend: GPUBuffer | BufferSlice;
  /** Elements. */
  n: number;
}

/**
 * Plans the residual connection `target += addend`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planResidualAdd } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const target = createBuffer(d, "x", S | GPUBufferUsage.COPY_SRC, new Float32Array([1, 2]));
 * const addend = createBuffer(d, "y", S, new Float32Array([10, 20]));
 * using plan = planResidualAdd(d, { target, addend, n: 2 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * const pass = enc.beginComputePass({ label: "example" });
 * plan.record(pass);
 * pass.end();
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, target))); // Float32Array [11, 22]
 * ```
 */
export function planResidualAdd(device: GPUDevice, options: ResidualAddPlanOptions): KernelPlan {
  return planInPlace(
    device,
    "residual_add",
    residualAddSrc,
    ["target", options.target],
    ["addend", options.addend],
    { n: options.n, action: "plan a residual add" },
  );
}

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
 * import { createSeqUniform, planCausalAttention } from "./kernels.ts";
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
 * const pass = enc.beginComputePass({ label: "example" });
 * plan.record(pass);
 * pass.end();
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

/**
 * Records `plans` into one compute pass of `encoder`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { recordPlans } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const enc = gpu.device.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [], "nothing");
 * gpu.device.queue.submit([enc.finish()]);
 * ```
 */
export function recordPlans(
  encoder: GPUCommandEncoder,
  plans: readonly KernelPlan[],
  label: string,
): void {
  const pass = encoder.beginComputePass({ label });
  for (const p of plans) p.record(pass);
  pass.end();
}
