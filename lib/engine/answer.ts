/**
 * The answer of a decode step: every freekv layer's fresh selection, flags
 * and resident hits, copied into one buffer while the step records and read
 * back with one map after its submit (shared by up to `answerLag / 4`
 * steps), so the CPU follows one step behind at the cost of at most one
 * host wait per step. Internal to the engine.
 *
 * @module
 */

import { createBuffer } from "../gpu/buffers.ts";
import type { PendingRead, ReadbackRing } from "../gpu/readback.ts";
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

/** Parts of one step: which layers contributed, for which sequences. */
interface StepParts {
  layer: number;
  selects: boolean[];
  checked: boolean[];
}

/** Steps whose answers are read back together, once the last of them ended. */
interface AnswerBatch {
  /** The parts of each step, by slot. */
  steps: StepParts[][];
  /** The read-back, once recorded. */
  read: PendingRead | null;
  /** The encoder holding the read-back was submitted: only then may its map start. */
  submitted: boolean;
  bytes: Promise<ArrayBuffer> | null;
  settled: boolean;
}

/**
 * Collects the parts of each step's answer; one per engine. Up to `group`
 * steps share one read-back (their own slots of one buffer): each map costs
 * a stall of the queue in Deno 2.9 (see PendingAnswer), so with an
 * `answerLag` of 8 or more, a quarter of it in steps share a map. The last
 * of them ends at least `3 * answerLag / 4` steps before the first is
 * taken, which left every map time to resolve on stories260K (with half of
 * `answerLag`, 6-8 of 399 steps waited for theirs).
 */
export class StepAnswers implements Disposable {
  readonly #buffer: GPUBuffer;
  readonly #layerBytes: number;
  readonly #stepBytes: number;
  readonly #rows: number;
  readonly #k: number;
  readonly #group: number;
  #recording: StepParts[] = [];
  /** The batch that the next ended step joins (not yet read back). */
  #open: AnswerBatch = StepAnswers.#batch();
  /** Batches whose read-back is recorded into an encoder not yet submitted. */
  #recorded: AnswerBatch[] = [];

  constructor(device: GPUDevice, o: ResolvedEngineOptions, selectPages: number) {
    this.#rows = o.batch * o.numKvHeads;
    this.#k = selectPages;
    this.#layerBytes = this.#rows * (selectPages + 2) * 4;
    this.#stepBytes = o.numLayers * this.#layerBytes;
    this.#group = Math.max(1, Math.floor(o.answerLag / 4));
    this.#buffer = createBuffer(
      device,
      "freekv step answer",
      GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      this.#group * this.#stepBytes,
    );
  }

  static #batch(): AnswerBatch {
    return { steps: [], read: null, submitted: false, bytes: null, settled: false };
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
    const at = this.#open.steps.length * this.#stepBytes + state.index * this.#layerBytes;
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
   * Ends the step's answer: its parts join the open batch, whose read-back
   * is recorded into `encoder` once it holds `group` steps (or when the step
   * has no parts). Call `submitted` once `encoder` is submitted: a result
   * starts only after that (earlier `start` calls do nothing). Null when no
   * layer contributed.
   */
  end(encoder: GPUCommandEncoder, ring: ReadbackRing): PendingAnswer | null {
    const parts = this.#recording;
    this.#recording = [];
    if (!parts.length) {
      this.flush(encoder, ring);
      return null;
    }
    const batch = this.#open;
    const slot = batch.steps.length;
    batch.steps.push(parts);
    if (batch.steps.length === this.#group) this.flush(encoder, ring);
    return this.#pending(batch, slot);
  }

  /** True when ended steps wait for their read-back (`flush`). */
  get unread(): boolean {
    return this.#open.steps.length > 0;
  }

  /** Records the read-back of the open batch into `encoder` (nothing when it is empty). */
  flush(encoder: GPUCommandEncoder, ring: ReadbackRing): void {
    const batch = this.#open;
    if (!batch.steps.length) return;
    batch.read = ring.record(encoder, this.#buffer, 0, batch.steps.length * this.#stepBytes);
    this.#recorded.push(batch);
    this.#open = StepAnswers.#batch();
  }

  /** The encoder of the latest `end` or `flush` was submitted: its read-backs may start. */
  submitted(): void {
    for (const batch of this.#recorded) batch.submitted = true;
    this.#recorded = [];
  }

  #pending(batch: AnswerBatch, slot: number): PendingAnswer {
    const rows = this.#rows, K = this.#k, layerBytes = this.#layerBytes;
    const base = slot * this.#stepBytes;
    const start = (): Promise<ArrayBuffer> | null => {
      if (!batch.bytes && batch.read && batch.submitted) {
        batch.bytes = batch.read.start();
        batch.bytes.then(() => batch.settled = true, () => batch.settled = true);
      }
      return batch.bytes;
    };
    let layers: Promise<AnswerLayer[]> | null = null;
    return {
      start: () => void start(),
      get started() {
        return batch.bytes !== null;
      },
      get layers() {
        if (layers) return layers;
        const bytes = start();
        if (!bytes) {
          return Promise.reject(
            new Error(
              "freekv internal error: an answer was taken before its read-back was submitted",
            ),
          );
        }
        layers = bytes.then((all) =>
          batch.steps[slot].map((p) => {
            const words = new Uint32Array(all, base + p.layer * layerBytes, rows * (K + 2));
            return {
              ...p,
              fresh: words.subarray(0, rows * K),
              flags: words.subarray(rows * K, rows * K + rows),
              hits: words.subarray(rows * K + rows),
            };
          })
        );
        return layers;
      },
      get settled() {
        return batch.settled;
      },
    };
  }

  [Symbol.dispose](): void {
    this.#buffer.destroy();
  }
}
