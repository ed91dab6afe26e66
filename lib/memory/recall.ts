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
import {
  HndToNhdPlan,
  type KvLayoutSizes,
  kvLayoutSizes,
  type NhdCacheBuffers,
  type RunSlotHeadJob,
} from "../kernels/layout.ts";
import { assertDevice, assertInteger, assertOneOf, describeValue } from "../gpu/errors.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";

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
}

/** Figures of one recall. */
export interface RecallStats {
  /** (layer, head, page) runs recalled. */
  pages: number;
  /** Bytes recalled. */
  bytes: number;
  /** Chunks it was cut into (0 for the fragmented path). */
  chunks: number;
  /** Copies issued: coalesced staging copies, or `writeBuffer` fragments. */
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
   * Resolves once every copy of the recall is submitted: work the caller
   * submits afterwards is ordered after the recall by the queue.
   */
  submitted: Promise<void>;
  /** Runs recalled. */
  pages: number;
  /** Bytes recalled. */
  bytes: number;
}

/** Cumulative figures of a {@linkcode Recaller}. */
export interface RecallerStats {
  /** Recalls whose copies were all submitted. */
  recalls: number;
  /** Runs recalled. */
  pages: number;
  /** Bytes recalled. */
  bytes: number;
  /** Chunks processed. */
  chunks: number;
  /** Copies issued. */
  copies: number;
  /** Sum of per-recall `ms`, over the recalls whose `done` was read. */
  ms: number;
  /** Sum of per-recall `waitMs`. */
  waitMs: number;
  /** Sum of per-recall `copyMs`. */
  copyMs: number;
  /** Recalls not fully submitted yet. */
  inFlight: number;
}

interface RecallState {
  stats: RecallStats;
  t0: number;
  chunksLeft: number;
  failed: boolean;
  submitted: Promise<void>;
  resolveSubmitted: () => void;
  rejectSubmitted: (e: unknown) => void;
  // Created on first access of `handle.done`: finding out that the GPU is
  // done blocks the thread in Deno, so it is done only when asked for.
  done: Promise<RecallStats> | null;
}

interface Segment {
  layer: number;
  caches: NhdCacheBuffers;
  jobs: RecallJob[];
}

interface Chunk {
  state: RecallState;
  segments: Segment[];
  runs: number;
  fragmented: boolean;
}

interface Slot {
  index: number;
  map: GPUBuffer | null;
  gpu: GPUBuffer | null;
  capacity: number;
  plans: HndToNhdPlan[];
  ready: Promise<unknown>;
  // Used by submitted work and not re-mapped yet (mapped staging).
  needsRelease: boolean;
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
  readonly #caches: RecallCaches;
  readonly #chunking: RecallChunking;
  readonly #headsPerChunk: number;
  readonly #maxRuns: number;
  readonly #buffering: RecallBuffering;
  readonly #staging: RecallStaging;
  readonly #label: string;
  readonly #sizes: KvLayoutSizes;
  #slots: Slot[] = [];
  #next = 0;
  #queue: Chunk[] = [];
  #pumping = false;
  #pending = new Set<RecallState>();
  #totals = { recalls: 0, pages: 0, bytes: 0, chunks: 0, copies: 0, ms: 0, waitMs: 0, copyMs: 0 };
  #disposed = false;

