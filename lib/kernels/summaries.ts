/**
 * Page summaries: per KV head and channel, a lower and an upper bound of the
 * keys of a page, computed on the GPU from the NHD slot cache into the
 * per-layer summaries buffer `[pageIndex][Hkv][2][d]` (f32; entry 0 lower,
 * entry 1 upper).
 *
 * Two kinds: Quest's `"minmax"` (lower = min, upper = max over the page's
 * tokens) and `"box"` (center = (max + min) / 2, spread = mean over the
 * page's tokens of |k - center|; lower = center - spread, upper = center +
 * spread). Only the page's first `numTokens` tokens count, so a partially
 * filled page can be summarized too.
 *
 * @module
 */

import pageSummarySource from "../../shaders/page_summary.wgsl" with { type: "text" };
import { bytesPerElement, KV_DTYPES, type KvArray, type KvDtype } from "../gpu/dtype.ts";
import {
  assertAllFinite,
  assertDevice,
  assertInteger,
  assertObject,
  assertOneOf,
  describeValue,
  disposedError,
} from "../gpu/errors.ts";
import {
  BindGroupCache,
  bufferRange,
  type BufferSlice,
  createBuffer,
  GrowableBuffer,
  readBuffer,
} from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { SLOT_LAYOUTS, type SlotLayout } from "./slot_layout.ts";
import { type KernelEncodeOptions, passTimestampWrites } from "../gpu/timing.ts";
import type { GpuKernel, GpuKernelPlan } from "./contract.ts";

/** How a page's keys are summarized. */
export type SummaryKind = "minmax" | "box";

/** Every supported {@linkcode SummaryKind}. */
export const SUMMARY_KINDS: readonly SummaryKind[] = ["minmax", "box"];

/** Options of {@linkcode createPageSummarizer} and the other summary functions. */
export interface PageSummaryOptions {
  /** KV heads `Hkv`. */
  numKvHeads: number;
  /** Head size `d`. */
  headDim: number;
  /** Tokens per page (and per cache slot) `P`. */
  pageSize: number;
  /**
   * Element type of the key cache (default `"f32"`). `"f16"` is read as u32
   * pairs; only an odd `numKvHeads * headDim` needs the `shader-f16` feature.
   */
  dtype?: KvDtype;
  /** Summary kind (default `"minmax"`). */
  summary?: SummaryKind;
  /**
   * Layout of the key cache slots (default `"nhd"`, `[slot][P][Hkv][d]`;
   * `"hnd"` is `[slot][Hkv][P][d]`).
   */
  slotLayout?: SlotLayout;
}

/** One page to summarize. */
export interface PageSummaryJob {
  /** Cache slot holding the page's keys. */
  srcSlot: number;
  /** Global page index of the summary in the summaries buffer. */
  dstPage: number;
  /** Valid tokens of the page, 1..pageSize (the first tokens of the slot). */
  numTokens: number;
}

/**
 * Jobs: an array of {@linkcode PageSummaryJob}, or a flat `Uint32Array` of
 * `(srcSlot, dstPage, numTokens)` triples.
 */
export type PageSummaryJobs = readonly PageSummaryJob[] | Uint32Array;

/** The GPU buffers {@linkcode PageSummaryPlan.encode} works on. */
export interface PageSummaryBuffers {
  /** Key cache of the layer, NHD slots `[slot][P][Hkv][d]` of the dtype (STORAGE). */
  kCache: GPUBuffer | BufferSlice;
  /** Summaries of the layer, `[pageIndex][Hkv][2][d]` f32 (STORAGE); only the jobs' pages are written. */
  summaries: GPUBuffer | BufferSlice;
}

/**
 * The page summary kernel for one cache geometry, from
 * {@linkcode createPageSummarizer}: `plan(jobs)` validates the jobs
 * (duplicate `dstPage`s are rejected) and uploads them into a plan of its
 * own.
 */
export interface PageSummarizer
  extends GpuKernel<Required<PageSummaryOptions>, PageSummaryJobs, PageSummaryPlan> {}

/**
 * One job list on the GPU, from {@linkcode PageSummarizer.plan}; owns its
 * job table and uniforms, so plans of one summarizer may be encoded into
 * one submission. One plan may be encoded for several layers' buffers.
 */
export interface PageSummaryPlan extends GpuKernelPlan<PageSummaryJobs, PageSummaryBuffers> {
  /** Jobs of the plan (`encode` records nothing, and no timestamps, without jobs). */
  readonly numJobs: number;
}

