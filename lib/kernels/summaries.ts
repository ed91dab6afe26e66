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
import { KV_DTYPES, type KvArray, type KvDtype } from "../gpu/dtype.ts";
import {
  assertAllFinite,
  assertInteger,
  assertOneOf,
  assertStorageBuffer,
  describeValue,
} from "../gpu/errors.ts";
import { createBuffer, readBuffer } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";

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

/** The GPU buffers {@linkcode PageSummarizer.encode} works on. */
export interface PageSummaryBuffers {
  /** Key cache of the layer, NHD slots `[slot][P][Hkv][d]` of the dtype (STORAGE). */
  kCache: GPUBuffer;
  /** Summaries of the layer, `[pageIndex][Hkv][2][d]` f32 (STORAGE); only the jobs' pages are written. */
  summaries: GPUBuffer;
  /** Optional timestamps around the summaries' one compute pass (profiling; none when no jobs). */
  timestampWrites?: GPUComputePassTimestampWrites;
}

/**
 * Summarizes pages on the GPU. `plan(jobs)` validates and uploads a job list
 * (through `queue.writeBuffer`, so it takes effect at the next submit);
 * `encode` records the summaries of the planned jobs for one layer's
 * buffers into the caller's encoder and may be called for several layers
 * with one plan. Submit the work encoded under a plan before planning again.
 */
export interface PageSummarizer {
  /** The options, with defaults filled in. */
  readonly options: Readonly<Required<PageSummaryOptions>>;
  /** Jobs of the current plan. */
  readonly numJobs: number;
  /** Validates and uploads `jobs` (duplicate `dstPage`s are rejected); replaces the previous plan. */
  plan(jobs: PageSummaryJobs): void;
  /** Records the summaries of the planned jobs; checks slot and page indices against the buffers. */
  encode(encoder: GPUCommandEncoder, buffers: PageSummaryBuffers): void;
  /** Destroys the summarizer's buffers. */
  [Symbol.dispose](): void;
}

/** Inputs of {@linkcode summarizePages} and {@linkcode pageSummariesReference}. */
export interface PageSummaryInputs {
  /** Key cache `[slot][P][Hkv][d]`; a `Float16Array` means dtype `"f16"`. */
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

/** f32 values of one page's summary for all KV heads: `Hkv * 2 * d`. */
export function summaryFloatsPerPage(options: { numKvHeads: number; headDim: number }): number {
  return options.numKvHeads * 2 * options.headDim;
}

function checkOptions(options: PageSummaryOptions): Required<PageSummaryOptions> {
  if (options == null || typeof options !== "object") {
    throw new TypeError(
      `Cannot ${ACTION} as 'options' must be an object: received ${describeValue(options)}`,
    );
  }
  const { numKvHeads, headDim, pageSize } = options;
  const dtype = options.dtype ?? "f32";
  const summary = options.summary ?? "minmax";
  assertInteger("numKvHeads", numKvHeads, ACTION, 1);
  assertInteger("headDim", headDim, ACTION, 1);
  assertInteger("pageSize", pageSize, ACTION, 1);
  assertOneOf("dtype", dtype, KV_DTYPES, ACTION);
  assertOneOf("summary", summary, SUMMARY_KINDS, ACTION);
  return { numKvHeads, headDim, pageSize, dtype, summary };
}

/** Validates jobs (without buffer bounds) into `(slot, page, tokens, 0)` quads. */
function packJobs(
  jobs: PageSummaryJobs,
  pageSize: number,
): { packed: Uint32Array<ArrayBuffer>; maxSlot: number; maxPage: number } {
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
      if (job == null || typeof job !== "object") {
        throw new TypeError(
          `Cannot ${ACTION} as 'jobs[${i}]' must be an object: received ${describeValue(job)}`,
        );
      }
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

class Summarizer implements PageSummarizer {
  readonly options: Readonly<Required<PageSummaryOptions>>;
  #device: GPUDevice;
  #pipeline: GPUComputePipeline;
  #params: GPUBuffer;
  #jobs: GPUBuffer;
  #numJobs = 0;
  #maxSlot = -1;
  #maxPage = -1;

  constructor(device: GPUDevice, options: Required<PageSummaryOptions>) {
    this.options = Object.freeze({ ...options });
    this.#device = device;
    const { numKvHeads, headDim, pageSize, dtype, summary } = options;
    // f16 rows of even length are read as u32 pairs: no shader-f16 needed,
    // and half the loads.
    const rowLength = numKvHeads * headDim;
    const variant = dtype === "f32" ? "f32" : rowLength % 2 === 0 ? "f16x2" : "f16";
    const per = variant === "f16x2" ? 2 : 1;
    this.#pipeline = cachedPipeline(
      device,
      `page_summary_${variant}`,
      SUMMARY_PRELUDES[variant] + pageSummarySource,
      {
        PAGE_SIZE: pageSize,
        ROW_WORDS: rowLength / per,
        HEAD_DIM: headDim,
        PER: per,
        SUMMARY: summary === "box" ? 1 : 0,
      },
    );
    this.#params = createBuffer(
      device,
      "freekv page summary params",
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      16,
    );
    this.#jobs = this.#jobsBuffer(64);
  }

