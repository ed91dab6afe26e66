/**
 * The host side of the offload policies: the host page pool, the offloader
 * that backs full pages up, and the recaller that brings selected pages back
 * into GPU pool slots. Internal to the engine.
 *
 * @module
 */

import { HostPagePool } from "../memory/host_pool.ts";
import { createOffloader, type Offloader, type OffloadJob } from "../memory/offload.ts";
import { createRecaller, type Recaller, type RecallJob } from "../memory/recall.ts";
import type { LayerState } from "./layer.ts";
import { poolSlot } from "./geometry.ts";
import type { ResolvedEngineOptions } from "./options.ts";
import type { StatsAccumulator } from "./stats.ts";

/** Host pool, offload and recall of one engine. */
export class OffloadMemory implements Disposable {
  readonly pool: HostPagePool;
  readonly #device: GPUDevice;
  readonly #offloader: Offloader;
  readonly #recaller: Recaller;
  readonly #o: ResolvedEngineOptions;
  readonly #stats: StatsAccumulator;
  readonly #maxPages: number;
  /** Backups in encoders already submitted whose maps have not started. */
  #submittedBackups = 0;
  #disposed = false;

  constructor(
    device: GPUDevice,
    o: ResolvedEngineOptions,
    layers: readonly LayerState[],
    stats: StatsAccumulator,
    maxPages: number,
  ) {
    this.#device = device;
    this.#o = o;
    this.#stats = stats;
    this.#maxPages = maxPages;
    this.pool = new HostPagePool({
      layers: o.numLayers,
      kvHeads: o.numKvHeads,
      headDim: o.headDim,
      pageSize: o.pageSize,
      dtype: o.dtype,
      layout: o.hostLayout,
    });
    this.#offloader = createOffloader(device, this.pool, { slotLayout: o.slotLayout });
    this.#recaller = createRecaller(device, this.pool, {
      buffering: o.recallBuffering,
      staging: o.recallStaging,
      slotLayout: o.slotLayout,
      // A step's recall goes with the step's submit; one chunk for all its
      // layers (up to 4 MiB) holds it without a third staging refill.
      deferSubmit: o.recallStaging === "write-buffer" && o.recallBuffering === "double",
      chunk: "bytes",
      caches: (layer: number) => ({ kCache: layers[layer].kCache, vCache: layers[layer].vCache }),
    });
  }

  /** Records the host backup of full pages of `layer` (NHD slots of `kCache`/`vCache`). */
  backup(
    encoder: GPUCommandEncoder,
    layer: number,
    kCache: GPUBuffer,
    vCache: GPUBuffer,
    jobs: OffloadJob[],
  ): void {
    this.#offloader.encode(encoder, { layer, kCache, vCache, jobs });
    this.#stats.pagesOffloaded += jobs.length * this.#o.numKvHeads;
  }

  /**
   * Submits `commands` behind the recall copies held for them. Their
   * backups' maps start at the next `startBackupMaps` (or `flush`, or
   * `drain`).
   */
  submit(commands: GPUCommandBuffer): void {
    this.#device.queue.submit([...this.#recaller.takeCommandBuffers(), commands]);
    this.#submittedBackups = this.#offloader.unflushed;
  }

  /**
   * Starts the maps of the backups submitted so far, not of those recorded
   * into an encoder not yet submitted. Each map blocks the thread until the
   * queue is idle (Deno 2.9): call it just before a submit, which would
   * block as long.
   */
  startBackupMaps(): void {
    this.#offloader.flush(Math.min(this.#submittedBackups, this.#offloader.unflushed));
    this.#submittedBackups = 0;
  }

  /** Starts the maps of every backup recorded so far (all submitted: call right after a submit). */
  flush(): void {
    this.#offloader.flush();
    this.#submittedBackups = 0;
  }

  /**
   * Makes `pages` of (sequence `b`, KV head `h`) of `state` resident in its
   * slot cache; adds the recalls this needs to `jobs`.
   */
  admit(
    state: LayerState,
    b: number,
    h: number,
    pages: ArrayLike<number>,
    tick: number,
    jobs: RecallJob[],
  ): void {
    const bh = b * this.#o.numKvHeads + h;
    const loads = state.caches![bh].admit(pages, tick);
    if (loads.length) state.dirtyRows.add(bh);
    for (const { page, slot } of loads) {
      jobs.push({
        layer: state.index,
        head: h,
        page: b * this.#maxPages + page,
        slot: b * state.slotsPerSeq + poolSlot(this.#o, slot),
      });
    }
  }

  /** Recalls `jobs`; resolves once their copies are submitted (queue order does the rest). */
  async recall(jobs: RecallJob[]): Promise<void> {
    if (!jobs.length || this.#disposed) return;
    // A page's backup may still be on its way to the host.
    if (jobs.some((j) => !this.pool.isOffloaded(j))) {
      const t0 = performance.now();
      this.#submittedBackups = 0; // the drain flushes them all
      await this.#offloader.drain();
      this.#stats.wait(performance.now() - t0);
      if (this.#disposed) return;
    }
    const handle = this.#recaller.recall(jobs);
    await handle.submitted;
    this.#stats.recalled(handle.pages, handle.bytes);
  }

  /** Submits the held recall copies, then waits for every backup to reach the host. */
  async drain(): Promise<void> {
    const held = this.#recaller.takeCommandBuffers();
    if (held.length) this.#device.queue.submit(held);
    this.#submittedBackups = 0;
    await this.#offloader.drain();
  }

  /** Forgets the host pages of sequence `seq`. */
  release(seq: number): void {
    this.pool.releasePages(seq * this.#maxPages, this.#maxPages);
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
    this.#recaller[Symbol.dispose]();
    this.#offloader[Symbol.dispose]();
    this.pool[Symbol.dispose]();
  }
}