  /** Use {@linkcode createRecaller}. */
  constructor(device: GPUDevice, pool: HostPagePool, options: RecallerOptions) {
    assertDevice(device, "create a recaller");
    const action = "create a recaller";
    if (options === null || typeof options !== "object") {
      throw new TypeError(
        `Cannot ${action} as 'options' must be an object: received ${describeValue(options)}`,
      );
    }
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
    this.#device = device;
    this.#pool = pool;
    this.#caches = caches;
    this.#chunking = chunking;
    this.#headsPerChunk = headsPerChunk;
    this.#maxRuns = Math.max(1, Math.floor(Math.min(maxChunkBytes, limit) / this.#sizes.runBytes));
    this.#buffering = buffering;
    this.#staging = staging;
    this.#label = options.label ?? "freekv recall";
    const count = buffering === "double" ? 2 : 1;
    for (let index = 0; index < count; index++) {
      this.#slots.push({
        index,
        map: null,
        gpu: null,
        capacity: 0,
        plans: [],
        ready: Promise.resolve(),
        needsRelease: false,
      });
    }
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
    const need = this.#pool.layout === "nhd" ? GPUBufferUsage.COPY_DST : GPUBufferUsage.STORAGE;
    const needName = this.#pool.layout === "nhd" ? "COPY_DST" : "STORAGE";
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
      if (this.#pool.layout === "hnd" && b.size > limit) {
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
    if (this.#disposed) throw new TypeError(`Cannot ${action} as the recaller was disposed`);
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
    const seen = new Set<string>();
    jobs.forEach((job, j) => {
      assertInteger(`jobs[${j}].layer`, job?.layer, action, 0, pool.layers - 1);
      assertInteger(`jobs[${j}].head`, job.head, action, 0, pool.kvHeads - 1);
      assertInteger(`jobs[${j}].page`, job.page, action, 0, 2 ** 32 - 1);
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
      assertInteger(`jobs[${j}].slot`, job.slot, action, 0, entry.slots - 1);
      if (!pool.isOffloaded(job)) {
        throw new RangeError(
          `Cannot ${action} as every page must have been offloaded: received layer ${job.layer} head ${job.head} page ${job.page} (jobs[${j}]), never offloaded`,
        );
      }
      const key = `${job.layer}:${job.head}:${job.slot}`;
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
    const chunks = this.#chunks(state, byLayer);
    state.chunksLeft = chunks.length;
    stats.chunks = pool.layout === "nhd" ? 0 : chunks.length;
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
        // The caller waits for the GPU now anyway: re-map idle staging too.
        for (const slot of this.#slots) this.#release(slot);
        await this.#device.queue.onSubmittedWorkDone();
        state.stats.ms = performance.now() - state.t0;
        this.#totals.ms += state.stats.ms;
        return { ...state.stats };
      })();
    }
    return state.done;
  }

  #chunks(
    state: RecallState,
    byLayer: Map<number, { caches: NhdCacheBuffers; jobs: RecallJob[] }>,
  ): Chunk[] {
    const out: Chunk[] = [];
    if (byLayer.size === 0) return out;
    const segments = [...byLayer.entries()].map(([layer, e]) => ({
      layer,
      caches: e.caches,
      // Sorted by (head, page) so that consecutive pages of a head coalesce.
      jobs: e.jobs.sort((a, b) => a.head - b.head || a.page - b.page),
    }));
    if (this.#pool.layout === "nhd") {
      return [{ state, segments, runs: 0, fragmented: true }];
    }
    const max = this.#maxRuns;
    const push = (segs: Segment[]) => {
      const runs = segs.reduce((n, s) => n + s.jobs.length, 0);
      out.push({ state, segments: segs, runs, fragmented: false });
    };
    const cut = (seg: Segment) => {
      for (let i = 0; i < seg.jobs.length; i += max) {
        push([{ ...seg, jobs: seg.jobs.slice(i, i + max) }]);
      }
    };
    if (this.#chunking === "layer") {
      for (const seg of segments) cut(seg);
    } else if (this.#chunking === "heads") {
      for (const seg of segments) {
        const groups = new Map<number, RecallJob[]>();
        for (const job of seg.jobs) {
          const g = Math.floor(job.head / this.#headsPerChunk);
          if (!groups.has(g)) groups.set(g, []);
          groups.get(g)!.push(job);
        }
        for (const group of groups.values()) cut({ ...seg, jobs: group });
      }
    } else {
      let current: Segment[] = [];
      let runs = 0;
      for (const seg of segments) {
        let i = 0;
        while (i < seg.jobs.length) {
          const take = Math.min(max - runs, seg.jobs.length - i);
          current.push({ ...seg, jobs: seg.jobs.slice(i, i + take) });
          runs += take;
          i += take;
          if (runs === max) {
            push(current);
            current = [];
            runs = 0;
          }
        }
      }
      if (current.length) push(current);
    }
    return out;
  }

  #kick() {
    if (this.#pumping) return;
    this.#pumping = true;
    this.#pump().finally(() => {
      this.#pumping = false;
      if (this.#queue.length && !this.#disposed) this.#kick();
    });
  }

  // Re-maps a mapped staging buffer used by submitted work. In Deno this
  // call blocks until the queue is idle, so it is made only where that
  // costs least: before the next chunk is submitted, or when asked for done.
  #release(slot: Slot) {
    if (!slot.needsRelease) return;
    slot.needsRelease = false;
    if (slot.map) {
      slot.ready = slot.map.mapAsync(GPUMapMode.WRITE);
      slot.ready.catch(() => {});
    }
  }

  async #pump(): Promise<void> {
    await null; // let recall() return before any copying starts
    while (this.#queue.length && !this.#disposed) {
      const chunk = this.#queue.shift()!;
      const state = chunk.state;
      if (state.failed) continue;
      try {
        if (chunk.fragmented) this.#fragmented(chunk);
        else await this.#staged(chunk);
        state.chunksLeft--;
        if (state.chunksLeft === 0) this.#submittedAll(state);
      } catch (error) {
        this.#fail(state, error);
      }
    }
  }

  async #staged(chunk: Chunk): Promise<void> {
    const state = chunk.state;
    const slot = this.#slots[this.#next];
    this.#next = (this.#next + 1) % this.#slots.length;
    const t0 = performance.now();
    this.#release(slot);
    await slot.ready;
    const t1 = performance.now();
    state.stats.waitMs += t1 - t0;
    if (this.#disposed) throw new TypeError("Cannot recall pages as the recaller was disposed");
    const runBytes = this.#sizes.runBytes;
    const bytes = chunk.runs * runBytes;
    this.#ensureCapacity(slot, chunk.runs);
    const mapped = this.#staging === "mapped";
    const range = mapped ? new Uint8Array(slot.map!.getMappedRange(0, bytes)) : null;
    // Gather, coalescing runs that are contiguous in the pool.
    let run = 0;
    let copies = 0;
    let srcBytes: Uint8Array<ArrayBuffer> | null = null;
    let srcStart = 0, dstStart = 0, length = 0;
    const flushCopy = () => {
      if (length === 0) return;
      if (range) range.set(srcBytes!.subarray(srcStart, srcStart + length), dstStart);
      else this.#device.queue.writeBuffer(slot.gpu!, dstStart, srcBytes!, srcStart, length);
      copies++;
      length = 0;
    };
    const scatters: RunSlotHeadJob[][] = [];
    for (const seg of chunk.segments) {
      const scatter: RunSlotHeadJob[] = [];
      for (const job of seg.jobs) {
        if (!this.#pool.isOffloaded(job)) {
          flushCopy();
          if (range) slot.map!.unmap();
          slot.needsRelease = true;
          throw new RangeError(
            `Cannot recall pages as page ${job.page} of layer ${job.layer} head ${job.head} left the host pool before it was recalled`,
          );
        }
        const loc = this.#pool.location(job);
        if (
          length > 0 && loc.bytes === srcBytes && loc.byteOffset === srcStart + length
        ) {
          length += runBytes;
        } else {
          flushCopy();
          srcBytes = loc.bytes;
          srcStart = loc.byteOffset;
          dstStart = run * runBytes;
          length = runBytes;
        }
        scatter.push({ run, slot: job.slot, head: job.head });
        run++;
      }
      scatters.push(scatter);
    }
    flushCopy();
    while (slot.plans.length < chunk.segments.length) {
      slot.plans.push(
        new HndToNhdPlan(this.#device, {
          pageSize: this.#pool.pageSize,
          kvHeads: this.#pool.kvHeads,
          headDim: this.#pool.headDim,
          dtype: this.#pool.dtype,
          label: `${this.#label} scatter ${slot.index}.${slot.plans.length}`,
        }),
      );
    }
    const encoder = this.#device.createCommandEncoder({ label: `${this.#label} chunk` });
    if (mapped) {
      slot.map!.unmap();
      encoder.copyBufferToBuffer(slot.map!, 0, slot.gpu!, 0, bytes);
    }
    chunk.segments.forEach((seg, i) => {
      slot.plans[i].set({ ...seg.caches, runs: slot.gpu! }, scatters[i]);
      slot.plans[i].encode(encoder);
    });
    const t2 = performance.now();
    state.stats.copyMs += t2 - t1;
    state.stats.copies += copies;
    // Double buffering with mapped staging: when more chunks follow, re-map
    // the other slot now, after this chunk's gather overlapped its GPU
    // work, and before submitting this chunk (Deno blocks until idle).
    if (this.#queue.length > 0) {
      for (const other of this.#slots) if (other !== slot) this.#release(other);
    }
    this.#device.queue.submit([encoder.finish()]);
    if (mapped) slot.needsRelease = true;
    if (this.#buffering === "single") {
      // The ablation: nothing overlaps, each chunk waits for the previous one.
      if (mapped) this.#release(slot);
      else slot.ready = this.#device.queue.onSubmittedWorkDone();
    }
    // With write-buffer staging, refilling a GPU staging buffer is a queue
    // operation ordered after the scatter that last read it: no CPU wait.
    state.stats.waitMs += performance.now() - t2;
  }

  #ensureCapacity(slot: Slot, runs: number) {
    if (slot.capacity >= runs) return;
    const capacity = Math.min(this.#maxRuns, 2 ** Math.ceil(Math.log2(runs)));
    const size = capacity * this.#sizes.runBytes;
    slot.gpu?.destroy();
    slot.map?.destroy();
    slot.gpu = createTrackedBuffer(this.#device, {
      label: `${this.#label} staging ${slot.index}`,
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    });
    slot.map = this.#staging === "mapped"
      ? createTrackedBuffer(this.#device, {
        label: `${this.#label} upload ${slot.index}`,
        size,
        usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC,
        mappedAtCreation: true,
      })
      : null;
    slot.capacity = capacity;
  }

  #fragmented(chunk: Chunk) {
    const state = chunk.state;
    const t0 = performance.now();
    const pool = this.#pool;
    const { rowBytes } = this.#sizes;
    const P = pool.pageSize, H = pool.kvHeads;
    const half = P * H * rowBytes;
    const queue = this.#device.queue;
    let copies = 0;
    for (const seg of chunk.segments) {
      for (const job of seg.jobs) {
        if (!pool.isOffloaded(job)) {
          throw new RangeError(
            `Cannot recall pages as page ${job.page} of layer ${job.layer} head ${job.head} left the host pool before it was recalled`,
          );
        }
        const { bytes, byteOffset } = pool.location(job);
        for (let t = 0; t < P; t++) {
          const src = byteOffset + (t * H + job.head) * rowBytes;
          const dst = ((job.slot * P + t) * H + job.head) * rowBytes;
          queue.writeBuffer(seg.caches.kCache, dst, bytes, src, rowBytes);
          queue.writeBuffer(seg.caches.vCache, dst, bytes, src + half, rowBytes);
          copies += 2;
        }
      }
    }
    state.stats.copies += copies;
    state.stats.copyMs += performance.now() - t0;
  }

  #fail(state: RecallState, error: unknown) {
    if (state.failed) return;
    state.failed = true;
    this.#pending.delete(state);
    state.rejectSubmitted(error);
  }

  /** Cumulative figures. */
  stats(): RecallerStats {
    return { ...this.#totals, inFlight: this.#pending.size };
  }

  /** Waits until every recall started so far has finished (failures are ignored). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.#pending].map((s) => s.submitted));
    for (const slot of this.#slots) this.#release(slot);
    await this.#device.queue.onSubmittedWorkDone();
  }

  /** Destroys the staging buffers; recalls not yet submitted reject. */
  [Symbol.dispose](): void {
    this.#disposed = true;
    const error = new TypeError("Cannot recall pages as the recaller was disposed");
    for (const chunk of this.#queue) this.#fail(chunk.state, error);
    this.#queue = [];
    for (const slot of this.#slots) {
      slot.gpu?.destroy();
      slot.map?.destroy();
      for (const p of slot.plans) p[Symbol.dispose]();
      slot.plans = [];
    }
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
