/**
 * Offload: backs pages of the GPU KV cache (NHD slots) up to a
 * {@linkcode HostPagePool} in HND order, off the critical path.
 *
 * `encode` records, into the caller's encoder, the NHD -> HND conversion of
 * the pages into a GPU buffer and a copy of it into a `MAP_READ` buffer of a
 * ring; after the caller submitted, `flush()` starts the maps, and each
 * handle's `done` resolves once its runs are in the pool. Ring buffers are
 * reused only after their map finished; the ring grows instead of waiting
 * when all are busy.
 *
 * Deno note: `mapAsync` blocks the calling thread until the GPU queue is
 * idle (then resolves about 10 ms later), so call `flush()` where the
 * caller waits for the GPU anyway (for example right after a readback).
 *
 * @module
 */
import type { HostPagePool, PageKey } from "./host_pool.ts";
import {
  createNhdToHnd,
  type KvLayoutSizes,
  kvLayoutSizes,
  type NhdToHnd,
  type NhdToHndPlan,
} from "../kernels/layout.ts";
import {
  assertDevice,
  assertInteger,
  assertObject,
  assertOneOf,
  describeValue,
  disposedError,
} from "../gpu/errors.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";
import { SLOT_LAYOUTS, type SlotLayout } from "../kernels/slot_layout.ts";

/** One page to offload: `page` (global index) sits in `slot` of the cache. */
export interface OffloadJob {
  /** Slot of the NHD cache holding the page. */
  slot: number;
  /** Global page index in the host pool. */
  page: number;
  /** Only this KV head (default: every head of the slot). */
  head?: number;
}

/** What {@linkcode Offloader.encode} offloads: pages of one layer. */
export interface OffloadRequest {
  /** Layer of the pages. */
  layer: number;
  /** The layer's key cache (`[slot][token][kvHead][d]`, STORAGE). */
  kCache: GPUBuffer;
  /** The layer's value cache. */
  vCache: GPUBuffer;
  /** Pages to back up. */
  jobs: readonly OffloadJob[];
}

/** Result of one offload. */
export interface OffloadStats {
  /** (head, page) runs written to the pool. */
  pages: number;
  /** Bytes written to the pool. */
  bytes: number;
  /** Milliseconds from `flush()` until the runs were in the pool. */
  ms: number;
}

/** An offload recorded by {@linkcode Offloader.encode}. */
export interface OffloadHandle {
  /** Resolves once the runs are in the pool (after the caller submitted and flushed). */
  done: Promise<OffloadStats>;
  /** (head, page) runs offloaded. */
  pages: number;
  /** Bytes offloaded. */
  bytes: number;
}

/** Cumulative figures of an {@linkcode Offloader}. */
export interface OffloaderStats {
  /** Completed `encode` calls. */
  offloads: number;
  /** Runs written to the pool. */
  pages: number;
  /** Bytes written to the pool. */
  bytes: number;
  /** Milliseconds spent awaiting in `drain()` / `offloadNow()`. */
  waitMs: number;
  /** Offloads encoded or mapping, not yet in the pool. */
  inFlight: number;
  /** Ring buffers allocated. */
  ringBuffers: number;
}

/** Options of {@linkcode createOffloader}. */
export interface OffloaderOptions {
  /** Label prefix of GPU resources (default `"freekv offload"`). */
  label?: string;
  /**
   * Largest ring buffer in bytes (default 32 MiB, at most the device's
   * storage binding limit); bigger offloads are split over several.
   */
  maxBufferBytes?: number;
  /**
   * Layout of the cache slots (default `"nhd"`: each run is converted by
   * the NHD -> HND kernel). With `"hnd"` slots (`[slot][Hkv][P][d]`) a run
   * is the slot's K and V parts of that head, copied as they are (two
   * `copyBufferToBuffer` per run, no conversion kernel); the caches then
   * need `COPY_SRC` usage.
   */
  slotLayout?: SlotLayout;
}

interface RingEntry {
  runs: GPUBuffer;
  read: GPUBuffer;
  /** The NHD -> HND conversion (NHD slots only). */
  plan?: NhdToHndPlan;
  capacity: number;
}

interface Part {
  entry: RingEntry;
  layer: number;
  keys: PageKey[];
}

interface Pending {
  parts: Part[];
  bytes: number;
  resolve: (stats: OffloadStats) => void;
  reject: (error: unknown) => void;
}

