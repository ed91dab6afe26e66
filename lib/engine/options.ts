/**
 * Options of the retrieval engine, their defaults (one source for the
 * engine, the decoder backend and the scripts) and their validation.
 *
 * @module
 */

import { bytesPerElement, KV_DTYPES, type KvDtype } from "../gpu/dtype.ts";
import {
  assertBoolean,
  assertFinite,
  assertHeadsDivide,
  assertInteger,
  assertObject,
  assertOneOf,
  describeValue,
} from "../gpu/errors.ts";
import {
  COUNTING_TOPK_LIMIT,
  COUNTING_TOPK_MAX,
  POOLING_MODES,
  type PoolingMode,
} from "../kernels/selection.ts";
import { SUMMARY_KINDS, type SummaryKind } from "../kernels/summaries.ts";
import { HOST_POOL_LAYOUTS, type HostPoolLayout } from "../memory/host_pool.ts";
import { SLOT_LAYOUTS, type SlotLayout } from "../kernels/slot_layout.ts";

/** Retrieval policies (see the README's policy table). */
export type PolicyName = "full" | "streaming" | "quest" | "sync-offload" | "freekv";

/** Every {@linkcode PolicyName}. */
export const POLICIES: readonly PolicyName[] = [
  "full",
  "streaming",
  "quest",
  "sync-offload",
  "freekv",
];

/**
 * How freekv corrects a head whose query moved (cosine below `tau`):
 * `resident` attends over the pages of its fresh selection already on the
 * GPU and recalls the rest for the next step (no host wait); `sync` waits,
 * recalls, then attends (the paper's semantics, one host wait per layer).
 */
export type CorrectionMode = "resident" | "sync";

/** Every {@linkcode CorrectionMode}. */
export const CORRECTION_MODES: readonly CorrectionMode[] = ["resident", "sync"];

/** Options of `createRetrievalEngine`. */
export interface EngineOptions {
  /** Decoder layers. */
  numLayers: number;
  /** Query heads. */
  numQueryHeads: number;
  /** KV heads (`numQueryHeads` must be a multiple). */
  numKvHeads: number;
  /** Per-head size. */
  headDim: number;
  /** Longest sequence, in tokens (sizes the GPU cache of resident policies and the page ids). */
  maxContext: number;
  /** Sequences decoded together (default 1). */
  batch?: number;
  /** Tokens per page (default 32). */
  pageSize?: number;
  /** KV element type (default `f32`). */
  dtype?: KvDtype;
  /** Policy (default `freekv`). */
  policy?: PolicyName;
  /** Tokens attended per step: sink + window + selected (default 2048). */
  budget?: number;
  /** Sink tokens (default: a quarter of the budget, in whole pages). */
  sink?: number;
  /** Window tokens, including the partial last page (default: a quarter of the budget, at least one page). */
  window?: number;
  /**
   * Correction threshold on the group-mean query cosine, in [-1, 1]: a KV
   * head whose mean cosine is below it is corrected (default 0.9; 1 corrects
   * every head that moved at all, -1 never corrects).
   */
  tau?: number;
  /** freekv's correction mode (default `resident`). */
  correction?: CorrectionMode;
  /**
   * GPU slots per (sequence, KV head) beyond the selected pages, keeping
   * recently deselected pages and pages that left the window (default:
   * twice the selected pages, the more accurate of K and 2K measured under
   * `resident` in the README). Offload policies only.
   */
  cachePages?: number;
  /** GQA pooling of page scores (default `softmax-mean`). */
  pooling?: PoolingMode;
  /**
   * Tuning: up to this many candidate pages per (sequence, KV head), a
   * layer's selection runs in one dispatch that also takes the correction
   * check, the page tables and the step's K/V rows; above it, a scoring
   * dispatch and a radix-select top-k do, and those run as passes of their
   * own. 0 to 1024, default 256 (the page selector's `countingTopkMax`);
   * results do not depend on it.
   */
  countingTopkMax?: number;
  /** Page summary kind (default `minmax`). */
  summary?: SummaryKind;
  /** Host layout for the offload policies (default `hnd`; `nhd` is the fragmented baseline). */
  hostLayout?: HostPoolLayout;
  /**
   * Layout of the GPU cache slots (default `hnd`, faster for every policy
   * in `scripts/bench.ts --suite decode --quick`): `nhd` is token-major
   * `[slot][P][Hkv][d]`, `hnd` head-major `[slot][Hkv][P][d]`, so one
   * (page, KV head) is one contiguous run of `P * d` values in each of K and
   * V: offload and recall are plain copies (no conversion or scatter
   * kernel). Every policy follows it.
   */
  slotLayout?: SlotLayout;
  /** Keep layer 0 on full attention (default false). */
  fullFirstLayer?: boolean;
  /**
   * Sliding-window attention (Mistral, Qwen2): the query at position `p`
   * sees keys `p - w + 1 ..= p`. A number applies to every layer, an array
   * gives each layer's window; 0 is full attention (default). Sink pages
   * before the window are not attended and selection only picks pages that
   * reach into it.
   */
  slidingWindow?: number | readonly number[];
  /** Recall buffering (default `double`). */
  recallBuffering?: "double" | "single";
  /**
   * Recall staging (default `write-buffer`: no map round trip, which costs
   * ~11 ms in Deno; `mapped` has more bandwidth for big recalls).
   */
  recallStaging?: "write-buffer" | "mapped";
  /**
   * Steps the host follows behind the GPU (default 1): the selections of
   * step `t` are read, and the pages they miss recalled, when step
   * `t + answerLag` begins. Above 1 a decoder can record several steps
   * before waiting once (tokens sampled on the GPU); meanwhile a freekv
   * head attends the pages of its selection that are already resident
   * (the others are holes until recalled), as corrected heads do under
   * `correction: "resident"`.
   */
  answerLag?: number;
  /**
   * Time attention with GPU timestamps (one extra readback per layer; for
   * breakdowns only). Default false.
   */
  profile?: boolean;
}

