/**
 * A listening attention backend for the evaluation harness: wraps an
 * engine backend, copies every layer's query and key into GPU-side logs
 * (read back once, at the end of a pass, so the decode loop pays no extra
 * round trip) and notes which pages each KV head attended and which heads
 * freekv corrected in every step.
 *
 * @module
 */

import type {
  AttentionBackend,
  AttentionPrefillExtras,
  AttentionStepIo,
} from "../model/backends/dense.ts";
import type { EngineBackend } from "../model/backends/engine.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";

/** The attention shape the tap needs. */
export interface TapShape {
  /** Decoder layers. */
  numLayers: number;
  /** Query heads. */
  numQueryHeads: number;
  /** KV heads. */
  numKvHeads: number;
  /** Per-head size. */
  headDim: number;
}

/** Options of {@linkcode createTapBackend}. */
export interface TapOptions {
  /**
   * Read the attended pages every `massStride` steps (default 1: every
   * step). Engines that choose pages on the GPU answer with a readback, so a
   * stride above 1 makes long runs cheaper at the price of sampling.
   */
  massStride?: number;
}

/** The two shapes of `RetrievalEngine.attendedPages` this module has met. */
type AttendedPagesApi =
  | ((layer: number, seq: number, head: number) => number[])
  | ((layer: number) => Promise<number[][]>);

/**
 * Pages attended per KV head of sequence 0 in the latest step of `layer`,
 * whichever `attendedPages` the engine has: per (layer, seq, head)
 * synchronously, or per layer as a promise of `[seq * Hkv + head]` lists.
 * Empty lists when the engine has none.
 *
 * @example
 * ```ts
 * import { readAttendedPages } from "./tap.ts";
 * const engine = { attendedPages: (_layer: number) => Promise.resolve([[0, 3, 7], [0, 5, 7]]) };
 * console.log(await readAttendedPages(engine, 0, 2)); // [ [ 0, 3, 7 ], [ 0, 5, 7 ] ]
 * console.log(await readAttendedPages({}, 0, 2)); // [ [], [] ]
 * ```
 */
export async function readAttendedPages(
  engine: unknown,
  layer: number,
  numKvHeads: number,
): Promise<number[][]> {
  const fn = (engine as { attendedPages?: AttendedPagesApi }).attendedPages;
  if (typeof fn !== "function") return Array.from({ length: numKvHeads }, () => []);
  if (fn.length >= 3) {
    const perHead = fn as (layer: number, seq: number, head: number) => number[];
    return Array.from({ length: numKvHeads }, (_, h) => perHead.call(engine, layer, 0, h));
  }
  const all = await (fn as (layer: number) => Promise<number[][]>).call(engine, layer);
  return all.slice(0, numKvHeads);
}

/** What one pass recorded, per layer. */
export interface TapRecord {
  /** Tokens prefilled before the first step. */
  prefillLength: number;
  /** Decode steps recorded. */
  steps: number;
  /** Queries of the steps per layer: `[steps][Hq][d]`. */
  q: Float32Array[];
  /** Keys per layer, prompt first: `[prefillLength + steps][Hkv][d]`. */
  k: Float32Array[];
  /**
   * Pages attended per layer, step and KV head: `attended[layer][step][head]`;
   * null for the steps skipped by `massStride`.
   */
  attended: Array<Array<number[][] | null>>;
  /** Heads freekv corrected per layer and step: `corrected[layer][step]` `[Hkv]` (0/1). */
  corrected: Uint8Array[][];
}

/** An attention backend that records what {@linkcode TapRecord} holds. */
export interface TapBackend extends AttentionBackend {
  /** The wrapped backend. */
  readonly inner: EngineBackend;
  /** Starts recording: the next prefill begins a pass (earlier records are dropped). */
  arm(): void;
  /** Stops recording (steps run on without being logged). */
  disarm(): void;
  /** Reads the logs back and returns the pass recorded since {@linkcode arm}. */
  read(): Promise<TapRecord>;
}

/**
 * Wraps `inner` (disposing the tap disposes it). Logs are sized for
 * `maxContext` positions per layer. Nothing is recorded until `arm()`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createEngineBackend } from "../model/backends/engine.ts";
 * import { createTapBackend } from "./tap.ts";
 * using gpu = await requestGpu();
 * const shape = { numLayers: 1, numQueryHeads: 2, numKvHeads: 1, headDim: 8 };
 * const inner = createEngineBackend(gpu.device, {
 *   ...shape, maxContext: 64, policy: "full", pageSize: 4, budget: 16, sink: 4, window: 4,
 * });
 * using tap = createTapBackend(gpu.device, inner, shape, 64);
 * tap.arm();
 * console.log((await tap.read()).steps); // 0
 * ```
 */
