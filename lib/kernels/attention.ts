/**
 * Paged decode attention over the NHD slot cache (one query token per
 * sequence), with per-KV-head page tables (holes allowed), grouped-query
 * attention of any group size, and flash-decoding splits merged by a second
 * small pass.
 *
 * The kernel contract: {@linkcode createPagedAttention} (shape and tuning)
 * then {@linkcode PagedAttention.plan} (validates the step's tables on the
 * CPU and uploads them) then {@linkcode AttentionPlan.encode} (records into
 * the caller's encoder only). The page table may come from the GPU instead.
 * The CPU reference is in `attention_reference.ts`, the options and their
 * validation in `attention_options.ts`.
 *
 * @module
 */

import attentionSource from "../../shaders/paged_attention.wgsl" with { type: "text" };
import mergeSource from "../../shaders/attention_merge.wgsl" with { type: "text" };
import f32WordSource from "../../shaders/kv_word_f32.wgsl" with { type: "text" };
import f16WordSource from "../../shaders/kv_word_f16.wgsl" with { type: "text" };
import { assertDevice, disposedError } from "../gpu/errors.ts";
import { bytesPerElement, type KvDtype } from "../gpu/dtype.ts";
import {
  assertBufferSize,
  BindGroupCache,
  type BufferSlice,
  createBuffer,
  GrowableBuffer,
  readBuffer,
  writeIfChanged,
} from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { slotStrides } from "./slot_layout.ts";
import { type KernelEncodeOptions, passTimestampWrites } from "../gpu/timing.ts";
import {
  ACTION,
  type AttentionShape,
  type AttentionTables,
  type Config,
  deviceTraits,
  type PagedAttentionInputs,
  type PagedAttentionOptions,
  type PagedAttentionResult,
  type Tables,
  validateInputs,
  validateOptions,
  validateTables,
} from "./attention_options.ts";

export {
  type AttentionShape,
  type AttentionTables,
  EMPTY_SLOT,
  type PagedAttentionInputs,
  type PagedAttentionOptions,
  type PagedAttentionResult,
} from "./attention_options.ts";
export type { GpuTimestampWrites } from "../gpu/timing.ts";

/** Buffers of one attention call, see {@linkcode AttentionPlan.encode}. */
export interface AttentionBuffers {
  /** Queries `[batch][Hq][d]` f32. */
  q: GPUBuffer | BufferSlice;
  /** Keys `[slot][P][Hkv][d]` of the dtype. */
  kCache: GPUBuffer;
  /** Values `[slot][P][Hkv][d]` of the dtype. */
  vCache: GPUBuffer;
  /** Output `[batch][Hq][d]` f32. */
  out: GPUBuffer | BufferSlice;
  /** Optional log-sum-exp `[batch][Hq]` f32 (natural log). */
  lse?: GPUBuffer | BufferSlice;
  /**
   * Optional page table `[batch][Hkv][maxPages]` u32 on the GPU (written by
   * another kernel, {@linkcode EMPTY_SLOT} for holes); replaces the plan's
   * table for this encode. Slot ids are not checked on the CPU: each must be
   * below `numSlots` or a hole, and no sequence's last page a hole.
   */
  pageTable?: GPUBuffer | BufferSlice;
  /**
   * Page ids parallel to `pageTable` on the GPU, needed when the plan has a
   * sliding window (`firstToken`) and the table comes from `pageTable`. They
   * must lie in the same buffer, after the table, at the same distance from
   * it in every encode of one plan.
   */
  pageIds?: GPUBuffer | BufferSlice;
}

/**
 * Options of {@linkcode AttentionPlan.encode}: timestamps at the beginning
 * of the first pass (`beginIndex`) and the end of the last (`endIndex`);
 * either may be left out, so that work spanning several encodes can be
 * timed as a whole.
 */
export type AttentionEncodeOptions = KernelEncodeOptions;

interface Kernels {
  main: GPUComputePipeline;
  merge: GPUComputePipeline;
}