/** Engine options with every default filled in (`slidingWindow` per layer). */
export type ResolvedEngineOptions = Required<Omit<EngineOptions, "slidingWindow">> & {
  /** Window of each layer in tokens, 0 for full attention. */
  slidingWindow: readonly number[];
};

/** Budget knobs as a user gives them; see {@linkcode resolveBudget}. */
export interface BudgetInput {
  /** Tokens attended per step (default 2048). */
  budget?: number;
  /** Tokens per page (default 32). */
  pageSize?: number;
  /** Sink tokens (default: a quarter of the budget, in whole pages). */
  sink?: number;
  /** Window tokens (default: a quarter of the budget, in whole pages, at least one page). */
  window?: number;
}

/** Default budget in tokens. */
export const DEFAULT_BUDGET = 2048;
/** Default page size in tokens. */
export const DEFAULT_PAGE_SIZE = 32;

/**
 * Fills in sink and window the way the reference defaults split the budget
 * (2048 = 512 sink + 512 window + 1024 selected), in whole pages.
 *
 * @example
 * ```ts
 * import { resolveBudget } from "./options.ts";
 * console.log(resolveBudget({ budget: 128, pageSize: 8 })); // { budget: 128, pageSize: 8, sink: 32, window: 32 }
 * ```
 */
export function resolveBudget(input: BudgetInput): Required<BudgetInput> {
  const budget = input.budget ?? DEFAULT_BUDGET;
  const pageSize = input.pageSize ?? DEFAULT_PAGE_SIZE;
  const quarter = Math.floor(budget / 4 / pageSize) * pageSize;
  return {
    budget,
    pageSize,
    sink: input.sink ?? quarter,
    window: input.window ?? Math.max(pageSize, quarter),
  };
}

const ACTION = "create a retrieval engine";

function resolveSlidingWindow(
  window: number | readonly number[] | undefined,
  numLayers: number,
  action: string,
): number[] {
  if (window === undefined) return new Array(numLayers).fill(0);
  if (typeof window === "number") {
    assertInteger("slidingWindow", window, action, 0);
    return new Array(numLayers).fill(window);
  }
  if (!Array.isArray(window) || window.length !== numLayers) {
    throw new TypeError(
      `Cannot ${action} as 'slidingWindow' must be a number or an array of one window per layer (${numLayers}): received ${
        describeValue(window)
      }`,
    );
  }
  window.forEach((w, i) => assertInteger(`slidingWindow[${i}]`, w, action, 0));
  return [...window];
}

