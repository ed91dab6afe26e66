/**
 * Recall: brings offloaded pages back from a {@linkcode HostPagePool} into
 * NHD cache slots on the GPU.
 *
 * HND pools (the default) use double-buffered streamed recall: the jobs are
 * cut into chunks (per layer, per group of heads, or by bytes), and two
 * staging buffers alternate: while the GPU copies chunk j out of one and the
 * HND -> NHD scatter kernel places it into the slots, JavaScript gathers
 * chunk j+1 from the pool into the other. A staging buffer is refilled only
 * after the GPU finished with it (paced by its `mapAsync`, or by
 * `onSubmittedWorkDone` with `staging: "write-buffer"`).
 *
 * `"nhd"` pools take the fragmented baseline path: one `queue.writeBuffer`
 * per (token, K/V) fragment of `d` values, straight into the slot, as a
 * system without the hybrid layout would.
 *
 * Deno note: `mapAsync` and `onSubmittedWorkDone` block the calling thread
 * until the GPU queue is idle, then resolve about 10 ms later. So the
 * recaller asks the GPU only where it must: mapped staging waits for a
 * staging buffer before refilling it (about 10 ms per chunk beyond the
 * second); `write-buffer` staging relies on queue order (refilling a GPU
 * staging buffer is a queue operation ordered after the scatter that read
 * it) and never waits; `done` is created only when first read.
 *
 * @module
 */
import type { HostPagePool } from "./host_pool.ts";
import { type KvLayoutSizes, kvLayoutSizes, type NhdCacheBuffers } from "../kernels/layout.ts";
import { type Chunk, type RecallState, StagingRing } from "./recall_staging.ts";
import { SLOT_LAYOUTS, type SlotLayout } from "../kernels/slot_layout.ts";
import {
  assertBoolean,
  assertDevice,
  assertInteger,
  assertObject,
  assertOneOf,
  describeValue,
  disposedError,
} from "../gpu/errors.ts";

/** One page to recall: (layer, head, page) of the pool into `slot` of the layer's cache. */
export interface RecallJob {
  /** Layer. */
  layer: number;
  /** KV head. */
  head: number;
  /** Global page index in the host pool (must have been offloaded). */
  page: number;
  /** Destination slot of the layer's NHD cache. */
  slot: number;
}

/** The layers' NHD caches: an array indexed by layer, or a function of the layer. */
export type RecallCaches = readonly NhdCacheBuffers[] | ((layer: number) => NhdCacheBuffers);

/** How recall jobs are cut into chunks. */
export type RecallChunking = "layer" | "heads" | "bytes";

/** How chunks reach the GPU staging buffer. */
export type RecallStaging = "mapped" | "write-buffer";

/** Staging buffers that alternate: two (`"double"`) or one (`"single"`, the ablation). */
export type RecallBuffering = "double" | "single";

/** Options of {@linkcode createRecaller}. */
export interface RecallerOptions {
  /** The NHD caches of each layer (`[slot][token][kvHead][d]`). */
  caches: RecallCaches;
  /**
   * Chunks (default `"layer"`): one per layer; per layer and group of
   * `headsPerChunk` heads; or `"bytes"`: pages packed in job order across
   * layers. Any chunk is also cut at `maxChunkBytes`.
   */
  chunk?: RecallChunking;
  /** Heads per chunk with `chunk: "heads"` (default half the KV heads, at least 1). */
  headsPerChunk?: number;
  /** Largest chunk in bytes (default 4 MiB, at most the storage binding limit). */
  maxChunkBytes?: number;
  /** Default `"double"`. */
  buffering?: RecallBuffering;
  /**
   * Default `"write-buffer"` (`queue.writeBuffer` of each contiguous pool
   * range into a GPU staging buffer): as fast as or faster than `"mapped"`
   * (`mapAsync(WRITE)` + `getMappedRange` + `unmap` + `copyBufferToBuffer`)
   * in Deno 2.9, and it never blocks the thread, where every `mapAsync`
   * blocks until the queue is idle and resolves ~10 ms later.
   */
  staging?: RecallStaging;
  /** Label prefix of GPU resources (default `"freekv recall"`). */
  label?: string;
  /**
   * Layout of the cache slots (default `"nhd"`). With `"hnd"` slots
   * (`[slot][Hkv][P][d]`) a recalled (page, head) needs no scatter kernel:
   * see `hndPath`.
   */
  slotLayout?: SlotLayout;
  /**
   * How an HND pool reaches HND slots (default `"staged"`, measured faster:
   * `scripts/bench.ts --suite recall`, rows `hnd-slots-*`): `"direct"` is two
   * `queue.writeBuffer` per run, from the host run straight into the K and V
   * caches at the slot's head offset (no staging buffer, no kernel, but a
   * fixed cost per call that small runs do not amortize);
   * `"staged"` brings chunks through the staging buffers and places them
   * with `copyBufferToBuffer`: runs bound for adjacent (slot, head) places
   * are gathered so that each such range leaves in one copy per cache (a
   * range of 128 KiB or more is written straight into the caches); a run
   * with no neighbour leaves with one copy for its K part and one for its
   * V part. Ignored for NHD slots.
   */
  hndPath?: HndRecallPath;
  /**
   * Hold each chunk's command buffer instead of submitting it (default
   * false); take them with {@linkcode Recaller.takeCommandBuffers} and
   * submit them ahead of the work that reads the slots. In Deno 2.9 every
   * submit blocks the thread until the queue is idle, so an engine that
   * submits the recall with its next step keeps one blocking call per step.
   * Needs `staging: "write-buffer"` and `buffering: "double"`. A recall that
   * refills a staging buffer still held (a third chunk), `done` and
   * `drain()` submit what is held themselves.
   */
  deferSubmit?: boolean;
}

