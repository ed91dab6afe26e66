/**
 * Paged decode attention over the NHD slot cache (one query token per
 * sequence), with per-KV-head page tables, grouped-query attention of any
 * group size, and flash-decoding splits merged by a second small pass.
 *
 * Split between a plan step that validates and uploads the page tables, and
 * an encode step that only records into the caller's command encoder.
 *
 * @module
 */

import attentionSource from "../../shaders/paged_attention.wgsl" with { type: "text" };
import mergeSource from "../../shaders/attention_merge.wgsl" with { type: "text" };
import { assertAllFinite, assertInteger, assertLength, assertOneOf } from "../gpu/errors.ts";
import { bytesPerElement, KV_DTYPES, type KvArray, type KvDtype } from "../gpu/dtype.ts";
import { cachedPipeline, createBuffer, readBuffer } from "../gpu/buffers.ts";
import type { GpuTimestampWrites } from "./roofline.ts";

export type { GpuTimestampWrites } from "./roofline.ts";

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
}

/**
 * Options of {@linkcode createPagedAttention}: the shape, the precision, and
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

/** Page tables of one decode step, the input of {@linkcode PagedAttention.plan}. */
export interface AttentionTables {
  /** Sequences; defaults to `numPages.length`. */
  batch?: number;
  /**
   * Slot ids `[batch][Hkv][maxPages]`; entries past `numPages[b]` are
   * ignored, entries {@linkcode EMPTY_SLOT} are holes. Leave it out when
   * every encode passes the table as a GPU buffer
   * ({@linkcode AttentionBuffers.pageTable}).
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
}

/** A buffer, or a range of one (offsets must honour the storage alignment). */
export type BufferRef = GPUBuffer | GPUBufferBinding;

/** Buffers of one attention call, see {@linkcode AttentionPlan.encode}. */
export interface AttentionBuffers {
  /** Queries `[batch][Hq][d]` f32. */
  q: BufferRef;
  /** Keys `[slot][P][Hkv][d]` of the dtype. */
  kCache: GPUBuffer;
  /** Values `[slot][P][Hkv][d]` of the dtype. */
  vCache: GPUBuffer;
  /** Output `[batch][Hq][d]` f32. */
  out: BufferRef;
  /** Optional log-sum-exp `[batch][Hq]` f32 (natural log). */
  lse?: BufferRef;
  /**
   * Optional page table `[batch][Hkv][maxPages]` u32 on the GPU (written by
   * another kernel, {@linkcode EMPTY_SLOT} for holes); replaces the plan's
   * table for this encode. Slot ids are not checked on the CPU: each must be
   * below `numSlots` or a hole, and no sequence's last page a hole.
   */
  pageTable?: BufferRef;
}

/** Options of {@linkcode AttentionPlan.encode}. */
export interface AttentionEncodeOptions {
  /**
   * Timestamps at the beginning of the first pass (`beginIndex`) and the end
   * of the last (`endIndex`); either may be left out, so that work spanning
   * several encodes can be timed as a whole.
   */
  timestampWrites?: Partial<GpuTimestampWrites> & { querySet: GPUQuerySet };
}

const ACTION = "run attention";

/** Validated options with every default resolved, and the kernel layout. */
interface Config {
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
interface DeviceTraits {
  cpu: boolean;
  simdWidth: number;
  limits: GPUSupportedLimits;
}

function deviceTraits(device: GPUDevice): DeviceTraits {
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
const REFERENCE_TRAITS: DeviceTraits = {
  cpu: true,
  simdWidth: 8,
  limits: {
    maxComputeInvocationsPerWorkgroup: 2 ** 30,
    maxComputeWorkgroupSizeX: 2 ** 30,
    maxComputeWorkgroupStorageSize: Infinity,
  } as GPUSupportedLimits,
};

function validateOptions(options: PagedAttentionOptions, traits: DeviceTraits): Config {
  if (options == null || typeof options !== "object") {
    throw new TypeError(`Cannot ${ACTION} as 'options' must be an object: received ${options}`);
  }
  const { numQueryHeads, numKvHeads, headDim, pageSize } = options;
  assertInteger("numKvHeads", numKvHeads, ACTION, 1);
  assertInteger("numQueryHeads", numQueryHeads, ACTION, 1);
  if (numQueryHeads % numKvHeads !== 0) {
    throw new RangeError(
      `Cannot ${ACTION} as 'numQueryHeads' must be a multiple of 'numKvHeads' (${numKvHeads}): received ${numQueryHeads}`,
    );
  }
  assertInteger("headDim", headDim, ACTION, 4);
  assertInteger("pageSize", pageSize, ACTION, 1);
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
    shape: { numQueryHeads, numKvHeads, headDim, pageSize },
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
interface Tables {
  batch: number;
  pageTable: Uint32Array | undefined;
  numPages: ArrayLike<number>;
  lastPageLen: ArrayLike<number>;
  maxPages: number;
  numSlots: number;
}

function validateTables(shape: AttentionShape, tables: AttentionTables): Tables {
  if (tables == null || typeof tables !== "object") {
    throw new TypeError(`Cannot ${ACTION} as 'tables' must be an object: received ${tables}`);
  }
  const { pageTable, numPages, lastPageLen, maxPages, numSlots } = tables;
  if (pageTable !== undefined && !(pageTable instanceof Uint32Array)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'pageTable' must be a Uint32Array: received ${describe(pageTable)}`,
    );
  }
  if (numPages == null || typeof numPages.length !== "number") {
    throw new TypeError(
      `Cannot ${ACTION} as 'numPages' must be an array: received ${describe(numPages)}`,
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
  return { batch, pageTable, numPages, lastPageLen, maxPages, numSlots };
}

function describe(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (ArrayBuffer.isView(value)) return value.constructor.name;
  return Array.isArray(value) ? "array" : typeof value;
}

interface Kernels {
  main: GPUComputePipeline;
  merge: GPUComputePipeline;
}

const F32_WORD = `alias kv_word = vec4<f32>;
const WORD_VECS: u32 = 1u;
struct Word { a: vec4f, b: vec4f }
fn unpack_word(w: kv_word) -> Word { return Word(w, vec4f(0.0)); }
`;
// f16 rows are read as vec4<u32> words of 8 halves and converted exactly in
// integer arithmetic (unpack2x16float is slow on some CPU adapters).
const F16_WORD = `alias kv_word = vec4<u32>;
const WORD_VECS: u32 = 2u;
// IEEE half bit patterns (low 16 bits of each lane) to f32, exactly.
fn half_bits_to_f32(h: vec4u) -> vec4f {
  let sign = (h & vec4u(0x8000u)) << vec4u(16u);
  let em = h & vec4u(0x7fffu);
  let e = em >> vec4u(10u);
  // Rebias the exponent by 127 - 15; infinities and NaNs need it twice.
  var bits = (em << vec4u(13u)) + vec4u(112u << 23u);
  bits = select(bits, bits + vec4u(112u << 23u), e == vec4u(31u));
  // Zeros and subnormals: mantissa * 2^-24, exact in f32.
  let magnitude = select(bitcast<vec4f>(bits), vec4f(em) * 5.9604644775390625e-8, e == vec4u(0u));
  return bitcast<vec4f>(bitcast<vec4u>(magnitude) | sign);
}
struct Word { a: vec4f, b: vec4f }
fn unpack_word(w: kv_word) -> Word {
  let lo = half_bits_to_f32(w & vec4u(0xffffu));
  let hi = half_bits_to_f32(w >> vec4u(16u));
  return Word(vec4f(lo.x, hi.x, lo.y, hi.y), vec4f(lo.z, hi.z, lo.w, hi.w));
}
`;

function buildKernels(device: GPUDevice, c: Config): Kernels {
  const header = (c.dtype === "f16" ? F16_WORD : F32_WORD) +
    `const GROUP: u32 = ${c.group}u;\nconst GROUP_VECS: u32 = ${c.groupVecs}u;\n` +
    `const TOKENS_PER_LANE: u32 = ${c.tokensPerLane}u;\n` +
    `const WORDS_PER_LANE: u32 = ${c.wordsPerLane}u;\n`;
  const main = cachedPipeline(
    device,
    `paged_attention ${c.dtype} group ${c.group} tokens ${c.tokensPerLane} words ${c.wordsPerLane}`,
    header + attentionSource,
    {
      PAGE_SIZE: c.shape.pageSize,
      NUM_KV_HEADS: c.shape.numKvHeads,
      NUM_COLS: c.shape.headDim / 4,
      NUM_WORDS: c.numWords,
      COL_LANES: c.colLanes,
      TY: c.tokenLanes,
      WORKGROUP_SIZE: c.workgroupSize,
      CHUNK: c.chunk,
      PREFETCH_V: c.prefetchValues ? 1 : 0,
      ...c.sizes,
    },
  );
  const cols = c.shape.headDim / 4;
  const merge = cachedPipeline(device, "attention_merge", mergeSource, {
    NUM_QUERY_HEADS: c.shape.numQueryHeads,
    NUM_COLS: cols,
    WORKGROUP_SIZE: Math.min(cols, 64),
  });
  return { main, merge };
}

/**
 * Paged decode attention for one layer shape, from
 * {@linkcode createPagedAttention}; call {@linkcode PagedAttention.plan} per
 * step (or keep a plan and {@linkcode AttentionPlan.update} it).
 */
export interface PagedAttention {
  /** The device the kernels run on. */
  readonly device: GPUDevice;
  /** Head and page geometry. */
  readonly shape: Readonly<AttentionShape>;
  /** KV element type. */
  readonly dtype: KvDtype;
  /** Query heads per KV head. */
  readonly groupSize: number;
  /** Invocations per workgroup of the split kernel (after defaults and limits). */
  readonly workgroupSize: number;
  /** Tokens per chunk of the split kernel (after defaults and limits). */
  readonly chunkTokens: number;
  /**
   * Validates the page tables of a step and uploads them; the plan is
   * reusable until the tables change. Throws `TypeError`/`RangeError` before
   * any GPU work on bad tables.
   */
  plan(tables: AttentionTables): AttentionPlan;
  /** Marks the attention unusable; it owns no buffers (plans do). */
  [Symbol.dispose](): void;
}

/**
 * The page tables of one step on the GPU, with the split layout and scratch
 * buffers, from {@linkcode PagedAttention.plan}. Owns its buffers: dispose
 * it (or `using`).
 */
export interface AttentionPlan {
  /** The attention this plan belongs to. */
  readonly attention: PagedAttention;
  /** Sequences of the current tables. */
  readonly batch: number;
  /** Page table row length of the current tables. */
  readonly maxPages: number;
  /** Slots the KV buffers must hold. */
  readonly numSlots: number;
  /** Splits of the longest sequence (1: no merge pass). */
  readonly numSplits: number;
  /** Pages per split. */
  readonly pagesPerSplit: number;
  /**
   * Replaces the tables (a new decode step), reusing the buffers when they
   * are large enough. Writes go through `queue.writeBuffer`, so they apply to
   * every command buffer submitted afterwards: submit the work recorded with
   * the old tables before updating.
   */
  update(tables: AttentionTables): void;
  /**
   * Records the attention into `encoder` (one or two compute passes); the
   * caller submits. Throws `TypeError`/`RangeError` before recording when a
   * buffer is too small or lacks `STORAGE` usage.
   */
  encode(
    encoder: GPUCommandEncoder,
    buffers: AttentionBuffers,
    options?: AttentionEncodeOptions,
  ): void;
  /** Destroys the plan's buffers. */
  [Symbol.dispose](): void;
}

class Attention implements PagedAttention {
  readonly device: GPUDevice;
  readonly shape: Readonly<AttentionShape>;
  readonly dtype: KvDtype;
  readonly groupSize: number;
  readonly config: Config;
  #kernels: Kernels | undefined;
  #disposed = false;

  constructor(device: GPUDevice, config: Config) {
    this.device = device;
    this.config = config;
    this.shape = Object.freeze({ ...config.shape });
    this.dtype = config.dtype;
    this.groupSize = config.group;
  }

  get kernels(): Kernels {
    if (this.#disposed) throw new TypeError(`Cannot ${ACTION} as the attention was disposed`);
    return this.#kernels ??= buildKernels(this.device, this.config);
  }

  get workgroupSize(): number {
    return this.config.workgroupSize;
  }

  get chunkTokens(): number {
    return this.config.chunk;
  }

  plan(tables: AttentionTables): AttentionPlan {
    const checked = validateTables(this.shape, tables);
    return new Plan(this, checked);
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
  }
}

/**
 * Creates a {@linkcode PagedAttention}; throws `TypeError`/`RangeError` on a
 * bad shape or option. Pipelines are compiled on the first plan.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createPagedAttention } from "./attention.ts";
 * using gpu = await requestGpu();
 * const device = gpu.device;
 * using attn = createPagedAttention(device, {
 *   numQueryHeads: 1, numKvHeads: 1, headDim: 4, pageSize: 2,
 * });
 * // One sequence of 2 tokens in slot 0.
 * using plan = attn.plan({
 *   pageTable: new Uint32Array([0]), numPages: [1], lastPageLen: [2], maxPages: 1, numSlots: 1,
 * });
 * const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
 * const q = createBuffer(device, "q", S, new Float32Array([1, 0, 0, 0]));
 * const k = createBuffer(device, "k", S, new Float32Array([1, 0, 0, 0, 0, 0, 0, 0]));
 * const v = createBuffer(device, "v", S, new Float32Array([1, 1, 1, 1, 3, 3, 3, 3]));
 * const out = createBuffer(device, "out", S, 16);
 * const encoder = device.createCommandEncoder({ label: "example" });
 * plan.encode(encoder, { q, kCache: k, vCache: v, out });
 * device.queue.submit([encoder.finish()]);
 * console.log(new Float32Array(await readBuffer(device, out))[0].toFixed(3)); // 1.755
 * // Next step: one more token.
 * plan.update({
 *   pageTable: new Uint32Array([0]), numPages: [1], lastPageLen: [1], maxPages: 1, numSlots: 1,
 * });
 * ```
 */
export function createPagedAttention(
  device: GPUDevice,
  options: PagedAttentionOptions,
): PagedAttention {
  return new Attention(device, validateOptions(options, deviceTraits(device)));
}

interface BindEntry {
  key: unknown[];
  main: GPUBindGroup;
  merge: GPUBindGroup;
}

const PARAM_WORDS = 8;

class Plan implements AttentionPlan {
  readonly attention: Attention;
  #tables!: Tables;
  #pagesPerSplit = 1;
  #numSplits = 1;
  #meta: GPUBuffer | undefined;
  #table: GPUBuffer | undefined;
  #params: GPUBuffer;
  #partial: GPUBuffer | undefined;
  #lseScratch: GPUBuffer | undefined;
  #bindings: BindEntry[] = [];
  #disposed = false;

  constructor(attention: Attention, tables: Tables) {
    this.attention = attention;
    attention.kernels; // compile before allocating, so shape errors come first
    this.#params = createBuffer(
      attention.device,
      "freekv attention params",
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      PARAM_WORDS * 4,
    );
    this.#upload(tables);
  }

  get batch(): number {
    return this.#tables.batch;
  }

  get maxPages(): number {
    return this.#tables.maxPages;
  }

  get numSlots(): number {
    return this.#tables.numSlots;
  }

  get numSplits(): number {
    return this.#numSplits;
  }

  get pagesPerSplit(): number {
    return this.#pagesPerSplit;
  }

  update(tables: AttentionTables): void {
    this.#alive();
    const checked = validateTables(this.attention.shape, tables);
    this.#upload(checked);
  }

  #upload(t: Tables): void {
    const device = this.attention.device;
    const { numKvHeads: hkv, numQueryHeads: hq, headDim, pageSize } = this.attention.shape;
    const config = this.attention.config;
    let longest = 0;
    for (let b = 0; b < t.batch; b++) longest = Math.max(longest, t.numPages[b]);
    const wantSplits = Math.ceil(config.targetWorkgroups / (t.batch * hkv));
    const minPages = Math.ceil(config.minSplitTokens / pageSize);
    const pagesPerSplit = Math.max(minPages, Math.ceil(longest / wantSplits));
    const numSplits = Math.ceil(longest / pagesPerSplit);

    const meta = new Uint32Array(t.batch * 4);
    for (let b = 0; b < t.batch; b++) {
      meta[b * 4] = t.numPages[b];
      meta[b * 4 + 1] = t.lastPageLen[b];
      meta[b * 4 + 2] = Math.ceil(t.numPages[b] / pagesPerSplit);
    }
    const entries = t.batch * hq * numSplits;
    const cols = headDim / 4;
    const partialBytes = numSplits > 1 ? entries * (cols + 1) * 16 : 16;
    const lseBytes = t.batch * hq * 4;

    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    let changed = false;
    if (!this.#meta || this.#meta.size < meta.byteLength) {
      this.#meta?.destroy();
      this.#meta = createBuffer(device, "freekv attention sequences", usage, grow(meta.byteLength));
      changed = true;
    }
    if (t.pageTable && (!this.#table || this.#table.size < t.pageTable.byteLength)) {
      this.#table?.destroy();
      this.#table = createBuffer(
        device,
        "freekv attention page table",
        usage,
        grow(t.pageTable.byteLength),
      );
      changed = true;
    }
    if (!this.#partial || this.#partial.size < partialBytes) {
      this.#partial?.destroy();
      this.#partial = createBuffer(
        device,
        "freekv attention partials",
        GPUBufferUsage.STORAGE,
        grow(partialBytes),
      );
      changed = true;
    }
    if (!this.#lseScratch || this.#lseScratch.size < lseBytes) {
      this.#lseScratch?.destroy();
      this.#lseScratch = createBuffer(
        device,
        "freekv attention lse scratch",
        GPUBufferUsage.STORAGE,
        grow(lseBytes),
      );
      changed = true;
    }
    if (changed) this.#bindings = [];
    device.queue.writeBuffer(this.#meta, 0, meta);
    if (t.pageTable) device.queue.writeBuffer(this.#table!, 0, new Uint32Array(t.pageTable));
    const params = new Uint32Array(PARAM_WORDS);
    params[0] = t.batch;
    params[1] = t.maxPages;
    params[2] = pagesPerSplit;
    params[3] = numSplits;
    params[4] = 0; // the page table starts its binding
    params[5] = entries * cols;
    new Float32Array(params.buffer)[6] = 1 / Math.sqrt(headDim);
    device.queue.writeBuffer(this.#params, 0, params);
    this.#tables = t;
    this.#pagesPerSplit = pagesPerSplit;
    this.#numSplits = numSplits;
  }

  encode(
    encoder: GPUCommandEncoder,
    buffers: AttentionBuffers,
    options: AttentionEncodeOptions = {},
  ): void {
    this.#alive();
    const { numKvHeads: hkv, numQueryHeads: hq, headDim, pageSize } = this.attention.shape;
    const t = this.#tables;
    if (buffers == null || typeof buffers !== "object") {
      throw new TypeError(`Cannot ${ACTION} as 'buffers' must be an object: received ${buffers}`);
    }
    const rowBytes = t.batch * hq * headDim * 4;
    const cacheBytes = t.numSlots * pageSize * hkv * headDim *
      bytesPerElement(this.attention.dtype);
    const q = checkBinding("q", buffers.q, rowBytes);
    const out = checkBinding("out", buffers.out, rowBytes);
    checkBinding("kCache", buffers.kCache, cacheBytes);
    checkBinding("vCache", buffers.vCache, cacheBytes);
    const lse = buffers.lse === undefined
      ? { buffer: this.#lseScratch!, offset: 0, size: t.batch * hq * 4 }
      : checkBinding("lse", buffers.lse, t.batch * hq * 4);
    const tableBytes = t.batch * hkv * t.maxPages * 4;
    let table: Required<GPUBufferBinding>;
    if (buffers.pageTable !== undefined) {
      table = checkBinding("pageTable", buffers.pageTable, tableBytes);
    } else if (t.pageTable) {
      table = { buffer: this.#table!, offset: 0, size: tableBytes };
    } else {
      throw new TypeError(
        `Cannot ${ACTION} as 'pageTable' must be given as a buffer when the plan has no table: received undefined`,
      );
    }
    const entry = this.#bindGroups(q, buffers.kCache, buffers.vCache, out, lse, table);
    const kernels = this.attention.kernels;
    const ts = options.timestampWrites;
    const merge = this.#numSplits > 1;
    const pass = encoder.beginComputePass({
      label: "freekv paged attention",
      timestampWrites: passWrites(ts, ts?.beginIndex, merge ? undefined : ts?.endIndex),
    });
    pass.setPipeline(kernels.main);
    pass.setBindGroup(0, entry.main);
    pass.dispatchWorkgroups(this.#numSplits, hkv, t.batch);
    pass.end();
    if (!merge) return;
    const mergePass = encoder.beginComputePass({
      label: "freekv attention merge",
      timestampWrites: passWrites(ts, undefined, ts?.endIndex),
    });
    mergePass.setPipeline(kernels.merge);
    mergePass.setBindGroup(0, entry.merge);
    mergePass.dispatchWorkgroups(hq, t.batch);
    mergePass.end();
  }

  #bindGroups(
    q: Required<GPUBufferBinding>,
    k: GPUBuffer,
    v: GPUBuffer,
    out: Required<GPUBufferBinding>,
    lse: Required<GPUBufferBinding>,
    table: Required<GPUBufferBinding>,
  ): BindEntry {
    const key = [
      q.buffer,
      q.offset,
      q.size,
      k,
      v,
      out.buffer,
      out.offset,
      out.size,
      lse.buffer,
      lse.offset,
      lse.size,
      table.buffer,
      table.offset,
      table.size,
    ];
    const found = this.#bindings.findIndex((e) => e.key.every((x, i) => x === key[i]));
    if (found >= 0) {
      const e = this.#bindings[found];
      if (found > 0) this.#bindings.splice(found, 1), this.#bindings.unshift(e);
      return e;
    }
    const device = this.attention.device;
    const kernels = this.attention.kernels;
    const main = device.createBindGroup({
      label: "freekv paged attention",
      layout: kernels.main.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: this.#params } },
        { binding: 1, resource: q },
        { binding: 2, resource: { buffer: k } },
        { binding: 3, resource: { buffer: v } },
        { binding: 4, resource: { buffer: this.#meta! } },
        { binding: 5, resource: out },
        { binding: 6, resource: lse },
        { binding: 7, resource: { buffer: this.#partial! } },
        { binding: 8, resource: table },
      ],
    });
    const merge = device.createBindGroup({
      label: "freekv attention merge",
      layout: kernels.merge.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: this.#params } },
        { binding: 1, resource: { buffer: this.#meta! } },
        { binding: 2, resource: { buffer: this.#partial! } },
        { binding: 3, resource: out },
        { binding: 4, resource: lse },
      ],
    });
    const e = { key, main, merge };
    this.#bindings.unshift(e);
    if (this.#bindings.length > 8) this.#bindings.pop();
    return e;
  }

  #alive(): void {
    if (this.#disposed) throw new TypeError(`Cannot ${ACTION} as the plan was disposed`);
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#meta?.destroy();
    this.#table?.destroy();
    this.#params.destroy();
    this.#partial?.destroy();
    this.#lseScratch?.destroy();
    this.#bindings = [];
  }
}

function passWrites(
  ts: AttentionEncodeOptions["timestampWrites"],
  begin: number | undefined,
  end: number | undefined,
): GPUComputePassTimestampWrites | undefined {
  if (!ts || (begin === undefined && end === undefined)) return undefined;
  return { querySet: ts.querySet, beginningOfPassWriteIndex: begin, endOfPassWriteIndex: end };
}

function grow(bytes: number): number {
  // Head room so that slowly growing tables do not reallocate every step.
  return Math.ceil((bytes * 1.25) / 256) * 256;
}

function checkBinding(name: string, ref: BufferRef, needBytes: number): Required<GPUBufferBinding> {
  const buffer = ref instanceof GPUBuffer ? ref : ref?.buffer;
  if (!(buffer instanceof GPUBuffer)) {
    throw new TypeError(
      `Cannot ${ACTION} as '${name}' must be a GPUBuffer or a buffer binding: received ${
        describe(ref)
      }`,
    );
  }
  if (!(buffer.usage & GPUBufferUsage.STORAGE)) {
    throw new TypeError(
      `Cannot ${ACTION} as '${name}' must have STORAGE usage: received usage ${buffer.usage}`,
    );
  }
  const offset = ref instanceof GPUBuffer ? 0 : ref.offset ?? 0;
  const size = ref instanceof GPUBuffer ? buffer.size : ref.size ?? buffer.size - offset;
  if (size < needBytes || offset + size > buffer.size) {
    throw new RangeError(
      `Cannot ${ACTION} as '${name}' must span at least ${needBytes} bytes: received ${size} bytes at offset ${offset} of a ${buffer.size}-byte buffer`,
    );
  }
  return { buffer, offset, size: needBytes };
}

/** Inputs of {@linkcode pagedAttention} and {@linkcode pagedAttentionReference}. */
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
}

/** Attention output and log-sum-exp. */
export interface PagedAttentionResult {
  /** `[batch][Hq][d]`. */
  out: Float32Array;
  /** `[batch][Hq]`, natural log of the softmax denominator. */
  lse: Float32Array;
}

interface CheckedInputs extends Tables {
  q: Float32Array;
  kCache: KvArray;
  vCache: KvArray;
}

function validateInputs(shape: AttentionShape, inputs: PagedAttentionInputs): CheckedInputs {
  if (inputs == null || typeof inputs !== "object") {
    throw new TypeError(`Cannot ${ACTION} as 'inputs' must be an object: received ${inputs}`);
  }
  const { q, kCache, vCache, pageTable, numPages, lastPageLen } = inputs;
  const { numQueryHeads: hq, numKvHeads: hkv, headDim, pageSize } = shape;
  if (!(q instanceof Float32Array)) {
    throw new TypeError(`Cannot ${ACTION} as 'q' must be a Float32Array: received ${describe(q)}`);
  }
  for (const [name, a] of [["kCache", kCache], ["vCache", vCache]] as const) {
    if (!(a instanceof Float32Array) && !(a instanceof Float16Array)) {
      throw new TypeError(
        `Cannot ${ACTION} as '${name}' must be a Float32Array or Float16Array: received ${
          describe(a)
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
      `Cannot ${ACTION} as 'pageTable' must be a Uint32Array: received ${describe(pageTable)}`,
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
  });
  assertLength("q", q, batch * hq * headDim, ACTION);
  assertAllFinite("q", q, ACTION);
  return { ...tables, q, kCache, vCache };
}

/**
 * Runs paged attention on host arrays and returns the output and
 * log-sum-exp; for tests and notebooks (allocates and frees its buffers on
 * every call). The dtype follows `kCache` (`Float16Array` means f16).
 * Throws `TypeError`/`RangeError` before any GPU work on bad input,
 * including non-finite queries.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { pagedAttention } from "./attention.ts";
 * using gpu = await requestGpu();
 * const { out, lse } = await pagedAttention(gpu.device, {
 *   q: new Float32Array([1, 0, 0, 0]),
 *   kCache: new Float32Array([1, 0, 0, 0, 0, 0, 0, 0]),
 *   vCache: new Float32Array([1, 1, 1, 1, 3, 3, 3, 3]),
 *   pageTable: new Uint32Array([0]), numPages: [1], lastPageLen: [2],
 * }, { numQueryHeads: 1, numKvHeads: 1, headDim: 4, pageSize: 2 });
 * console.log(out[0].toFixed(3), lse[0].toFixed(3)); // 1.755 0.974
 * ```
 */
export async function pagedAttention(
  device: GPUDevice,
  inputs: PagedAttentionInputs,
  options: PagedAttentionOptions,
): Promise<PagedAttentionResult> {
  const dtype: KvDtype = inputs?.kCache instanceof Float16Array ? "f16" : "f32";
  if (options?.dtype !== undefined && options.dtype !== dtype) {
    throw new TypeError(
      `Cannot ${ACTION} as 'dtype' must match the type of 'kCache' (${dtype}): received ${
        JSON.stringify(options.dtype)
      }`,
    );
  }
  const config = validateOptions({ ...options, dtype }, deviceTraits(device));
  const x = validateInputs(config.shape, inputs);
  const { numQueryHeads: hq } = config.shape;
  using attention = new Attention(device, config);
  using plan = attention.plan(x);
  const S = GPUBufferUsage.STORAGE;
  const q = createBuffer(device, "freekv attention q", S, x.q);
  const k = createBuffer(device, "freekv attention k", S, x.kCache);
  const v = createBuffer(device, "freekv attention v", S, x.vCache);
  const out = createBuffer(
    device,
    "freekv attention out",
    S | GPUBufferUsage.COPY_SRC,
    x.q.length * 4,
  );
  const lse = createBuffer(
    device,
    "freekv attention lse",
    S | GPUBufferUsage.COPY_SRC,
    x.batch * hq * 4,
  );
  try {
    const encoder = device.createCommandEncoder({ label: "freekv paged attention" });
    plan.encode(encoder, { q, kCache: k, vCache: v, out, lse });
    device.queue.submit([encoder.finish()]);
    const [o, l] = await Promise.all([
      readBuffer(device, out, x.q.length * 4),
      readBuffer(device, lse, x.batch * hq * 4),
    ]);
    return { out: new Float32Array(o), lse: new Float32Array(l) };
  } finally {
    for (const b of [q, k, v, out, lse]) b.destroy();
  }
}

/**
 * The CPU oracle of {@linkcode pagedAttention}: a plain loop in double
 * precision over the attended tokens of every query head (llama2.c style).
 * Validates like the GPU version.
 *
 * @example
 * ```ts
 * import { pagedAttentionReference } from "./attention.ts";
 * const { out, lse } = pagedAttentionReference({
 *   q: new Float32Array([1, 0, 0, 0]),
 *   kCache: new Float32Array([1, 0, 0, 0, 0, 0, 0, 0]),
 *   vCache: new Float32Array([1, 1, 1, 1, 3, 3, 3, 3]),
 *   pageTable: new Uint32Array([0]), numPages: [1], lastPageLen: [2],
 * }, { numQueryHeads: 1, numKvHeads: 1, headDim: 4, pageSize: 2 });
 * console.log(out[0].toFixed(3), lse[0].toFixed(3)); // 1.755 0.974
 * ```
 */
export function pagedAttentionReference(
  inputs: PagedAttentionInputs,
  shape: AttentionShape,
): PagedAttentionResult {
  const config = validateOptions({ ...shape, dtype: "f32" }, REFERENCE_TRAITS);
  const x = validateInputs(config.shape, inputs);
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d, pageSize: P } = config.shape;
  const group = hq / hkv;
  const scale = 1 / Math.sqrt(d);
  const out = new Float32Array(x.batch * hq * d);
  const lse = new Float32Array(x.batch * hq);
  const scores: number[] = [];
  const rows: number[] = [];
  const acc = new Float64Array(d);
  for (let b = 0; b < x.batch; b++) {
    const pages = x.numPages[b];
    for (let h = 0; h < hq; h++) {
      const kvh = Math.floor(h / group);
      const qo = (b * hq + h) * d;
      scores.length = 0;
      rows.length = 0;
      for (let p = 0; p < pages; p++) {
        const slot = x.pageTable![(b * hkv + kvh) * x.maxPages + p];
        if (slot === EMPTY_SLOT) continue;
        const len = p === pages - 1 ? x.lastPageLen[b] : P;
        for (let t = 0; t < len; t++) {
          const row = ((slot * P + t) * hkv + kvh) * d;
          let s = 0;
          for (let i = 0; i < d; i++) s += x.q[qo + i] * x.kCache[row + i];
          scores.push(s * scale);
          rows.push(row);
        }
      }
      let max = -Infinity;
      for (const s of scores) max = Math.max(max, s);
      let sum = 0;
      acc.fill(0);
      for (let j = 0; j < scores.length; j++) {
        const w = Math.exp(scores[j] - max);
        sum += w;
        for (let i = 0; i < d; i++) acc[i] += w * x.vCache[rows[j] + i];
      }
      for (let i = 0; i < d; i++) out[qo + i] = acc[i] / sum;
      lse[b * hq + h] = max + Math.log(sum);
    }
  }
  return { out, lse };
}