/** Inputs of {@linkcode summarizePages} and `pageSummariesReference`. */
export interface PageSummaryInputs {
  /** Key cache `[slot][P][Hkv][d]` (or `[slot][Hkv][P][d]`, `slotLayout: "hnd"`); a `Float16Array` means dtype `"f16"`. */
  kCache: KvArray;
  /** Pages to summarize. */
  jobs: PageSummaryJobs;
  /** Pages of the summaries buffer to return (every `dstPage` must be below it). */
  numPages: number;
}

const ACTION = "summarize pages";

// How page_summary.wgsl reads the cache: `load_word(i)` gives the channels of word i.
const SUMMARY_PRELUDES = {
  f32: "alias kv_word = f32;\n" +
    "fn load_word(i: u32) -> vec2<f32> { return vec2<f32>(k_cache[i], 0.0); }\n",
  // Bit arithmetic instead of unpack2x16float, which is slow on some CPU adapters.
  f16x2: "alias kv_word = u32;\n" +
    "fn load_word(i: u32) -> vec2<f32> { return halves_to_f32(k_cache[i]); }\n",
  f16: "enable f16;\nalias kv_word = f16;\n" +
    "fn load_word(i: u32) -> vec2<f32> { return vec2<f32>(f32(k_cache[i]), 0.0); }\n",
};
const MAX_DISPATCH = 65535;

/**
 * f32 values of one page's summary for all KV heads: `Hkv * 2 * d` (a
 * minimum and a maximum, or a box's two bounds, per channel).
 *
 * @example
 * ```ts
 * import { summaryFloatsPerPage } from "./summaries.ts";
 * console.log(summaryFloatsPerPage({ numKvHeads: 8, headDim: 128 })); // 2048
 * ```
 */
export function summaryFloatsPerPage(options: { numKvHeads: number; headDim: number }): number {
  return options.numKvHeads * 2 * options.headDim;
}

/** Validates {@linkcode PageSummaryOptions} and fills the defaults. */
export function checkSummaryOptions(options: PageSummaryOptions): Required<PageSummaryOptions> {
  assertObject("options", options, ACTION);
  const { numKvHeads, headDim, pageSize } = options;
  const dtype = options.dtype ?? "f32";
  const summary = options.summary ?? "minmax";
  assertInteger("numKvHeads", numKvHeads, ACTION, 1);
  assertInteger("headDim", headDim, ACTION, 1);
  assertInteger("pageSize", pageSize, ACTION, 1);
  assertOneOf("dtype", dtype, KV_DTYPES, ACTION);
  assertOneOf("summary", summary, SUMMARY_KINDS, ACTION);
  const slotLayout = options.slotLayout ?? "nhd";
  assertOneOf("slotLayout", slotLayout, SLOT_LAYOUTS, ACTION);
  return { numKvHeads, headDim, pageSize, dtype, summary, slotLayout };
}

/** Validated jobs: `(slot, page, tokens, 0)` quads and the largest slot and page. */
export interface PackedSummaryJobs {
  /** `(srcSlot, dstPage, numTokens, 0)` per job. */
  packed: Uint32Array<ArrayBuffer>;
  /** Largest `srcSlot` (-1 without jobs). */
  maxSlot: number;
  /** Largest `dstPage` (-1 without jobs). */
  maxPage: number;
}

/** Validates jobs (without buffer bounds) into `(slot, page, tokens, 0)` quads. */
export function packSummaryJobs(jobs: PageSummaryJobs, pageSize: number): PackedSummaryJobs {
  let count: number;
  let get: (i: number) => [unknown, unknown, unknown];
  if (jobs instanceof Uint32Array) {
    if (jobs.length % 3 !== 0) {
      throw new RangeError(
        `Cannot ${ACTION} as 'jobs' must hold (srcSlot, dstPage, numTokens) triples: received length ${jobs.length}`,
      );
    }
    count = jobs.length / 3;
    get = (i) => [jobs[3 * i], jobs[3 * i + 1], jobs[3 * i + 2]];
  } else if (Array.isArray(jobs)) {
    count = jobs.length;
    get = (i) => {
      const job = jobs[i];
      assertObject(`jobs[${i}]`, job, ACTION);
      return [job.srcSlot, job.dstPage, job.numTokens];
    };
  } else {
    throw new TypeError(
      `Cannot ${ACTION} as 'jobs' must be an array or a Uint32Array: received ${
        describeValue(jobs)
      }`,
    );
  }
  const packed = new Uint32Array(Math.max(4, count * 4));
  const seen = new Set<number>();
  let maxSlot = -1, maxPage = -1;
  for (let i = 0; i < count; i++) {
    const [slot, page, tokens] = get(i);
    assertInteger(`jobs[${i}].srcSlot`, slot, ACTION, 0, 0xffffffff);
    assertInteger(`jobs[${i}].dstPage`, page, ACTION, 0, 0xffffffff);
    assertInteger(`jobs[${i}].numTokens`, tokens, ACTION, 1, pageSize);
    if (seen.has(page)) {
      throw new RangeError(
        `Cannot ${ACTION} as every job's 'dstPage' must be unique: received page ${page} twice`,
      );
    }
    seen.add(page);
    packed.set([slot, page, tokens, 0], 4 * i);
    maxSlot = Math.max(maxSlot, slot);
    maxPage = Math.max(maxPage, page);
  }
  return { packed: packed.subarray(0, count * 4), maxSlot, maxPage };
}