/** How HND runs reach HND slots: see {@linkcode RecallerOptions.hndPath}. */
export type HndRecallPath = "direct" | "staged";

/** Figures of one recall. */
export interface RecallStats {
  /** (layer, head, page) runs recalled. */
  pages: number;
  /** Bytes recalled. */
  bytes: number;
  /** Chunks it was cut into (0 for the fragmented path). */
  chunks: number;
  /**
   * Copies issued: for HND slots, the placement copies (two per range of
   * adjacent destinations) or, on the direct path, the `writeBuffer` calls;
   * for NHD slots, the `writeBuffer` calls that fill the staging (runs
   * adjacent in the pool coalesce) or the fragments of the NHD baseline.
   */
  copies: number;
  /** Milliseconds from `recall()` until the data was in the slots. */
  ms: number;
  /** Milliseconds the pipeline waited for a staging buffer to come free. */
  waitMs: number;
  /** Milliseconds JavaScript spent copying (gather or `writeBuffer`). */
  copyMs: number;
}

/** A recall in flight. */
export interface RecallHandle {
  /**
   * Resolves once the pages are in their slots. Created on first access:
   * learning that the GPU finished blocks the thread in Deno until the queue
   * is idle, so callers that only need queue order use `submitted`.
   */
  readonly done: Promise<RecallStats>;
  /**
   * Resolves once every copy of the recall is submitted (with
   * `deferSubmit`: held, for the caller's next submit): work the caller
   * submits afterwards is ordered after the recall by the queue.
   */
  submitted: Promise<void>;
  /** Runs recalled. */
  pages: number;
  /** Bytes recalled. */
  bytes: number;
}

/**
 * Cumulative figures of a {@linkcode Recaller}: the sums of the recalls'
 * {@linkcode RecallStats} (`ms` over the recalls whose `done` was read).
 */
export interface RecallerStats extends RecallStats {
  /** Recalls whose copies were all submitted. */
  recalls: number;
  /** Recalls not fully submitted yet. */
  inFlight: number;
}

const CHUNKINGS: readonly RecallChunking[] = ["layer", "heads", "bytes"];
const STAGINGS: readonly RecallStaging[] = ["mapped", "write-buffer"];
const BUFFERINGS: readonly RecallBuffering[] = ["double", "single"];

/**
 * Recalls offloaded pages into NHD cache slots; see the module doc. Create
 * it with {@linkcode createRecaller}.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { readBuffer } from "../gpu/buffers.ts";
 * import { HostPagePool } from "./host_pool.ts";
 * import { createRecaller } from "./recall.ts";
 * using gpu = await requestGpu();
 * using pool = new HostPagePool({ layers: 1, kvHeads: 2, headDim: 2, pageSize: 1 });
 * pool.writeRun({ layer: 0, head: 1, page: 3 }, new Float32Array([3, 4, 7, 8]));
 * const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
 * const kCache = gpu.device.createBuffer({ label: "k", size: 32, usage }); // 2 slots
 * const vCache = gpu.device.createBuffer({ label: "v", size: 32, usage });
 * using recaller = createRecaller(gpu.device, pool, { caches: [{ kCache, vCache }] });
 * await recaller.recall([{ layer: 0, head: 1, page: 3, slot: 1 }]).done;
 * console.log([...new Float32Array(await readBuffer(gpu.device, kCache))]); // [0, 0, 0, 0, 0, 0, 3, 4]
 * ```
 */