/**
 * Backs NHD cache pages up to a host pool; see the module doc. Create it
 * with {@linkcode createOffloader}.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer } from "../gpu/buffers.ts";
 * import { HostPagePool } from "./host_pool.ts";
 * import { createOffloader } from "./offload.ts";
 * using gpu = await requestGpu();
 * using pool = new HostPagePool({ layers: 1, kvHeads: 2, headDim: 2, pageSize: 1 });
 * const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
 * // One slot, P = 1: [head0: 1 2][head1: 3 4]
 * const kCache = createBuffer(gpu.device, "k", usage, new Float32Array([1, 2, 3, 4]));
 * const vCache = createBuffer(gpu.device, "v", usage, new Float32Array([5, 6, 7, 8]));
 * using offloader = createOffloader(gpu.device, pool);
 * await offloader.offloadNow({ layer: 0, kCache, vCache, jobs: [{ slot: 0, page: 9 }] });
 * console.log([...pool.readRun({ layer: 0, head: 1, page: 9 })]); // [3, 4, 7, 8]
 * ```
 */
export class Offloader {
  readonly #device: GPUDevice;
  readonly #pool: HostPagePool;
  readonly #label: string;
  readonly #sizes: KvLayoutSizes;
  #convert?: NhdToHnd;
  readonly #maxRuns: number;
  readonly #slotLayout: SlotLayout;
  #free: RingEntry[] = [];
  #all: RingEntry[] = [];
  #encoded: Pending[] = [];
  #inFlight = new Set<Promise<unknown>>();
  #stats = { offloads: 0, pages: 0, bytes: 0, waitMs: 0 };
  #disposed = false;

