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
 * Up to `countingTopkMax` candidates (default 256), or as many as workgroup
 * memory holds beside the group's query (`oneDispatchMax`), one dispatch
 * scores, pools and ranks each candidate by counting the keys that beat it
 * (page_select.wgsl), the
 * resident-only top-k included (and, with encode's `similarity`, freekv's
 * correction check, whose flags pick the heads of a flagged resident-only
 * top-k); above it, a scoring dispatch and a radix-select top-k do. Both
 * give the same pages in the same order.
 *
 * Workgroup storage does not bound the candidate count: scores and pooled
 * keys live in scratch buffers of each plan, sized by `plan` and `update`; the limit is
 * the device's `maxStorageBufferBindingSize` for `batch * Hq * maxCandidates`
 * f32 scores.
 *
 * @module
 */

import pageScoreSource from "../../shaders/page_score.wgsl" with { type: "text" };
import pageTopkMain from "../../shaders/page_topk.wgsl" with { type: "text" };
import pagePoolSource from "../../shaders/page_pool.wgsl" with { type: "text" };
import pageSelectMain from "../../shaders/page_select.wgsl" with { type: "text" };
import pageSelectFlags from "../../shaders/page_select_flags.wgsl" with { type: "text" };
import pageSelectSimilarity from "../../shaders/page_select_similarity.wgsl" with { type: "text" };
import pageSelectTable from "../../shaders/page_select_table.wgsl" with { type: "text" };
import pageSelectNoTable from "../../shaders/page_select_no_table.wgsl" with { type: "text" };
import pageTableRow from "../../shaders/page_table_row.wgsl" with { type: "text" };
import pageSelectAppend from "../../shaders/page_select_append.wgsl" with { type: "text" };
import pageSelectNoAppend from "../../shaders/page_select_no_append.wgsl" with { type: "text" };
import appendRowSource from "../../shaders/kv_append_row.wgsl" with { type: "text" };
import { KV_DTYPES, type KvDtype } from "../gpu/dtype.ts";
import type { KvAppendBindings, KvAppendBuffers, KvAppendPlan } from "./kv_append.ts";
import groupSimilarity from "../../shaders/group_similarity.wgsl" with { type: "text" };
import type { PageTableBindings, PageTableBuffers, PageTablePlan } from "./page_table.ts";
import {
  assertAllFinite,
  assertBoolean,
  assertDevice,
  assertFinite,
  assertHeadsDivide,
  assertInteger,
  assertLength,
  assertObject,
  assertOneOf,
  describeValue,
  disposedError,
} from "../gpu/errors.ts";
import {
  assertBindable,
  assertNotShared,
  BindGroupCache,
  bufferRange,
  type BufferSlice,
  createBuffer,
  GrowableBuffer,
  readBuffer,
  writeIfChanged,
} from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { type KernelEncodeOptions, passTimestampWrites } from "../gpu/timing.ts";
import type { GpuKernel, GpuKernelPlan } from "./contract.ts";

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
  /**
   * Tuning: up to this many candidates per (sequence, KV head), top-k ranks
   * each candidate by counting the keys that beat it; above it, a radix
   * select. 0 to 1024, default 256; 0 always takes the radix select. Results
   * do not depend on it. The default is where one dispatch stops paying at
   * Llama-3.1-8B's heads on lavapipe: there it ranks 224 candidates as fast
   * as the radix select alone, and it also takes the correction check, the
   * page tables and the append that the radix path runs as passes of their
   * own (see the README).
   */
  countingTopkMax?: number;
}

/** What to select, the input of {@linkcode PageSelector.plan}: one entry per sequence of the batch, and `k`. */
export interface PageSelectionStep {
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
  /**
   * Correction threshold of a similarity check done in the same dispatch
   * (encode's `similarity`; default 0.9): a KV head is flagged when the
   * group mean of its query heads' cosines is not at least `tau`.
   */
  tau?: number;
  /**
   * With that check, also store `q` into its `qPrev` (each row after it was
   * read), so that the next step's check needs no copy (default false).
   */
  storeQuery?: boolean;
}

/** The GPU buffers {@linkcode PageSelectionPlan.encode} works on. */
export interface PageSelectionBuffers {
  /** Queries `[batch][Hq][d]` f32 (STORAGE). */
  q: GPUBuffer | BufferSlice;
  /** Page summaries `[pageIndex][Hkv][2][d]` f32 (STORAGE). */
  summaries: GPUBuffer | BufferSlice;
  /** Output `[batch][Hkv][k]` u32 logical page ids (STORAGE; add COPY_SRC to read it back). */
  selected: GPUBuffer | BufferSlice;
  /**
   * Optional second top-k over the same scores restricted to resident pages:
   * `mask` is `[batch][Hkv][maskStride]` u32 per logical page, 0xffffffff for
   * a page that is not resident (a residency map); its winners go to
   * `selected` `[batch][Hkv][k]`, non-resident pages only where fewer than k
   * candidates are resident.
   */
  residentOnly?: {
    mask: GPUBuffer | BufferSlice;
    maskStride: number;
    selected: GPUBuffer | BufferSlice;
    /**
     * Optional `[batch][Hkv]` u32 correction flags: only heads whose flag
     * is 1 are selected (the others' rows of `selected` are left as they
     * were), so the pass costs in proportion to the corrected heads.
     */
    flags?: GPUBuffer | BufferSlice;
  };
  /**
   * Optional correction check in the same dispatch (only where the plan is
   * `fused`): per query head the cosine of `q` and `qPrev` (`[batch][Hq][d]`
   * f32) into `cosine` (`[batch][Hq]`), per KV head their mean into
   * `groupMean` and the flag (1: mean below the step's `tau`) into `flags`
   * (`[batch][Hkv]` u32), as `createQuerySimilarity` computes them; a
   * `residentOnly.flags` must then be these `flags`, and reads this step's.
   * `qPrev` is bound writable (the step's `storeQuery`): not in `q`'s buffer.
   */
  similarity?: {
    qPrev: GPUBuffer | BufferSlice;
    cosine: GPUBuffer | BufferSlice;
    groupMean: GPUBuffer | BufferSlice;
    flags: GPUBuffer | BufferSlice;
  };
  /**
   * Optional attention page tables built in the same dispatch (only where
   * the plan `fusesTable`), as `plan.encode(encoder, buffers)` would build
   * them: its `fresh` must be `selected`, its `best` (with `useBest`) the
   * resident-only `selected`, and its `flags` those of `similarity` or
   * `residentOnly` when they are given.
   */
  pageTable?: { plan: PageTablePlan; buffers: PageTableBuffers };
  /**
   * Optional append of the step's new K and V rows in the same dispatch
   * (only where the plan `fusesAppend`), as `plan.encode(encoder, buffers)`
   * would record it: one row per sequence of the selection, of `Hkv * d`
   * elements, in a cache type the device writes directly (not packed f16).
   * Saves the append's own dispatch; the caches are bound writable, so no
   * other buffer of the selection may lie in them.
   */
  append?: { plan: KvAppendPlan; buffers: KvAppendBuffers };
}

