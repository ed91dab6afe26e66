/**
 * Options, page tables and host inputs of paged attention, and their
 * validation (shared by the kernel, its one-shot helper and its CPU
 * reference). Every check throws `TypeError`/`RangeError` before any GPU
 * work.
 *
 * @module
 */

import {
  assertAllFinite,
  assertHeadsDivide,
  assertInteger,
  assertLength,
  assertOneOf,
  describeValue,
} from "../gpu/errors.ts";
import { KV_DTYPES, type KvArray, type KvDtype } from "../gpu/dtype.ts";
import { SLOT_LAYOUTS, type SlotLayout } from "./slot_layout.ts";

/** Head and page geometry of one attention layer. */
export interface AttentionShape {
  /** Query heads `Hq`, a multiple of `numKvHeads`. */
  numQueryHeads: number;
  /** KV heads `Hkv`. */
  numKvHeads: number;
  /** Head dimension `d`, a multiple of 4. */
  headDim: number;
  /** Tokens per page `P`. */
  pageSize: number;
  /**
   * Layout of the cache slots (default `"nhd"`, `[slot][P][Hkv][d]`;
   * `"hnd"` is `[slot][Hkv][P][d]`).
   */
  slotLayout?: SlotLayout;
}

/**
 * Options of `createPagedAttention`: the shape, the precision, and
 * tuning knobs whose defaults depend on the adapter (CPU adapters such as
 * lavapipe, which report `isFallbackAdapter`, get narrow workgroups of one
 * SIMD vector and value prefetching; others get wider workgroups).
 */
export interface PagedAttentionOptions extends AttentionShape {
  /**
   * KV element type (default `"f32"`). `"f16"` needs a `headDim` that is a
   * multiple of 8 but not the `shader-f16` feature: rows are read as 16-byte
   * words and the halves converted exactly to f32 in integer arithmetic.
   */
  dtype?: KvDtype;
  /**
   * Workgroups to aim for when splitting long sequences (default 32 on CPU
   * adapters, 256 otherwise); more splits keep a wide adapter busy with few
   * sequences, at the cost of a merge pass.
   */
  targetWorkgroups?: number;
  /** Fewest tokens a split may hold (default 128). */
  minSplitTokens?: number;
  /**
   * Token lanes of the value phase. A K/V row is `headDim * bytes / 16`
   * 16-byte words; each invocation accumulates `wordsPerLane` of them, so a
   * workgroup has `words / wordsPerLane * tokenLanes` invocations (default:
   * one SIMD vector, 8, on CPU adapters; 64 otherwise).
   */
  tokenLanes?: number;
  /**
   * Tokens each invocation scores per chunk (default 8, lowered to fit the
   * workgroup memory); a chunk holds `workgroupSize * tokensPerLane` tokens.
   */
  tokensPerLane?: number;
  /**
   * 16-byte value words each invocation accumulates per token (default: 4
   * for f32, 2 for f16, lowered to divide the row).
   */
  wordsPerLane?: number;
  /**
   * Touch the value rows while reading the keys so that the value phase hits
   * the cache (default: on for CPU adapters only).
   */
  prefetchValues?: boolean;
}

/**
 * A page-table entry that means "no page here": the attention skips it (its
 * tokens get no probability mass). A sequence's last page is never a hole.
 */
export const EMPTY_SLOT = 0xffffffff;

/** Page tables of one decode step, the input of `PagedAttention.plan`. */
export interface AttentionTables {
  /** Sequences; defaults to `numPages.length`. */
  batch?: number;
  /**
   * Slot ids `[batch][Hkv][maxPages]`; entries past `numPages[b]` are
   * ignored, entries {@linkcode EMPTY_SLOT} are holes. Leave it out when
   * every encode passes the table as a GPU buffer
   * (`AttentionBuffers.pageTable`).
   */
  pageTable?: Uint32Array;
  /** Pages per sequence, each in `1..maxPages`. */
  numPages: ArrayLike<number>;
  /** Valid tokens of each sequence's last page, each in `1..pageSize`. */
  lastPageLen: ArrayLike<number>;
  /** Page table row length. */
  maxPages: number;
  /** Slots of the KV cache buffers; every used slot id must be below it. */
  numSlots: number;
  /**
   * Sliding window: per sequence, the first token position that gets
   * attention mass (0 = every token). Positions come from page ids
   * (`pageIds`, or `AttentionBuffers.pageIds`).
   */
  firstToken?: ArrayLike<number>;
  /**
   * Page ids `[batch][Hkv][maxPages]` parallel to `pageTable`, needed with a
   * `firstToken` above 0 (token `t` of entry `e` is at `pageIds[e] * pageSize + t`).
   */
  pageIds?: Uint32Array;
}

