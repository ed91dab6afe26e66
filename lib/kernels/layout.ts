/**
 * Layout conversion between the GPU KV cache (NHD slots,
 * `[slot][token][kvHead][d]`) and head-major HND runs (`[K: P x d][V: P x d]`
 * per (kvHead, page)), the unit the host pool stores and recall moves.
 *
 * Both kernels move opaque 32-bit words (as `vec4<u32>` when a row of `d`
 * elements is a multiple of 16 bytes, up to four of those per invocation),
 * so f32 and f16 come out bit for bit.
 * For f16 `headDim` must therefore be even.
 *
 * The kernel contract: {@linkcode createNhdToHnd} / {@linkcode createHndToNhd}
 * then `plan(jobs)` (validates the jobs and uploads the job table into a
 * plan of its own) then `plan.encode(encoder, buffers)` (checks the buffers
 * against the jobs and records one dispatch). The CPU references are in
 * `layout_reference.ts`.
 *
 * @module
 */
import nhdToHndSource from "../../shaders/layout_nhd_to_hnd.wgsl" with { type: "text" };
import hndToNhdSource from "../../shaders/layout_hnd_to_nhd.wgsl" with { type: "text" };
import { bytesPerElement, KV_DTYPES, type KvDtype } from "../gpu/dtype.ts";
import {
  assertDevice,
  assertInteger,
  assertObject,
  assertOneOf,
  assertStorageBuffer,
  describeValue,
  disposedError,
} from "../gpu/errors.ts";
import { BindGroupCache, createBuffer, GrowableBuffer } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { type KernelEncodeOptions, passTimestampWrites } from "../gpu/timing.ts";

/** Page geometry and element type shared by the NHD cache and HND runs. */
export interface KvLayoutShape {
  /** Tokens per page `P`. */
  pageSize: number;
  /** KV heads `Hkv`. */
  kvHeads: number;
  /** Head dimension `d` (even for f16). */
  headDim: number;
  /** Element type of keys and values. */
  dtype: KvDtype;
}

/** Byte and element sizes derived from a {@linkcode KvLayoutShape}. */
export interface KvLayoutSizes {
  /** Bytes per element (4 for f32, 2 for f16). */
  elementBytes: number;
  /** Bytes of one (token, kvHead) row of `d` elements. */
  rowBytes: number;
  /** Bytes of one slot in `kCache` (and in `vCache`): `P * Hkv * d` elements. */
  slotBytes: number;
  /** Elements of one half of a run (`P * d`). */
  pageElements: number;
  /** Elements of one HND run (`2 * P * d`). */
  runElements: number;
  /** Bytes of one HND run. */
  runBytes: number;
}

/**
 * Checks `shape` and returns its sizes; throws `TypeError`/`RangeError`
 * naming the bad field.
 *
 * @example
 * ```ts
 * import { kvLayoutSizes } from "./layout.ts";
 * const s = kvLayoutSizes({ pageSize: 32, kvHeads: 8, headDim: 128, dtype: "f16" });
 * console.log(s.runBytes, s.slotBytes); // 16384 65536
 * ```
 */
export function kvLayoutSizes(shape: KvLayoutShape, action = "use a KV layout"): KvLayoutSizes {
  assertObject("shape", shape, action);
  assertInteger("pageSize", shape.pageSize, action, 1, 1 << 16);
  assertInteger("kvHeads", shape.kvHeads, action, 1, 1 << 16);
  assertInteger("headDim", shape.headDim, action, 1, 1 << 16);
  assertOneOf("dtype", shape.dtype, KV_DTYPES, action);
  const elementBytes = bytesPerElement(shape.dtype);
  if ((shape.headDim * elementBytes) % 4 !== 0) {
    throw new RangeError(
      `Cannot ${action} as 'headDim' must be even for f16 (rows move as 32-bit words): received ${shape.headDim}`,
    );
  }
  const rowBytes = shape.headDim * elementBytes;
  const pageElements = shape.pageSize * shape.headDim;
  return {
    elementBytes,
    rowBytes,
    slotBytes: shape.pageSize * shape.kvHeads * rowBytes,
    pageElements,
    runElements: 2 * pageElements,
    runBytes: 2 * pageElements * elementBytes,
  };
}

/** The per-layer NHD cache buffers (`[slot][token][kvHead][d]` each). */
export interface NhdCacheBuffers {
  /** Keys. */
  kCache: GPUBuffer;
  /** Values. */
  vCache: GPUBuffer;
}

