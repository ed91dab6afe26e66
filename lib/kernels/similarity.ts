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

import querySimilaritySource from "../../shaders/query_similarity.wgsl" with { type: "text" };
import {
  assertAllFinite,
  assertFinite,
  assertInteger,
  assertStorageBuffer,
  describeValue,
} from "../gpu/errors.ts";
import { createBuffer, readBuffer } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";

/** Options of {@linkcode createQuerySimilarity} and the other similarity functions. */
export interface QuerySimilarityOptions {
  /** Query heads `Hq` (a multiple of `numKvHeads`). */
  numQueryHeads: number;
  /** KV heads `Hkv`. */
  numKvHeads: number;
  /** Head size `d`. */
  headDim: number;
}

/** The GPU buffers and values {@linkcode QuerySimilarity.encode} works on. */
export interface QuerySimilarityBuffers {
  /** Sequences in the batch. */
  batch: number;
  /** Current queries `[batch][Hq][d]` f32 (STORAGE). */
  qNow: GPUBuffer;
  /** Previous queries `[batch][Hq][d]` f32 (STORAGE). */
  qPrev: GPUBuffer;
  /** Output cosine per query head `[batch][Hq]` f32 (STORAGE). */
  cosine: GPUBuffer;
  /** Output group mean per KV head `[batch][Hkv]` f32 (STORAGE). */
  groupMean: GPUBuffer;
  /** Output flags per KV head `[batch][Hkv]` u32, 1 when `mean < tau` (STORAGE). */
  flags: GPUBuffer;
  /** Correction threshold (finite). */
  tau: number;
  /** Optional timestamps around the similarity's one compute pass (profiling). */
  timestampWrites?: GPUComputePassTimestampWrites;
}

/** Records query similarity into a caller's encoder. */
export interface QuerySimilarity {
  /** The options. */
  readonly options: Readonly<QuerySimilarityOptions>;
  /**
   * Records the similarity of `qNow` and `qPrev`; `tau` goes into a uniform
   * buffer kept per distinct value, so several calls with different `tau`
   * may share one submission.
   */
  encode(encoder: GPUCommandEncoder, buffers: QuerySimilarityBuffers): void;
  /** Destroys the uniform buffers. */
  [Symbol.dispose](): void;
}

/** Inputs of {@linkcode querySimilarity} and {@linkcode querySimilarityReference}. */
export interface QuerySimilarityInputs {
  /** Current queries `[batch][Hq][d]`. */
  qNow: Float32Array;
  /** Previous queries `[batch][Hq][d]`. */
  qPrev: Float32Array;
  /** Correction threshold. */
  tau: number;
}

/** Results of {@linkcode querySimilarity} and {@linkcode querySimilarityReference}. */
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

function checkOptions(options: QuerySimilarityOptions): QuerySimilarityOptions {
  if (options == null || typeof options !== "object") {
    throw new TypeError(
      `Cannot ${ACTION} as 'options' must be an object: received ${describeValue(options)}`,
    );
  }
  const { numQueryHeads, numKvHeads, headDim } = options;
  assertInteger("numQueryHeads", numQueryHeads, ACTION, 1);
  assertInteger("numKvHeads", numKvHeads, ACTION, 1, MAX_DISPATCH);
  assertInteger("headDim", headDim, ACTION, 1);
  if (numQueryHeads % numKvHeads !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'numQueryHeads' must be a multiple of 'numKvHeads' ${numKvHeads}: received ${numQueryHeads}`,
    );
  }
  return { numQueryHeads, numKvHeads, headDim };
}

function assertSize(name: string, buffer: GPUBuffer, bytes: number, action: string): void {
  if (buffer.size < bytes) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must hold at least ${bytes} bytes: received ${buffer.size} bytes`,
    );
  }
}

class Similarity implements QuerySimilarity {
  readonly options: Readonly<QuerySimilarityOptions>;
  #device: GPUDevice;
  #pipeline: GPUComputePipeline;
  #tauBuffers = new Map<number, GPUBuffer>();