/** The action every attention error message names. */
export const ACTION = "run attention";

/** Validated options with every default resolved, and the kernel layout. */
export interface Config {
  shape: AttentionShape;
  dtype: KvDtype;
  group: number;
  groupVecs: number;
  targetWorkgroups: number;
  minSplitTokens: number;
  /** Value columns: 16-byte words per K/V row and per invocation. */
  numWords: number;
  wordsPerLane: number;
  colLanes: number;
  tokenLanes: number;
  tokensPerLane: number;
  workgroupSize: number;
  chunk: number;
  prefetchValues: boolean;
  sizes: Record<string, number>;
}

/** What the options' defaults depend on. */
export interface DeviceTraits {
  cpu: boolean;
  simdWidth: number;
  limits: GPUSupportedLimits;
}

export function deviceTraits(device: GPUDevice): DeviceTraits {
  // `adapterInfo` is recent WebGPU; without it assume a GPU.
  const info = (device as unknown as { adapterInfo?: Record<string, unknown> }).adapterInfo;
  const simd = Number(info?.subgroupMaxSize);
  return {
    cpu: info?.isFallbackAdapter === true,
    simdWidth: Number.isInteger(simd) && simd > 0 ? simd : 8,
    limits: device.limits,
  };
}

// The CPU reference has no device limits.
export const REFERENCE_TRAITS: DeviceTraits = {
  cpu: true,
  simdWidth: 8,
  limits: {
    maxComputeInvocationsPerWorkgroup: 2 ** 30,
    maxComputeWorkgroupSizeX: 2 ** 30,
    maxComputeWorkgroupStorageSize: Infinity,
  } as GPUSupportedLimits,
};