/** Buffers of an NHD -> HND conversion and of an HND -> NHD scatter (all STORAGE). */
export interface LayoutBuffers extends NhdCacheBuffers {
  /** The HND runs: written by the conversion, read by the scatter. */
  runs: GPUBuffer;
}

/**
 * One NHD -> HND job: copy kvHead `head` of slot `slot` into the next run,
 * or, without `head`, every head of the slot into the next `Hkv` runs.
 */
export interface SlotHeadJob {
  /** Slot of the NHD cache. */
  slot: number;
  /** KV head (default: all heads, in order). */
  head?: number;
}

/** One HND -> NHD job: copy run `run` into kvHead `head` of slot `slot`. */
export interface RunSlotHeadJob {
  /** Run index in the runs buffer. */
  run: number;
  /** Slot of the NHD cache. */
  slot: number;
  /** KV head. */
  head: number;
}

/** Options of {@linkcode createNhdToHnd} and {@linkcode createHndToNhd}. */
export interface KvLayoutOptions extends KvLayoutShape {
  /** Label prefix of the GPU resources. */
  label?: string;
}

/** Options of {@linkcode NhdToHnd.plan} and {@linkcode NhdToHndPlan.update}. */
export interface NhdToHndPlanOptions {
  /** Run index of the first job's output (default 0). */
  runBase?: number;
}

/** What both layout kernels share: the shape and the sizes derived from it. */
export interface KvLayoutKernel {
  /** The shape this kernel converts. */
  readonly shape: Readonly<KvLayoutShape>;
  /** Sizes derived from the shape. */
  readonly sizes: Readonly<KvLayoutSizes>;
  /** 32-bit words moved per invocation: 4 when a row is a multiple of 16 bytes, else 1. */
  readonly lanes: number;
  /** Marks the kernel unusable; it owns no buffers (plans do). */
  [Symbol.dispose](): void;
}

/** What both layout plans share. */
export interface KvLayoutPlan {
  /** (slot, head) pairs the plan moves, one run each. */
  readonly numJobs: number;
  /**
   * Records the dispatch into `encoder` (nothing, and no timestamps, when
   * there are no jobs); throws before recording when a buffer is not a
   * bindable STORAGE buffer or does not hold a job's slot or run.
   */
  encode(encoder: GPUCommandEncoder, buffers: LayoutBuffers, options?: KernelEncodeOptions): void;
  /** Destroys the plan's own buffers (not the caller's). */
  [Symbol.dispose](): void;
}

/** The NHD -> HND conversion for one shape, from {@linkcode createNhdToHnd}. */
export interface NhdToHnd extends KvLayoutKernel {
  /**
   * Validates `jobs` (a job without `head` moves every head of its slot)
   * and uploads them into a new plan: job `j` writes run `runBase + j`.
   */
  plan(jobs: readonly SlotHeadJob[], options?: NhdToHndPlanOptions): NhdToHndPlan;
}

/** A planned NHD -> HND conversion, from {@linkcode NhdToHnd.plan}. */
export interface NhdToHndPlan extends KvLayoutPlan {
  /**
   * Replaces the jobs (a failed update keeps the old ones); written with
   * `queue.writeBuffer`, so submit the work encoded under the old jobs first.
   */
  update(jobs: readonly SlotHeadJob[], options?: NhdToHndPlanOptions): void;
}

/** The HND -> NHD scatter for one shape, from {@linkcode createHndToNhd}. */
export interface HndToNhd extends KvLayoutKernel {
  /** Validates `jobs` (no (slot, head) twice) and uploads them into a new plan. */
  plan(jobs: readonly RunSlotHeadJob[]): HndToNhdPlan;
}

/** A planned HND -> NHD scatter, from {@linkcode HndToNhd.plan}. */
export interface HndToNhdPlan extends KvLayoutPlan {
  /**
   * Replaces the jobs (a failed update keeps the old ones); written with
   * `queue.writeBuffer`, so submit the work encoded under the old jobs first.
   */
  update(jobs: readonly RunSlotHeadJob[]): void;
}

const WORKGROUP = 256;

/** A validated job table: `words` u32 per job, the run base and the largest slot and run. */
interface JobTable {
  table: Uint32Array<ArrayBuffer>;
  count: number;
  runBase: number;
  maxSlot: number;
  /** Largest run read or written, -1 without jobs. */
  maxRun: number;
}

