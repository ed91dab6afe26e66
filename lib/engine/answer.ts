/**
 * The answer of a decode step: every freekv layer's fresh selection, flags
 * and resident hits, copied into one buffer while the step records and read
 * back with one map after its submit, so the CPU follows one step behind at
 * the cost of at most one host wait per step. Internal to the engine.
 *
 * @module
 */

import { createBuffer } from "../gpu/buffers.ts";
import type { ReadbackRing } from "../gpu/readback.ts";
import type { LayerState } from "./layer.ts";
import type { ResolvedEngineOptions } from "./options.ts";

/** One layer's part of an answer. */
export interface AnswerLayer {
  /** The layer. */
  layer: number;
  /** Sequences whose top-k ran. */
  selects: boolean[];
  /** Sequences whose correction check is counted when the answer arrives. */
  checked: boolean[];
  /** `[B][Hkv][K]` the next step's speculation. */
  fresh: Uint32Array;
  /** `[B][Hkv]` correction flags. */
  flags: Uint32Array;
  /** `[B][Hkv]` resident pages of the fresh selection. */
  hits: Uint32Array;
}

/**
 * A step's answer: submitted with its step, mapped later. Starting the map
 * blocks the thread until the queue is idle in Deno 2.9, so the engine
 * starts it just before its next submit (which would block as long), not
 * right after the step's own submit (which would stall the recording of the
 * next step until the GPU finished this one).
 */
export interface PendingAnswer {
  /** Starts the map (once; later calls do nothing). Call only after the step was submitted. */
  start(): void;
  /** True once `start` was called. */
  readonly started: boolean;
  /** Resolves to the layers' parts; starts the map if it was not started. */
  readonly layers: Promise<AnswerLayer[]>;
  /** True once the map resolved or failed (checked without waiting). */
  readonly settled: boolean;
}

/** Collects the parts of a step's answer; one per engine. */
export class StepAnswers implements Disposable {
  readonly #buffer: GPUBuffer;
  readonly #layerBytes: number;
  readonly #rows: number;
  readonly #k: number;
  #recording: { layer: number; selects: boolean[]; checked: boolean[] }[] = [];

  constructor(device: GPUDevice, o: ResolvedEngineOptions, selectPages: number) {
    this.#rows = o.batch * o.numKvHeads;
    this.#k = selectPages;
    this.#layerBytes = this.#rows * (selectPages + 2) * 4;
    this.#buffer = createBuffer(
      device,
      "freekv step answer",
      GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      o.numLayers * this.#layerBytes,
    );
  }

  /** Records the copy of the speculation and `state`'s flags and hits into the answer. */
  record(
    encoder: GPUCommandEncoder,
    state: LayerState,
    speculation: GPUBuffer,
    selects: boolean[],
    checked: boolean[],
  ): void {
    const rows = this.#rows, K = this.#k;
    const at = state.index * this.#layerBytes;
    encoder.copyBufferToBuffer(speculation, 0, this.#buffer, at, rows * K * 4);
    encoder.copyBufferToBuffer(state.flags!, 0, this.#buffer, at + rows * K * 4, rows * 4);
    encoder.copyBufferToBuffer(state.hits!, 0, this.#buffer, at + (rows * K + rows) * 4, rows * 4);
    this.#recording.push({ layer: state.index, selects: [...selects], checked: [...checked] });
  }

  /** Forgets what was recorded (a step that never ended). */
  discard(): void {
    this.#recording = [];
  }

  /**
   * Records the read-back of the step's parts into `encoder`; start the
   * result only after submitting it. Null when no layer contributed.
   */
  end(encoder: GPUCommandEncoder, ring: ReadbackRing): PendingAnswer | null {
    const parts = this.#recording;
    this.#recording = [];
    if (!parts.length) return null;
    const read = ring.record(encoder, this.#buffer, 0, this.#buffer.size);
    const rows = this.#rows, K = this.#k, layerBytes = this.#layerBytes;
    let layers: Promise<AnswerLayer[]> | null = null;
    let settled = false;
    const start = (): Promise<AnswerLayer[]> => {
      if (layers) return layers;
      layers = read.start().then((bytes) =>
        parts.map((p) => {
          const words = new Uint32Array(bytes, p.layer * layerBytes, rows * (K + 2));
          return {
            ...p,
            fresh: words.subarray(0, rows * K),
            flags: words.subarray(rows * K, rows * K + rows),
            hits: words.subarray(rows * K + rows),
          };
        })
      );
      layers.then(() => settled = true, () => settled = true);
      return layers;
    };
    return {
      start: () => void start(),
      get started() {
        return layers !== null;
      },
      get layers() {
        return start();
      },
      get settled() {
        return settled;
      },
    };
  }

  [Symbol.dispose](): void {
    this.#buffer.destroy();
  }
}