/**
 * The page selection kernels for one head geometry and pooling mode, from
 * {@linkcode createPageSelector}.
 */
export interface PageSelector
  extends GpuKernel<Required<PageSelectorOptions>, PageSelectionStep, PageSelectionPlan> {
  /**
   * Most candidates per (sequence, KV head) that one dispatch scores and
   * ranks on this device: `countingTopkMax`, or fewer where the device's
   * workgroup memory holds fewer of the group's scores (0: never).
   */
  readonly oneDispatchMax: number;
  /**
   * Compiles now the pipelines that encodes with these kinds of buffers
   * would otherwise compile at their first use (on lavapipe 15-50 ms each):
   * the one-dispatch selection of each variant where the device can fuse
   * it, and the resident-only top-k pass of steps too long to fuse. The
   * separate score and top-k passes compile when the selector is created.
   */
  compile(variants?: readonly PageSelectionVariant[]): void;
}

/**
 * What one encode binds besides the plain selection (see
 * {@linkcode PageSelectionBuffers}), which picks the pipeline it runs.
 */
export interface PageSelectionVariant {
  /** A resident-only top-k over rows of `maskStride` pages, only for flagged heads when `flagged`. */
  residentOnly?: { maskStride: number; flagged: boolean };
  /** The correction check in the same dispatch. */
  similarity?: boolean;
  /** The page tables in the same dispatch. */
  table?: boolean;
  /** The append of the step's K and V rows in the same dispatch, into caches of this type. */
  append?: KvDtype;
}

/**
 * One batch description on the GPU, from {@linkcode PageSelector.plan}. It
 * owns its uniforms, sequence table and scratch buffers, so plans of one
 * selector may be encoded into one submission; one plan may be encoded for
 * several layers' buffers.
 */
export interface PageSelectionPlan extends GpuKernelPlan<PageSelectionStep, PageSelectionBuffers> {
  /** Sequences of the plan. */
  readonly batch: number;
  /** Pages selected per (sequence, KV head). */
  readonly k: number;
  /**
   * True when the current step runs in one dispatch (page_select.wgsl: its
   * candidates fit the selector's `countingTopkMax` and workgroup memory).
   */
  readonly fused: boolean;
  /**
   * True when encode takes `similarity`: the step is `fused` and the device
   * binds the 10 storage buffers that needs (`maxStorageBuffersPerShaderStage`).
   */
  readonly fusesSimilarity: boolean;
  /**
   * True when encode takes `pageTable`: the step is `fused` and the device
   * binds the 16 storage buffers that needs (`maxStorageBuffersPerShaderStage`).
   */
  readonly fusesTable: boolean;
  /**
   * True when encode takes `append`: the step is `fused` and the device binds
   * the 21 storage buffers that the largest variant needs with it.
   */
  readonly fusesAppend: boolean;
}

/** Inputs of {@linkcode selectPages} and `selectPagesReference`. */
export interface PageSelectionInputs extends PageSelectionStep {
  /** Queries `[batch][Hq][d]`. */
  q: Float32Array;
  /** Page summaries `[pageIndex][Hkv][2][d]`. */
  summaries: Float32Array;
}

const ACTION = "select pages";
// Workgroup size of the scoring kernel (page_score.wgsl).
const WG = 64;
/**
 * Lanes of page_select.wgsl's one-dispatch selection: 16 when a candidate's
 * score is a few multiply-adds (GROUP * d below 128), 64 otherwise. On
 * lavapipe, which emulates barriers, 16 lanes measured 1.2-1.5x faster than
 * 64 at stories260K's heads over 32-128 pages (paired samples), and
 * 1.07-1.33x at Llama-3.1-8B's; 64 stay where scoring dominates, for GPUs
 * whose barriers are cheap and whose lanes are many (not measured here).
 */