// Throws unless the jobs' largest slot and page fit `slots` and `pages`.
function checkJobBounds(
  jobs: PackedSummaryJobs,
  slots: number,
  pages: number,
  pagesOf: string,
  action: string,
): void {
  if (jobs.maxSlot >= slots) {
    throw new RangeError(
      `Cannot ${action} as every job's 'srcSlot' must be below the ${slots} slots of 'kCache': received ${jobs.maxSlot}`,
    );
  }
  if (jobs.maxPage >= pages) {
    throw new RangeError(
      `Cannot ${action} as every job's 'dstPage' must be below ${pagesOf}: received ${jobs.maxPage}`,
    );
  }
}

class Summarizer implements PageSummarizer {
  readonly options: Readonly<Required<PageSummaryOptions>>;
  readonly device: GPUDevice;
  readonly pipeline: GPUComputePipeline;
  #disposed = false;

  constructor(device: GPUDevice, options: Required<PageSummaryOptions>) {
    this.options = Object.freeze({ ...options });
    this.device = device;
    const { numKvHeads, headDim, pageSize, dtype, summary, slotLayout } = options;
    // f16 rows of even length are read as u32 pairs: no shader-f16 needed,
    // and half the loads. HND slots keep heads apart: a pair must not
    // straddle two heads, so their heads must be of even length.
    const hnd = slotLayout === "hnd";
    const rowLength = numKvHeads * headDim;
    const pairs = hnd ? headDim % 2 === 0 : rowLength % 2 === 0;
    const variant = dtype === "f32" ? "f32" : pairs ? "f16x2" : "f16";
    const per = variant === "f16x2" ? 2 : 1;
    const headWords = headDim / per;
    this.pipeline = cachedPipeline(
      device,
      `page_summary_${variant}`,
      SUMMARY_PRELUDES[variant] + pageSummarySource,
      {
        PAGE_SIZE: pageSize,
        ROW_WORDS: rowLength / per,
        HEAD_DIM: headDim,
        PER: per,
        SUMMARY: summary === "box" ? 1 : 0,
        // NHD: the whole row is one "head" of contiguous tokens.
        HEAD_WORDS: hnd ? headWords : rowLength / per,
        HEAD_STRIDE: hnd ? pageSize * headWords : 0,
        TOKEN_STRIDE: hnd ? headWords : rowLength / per,
      },
    );
  }

  plan(jobs: PageSummaryJobs): PageSummaryPlan {
    if (this.#disposed) throw disposedError(ACTION, "page summarizer");
    return new SummaryPlan(this, jobs);
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
  }
}

class SummaryPlan implements PageSummaryPlan {
  #summarizer: Summarizer;
  #params: GPUBuffer;
  #jobs: GrowableBuffer;
  #checked!: PackedSummaryJobs;
  #bindings = new BindGroupCache();
  #disposed = false;

