/**
 * Query similarity for FreeKV's fine-grained correction: per query head the
 * cosine similarity of the current and the previous query, per KV head the
 * mean over its GQA group, and a flag (u32 1/0) that says the KV head must
 * be corrected: `mean < tau`.
 *
 * Conventions: the cosine of a zero vector with anything is 0 (no
 * direction, so no evidence that the selection still fits); cosines are
 * clamped to [-1, 1] against rounding; a NaN mean is flagged (the flag is
 * `!(mean >= tau)`), so a poisoned query always triggers correction.
 *
 * @module
 */

import querySimilarityMain from "../../shaders/query_similarity.wgsl" with { type: "text" };
import groupSimilaritySource from "../../shaders/group_similarity.wgsl" with { type: "text" };

// group_similarity.wgsl checks a row; the one-dispatch selection appends it too.
const querySimilaritySource = querySimilarityMain + groupSimilaritySource;
import {
  assertAllFinite,
  assertBoolean,
  assertDevice,
  assertFinite,
  assertHeadsDivide,
  assertInteger,
  assertObject,
  describeValue,
  disposedError,
} from "../gpu/errors.ts";
import {
  assertBufferSize,
  assertNotShared,
  BindGroupCache,
  type BufferSlice,
  createBuffer,
  packUniforms,
  readBuffer,
} from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { type KernelEncodeOptions, passTimestampWrites } from "../gpu/timing.ts";
import type { GpuKernel, GpuKernelPlan } from "./contract.ts";

/** Options of {@linkcode createQuerySimilarity} and the other similarity functions. */
export interface QuerySimilarityOptions {
  /** Query heads `Hq` (a multiple of `numKvHeads`). */
  numQueryHeads: number;
  /** KV heads `Hkv`. */
  numKvHeads: number;
  /** Head size `d`. */
  headDim: number;
}

/** The per-step values of {@linkcode QuerySimilarity.plan}. */
export interface QuerySimilarityStep {
  /** Sequences in the batch. */
  batch: number;
  /** Correction threshold (finite). */
  tau: number;
  /**
   * Also store `qNow` into `qPrev` in the same dispatch, each row after it
   * was read, so that the next step's check needs no copy (default false).
   */
  storeQuery?: boolean;
}

/** The GPU buffers {@linkcode QuerySimilarityPlan.encode} works on. */
export interface QuerySimilarityBuffers {
  /** Current queries `[batch][Hq][d]` f32 (STORAGE). */
  qNow: GPUBuffer | BufferSlice;
  /**
   * Previous queries `[batch][Hq][d]` f32 (STORAGE), bound writable (see
   * {@linkcode QuerySimilarityStep.storeQuery}): not in `qNow`'s buffer.
   */
  qPrev: GPUBuffer | BufferSlice;
  /** Output cosine per query head `[batch][Hq]` f32 (STORAGE). */
  cosine: GPUBuffer | BufferSlice;
  /** Output group mean per KV head `[batch][Hkv]` f32 (STORAGE). */
  groupMean: GPUBuffer | BufferSlice;
  /** Output flags per KV head `[batch][Hkv]` u32, 1 when `mean < tau` (STORAGE). */
  flags: GPUBuffer | BufferSlice;
}

/** Query similarity for one head geometry, from {@linkcode createQuerySimilarity}. */
export interface QuerySimilarity
  extends GpuKernel<QuerySimilarityOptions, QuerySimilarityStep, QuerySimilarityPlan> {}

/** One batch size and threshold on the GPU, from {@linkcode QuerySimilarity.plan}. */
export interface QuerySimilarityPlan
  extends GpuKernelPlan<QuerySimilarityStep, QuerySimilarityBuffers> {
  /** Sequences of the plan. */
  readonly batch: number;
  /**
   * Threshold of the plan (as given; the GPU compares with it rounded to
   * f32). Use one plan per threshold within a submission.
   */
  readonly tau: number;
  /** Whether an encode stores `qNow` into `qPrev`. */
  readonly storeQuery: boolean;
}

/** Inputs of {@linkcode querySimilarity} and `querySimilarityReference`. */
export interface QuerySimilarityInputs {
  /** Current queries `[batch][Hq][d]`. */
  qNow: Float32Array;
  /** Previous queries `[batch][Hq][d]`. */
  qPrev: Float32Array;
  /** Correction threshold. */
  tau: number;
}

/** Results of {@linkcode querySimilarity} and `querySimilarityReference`. */
export interface QuerySimilarityResult {
  /** Cosine per query head `[batch][Hq]`. */
  cosine: Float32Array;
  /** Group mean per KV head `[batch][Hkv]`. */
  groupMean: Float32Array;
  /** 1 where the KV head must be corrected (`groupMean < tau`), else 0, `[batch][Hkv]`. */
  flags: Uint32Array;
}

const ACTION = "compute query similarity";
const MAX_DISPATCH = 65535;

