/**
 * Attention page tables built on the GPU from a top-k result, the previous
 * step's selection, correction flags and a GPU-resident residency map, so
 * that selecting and attending need no host round trip.
 *
 * @module
 */

import pageTableMain from "../../shaders/page_table.wgsl" with { type: "text" };
import pageTableRow from "../../shaders/page_table_row.wgsl" with { type: "text" };
import { assertDevice, assertInteger, disposedError } from "../gpu/errors.ts";
import {
  assertBufferSize,
  BindGroupCache,
  type BufferSlice,
  createBuffer,
  writeIfChanged,
} from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { type KernelEncodeOptions, passTimestampWrites } from "../gpu/timing.ts";

/** Marks "no page" in residency maps, page lists and page tables. */
export const EMPTY_PAGE = 0xffffffff;

/** Sizes fixed per builder. */
export interface PageTableShape {
  /** KV heads. */
  numKvHeads: number;
  /** Selected pages per head (k of top-k). */
  selectPages: number;
  /** Page ids per sequence (rows of the residency map; ids at or past it are holes). */
  maxPages: number;
  /** Sink slots per sequence, first in a sequence's slots. */
  sinkPages: number;
  /** Window slots per sequence (a ring after the sink slots). */
  windowPages: number;
  /** Slots per sequence in the KV cache. */
  slotsPerSeq: number;
  /** True when every page is resident in slot = page id (no residency map). */
  identity: boolean;
}

/** Page regions of one sequence (see `pageRegions`). */
export interface PageTableSequence {
  /** Sink pages present. */
  sinkCount: number;
  /** First window page. */
  windowStart: number;
  /** Pages holding a token. */
  numPages: number;
  /** Selection candidates (`windowStart - candidateStart`). */
  candidateCount: number;
  /** First sink page attended (default 0; a sliding window leaves out those before it). */
  sinkFrom?: number;
  /** First candidate page (default `sinkCount`; later under a sliding window). */
  candidateStart?: number;
}

/** Per-step inputs of {@linkcode PageTableBuilder.plan}. */
export interface PageTableStep {
  /** Regions of each sequence of the batch. */
  sequences: readonly PageTableSequence[];
  /** True: `flags` choose `fresh` (1) or `spec` (0) per head; false: always `fresh`. */
  useFlags: boolean;
  /**
   * True: a head whose flag is 1 attends `best` (its top-k among resident
   * pages) instead of `fresh` (a flag of 2 still means `fresh`); `hits`
   * still counts `fresh`'s resident pages. Needs `useFlags`.
   */
  useBest?: boolean;
}

/** GPU buffers of {@linkcode PageTablePlan.encode}. */
export interface PageTableBuffers {
  /** `[b][h][k]` u32 pages selected with this step's query. */
  fresh: GPUBuffer;
  /** `[b][h][k]` u32 the previous step's selection (required with `useFlags`). */
  spec?: GPUBuffer;
  /** `[b][h]` u32 correction flags (required with `useFlags`). */
  flags?: GPUBuffer;
  /** `[b][h][maxPages]` u32 local pool slots (required unless `identity`). */
  residency?: GPUBuffer;
  /** Output `[b][h][maxEntries]` u32 absolute slots. */
  table: GPUBuffer | BufferSlice;
  /**
   * Output `[b][h][maxEntries]` u32 page ids ({@linkcode EMPTY_PAGE} for
   * holes); may share `table`'s buffer (a range that does not overlap it),
   * as attention under a sliding window reads them there.
   */
  pages: GPUBuffer | BufferSlice;
  /** Output `[b][h]` u32 resident pages of the fresh (or speculative) selection. */
  hits: GPUBuffer;
  /** `[b][h][k]` u32 top-k among resident pages (required with `useBest`). */
  best?: GPUBuffer;
}