function assertJobArray(jobs: unknown, action: string): asserts jobs is ArrayLike<unknown> {
  if (!Array.isArray(jobs)) {
    throw new TypeError(
      `Cannot ${action} as 'jobs' must be an array: received ${describeValue(jobs)}`,
    );
  }
}

const GATHER_ACTION = "plan an NHD to HND conversion";
const SCATTER_ACTION = "plan an HND to NHD scatter";

// Expands head-less jobs to one (slot, head) pair per head: (slot, head) words per job.
function gatherTable(
  jobs: readonly SlotHeadJob[],
  kvHeads: number,
  options: NhdToHndPlanOptions = {},
): JobTable {
  const action = GATHER_ACTION;
  assertJobArray(jobs, action);
  const runBase = options.runBase ?? 0;
  assertInteger("runBase", runBase, action, 0);
  const words: number[] = [];
  let maxSlot = -1;
  for (let j = 0; j < jobs.length; j++) {
    const job = jobs[j];
    assertInteger(`jobs[${j}].slot`, job?.slot, action, 0, 0xffffffff);
    if (job.head === undefined) {
      for (let head = 0; head < kvHeads; head++) words.push(job.slot, head);
    } else {
      assertInteger(`jobs[${j}].head`, job.head, action, 0, kvHeads - 1);
      words.push(job.slot, job.head);
    }
    maxSlot = Math.max(maxSlot, job.slot);
  }
  const count = words.length / 2;
  return { table: new Uint32Array(words), count, runBase, maxSlot, maxRun: runBase + count - 1 };
}

// (run, slot, head, 0) words per job; no (slot, head) twice.
function scatterTable(jobs: readonly RunSlotHeadJob[], kvHeads: number): JobTable {
  const action = SCATTER_ACTION;
  assertJobArray(jobs, action);
  const table = new Uint32Array(jobs.length * 4);
  const seen = new Set<number>();
  let maxSlot = -1, maxRun = -1;
  for (let j = 0; j < jobs.length; j++) {
    const job = jobs[j];
    assertInteger(`jobs[${j}].run`, job?.run, action, 0, 0xffffffff);
    assertInteger(`jobs[${j}].slot`, job.slot, action, 0, 0xffffffff);
    assertInteger(`jobs[${j}].head`, job.head, action, 0, kvHeads - 1);
    const key = job.slot * kvHeads + job.head;
    if (seen.has(key)) {
      throw new RangeError(
        `Cannot ${action} as each (slot, head) may be written once: received slot ${job.slot} head ${job.head} twice`,
      );
    }
    seen.add(key);
    table.set([job.run, job.slot, job.head, 0], 4 * j);
    maxSlot = Math.max(maxSlot, job.slot);
    maxRun = Math.max(maxRun, job.run);
  }
  return { table, count: jobs.length, runBase: 0, maxSlot, maxRun };
}

// The kernel of one direction: pipeline and shape, shared by its plans.
class LayoutKernel<J> implements KvLayoutKernel {
  readonly device: GPUDevice;
  readonly label: string;
  readonly pipeline: GPUComputePipeline;
  readonly shape: Readonly<KvLayoutShape>;
  readonly sizes: Readonly<KvLayoutSizes>;
  readonly lanes: number;
  readonly unroll: number;
  /** Verb of encode errors. */
  readonly action: string;
  /** Builds the job table of a job list. */
  readonly tableOf: (jobs: readonly J[], options?: NhdToHndPlanOptions) => JobTable;
  #disposed = false;

