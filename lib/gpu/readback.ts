/**
 * A ring of `MAP_READ` buffers for reading small GPU results (selections,
 * flags) without allocating per read and without blocking the queue.
 *
 * @module
 */

import { createTrackedBuffer } from "./tracking.ts";
import { assertDevice } from "./errors.ts";

/** A read recorded into an encoder; call `start()` after submitting it. */
export interface PendingRead {
  /** Starts mapping (call after the encoder was submitted); resolves to a copy of the bytes. */
  start(): Promise<ArrayBuffer>;
}

/**
 * Reuses mapped-read buffers; a buffer goes back to the ring only after its
 * map finished, and the ring grows instead of waiting when all are busy.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { createBuffer } from "./buffers.ts";
 * import { ReadbackRing } from "./readback.ts";
 * using gpu = await requestGpu();
 * using ring = new ReadbackRing(gpu.device, "example");
 * const src = createBuffer(gpu.device, "src", GPUBufferUsage.COPY_SRC, new Uint32Array([7]));
 * const enc = gpu.device.createCommandEncoder();
 * const read = ring.record(enc, src, 0, 4);
 * gpu.device.queue.submit([enc.finish()]);
 * console.log(new Uint32Array(await read.start())[0]); // 7
 * ```
 */
export class ReadbackRing {
  #device: GPUDevice;
  #label: string;
  #free: GPUBuffer[] = [];
  #all: GPUBuffer[] = [];

  /** Creates an empty ring on `device`. */
  constructor(device: GPUDevice, label: string) {
    assertDevice(device, "create a readback ring");
    this.#device = device;
    this.#label = label;
  }

  /** Records a copy of `size` bytes of `source` at `offset` into a ring buffer. */
  record(encoder: GPUCommandEncoder, source: GPUBuffer, offset: number, size: number): PendingRead {
    const padded = Math.max(4, Math.ceil(size / 4) * 4);
    let index = this.#free.findIndex((b) => b.size >= padded);
    if (index < 0) {
      const buffer = createTrackedBuffer(this.#device, {
        label: `${this.#label} readback ${this.#all.length}`,
        size: Math.max(256, 2 ** Math.ceil(Math.log2(padded))),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      this.#all.push(buffer);
      this.#free.push(buffer);
      index = this.#free.length - 1;
    }
    const buffer = this.#free.splice(index, 1)[0];
    encoder.copyBufferToBuffer(source, offset, buffer, 0, padded);
    return {
      start: async () => {
        try {
          await buffer.mapAsync(GPUMapMode.READ, 0, padded);
          const bytes = buffer.getMappedRange(0, padded).slice(0, size);
          buffer.unmap();
          return bytes;
        } finally {
          if (this.#all.includes(buffer)) this.#free.push(buffer);
        }
      },
    };
  }

  /** Destroys every buffer of the ring. */
  [Symbol.dispose](): void {
    for (const b of this.#all) b.destroy();
    this.#all = [];
    this.#free = [];
  }
}
