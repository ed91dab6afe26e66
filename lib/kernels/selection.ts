/**
 * Page selection: score every candidate page of every sequence against the
 * query heads with the page summaries, pool the scores of each GQA group to
 * one score per (KV head, page), and keep the top k pages per KV head.
 *
 * - Score of page p for query head h: `sum_d max(q_d * lower_d, q_d * upper_d)`,
 *   an upper bound of the attention logit `q . k` over the page's keys.
 * - Pooling over the group of query heads of a KV head: `"softmax-mean"`
 *   (default; softmax over the candidate pages per query head, then the mean
 *   over the group), `"mean"` (mean of the raw scores) or `"max"`. The
 *   softmax takes the scores scaled by `scale` (default `1 / sqrt(d)`), as
 *   attention does with its logits; the raw `"mean"` and `"max"` are not
 *   scaled (a positive scale would not change their order).
 * - Top k with deterministic ties: higher pooled score first, then the lower
 *   page index. Output `[batch][Hkv][k]` u32 logical page ids (relative to
 *   the sequence) sorted that way.
 *
 * Pooled scores are compared as f32 on the GPU: pages whose pooled scores
 * are equal in f32 (for example duplicated pages) tie, and the tie rule
 * decides. NaN pooled scores (from non-finite queries or summaries) rank
 * below every number; the typed-array functions reject non-finite input.
 *
 * Workgroup storage does not bound the candidate count: scores and pooled
 * keys live in scratch buffers of the selector, sized by `plan`; the limit is
 * the device's `maxStorageBufferBindingSize` for `batch * Hq * maxCandidates`
 * f32 scores.
 *
 * @module
 */

import pageScoreSource from "../../shaders/page_score.wgsl" with { type: "text" };
import pageTopkSource from "../../shaders/page_topk.wgsl" with { type: "text" };
import {
  assertAllFinite,
  assertFinite,
  assertHeadsDivide,
  assertInteger,
  assertLength,
  assertOneOf,
  assertStorageBuffer,
  describeValue,
} from "../gpu/errors.ts";
import { createBuffer, readBuffer } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";

/** How the scores of a GQA group's query heads pool to one score per KV head. */
export type PoolingMode = "softmax-mean" | "mean" | "max";

/** Every supported {@linkcode PoolingMode}. */
export const POOLING_MODES: readonly PoolingMode[] = ["softmax-mean", "mean", "max"];

/** Options of {@linkcode createPageSelector} and the other selection functions. */
export interface PageSelectorOptions {
  /** Query heads `Hq` (a multiple of `numKvHeads`). */
  numQueryHeads: number;
  /** KV heads `Hkv`. */
  numKvHeads: number;
  /** Head size `d` (a multiple of 4). */
  headDim: number;
  /** GQA pooling (default `"softmax-mean"`). */
  pooling?: PoolingMode;
  /** Logit scale inside the softmax of `"softmax-mean"` (default `1 / sqrt(headDim)`). */
  scale?: number;
  /**
   * Tuning: threads that score one page together, a power of two dividing
   * `headDim / 4`, at most 64. Default: 1 on fallback (CPU) adapters, where a
   * page per thread is fastest; otherwise the largest such value up to 8, so
   * that neighbouring threads read neighbouring bytes. Results do not depend
   * on it beyond f32 summation order.
   */
  lanesPerPage?: number;
}

/** What to select: one entry per sequence of the batch, and `k`. */
export interface PageSelectionPlan {
  /** Sequences (default: `pageOffset.length`; the arrays must have this length). */
  batch?: number;
  /** Global page index of each sequence's logical page 0 in the summaries buffer. */
  pageOffset: ArrayLike<number>;
  /** First candidate logical page of each sequence. */
  candidateStart: ArrayLike<number>;
  /** End (exclusive) of each sequence's candidate logical pages. */
  candidateEnd: ArrayLike<number>;
  /** Pages to select per (sequence, KV head): 1..(candidateEnd - candidateStart) for every sequence. */
  k: number;
}

