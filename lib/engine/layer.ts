/**
 * One layer's GPU state in the retrieval engine: its KV slot cache, the
 * per-layer kernel plans (each layer owns its plans so that a whole decode
 * step can be recorded before one submit), and the residency of its
 * selection pool. Internal to the engine.
 *
 * @module
 */

import { bytesPerElement } from "../gpu/dtype.ts";
import {
  BindGroupCache,
  type BufferSlice,
  createBuffer,
  readBuffer,
  writeIfChanged,
} from "../gpu/buffers.ts";
import { disposedError } from "../gpu/errors.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import type { AttentionPlan, AttentionTables, PagedAttention } from "../kernels/attention.ts";
import { createKvAppend, type KvAppend, type KvAppendPlan } from "../kernels/kv_append.ts";
import {
  createPageSummarizer,
  type PageSummarizer,
  type PageSummaryJobs,
  type PageSummaryPlan,
} from "../kernels/summaries.ts";
import {
  createPageSelector,
  type PageSelectionPlan,
  type PageSelectionStep,
  type PageSelectionVariant,
  type PageSelector,
} from "../kernels/selection.ts";
import {
  createQuerySimilarity,
  type QuerySimilarity,
  type QuerySimilarityPlan,
} from "../kernels/similarity.ts";
import {
  createPageTableBuilder,
  type PageTableBuilder,
  type PageTablePlan,
  type PageTableSequence,
  type PageTableStep,
} from "../kernels/page_table.ts";
import { pageTableReference } from "../kernels/page_table_reference.ts";
import type { PageBudget } from "../memory/page_plan.ts";
import { NOT_RESIDENT, SlotCache } from "../memory/slot_cache.ts";
import { type LayerMode, maxPagesOf, modeBudget, slotsPerSeq } from "./geometry.ts";
import type { ResolvedEngineOptions } from "./options.ts";
import slotCopySource from "../../shaders/slot_copy.wgsl" with { type: "text" };
import { slotStrides } from "../kernels/slot_layout.ts";

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/** Bytes of one layer's buffers, checked against the device limits before allocating. */
export function layerBufferBytes(
  o: ResolvedEngineOptions,
  mode: LayerMode,
): { name: string; bytes: number }[] {
  const P = o.pageSize;
  const row = o.numKvHeads * o.headDim * bytesPerElement(o.dtype);
  const maxPages = maxPagesOf(o);
  const out = [{ name: `${mode} KV cache`, bytes: o.batch * slotsPerSeq(o, mode) * P * row }];
  if (mode === "quest" || mode === "offload") {
    out.push({
      name: "page summaries",
      bytes: o.batch * maxPages * o.numKvHeads * 2 * o.headDim * 4,
    });
  }
  if (mode === "offload") {
    out.push({ name: "residency map", bytes: o.batch * o.numKvHeads * maxPages * 4 });
  }
  return out;
}

/** Throws a RangeError unless every buffer of every layer fits one storage binding. */
export function assertLayersFit(
  device: GPUDevice,
  o: ResolvedEngineOptions,
  modes: readonly LayerMode[],
  action: string,
): void {
  const maxBinding = device.limits.maxStorageBufferBindingSize;
  for (const mode of new Set(modes)) {
    for (const { name, bytes } of layerBufferBytes(o, mode)) {
      if (bytes > maxBinding) {
        throw new RangeError(
          `Cannot ${action} as the ${name} of one layer must fit one storage binding (${maxBinding} bytes): received ${bytes} bytes (batch ${o.batch}, maxContext ${o.maxContext}); lower maxContext or batch`,
        );
      }
    }
  }
}

