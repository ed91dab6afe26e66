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

/** A step's answer on its way back. */
export interface PendingAnswer {
  /** Resolves to the layers' parts. */
  layers: Promise<AnswerLayer[]>;
  /** True once `layers` settled (checked without waiting). */
  settled: boolean;
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
   * Records the read-back of the step's parts into `encoder`; call `start`
   * on the result after submitting it. Null when no layer contributed.
   */
  end(encoder: GPUCommandEncoder, ring: ReadbackRing): { start(): PendingAnswer } | null {
    const parts = this.#recording;
    this.#recording = [];
    if (!parts.length) return null;
    const read = ring.record(encoder, this.#buffer, 0, this.#buffer.size);
    const rows = this.#rows, K = this.#k, layerBytes = this.#layerBytes;
    return {
      start: () => {
        const layers = read.start().then((bytes) =>
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
        const pending: PendingAnswer = { layers, settled: false };
        layers.then(() => pending.settled = true, () => pending.settled = true);
        return pending;
      },
    };
  }

  [Symbol.dispose](): void {
    this.#buffer.destroy();
  }
}