/** Validates {@linkcode QuerySimilarityOptions}. */
export function checkSimilarityOptions(options: QuerySimilarityOptions): QuerySimilarityOptions {
  assertObject("options", options, ACTION);
  const { numQueryHeads, numKvHeads, headDim } = options;
  assertHeadsDivide(numQueryHeads, numKvHeads, ACTION);
  assertInteger("numKvHeads", numKvHeads, ACTION, 1, MAX_DISPATCH);
  assertInteger("headDim", headDim, ACTION, 1);
  return { numQueryHeads, numKvHeads, headDim };
}

class Similarity implements QuerySimilarity {
  readonly options: Readonly<QuerySimilarityOptions>;
  readonly device: GPUDevice;
  readonly pipeline: GPUComputePipeline;
  #disposed = false;

  constructor(device: GPUDevice, options: QuerySimilarityOptions) {
    this.options = Object.freeze({ ...options });
    this.device = device;
    this.pipeline = cachedPipeline(device, "query_similarity", querySimilaritySource, {
      HEAD_DIM: options.headDim,
      GROUP: options.numQueryHeads / options.numKvHeads,
    });
  }

  plan(step: QuerySimilarityStep): QuerySimilarityPlan {
    if (this.#disposed) throw disposedError(ACTION, "query similarity");
    checkStep(step);
    return new SimilarityPlan(this, step);
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
  }
}

function checkStep(step: QuerySimilarityStep): void {
  assertObject("step", step, ACTION);
  assertInteger("batch", step.batch, ACTION, 1, MAX_DISPATCH);
  assertFinite("tau", step.tau, ACTION);
  if (step.storeQuery !== undefined) assertBoolean("storeQuery", step.storeQuery, ACTION);
}

class SimilarityPlan implements QuerySimilarityPlan {
  #similarity: Similarity;
  #tau: GPUBuffer;
  #step!: Required<QuerySimilarityStep>;
  #bindings = new BindGroupCache();
  #disposed = false;

  constructor(similarity: Similarity, step: QuerySimilarityStep) {
    this.#similarity = similarity;
    this.#tau = createBuffer(
      similarity.device,
      "freekv query similarity tau",
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      16,
    );
    this.#write(step);
  }

  get batch(): number {
    return this.#step.batch;
  }

  get tau(): number {
    return this.#step.tau;
  }

  get storeQuery(): boolean {
    return this.#step.storeQuery;
  }

  #write(step: QuerySimilarityStep): void {
    const params = packUniforms([{ f32: step.tau }, step.storeQuery ? 1 : 0]);
    this.#similarity.device.queue.writeBuffer(this.#tau, 0, params);
    this.#step = { batch: step.batch, tau: step.tau, storeQuery: step.storeQuery ?? false };
  }

  update(step: QuerySimilarityStep): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    checkStep(step);
    this.#write(step);
  }

  encode(
    encoder: GPUCommandEncoder,
    buffers: QuerySimilarityBuffers,
    options: KernelEncodeOptions = {},
  ): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    const { numQueryHeads: hq, numKvHeads: hkv, headDim: d } = this.#similarity.options;
    assertObject("buffers", buffers, ACTION);
    const batch = this.#step.batch;
    const qNow = assertBufferSize("qNow", buffers.qNow, batch * hq * d * 4, ACTION);
    const qPrev = assertBufferSize("qPrev", buffers.qPrev, batch * hq * d * 4, ACTION);
    assertNotShared("qPrev", qPrev, "qNow", qNow, ACTION);
    const cosine = assertBufferSize("cosine", buffers.cosine, batch * hq * 4, ACTION);
    const groupMean = assertBufferSize("groupMean", buffers.groupMean, batch * hkv * 4, ACTION);
    const flags = assertBufferSize("flags", buffers.flags, batch * hkv * 4, ACTION);
    const slices = [qNow, qPrev, cosine, groupMean, flags];
    const key = slices.flatMap((x) => [x.buffer, x.offset, x.size]);
    const { device, pipeline } = this.#similarity;
    const bindGroup = this.#bindings.get(key, () =>
      device.createBindGroup({
        label: "freekv query similarity bind group",
        layout: pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#tau } },
          ...slices.map((resource, i) => ({ binding: i + 1, resource })),
        ],
      }));
    const ts = options.timestampWrites;
    const pass = encoder.beginComputePass({
      label: "freekv query similarity",
      timestampWrites: passTimestampWrites(ts, ts?.beginIndex, ts?.endIndex),
    });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(hkv, batch);
    pass.end();
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#tau.destroy();
    this.#bindings.clear();
  }
}

