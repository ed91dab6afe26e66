/**
 * The staging side of recall: how a recall's jobs are cut into chunks, and
 * the staging buffers that carry them (gathered from the host pool by
 * JavaScript, copied to the GPU, scattered into the slots by the HND -> NHD
 * kernel), or the fragmented baseline of NHD pools. Internal to
 * `Recaller`.
 *
 * @module
 */
import type { HostPagePool, PageLocation } from "./host_pool.ts";
import type {
  RecallBuffering,
  RecallChunking,
  RecallJob,
  RecallStaging,
  RecallStats,
} from "./recall.ts";
import {
  createHndToNhd,
  type HndToNhd,
  type HndToNhdPlan,
  type KvLayoutSizes,
  type NhdCacheBuffers,
  type RunSlotHeadJob,
} from "../kernels/layout.ts";
import { disposedError } from "../gpu/errors.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";
import { type SlotLayout, slotStrides } from "../kernels/slot_layout.ts";

/**
 * A range of runs bound for adjacent places of HND slots at least this long
 * (per K or V part) is written straight into the caches rather than through
 * the staging buffer: that saves the GPU a copy of its bytes, where a
 * `writeBuffer` call costs more than a copy command (measured on lavapipe
 * with `scripts/bench.ts --suite recall`, 16 KiB parts: one write per range
 * was slower than staged copies when ranges were one or two runs long).
 * Runs with no neighbour among the destinations that lie adjacent in the
 * pool over at least this many bytes likewise reach the staging buffer in
 * a write of their own instead of being gathered.
 */
export const DIRECT_RANGE_BYTES = 128 << 10;

/** The bookkeeping of one recall. */
export interface RecallState {
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

/** The jobs of one layer within a chunk. */
export interface Segment {
  layer: number;
  caches: NhdCacheBuffers;
  jobs: RecallJob[];
}

/** What one staging buffer carries at a time (or the fragmented path's whole recall). */
export interface Chunk {
  state: RecallState;
  segments: Segment[];
  runs: number;
  fragmented: boolean;
}

interface Slot {
  index: number;
  map: GPUBuffer | null;
  gpu: GPUBuffer | null;
  // Host side of write-buffer staging into HND slots: the chunk is gathered
  // here, then sent with one writeBuffer.
  host: Uint8Array<ArrayBuffer> | null;
  capacity: number;
  plans: HndToNhdPlan[];
  ready: Promise<unknown>;
  // Used by submitted work and not re-mapped yet (mapped staging).
  needsRelease: boolean;
  // Read by a held command buffer (deferSubmit): refilling it must wait for that submit.
  held: boolean;
}

/**
 * Throws unless every page of `chunk` is still in the pool (one may leave it
 * between `recall()` and its copies). Called before anything of the chunk is
 * written, so that a failed recall leaves staging and caches as they were.
 */
function assertStillOffloaded(pool: HostPagePool, chunk: Chunk): void {
  for (const seg of chunk.segments) {
    for (const job of seg.jobs) {
      if (!pool.isOffloaded(job)) {
        throw new RangeError(
          `Cannot recall pages as page ${job.page} of layer ${job.layer} head ${job.head} left the host pool before it was recalled`,
        );
      }
    }
  }
}

/** The settings of a {@linkcode StagingRing}, checked by the recaller. */
export interface StagingOptions {
  device: GPUDevice;
  pool: HostPagePool;
  sizes: KvLayoutSizes;
  label: string;
  chunking: RecallChunking;
  headsPerChunk: number;
  maxRuns: number;
  buffering: RecallBuffering;
  staging: RecallStaging;
  /** Layout of the cache slots. */
  slotLayout: SlotLayout;
  /** Copies straight from the pool into the slots (NHD pools, or HND runs into HND slots). */
  direct: boolean;
  /** Holds each chunk's command buffer for the caller to submit (write-buffer staging, double buffering). */
  deferSubmit: boolean;
}

/** What the ring asks its recaller. */
export interface StagingHooks {
  /** Whether the recaller was disposed. */
  disposed(): boolean;
  /** Chunks waiting after the current one. */
  queued(): number;
}

/** The staging buffers of a recaller (one or two) and the scatter plans that read them. */
export class StagingRing {
  readonly #device: GPUDevice;
  readonly #pool: HostPagePool;
  readonly #sizes: KvLayoutSizes;
  readonly #label: string;
  readonly #chunking: RecallChunking;
  readonly #headsPerChunk: number;
  readonly #maxRuns: number;
  readonly #buffering: RecallBuffering;
  readonly #staging: RecallStaging;
  readonly #slotLayout: SlotLayout;
  readonly #direct: boolean;
  readonly #deferSubmit: boolean;
  readonly #hooks: StagingHooks;
  #held: GPUCommandBuffer[] = [];
  #scatter?: HndToNhd;
  #slots: Slot[] = [];
  #next = 0;