function fusedLanes(group: number, headDim: number): { WG: number; SIDE: number } {
  return group * headDim < 128 ? { WG: 16, SIDE: 4 } : { WG: 64, SIDE: 8 };
}
const MAX_DISPATCH = 65535;
// Storage buffers per stage that the one dispatch needs with the correction
// check, and with the page tables.
const SIMILARITY_STORAGE_BUFFERS = 10;
const TABLE_STORAGE_BUFFERS = 16;
const APPEND_STORAGE_BUFFERS = TABLE_STORAGE_BUFFERS + 5;
const pageTopkSource = pageTopkMain + pagePoolSource;
/**
 * page_select.wgsl with its snippets: given or computed flags, no table or a
 * table, and no append or the append into caches of one type.
 */
function pageSelectSource(
  similarity: boolean,
  table: boolean,
  append: KvDtype | undefined,
): [string, string] {
  const cacheType = append === "f16" ? "enable f16;\nalias kv_t = f16;\n" : "alias kv_t = f32;\n";
  return [
    `page_select${similarity ? "_similarity" : ""}${table ? "_table" : ""}${
      append ? `_append_${append}` : ""
    }`,
    (append ? cacheType : "") + pageSelectMain + pagePoolSource +
    (similarity ? pageSelectSimilarity + groupSimilarity : pageSelectFlags) +
    (table ? pageSelectTable + pageTableRow : pageSelectNoTable) +
    (append ? pageSelectAppend + appendRowSource : pageSelectNoAppend),
  ];
}
/**
 * Default `countingTopkMax`: up to this many candidates per (sequence, KV
 * head) a selection ranks by counting, in one dispatch where the device
 * allows (see {@linkcode PageSelectorOptions.countingTopkMax}).
 */
export const COUNTING_TOPK_MAX = 256;
/**
 * Largest `countingTopkMax` (the top-k pass keeps a key and a resident-list
 * entry per candidate in workgroup memory: 8 KiB at this limit).
 */
export const COUNTING_TOPK_LIMIT = 1024;

/** A validated {@linkcode PageSelectionStep}. */
export interface CheckedSelectionStep {
  /** Sequences. */
  batch: number;
  /** Pages selected per (sequence, KV head). */
  k: number;
  /** Largest candidate count. */
  maxCount: number;
  /** Correction threshold of a fused similarity check. */
  tau: number;
  /** Whether a fused similarity check stores `q` into `qPrev`. */
  storeQuery: boolean;
  /** Pages the summaries buffer must hold: max of pageOffset + candidateEnd. */
  pagesNeeded: number;
  /** (pageOffset, candidateStart, count, 0) per sequence. */
  seqs: Uint32Array<ArrayBuffer>;
}

/** Validates {@linkcode PageSelectorOptions} and fills the defaults (`device` picks `lanesPerPage`). */
export function checkSelectorOptions(
  options: PageSelectorOptions,
  device?: GPUDevice,
): Required<PageSelectorOptions> {
  assertObject("options", options, ACTION);
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
  const countingTopkMax = options.countingTopkMax ?? COUNTING_TOPK_MAX;
  assertInteger("countingTopkMax", countingTopkMax, ACTION, 0, COUNTING_TOPK_LIMIT);
  return { numQueryHeads, numKvHeads, headDim, pooling, scale, lanesPerPage, countingTopkMax };
}

/** Validates a {@linkcode PageSelectionStep} (without buffer bounds). */
export function checkSelectionStep(step: PageSelectionStep): CheckedSelectionStep {
  assertObject("step", step, ACTION);
  const { pageOffset, candidateStart, candidateEnd, k } = step;
  if (pageOffset == null || typeof pageOffset.length !== "number") {
    throw new TypeError(
      `Cannot ${ACTION} as 'pageOffset' must be an array: received ${describeValue(pageOffset)}`,
    );
  }
  const batch = step.batch ?? pageOffset.length;
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
  const tau = step.tau ?? 0.9;
  assertFinite("tau", tau, ACTION);
  const storeQuery = step.storeQuery ?? false;
  assertBoolean("storeQuery", storeQuery, ACTION);
  return { batch, k, maxCount, pagesNeeded, seqs, tau, storeQuery };
}

// Throws unless `pages` summaries hold every page the step reads.
function checkPagesNeeded(step: CheckedSelectionStep, pages: number, action: string): void {
  if (step.pagesNeeded > pages) {
    throw new RangeError(
      `Cannot ${action} as every page index (pageOffset + candidate page) must be below the ${pages} pages of 'summaries': received page ${
        step.pagesNeeded - 1
      }`,
    );
  }
}