export class Recaller {
  readonly #device: GPUDevice;
  readonly #pool: HostPagePool;
  /** True when recalls are plain copies into the caches (NHD pool, or HND slots). */
  readonly #copies: boolean;
  readonly #caches: RecallCaches;
  readonly #sizes: KvLayoutSizes;
  readonly #ring: StagingRing;
  #queue: Chunk[] = [];
  #pumping = false;
  #pending = new Set<RecallState>();
  #totals = { recalls: 0, pages: 0, bytes: 0, chunks: 0, copies: 0, ms: 0, waitMs: 0, copyMs: 0 };
  #disposed = false;

  /** Use {@linkcode createRecaller}. */
  constructor(device: GPUDevice, pool: HostPagePool, options: RecallerOptions) {
    assertDevice(device, "create a recaller");
    const action = "create a recaller";
    assertObject("options", options, action);
    this.#sizes = kvLayoutSizes(pool, action);
    const caches = options.caches;
    if (typeof caches !== "function" && !Array.isArray(caches)) {
      throw new TypeError(
        `Cannot ${action} as 'caches' must be an array or a function: received ${
          describeValue(caches)
        }`,
      );
    }
    const chunking = options.chunk ?? "layer";
    assertOneOf("chunk", chunking, CHUNKINGS, action);
    const headsPerChunk = options.headsPerChunk ?? Math.max(1, Math.floor(pool.kvHeads / 2));
    assertInteger("headsPerChunk", headsPerChunk, action, 1);
    const maxChunkBytes = options.maxChunkBytes ?? 4 << 20;
    assertInteger("maxChunkBytes", maxChunkBytes, action, this.#sizes.runBytes);
    const buffering = options.buffering ?? "double";
    assertOneOf("buffering", buffering, BUFFERINGS, action);
    const staging = options.staging ?? "write-buffer";
    assertOneOf("staging", staging, STAGINGS, action);
    const limit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
    const slotLayout = options.slotLayout ?? "nhd";
    assertOneOf("slotLayout", slotLayout, SLOT_LAYOUTS, action);
    const hndPath = options.hndPath ?? "staged";
    assertOneOf("hndPath", hndPath, ["direct", "staged"], action);
    const deferSubmit = options.deferSubmit ?? false;
    assertBoolean("deferSubmit", deferSubmit, action);
    if (deferSubmit && (staging !== "write-buffer" || buffering !== "double")) {
      throw new RangeError(
        `Cannot ${action} as 'deferSubmit' needs staging "write-buffer" and buffering "double": received staging "${staging}", buffering "${buffering}"`,
      );
    }
    if (slotLayout === "hnd" && (this.#sizes.runBytes / 2) % 4 !== 0) {
      throw new RangeError(
        `Cannot ${action} as a head's page of HND slots must be a multiple of 4 bytes to be copied: received ${
          this.#sizes.runBytes / 2
        } bytes (pageSize * headDim of ${pool.dtype})`,
      );
    }
    // Which path this recaller takes: a kernel scatter, or plain copies.
    this.#copies = pool.layout === "nhd" || slotLayout === "hnd";
    this.#device = device;
    this.#pool = pool;
    this.#caches = caches;
    this.#ring = new StagingRing({
      device,
      pool,
      sizes: this.#sizes,
      label: options.label ?? "freekv recall",
      chunking,
      headsPerChunk,
      maxRuns: Math.max(1, Math.floor(Math.min(maxChunkBytes, limit) / this.#sizes.runBytes)),
      buffering,
      staging,
      slotLayout,
      direct: pool.layout === "nhd" || (slotLayout === "hnd" && hndPath === "direct"),
      deferSubmit,
    }, { disposed: () => this.#disposed, queued: () => this.#queue.length });
  }

  #cachesOf(layer: number, action: string): NhdCacheBuffers {
    const c = typeof this.#caches === "function"
      ? this.#caches(layer)
      : (this.#caches as readonly NhdCacheBuffers[])[layer];
    if (c === null || typeof c !== "object") {
      throw new TypeError(
        `Cannot ${action} as 'caches' must give the buffers of layer ${layer}: received ${
          describeValue(c)
        }`,
      );
    }
    const need = this.#copies ? GPUBufferUsage.COPY_DST : GPUBufferUsage.STORAGE;
    const needName = this.#copies ? "COPY_DST" : "STORAGE";
    for (const name of ["kCache", "vCache"] as const) {
      const b = c[name];
      if (!(b instanceof GPUBuffer) || (b.usage & need) === 0) {
        throw new TypeError(
          `Cannot ${action} as '${name}' of layer ${layer} must be a GPUBuffer with ${needName} usage: received ${
            describeValue(b)
          }`,
        );
      }
      const limit = this.#device.limits.maxStorageBufferBindingSize;
      if (!this.#copies && b.size > limit) {
        throw new RangeError(
          `Cannot ${action} as '${name}' of layer ${layer} must be at most maxStorageBufferBindingSize (${limit} bytes): received ${b.size} bytes`,
        );
      }
    }
    return c;
  }

  /**
   * Starts recalling `jobs` and returns at once. Checks everything first and
   * throws `RangeError`/`TypeError` before anything moves: layer out of
   * range, a page never offloaded, a slot outside the layer's cache, the same
   * (layer, head, slot) twice. Await `done` now (synchronous use) or later
   * (speculative use); recalls run in call order.
   */
  recall(jobs: readonly RecallJob[]): RecallHandle {
    const action = "recall pages";
    if (this.#disposed) throw disposedError(action, "recaller");
    if (!Array.isArray(jobs)) {
      throw new TypeError(
        `Cannot ${action} as 'jobs' must be an array: received ${describeValue(jobs)}`,
      );
    }
    const pool = this.#pool;
    const byLayer = new Map<
      number,
      { caches: NhdCacheBuffers; slots: number; jobs: RecallJob[] }
    >();
    // (layer, head) * 2^32 + slot: each written once per recall.
    const seen = new Set<number>();
    // The checks' messages are built only for a job that fails them: a
    // recall of a thousand runs should not build thousands of strings.
    const within = (x: unknown, max: number) =>
      typeof x === "number" && Number.isInteger(x) && x >= 0 && x <= max;
    jobs.forEach((job, j) => {
      if (
        !within(job?.layer, pool.layers - 1) || !within(job.head, pool.kvHeads - 1) ||
        !within(job.page, 2 ** 32 - 1)
      ) {
        assertInteger(`jobs[${j}].layer`, job?.layer, action, 0, pool.layers - 1);
        assertInteger(`jobs[${j}].head`, job.head, action, 0, pool.kvHeads - 1);
        assertInteger(`jobs[${j}].page`, job.page, action, 0, 2 ** 32 - 1);
      }
      let entry = byLayer.get(job.layer);
      if (!entry) {
        const caches = this.#cachesOf(job.layer, action);
        const slots = Math.min(
          Math.floor(caches.kCache.size / this.#sizes.slotBytes),
          Math.floor(caches.vCache.size / this.#sizes.slotBytes),
        );
        entry = { caches, slots, jobs: [] };
        byLayer.set(job.layer, entry);
      }
      if (!within(job.slot, entry.slots - 1)) {
        assertInteger(`jobs[${j}].slot`, job.slot, action, 0, entry.slots - 1);
      }
      if (!pool.isOffloaded(job)) {
        throw new RangeError(
          `Cannot ${action} as every page must have been offloaded: received layer ${job.layer} head ${job.head} page ${job.page} (jobs[${j}]), never offloaded`,
        );
      }
      const key = (job.layer * pool.kvHeads + job.head) * 2 ** 32 + job.slot;
      if (seen.has(key)) {
        throw new RangeError(
          `Cannot ${action} as each (layer, head, slot) may be written once per recall: received layer ${job.layer} head ${job.head} slot ${job.slot} twice`,
        );
      }
      seen.add(key);
      entry.jobs.push({ layer: job.layer, head: job.head, page: job.page, slot: job.slot });
    });

    const stats: RecallStats = {
      pages: jobs.length,
      bytes: jobs.length * this.#sizes.runBytes,
      chunks: 0,
      copies: 0,
      ms: 0,
      waitMs: 0,
      copyMs: 0,
    };
    const state = {
      stats,
      t0: performance.now(),
      chunksLeft: 0,
      failed: false,
      done: null,
    } as unknown as RecallState;
    state.submitted = new Promise<void>((res, rej) => {
      state.resolveSubmitted = res;
      state.rejectSubmitted = rej;
    });
    state.submitted.catch(() => {}); // failures also reach `done` when asked for
    const chunks = this.#ring.chunks(state, byLayer);
    state.chunksLeft = chunks.length;
    stats.chunks = chunks.filter((c) => !c.fragmented).length;
    if (chunks.length === 0) {
      this.#submittedAll(state);
    } else {
      this.#pending.add(state);
      this.#queue.push(...chunks);
      this.#kick();
    }
    const done = () => this.#done(state);
    return {
      get done() {
        return done();
      },
      submitted: state.submitted,
      pages: stats.pages,
      bytes: stats.bytes,
    };
  }

  #submittedAll(state: RecallState) {
    this.#pending.delete(state);
    const t = this.#totals;
    t.recalls++;
    t.pages += state.stats.pages;
    t.bytes += state.stats.bytes;
    t.chunks += state.stats.chunks;
    t.copies += state.stats.copies;
    t.waitMs += state.stats.waitMs;
    t.copyMs += state.stats.copyMs;
    state.resolveSubmitted();
  }

  #done(state: RecallState): Promise<RecallStats> {
    if (!state.done) {
      state.done = (async () => {
        await state.submitted;
        this.#ring.sendAll();
        // The caller waits for the GPU now anyway: re-map idle staging too.
        this.#ring.releaseAll();
        await this.#device.queue.onSubmittedWorkDone();
        state.stats.ms = performance.now() - state.t0;
        this.#totals.ms += state.stats.ms;
        return { ...state.stats };
      })();
    }
    return state.done;
  }

  #kick() {
    if (this.#pumping) return;
    this.#pumping = true;
    this.#pump().finally(() => {
      this.#pumping = false;
      if (this.#queue.length && !this.#disposed) this.#kick();
    });
  }

  async #pump(): Promise<void> {
    await null; // let recall() return before any copying starts
    while (this.#queue.length && !this.#disposed) {
      const chunk = this.#queue.shift()!;
      const state = chunk.state;
      if (state.failed) continue;
      try {
        if (chunk.fragmented) this.#ring.fragmented(chunk);
        else await this.#ring.staged(chunk);
        state.chunksLeft--;
        if (state.chunksLeft === 0) this.#submittedAll(state);
      } catch (error) {
        this.#fail(state, error);
      }
    }
  }

  #fail(state: RecallState, error: unknown) {
    if (state.failed) return;
    state.failed = true;
    this.#pending.delete(state);
    state.rejectSubmitted(error);
  }

  /**
   * The command buffers held by `deferSubmit`, oldest first, handed over:
   * submit them before anything that reads the recalled slots. Empty
   * without `deferSubmit`.
   */
  takeCommandBuffers(): GPUCommandBuffer[] {
    return this.#ring.takeHeld();
  }

  /** Cumulative figures. */
  stats(): RecallerStats {
    return { ...this.#totals, inFlight: this.#pending.size };
  }

  /** Waits until every recall started so far has finished (failures are ignored). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.#pending].map((s) => s.submitted));
    this.#ring.sendAll();
    this.#ring.releaseAll();
    await this.#device.queue.onSubmittedWorkDone();
  }

  /** Destroys the staging buffers; recalls not yet submitted reject. */
  [Symbol.dispose](): void {
    this.#disposed = true;
    const error = disposedError("recall pages", "recaller");
    for (const chunk of this.#queue) this.#fail(chunk.state, error);
    this.#queue = [];
    this.#ring[Symbol.dispose]();
  }
}

/**
 * Creates a {@linkcode Recaller} from `pool` into the caches given by
 * `options.caches`; `pool.layout` picks the path (`"hnd"`: staged, chunked
 * and double-buffered; `"nhd"`: one `writeBuffer` per token fragment).
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { HostPagePool } from "./host_pool.ts";
 * import { createRecaller } from "./recall.ts";
 * using gpu = await requestGpu();
 * using pool = new HostPagePool({ layers: 1, kvHeads: 1, headDim: 4, pageSize: 2 });
 * const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
 * const kCache = gpu.device.createBuffer({ label: "k", size: 64, usage });
 * const vCache = gpu.device.createBuffer({ label: "v", size: 64, usage });
 * using recaller = createRecaller(gpu.device, pool, { caches: [{ kCache, vCache }] });
 * try {
 *   recaller.recall([{ layer: 0, head: 0, page: 0, slot: 0 }]);
 * } catch (e) {
 *   console.log((e as Error).name); // RangeError (page never offloaded)
 * }
 * ```
 */
export function createRecaller(
  device: GPUDevice,
  pool: HostPagePool,
  options: RecallerOptions,
): Recaller {
  return new Recaller(device, pool, options);
}