export function validateOptions(options: PagedAttentionOptions, traits: DeviceTraits): Config {
  if (options == null || typeof options !== "object") {
    throw new TypeError(`Cannot ${ACTION} as 'options' must be an object: received ${options}`);
  }
  const { numQueryHeads, numKvHeads, headDim, pageSize } = options;
  assertHeadsDivide(numQueryHeads, numKvHeads, ACTION);
  assertInteger("headDim", headDim, ACTION, 4);
  assertInteger("pageSize", pageSize, ACTION, 1);
  const slotLayout = options.slotLayout ?? "nhd";
  assertOneOf("slotLayout", slotLayout, SLOT_LAYOUTS, ACTION);
  const dtype = options.dtype ?? "f32";
  assertOneOf("dtype", dtype, KV_DTYPES, ACTION);
  const wordElems = dtype === "f16" ? 8 : 4; // elements per 16-byte word
  if (headDim % wordElems !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'headDim' must be a multiple of ${wordElems} for ${dtype}: received ${headDim}`,
    );
  }
  const targetWorkgroups = options.targetWorkgroups ?? (traits.cpu ? 32 : 256);
  assertInteger("targetWorkgroups", targetWorkgroups, ACTION, 1);
  const minSplitTokens = options.minSplitTokens ?? 128;
  assertInteger("minSplitTokens", minSplitTokens, ACTION, 1);
  const numWords = headDim / wordElems;
  const wordsPerLane = options.wordsPerLane ??
    [dtype === "f16" ? 2 : 4, 2, 1].find((w) => numWords % w === 0)!;
  assertInteger("wordsPerLane", wordsPerLane, ACTION, 1, numWords);
  if (numWords % wordsPerLane !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'wordsPerLane' must divide the ${numWords} words of a row: received ${wordsPerLane}`,
    );
  }
  const colLanes = numWords / wordsPerLane;
  const limits = traits.limits;
  const maxInvocations = Math.min(
    limits.maxComputeInvocationsPerWorkgroup,
    limits.maxComputeWorkgroupSizeX,
  );
  if (colLanes > maxInvocations) {
    throw new RangeError(
      `Cannot ${ACTION} as 'headDim' must be at most ${
        wordElems * wordsPerLane * maxInvocations
      } on this device: received ${headDim}`,
    );
  }
  const tokenLanes = options.tokenLanes ??
    Math.max(1, Math.floor((traits.cpu ? traits.simdWidth : 64) / colLanes));
  assertInteger("tokenLanes", tokenLanes, ACTION, 1, Math.floor(maxInvocations / colLanes));
  const requestedPerLane = options.tokensPerLane ?? 8;
  assertInteger("tokensPerLane", requestedPerLane, ACTION, 1, 64);
  const prefetchValues = options.prefetchValues ?? traits.cpu;
  if (typeof prefetchValues !== "boolean") {
    throw new TypeError(
      `Cannot ${ACTION} as 'prefetchValues' must be a boolean: received ${typeof prefetchValues}`,
    );
  }

  const group = numQueryHeads / numKvHeads;
  const groupVecs = Math.ceil(group / 4);
  const workgroupSize = colLanes * tokenLanes;
  const colsPerLane = wordsPerLane * (wordElems / 4);
  const layout = (perLane: number) => {
    const chunk = workgroupSize * perLane;
    const sizes = {
      Q_LEN: groupVecs * 4 * (headDim / 4),
      P_LEN: chunk * groupVecs,
      MAX_LEN: workgroupSize * groupVecs,
      RED_LEN: tokenLanes > 1 ? colLanes * groupVecs * (4 * colsPerLane + 1) : 1,
    };
    const bytes = 16 * (sizes.Q_LEN + sizes.P_LEN + sizes.MAX_LEN + sizes.RED_LEN + 2);
    return { chunk, sizes, bytes };
  };
  const memory = limits.maxComputeWorkgroupStorageSize;
  let tokensPerLane = requestedPerLane;
  while (tokensPerLane > 1 && layout(tokensPerLane).bytes > memory) {
    tokensPerLane = Math.ceil(tokensPerLane / 2);
  }
  const { chunk, sizes, bytes } = layout(tokensPerLane);
  if (bytes > memory) {
    throw new RangeError(
      `Cannot ${ACTION} as ${group} query heads per KV head of dimension ${headDim} need ${bytes} bytes of workgroup memory, more than the device's ${memory}: received numQueryHeads ${numQueryHeads}`,
    );
  }
  return {
    shape: { numQueryHeads, numKvHeads, headDim, pageSize, slotLayout },
    dtype,
    group,
    groupVecs,
    targetWorkgroups,
    minSplitTokens,
    numWords,
    wordsPerLane,
    colLanes,
    tokenLanes,
    tokensPerLane,
    workgroupSize,
    chunk,
    prefetchValues,
    sizes,
  };
}

/** The page tables after validation, with `batch` filled in. */
export interface Tables {
  batch: number;
  pageTable: Uint32Array | undefined;
  numPages: ArrayLike<number>;
  lastPageLen: ArrayLike<number>;
  maxPages: number;
  numSlots: number;
  /** Per sequence first visible token; undefined when no sequence has a window. */
  firstToken: Uint32Array | undefined;
  pageIds: Uint32Array | undefined;
}