  /** Creates the ring's slots (no buffers yet). */
  constructor(options: StagingOptions, hooks: StagingHooks) {
    this.#device = options.device;
    this.#pool = options.pool;
    this.#sizes = options.sizes;
    this.#label = options.label;
    this.#chunking = options.chunking;
    this.#headsPerChunk = options.headsPerChunk;
    this.#maxRuns = options.maxRuns;
    this.#buffering = options.buffering;
    this.#staging = options.staging;
    this.#slotLayout = options.slotLayout;
    this.#direct = options.direct;
    this.#deferSubmit = options.deferSubmit;
    this.#hooks = hooks;
    // A scatter into NHD slots ends every staged chunk: compile it now, not
    // at the first recall in the middle of a decode.
    if (!options.direct && options.slotLayout === "nhd") this.#scatterKernel();
    const count = options.buffering === "double" ? 2 : 1;
    for (let index = 0; index < count; index++) {
      this.#slots.push({
        index,
        map: null,
        gpu: null,
        host: null,
        capacity: 0,
        plans: [],
        ready: Promise.resolve(),
        needsRelease: false,
        held: false,
      });
    }
  }

  /** Hands over the held command buffers, oldest first (the caller submits them). */
  takeHeld(): GPUCommandBuffer[] {
    const held = this.#held;
    this.#held = [];
    for (const slot of this.#slots) slot.held = false;
    return held;
  }

  /** Submits the held command buffers, if any. */
  submitHeld(): void {
    if (this.#held.length) this.#device.queue.submit(this.takeHeld());
  }

  /**
   * Submits the held command buffers and the queue's pending writes (those
   * of the direct paths run only at a submit; an empty one sends them too).
   */
  sendAll(): void {
    this.#device.queue.submit(this.takeHeld());
  }

  /** Re-maps every mapped staging buffer used by submitted work (it blocks in Deno: see `#release`). */
  releaseAll(): void {
    for (const slot of this.#slots) this.#release(slot);
  }

  #scatterKernel(): HndToNhd {
    this.#scatter ??= createHndToNhd(this.#device, {
      pageSize: this.#pool.pageSize,
      kvHeads: this.#pool.kvHeads,
      headDim: this.#pool.headDim,
      dtype: this.#pool.dtype,
      label: `${this.#label} scatter`,
    });
    return this.#scatter;
  }

  /** Cuts a recall's jobs, grouped by layer, into chunks. */
  chunks(
    state: RecallState,
    byLayer: Map<number, { caches: NhdCacheBuffers; jobs: RecallJob[] }>,
  ): Chunk[] {
    const out: Chunk[] = [];
    if (byLayer.size === 0) return out;
    // Staged HND slots are gathered in destination order (slot, head), so
    // that runs bound for adjacent slots share one placement copy; the other
    // paths read the pool in (head, page) order, where consecutive pages of
    // a head coalesce.
    const byDestination = this.#slotLayout === "hnd" && !this.#direct;
    const byPool = (a: RecallJob, b: RecallJob) => a.head - b.head || a.page - b.page;
    const segments = [...byLayer.entries()].map(([layer, e]) => {
      if (!byDestination) return { layer, caches: e.caches, jobs: e.jobs.sort(byPool) };
      const jobs = e.jobs.sort((a, b) => a.slot - b.slot || a.head - b.head);
      // Where most runs have no neighbour among the destinations (a decode
      // step's recall into freed slots), pool order serves better: its
      // chunks hold consecutive pages of a head, which reach the staging in
      // one write.
      const place = (j: RecallJob) => j.slot * this.#pool.kvHeads + j.head;
      let neighboured = 0;
      jobs.forEach((j, i) => {
        if (
          (i > 0 && place(jobs[i - 1]) === place(j) - 1) ||
          (i + 1 < jobs.length && place(jobs[i + 1]) === place(j) + 1)
        ) neighboured++;
      });
      return {
        layer,
        caches: e.caches,
        jobs: 2 * neighboured < jobs.length ? jobs.sort(byPool) : jobs,
      };
    });
    if (this.#direct) {
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

  /**
   * Re-maps a mapped staging buffer used by submitted work. In Deno this
   * call blocks until the queue is idle, so it is made only where that
   * costs least: before the next chunk is submitted, or when asked for done.
   */
  #release(slot: Slot): void {
    if (!slot.needsRelease) return;
    slot.needsRelease = false;
    if (slot.map) {
      slot.ready = slot.map.mapAsync(GPUMapMode.WRITE);
      slot.ready.catch(() => {});
    }
  }

  /** Gathers `chunk` into the next staging buffer, then copies and scatters it on the GPU. */
  async staged(chunk: Chunk): Promise<void> {
    const state = chunk.state;
    const slot = this.#slots[this.#next];
    this.#next = (this.#next + 1) % this.#slots.length;
    const t0 = performance.now();
    // A writeBuffer lands before held work: refill a held slot only after submitting it.
    if (slot.held) this.submitHeld();
    this.#release(slot);
    await slot.ready;
    const t1 = performance.now();
    state.stats.waitMs += t1 - t0;
    if (this.#hooks.disposed()) throw disposedError("recall pages", "recaller");
    assertStillOffloaded(this.#pool, chunk);
    const runBytes = this.#sizes.runBytes;
    const bytes = chunk.runs * runBytes;
    this.#ensureCapacity(slot, chunk.runs);
    if (this.#slotLayout === "hnd") {
      this.#submit(chunk, slot, this.#gatherForHndSlots(chunk, slot), t1);
      return;
    }
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
      slot.plans.push(this.#scatterKernel().plan([]));
    }
    const encoder = this.#device.createCommandEncoder({ label: `${this.#label} chunk` });
    if (mapped) {
      slot.map!.unmap();
      encoder.copyBufferToBuffer(slot.map!, 0, slot.gpu!, 0, bytes);
    }
    chunk.segments.forEach((seg, i) => {
      slot.plans[i].update(scatters[i]);
      slot.plans[i].encode(encoder, { ...seg.caches, runs: slot.gpu! });
    });
    state.stats.copies += copies;
    this.#submit(chunk, slot, encoder, t1);
  }

  /**
   * Gathers a chunk bound for HND slots and records its placement. Runs are
   * taken in destination order, so that runs for adjacent (slot, head)
   * places (a whole slot, or neighbouring slots) form one range, which
   * leaves with one copy per cache: its K parts and its V parts are gathered
   * apart by JavaScript and reach the staging buffer in one write for the
   * chunk. A range of one run keeps its K|V order: it is gathered into the
   * same write, unless it belongs to a long piece of runs adjacent in the
   * pool, which is written from the pool as it lies. A long range is
   * written straight into the caches. Each `writeBuffer` costs wgpu a
   * staging allocation and a copy on the queue, more than gathering its
   * bytes costs (`deno run -A bench/staging_writes.ts`: 71 runs of 32 KiB,
   * one write each 1.9-2.3 ms to idle, gathered into one write 1.2-2.0
   * ms), so writes are kept to a few per chunk.
   */
  #gatherForHndSlots(chunk: Chunk, slot: Slot): GPUCommandEncoder {
    const { runBytes, slotBytes } = this.#sizes;
    const half = runBytes / 2;
    const queue = this.#device.queue;
    const mapped = this.#staging === "mapped";
    type Range = {
      seg: Segment;
      from: number;
      count: number;
      at: number;
      kind: "single" | "gathered" | "direct";
    };
    // Ranges of runs with adjacent destinations, in chunk order.
    const ranges: Range[] = [];
    for (const seg of chunk.segments) {
      let open: Range | null = null;
      seg.jobs.forEach((job, i) => {
        const at = job.slot * slotBytes + job.head * half;
        if (open && at === open.at + open.count * half) open.count++;
        else ranges.push(open = { seg, from: i, count: 1, at, kind: "single" });
      });
    }
    // Staging: [each single run as K|V][K parts of gathered runs][their V
    // parts]; the host side also holds the direct ranges, after those.
    let singles = 0, gathered = 0;
    for (const r of ranges) {
      r.kind = r.count === 1
        ? "single"
        : !mapped && r.count * half >= DIRECT_RANGE_BYTES
        ? "direct"
        : "gathered";
      if (r.kind === "single") singles++;
      else if (r.kind === "gathered") gathered += r.count;
    }
    const stagedBytes = (singles + gathered) * runBytes;
    const host = mapped
      ? new Uint8Array(slot.map!.getMappedRange(0, chunk.runs * runBytes))
      : slot.host!;
    const source = mapped ? slot.map! : slot.gpu!;
    const encoder = this.#device.createCommandEncoder({ label: `${this.#label} chunk` });
    // A writeBuffer lands before command buffers still held: send those
    // first, or a held copy of an earlier recall would land on top.
    if (singles + gathered < chunk.runs) this.submitHeld();
    let gather = 0, directAt = stagedBytes, copies = 0;
    // The runs that stand alone, with their pool (numbered in order of
    // appearance) and place there, for sorting.
    const alone: Array<{ range: Range; location: PageLocation; pool: number }> = [];
    const pools = new Map<ArrayBufferLike, number>();
    for (const r of ranges) {
      const length = r.count * half;
      if (r.kind === "single") {
        const location = this.#pool.location(r.seg.jobs[r.from]);
        let pool = pools.get(location.bytes.buffer);
        if (pool === undefined) pools.set(location.bytes.buffer, pool = pools.size);
        alone.push({ range: r, location, pool });
      } else {
        const k = r.kind === "direct" ? directAt : singles * runBytes + gather * half;
        const v = r.kind === "direct" ? directAt + length : k + gathered * half;
        for (let i = 0; i < r.count; i++) {
          const { bytes, byteOffset } = this.#pool.location(r.seg.jobs[r.from + i]);
          host.set(bytes.subarray(byteOffset, byteOffset + half), k + i * half);
          host.set(bytes.subarray(byteOffset + half, byteOffset + runBytes), v + i * half);
        }
        if (r.kind === "direct") {
          queue.writeBuffer(r.seg.caches.kCache, r.at, host, k, length);
          queue.writeBuffer(r.seg.caches.vCache, r.at, host, v, length);
          directAt += 2 * length;
        } else {
          encoder.copyBufferToBuffer(source, k, r.seg.caches.kCache, r.at, length);
          encoder.copyBufferToBuffer(source, v, r.seg.caches.vCache, r.at, length);
          gather += r.count;
        }
      }
      copies += 2;
    }
    // The runs that stand alone, in pool order, so that runs adjacent in the
    // pool (consecutive pages of a head) form one piece. A long piece reaches
    // the staging in one write straight from the pool; short ones are
    // gathered, as each write costs wgpu a staging allocation and a copy.
    alone.sort((a, b) => a.pool - b.pool || a.location.byteOffset - b.location.byteOffset);
    let piece: { bytes: Uint8Array<ArrayBuffer>; from: number; at: number; length: number } | null =
      null;
    // Start of the gathered bytes not yet written to the staging buffer. A
    // mapped staging buffer is the host side itself: everything is gathered.
    let spanStart = 0;
    const straightBytes = mapped ? Infinity : DIRECT_RANGE_BYTES;
    const flush = () => {
      if (!piece) return;
      const { bytes, from, at, length } = piece;
      if (length >= straightBytes) {
        if (at > spanStart) {
          queue.writeBuffer(slot.gpu!, spanStart, host, spanStart, at - spanStart);
        }
        queue.writeBuffer(slot.gpu!, at, bytes, from, length);
        spanStart = at + length;
      } else host.set(bytes.subarray(from, from + length), at);
      piece = null;
    };
    alone.forEach(({ range, location: { bytes, byteOffset } }, i) => {
      const k = i * runBytes;
      if (piece && piece.bytes === bytes && piece.from + piece.length === byteOffset) {
        piece.length += runBytes;
      } else {
        flush();
        piece = { bytes, from: byteOffset, at: k, length: runBytes };
      }
      encoder.copyBufferToBuffer(source, k, range.seg.caches.kCache, range.at, half);
      encoder.copyBufferToBuffer(source, k + half, range.seg.caches.vCache, range.at, half);
    });
    flush();
    if (mapped) slot.map!.unmap();
    else if (stagedBytes > spanStart) {
      queue.writeBuffer(slot.gpu!, spanStart, host, spanStart, stagedBytes - spanStart);
    }
    chunk.state.stats.copies += copies;
    return encoder;
  }

  /** Submits (or holds) a recorded chunk and settles its staging buffer's reuse. */
  #submit(chunk: Chunk, slot: Slot, encoder: GPUCommandEncoder, t1: number): void {
    const state = chunk.state;
    const mapped = this.#staging === "mapped";
    const t2 = performance.now();
    state.stats.copyMs += t2 - t1;
    // Double buffering with mapped staging: when more chunks follow, re-map
    // the other slot now, after this chunk's gather overlapped its GPU
    // work, and before submitting this chunk (Deno blocks until idle).
    if (this.#hooks.queued() > 0) {
      for (const other of this.#slots) if (other !== slot) this.#release(other);
    }
    if (this.#deferSubmit) {
      this.#held.push(encoder.finish());
      slot.held = true;
    } else {
      this.#device.queue.submit([encoder.finish()]);
    }
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

  #ensureCapacity(slot: Slot, runs: number): void {
    if (slot.capacity >= runs) return;
    const capacity = Math.min(this.#maxRuns, 2 ** Math.ceil(Math.log2(runs)));
    const size = capacity * this.#sizes.runBytes;
    slot.gpu?.destroy();
    slot.map?.destroy();
    slot.host = this.#staging === "write-buffer" && this.#slotLayout === "hnd"
      ? new Uint8Array(size)
      : null;
    // Mapped staging into HND slots places straight from the mapped buffer.
    slot.gpu = this.#staging === "mapped" && this.#slotLayout === "hnd"
      ? null
      : createTrackedBuffer(this.#device, {
        label: `${this.#label} staging ${slot.index}`,
        size,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
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

  /**
   * Copies straight from the pool into the slots: for an NHD pool the
   * fragmented baseline, one `writeBuffer` per (token, K/V) fragment; for an
   * HND pool into HND slots, two per run (its K part and its V part).
   */
  fragmented(chunk: Chunk): void {
    assertStillOffloaded(this.#pool, chunk);
    // These writeBuffers must land after the copies of earlier chunks.
    this.submitHeld();
    const state = chunk.state;
    const t0 = performance.now();
    const pool = this.#pool;
    const { rowBytes, runBytes, slotBytes } = this.#sizes;
    const P = pool.pageSize, H = pool.kvHeads;
    const half = P * H * rowBytes;
    const queue = this.#device.queue;
    const strides = slotStrides(this.#slotLayout, P, H);
    let copies = 0;
    if (pool.layout === "hnd") {
      const part = runBytes / 2;
      for (const seg of chunk.segments) {
        for (const job of seg.jobs) {
          const { bytes, byteOffset } = pool.location(job);
          const at = job.slot * slotBytes + job.head * part;
          queue.writeBuffer(seg.caches.kCache, at, bytes, byteOffset, part);
          queue.writeBuffer(seg.caches.vCache, at, bytes, byteOffset + part, part);
          copies += 2;
        }
      }
      if (!this.#deferSubmit) this.sendAll(); // else the caller's next submit sends them
      state.stats.copies += copies;
      state.stats.copyMs += performance.now() - t0;
      return;
    }
    for (const seg of chunk.segments) {
      for (const job of seg.jobs) {
        const { bytes, byteOffset } = pool.location(job);
        for (let t = 0; t < P; t++) {
          const src = byteOffset + (t * H + job.head) * rowBytes;
          const dst = (job.slot * strides.slot + t * strides.token + job.head * strides.head) *
            rowBytes;
          queue.writeBuffer(seg.caches.kCache, dst, bytes, src, rowBytes);
          queue.writeBuffer(seg.caches.vCache, dst, bytes, src + half, rowBytes);
          copies += 2;
        }
      }
    }
    if (!this.#deferSubmit) this.sendAll(); // else the caller's next submit sends them
    state.stats.copies += copies;
    state.stats.copyMs += performance.now() - t0;
  }

  /** Destroys the staging buffers and the scatter plans. */
  [Symbol.dispose](): void {
    for (const slot of this.#slots) {
      slot.gpu?.destroy();
      slot.map?.destroy();
      for (const p of slot.plans) p[Symbol.dispose]();
      slot.plans = [];
    }
    this.#scatter?.[Symbol.dispose]();
  }
}