/** The GPU buffers {@linkcode PageSelector.encode} works on. */
export interface PageSelectionBuffers {
  /** Queries `[batch][Hq][d]` f32 (STORAGE). */
  q: GPUBuffer;
  /** Page summaries `[pageIndex][Hkv][2][d]` f32 (STORAGE). */
  summaries: GPUBuffer;
  /** Output `[batch][Hkv][k]` u32 logical page ids (STORAGE; add COPY_SRC to read it back). */
  selected: GPUBuffer;
  /** Optional timestamps around the selection's one compute pass (profiling). */
  timestampWrites?: GPUComputePassTimestampWrites;
}

/**
 * Selects pages on the GPU. `plan` validates the batch description, sizes
 * the scratch buffers and uploads the per-sequence table (through
 * `queue.writeBuffer`: it takes effect at the next submit); `encode` records
 * scoring, pooling and top-k for one layer's buffers into the caller's
 * encoder and may be called for several layers under one plan. Submit the
 * work encoded under a plan before planning again.
 */
export interface PageSelector {
  /** The options, with defaults filled in. */
  readonly options: Readonly<Required<PageSelectorOptions>>;
  /** Validates and uploads a batch description; replaces the previous plan. */
  plan(plan: PageSelectionPlan): void;
  /** Records the selection of the current plan; checks buffer sizes first. */
  encode(encoder: GPUCommandEncoder, buffers: PageSelectionBuffers): void;
  /** Destroys the selector's buffers. */
  [Symbol.dispose](): void;
}

/** Inputs of {@linkcode selectPages} and {@linkcode selectPagesReference}. */
export interface PageSelectionInputs extends PageSelectionPlan {
  /** Queries `[batch][Hq][d]`. */
  q: Float32Array;
  /** Page summaries `[pageIndex][Hkv][2][d]`. */
  summaries: Float32Array;
}

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

const ACTION = "select pages";
// Workgroup size of the scoring kernel (page_score.wgsl).
const WG = 64;
const MAX_DISPATCH = 65535;

interface CheckedPlan {
  batch: number;
  k: number;
  maxCount: number;
  /** Pages the summaries buffer must hold: max of pageOffset + candidateEnd. */
  pagesNeeded: number;
  /** (pageOffset, candidateStart, count, 0) per sequence. */
  seqs: Uint32Array<ArrayBuffer>;
}