  /** Use {@linkcode createOffloader}. */
  constructor(device: GPUDevice, pool: HostPagePool, options: OffloaderOptions = {}) {
    assertDevice(device, "create an offloader");
    const action = "create an offloader";
    this.#device = device;
    this.#pool = pool;
    this.#label = options.label ?? "freekv offload";
    this.#sizes = kvLayoutSizes(pool, action);
    this.#slotLayout = options.slotLayout ?? "nhd";
    assertOneOf("slotLayout", this.#slotLayout, SLOT_LAYOUTS, action);
    if (this.#slotLayout === "hnd" && (this.#sizes.runBytes / 2) % 4 !== 0) {
      throw new RangeError(
        `Cannot ${action} as a head's page of HND slots must be a multiple of 4 bytes to be copied: received ${
          this.#sizes.runBytes / 2
        } bytes (pageSize * headDim of ${pool.dtype})`,
      );
    }
    const limit = Math.min(
      device.limits.maxStorageBufferBindingSize,
      device.limits.maxBufferSize,
    );
    const maxBytes = options.maxBufferBytes ?? 32 << 20;
    assertInteger("maxBufferBytes", maxBytes, action, this.#sizes.runBytes);
    this.#maxRuns = Math.max(1, Math.floor(Math.min(maxBytes, limit) / this.#sizes.runBytes));
    // NHD slots convert every backup: compile the kernel now, not at the
    // first backup in the middle of a decode.
    if (this.#slotLayout === "nhd") this.#convertKernel();
  }

  /**
   * Records the backup of `request.jobs` into `encoder` and returns its
   * handle. Checks everything (layer, slots, heads, pages, pool growth
   * within `maxBytes`) and throws before recording anything. Submit the
   * encoder, then call {@linkcode Offloader.flush}.
   */
  encode(encoder: GPUCommandEncoder, request: OffloadRequest): OffloadHandle {
    const action = "encode an offload";
    if (this.#disposed) throw disposedError(action, "offloader");
    assertObject("request", request, action);
    const pool = this.#pool;
    assertInteger("layer", request.layer, action, 0, pool.layers - 1);
    const hnd = this.#slotLayout === "hnd";
    const need = hnd ? GPUBufferUsage.COPY_SRC : GPUBufferUsage.STORAGE;
    for (const name of ["kCache", "vCache"] as const) {
      const b = request[name];
      if (!(b instanceof GPUBuffer) || (b.usage & need) === 0) {
        throw new TypeError(
          `Cannot ${action} as '${name}' must be a GPUBuffer with ${
            hnd ? "COPY_SRC" : "STORAGE"
          } usage: received ${describeValue(b)}`,
        );
      }
    }
    const slots = Math.min(
      Math.floor(request.kCache.size / this.#sizes.slotBytes),
      Math.floor(request.vCache.size / this.#sizes.slotBytes),
    );
    if (!Array.isArray(request.jobs)) {
      throw new TypeError(
        `Cannot ${action} as 'jobs' must be an array: received ${describeValue(request.jobs)}`,
      );
    }
    const work: Array<{ slot: number; head: number; page: number }> = [];
    const seen = new Set<string>();
    request.jobs.forEach((job, j) => {
      assertInteger(`jobs[${j}].slot`, job?.slot, action, 0, slots - 1);
      assertInteger(`jobs[${j}].page`, job.page, action, 0, 2 ** 32 - 1);
      const heads = job.head === undefined ? [...Array(pool.kvHeads).keys()] : [job.head];
      if (job.head !== undefined) {
        assertInteger(`jobs[${j}].head`, job.head, action, 0, pool.kvHeads - 1);
      }
      for (const head of heads) {
        const key = `${head}:${job.page}`;
        if (seen.has(key)) {
          throw new RangeError(
            `Cannot ${action} as each (head, page) may appear once: received head ${head} page ${job.page} twice`,
          );
        }
        seen.add(key);
        work.push({ slot: job.slot, head, page: job.page });
      }
    });
    pool.reserve(work.map((w) => w.page));

    const parts: Part[] = [];
    for (let start = 0; start < work.length; start += this.#maxRuns) {
      const slice = work.slice(start, start + this.#maxRuns);
      const entry = this.#take(slice.length);
      if (hnd) {
        // A head's page is already a run's K (and V) part: copy it as it is.
        const { slotBytes, runBytes } = this.#sizes;
        const half = runBytes / 2;
        slice.forEach(({ slot, head }, i) => {
          const at = slot * slotBytes + head * half;
          encoder.copyBufferToBuffer(request.kCache, at, entry.read, i * runBytes, half);
          encoder.copyBufferToBuffer(request.vCache, at, entry.read, i * runBytes + half, half);
        });
      } else {
        entry.plan!.update(slice);
        entry.plan!.encode(encoder, {
          kCache: request.kCache,
          vCache: request.vCache,
          runs: entry.runs,
        });
        encoder.copyBufferToBuffer(
          entry.runs,
          0,
          entry.read,
          0,
          slice.length * this.#sizes.runBytes,
        );
      }
      parts.push({
        entry,
        layer: request.layer,
        keys: slice.map(({ head, page }) => ({ layer: request.layer, head, page })),
      });
    }
    const bytes = work.length * this.#sizes.runBytes;
    let resolve!: (stats: OffloadStats) => void, reject!: (error: unknown) => void;
    const done = new Promise<OffloadStats>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A disposed or lost device rejects it; callers that keep the handle see that.
    done.catch(() => {});
    if (parts.length === 0) resolve({ pages: 0, bytes: 0, ms: 0 });
    else this.#encoded.push({ parts, bytes, resolve, reject });
    return { done, pages: work.length, bytes };
  }

  #convertKernel(): NhdToHnd {
    this.#convert ??= createNhdToHnd(this.#device, {
      pageSize: this.#pool.pageSize,
      kvHeads: this.#pool.kvHeads,
      headDim: this.#pool.headDim,
      dtype: this.#pool.dtype,
      label: `${this.#label} convert`,
    });
    return this.#convert;
  }

  #take(runs: number): RingEntry {
    let best = -1;
    for (let i = 0; i < this.#free.length; i++) {
      const e = this.#free[i];
      if (e.capacity >= runs && (best < 0 || e.capacity < this.#free[best].capacity)) best = i;
    }
    if (best >= 0) return this.#free.splice(best, 1)[0];
    const capacity = Math.min(this.#maxRuns, Math.max(runs, 2 ** Math.ceil(Math.log2(runs))));
    const size = capacity * this.#sizes.runBytes;
    const n = this.#all.length;
    const entry: RingEntry = {
      capacity,
      // HND slots copy straight into the readback buffer: no runs buffer needed.
      runs: createTrackedBuffer(this.#device, {
        label: `${this.#label} runs ${n}`,
        size: this.#slotLayout === "hnd" ? 16 : size,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      }),
      read: createTrackedBuffer(this.#device, {
        label: `${this.#label} readback ${n}`,
        size,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
      ...(this.#slotLayout === "hnd" ? {} : { plan: this.#convertKernel().plan([]) }),
    };
    this.#all.push(entry);
    return entry;
  }

  /** Offloads encoded and not flushed yet. */
  get unflushed(): number {
    return this.#encoded.length;
  }

  /**
   * Starts mapping the oldest `count` offloads encoded since the last flush
   * (all by default). Call it only after submitting the encoders those were
   * encoded into (a buffer being mapped cannot be used by a later submit).
   */
  flush(count: number = this.#encoded.length): void {
    assertInteger("count", count, "flush offloads", 0, this.#encoded.length);
    const batch = this.#encoded.splice(0, count);
    for (const pending of batch) {
      const t0 = performance.now();
      const work = (async () => {
        try {
          const runBytes = this.#sizes.runBytes;
          // Start every map first: each resolves no sooner than ~10 ms in Deno.
          const maps = pending.parts.map((part) =>
            part.entry.read.mapAsync(GPUMapMode.READ, 0, part.keys.length * runBytes)
          );
          for (const m of maps) m.catch(() => {}); // rejections surface through the await below
          for (let p = 0; p < pending.parts.length; p++) {
            const part = pending.parts[p];
            await maps[p];
            try {
              const size = part.keys.length * runBytes;
              const bytes = new Uint8Array(part.entry.read.getMappedRange(0, size));
              part.keys.forEach((key, i) => {
                this.#pool.writeRun(key, bytes.subarray(i * runBytes, (i + 1) * runBytes));
              });
            } finally {
              part.entry.read.unmap();
              if (!this.#disposed) this.#free.push(part.entry);
            }
          }
          const stats = {
            pages: pending.parts.reduce((n, p) => n + p.keys.length, 0),
            bytes: pending.bytes,
            ms: performance.now() - t0,
          };
          this.#stats.offloads++;
          this.#stats.pages += stats.pages;
          this.#stats.bytes += stats.bytes;
          pending.resolve(stats);
        } catch (error) {
          for (const part of pending.parts) {
            // A destroyed buffer (disposed offloader) throws on unmap.
            if (!this.#disposed && part.entry.read.mapState === "mapped") part.entry.read.unmap();
          }
          pending.reject(error);
        }
      })();
      this.#inFlight.add(work);
      work.finally(() => this.#inFlight.delete(work));
    }
  }

  /** Flushes, then waits until every offload is in the pool. */
  async drain(): Promise<void> {
    const t0 = performance.now();
    this.flush();
    await Promise.all([...this.#inFlight]);
    this.#stats.waitMs += performance.now() - t0;
  }

  /**
   * Encodes, submits, flushes and awaits one offload (for tests and
   * prefill): a synchronous-looking {@linkcode Offloader.encode}.
   */
  async offloadNow(request: OffloadRequest): Promise<OffloadStats> {
    const encoder = this.#device.createCommandEncoder({ label: `${this.#label} now` });
    const handle = this.encode(encoder, request);
    this.#device.queue.submit([encoder.finish()]);
    const t0 = performance.now();
    this.flush();
    try {
      return await handle.done;
    } finally {
      this.#stats.waitMs += performance.now() - t0;
    }
  }

  /** Cumulative figures. */
  stats(): OffloaderStats {
    return {
      ...this.#stats,
      inFlight: this.#inFlight.size +
        this.#encoded.length,
      ringBuffers: this.#all.length,
    };
  }

  /** Destroys the ring buffers; offloads still mapping reject. */
  [Symbol.dispose](): void {
    this.#disposed = true;
    for (const e of this.#all) {
      e.runs.destroy();
      e.read.destroy();
      e.plan?.[Symbol.dispose]();
    }
    this.#convert?.[Symbol.dispose]();
    for (const p of this.#encoded) {
      p.reject(disposedError("finish the offload", "offloader"));
    }
    this.#encoded = [];
    this.#all = [];
    this.#free = [];
  }
}

/**
 * Creates an {@linkcode Offloader} that backs pages of NHD caches up to
 * `pool` (its shape and dtype must match the caches).
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { HostPagePool } from "./host_pool.ts";
 * import { createOffloader } from "./offload.ts";
 * using gpu = await requestGpu();
 * using pool = new HostPagePool({ layers: 2, kvHeads: 4, headDim: 8, pageSize: 4 });
 * using offloader = createOffloader(gpu.device, pool);
 * console.log(offloader.stats().pages); // 0
 * ```
 */
export function createOffloader(
  device: GPUDevice,
  pool: HostPagePool,
  options: OffloaderOptions = {},
): Offloader {
  return new Offloader(device, pool, options);
}