export function createTapBackend(
  device: GPUDevice,
  inner: EngineBackend,
  shape: TapShape,
  maxContext: number,
  options: TapOptions = {},
): TapBackend {
  const { numLayers: L, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = shape;
  const qRow = hq * d * 4, kRow = hkv * d * 4;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const qLog: GPUBuffer[] = [], kLog: GPUBuffer[] = [];
  for (let l = 0; l < L; l++) {
    qLog.push(
      createTrackedBuffer(device, {
        label: `eval tap q layer ${l}`,
        size: maxContext * qRow,
        usage,
      }),
    );
    kLog.push(
      createTrackedBuffer(device, {
        label: `eval tap k layer ${l}`,
        size: maxContext * kRow,
        usage,
      }),
    );
  }
  let armed = false;
  let prefillLength = 0;
  let steps = new Array<number>(L).fill(0);
  let attended: Array<Array<number[][] | null>> = [];
  let corrected: Uint8Array[][] = [];
  const engine = inner.engine as unknown as {
    lastCorrections?: (layer: number) => Uint8Array;
  };
  const stride = Math.max(1, Math.floor(options.massStride ?? 1));
  const reset = () => {
    steps = new Array<number>(L).fill(0);
    attended = Array.from({ length: L }, () => []);
    corrected = Array.from({ length: L }, () => []);
  };
  reset();
  const tap: TapBackend = {
    inner,
    arm() {
      armed = true;
      prefillLength = 0;
      reset();
    },
    disarm() {
      armed = false;
    },
    async prefill(
      layer: number,
      k: GPUBuffer,
      v: GPUBuffer,
      length: number,
      extras?: AttentionPrefillExtras,
    ) {
      if (armed) {
        if (layer === 0) {
          reset();
          prefillLength = length;
        }
        if (length > 0) {
          const enc = device.createCommandEncoder({ label: "eval tap prefill" });
          enc.copyBufferToBuffer(k, 0, kLog[layer], 0, length * kRow);
          device.queue.submit([enc.finish()]);
        }
      }
      await inner.prefill(layer, k, v, length, extras);
    },
    async step(layer: number, pos: number, io: AttentionStepIo) {
      if (armed) {
        const s = steps[layer];
        const enc = device.createCommandEncoder({ label: "eval tap step" });
        enc.copyBufferToBuffer(io.q, 0, qLog[layer], s * qRow, qRow);
        enc.copyBufferToBuffer(io.k, 0, kLog[layer], pos * kRow, kRow);
        device.queue.submit([enc.finish()]);
      }
      await inner.step(layer, pos, io);
      if (armed) {
        steps[layer]++;
        const s = steps[layer] - 1;
        attended[layer].push(
          s % stride === 0 ? await readAttendedPages(inner.engine, layer, hkv) : null,
        );
        corrected[layer].push(engine.lastCorrections?.(layer) ?? new Uint8Array(hkv));
      }
    },
    async read(): Promise<TapRecord> {
      const n = steps[0];
      const total = (prefillLength + n) * kRow + n * qRow;
      const staging = createTrackedBuffer(device, {
        label: "eval tap readback",
        size: Math.max(4, L * total),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      try {
        const enc = device.createCommandEncoder({ label: "eval tap readback" });
        for (let l = 0; l < L; l++) {
          const base = l * total;
          if (n > 0) enc.copyBufferToBuffer(qLog[l], 0, staging, base, n * qRow);
          const kBytes = (prefillLength + n) * kRow;
          if (kBytes > 0) enc.copyBufferToBuffer(kLog[l], 0, staging, base + n * qRow, kBytes);
        }
        device.queue.submit([enc.finish()]);
        await staging.mapAsync(GPUMapMode.READ);
        const all = staging.getMappedRange().slice(0);
        const q: Float32Array[] = [], k: Float32Array[] = [];
        for (let l = 0; l < L; l++) {
          const base = l * total;
          q.push(new Float32Array(all, base, n * hq * d));
          k.push(new Float32Array(all, base + n * qRow, (prefillLength + n) * hkv * d));
        }
        return { prefillLength, steps: n, q, k, attended, corrected };
      } finally {
        staging.destroy();
      }
    },
    [Symbol.dispose]() {
      for (const b of [...qLog, ...kLog]) b.destroy();
      inner[Symbol.dispose]();
    },
  };
  // Models with a sliding window ask their backend whether it applies it.
  const windowed = (inner as { appliesSlidingWindow?: boolean }).appliesSlidingWindow;
  if (windowed !== undefined) Object.assign(tap, { appliesSlidingWindow: windowed });
  return tap;
}