export function validateTables(shape: AttentionShape, tables: AttentionTables): Tables {
  if (tables == null || typeof tables !== "object") {
    throw new TypeError(`Cannot ${ACTION} as 'tables' must be an object: received ${tables}`);
  }
  const { pageTable, numPages, lastPageLen, maxPages, numSlots } = tables;
  if (pageTable !== undefined && !(pageTable instanceof Uint32Array)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'pageTable' must be a Uint32Array: received ${describeValue(pageTable)}`,
    );
  }
  if (numPages == null || typeof numPages.length !== "number") {
    throw new TypeError(
      `Cannot ${ACTION} as 'numPages' must be an array: received ${describeValue(numPages)}`,
    );
  }
  const batch = tables.batch ?? numPages.length;
  assertInteger("batch", batch, ACTION, 1);
  assertLength("numPages", numPages, batch, ACTION);
  assertLength("lastPageLen", lastPageLen, batch, ACTION);
  assertInteger("maxPages", maxPages, ACTION, 1);
  assertInteger("numSlots", numSlots, ACTION, 1);
  const { numKvHeads: hkv, pageSize, headDim } = shape;
  if (numSlots * pageSize * hkv * headDim > 2 ** 32) {
    throw new RangeError(
      `Cannot ${ACTION} as 'numSlots' times the slot size must stay below 2^32 elements: received ${numSlots}`,
    );
  }
  if (pageTable !== undefined) assertLength("pageTable", pageTable, batch * hkv * maxPages, ACTION);
  for (let b = 0; b < batch; b++) {
    assertInteger(`numPages[${b}]`, numPages[b], ACTION, 1, maxPages);
    assertInteger(`lastPageLen[${b}]`, lastPageLen[b], ACTION, 1, pageSize);
    if (pageTable === undefined) continue;
    for (let h = 0; h < hkv; h++) {
      const row = (b * hkv + h) * maxPages;
      const last = row + numPages[b] - 1;
      if (pageTable[last] === EMPTY_SLOT) {
        throw new RangeError(
          `Cannot ${ACTION} as 'pageTable' must not have a hole at a sequence's last page: received EMPTY_SLOT at index ${last} (sequence ${b}, KV head ${h}, page ${
            numPages[b] - 1
          })`,
        );
      }
      for (let p = 0; p < numPages[b]; p++) {
        if (pageTable[row + p] >= numSlots && pageTable[row + p] !== EMPTY_SLOT) {
          throw new RangeError(
            `Cannot ${ACTION} as 'pageTable' slot ids must be below numSlots (${numSlots}) or EMPTY_SLOT: received ${
              pageTable[row + p]
            } at index ${row + p} (sequence ${b}, KV head ${h}, page ${p})`,
          );
        }
      }
    }
  }
  const { firstToken, pageIds } = checkWindow(tables, batch, hkv, pageSize);
  return { batch, pageTable, numPages, lastPageLen, maxPages, numSlots, firstToken, pageIds };
}

function checkWindow(
  tables: AttentionTables,
  batch: number,
  hkv: number,
  pageSize: number,
): { firstToken: Uint32Array | undefined; pageIds: Uint32Array | undefined } {
  const { firstToken, pageIds, pageTable, numPages, lastPageLen, maxPages } = tables;
  if (pageIds !== undefined && !(pageIds instanceof Uint32Array)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'pageIds' must be a Uint32Array: received ${describeValue(pageIds)}`,
    );
  }
  if (firstToken === undefined) return { firstToken: undefined, pageIds: undefined };
  if (firstToken == null || typeof firstToken.length !== "number") {
    throw new TypeError(
      `Cannot ${ACTION} as 'firstToken' must be an array: received ${describeValue(firstToken)}`,
    );
  }
  assertLength("firstToken", firstToken, batch, ACTION);
  for (let b = 0; b < batch; b++) {
    assertInteger(`firstToken[${b}]`, firstToken[b], ACTION, 0, 0xffffffff);
  }
  const windowed = Array.from(firstToken).some((t) => t > 0);
  if (!windowed) return { firstToken: undefined, pageIds: undefined };
  if (pageTable === undefined) return { firstToken: Uint32Array.from(firstToken), pageIds };
  if (pageIds === undefined) {
    throw new TypeError(
      `Cannot ${ACTION} as 'pageIds' must be given with a 'firstToken' above 0 (positions come from page ids): received undefined`,
    );
  }
  assertLength("pageIds", pageIds, pageTable.length, ACTION);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < hkv; h++) {
      const last = (b * hkv + h) * maxPages + numPages[b] - 1;
      const position = pageIds[last] * pageSize + lastPageLen[b] - 1;
      if (position < firstToken[b]) {
        throw new RangeError(
          `Cannot ${ACTION} as 'firstToken[${b}]' must leave a sequence's last token visible (position ${position}, KV head ${h}): received ${
            firstToken[b]
          }`,
        );
      }
    }
  }
  return { firstToken: Uint32Array.from(firstToken), pageIds };
}