  constructor(
    device: GPUDevice,
    options: KvLayoutOptions,
    kind: string,
    source: string,
    tableOf: (jobs: readonly J[], kvHeads: number, options?: NhdToHndPlanOptions) => JobTable,
  ) {
    assertDevice(device, "convert the KV layout");
    this.sizes = Object.freeze(kvLayoutSizes(options, `create a ${kind} kernel`));
    this.shape = Object.freeze({
      pageSize: options.pageSize,
      kvHeads: options.kvHeads,
      headDim: options.headDim,
      dtype: options.dtype,
    });
    this.device = device;
    this.label = options.label ?? `freekv ${kind}`;
    this.action = `encode a ${kind} conversion`;
    this.tableOf = (jobs, opts) => tableOf(jobs, options.kvHeads, opts);
    this.lanes = this.sizes.rowBytes % 16 === 0 ? 4 : 1;
    const word = this.lanes === 4 ? "vec4<u32>" : "u32";
    const rowWords = this.sizes.rowBytes / 4 / this.lanes;
    this.unroll = [4, 2, 1].find((u) => rowWords % u === 0)!;
    this.pipeline = cachedPipeline(
      device,
      `${kind}:${word}`,
      `alias Word = ${word};\n${source}`,
      {
        WG: WORKGROUP,
        ROW_WORDS: rowWords,
        PAGE_SIZE: options.pageSize,
        KV_HEADS: options.kvHeads,
        UNROLL: this.unroll,
      },
    );
  }

  checkAlive(action: string): void {
    if (this.#disposed) throw disposedError(action, "layout kernel");
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
  }
}

class LayoutPlan<J> implements KvLayoutPlan {
  #kernel: LayoutKernel<J>;
  #uniform: GPUBuffer;
  #jobs: GrowableBuffer;
  #table!: JobTable;
  // Keyed by the caller's buffers: an offloader cycles one plan through every layer.
  #bindings = new BindGroupCache(64);
  #disposed = false;