/**
 * Creates a {@linkcode QuerySimilarity} for one head geometry. The caller
 * owns `device`.
 *
 * @throws {TypeError} When an option is not an integer.
 * @throws {RangeError} When a size is out of range or `numQueryHeads` is not
 * a multiple of `numKvHeads`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createQuerySimilarity } from "./similarity.ts";
 * using gpu = await requestGpu();
 * const { device } = gpu;
 * const storage = GPUBufferUsage.STORAGE;
 * const out = storage | GPUBufferUsage.COPY_SRC;
 * // 2 query heads sharing 1 KV head, d = 2: cosines 1 and 0, mean 0.5.
 * const qNow = createBuffer(device, "now", storage, new Float32Array([1, 0, 0, 1]));
 * const qPrev = createBuffer(device, "prev", storage, new Float32Array([2, 0, 1, 0]));
 * const cosine = createBuffer(device, "cos", out, 8);
 * const groupMean = createBuffer(device, "mean", out, 4);
 * const flags = createBuffer(device, "flags", out, 4);
 * using similarity = createQuerySimilarity(device, { numQueryHeads: 2, numKvHeads: 1, headDim: 2 });
 * using plan = similarity.plan({ batch: 1, tau: 0.9 });
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder, { qNow, qPrev, cosine, groupMean, flags });
 * device.queue.submit([encoder.finish()]);
 * console.log(new Uint32Array(await readBuffer(device, flags))); // [1]
 * ```
 */
export function createQuerySimilarity(
  device: GPUDevice,
  options: QuerySimilarityOptions,
): QuerySimilarity {
  assertDevice(device, ACTION);
  return new Similarity(device, checkSimilarityOptions(options));
}

/** Validates the host inputs; returns the batch. */
export function checkSimilarityInputs(
  inputs: QuerySimilarityInputs,
  options: QuerySimilarityOptions,
): number {
  assertObject("inputs", inputs, ACTION);
  const { qNow, qPrev, tau } = inputs;
  for (const [name, value] of [["qNow", qNow], ["qPrev", qPrev]] as const) {
    if (!(value instanceof Float32Array)) {
      throw new TypeError(
        `Cannot ${ACTION} as '${name}' must be a Float32Array: received ${describeValue(value)}`,
      );
    }
  }
  const rowLength = options.numQueryHeads * options.headDim;
  if (qNow.length === 0 || qNow.length % rowLength !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'qNow' must have a length that is a positive multiple of numQueryHeads * headDim = ${rowLength}: received length ${qNow.length}`,
    );
  }
  if (qPrev.length !== qNow.length) {
    throw new RangeError(
      `Cannot ${ACTION} as 'qPrev' must have the length of 'qNow' ${qNow.length}: received length ${qPrev.length}`,
    );
  }
  assertFinite("tau", tau, ACTION);
  assertAllFinite("qNow", qNow, ACTION);
  assertAllFinite("qPrev", qPrev, ACTION);
  const batch = qNow.length / rowLength;
  assertInteger("batch", batch, ACTION, 1, MAX_DISPATCH);
  return batch;
}

/**
 * Typed-array convenience: uploads the queries, runs the kernel and returns
 * cosines, group means and flags. Throws a `RangeError` on non-finite
 * queries.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { querySimilarity } from "./similarity.ts";
 * using gpu = await requestGpu();
 * const r = await querySimilarity(gpu.device, {
 *   qNow: new Float32Array([1, 0, 0, 1]),
 *   qPrev: new Float32Array([2, 0, 1, 0]),
 *   tau: 0.4,
 * }, { numQueryHeads: 2, numKvHeads: 1, headDim: 2 });
 * console.log(r.cosine, r.groupMean, r.flags); // [1, 0] [0.5] [0]
 * ```
 */
export async function querySimilarity(
  device: GPUDevice,
  inputs: QuerySimilarityInputs,
  options: QuerySimilarityOptions,
): Promise<QuerySimilarityResult> {
  assertDevice(device, ACTION);
  const opts = checkSimilarityOptions(options);
  const batch = checkSimilarityInputs(inputs, opts);
  using similarity = createQuerySimilarity(device, opts);
  const storage = GPUBufferUsage.STORAGE;
  const out = storage | GPUBufferUsage.COPY_SRC;
  const hq = opts.numQueryHeads, hkv = opts.numKvHeads;
  using plan = similarity.plan({ batch, tau: inputs.tau });
  const buffers = {
    qNow: createBuffer(device, "freekv querySimilarity qNow", storage, inputs.qNow),
    qPrev: createBuffer(device, "freekv querySimilarity qPrev", storage, inputs.qPrev),
    cosine: createBuffer(device, "freekv querySimilarity cosine", out, batch * hq * 4),
    groupMean: createBuffer(device, "freekv querySimilarity groupMean", out, batch * hkv * 4),
    flags: createBuffer(device, "freekv querySimilarity flags", out, batch * hkv * 4),
  };
  try {
    const encoder = device.createCommandEncoder({ label: "freekv querySimilarity" });
    plan.encode(encoder, buffers);
    device.queue.submit([encoder.finish()]);
    const [cosine, groupMean, flags] = await Promise.all([
      readBuffer(device, buffers.cosine, batch * hq * 4),
      readBuffer(device, buffers.groupMean, batch * hkv * 4),
      readBuffer(device, buffers.flags, batch * hkv * 4),
    ]);
    return {
      cosine: new Float32Array(cosine),
      groupMean: new Float32Array(groupMean),
      flags: new Uint32Array(flags),
    };
  } finally {
    for (const b of [buffers.qNow, buffers.qPrev, buffers.cosine, buffers.groupMean]) b.destroy();
    buffers.flags.destroy();
  }
}