/** Inputs of `pagedAttention` and `pagedAttentionReference`. */
export interface PagedAttentionInputs {
  /** Queries `[batch][Hq][d]`. */
  q: Float32Array;
  /** Keys `[slot][P][Hkv][d]` (`Float16Array` for f16). */
  kCache: KvArray;
  /** Values `[slot][P][Hkv][d]`. */
  vCache: KvArray;
  /** Slot ids `[batch][Hkv][maxPages]`. */
  pageTable: Uint32Array;
  /** Pages per sequence. */
  numPages: ArrayLike<number>;
  /** Valid tokens of each last page. */
  lastPageLen: ArrayLike<number>;
  /** Page table row length (default `pageTable.length / (batch * Hkv)`). */
  maxPages?: number;
  /** Sliding window: first visible token per sequence (see {@linkcode AttentionTables}). */
  firstToken?: ArrayLike<number>;
  /** Page ids parallel to `pageTable`, needed with a `firstToken` above 0. */
  pageIds?: Uint32Array;
}

/** Attention output and log-sum-exp. */
export interface PagedAttentionResult {
  /** `[batch][Hq][d]`. */
  out: Float32Array;
  /** `[batch][Hq]`, natural log of the softmax denominator. */
  lse: Float32Array;
}

/** Host inputs after validation. */
export interface CheckedInputs extends Tables {
  q: Float32Array;
  kCache: KvArray;
  vCache: KvArray;
}

/** Validates the inputs of the one-shot attention and its CPU reference. */
export function validateInputs(shape: AttentionShape, inputs: PagedAttentionInputs): CheckedInputs {
  if (inputs == null || typeof inputs !== "object") {
    throw new TypeError(`Cannot ${ACTION} as 'inputs' must be an object: received ${inputs}`);
  }
  const { q, kCache, vCache, pageTable, numPages, lastPageLen } = inputs;
  const { numQueryHeads: hq, numKvHeads: hkv, headDim, pageSize } = shape;
  if (!(q instanceof Float32Array)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'q' must be a Float32Array: received ${describeValue(q)}`,
    );
  }
  for (const [name, a] of [["kCache", kCache], ["vCache", vCache]] as const) {
    if (!(a instanceof Float32Array) && !(a instanceof Float16Array)) {
      throw new TypeError(
        `Cannot ${ACTION} as '${name}' must be a Float32Array or Float16Array: received ${
          describeValue(a)
        }`,
      );
    }
  }
  if (kCache.constructor !== vCache.constructor) {
    throw new TypeError(
      `Cannot ${ACTION} as 'vCache' must have the type of 'kCache' (${kCache.constructor.name}): received ${vCache.constructor.name}`,
    );
  }
  const slotElems = pageSize * hkv * headDim;
  if (kCache.length === 0 || kCache.length % slotElems !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'kCache' length must be a positive multiple of pageSize * numKvHeads * headDim (${slotElems}): received length ${kCache.length}`,
    );
  }
  assertLength("vCache", vCache, kCache.length, ACTION);
  if (!(pageTable instanceof Uint32Array)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'pageTable' must be a Uint32Array: received ${describeValue(pageTable)}`,
    );
  }
  const batch = numPages?.length;
  assertInteger("batch", batch, ACTION, 1);
  const maxPages = inputs.maxPages ?? (pageTable?.length ?? 0) / (batch * hkv);
  const tables = validateTables(shape, {
    pageTable,
    numPages,
    lastPageLen,
    maxPages,
    numSlots: kCache.length / slotElems,
    firstToken: inputs.firstToken,
    pageIds: inputs.pageIds,
  });
  assertLength("q", q, batch * hq * headDim, ACTION);
  assertAllFinite("q", q, ACTION);
  return { ...tables, q, kCache, vCache };
}