  constructor(device: GPUDevice, options: QuerySimilarityOptions) {
    this.options = Object.freeze({ ...options });
    this.#device = device;
    this.#pipeline = cachedPipeline(device, "query_similarity", querySimilaritySource, {
      HEAD_DIM: options.headDim,
      GROUP: options.numQueryHeads / options.numKvHeads,
    });
  }

  #tau(tau: number): GPUBuffer {
    const f32 = Math.fround(tau);
    let buffer = this.#tauBuffers.get(f32);
    if (!buffer) {
      buffer = createBuffer(
        this.#device,
        `freekv query similarity tau ${f32}`,
        GPUBufferUsage.UNIFORM,
        new Float32Array([f32, 0, 0, 0]),
      );
      this.#tauBuffers.set(f32, buffer);
    }
    return buffer;
  }

  encode(encoder: GPUCommandEncoder, buffers: QuerySimilarityBuffers): void {
    const action = "encode query similarity";
    const { numQueryHeads: hq, numKvHeads: hkv, headDim: d } = this.options;
    if (buffers == null || typeof buffers !== "object") {
      throw new TypeError(
        `Cannot ${action} as 'buffers' must be an object: received ${describeValue(buffers)}`,
      );
    }
    const { batch, tau } = buffers;
    assertInteger("batch", batch, action, 1, MAX_DISPATCH);
    assertFinite("tau", tau, action);
    for (const name of ["qNow", "qPrev", "cosine", "groupMean", "flags"] as const) {
      assertStorageBuffer(name, buffers[name], action);
    }
    assertSize("qNow", buffers.qNow, batch * hq * d * 4, action);
    assertSize("qPrev", buffers.qPrev, batch * hq * d * 4, action);
    assertSize("cosine", buffers.cosine, batch * hq * 4, action);
    assertSize("groupMean", buffers.groupMean, batch * hkv * 4, action);
    assertSize("flags", buffers.flags, batch * hkv * 4, action);
    const bindGroup = this.#device.createBindGroup({
      label: "freekv query similarity bind group",
      layout: this.#pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: this.#tau(tau) } },
        { binding: 1, resource: { buffer: buffers.qNow } },
        { binding: 2, resource: { buffer: buffers.qPrev } },
        { binding: 3, resource: { buffer: buffers.cosine } },
        { binding: 4, resource: { buffer: buffers.groupMean } },
        { binding: 5, resource: { buffer: buffers.flags } },
      ],
    });
    const pass = encoder.beginComputePass({
      label: "freekv query similarity",
      timestampWrites: buffers.timestampWrites,
    });
    pass.setPipeline(this.#pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(hkv, batch);
    pass.end();
  }

  [Symbol.dispose](): void {
    for (const buffer of this.#tauBuffers.values()) buffer.destroy();
    this.#tauBuffers.clear();
  }
}

/**
 * Creates a {@linkcode QuerySimilarity} for one head geometry. The caller
 * owns `device`.
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
 * const encoder = device.createCommandEncoder();
 * similarity.encode(encoder, { batch: 1, qNow, qPrev, cosine, groupMean, flags, tau: 0.9 });
 * device.queue.submit([encoder.finish()]);
 * console.log(new Uint32Array(await readBuffer(device, flags))); // [1]
 * ```
 */
export function createQuerySimilarity(
  device: GPUDevice,
  options: QuerySimilarityOptions,
): QuerySimilarity {
  return new Similarity(device, checkOptions(options));
}

function checkInputs(inputs: QuerySimilarityInputs, options: QuerySimilarityOptions): number {
  if (inputs == null || typeof inputs !== "object") {
    throw new TypeError(
      `Cannot ${ACTION} as 'inputs' must be an object: received ${describeValue(inputs)}`,
    );
  }
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
  const opts = checkOptions(options);
  const batch = checkInputs(inputs, opts);
  using similarity = createQuerySimilarity(device, opts);
  const storage = GPUBufferUsage.STORAGE;
  const out = storage | GPUBufferUsage.COPY_SRC;
  const hq = opts.numQueryHeads, hkv = opts.numKvHeads;
  const buffers = {
    batch,
    tau: inputs.tau,
    qNow: createBuffer(device, "freekv querySimilarity qNow", storage, inputs.qNow),
    qPrev: createBuffer(device, "freekv querySimilarity qPrev", storage, inputs.qPrev),
    cosine: createBuffer(device, "freekv querySimilarity cosine", out, batch * hq * 4),
    groupMean: createBuffer(device, "freekv querySimilarity groupMean", out, batch * hkv * 4),
    flags: createBuffer(device, "freekv querySimilarity flags", out, batch * hkv * 4),
  };
  try {
    const encoder = device.createCommandEncoder({ label: "freekv querySimilarity" });
    similarity.encode(encoder, buffers);
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

/**
 * CPU oracle of the query similarity (plain loops in f64, rounded to f32 on
 * store; flags compare the stored f32 mean with `tau` rounded to f32, as the
 * GPU does).
 *
 * @example
 * ```ts
 * import { querySimilarityReference } from "./similarity.ts";
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
  const opts = checkOptions(options);
  const batch = checkInputs(inputs, opts);
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
