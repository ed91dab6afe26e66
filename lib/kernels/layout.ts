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
 * Plan/run split: {@linkcode NhdToHndPlan.set} / {@linkcode HndToNhdPlan.set}
 * write the job table and uniforms and pick the bind group;
 * `encode(encoder)` only records one dispatch into the caller's encoder.
 *
 * @module
 */
import nhdToHndSource from "../../shaders/layout_nhd_to_hnd.wgsl" with { type: "text" };
import hndToNhdSource from "../../shaders/layout_hnd_to_nhd.wgsl" with { type: "text" };
import { bytesPerElement, KV_DTYPES, type KvArray, type KvDtype } from "../gpu/dtype.ts";
import {
  assertDevice,
  assertInteger,
  assertOneOf,
  assertStorageBuffer,
  describeValue,
} from "../gpu/errors.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";

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
  if (shape === null || typeof shape !== "object") {
    throw new TypeError(
      `Cannot ${action} as 'shape' must be an object: received ${describeValue(shape)}`,
    );
  }
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

/** Buffers of an NHD -> HND conversion. */
export interface NhdToHndBuffers extends NhdCacheBuffers {
  /** Destination of the runs (STORAGE). */
  runs: GPUBuffer;
}

/** Buffers of an HND -> NHD scatter. */
export interface HndToNhdBuffers extends NhdCacheBuffers {
  /** Source of the runs (STORAGE). */
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

// Expands head-less jobs to one (slot, head) pair per head.
function expandJobs(
  jobs: readonly SlotHeadJob[],
  kvHeads: number,
  slots: number,
  action: string,
): Array<{ slot: number; head: number }> {
  const out: Array<{ slot: number; head: number }> = [];
  for (let j = 0; j < jobs.length; j++) {
    const job = jobs[j];
    assertInteger(`jobs[${j}].slot`, job?.slot, action, 0, slots - 1);
    if (job.head === undefined) {
      for (let head = 0; head < kvHeads; head++) out.push({ slot: job.slot, head });
    } else {
      assertInteger(`jobs[${j}].head`, job.head, action, 0, kvHeads - 1);
      out.push({ slot: job.slot, head: job.head });
    }
  }
  return out;
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

/** Options of the plan constructors. */
export interface LayoutPlanOptions extends KvLayoutShape {
  /** Label prefix of the GPU resources. */
  label?: string;
}

/** Options of {@linkcode NhdToHndPlan.set}. */
export interface NhdToHndSetOptions {
  /** Run index of the first job's output (default 0). */
  runBase?: number;
}

const WORKGROUP = 256;

// Number of whole slots `buffer` holds.
function slotsIn(buffer: GPUBuffer, slotBytes: number): number {
  return Math.floor(buffer.size / slotBytes);
}

function assertBindableStorage(name: string, buffer: unknown, action: string, limit: number) {
  assertStorageBuffer(name, buffer, action);
  if (buffer.size > limit) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must be at most maxStorageBufferBindingSize (${limit} bytes): received ${buffer.size} bytes`,
    );
  }
}

// Shared state of both plan classes (composition keeps it out of the public API).
class PlanCore {
  readonly #device: GPUDevice;
  readonly #label: string;
  readonly #pipeline: GPUComputePipeline;
  readonly #uniform: GPUBuffer;
  readonly #jobWords: number;
  #jobs: GPUBuffer | null = null;
  #jobCapacity = 0;
  #numJobs = 0;
  #bindGroup: GPUBindGroup | null = null;
  #bindGroups = new Map<GPUBuffer, { v: GPUBuffer; runs: GPUBuffer; group: GPUBindGroup }>();
  #disposed = false;
  readonly shape: KvLayoutShape;
  readonly sizes: KvLayoutSizes;
  readonly lanes: number;
  readonly unroll: number;

  constructor(
    device: GPUDevice,
    options: LayoutPlanOptions,
    kind: string,
    source: string,
    jobWords: number,
  ) {
    assertDevice(device, "convert the KV layout");
    const action = `create a ${kind} plan`;
    this.sizes = kvLayoutSizes(options, action);
    this.shape = {
      pageSize: options.pageSize,
      kvHeads: options.kvHeads,
      headDim: options.headDim,
      dtype: options.dtype,
    };
    this.#device = device;
    this.#label = options.label ?? `freekv ${kind}`;
    this.#jobWords = jobWords;
    this.lanes = this.sizes.rowBytes % 16 === 0 ? 4 : 1;
    const word = this.lanes === 4 ? "vec4<u32>" : "u32";
    const rowWords = this.sizes.rowBytes / 4 / this.lanes;
    this.unroll = [4, 2, 1].find((u) => rowWords % u === 0)!;
    this.#pipeline = cachedPipeline(
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
    this.#uniform = createTrackedBuffer(device, {
      label: `${this.#label} uniforms`,
      size: 32,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
  }

  get numJobs(): number {
    return this.#numJobs;
  }

  checkAlive(action: string) {
    if (this.#disposed) throw new TypeError(`Cannot ${action} as the plan was disposed`);
  }

  checkBuffers(buffers: NhdCacheBuffers & { runs: GPUBuffer }, action: string): number {
    if (buffers === null || typeof buffers !== "object") {
      throw new TypeError(
        `Cannot ${action} as 'buffers' must be an object: received ${describeValue(buffers)}`,
      );
    }
    const limit = this.#device.limits.maxStorageBufferBindingSize;
    assertBindableStorage("kCache", buffers.kCache, action, limit);
    assertBindableStorage("vCache", buffers.vCache, action, limit);
    assertBindableStorage("runs", buffers.runs, action, limit);
    return Math.min(
      slotsIn(buffers.kCache, this.sizes.slotBytes),
      slotsIn(buffers.vCache, this.sizes.slotBytes),
    );
  }

  upload(
    buffers: NhdCacheBuffers & { runs: GPUBuffer },
    table: Uint32Array<ArrayBuffer>,
    count: number,
    runBase: number,
  ) {
    const device = this.#device;
    if (count > this.#jobCapacity) {
      this.#jobs?.destroy();
      this.#jobCapacity = Math.max(64, 2 ** Math.ceil(Math.log2(count)));
      this.#jobs = createTrackedBuffer(device, {
        label: `${this.#label} jobs`,
        size: this.#jobCapacity * this.#jobWords * 4,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      this.#bindGroups.clear();
    }
    this.#numJobs = count;
    if (count === 0) return;
    device.queue.writeBuffer(this.#jobs!, 0, table, 0, count * this.#jobWords);
    device.queue.writeBuffer(this.#uniform, 0, new Uint32Array([count, runBase, 0, 0]));
    let entry = this.#bindGroups.get(buffers.kCache);
    if (!entry || entry.v !== buffers.vCache || entry.runs !== buffers.runs) {
      if (this.#bindGroups.size >= 64) this.#bindGroups.clear();
      const group = device.createBindGroup({
        label: `${this.#label} bind group`,
        layout: this.#pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#uniform } },
          { binding: 1, resource: { buffer: buffers.kCache } },
          { binding: 2, resource: { buffer: buffers.vCache } },
          { binding: 3, resource: { buffer: this.#jobs! } },
          { binding: 4, resource: { buffer: buffers.runs } },
        ],
      });
      entry = { v: buffers.vCache, runs: buffers.runs, group };
      this.#bindGroups.set(buffers.kCache, entry);
    }
    this.#bindGroup = entry.group;
  }

  encode(encoder: GPUCommandEncoder): void {
    this.checkAlive("encode a layout conversion");
    if (this.#numJobs === 0 || !this.#bindGroup) return;
    const threads = this.#numJobs * this.sizes.runBytes / 4 / this.lanes / this.unroll;
    const groups = Math.ceil(threads / WORKGROUP);
    const maxDim = this.#device.limits.maxComputeWorkgroupsPerDimension;
    const x = Math.min(groups, maxDim);
    const y = Math.ceil(groups / x);
    const pass = encoder.beginComputePass({ label: `${this.#label} pass` });
    pass.setPipeline(this.#pipeline);
    pass.setBindGroup(0, this.#bindGroup);
    pass.dispatchWorkgroups(x, y);
    pass.end();
  }

  dispose(): void {
    this.#disposed = true;
    this.#jobs?.destroy();
    this.#uniform.destroy();
    this.#jobs = null;
    this.#bindGroup = null;
    this.#bindGroups.clear();
  }
}

function assertJobArray(jobs: unknown, action: string): asserts jobs is ArrayLike<unknown> {
  if (!Array.isArray(jobs)) {
    throw new TypeError(
      `Cannot ${action} as 'jobs' must be an array: received ${describeValue(jobs)}`,
    );
  }
}

// The conversion plans share everything but their job tables; the core is
// kept out of the public types.
const cores = new WeakMap<LayoutPlan, PlanCore>();
function coreOf(plan: LayoutPlan): PlanCore {
  return cores.get(plan)!;
}

/** What both layout-conversion plans share: shape, sizes, encode, dispose. */
export abstract class LayoutPlan {
  /** Registers the plan's core. */
  protected constructor(core: unknown) {
    cores.set(this, core as PlanCore);
  }

  /** The shape this plan converts. */
  get shape(): KvLayoutShape {
    return coreOf(this).shape;
  }

  /** Sizes derived from the shape. */
  get sizes(): KvLayoutSizes {
    return coreOf(this).sizes;
  }

  /** 32-bit words moved per invocation: 4 when a row is a multiple of 16 bytes, else 1. */
  get lanes(): number {
    return coreOf(this).lanes;
  }

  /** Jobs recorded by the last `set`. */
  get numJobs(): number {
    return coreOf(this).numJobs;
  }

  /**
   * Records the dispatch for the jobs of the last `set` into `encoder`
   * (nothing when there are none). Submit the encoder before the next `set`
   * on this plan: `set` writes the job table through the queue.
   */
  encode(encoder: GPUCommandEncoder): void {
    coreOf(this).encode(encoder);
  }

  /** Destroys the plan's own buffers (not the caller's). */
  [Symbol.dispose](): void {
    coreOf(this).dispose();
  }
}

/**
 * Converts NHD cache slots to HND runs on the GPU: job `j = {slot, head}`
 * writes run `runBase + j` of the runs buffer as `[K: P x d][V: P x d]`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { NhdToHndPlan } from "./layout.ts";
 * using gpu = await requestGpu();
 * const { device } = gpu;
 * const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
 * // P = 1, Hkv = 2, d = 2: one slot holds [head0: 1 2][head1: 3 4]
 * const kCache = createBuffer(device, "k", usage, new Float32Array([1, 2, 3, 4]));
 * const vCache = createBuffer(device, "v", usage, new Float32Array([5, 6, 7, 8]));
 * const runs = createBuffer(device, "runs", usage, 16);
 * using plan = new NhdToHndPlan(device, { pageSize: 1, kvHeads: 2, headDim: 2, dtype: "f32" });
 * plan.set({ kCache, vCache, runs }, [{ slot: 0, head: 1 }]);
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder);
 * device.queue.submit([encoder.finish()]);
 * console.log([...new Float32Array(await readBuffer(device, runs))]); // [3, 4, 7, 8]
 * ```
 */
export class NhdToHndPlan extends LayoutPlan {
  /** Creates the plan (pipeline, uniforms) for one shape. */
  constructor(device: GPUDevice, options: LayoutPlanOptions) {
    super(new PlanCore(device, options, "layout nhd->hnd", nhdToHndSource, 2));
  }

  /**
   * Sets the buffers and jobs of the next `encode`. Checks every job before
   * writing anything: slot inside both caches, head in range, runs fit. A
   * job without `head` writes every head of its slot, one run each.
   */
  set(
    buffers: NhdToHndBuffers,
    jobs: readonly SlotHeadJob[],
    options: NhdToHndSetOptions = {},
  ): void {
    const action = "plan an NHD to HND conversion";
    coreOf(this).checkAlive(action);
    const slots = coreOf(this).checkBuffers(buffers, action);
    assertJobArray(jobs, action);
    const runBase = options.runBase ?? 0;
    assertInteger("runBase", runBase, action, 0);
    const pairs = expandJobs(jobs, this.shape.kvHeads, slots, action);
    const runCapacity = Math.floor(buffers.runs.size / coreOf(this).sizes.runBytes);
    if (runBase + pairs.length > runCapacity) {
      throw new RangeError(
        `Cannot ${action} as 'runs' must hold runBase + ${pairs.length} runs of ${this.sizes.runBytes} bytes: received ${buffers.runs.size} bytes`,
      );
    }
    const table = new Uint32Array(pairs.length * 2);
    pairs.forEach(({ slot, head }, j) => {
      table[2 * j] = slot;
      table[2 * j + 1] = head;
    });
    coreOf(this).upload(buffers, table, pairs.length, runBase);
  }
}

/**
 * Scatters HND runs into NHD cache slots on the GPU (the recall scatter):
 * job `{run, slot, head}` copies run `run` of the runs buffer into kvHead
 * `head` of slot `slot` of `kCache`/`vCache`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { HndToNhdPlan } from "./layout.ts";
 * using gpu = await requestGpu();
 * const { device } = gpu;
 * const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
 * const runs = createBuffer(device, "runs", usage, new Float32Array([3, 4, 7, 8]));
 * const kCache = createBuffer(device, "k", usage, 16);
 * const vCache = createBuffer(device, "v", usage, 16);
 * using plan = new HndToNhdPlan(device, { pageSize: 1, kvHeads: 2, headDim: 2, dtype: "f32" });
 * plan.set({ kCache, vCache, runs }, [{ run: 0, slot: 0, head: 1 }]);
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder);
 * device.queue.submit([encoder.finish()]);
 * console.log([...new Float32Array(await readBuffer(device, kCache))]); // [0, 0, 3, 4]
 * ```
 */
export class HndToNhdPlan extends LayoutPlan {
  /** Creates the plan (pipeline, uniforms) for one shape. */
  constructor(device: GPUDevice, options: LayoutPlanOptions) {
    super(new PlanCore(device, options, "layout hnd->nhd", hndToNhdSource, 4));
  }

  /**
   * Sets the buffers and jobs of the next `encode`. Checks every job before
   * writing anything: run inside `runs`, slot inside both caches, head in
   * range, no (slot, head) twice.
   */
  set(buffers: HndToNhdBuffers, jobs: readonly RunSlotHeadJob[]): void {
    const action = "plan an HND to NHD scatter";
    coreOf(this).checkAlive(action);
    const slots = coreOf(this).checkBuffers(buffers, action);
    assertJobArray(jobs, action);
    const runCapacity = Math.floor(buffers.runs.size / this.sizes.runBytes);
    const table = new Uint32Array(jobs.length * 4);
    const seen = new Set<number>();
    const heads = coreOf(this).shape.kvHeads;
    for (let j = 0; j < jobs.length; j++) {
      const job = jobs[j];
      assertInteger(`jobs[${j}].run`, job?.run, action, 0, runCapacity - 1);
      assertInteger(`jobs[${j}].slot`, job.slot, action, 0, slots - 1);
      assertInteger(`jobs[${j}].head`, job.head, action, 0, heads - 1);
      const key = job.slot * heads + job.head;
      if (seen.has(key)) {
        throw new RangeError(
          `Cannot ${action} as each (slot, head) may be written once: received slot ${job.slot} head ${job.head} twice`,
        );
      }
      seen.add(key);
      table.set([job.run, job.slot, job.head, 0], 4 * j);
    }
    coreOf(this).upload(buffers, table, jobs.length, 0);
  }
}

/** Host copies of one layer's NHD caches (`[slot][token][kvHead][d]`). */
export interface NhdCacheArrays {
  /** Keys. */
  kCache: KvArray;
  /** Values. */
  vCache: KvArray;
}

/** Options of {@linkcode hndToNhdReference}. */
export interface HndToNhdReferenceOptions extends KvLayoutShape {
  /** The jobs, as for {@linkcode HndToNhdPlan.set}. */
  jobs: readonly RunSlotHeadJob[];
}

// Integer view of a KV array, so copies keep every bit (NaN payloads too).
function bits(array: KvArray): Uint16Array | Uint32Array {
  return array instanceof Float32Array
    ? new Uint32Array(array.buffer, array.byteOffset, array.length)
    : new Uint16Array(array.buffer, array.byteOffset, array.length);
}

/**
 * CPU reference of {@linkcode NhdToHndPlan}: returns the runs of `jobs`
 * (`[job][K: P x d][V: P x d]`), copied bit for bit from the host caches.
 *
 * @example
 * ```ts
 * import { nhdToHndReference } from "./layout.ts";
 * const kCache = new Float32Array([1, 2, 3, 4]), vCache = new Float32Array([5, 6, 7, 8]);
 * const shape = { pageSize: 1, kvHeads: 2, headDim: 2, dtype: "f32" } as const;
 * console.log([...nhdToHndReference({ kCache, vCache }, [{ slot: 0, head: 1 }], shape)]);
 * // [3, 4, 7, 8]
 * ```
 */
export function nhdToHndReference(
  caches: NhdCacheArrays,
  jobs: readonly SlotHeadJob[],
  shape: KvLayoutShape,
): KvArray {
  const { pageElements, runElements } = kvLayoutSizes(shape, "run the NHD to HND reference");
  const { pageSize: P, kvHeads: H, headDim: d } = shape;
  const pairs = jobs.flatMap(({ slot, head }) =>
    head === undefined ? [...Array(H).keys()].map((h) => ({ slot, head: h })) : [{ slot, head }]
  );
  const out = shape.dtype === "f16"
    ? new Float16Array(pairs.length * runElements)
    : new Float32Array(pairs.length * runElements);
  const dst = bits(out), k = bits(caches.kCache), v = bits(caches.vCache);
  for (let j = 0; j < pairs.length; j++) {
    const { slot, head } = pairs[j];
    for (let t = 0; t < P; t++) {
      for (let i = 0; i < d; i++) {
        const src = ((slot * P + t) * H + head) * d + i;
        dst[j * runElements + t * d + i] = k[src];
        dst[j * runElements + pageElements + t * d + i] = v[src];
      }
    }
  }
  return out;
}

/**
 * CPU reference of {@linkcode HndToNhdPlan}: copies each job's run of
 * `runs` into the host caches, bit for bit, in place.
 *
 * @example
 * ```ts
 * import { hndToNhdReference } from "./layout.ts";
 * const kCache = new Float32Array(4), vCache = new Float32Array(4);
 * hndToNhdReference(new Float32Array([3, 4, 7, 8]), { kCache, vCache }, {
 *   pageSize: 1, kvHeads: 2, headDim: 2, dtype: "f32", jobs: [{ run: 0, slot: 0, head: 1 }],
 * });
 * console.log([...kCache], [...vCache]); // [0, 0, 3, 4] [0, 0, 7, 8]
 * ```
 */
export function hndToNhdReference(
  runs: KvArray,
  caches: NhdCacheArrays,
  options: HndToNhdReferenceOptions,
): void {
  const { pageElements, runElements } = kvLayoutSizes(options, "run the HND to NHD reference");
  const { pageSize: P, kvHeads: H, headDim: d } = options;
  const src = bits(runs), k = bits(caches.kCache), v = bits(caches.vCache);
  for (const { run, slot, head } of options.jobs) {
    for (let t = 0; t < P; t++) {
      for (let i = 0; i < d; i++) {
        const dst = ((slot * P + t) * H + head) * d + i;
        k[dst] = src[run * runElements + t * d + i];
        v[dst] = src[run * runElements + pageElements + t * d + i];
      }
    }
  }
}