/** The GPU state of one layer. */
export class LayerState implements Disposable {
  readonly index: number;
  readonly mode: LayerMode;
  readonly budget: PageBudget;
  /** Sliding window in tokens (0: full attention). */
  readonly slidingWindow: number;
  readonly slotsPerSeq: number;
  readonly kCache: GPUBuffer;
  readonly vCache: GPUBuffer;
  /** Tokens stored per sequence. */
  readonly length: Int32Array;
  readonly prefilled: boolean[];
  /** freekv: the previous step's q is in `qPrev`, per sequence. */
  readonly hasPrev: boolean[];
  /** freekv: `spec` holds a selection for the sequence whose pages were admitted. */
  readonly hasSpec: boolean[];
  /** Flags of the latest correction outcome known, per (sequence, KV head). */
  readonly lastCorrections: Uint8Array;
  summarizer?: PageSummarizer;
  summaries?: GPUBuffer;
  selector?: PageSelector;
  similarity?: QuerySimilarity;
  /** freekv: the correction check (batch and tau are fixed per engine). */
  similarityPlan?: QuerySimilarityPlan;
  /** `[B][Hkv][K]` this step's top-k. */
  fresh?: GPUBuffer;
  /** `[B][Hkv][K]` the previous step's top-k (freekv). */
  spec?: GPUBuffer;
  /** `[B][Hkv][K]` this step's top-k among resident pages (freekv, resident correction). */
  best?: GPUBuffer;
  /**
   * `[B][Hkv][K]` the speculation for the next step when a page leaves the
   * window then: top-k with this step's query over the next step's candidates.
   */
  next?: GPUBuffer;
  flags?: GPUBuffer;
  /** freekv: `[Hkv]` flags all 1. */
  correctAll?: GPUBuffer;
  cosine?: GPUBuffer;
  groupMean?: GPUBuffer;
  qPrev?: GPUBuffer;
  /** offload: `[B][Hkv][maxPages]` page -> pool slot, GPU copy and CPU mirror. */
  residency?: GPUBuffer;
  residencyHost?: Uint32Array<ArrayBuffer>;
  caches?: SlotCache[];
  readonly dirtyRows = new Set<number>();
  tableBuilder?: PageTableBuilder;
  /** Attention slots `[B][Hkv][maxEntries]` built on the GPU. */
  table?: Required<BufferSlice>;
  /** Their page ids, after `table` in the same buffer. */
  pages?: Required<BufferSlice>;
  hits?: GPUBuffer;
  /** full / streaming: pages attended per (sequence, KV head), known on the CPU. */
  cpuPages: number[][];
  /** Table entries per sequence of the latest recorded step (tables on the GPU). */
  tableEntries: readonly number[] = [];
  #device: GPUDevice;
  #o: ResolvedEngineOptions;
  #scratch = new Map<string, GPUBuffer>();
  #slotCopyBindings = new BindGroupCache(1);
  #append: KvAppend;
  /**
   * The layer's kernel plans by use, each made on first use and re-planned
   * after: one plan per use, so that a whole step shares one submission.
   */
  #plans = new Map<string, Disposable>();
  #owned: GPUBuffer[] = [];
  #disposed = false;