/**
 * Validates `options` and fills in the defaults.
 *
 * @throws {TypeError} when `options` is not an object or a name is unknown.
 * @throws {RangeError} when a size or threshold is out of range.
 *
 * @example
 * ```ts
 * import { resolveEngineOptions } from "./options.ts";
 * const o = resolveEngineOptions({ numLayers: 1, numQueryHeads: 4, numKvHeads: 2, headDim: 8, maxContext: 64 });
 * console.log(o.sink, o.window, o.cachePages); // 512 512 64
 * ```
 */
export function resolveEngineOptions(options: EngineOptions): ResolvedEngineOptions {
  const a = ACTION;
  assertObject("options", options, a);
  const budget = resolveBudget(options);
  const o = {
    batch: 1,
    dtype: "f32",
    policy: "freekv",
    tau: 0.9,
    correction: "resident",
    cachePages: -1,
    pooling: "softmax-mean",
    countingTopkMax: COUNTING_TOPK_MAX,
    summary: "minmax",
    hostLayout: "hnd",
    slotLayout: "hnd",
    fullFirstLayer: false,
    recallBuffering: "double",
    recallStaging: "write-buffer",
    answerLag: 1,
    profile: false,
    ...options,
    ...budget,
  } as ResolvedEngineOptions;
  for (const name of ["numLayers", "numQueryHeads", "numKvHeads", "headDim"] as const) {
    assertInteger(name, o[name], a, 1);
  }
  o.slidingWindow = resolveSlidingWindow(options.slidingWindow, o.numLayers, a);
  assertInteger("maxContext", o.maxContext, a, 1);
  assertInteger("batch", o.batch, a, 1);
  assertInteger("pageSize", o.pageSize, a, 1);
  assertInteger("budget", o.budget, a, 1);
  assertInteger("sink", o.sink, a, 0);
  assertInteger("window", o.window, a, 1);
  assertFinite("tau", o.tau, a);
  if (o.tau < -1 || o.tau > 1) {
    throw new RangeError(
      `Cannot ${a} as 'tau' must be in [-1, 1] (a cosine threshold; -1 never corrects, 1 corrects every head that moved): received ${o.tau}`,
    );
  }
  assertOneOf("policy", o.policy, POLICIES, a);
  assertOneOf("dtype", o.dtype, KV_DTYPES, a);
  assertOneOf("correction", o.correction, CORRECTION_MODES, a);
  assertOneOf("pooling", o.pooling, POOLING_MODES, a);
  assertInteger("countingTopkMax", o.countingTopkMax, a, 0, COUNTING_TOPK_LIMIT);
  assertOneOf("summary", o.summary, SUMMARY_KINDS, a);
  assertOneOf("hostLayout", o.hostLayout, HOST_POOL_LAYOUTS, a);
  assertOneOf("slotLayout", o.slotLayout, SLOT_LAYOUTS, a);
  if (o.slotLayout === "hnd" && (o.pageSize * o.headDim * bytesPerElement(o.dtype)) % 4 !== 0) {
    throw new RangeError(
      `Cannot ${a} as HND slots need a head's page (pageSize * headDim of ${o.dtype}) to be a multiple of 4 bytes: received ${
        o.pageSize * o.headDim
      } elements`,
    );
  }
  assertOneOf("recallBuffering", o.recallBuffering, ["double", "single"] as const, a);
  assertOneOf("recallStaging", o.recallStaging, ["write-buffer", "mapped"] as const, a);
  assertInteger("answerLag", o.answerLag, a, 1);
  for (const name of ["fullFirstLayer", "profile"] as const) assertBoolean(name, o[name], a);
  assertHeadsDivide(o.numQueryHeads, o.numKvHeads, a);
  for (const name of ["budget", "sink", "window"] as const) {
    if (o[name] % o.pageSize !== 0) {
      throw new RangeError(
        `Cannot ${a} as '${name}' must be a multiple of 'pageSize' (${o.pageSize}): received ${
          o[name]
        }`,
      );
    }
  }
  if (o.budget < o.sink + o.window + o.pageSize) {
    throw new RangeError(
      `Cannot ${a} as 'budget' must be at least sink + window + one page (${
        o.sink + o.window + o.pageSize
      }): received ${o.budget}`,
    );
  }
  const selectPages = (o.budget - o.sink - o.window) / o.pageSize;
  if (options.cachePages === undefined) o.cachePages = 2 * selectPages;
  else assertInteger("cachePages", o.cachePages, a, 0);
  return o;
}