function buildKernels(device: GPUDevice, c: Config): Kernels {
  const header = (c.dtype === "f16" ? f16WordSource : f32WordSource) +
    `const GROUP: u32 = ${c.group}u;\nconst GROUP_VECS: u32 = ${c.groupVecs}u;\n` +
    `const TOKENS_PER_LANE: u32 = ${c.tokensPerLane}u;\n` +
    `const WORDS_PER_LANE: u32 = ${c.wordsPerLane}u;\n`;
  const strides = slotStrides(c.shape.slotLayout ?? "nhd", c.shape.pageSize, c.shape.numKvHeads);
  const main = cachedPipeline(
    device,
    `paged_attention ${c.dtype} group ${c.group} tokens ${c.tokensPerLane} words ${c.wordsPerLane}`,
    header + attentionSource,
    {
      PAGE_SIZE: c.shape.pageSize,
      NUM_KV_HEADS: c.shape.numKvHeads,
      TOKEN_STRIDE: strides.token * c.numWords,
      HEAD_STRIDE: strides.head * c.numWords,
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
  /**
   * Compiles the kernel's pipelines now; otherwise the first encode does
   * (on lavapipe the main kernel takes about 100 ms to compile).
   */
  compile(): void;
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
    if (this.#disposed) throw disposedError(ACTION, "attention");
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

  compile(): void {
    this.kernels;
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
  }
}

/**
 * Creates a {@linkcode PagedAttention}. Pipelines are compiled on the
 * first plan.
 *
 * @throws {TypeError} When an option has the wrong type (not an integer, an
 * unknown `dtype`, a non-boolean `prefetchValues`).
 * @throws {RangeError} When a size is out of range, `numQueryHeads` is not a
 * multiple of `numKvHeads`, or the shape needs more workgroup memory than
 * the device has.
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
  assertDevice(device, ACTION);
  return new Attention(device, validateOptions(options, deviceTraits(device)));
}

interface BindEntry {
  main: GPUBindGroup;
  merge: GPUBindGroup;
}

const PARAM_WORDS = 8;
const STORAGE_COPY = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;

class Plan implements AttentionPlan {
  readonly attention: Attention;
  #tables!: Tables;
  #pagesPerSplit = 1;
  #numSplits = 1;
  #meta: GrowableBuffer;
  #table: GrowableBuffer;
  #params: GPUBuffer;
  /** The words last given to `#params`. */
  #paramWords = new Uint32Array(PARAM_WORDS);
  #partial: GrowableBuffer;
  #lseScratch: GrowableBuffer;
  #bindings = new BindGroupCache<BindEntry>();
  #idsOffset: number | undefined;
  #disposed = false;

  constructor(attention: Attention, tables: Tables) {
    this.attention = attention;
    attention.kernels; // compile before allocating, so shape errors come first
    const device = attention.device;
    this.#params = createBuffer(
      device,
      "freekv attention params",
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      PARAM_WORDS * 4,
    );
    this.#meta = new GrowableBuffer(device, "freekv attention sequences", STORAGE_COPY);
    this.#table = new GrowableBuffer(device, "freekv attention page table", STORAGE_COPY);
    this.#partial = new GrowableBuffer(device, "freekv attention partials", GPUBufferUsage.STORAGE);
    this.#lseScratch = new GrowableBuffer(
      device,
      "freekv attention lse scratch",
      GPUBufferUsage.STORAGE,
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
      meta[b * 4 + 3] = t.firstToken?.[b] ?? 0;
    }
    const entries = t.batch * hq * numSplits;
    const cols = headDim / 4;
    const partialBytes = numSplits > 1 ? entries * (cols + 1) * 16 : 16;
    let changed = this.#meta.ensure(meta.byteLength);
    const ids = t.pageTable && t.firstToken ? t.pageIds : undefined;
    const tableWords = (t.pageTable?.length ?? 0) + (ids?.length ?? 0);
    if (t.pageTable) changed = this.#table.ensure(tableWords * 4) || changed;
    changed = this.#partial.ensure(partialBytes) || changed;
    changed = this.#lseScratch.ensure(t.batch * hq * 4) || changed;
    if (changed) this.#bindings.clear();
    writeIfChanged(device.queue, this.#meta.buffer, meta);
    if (t.pageTable) {
      device.queue.writeBuffer(this.#table.buffer, 0, t.pageTable as Uint32Array<ArrayBuffer>);
      if (ids) {
        device.queue.writeBuffer(
          this.#table.buffer,
          t.pageTable.byteLength,
          ids as Uint32Array<ArrayBuffer>,
        );
      }
    }
    const params = new Uint32Array(PARAM_WORDS);
    params[0] = t.batch;
    params[1] = t.maxPages;
    params[2] = pagesPerSplit;
    params[3] = numSplits;
    params[4] = 0; // the page table starts its binding
    params[5] = entries * cols;
    new Float32Array(params.buffer)[6] = 1 / Math.sqrt(headDim);
    // CPU ids follow the CPU table; GPU ids get their offset at the first encode.
    params[7] = ids ? t.pageTable!.length : this.#idsOffset ?? 0;
    writeIfChanged(device.queue, this.#params, params);
    this.#paramWords = params;
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
    const q = assertBufferSize("q", buffers.q, rowBytes, ACTION);
    const out = assertBufferSize("out", buffers.out, rowBytes, ACTION);
    const k = assertBufferSize("kCache", buffers.kCache, cacheBytes, ACTION).buffer;
    const v = assertBufferSize("vCache", buffers.vCache, cacheBytes, ACTION).buffer;
    const lseBytes = t.batch * hq * 4;
    const lse = buffers.lse === undefined
      ? { buffer: this.#lseScratch.buffer, offset: 0, size: lseBytes }
      : assertBufferSize("lse", buffers.lse, lseBytes, ACTION);
    const tableBytes = t.batch * hkv * t.maxPages * 4;
    let table: Required<BufferSlice>;
    if (buffers.pageTable !== undefined) {
      table = assertBufferSize("pageTable", buffers.pageTable, tableBytes, ACTION);
      if (t.firstToken) table = this.#withPageIds(table, buffers.pageIds, tableBytes);
    } else if (t.pageTable) {
      const words = t.firstToken ? 2 : 1;
      table = { buffer: this.#table.buffer, offset: 0, size: tableBytes * words };
    } else {
      throw new TypeError(
        `Cannot ${ACTION} as 'pageTable' must be given as a buffer when the plan has no table: received undefined`,
      );
    }
    const key = [q.buffer, q.offset, q.size, k, v, out.buffer, out.offset, out.size];
    key.push(lse.buffer, lse.offset, lse.size, table.buffer, table.offset, table.size);
    const entry = this.#bindings.get(key, () => this.#bindGroups(q, k, v, out, lse, table));
    const kernels = this.attention.kernels;
    const ts = options.timestampWrites;
    const merge = this.#numSplits > 1;
    const pass = encoder.beginComputePass({
      label: "freekv paged attention",
      timestampWrites: passTimestampWrites(ts, ts?.beginIndex, merge ? undefined : ts?.endIndex),
    });
    pass.setPipeline(kernels.main);
    pass.setBindGroup(0, entry.main);
    pass.dispatchWorkgroups(this.#numSplits, hkv, t.batch);
    pass.end();
    if (!merge) return;
    const mergePass = encoder.beginComputePass({
      label: "freekv attention merge",
      timestampWrites: passTimestampWrites(ts, undefined, ts?.endIndex),
    });
    mergePass.setPipeline(kernels.merge);
    mergePass.setBindGroup(0, entry.merge);
    mergePass.dispatchWorkgroups(hq, t.batch);
    mergePass.end();
  }

  /** The binding that spans the GPU page table and its page ids (sliding windows). */
  #withPageIds(
    table: Required<BufferSlice>,
    pageIds: GPUBuffer | BufferSlice | undefined,
    tableBytes: number,
  ): Required<BufferSlice> {
    if (pageIds === undefined) {
      throw new TypeError(
        `Cannot ${ACTION} as 'pageIds' must be given with 'pageTable' when the plan has a sliding window ('firstToken'): received undefined`,
      );
    }
    const ids = assertBufferSize("pageIds", pageIds, tableBytes, ACTION);
    const distance = ids.offset - table.offset;
    if (ids.buffer !== table.buffer || distance < tableBytes || distance % 4 !== 0) {
      throw new RangeError(
        `Cannot ${ACTION} as 'pageIds' must lie in the buffer of 'pageTable', after the table: received offset ${ids.offset} ${
          ids.buffer === table.buffer ? "in the same buffer" : "in another buffer"
        } (table at ${table.offset}, ${tableBytes} bytes)`,
      );
    }
    if (this.#idsOffset !== undefined && this.#idsOffset !== distance / 4) {
      throw new RangeError(
        `Cannot ${ACTION} as 'pageIds' must keep its distance from 'pageTable' across the encodes of one plan (${
          this.#idsOffset * 4
        } bytes): received ${distance}`,
      );
    }
    if (this.#idsOffset === undefined) {
      this.#idsOffset = distance / 4;
      this.#paramWords[7] = distance / 4;
      writeIfChanged(this.attention.device.queue, this.#params, this.#paramWords);
    }
    return { buffer: table.buffer, offset: table.offset, size: distance + tableBytes };
  }

  #bindGroups(
    q: Required<BufferSlice>,
    k: GPUBuffer,
    v: GPUBuffer,
    out: Required<BufferSlice>,
    lse: Required<BufferSlice>,
    table: Required<BufferSlice>,
  ): BindEntry {
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
        { binding: 4, resource: { buffer: this.#meta.buffer } },
        { binding: 5, resource: out },
        { binding: 6, resource: lse },
        { binding: 7, resource: { buffer: this.#partial.buffer } },
        { binding: 8, resource: table },
      ],
    });
    const merge = device.createBindGroup({
      label: "freekv attention merge",
      layout: kernels.merge.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: this.#params } },
        { binding: 1, resource: { buffer: this.#meta.buffer } },
        { binding: 2, resource: { buffer: this.#partial.buffer } },
        { binding: 3, resource: out },
        { binding: 4, resource: lse },
      ],
    });
    return { main, merge };
  }

  #alive(): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const b of [this.#meta, this.#table, this.#partial, this.#lseScratch]) {
      b[Symbol.dispose]();
    }
    this.#params.destroy();
    this.#bindings.clear();
  }
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
  assertDevice(device, ACTION);
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