/**
 * The validated bindings of a page-table build, in page_table.wgsl's order
 * (unused inputs bound to a dummy), for a kernel that builds the tables in
 * its own dispatch (the one-dispatch page selection).
 */
export interface PageTableBindings {
  /** The plan's uniform parameters. */
  params: GPUBufferBinding;
  /** The plan's per-sequence regions. */
  seq: GPUBufferBinding;
  /** See {@linkcode PageTableBuffers.fresh}. */
  fresh: GPUBufferBinding;
  /** See {@linkcode PageTableBuffers.spec}. */
  spec: GPUBufferBinding;
  /** See {@linkcode PageTableBuffers.flags}. */
  flags: GPUBufferBinding;
  /** See {@linkcode PageTableBuffers.residency}. */
  residency: GPUBufferBinding;
  /** See {@linkcode PageTableBuffers.table}. */
  table: GPUBufferBinding;
  /** See {@linkcode PageTableBuffers.pages}. */
  pages: GPUBufferBinding;
  /** See {@linkcode PageTableBuffers.hits}. */
  hits: GPUBufferBinding;
  /** See {@linkcode PageTableBuffers.best}. */
  best: GPUBufferBinding;
  /** The step's `useFlags`. */
  useFlags: boolean;
  /** The step's `useBest` (with `useFlags`). */
  useBest: boolean;
  /** Sequences of the step. */
  batch: number;
}

/** A planned page-table build; reusable across steps through `update`. */
export interface PageTablePlan extends Disposable {
  /** Table entries per sequence (the attention's page count). */
  readonly entries: readonly number[];
  /** Re-plans for the next step (same batch), reusing GPU buffers. */
  update(step: PageTableStep): void;
  /** Checks `buffers` as `encode` does and returns what it would bind. */
  bindings(buffers: PageTableBuffers): PageTableBindings;
  /** Records the build into `encoder` (one compute pass). */
  encode(
    encoder: GPUCommandEncoder,
    buffers: PageTableBuffers,
    options?: KernelEncodeOptions,
  ): void;
}

/** A page-table builder for one shape. */
export interface PageTableBuilder {
  /** The shape. */
  readonly shape: Readonly<PageTableShape>;
  /** Row length of `table` and `pages`: sink + selected + window pages. */
  readonly maxEntries: number;
  /** Validates a step and returns its plan. */
  plan(step: PageTableStep): PageTablePlan;
}

const ACTION = "build page tables";
// page_table_row.wgsl builds a row; the one-dispatch selection appends it too.
const pageTableSource = pageTableMain + pageTableRow;

/**
 * Creates a page-table builder.
 *
 * @throws {RangeError} when a size is not a positive integer.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createPageTableBuilder } from "./page_table.ts";
 * using gpu = await requestGpu();
 * const builder = createPageTableBuilder(gpu.device, {
 *   numKvHeads: 1, selectPages: 2, maxPages: 16, sinkPages: 1, windowPages: 1,
 *   slotsPerSeq: 16, identity: true,
 * });
 * using plan = builder.plan({
 *   sequences: [{ sinkCount: 1, windowStart: 9, numPages: 10, candidateCount: 8 }],
 *   useFlags: false,
 * });
 * console.log(plan.entries); // [ 4 ]
 * ```
 */
export function createPageTableBuilder(
  device: GPUDevice,
  shape: PageTableShape,
): PageTableBuilder {
  assertDevice(device, ACTION);
  assertInteger("numKvHeads", shape.numKvHeads, ACTION, 1);
  assertInteger("selectPages", shape.selectPages, ACTION, 1);
  assertInteger("maxPages", shape.maxPages, ACTION, 1);
  assertInteger("sinkPages", shape.sinkPages, ACTION, 0);
  assertInteger("windowPages", shape.windowPages, ACTION, 1);
  assertInteger("slotsPerSeq", shape.slotsPerSeq, ACTION, 1);
  const frozen = Object.freeze({ ...shape });
  const maxEntries = shape.sinkPages + shape.selectPages + shape.windowPages;
  // Compiled now (once per device), not at the first encode.
  cachedPipeline(device, "page_table", pageTableSource);
  return {
    shape: frozen,
    maxEntries,
    plan: (step) => new Plan(device, frozen, maxEntries, step),
  };
}