// A buffer range of at least `bytes`, bound to exactly those bytes.
function sized(
  name: string,
  ref: GPUBuffer | BufferSlice,
  bytes: number,
  what: string,
  action: string,
): Required<BufferSlice> {
  const range = bufferRange(name, ref, action);
  if (range.size < bytes) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must hold ${what} (${bytes} bytes): received ${range.size} bytes`,
    );
  }
  return { ...range, size: bytes };
}

class Selector implements PageSelector {
  readonly options: Readonly<Required<PageSelectorOptions>>;
  readonly device: GPUDevice;
  readonly scorePipeline: GPUComputePipeline;
  readonly topkPipeline: GPUComputePipeline;
  readonly oneDispatchMax: number;
  /** The device binds enough storage buffers for the correction check in the one dispatch. */
  readonly bindsSimilarity: boolean;
  /** The device binds enough storage buffers for the page tables in the one dispatch. */
  readonly bindsTable: boolean;
  /** The device binds enough storage buffers for the append in the one dispatch (any variant). */
  readonly bindsAppend: boolean;
  #disposed = false;

  constructor(device: GPUDevice, options: Required<PageSelectorOptions>) {
    this.options = Object.freeze({ ...options });
    this.device = device;
    const group = options.numQueryHeads / options.numKvHeads;
    const max = options.countingTopkMax;
    // Workgroup memory: q, the reductions' scratch, the softmax statistics
    // and three words (skip, resident count, correction flag), then raw
    // scores, a key and a resident-list entry per candidate.
    const lanes = fusedLanes(group, options.headDim);
    const fixedBytes = 4 * group * options.headDim + 8 * (lanes.WG + lanes.SIDE) + 8 * group + 12;
    const fits = Math.floor(
      (device.limits.maxComputeWorkgroupStorageSize - fixedBytes) / (4 * group + 8),
    );
    this.oneDispatchMax = Math.max(0, Math.min(max, fits));
    const storage = device.limits.maxStorageBuffersPerShaderStage;
    this.bindsSimilarity = storage >= SIMILARITY_STORAGE_BUFFERS;
    this.bindsTable = storage >= TABLE_STORAGE_BUFFERS;
    this.bindsAppend = storage >= APPEND_STORAGE_BUFFERS;
    this.scorePipeline = cachedPipeline(device, "page_score", pageScoreSource, {
      HEAD_DIM: options.headDim,
      GROUP: group,
      LANES: options.lanesPerPage,
      WG,
    });
    this.topkPipeline = cachedPipeline(device, "page_topk", pageTopkSource, {
      GROUP: group,
      POOLING: POOLING_MODES.indexOf(options.pooling),
      COUNTING_MAX: options.countingTopkMax,
    });
  }

  /** The one-dispatch selection, plain or with the resident-only top-k. */
  selectPipeline(
    residentOnly?: { maskStride: number; flagged: boolean },
    similarity = false,
    table = false,
    append?: KvDtype,
  ): GPUComputePipeline {
    const o = this.options;
    const [name, source] = pageSelectSource(similarity, table, append);
    return cachedPipeline(this.device, name, source, {
      HEAD_DIM: o.headDim,
      GROUP: o.numQueryHeads / o.numKvHeads,
      POOLING: POOLING_MODES.indexOf(o.pooling),
      MAX_COUNT: this.oneDispatchMax,
      ...fusedLanes(o.numQueryHeads / o.numKvHeads, o.headDim),
      ...(residentOnly
        ? { MASKED: 1, MASK_STRIDE: residentOnly.maskStride, FLAGGED: residentOnly.flagged ? 1 : 0 }
        : {}),
    });
  }

  /** The top-k pass restricted to resident pages (steps too long for one dispatch). */
  maskedTopkPipeline(r: { maskStride: number; flagged: boolean }): GPUComputePipeline {
    const o = this.options;
    return cachedPipeline(this.device, "page_topk", pageTopkSource, {
      GROUP: o.numQueryHeads / o.numKvHeads,
      POOLING: POOLING_MODES.indexOf(o.pooling),
      COUNTING_MAX: o.countingTopkMax,
      MASKED: 1,
      MASK_STRIDE: r.maskStride,
      FLAGGED: r.flagged ? 1 : 0,
    });
  }

  plan(step: PageSelectionStep): PageSelectionPlan {
    if (this.#disposed) throw disposedError(ACTION, "page selector");
    return new SelectionPlan(this, step);
  }

  compile(variants: readonly PageSelectionVariant[] = [{}]): void {
    const action = "compile page selection";
    if (this.#disposed) throw disposedError(action, "page selector");
    if (!Array.isArray(variants)) {
      throw new TypeError(
        `Cannot ${action} as 'variants' must be an array: received ${describeValue(variants)}`,
      );
    }
    const assertFlag = (name: string, value: unknown, optional: boolean) => {
      if (!optional || value !== undefined) assertBoolean(name, value, action);
    };
    variants.forEach((v, i) => {
      assertObject(`variants[${i}]`, v, action);
      assertFlag(`variants[${i}].similarity`, v.similarity, true);
      assertFlag(`variants[${i}].table`, v.table, true);
      if (v.append !== undefined) assertOneOf(`variants[${i}].append`, v.append, KV_DTYPES, action);
      if (v.residentOnly !== undefined) {
        assertObject(`variants[${i}].residentOnly`, v.residentOnly, action);
        assertInteger(
          `variants[${i}].residentOnly.maskStride`,
          v.residentOnly.maskStride,
          action,
          1,
        );
        assertFlag(`variants[${i}].residentOnly.flagged`, v.residentOnly.flagged, false);
      }
    });
    for (const { residentOnly: resident, similarity, table, append } of variants) {
      const fusesSimilarity = similarity === true && this.bindsSimilarity;
      const fusesTable = table === true && this.bindsTable;
      const fusesAppend = this.bindsAppend ? append : undefined;
      if (this.oneDispatchMax > 0) {
        this.selectPipeline(resident, fusesSimilarity, fusesTable, fusesAppend);
      }
      if (resident) this.maskedTopkPipeline(resident);
    }
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
  }
}

/** The validated bindings of a resident-only top-k. */
interface ResidentBuffers {
  maskStride: number;
  flagged: boolean;
  out: GPUBufferBinding;
  mask: GPUBufferBinding;
  flags: GPUBufferBinding;
}

/** The validated bindings of a fused similarity check. */
interface SimilarityBuffers {
  qPrev: GPUBufferBinding;
  cosine: GPUBufferBinding;
  groupMean: GPUBufferBinding;
  flags: GPUBufferBinding;
}

class SelectionPlan implements PageSelectionPlan {
  #selector: Selector;
  #scoreParams: GPUBuffer;
  #topkParams: GPUBuffer;
  #seqs: GrowableBuffer;
  #scores: GrowableBuffer;
  #keys: GrowableBuffer;
  #winners: GrowableBuffer;
  /** Bound as the mask of the unmasked top-k, which never reads it. */
  #noMask: GPUBuffer;
  /** Bound as the resident-only output of the plain one-dispatch selection, which never writes it. */
  #noBest: GPUBuffer;
  #step!: CheckedSelectionStep;
  // Bounded: the engine cycles through a few buffers per layer.
  #bindings = new BindGroupCache<[GPUBindGroup, GPUBindGroup]>(16);
  #disposed = false;

  constructor(selector: Selector, step: PageSelectionStep) {
    const checked = this.#check(selector, step);
    this.#selector = selector;
    const device = selector.device;
    const uniform = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
    this.#scoreParams = createBuffer(device, "freekv page score params", uniform, 16);
    this.#topkParams = createBuffer(device, "freekv page top-k params", uniform, 32);
    this.#noMask = createBuffer(device, "freekv page top-k no mask", GPUBufferUsage.STORAGE, 16);
    this.#noBest = createBuffer(device, "freekv page select no output", GPUBufferUsage.STORAGE, 16);
    const scratch = (name: string) =>
      new GrowableBuffer(
        device,
        `freekv page selection ${name}`,
        GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      );
    this.#seqs = scratch("sequences");
    this.#scores = scratch("scores");
    this.#keys = scratch("keys");
    this.#winners = scratch("winners");
    this.#write(checked);
  }

  get batch(): number {
    return this.#step.batch;
  }

  get k(): number {
    return this.#step.k;
  }

  get fused(): boolean {
    return this.#step.maxCount <= this.#selector.oneDispatchMax;
  }

  get fusesSimilarity(): boolean {
    return this.fused && this.#selector.bindsSimilarity;
  }

  get fusesTable(): boolean {
    return this.fused && this.#selector.bindsTable;
  }

  get fusesAppend(): boolean {
    return this.fused && this.#selector.bindsAppend;
  }

  #check(selector: Selector, step: PageSelectionStep): CheckedSelectionStep {
    const checked = checkSelectionStep(step);
    const { numQueryHeads: hq, lanesPerPage: lanes } = selector.options;
    const { batch, maxCount } = checked;
    const limit = selector.device.limits.maxStorageBufferBindingSize;
    const scoreBytes = batch * hq * maxCount * 4;
    if (scoreBytes > limit) {
      throw new RangeError(
        `Cannot ${ACTION} as the scratch scores (batch * numQueryHeads * candidates * 4 bytes) must fit the device's maxStorageBufferBindingSize ${limit}: received ${scoreBytes} bytes for ${maxCount} candidates`,
      );
    }
    if (Math.ceil(maxCount / (WG / lanes)) > MAX_DISPATCH) {
      throw new RangeError(
        `Cannot ${ACTION} as the candidate count must be at most ${
          MAX_DISPATCH * (WG / lanes)
        }: received ${maxCount}`,
      );
    }
    return checked;
  }

  #write(checked: CheckedSelectionStep): void {
    const { numQueryHeads: hq, numKvHeads: hkv, scale } = this.#selector.options;
    const { batch, k, maxCount } = checked;
    let grown = this.#seqs.ensure(batch * 16);
    grown = this.#scores.ensure(batch * hq * maxCount * 4) || grown;
    grown = this.#keys.ensure(batch * hkv * maxCount * 4) || grown;
    grown = this.#winners.ensure(batch * hkv * k * 4) || grown;
    if (grown) this.#bindings.clear();
    const queue = this.#selector.device.queue;
    writeIfChanged(queue, this.#seqs.buffer, checked.seqs);
    writeIfChanged(queue, this.#scoreParams, new Uint32Array([hkv, maxCount, 0, 0]));
    const topk = new Uint32Array([hkv, maxCount, k, 0, 0, 0, 0, 0]);
    new Float32Array(topk.buffer)[3] = scale;
    new Float32Array(topk.buffer)[4] = checked.tau;
    topk[5] = checked.storeQuery ? 1 : 0;
    writeIfChanged(queue, this.#topkParams, topk);
    this.#step = checked;
  }

  update(step: PageSelectionStep): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    this.#write(this.#check(this.#selector, step));
  }

  encode(
    encoder: GPUCommandEncoder,
    buffers: PageSelectionBuffers,
    options: KernelEncodeOptions = {},
  ): void {
    const action = "encode page selection";
    if (this.#disposed) throw disposedError(action, "plan");
    assertObject("buffers", buffers, action);
    const { device, scorePipeline, topkPipeline } = this.#selector;
    const { numQueryHeads: hq, numKvHeads: hkv, headDim: d, lanesPerPage } = this.#selector.options;
    const step = this.#step;
    const qBytes = step.batch * hq * d * 4;
    const q = sized("q", buffers.q, qBytes, "batch * numQueryHeads * headDim f32", action);
    const summaries = bufferRange("summaries", buffers.summaries, action);
    summaries.size -= summaries.size % 4;
    checkPagesNeeded(step, Math.floor(summaries.size / (hkv * 2 * d * 4)), action);
    assertBindable("summaries", summaries, device, action);
    const outBytes = step.batch * hkv * step.k * 4;
    const selected = sized(
      "selected",
      buffers.selected,
      outBytes,
      "batch * numKvHeads * k u32",
      action,
    );
    const resident = buffers.residentOnly
      ? this.#residentBuffers(buffers.residentOnly, outBytes, action)
      : null;
    const similarity = buffers.similarity
      ? this.#similarityBuffers(buffers.similarity, resident, action)
      : null;
    const table = buffers.pageTable
      ? this.#tableBindings(buffers.pageTable, selected, resident, similarity, action)
      : null;
    if (similarity) {
      // qPrev is bound writable: no buffer the dispatch reads may hold it.
      const readOnly: [string, { buffer: GPUBuffer } | undefined][] = [
        ["q", q],
        ["summaries", summaries],
        ["residentOnly.mask", resident?.mask],
        ["pageTable.buffers.spec", table?.spec],
        ["pageTable.buffers.residency", table?.residency],
      ];
      for (const [name, other] of readOnly) {
        if (other) assertNotShared("similarity.qPrev", similarity.qPrev, name, other, action);
      }
    }
    const append = buffers.append ? this.#appendBindings(buffers.append, action) : null;
    if (append) {
      // The caches are bound writable: no other binding may lie in them.
      const others: [string, { buffer: GPUBuffer } | undefined][] = [
        ["q", q],
        ["summaries", summaries],
        ["selected", selected],
        ["append.buffers.k", append.k],
        ["append.buffers.v", append.v],
        ["residentOnly.mask", resident?.mask],
        ["residentOnly.selected", resident?.out],
        ["residentOnly.flags", resident?.flags],
        ["similarity.qPrev", similarity?.qPrev],
        ["similarity.cosine", similarity?.cosine],
        ["similarity.groupMean", similarity?.groupMean],
        ["similarity.flags", similarity?.flags],
        ["pageTable.buffers.spec", table?.spec],
        ["pageTable.buffers.flags", table?.flags],
        ["pageTable.buffers.best", table?.best],
        ["pageTable.buffers.residency", table?.residency],
        ["pageTable.buffers.table", table?.table],
        ["pageTable.buffers.pages", table?.pages],
        ["pageTable.buffers.hits", table?.hits],
      ];
      for (const [name, other] of others) {
        if (!other) continue;
        assertNotShared("append.buffers.kCache", append.kCache, name, other, action);
        assertNotShared("append.buffers.vCache", append.vCache, name, other, action);
      }
    }
    const ts = options.timestampWrites;
    if (this.fused) {
      this.#encodeFused(encoder, q, summaries, selected, resident, similarity, table, append, ts);
      return;
    }
    const key = [q, summaries, selected].flatMap((x) => [x.buffer, x.offset, x.size]);
    const [scoreGroup, topkGroup] = this.#bindings.get(key, () => [
      device.createBindGroup({
        label: "freekv page score bind group",
        layout: scorePipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#scoreParams } },
          { binding: 1, resource: { buffer: this.#seqs.buffer } },
          { binding: 2, resource: q },
          { binding: 3, resource: summaries },
          { binding: 4, resource: { buffer: this.#scores.buffer } },
        ],
      }),
      device.createBindGroup({
        label: "freekv page top-k bind group",
        layout: topkPipeline.getBindGroupLayout(0),
        entries: this.#topkEntries(selected, { buffer: this.#noMask }, { buffer: this.#noMask }),
      }),
    ]);
    const masked = resident ? this.#maskedTopk(resident) : null;
    const pass = encoder.beginComputePass({
      label: "freekv page selection",
      timestampWrites: passTimestampWrites(ts, ts?.beginIndex, ts?.endIndex),
    });
    pass.setPipeline(scorePipeline);
    pass.setBindGroup(0, scoreGroup);
    pass.dispatchWorkgroups(Math.ceil(step.maxCount / (WG / lanesPerPage)), hkv, step.batch);
    pass.setPipeline(topkPipeline);
    pass.setBindGroup(0, topkGroup);
    pass.dispatchWorkgroups(hkv, step.batch);
    if (masked) {
      pass.setPipeline(masked.pipeline);
      pass.setBindGroup(0, masked.group);
      pass.dispatchWorkgroups(hkv, step.batch);
    }
    pass.end();
  }

  /** The top-k pass's bindings: its scratch, then the output, the residency mask and the flags. */
  #topkEntries(
    selected: GPUBufferBinding,
    mask: GPUBufferBinding,
    flags: GPUBufferBinding,
  ): GPUBindGroupEntry[] {
    return [
      { binding: 0, resource: { buffer: this.#topkParams } },
      { binding: 1, resource: { buffer: this.#seqs.buffer } },
      { binding: 2, resource: { buffer: this.#scores.buffer } },
      { binding: 3, resource: { buffer: this.#keys.buffer } },
      { binding: 4, resource: { buffer: this.#winners.buffer } },
      { binding: 5, resource: selected },
      { binding: 6, resource: mask },
      { binding: 7, resource: flags },
    ];
  }

  /** Validates the resident-only top-k's buffers. */
  #residentBuffers(
    r: NonNullable<PageSelectionBuffers["residentOnly"]>,
    outBytes: number,
    action: string,
  ): ResidentBuffers {
    const { options } = this.#selector;
    const step = this.#step;
    assertInteger("residentOnly.maskStride", r.maskStride, action, 1);
    const out = sized(
      "residentOnly.selected",
      r.selected,
      outBytes,
      "batch * numKvHeads * k u32",
      action,
    );
    const maskBytes = step.batch * options.numKvHeads * r.maskStride * 4;
    const mask = sized(
      "residentOnly.mask",
      r.mask,
      maskBytes,
      "batch * numKvHeads * maskStride u32",
      action,
    );
    const flags = r.flags
      ? sized(
        "residentOnly.flags",
        r.flags,
        step.batch * options.numKvHeads * 4,
        "batch * numKvHeads u32",
        action,
      )
      : { buffer: this.#noMask, offset: 0, size: this.#noMask.size };
    return { maskStride: r.maskStride, flagged: r.flags !== undefined, out, mask, flags };
  }

  #similarityBuffers(
    c: NonNullable<PageSelectionBuffers["similarity"]>,
    resident: ResidentBuffers | null,
    action: string,
  ): SimilarityBuffers {
    assertObject("similarity", c, action);
    const { numQueryHeads: hq, numKvHeads: hkv, headDim: d } = this.#selector.options;
    const B = this.#step.batch;
    if (!this.fused) {
      throw new RangeError(
        `Cannot ${action} as 'similarity' needs the one-dispatch selection (at most ${this.#selector.oneDispatchMax} candidates): received ${this.#step.maxCount} candidates`,
      );
    }
    if (!this.#selector.bindsSimilarity) {
      throw new RangeError(
        `Cannot ${action} as 'similarity' needs a device that binds ${SIMILARITY_STORAGE_BUFFERS} storage buffers per stage: received maxStorageBuffersPerShaderStage ${this.#selector.device.limits.maxStorageBuffersPerShaderStage}`,
      );
    }
    const checked = {
      qPrev: sized(
        "similarity.qPrev",
        c.qPrev,
        B * hq * d * 4,
        "batch * numQueryHeads * headDim f32",
        action,
      ),
      cosine: sized("similarity.cosine", c.cosine, B * hq * 4, "batch * numQueryHeads f32", action),
      groupMean: sized(
        "similarity.groupMean",
        c.groupMean,
        B * hkv * 4,
        "batch * numKvHeads f32",
        action,
      ),
      flags: sized("similarity.flags", c.flags, B * hkv * 4, "batch * numKvHeads u32", action),
    };
    if (
      resident?.flagged &&
      (resident.flags.buffer !== checked.flags.buffer ||
        resident.flags.offset !== checked.flags.offset)
    ) {
      throw new RangeError(
        `Cannot ${action} as 'residentOnly.flags' must be 'similarity.flags' when both are given: received another buffer or offset`,
      );
    }
    return checked;
  }

  #tableBindings(
    t: NonNullable<PageSelectionBuffers["pageTable"]>,
    selected: GPUBufferBinding,
    resident: ResidentBuffers | null,
    similarity: SimilarityBuffers | null,
    action: string,
  ): PageTableBindings {
    assertObject("pageTable", t, action);
    if (!this.fusesTable) {
      throw new RangeError(
        `Cannot ${action} as 'pageTable' needs the one-dispatch selection on a device that binds ${TABLE_STORAGE_BUFFERS} storage buffers per stage: received ${this.#step.maxCount} candidates (at most ${this.#selector.oneDispatchMax}), maxStorageBuffersPerShaderStage ${this.#selector.device.limits.maxStorageBuffersPerShaderStage}`,
      );
    }
    const b = t.plan.bindings(t.buffers);
    const same = (x: GPUBufferBinding, y: GPUBufferBinding) =>
      x.buffer === y.buffer && (x.offset ?? 0) === (y.offset ?? 0);
    const problem = b.batch !== this.#step.batch
      ? `a plan of ${b.batch} sequences for a selection of ${this.#step.batch}`
      : !same(b.fresh, selected)
      ? "'fresh' other than 'selected'"
      : b.useBest && !(resident && same(b.best, resident.out))
      ? "'best' other than 'residentOnly.selected'"
      : b.useFlags && similarity && !same(b.flags, similarity.flags)
      ? "'flags' other than 'similarity.flags'"
      : b.useFlags && resident?.flagged && !same(b.flags, resident.flags)
      ? "'flags' other than 'residentOnly.flags'"
      : null;
    if (problem) {
      throw new RangeError(
        `Cannot ${action} as 'pageTable' must build from this selection's buffers: received ${problem}`,
      );
    }
    return b;
  }

  /** Validates `append` against this selection; returns what it binds. */
  #appendBindings(
    a: NonNullable<PageSelectionBuffers["append"]>,
    action: string,
  ): KvAppendBindings {
    assertObject("append", a, action);
    const { options, device, oneDispatchMax } = this.#selector;
    if (!this.fusesAppend) {
      throw new RangeError(
        `Cannot ${action} as 'append' needs the one-dispatch selection on a device that binds ${APPEND_STORAGE_BUFFERS} storage buffers per stage: received ${this.#step.maxCount} candidates (at most ${oneDispatchMax}), maxStorageBuffersPerShaderStage ${device.limits.maxStorageBuffersPerShaderStage}`,
      );
    }
    const b = a.plan.bindings(a.buffers);
    const rowLength = options.numKvHeads * options.headDim;
    const problem = b.numRows !== this.#step.batch
      ? `a plan of ${b.numRows} rows for a selection of ${this.#step.batch} sequences`
      : b.rowLength !== rowLength
      ? `rows of ${b.rowLength} elements for ${options.numKvHeads} KV heads of ${options.headDim}`
      : null;
    if (problem) {
      throw new RangeError(
        `Cannot ${action} as 'append' must store one row of numKvHeads * headDim elements per sequence: received ${problem}`,
      );
    }
    return b;
  }

  /** Scores, pools and ranks in one dispatch (page_select.wgsl), resident-only top-k included. */
  #encodeFused(
    encoder: GPUCommandEncoder,
    q: GPUBufferBinding,
    summaries: GPUBufferBinding,
    selected: GPUBufferBinding,
    resident: ResidentBuffers | null,
    similarity: SimilarityBuffers | null,
    table: PageTableBindings | null,
    append: KvAppendBindings | null,
    ts: KernelEncodeOptions["timestampWrites"],
  ): void {
    const { device, options } = this.#selector;
    const pipeline = this.#selector.selectPipeline(
      resident ?? undefined,
      similarity !== null,
      table !== null,
      append?.dtype,
    );
    const noMask = { buffer: this.#noMask, offset: 0, size: this.#noMask.size };
    const noBest = { buffer: this.#noBest, offset: 0, size: this.#noBest.size };
    const tableFlags = table?.useFlags ? table.flags : undefined;
    const flags = similarity?.flags ?? (resident?.flagged ? resident.flags : undefined) ??
      tableFlags ?? resident?.flags ?? noMask;
    const bound = [q, summaries, selected, resident?.mask ?? noMask, flags];
    const checks = similarity ? [similarity.qPrev, similarity.cosine, similarity.groupMean] : [];
    const tables = table
      ? [table.params, table.seq, table.spec, table.residency, table.table, table.pages, table.hits]
      : [];
    const appends = append
      ? [append.params, append.k, append.v, append.offsets, append.kCache, append.vCache]
      : [];
    const key = [
      "fused",
      resident ? resident.maskStride : 0,
      resident?.flagged ?? false,
      similarity !== null,
      table !== null,
      append?.dtype ?? "",
      ...[...bound, resident?.out ?? noBest, ...checks, ...tables, ...appends].flatMap((x) => [
        x.buffer,
        x.offset,
        x.size,
      ]),
    ];
    const [group] = this.#bindings.get(key, () => {
      const g = device.createBindGroup({
        label: "freekv page select bind group",
        layout: pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#topkParams } },
          { binding: 1, resource: { buffer: this.#seqs.buffer } },
          ...bound.map((resource, i) => ({ binding: i + 2, resource })),
          { binding: 7, resource: resident?.out ?? noBest },
          ...checks.map((resource, i) => ({ binding: i + 8, resource })),
          ...tables.map((resource, i) => ({ binding: i + 11, resource })),
          ...appends.map((resource, i) => ({ binding: i + 18, resource })),
        ],
      });
      return [g, g];
    });
    const pass = encoder.beginComputePass({
      label: "freekv page selection",
      timestampWrites: passTimestampWrites(ts, ts?.beginIndex, ts?.endIndex),
    });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(options.numKvHeads, this.#step.batch);
    pass.end();
  }

  #maskedTopk(r: ResidentBuffers): { pipeline: GPUComputePipeline; group: GPUBindGroup } {
    const { device } = this.#selector;
    const { out, mask, flags } = r;
    const pipeline = this.#selector.maskedTopkPipeline(r);
    // -1 tells these keys from the unmasked pass's.
    const key = [
      -1,
      r.maskStride,
      ...[mask, out, flags].flatMap((x) => [x.buffer, x.offset, x.size]),
    ];
    const [group] = this.#bindings.get(key, () => {
      const g = device.createBindGroup({
        label: "freekv resident-only top-k bind group",
        layout: pipeline.getBindGroupLayout(0),
        entries: this.#topkEntries(out, mask, flags),
      });
      return [g, g];
    });
    return { pipeline, group };
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#scoreParams.destroy();
    this.#topkParams.destroy();
    this.#noMask.destroy();
    this.#noBest.destroy();
    for (const b of [this.#seqs, this.#scores, this.#keys, this.#winners]) b[Symbol.dispose]();
    this.#bindings.clear();
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
 * using plan = selector.plan({ pageOffset: [0], candidateStart: [0], candidateEnd: [3], k: 2 });
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder, { q, summaries, selected });
 * device.queue.submit([encoder.finish()]);
 * console.log(new Uint32Array(await readBuffer(device, selected))); // [1, 2]
 * ```
 */
export function createPageSelector(device: GPUDevice, options: PageSelectorOptions): PageSelector {
  assertDevice(device, ACTION);
  return new Selector(device, checkSelectorOptions(options, device));
}

/** Validates the host inputs of {@linkcode selectPages} and its CPU reference. */
export function checkSelectionInputs(
  inputs: PageSelectionInputs,
  options: Required<PageSelectorOptions>,
): CheckedSelectionStep {
  const step = checkSelectionStep(inputs);
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d } = options;
  const { q, summaries } = inputs;
  for (const [name, value] of [["q", q], ["summaries", summaries]] as const) {
    if (!(value instanceof Float32Array)) {
      throw new TypeError(
        `Cannot ${ACTION} as '${name}' must be a Float32Array: received ${describeValue(value)}`,
      );
    }
  }
  assertLength("q", q, step.batch * hq * d, ACTION);
  const pageFloats = hkv * 2 * d;
  if (summaries.length % pageFloats !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'summaries' must have a length that is a multiple of numKvHeads * 2 * headDim = ${pageFloats}: received length ${summaries.length}`,
    );
  }
  checkPagesNeeded(step, summaries.length / pageFloats, ACTION);
  assertAllFinite("q", q, ACTION);
  assertAllFinite("summaries", summaries, ACTION);
  return step;
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
  const checkedOptions = checkSelectorOptions(options, device);
  const step = checkSelectionInputs(inputs, checkedOptions);
  using selector = createPageSelector(device, checkedOptions);
  using plan = selector.plan(inputs);
  const storage = GPUBufferUsage.STORAGE;
  const outBytes = step.batch * checkedOptions.numKvHeads * step.k * 4;
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
    plan.encode(encoder, { q, summaries, selected });
    device.queue.submit([encoder.finish()]);
    return new Uint32Array(await readBuffer(device, selected, outBytes));
  } finally {
    q.destroy();
    summaries.destroy();
    selected.destroy();
  }
}