function checkOptions(
  options: PageSelectorOptions,
  device?: GPUDevice,
): Required<PageSelectorOptions> {
  if (options == null || typeof options !== "object") {
    throw new TypeError(
      `Cannot ${ACTION} as 'options' must be an object: received ${describeValue(options)}`,
    );
  }
  const { numQueryHeads, numKvHeads, headDim } = options;
  const pooling = options.pooling ?? "softmax-mean";
  assertHeadsDivide(numQueryHeads, numKvHeads, ACTION);
  assertInteger("headDim", headDim, ACTION, 4);
  if (headDim % 4 !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'headDim' must be a multiple of 4: received ${headDim}`,
    );
  }
  assertOneOf("pooling", pooling, POOLING_MODES, ACTION);
  const scale = options.scale ?? 1 / Math.sqrt(headDim);
  assertFinite("scale", scale, ACTION);
  if (!(scale > 0)) {
    throw new RangeError(`Cannot ${ACTION} as 'scale' must be positive: received ${scale}`);
  }
  let lanesPerPage = options.lanesPerPage;
  if (lanesPerPage !== undefined) {
    assertInteger("lanesPerPage", lanesPerPage, ACTION, 1, WG);
    if ((lanesPerPage & (lanesPerPage - 1)) !== 0 || (headDim / 4) % lanesPerPage !== 0) {
      throw new RangeError(
        `Cannot ${ACTION} as 'lanesPerPage' must be a power of two dividing headDim / 4 = ${
          headDim / 4
        }: received ${lanesPerPage}`,
      );
    }
  } else {
    // CPU adapters: a page per thread. GPUs: up to 8 threads per page.
    const fallback = device?.adapterInfo?.isFallbackAdapter ?? false;
    lanesPerPage = 1;
    while (!fallback && lanesPerPage < 8 && (headDim / 4) % (lanesPerPage * 2) === 0) {
      lanesPerPage *= 2;
    }
  }
  return { numQueryHeads, numKvHeads, headDim, pooling, scale, lanesPerPage };
}

function checkPlan(plan: PageSelectionPlan): CheckedPlan {
  if (plan == null || typeof plan !== "object") {
    throw new TypeError(
      `Cannot ${ACTION} as 'plan' must be an object: received ${describeValue(plan)}`,
    );
  }
  const { pageOffset, candidateStart, candidateEnd, k } = plan;
  if (pageOffset == null || typeof pageOffset.length !== "number") {
    throw new TypeError(
      `Cannot ${ACTION} as 'pageOffset' must be an array: received ${describeValue(pageOffset)}`,
    );
  }
  const batch = plan.batch ?? pageOffset.length;
  assertInteger("batch", batch, ACTION, 1, MAX_DISPATCH);
  assertLength("pageOffset", pageOffset, batch, ACTION);
  assertLength("candidateStart", candidateStart, batch, ACTION);
  assertLength("candidateEnd", candidateEnd, batch, ACTION);
  assertInteger("k", k, ACTION, 1);
  const seqs = new Uint32Array(batch * 4);
  let maxCount = 0, pagesNeeded = 0;
  for (let b = 0; b < batch; b++) {
    const offset = pageOffset[b], start = candidateStart[b], end = candidateEnd[b];
    assertInteger(`pageOffset[${b}]`, offset, ACTION, 0, 0xffffffff);
    assertInteger(`candidateStart[${b}]`, start, ACTION, 0, 0xffffffff);
    assertInteger(`candidateEnd[${b}]`, end, ACTION, 0, 0xffffffff);
    if (end <= start) {
      throw new RangeError(
        `Cannot ${ACTION} as the candidate range of sequence ${b} must not be empty: received [${start}, ${end})`,
      );
    }
    const count = end - start;
    if (k > count) {
      throw new RangeError(
        `Cannot ${ACTION} as 'k' must be at most the ${count} candidate pages of sequence ${b}: received ${k}`,
      );
    }
    seqs.set([offset, start, count, 0], 4 * b);
    maxCount = Math.max(maxCount, count);
    pagesNeeded = Math.max(pagesNeeded, offset + end);
  }
  return { batch, k, maxCount, pagesNeeded, seqs };
}

class Selector implements PageSelector {
  readonly options: Readonly<Required<PageSelectorOptions>>;
  #device: GPUDevice;
  #scorePipeline: GPUComputePipeline;
  #topkPipeline: GPUComputePipeline;
  #lanes: number;
  #scoreParams: GPUBuffer;
  #topkParams: GPUBuffer;
  #seqs: GPUBuffer | null = null;
  #scores: GPUBuffer | null = null;
  #keys: GPUBuffer | null = null;
  #winners: GPUBuffer | null = null;
  #plan: CheckedPlan | null = null;
  #bindGroups = new Map<string, [GPUBindGroup, GPUBindGroup]>();
  #ids = new WeakMap<GPUBuffer, number>();
  #nextId = 0;

  constructor(device: GPUDevice, options: Required<PageSelectorOptions>) {
    this.options = Object.freeze({ ...options });
    this.#device = device;
    const group = options.numQueryHeads / options.numKvHeads;
    this.#lanes = options.lanesPerPage;
    this.#scorePipeline = cachedPipeline(device, "page_score", pageScoreSource, {
      HEAD_DIM: options.headDim,
      GROUP: group,
      LANES: this.#lanes,
      WG,
    });
    this.#topkPipeline = cachedPipeline(device, "page_topk", pageTopkSource, {
      GROUP: group,
      POOLING: POOLING_MODES.indexOf(options.pooling),
    });
    const uniform = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
    this.#scoreParams = createBuffer(device, "freekv page score params", uniform, 16);
    this.#topkParams = createBuffer(device, "freekv page top-k params", uniform, 16);
  }

  #ensure(buffer: GPUBuffer | null, label: string, bytes: number): GPUBuffer {
    if (buffer && buffer.size >= bytes) return buffer;
    buffer?.destroy();
    this.#bindGroups.clear();
    return createBuffer(
      this.#device,
      label,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      Math.max(256, 2 ** Math.ceil(Math.log2(bytes))),
    );
  }

  plan(plan: PageSelectionPlan): void {
    const checked = checkPlan(plan);
    const { numQueryHeads: hq, numKvHeads: hkv } = this.options;
    const { batch, k, maxCount } = checked;
    const limit = this.#device.limits.maxStorageBufferBindingSize;
    const scoreBytes = batch * hq * maxCount * 4;
    if (scoreBytes > limit) {
      throw new RangeError(
        `Cannot ${ACTION} as the scratch scores (batch * numQueryHeads * candidates * 4 bytes) must fit the device's maxStorageBufferBindingSize ${limit}: received ${scoreBytes} bytes for ${maxCount} candidates`,
      );
    }
    const chunks = Math.ceil(maxCount / (WG / this.#lanes));
    if (chunks > MAX_DISPATCH) {
      throw new RangeError(
        `Cannot ${ACTION} as the candidate count must be at most ${
          MAX_DISPATCH * (WG / this.#lanes)
        }: received ${maxCount}`,
      );
    }
    this.#seqs = this.#ensure(this.#seqs, "freekv page selection sequences", batch * 16);
    this.#scores = this.#ensure(this.#scores, "freekv page selection scores", scoreBytes);
    this.#keys = this.#ensure(
      this.#keys,
      "freekv page selection keys",
      batch * hkv * maxCount * 4,
    );
    this.#winners = this.#ensure(
      this.#winners,
      "freekv page selection winners",
      batch * hkv * k * 4,
    );
    const queue = this.#device.queue;
    queue.writeBuffer(this.#seqs, 0, checked.seqs);
    queue.writeBuffer(this.#scoreParams, 0, new Uint32Array([hkv, maxCount, 0, 0]));
    const topk = new Uint32Array([hkv, maxCount, k, 0]);
    new Float32Array(topk.buffer)[3] = this.options.scale;
    queue.writeBuffer(this.#topkParams, 0, topk);
    this.#plan = checked;
  }

  #id(buffer: GPUBuffer): number {
    let id = this.#ids.get(buffer);
    if (id === undefined) this.#ids.set(buffer, id = this.#nextId++);
    return id;
  }

  #groups(buffers: PageSelectionBuffers): [GPUBindGroup, GPUBindGroup] {
    const key = `${this.#id(buffers.q)},${this.#id(buffers.summaries)},${
      this.#id(buffers.selected)
    }`;
    let groups = this.#bindGroups.get(key);
    if (groups) return groups;
    const device = this.#device;
    groups = [
      device.createBindGroup({
        label: "freekv page score bind group",
        layout: this.#scorePipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#scoreParams } },
          { binding: 1, resource: { buffer: this.#seqs! } },
          { binding: 2, resource: { buffer: buffers.q } },
          { binding: 3, resource: { buffer: buffers.summaries } },
          { binding: 4, resource: { buffer: this.#scores! } },
        ],
      }),
      device.createBindGroup({
        label: "freekv page top-k bind group",
        layout: this.#topkPipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#topkParams } },
          { binding: 1, resource: { buffer: this.#seqs! } },
          { binding: 2, resource: { buffer: this.#scores! } },
          { binding: 3, resource: { buffer: this.#keys! } },
          { binding: 4, resource: { buffer: this.#winners! } },
          { binding: 5, resource: { buffer: buffers.selected } },
        ],
      }),
    ];
    // Bounded: the engine cycles through a few buffers per layer.
    if (this.#bindGroups.size >= 256) this.#bindGroups.clear();
    this.#bindGroups.set(key, groups);
    return groups;
  }

  encode(encoder: GPUCommandEncoder, buffers: PageSelectionBuffers): void {
    const action = "encode page selection";
    const plan = this.#plan;
    if (!plan) {
      throw new TypeError(`Cannot ${action} as the selector has no plan: call plan() first`);
    }
    const { numQueryHeads: hq, numKvHeads: hkv, headDim: d } = this.options;
    assertStorageBuffer("q", buffers?.q, action);
    assertStorageBuffer("summaries", buffers?.summaries, action);
    assertStorageBuffer("selected", buffers?.selected, action);
    const qBytes = plan.batch * hq * d * 4;
    if (buffers.q.size < qBytes) {
      throw new RangeError(
        `Cannot ${action} as 'q' must hold batch * numQueryHeads * headDim f32 (${qBytes} bytes): received ${buffers.q.size} bytes`,
      );
    }
    const pageBytes = hkv * 2 * d * 4;
    const pages = Math.floor(buffers.summaries.size / pageBytes);
    if (plan.pagesNeeded > pages) {
      throw new RangeError(
        `Cannot ${action} as every page index (pageOffset + candidate page) must be below the ${pages} pages of 'summaries': received page ${
          plan.pagesNeeded - 1
        }`,
      );
    }
    const limit = this.#device.limits.maxStorageBufferBindingSize;
    if (buffers.summaries.size > limit) {
      throw new RangeError(
        `Cannot ${action} as 'summaries' must fit the device's maxStorageBufferBindingSize ${limit}: received ${buffers.summaries.size} bytes`,
      );
    }
    const outBytes = plan.batch * hkv * plan.k * 4;
    if (buffers.selected.size < outBytes) {
      throw new RangeError(
        `Cannot ${action} as 'selected' must hold batch * numKvHeads * k u32 (${outBytes} bytes): received ${buffers.selected.size} bytes`,
      );
    }
    const [scoreGroup, topkGroup] = this.#groups(buffers);
    const pass = encoder.beginComputePass({
      label: "freekv page selection",
      timestampWrites: buffers.timestampWrites,
    });
    pass.setPipeline(this.#scorePipeline);
    pass.setBindGroup(0, scoreGroup);
    pass.dispatchWorkgroups(Math.ceil(plan.maxCount / (WG / this.#lanes)), hkv, plan.batch);
    pass.setPipeline(this.#topkPipeline);
    pass.setBindGroup(0, topkGroup);
    pass.dispatchWorkgroups(hkv, plan.batch);
    pass.end();
  }

  [Symbol.dispose](): void {
    for (const b of [this.#scoreParams, this.#topkParams, this.#seqs, this.#scores]) b?.destroy();
    for (const b of [this.#keys, this.#winners]) b?.destroy();
    this.#bindGroups.clear();
    this.#plan = null;
  }
}

/**
 * Creates a {@linkcode PageSelector} for one head geometry and pooling mode.
 * The caller owns `device`.
 *
 * @throws {TypeError} When an option has the wrong type or `pooling` is
 * unknown.
 * @throws {RangeError} When a size is out of range, `numQueryHeads` is not a
 * multiple of `numKvHeads`, or `lanesPerPage` does not divide `headDim / 4`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createPageSelector } from "./selection.ts";
 * using gpu = await requestGpu();
 * const { device } = gpu;
 * const storage = GPUBufferUsage.STORAGE;
 * // 1 query head, 1 KV head, d = 4, three pages whose bounds are all 1, 3, 2.
 * const q = createBuffer(device, "q", storage, new Float32Array([1, 0, 0, 0]));
 * const summaries = createBuffer(device, "s", storage, new Float32Array([
 *   1, 1, 1, 1, 1, 1, 1, 1,
 *   3, 3, 3, 3, 3, 3, 3, 3,
 *   2, 2, 2, 2, 2, 2, 2, 2,
 * ]));
 * const selected = createBuffer(device, "sel", storage | GPUBufferUsage.COPY_SRC, 8);
 * using selector = createPageSelector(device, { numQueryHeads: 1, numKvHeads: 1, headDim: 4 });
 * selector.plan({ pageOffset: [0], candidateStart: [0], candidateEnd: [3], k: 2 });
 * const encoder = device.createCommandEncoder();
 * selector.encode(encoder, { q, summaries, selected });
 * device.queue.submit([encoder.finish()]);
 * console.log(new Uint32Array(await readBuffer(device, selected))); // [1, 2]
 * ```
 */
export function createPageSelector(device: GPUDevice, options: PageSelectorOptions): PageSelector {
  return new Selector(device, checkOptions(options, device));
}

function checkInputs(
  inputs: PageSelectionInputs,
  options: Required<PageSelectorOptions>,
): CheckedPlan {
  const plan = checkPlan(inputs);
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d } = options;
  const { q, summaries } = inputs;
  if (!(q instanceof Float32Array)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'q' must be a Float32Array: received ${describeValue(q)}`,
    );
  }
  if (!(summaries instanceof Float32Array)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'summaries' must be a Float32Array: received ${
        describeValue(summaries)
      }`,
    );
  }
  assertLength("q", q, plan.batch * hq * d, ACTION);
  const pageFloats = hkv * 2 * d;
  if (summaries.length % pageFloats !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'summaries' must have a length that is a multiple of numKvHeads * 2 * headDim = ${pageFloats}: received length ${summaries.length}`,
    );
  }
  const pages = summaries.length / pageFloats;
  if (plan.pagesNeeded > pages) {
    throw new RangeError(
      `Cannot ${ACTION} as every page index (pageOffset + candidate page) must be below the ${pages} pages of 'summaries': received page ${
        plan.pagesNeeded - 1
      }`,
    );
  }
  assertAllFinite("q", q, ACTION);
  assertAllFinite("summaries", summaries, ACTION);
  return plan;
}

/**
 * Typed-array convenience: uploads `q` and `summaries`, selects on the GPU
 * and returns `[batch][Hkv][k]` logical page ids. Throws a `RangeError` on
 * non-finite `q` or `summaries` values.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { selectPages } from "./selection.ts";
 * using gpu = await requestGpu();
 * const selected = await selectPages(gpu.device, {
 *   q: new Float32Array([1, 0, 0, 0]),
 *   // pages with bounds all 1, 3, 2 and 3 (a tie with page 1: the lower index wins)
 *   summaries: new Float32Array([1, 3, 2, 3].flatMap((v) => Array(8).fill(v))),
 *   pageOffset: [0],
 *   candidateStart: [0],
 *   candidateEnd: [4],
 *   k: 3,
 * }, { numQueryHeads: 1, numKvHeads: 1, headDim: 4 });
 * console.log(selected); // [1, 3, 2]
 * ```
 */
export async function selectPages(
  device: GPUDevice,
  inputs: PageSelectionInputs,
  options: PageSelectorOptions,
): Promise<Uint32Array> {
  const checkedOptions = checkOptions(options, device);
  const plan = checkInputs(inputs, checkedOptions);
  using selector = createPageSelector(device, checkedOptions);
  selector.plan(inputs);
  const storage = GPUBufferUsage.STORAGE;
  const outBytes = plan.batch * checkedOptions.numKvHeads * plan.k * 4;
  const q = createBuffer(device, "freekv selectPages q", storage, inputs.q);
  const summaries = createBuffer(device, "freekv selectPages summaries", storage, inputs.summaries);
  const selected = createBuffer(
    device,
    "freekv selectPages selected",
    storage | GPUBufferUsage.COPY_SRC,
    outBytes,
  );
  try {
    const encoder = device.createCommandEncoder({ label: "freekv selectPages" });
    selector.encode(encoder, { q, summaries, selected });
    device.queue.submit([encoder.finish()]);
    return new Uint32Array(await readBuffer(device, selected, outBytes));
  } finally {
    q.destroy();
    summaries.destroy();
    selected.destroy();
  }
}

/**
 * CPU oracle of the selection: plain loops in f64, the same pooling and the
 * same tie rule (higher pooled score first, then the lower page index).
 * Returns the selection and the pooled scores.
 *
 * @example
 * ```ts
 * import { selectPagesReference } from "./selection.ts";
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
  const opts = checkOptions(options);
  const plan = checkInputs(inputs, opts);
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