  constructor(device: GPUDevice, o: ResolvedEngineOptions, index: number, mode: LayerMode) {
    this.#device = device;
    this.#o = o;
    this.index = index;
    this.mode = mode;
    this.budget = modeBudget(o, mode);
    this.slidingWindow = o.slidingWindow[index];
    this.slotsPerSeq = slotsPerSeq(o, mode);
    const { batch: B, numKvHeads: hkv, headDim: d, numQueryHeads: hq } = o;
    const P = o.pageSize;
    const rowBytes = hkv * d * bytesPerElement(o.dtype);
    const cacheBytes = B * this.slotsPerSeq * P * rowBytes;
    this.#append = createKvAppend(device, {
      numKvHeads: hkv,
      headDim: d,
      dtype: o.dtype,
      headStride: slotStrides(o.slotLayout, P, hkv).head * d,
    });
    this.kCache = this.#own(`layer ${index} K cache`, cacheBytes);
    this.vCache = this.#own(`layer ${index} V cache`, cacheBytes);
    this.length = new Int32Array(B);
    this.prefilled = new Array(B).fill(false);
    this.hasPrev = new Array(B).fill(false);
    this.hasSpec = new Array(B).fill(false);
    this.lastCorrections = new Uint8Array(B * hkv);
    this.cpuPages = Array.from({ length: B * hkv }, () => []);
    const maxPages = maxPagesOf(o);
    const K = this.budget.selectPages;
    if (mode === "quest" || mode === "offload") {
      this.summarizer = createPageSummarizer(device, {
        numKvHeads: hkv,
        headDim: d,
        pageSize: P,
        dtype: o.dtype,
        summary: o.summary,
        slotLayout: o.slotLayout,
      });
      this.summaries = this.#own(`layer ${index} page summaries`, B * maxPages * hkv * 2 * d * 4);
      this.selector = createPageSelector(device, {
        numQueryHeads: hq,
        numKvHeads: hkv,
        headDim: d,
        pooling: o.pooling,
        countingTopkMax: o.countingTopkMax,
      });
      this.fresh = this.#own(`layer ${index} selection`, B * hkv * K * 4);
      // The page ids follow the slots in one buffer (at the next 256-byte
      // boundary): attention under a sliding window reads both from there.
      const tableBytes = B * hkv * (this.budget.sinkPages + K + this.budget.windowPages) * 4;
      const idsOffset = Math.ceil(tableBytes / 256) * 256;
      const buffer = this.#own(`layer ${index} page table`, idsOffset + tableBytes);
      this.table = { buffer, offset: 0, size: tableBytes };
      this.pages = { buffer, offset: idsOffset, size: tableBytes };
      this.hits = this.#own(`layer ${index} resident hits`, B * hkv * 4);
      this.tableBuilder = createPageTableBuilder(device, {
        numKvHeads: hkv,
        selectPages: K,
        maxPages,
        sinkPages: this.budget.sinkPages,
        windowPages: this.budget.windowPages,
        slotsPerSeq: this.slotsPerSeq,
        identity: mode === "quest",
      });
    }
    if (mode === "offload") {
      this.residency = this.#own(`layer ${index} residency map`, B * hkv * maxPages * 4);
      this.residencyHost = new Uint32Array(B * hkv * maxPages).fill(NOT_RESIDENT);
      device.queue.writeBuffer(this.residency, 0, this.residencyHost);
      this.caches = Array.from(
        { length: B * hkv },
        (_, i) =>
          new SlotCache(
            K + o.cachePages,
            this.residencyHost!.subarray(i * maxPages, (i + 1) * maxPages),
          ),
      );
    }
    if (mode === "offload" && o.policy === "freekv") {
      this.spec = this.#own(`layer ${index} speculative selection`, B * hkv * K * 4);
      this.best = this.#own(`layer ${index} resident-only selection`, B * hkv * K * 4);
      this.next = this.#own(`layer ${index} next-step selection`, B * hkv * K * 4);
      this.flags = this.#own(`layer ${index} correction flags`, B * hkv * 4);
      this.cosine = this.#own(`layer ${index} query cosines`, B * hq * 4);
      this.groupMean = this.#own(`layer ${index} group-mean cosines`, B * hkv * 4);
      this.qPrev = this.#own(`layer ${index} previous q`, B * hq * d * 4);
      // One sequence's flags, all set: copied over the flags of a sequence
      // that has no speculation yet, so that it takes its fresh selection.
      this.correctAll = this.#own(`layer ${index} all-corrected flags`, hkv * 4);
      // 2: corrected with its fresh selection, even where corrected heads attend
      // their best resident pages (a sequence without a speculation waits for it).
      device.queue.writeBuffer(this.correctAll, 0, new Uint32Array(hkv).fill(2));
      this.similarity = createQuerySimilarity(device, {
        numQueryHeads: hq,
        numKvHeads: hkv,
        headDim: d,
      });
      // The check keeps this step's q for the next one (no copy).
      this.similarityPlan = this.similarity.plan({ batch: B, tau: o.tau, storeQuery: true });
    }
  }

  #own(name: string, bytes: number): GPUBuffer {
    const b = createBuffer(this.#device, `freekv ${name}`, USAGE, Math.max(16, bytes));
    this.#owned.push(b);
    return b;
  }

  /** A per-layer scratch buffer of at least `bytes` (grown by powers of two). */
  scratch(name: string, bytes: number): GPUBuffer {
    if (this.#disposed) throw disposedError("record a decode step", "engine");
    let b = this.#scratch.get(name);
    if (!b || b.size < bytes) {
      b?.destroy();
      b = createBuffer(
        this.#device,
        `freekv layer ${this.index} ${name}`,
        USAGE | GPUBufferUsage.UNIFORM,
        2 ** Math.ceil(Math.log2(Math.max(bytes, 256))),
      );
      this.#scratch.set(name, b);
    }
    return b;
  }

  /** `x` as a GPU buffer: arrays go through this layer's scratch buffer `name`. */
  input(name: string, x: Float32Array | GPUBuffer, bytes: number): GPUBuffer {
    if (!(x instanceof Float32Array)) return x;
    const b = this.scratch(name, bytes);
    this.#device.queue.writeBuffer(b, 0, x as Float32Array<ArrayBuffer>);
    return b;
  }

  /** True when another kernel may append this layer's rows (the cache type is written directly). */
  get rowsFusable(): boolean {
    return !this.#append.packed;
  }

  /** This layer's append plan `tag` for rows at element offsets `dstOffsets` (prefill and decode keep separate plans). */
  planRows(dstOffsets: Uint32Array, tag: string): KvAppendPlan {
    return this.#reuse(`append ${tag}`, { dstOffsets }, (x) => this.#append.plan(x));
  }

  /**
   * Records the f32 -> cache-dtype copy of token rows of `k`, `v` into
   * `kCache`/`vCache` at element offsets `dstOffsets`, through this layer's
   * append plan `tag` (prefill and decode keep separate plans).
   */
  encodeRows(
    encoder: GPUCommandEncoder,
    k: GPUBuffer,
    v: GPUBuffer,
    kCache: GPUBuffer,
    vCache: GPUBuffer,
    dstOffsets: Uint32Array,
    tag: string,
  ): void {
    this.planRows(dstOffsets, tag).encode(encoder, { k, v, kCache, vCache });
  }

  /** Compiles the pipelines of this layer's decode steps, `variants` of the selection among them. */
  compile(variants: readonly PageSelectionVariant[]): void {
    this.selector?.compile(variants);
    if (this.mode === "offload") this.#slotCopyPipeline();
  }

  #slotCopyPipeline(): GPUComputePipeline {
    return cachedPipeline(this.#device, "slot_copy", slotCopySource);
  }

  /** Records copies of one head's page rows between slots: `(src, dst, head)` per job. */
  encodeSlotCopies(encoder: GPUCommandEncoder, jobs: number[][]): void {
    if (!jobs.length) return;
    const { numKvHeads: hkv, headDim: d, dtype, pageSize: P } = this.#o;
    const device = this.#device;
    const headWords = (d * bytesPerElement(dtype)) / 4;
    const data = new Uint32Array(jobs.length * 4);
    jobs.forEach((j, i) => data.set([j[0], j[1], j[2], 0], i * 4));
    const jobBuffer = this.scratch("slot copy jobs", data.byteLength);
    device.queue.writeBuffer(jobBuffer, 0, data);
    const params = this.scratch("slot copy params", 32);
    const strides = slotStrides(this.#o.slotLayout, P, hkv);
    writeIfChanged(
      device.queue,
      params,
      new Uint32Array([
        P,
        hkv,
        headWords,
        jobs.length,
        strides.token * headWords,
        strides.head * headWords,
      ]),
    );
    const pipeline = this.#slotCopyPipeline();
    // The same buffers step after step (scratch buffers change only as they grow).
    const bound = [params, jobBuffer, this.kCache, this.vCache];
    const bind = this.#slotCopyBindings.get(bound, () =>
      device.createBindGroup({
        label: "freekv slot copy",
        layout: pipeline.getBindGroupLayout(0),
        entries: bound.map((buffer, binding) => ({ binding, resource: { buffer } })),
      }));
    const pass = encoder.beginComputePass({ label: "freekv slot copy" });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(Math.ceil((P * headWords) / 64), jobs.length);
    pass.end();
  }

  /**
   * Logical pages attended in the latest recorded step, per (sequence, KV
   * head), ascending; read back from the GPU where the GPU chose them.
   */
  async readAttendedPages(): Promise<number[][]> {
    if (!this.pages) return this.cpuPages.map((p) => [...p].sort((a, b) => a - b));
    const m = this.tableBuilder!.maxEntries;
    const { buffer, offset, size } = this.pages;
    const all = new Uint32Array(await readBuffer(this.#device, buffer, size, offset));
    const entries = this.tableEntries;
    const hkv = this.#o.numKvHeads;
    return Array.from(
      { length: this.#o.batch * hkv },
      (_, i) =>
        [...all.subarray(i * m, i * m + (entries[Math.floor(i / hkv)] ?? 0))]
          .filter((p) => p !== NOT_RESIDENT)
          .sort((a, c) => a - c),
    );
  }

  /**
   * Writes the attention page tables (and page ids) of a step whose
   * sequences attend all their candidates, as the page-table kernel would
   * build them ({@linkcode pageTableReference}: sink, every candidate
   * through the residency map, window). The resident hits are left as they
   * were: only checked heads read them, and such a step checks none.
   * Returns the table entries per sequence.
   */
  writeAllCandidateTables(sequences: readonly PageTableSequence[]): number[] {
    const built = pageTableReference(this.tableBuilder!.shape, {
      sequences,
      fresh: [],
      residency: this.residencyHost,
    });
    const queue = this.#device.queue;
    const { table, pages } = this;
    queue.writeBuffer(table!.buffer, table!.offset, built.table as Uint32Array<ArrayBuffer>);
    queue.writeBuffer(pages!.buffer, pages!.offset, built.pages as Uint32Array<ArrayBuffer>);
    return built.entries;
  }

  /**
   * Writes the residency rows changed since the last flush to the GPU, one
   * write per run of adjacent rows (each call costs more than its bytes).
   */
  flushResidency(): void {
    if (!this.residency || this.dirtyRows.size === 0) return;
    const maxPages = maxPagesOf(this.#o);
    const rows = [...this.dirtyRows].sort((a, b) => a - b);
    for (let i = 0; i < rows.length;) {
      let end = i + 1;
      while (end < rows.length && rows[end] === rows[end - 1] + 1) end++;
      this.#device.queue.writeBuffer(
        this.residency,
        rows[i] * maxPages * 4,
        this.residencyHost!,
        rows[i] * maxPages,
        (end - i) * maxPages,
      );
      i = end;
    }
    this.dirtyRows.clear();
  }

  /** Forgets sequence `seq`. */
  reset(seq: number): void {
    const hkv = this.#o.numKvHeads;
    this.length[seq] = 0;
    this.prefilled[seq] = false;
    this.hasPrev[seq] = false;
    this.hasSpec[seq] = false;
    this.lastCorrections.fill(0, seq * hkv, (seq + 1) * hkv);
    for (let h = 0; h < hkv; h++) {
      this.caches?.[seq * hkv + h].clear();
      this.dirtyRows.add(seq * hkv + h);
      this.cpuPages[seq * hkv + h] = [];
    }
  }

  #reuse<I, P extends Disposable & { update(input: I): void }>(
    key: string,
    input: I,
    make: (input: I) => P,
  ): P {
    const plan = this.#plans.get(key) as P | undefined;
    if (plan) {
      plan.update(input);
      return plan;
    }
    const made = make(input);
    this.#plans.set(key, made);
    return made;
  }

  /** The layer's summary plan for `jobs`. */
  planSummaries(jobs: PageSummaryJobs): PageSummaryPlan {
    return this.#reuse("summaries", jobs, (x) => this.summarizer!.plan(x));
  }

  /**
   * The layer's selection plan for `step`: `now` for this step's top-k,
   * `next` for freekv's speculation over the next step's candidates.
   */
  planSelection(step: PageSelectionStep, use: "now" | "next" = "now"): PageSelectionPlan {
    return this.#reuse(`selection ${use}`, step, (x) => this.selector!.plan(x));
  }

  /** The layer's page-table plan for `step`. */
  planTable(step: PageTableStep): PageTablePlan {
    return this.#reuse("page table", step, (x) => this.tableBuilder!.plan(x));
  }

  /** The layer's attention plan for `tables`. */
  planAttention(attention: PagedAttention, tables: AttentionTables): AttentionPlan {
    return this.#reuse("attention", tables, (x) => attention.plan(x));
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
    for (const b of this.#owned) b.destroy();
    for (const b of this.#scratch.values()) b.destroy();
    this.#owned = [];
    this.#scratch.clear();
    for (const p of this.#plans.values()) p[Symbol.dispose]();
    this.#plans.clear();
    this.similarityPlan?.[Symbol.dispose]();
    this.summarizer?.[Symbol.dispose]?.();
    this.selector?.[Symbol.dispose]?.();
    this.similarity?.[Symbol.dispose]?.();
  }
}