class Plan implements PageTablePlan {
  #device: GPUDevice;
  #shape: PageTableShape;
  #maxEntries: number;
  #batch = 0;
  #useFlags = false;
  #useBest = false;
  #params: GPUBuffer;
  #seq: GPUBuffer | null = null;
  #dummy: GPUBuffer | null = null;
  #pipeline: GPUComputePipeline | null = null;
  // The engine encodes the same buffers every step: build their bind group once.
  #bindings = new BindGroupCache(4);
  #disposed = false;
  entries: number[] = [];

  constructor(device: GPUDevice, shape: PageTableShape, maxEntries: number, step: PageTableStep) {
    this.#device = device;
    this.#shape = shape;
    this.#maxEntries = maxEntries;
    this.#params = createBuffer(
      device,
      "freekv page table params",
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      48,
    );
    this.update(step);
  }

  update(step: PageTableStep): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    const { sequences } = step;
    if (!Array.isArray(sequences) || sequences.length === 0) {
      throw new TypeError(
        `Cannot ${ACTION} as 'sequences' must be a non-empty array: received ${
          Array.isArray(sequences) ? "an empty array" : typeof sequences
        }`,
      );
    }
    const { selectPages: k, maxPages, numKvHeads } = this.#shape;
    const { sinkPages: S, windowPages: W } = this.#shape;
    const meta = new Uint32Array(sequences.length * 8);
    const entries: number[] = [];
    sequences.forEach((s, b) => {
      const name = `sequences[${b}]`;
      assertInteger(`${name}.numPages`, s.numPages, ACTION, 1, maxPages);
      assertInteger(`${name}.sinkCount`, s.sinkCount, ACTION, 0, Math.min(S, s.numPages));
      assertInteger(`${name}.windowStart`, s.windowStart, ACTION, s.sinkCount, s.numPages);
      const sinkFrom = s.sinkFrom ?? 0;
      const candidateStart = s.candidateStart ?? s.sinkCount;
      assertInteger(`${name}.sinkFrom`, sinkFrom, ACTION, 0, s.sinkCount);
      assertInteger(`${name}.candidateStart`, candidateStart, ACTION, s.sinkCount, s.windowStart);
      if (
        s.numPages - s.windowStart > W || s.candidateCount !== s.windowStart - candidateStart
      ) {
        throw new RangeError(
          `Cannot ${ACTION} as '${name}' must have at most ${W} window pages and candidateCount = windowStart - candidateStart: received ${
            JSON.stringify(s)
          }`,
        );
      }
      meta.set([sinkFrom, s.sinkCount, s.windowStart, s.numPages, candidateStart], b * 8);
      entries.push(
        s.sinkCount - sinkFrom + Math.min(k, s.candidateCount) + s.numPages - s.windowStart,
      );
    });
    const device = this.#device;
    if (!this.#seq || this.#seq.size < meta.byteLength) {
      this.#seq?.destroy();
      this.#bindings.clear();
      this.#seq = createBuffer(
        device,
        "freekv page table sequences",
        GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
        meta.byteLength,
      );
    }
    writeIfChanged(device.queue, this.#seq, meta);
    this.#batch = sequences.length;
    this.#useFlags = step.useFlags;
    this.#useBest = step.useFlags && step.useBest === true;
    writeIfChanged(
      device.queue,
      this.#params,
      new Uint32Array([
        this.#batch,
        numKvHeads,
        k,
        maxPages,
        this.#maxEntries,
        this.#shape.slotsPerSeq,
        S,
        W,
        this.#shape.identity ? 1 : 0,
        step.useFlags ? 1 : 0,
        step.useFlags && step.useBest ? 1 : 0,
        0,
      ]),
    );
    this.entries = entries;
  }

  bindings(buffers: PageTableBuffers): PageTableBindings {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    const { numKvHeads: hkv, selectPages: k, maxPages } = this.#shape;
    const rows = this.#batch * hkv;
    const need: [string, GPUBuffer | undefined, number][] = [
      ["fresh", buffers.fresh, rows * k * 4],
      ["hits", buffers.hits, rows * 4],
    ];
    if (this.#useFlags) {
      need.push(["spec", buffers.spec, rows * k * 4], ["flags", buffers.flags, rows * 4]);
    }
    if (this.#useBest) need.push(["best", buffers.best, rows * k * 4]);
    if (!this.#shape.identity) need.push(["residency", buffers.residency, rows * maxPages * 4]);
    for (const [name, buffer, bytes] of need) {
      if (!(buffer instanceof GPUBuffer) || buffer.size < bytes) {
        throw new RangeError(
          `Cannot ${ACTION} as '${name}' must be a GPUBuffer of at least ${bytes} bytes: received ${
            buffer instanceof GPUBuffer ? `a buffer of ${buffer.size}` : typeof buffer
          }`,
        );
      }
    }
    const outputBytes = rows * this.#maxEntries * 4;
    const table = assertBufferSize("table", buffers.table, outputBytes, ACTION);
    const pages = assertBufferSize("pages", buffers.pages, outputBytes, ACTION);
    if (
      table.buffer === pages.buffer && table.offset < pages.offset + pages.size &&
      pages.offset < table.offset + table.size
    ) {
      throw new RangeError(
        `Cannot ${ACTION} as 'pages' must not overlap 'table' in their buffer: received table at ${table.offset} (${table.size} bytes), pages at ${pages.offset} (${pages.size} bytes)`,
      );
    }
    this.#dummy ??= createBuffer(
      this.#device,
      "freekv page table unused",
      GPUBufferUsage.STORAGE,
      16,
    );
    const whole = (buffer: GPUBuffer) => ({ buffer, offset: 0, size: buffer.size });
    return {
      params: whole(this.#params),
      seq: whole(this.#seq!),
      fresh: whole(buffers.fresh),
      spec: whole(buffers.spec ?? this.#dummy),
      flags: whole(buffers.flags ?? this.#dummy),
      residency: whole(buffers.residency ?? this.#dummy),
      table,
      pages,
      hits: whole(buffers.hits),
      best: whole(buffers.best ?? this.#dummy),
      useFlags: this.#useFlags,
      useBest: this.#useBest,
      batch: this.#batch,
    };
  }

  encode(
    encoder: GPUCommandEncoder,
    buffers: PageTableBuffers,
    options: KernelEncodeOptions = {},
  ): void {
    const b = this.bindings(buffers);
    const rows = this.#batch * this.#shape.numKvHeads;
    const pipeline = this.#pipeline ??= cachedPipeline(this.#device, "page_table", pageTableSource);
    const resources = [
      b.params,
      b.seq,
      b.fresh,
      b.spec,
      b.flags,
      b.residency,
      b.table,
      b.pages,
      b.hits,
      b.best,
    ];
    const key = resources.flatMap((r) => [r.buffer, r.offset, r.size]);
    const bind = this.#bindings.get(key, () =>
      this.#device.createBindGroup({
        label: "freekv page table",
        layout: pipeline.getBindGroupLayout(0),
        entries: resources.map((resource, binding) => ({ binding, resource })),
      }));
    const ts = options.timestampWrites;
    const pass = encoder.beginComputePass({
      label: "freekv page table",
      timestampWrites: passTimestampWrites(ts, ts?.beginIndex, ts?.endIndex),
    });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(Math.ceil(rows / 64));
    pass.end();
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#params.destroy();
    this.#seq?.destroy();
    this.#dummy?.destroy();
  }
}