  constructor(kernel: LayoutKernel<J>, table: JobTable) {
    this.#kernel = kernel;
    this.#uniform = createBuffer(
      kernel.device,
      `${kernel.label} uniforms`,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      32,
    );
    this.#jobs = new GrowableBuffer(
      kernel.device,
      `${kernel.label} jobs`,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    );
    this.#write(table);
  }

  get numJobs(): number {
    return this.#table.count;
  }

  #write(table: JobTable): void {
    const queue = this.#kernel.device.queue;
    if (this.#jobs.ensure(Math.max(16, table.table.byteLength))) this.#bindings.clear();
    if (table.count > 0) {
      queue.writeBuffer(this.#jobs.buffer, 0, table.table);
      queue.writeBuffer(this.#uniform, 0, new Uint32Array([table.count, table.runBase, 0, 0]));
    }
    this.#table = table;
  }

  update(jobs: readonly J[], options?: NhdToHndPlanOptions): void {
    if (this.#disposed) throw disposedError(this.#kernel.action, "plan");
    this.#write(this.#kernel.tableOf(jobs, options));
  }

  encode(
    encoder: GPUCommandEncoder,
    buffers: LayoutBuffers,
    options: KernelEncodeOptions = {},
  ): void {
    const k = this.#kernel;
    const action = k.action;
    if (this.#disposed) throw disposedError(action, "plan");
    assertObject("buffers", buffers, action);
    const limit = k.device.limits.maxStorageBufferBindingSize;
    for (const name of ["kCache", "vCache", "runs"] as const) {
      const buffer = buffers[name];
      assertStorageBuffer(name, buffer, action);
      if (buffer.size > limit) {
        throw new RangeError(
          `Cannot ${action} as '${name}' must be at most maxStorageBufferBindingSize (${limit} bytes): received ${buffer.size} bytes`,
        );
      }
    }
    const { slotBytes, runBytes } = k.sizes;
    const slots = Math.floor(Math.min(buffers.kCache.size, buffers.vCache.size) / slotBytes);
    const table = this.#table;
    if (table.maxSlot >= slots) {
      throw new RangeError(
        `Cannot ${action} as every job's 'slot' must be below the ${slots} slots of 'kCache' and 'vCache': received ${table.maxSlot}`,
      );
    }
    const runs = Math.floor(buffers.runs.size / runBytes);
    if (table.maxRun >= runs) {
      throw new RangeError(
        `Cannot ${action} as 'runs' must hold runs up to ${table.maxRun} (${runBytes} bytes each): received ${buffers.runs.size} bytes`,
      );
    }
    if (table.count === 0) return;
    const { kCache, vCache, runs: runsBuffer } = buffers;
    const bindGroup = this.#bindings.get(
      [kCache, vCache, runsBuffer],
      () =>
        k.device.createBindGroup({
          label: `${k.label} bind group`,
          layout: k.pipeline.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: this.#uniform } },
            { binding: 1, resource: { buffer: kCache } },
            { binding: 2, resource: { buffer: vCache } },
            { binding: 3, resource: { buffer: this.#jobs.buffer } },
            { binding: 4, resource: { buffer: runsBuffer } },
          ],
        }),
    );
    const threads = table.count * runBytes / 4 / k.lanes / k.unroll;
    const groups = Math.ceil(threads / WORKGROUP);
    const x = Math.min(groups, k.device.limits.maxComputeWorkgroupsPerDimension);
    const ts = options.timestampWrites;
    const pass = encoder.beginComputePass({
      label: `${k.label} pass`,
      timestampWrites: passTimestampWrites(ts, ts?.beginIndex, ts?.endIndex),
    });
    pass.setPipeline(k.pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, Math.ceil(groups / x));
    pass.end();
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#uniform.destroy();
    this.#jobs[Symbol.dispose]();
    this.#bindings.clear();
  }
}

class NhdToHndKernel extends LayoutKernel<SlotHeadJob> implements NhdToHnd {
  plan(jobs: readonly SlotHeadJob[], options?: NhdToHndPlanOptions): NhdToHndPlan {
    this.checkAlive(GATHER_ACTION);
    return new LayoutPlan(this, this.tableOf(jobs, options));
  }
}

class HndToNhdKernel extends LayoutKernel<RunSlotHeadJob> implements HndToNhd {
  plan(jobs: readonly RunSlotHeadJob[]): HndToNhdPlan {
    this.checkAlive(SCATTER_ACTION);
    return new LayoutPlan(this, this.tableOf(jobs));
  }
}

/**
 * Creates the NHD -> HND conversion for one shape: job `j = {slot, head}`
 * of a plan writes run `runBase + j` of the runs buffer as
 * `[K: P x d][V: P x d]`.
 *
 * @throws {TypeError} When `device` is not a GPUDevice or `dtype` is unknown.
 * @throws {RangeError} When a size is out of range or an f16 `headDim` is odd.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createNhdToHnd } from "./layout.ts";
 * using gpu = await requestGpu();
 * const { device } = gpu;
 * const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
 * // P = 1, Hkv = 2, d = 2: one slot holds [head0: 1 2][head1: 3 4]
 * const kCache = createBuffer(device, "k", usage, new Float32Array([1, 2, 3, 4]));
 * const vCache = createBuffer(device, "v", usage, new Float32Array([5, 6, 7, 8]));
 * const runs = createBuffer(device, "runs", usage, 16);
 * using gather = createNhdToHnd(device, { pageSize: 1, kvHeads: 2, headDim: 2, dtype: "f32" });
 * using plan = gather.plan([{ slot: 0, head: 1 }]);
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder, { kCache, vCache, runs });
 * device.queue.submit([encoder.finish()]);
 * console.log([...new Float32Array(await readBuffer(device, runs))]); // [3, 4, 7, 8]
 * ```
 */
export function createNhdToHnd(device: GPUDevice, options: KvLayoutOptions): NhdToHnd {
  return new NhdToHndKernel(device, options, "layout nhd->hnd", nhdToHndSource, gatherTable);
}

/**
 * Creates the HND -> NHD scatter for one shape (the recall scatter): job
 * `{run, slot, head}` of a plan copies run `run` of the runs buffer into
 * kvHead `head` of slot `slot` of `kCache`/`vCache`.
 *
 * @throws {TypeError} When `device` is not a GPUDevice or `dtype` is unknown.
 * @throws {RangeError} When a size is out of range or an f16 `headDim` is odd.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createHndToNhd } from "./layout.ts";
 * using gpu = await requestGpu();
 * const { device } = gpu;
 * const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
 * const runs = createBuffer(device, "runs", usage, new Float32Array([3, 4, 7, 8]));
 * const kCache = createBuffer(device, "k", usage, 16);
 * const vCache = createBuffer(device, "v", usage, 16);
 * using scatter = createHndToNhd(device, { pageSize: 1, kvHeads: 2, headDim: 2, dtype: "f32" });
 * using plan = scatter.plan([{ run: 0, slot: 0, head: 1 }]);
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder, { kCache, vCache, runs });
 * device.queue.submit([encoder.finish()]);
 * console.log([...new Float32Array(await readBuffer(device, kCache))]); // [0, 0, 3, 4]
 * ```
 */
export function createHndToNhd(device: GPUDevice, options: KvLayoutOptions): HndToNhd {
  return new HndToNhdKernel(device, options, "layout hnd->nhd", hndToNhdSource, scatterTable);
}