  constructor(summarizer: Summarizer, jobs: PageSummaryJobs) {
    const checked = this.#check(summarizer, jobs);
    this.#summarizer = summarizer;
    const device = summarizer.device;
    this.#params = createBuffer(
      device,
      "freekv page summary params",
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      16,
    );
    this.#jobs = new GrowableBuffer(
      device,
      "freekv page summary jobs",
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    );
    this.#write(checked);
  }

  get numJobs(): number {
    return this.#checked.packed.length / 4;
  }

  #check(summarizer: Summarizer, jobs: PageSummaryJobs): PackedSummaryJobs {
    const checked = packSummaryJobs(jobs, summarizer.options.pageSize);
    const count = checked.packed.length / 4;
    if (count > MAX_DISPATCH * MAX_DISPATCH) {
      throw new RangeError(
        `Cannot ${ACTION} as 'jobs' must hold at most ${
          MAX_DISPATCH * MAX_DISPATCH
        } jobs: received ${count}`,
      );
    }
    return checked;
  }

  #write(checked: PackedSummaryJobs): void {
    const queue = this.#summarizer.device.queue;
    const count = checked.packed.length / 4;
    if (this.#jobs.ensure(Math.max(1, count) * 16)) this.#bindings.clear();
    if (count > 0) queue.writeBuffer(this.#jobs.buffer, 0, checked.packed);
    const perZ = Math.min(count, MAX_DISPATCH);
    queue.writeBuffer(this.#params, 0, new Uint32Array([count, perZ, 0, 0]));
    this.#checked = checked;
  }

  update(jobs: PageSummaryJobs): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    this.#write(this.#check(this.#summarizer, jobs));
  }

  encode(
    encoder: GPUCommandEncoder,
    buffers: PageSummaryBuffers,
    options: KernelEncodeOptions = {},
  ): void {
    const action = "encode page summaries";
    if (this.#disposed) throw disposedError(action, "plan");
    const { device, pipeline } = this.#summarizer;
    const opts = this.#summarizer.options;
    const { numKvHeads, headDim, pageSize, dtype } = opts;
    assertObject("buffers", buffers, action);
    const kCache = bufferRange("kCache", buffers.kCache, action);
    const summaries = bufferRange("summaries", buffers.summaries, action);
    const slotBytes = pageSize * numKvHeads * headDim * bytesPerElement(dtype);
    const pageBytes = summaryFloatsPerPage(opts) * 4;
    const pages = Math.floor(summaries.size / pageBytes);
    const slots = Math.floor(kCache.size / slotBytes);
    checkJobBounds(this.#checked, slots, pages, `the ${pages} pages of 'summaries'`, action);
    const count = this.numJobs;
    if (count === 0) return;
    // Storage bindings are whole 4-byte words.
    kCache.size -= kCache.size % 4;
    const key = [kCache, summaries].flatMap((x) => [x.buffer, x.offset, x.size]);
    const bindGroup = this.#bindings.get(key, () =>
      device.createBindGroup({
        label: "freekv page summary bind group",
        layout: pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#params } },
          { binding: 1, resource: { buffer: this.#jobs.buffer } },
          { binding: 2, resource: kCache },
          { binding: 3, resource: summaries },
        ],
      }));
    const ts = options.timestampWrites;
    const pass = encoder.beginComputePass({
      label: "freekv page summaries",
      timestampWrites: passTimestampWrites(ts, ts?.beginIndex, ts?.endIndex),
    });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    const perZ = Math.min(count, MAX_DISPATCH);
    pass.dispatchWorkgroups(Math.ceil((numKvHeads * headDim) / 64), perZ, Math.ceil(count / perZ));
    pass.end();
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#params.destroy();
    this.#jobs[Symbol.dispose]();
    this.#bindings.clear();
  }
}

/**
 * Creates a {@linkcode PageSummarizer} for one cache geometry. The caller
 * owns `device`; `"f16"` with an odd `numKvHeads * headDim` needs the
 * `shader-f16` feature on it.
 *
 * @throws {TypeError} When an option has the wrong type or value set, or
 * f16 with an odd `numKvHeads * headDim` lacks `shader-f16`.
 * @throws {RangeError} When a size is out of range.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createPageSummarizer } from "./summaries.ts";
 * using gpu = await requestGpu();
 * const { device } = gpu;
 * // One slot of 2 tokens, 1 KV head, d = 2.
 * // Tokens (1, 4) and (3, -2): lower bounds (1, -2), upper bounds (3, 4).
 * const kCache = createBuffer(device, "k", GPUBufferUsage.STORAGE, new Float32Array([1, 4, 3, -2]));
 * const summaries = createBuffer(device, "s", GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, 16);
 * using summarizer = createPageSummarizer(device, { numKvHeads: 1, headDim: 2, pageSize: 2 });
 * using plan = summarizer.plan([{ srcSlot: 0, dstPage: 0, numTokens: 2 }]);
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder, { kCache, summaries });
 * device.queue.submit([encoder.finish()]);
 * console.log(new Float32Array(await readBuffer(device, summaries))); // [1, -2, 3, 4]
 * ```
 */
export function createPageSummarizer(
  device: GPUDevice,
  options: PageSummaryOptions,
): PageSummarizer {
  assertDevice(device, ACTION);
  const checked = checkSummaryOptions(options);
  const odd = (checked.numKvHeads * checked.headDim) % 2 === 1;
  if (checked.dtype === "f16" && odd && !device.features.has("shader-f16")) {
    throw new TypeError(
      `Cannot ${ACTION} as 'dtype' "f16" with an odd numKvHeads * headDim needs the device feature 'shader-f16': received a device without it`,
    );
  }
  return new Summarizer(device, checked);
}

/** Host inputs checked against their options: the jobs and the dtype-resolved options. */
export interface CheckedSummaryInputs extends PackedSummaryJobs {
  /** The options with the dtype of `kCache` filled in. */
  options: Required<PageSummaryOptions>;
}

/**
 * Validates the typed-array inputs of {@linkcode summarizePages} and its
 * CPU reference (everything but finiteness); the dtype follows `kCache`
 * unless `options.dtype` says otherwise (then they must agree).
 */
export function checkSummaryInputs(
  inputs: PageSummaryInputs,
  options: PageSummaryOptions,
): CheckedSummaryInputs {
  const dtype = options?.dtype ?? (inputs?.kCache instanceof Float16Array ? "f16" : "f32");
  const checked = checkSummaryOptions({ ...options, dtype });
  assertObject("inputs", inputs, ACTION);
  const { kCache, numPages } = inputs;
  const expected = checked.dtype === "f16" ? Float16Array : Float32Array;
  if (!(kCache instanceof expected)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'kCache' must be a ${expected.name} for dtype "${checked.dtype}": received ${
        describeValue(kCache)
      }`,
    );
  }
  const slotLength = checked.pageSize * checked.numKvHeads * checked.headDim;
  if (kCache.length === 0 || kCache.length % slotLength !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'kCache' must have a length that is a positive multiple of the slot length ${slotLength}: received length ${kCache.length}`,
    );
  }
  assertInteger("numPages", numPages, ACTION, 1);
  const jobs = packSummaryJobs(inputs.jobs, checked.pageSize);
  checkJobBounds(jobs, kCache.length / slotLength, numPages, `'numPages' ${numPages}`, ACTION);
  return { ...jobs, options: checked };
}

/**
 * Typed-array convenience: uploads `kCache`, summarizes `jobs` on the GPU and
 * returns the summaries `[numPages][Hkv][2][d]` (pages without a job are 0).
 * The dtype follows `kCache` (`Float16Array` means `"f16"`) unless
 * `options.dtype` says otherwise (then they must agree). Non-finite keys are
 * rejected.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { summarizePages } from "./summaries.ts";
 * using gpu = await requestGpu();
 * const summaries = await summarizePages(gpu.device, {
 *   kCache: new Float32Array([1, -2, 3, 4, 2, 1]), // 1 slot of 3 tokens, 1 head, d = 2
 *   jobs: [{ srcSlot: 0, dstPage: 0, numTokens: 3 }],
 *   numPages: 1,
 * }, { numKvHeads: 1, headDim: 2, pageSize: 3, summary: "box" });
 * // centers (2, 1), spreads (2/3, 2): about [1.333, -1, 2.667, 3]
 * console.log(summaries);
 * ```
 */
export async function summarizePages(
  device: GPUDevice,
  inputs: PageSummaryInputs,
  options: PageSummaryOptions,
): Promise<Float32Array> {
  assertDevice(device, ACTION);
  const { options: checked } = checkSummaryInputs(inputs, options);
  assertAllFinite("kCache", inputs.kCache, ACTION);
  using summarizer = createPageSummarizer(device, checked);
  using plan = summarizer.plan(inputs.jobs);
  const outBytes = inputs.numPages * summaryFloatsPerPage(checked) * 4;
  const kCache = createBuffer(
    device,
    "freekv summarizePages kCache",
    GPUBufferUsage.STORAGE,
    inputs.kCache,
  );
  const summaries = createBuffer(
    device,
    "freekv summarizePages summaries",
    GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
    outBytes,
  );
  try {
    const encoder = device.createCommandEncoder({ label: "freekv summarizePages" });
    plan.encode(encoder, { kCache, summaries });
    device.queue.submit([encoder.finish()]);
    return new Float32Array(await readBuffer(device, summaries, outBytes));
  } finally {
    kCache.destroy();
    summaries.destroy();
  }
}