  get numJobs(): number {
    return this.#numJobs;
  }

  #jobsBuffer(count: number): GPUBuffer {
    return createBuffer(
      this.#device,
      "freekv page summary jobs",
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      count * 16,
    );
  }

  plan(jobs: PageSummaryJobs): void {
    const { packed, maxSlot, maxPage } = packJobs(jobs, this.options.pageSize);
    const count = packed.length / 4;
    if (count > MAX_DISPATCH * MAX_DISPATCH) {
      throw new RangeError(
        `Cannot ${ACTION} as 'jobs' must hold at most ${
          MAX_DISPATCH * MAX_DISPATCH
        } jobs: received ${count}`,
      );
    }
    if (count * 16 > this.#jobs.size) {
      this.#jobs.destroy();
      this.#jobs = this.#jobsBuffer(2 ** Math.ceil(Math.log2(count)));
    }
    const perZ = Math.min(count, MAX_DISPATCH);
    if (count > 0) this.#device.queue.writeBuffer(this.#jobs, 0, packed);
    this.#device.queue.writeBuffer(this.#params, 0, new Uint32Array([count, perZ, 0, 0]));
    this.#numJobs = count;
    this.#maxSlot = maxSlot;
    this.#maxPage = maxPage;
  }

  encode(encoder: GPUCommandEncoder, buffers: PageSummaryBuffers): void {
    const action = "encode page summaries";
    const { numKvHeads, headDim, pageSize, dtype } = this.options;
    assertStorageBuffer("kCache", buffers?.kCache, action);
    assertStorageBuffer("summaries", buffers?.summaries, action);
    const slotBytes = pageSize * numKvHeads * headDim * (dtype === "f16" ? 2 : 4);
    const slots = Math.floor(buffers.kCache.size / slotBytes);
    if (this.#maxSlot >= slots) {
      throw new RangeError(
        `Cannot ${action} as every job's 'srcSlot' must be below the ${slots} slots of 'kCache': received ${this.#maxSlot}`,
      );
    }
    const pages = Math.floor(buffers.summaries.size / (summaryFloatsPerPage(this.options) * 4));
    if (this.#maxPage >= pages) {
      throw new RangeError(
        `Cannot ${action} as every job's 'dstPage' must be below the ${pages} pages of 'summaries': received ${this.#maxPage}`,
      );
    }
    if (this.#numJobs === 0) return;
    const bindGroup = this.#device.createBindGroup({
      label: "freekv page summary bind group",
      layout: this.#pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: this.#params } },
        { binding: 1, resource: { buffer: this.#jobs } },
        { binding: 2, resource: { buffer: buffers.kCache } },
        { binding: 3, resource: { buffer: buffers.summaries } },
      ],
    });
    const pass = encoder.beginComputePass({
      label: "freekv page summaries",
      timestampWrites: buffers.timestampWrites,
    });
    pass.setPipeline(this.#pipeline);
    pass.setBindGroup(0, bindGroup);
    const perZ = Math.min(this.#numJobs, MAX_DISPATCH);
    pass.dispatchWorkgroups(
      Math.ceil((numKvHeads * headDim) / 64),
      perZ,
      Math.ceil(this.#numJobs / perZ),
    );
    pass.end();
  }

  [Symbol.dispose](): void {
    this.#params.destroy();
    this.#jobs.destroy();
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
 * summarizer.plan([{ srcSlot: 0, dstPage: 0, numTokens: 2 }]);
 * const encoder = device.createCommandEncoder();
 * summarizer.encode(encoder, { kCache, summaries });
 * device.queue.submit([encoder.finish()]);
 * console.log(new Float32Array(await readBuffer(device, summaries))); // [1, -2, 3, 4]
 * ```
 */
export function createPageSummarizer(
  device: GPUDevice,
  options: PageSummaryOptions,
): PageSummarizer {
  const checked = checkOptions(options);
  const odd = (checked.numKvHeads * checked.headDim) % 2 === 1;
  if (checked.dtype === "f16" && odd && !device.features.has("shader-f16")) {
    throw new TypeError(
      `Cannot ${ACTION} as 'dtype' "f16" with an odd numKvHeads * headDim needs the device feature 'shader-f16': received a device without it`,
    );
  }
  return new Summarizer(device, checked);
}

function checkInputs(inputs: PageSummaryInputs, options: Required<PageSummaryOptions>): number {
  if (inputs == null || typeof inputs !== "object") {
    throw new TypeError(
      `Cannot ${ACTION} as 'inputs' must be an object: received ${describeValue(inputs)}`,
    );
  }
  const { kCache, numPages } = inputs;
  const expected = options.dtype === "f16" ? Float16Array : Float32Array;
  if (!(kCache instanceof expected)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'kCache' must be a ${expected.name} for dtype "${options.dtype}": received ${
        describeValue(kCache)
      }`,
    );
  }
  const slotLength = options.pageSize * options.numKvHeads * options.headDim;
  if (kCache.length === 0 || kCache.length % slotLength !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'kCache' must have a length that is a positive multiple of the slot length ${slotLength}: received length ${kCache.length}`,
    );
  }
  assertInteger("numPages", numPages, ACTION, 1);
  return kCache.length / slotLength;
}

function checkJobBounds(
  maxSlot: number,
  maxPage: number,
  slots: number,
  numPages: number,
): void {
  if (maxSlot >= slots) {
    throw new RangeError(
      `Cannot ${ACTION} as every job's 'srcSlot' must be below the ${slots} slots of 'kCache': received ${maxSlot}`,
    );
  }
  if (maxPage >= numPages) {
    throw new RangeError(
      `Cannot ${ACTION} as every job's 'dstPage' must be below 'numPages' ${numPages}: received ${maxPage}`,
    );
  }
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
  const dtype = options?.dtype ?? (inputs?.kCache instanceof Float16Array ? "f16" : "f32");
  const checked = checkOptions({ ...options, dtype });
  const slots = checkInputs(inputs, checked);
  assertAllFinite("kCache", inputs.kCache, ACTION);
  const { maxSlot, maxPage } = packJobs(inputs.jobs, checked.pageSize);
  checkJobBounds(maxSlot, maxPage, slots, inputs.numPages);
  using summarizer = createPageSummarizer(device, checked);
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
    summarizer.plan(inputs.jobs);
    const encoder = device.createCommandEncoder({ label: "freekv summarizePages" });
    summarizer.encode(encoder, { kCache, summaries });
    device.queue.submit([encoder.finish()]);
    return new Float32Array(await readBuffer(device, summaries, outBytes));
  } finally {
    kCache.destroy();
    summaries.destroy();
  }
}

/**
 * CPU oracle of the summaries (plain loops, f64 arithmetic rounded to f32 on
 * store): returns `[numPages][Hkv][2][d]` with the jobs' pages filled and the
 * other pages 0.
 *
 * @example
 * ```ts
 * import { pageSummariesReference } from "./summaries.ts";
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
  const dtype = options?.dtype ?? (inputs?.kCache instanceof Float16Array ? "f16" : "f32");
  const checked = checkOptions({ ...options, dtype });
  const slots = checkInputs(inputs, checked);
  const { packed, maxSlot, maxPage } = packJobs(inputs.jobs, checked.pageSize);
  checkJobBounds(maxSlot, maxPage, slots, inputs.numPages);
  const { numKvHeads: hkv, headDim: d, pageSize: p, summary } = checked;
  const k = inputs.kCache;
  const out = new Float32Array(inputs.numPages * summaryFloatsPerPage(checked));
  for (let j = 0; j < packed.length / 4; j++) {
    const slot = packed[4 * j], page = packed[4 * j + 1], n = packed[4 * j + 2];
    for (let h = 0; h < hkv; h++) {
      for (let c = 0; c < d; c++) {
        const at = (t: number) => k[((slot * p + t) * hkv + h) * d + c];
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
