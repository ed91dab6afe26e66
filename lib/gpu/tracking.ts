/**
 * Resource tracking: every GPU buffer freekv creates goes through
 * {@linkcode createTrackedBuffer}, so that {@linkcode liveBuffers} can say
 * which of them were not destroyed yet (leak checks after `dispose`, memory
 * that must stay flat over long runs).
 *
 * @module
 */

const tracked = new WeakMap<GPUDevice, Set<GPUBuffer>>();

/**
 * `device.createBuffer(descriptor)`, counted: every buffer the library
 * creates goes through here and stays counted by {@linkcode liveBuffers}
 * until its `destroy()` is called.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { createTrackedBuffer, liveBuffers } from "./tracking.ts";
 * using gpu = await requestGpu();
 * const b = createTrackedBuffer(gpu.device, { label: "x", size: 64, usage: GPUBufferUsage.STORAGE });
 * console.log(liveBuffers(gpu.device).count); // 1
 * b.destroy();
 * console.log(liveBuffers(gpu.device).count); // 0
 * ```
 */
export function createTrackedBuffer(device: GPUDevice, descriptor: GPUBufferDescriptor): GPUBuffer {
  const buffer = device.createBuffer(descriptor);
  let live = tracked.get(device);
  if (!live) tracked.set(device, live = new Set());
  live.add(buffer);
  const destroy = buffer.destroy;
  Object.defineProperty(buffer, "destroy", {
    configurable: true,
    value: function (this: GPUBuffer): undefined {
      live.delete(buffer);
      return destroy.call(buffer);
    },
  });
  return buffer;
}

/** What {@linkcode liveBuffers} counts. */
export interface LiveBuffers {
  /** Buffers created by the library on the device and not destroyed yet. */
  count: number;
  /** Their total size in bytes. */
  bytes: number;
  /** Their labels (for leak reports). */
  labels: string[];
}

/**
 * The GPU buffers freekv created on `device` that were not destroyed yet:
 * after every object is disposed this is zero (what the caller created with
 * `device.createBuffer` is not counted).
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { liveBuffers } from "./tracking.ts";
 * using gpu = await requestGpu();
 * console.log(liveBuffers(gpu.device)); // { count: 0, bytes: 0, labels: [] }
 * ```
 */
export function liveBuffers(device: GPUDevice): LiveBuffers {
  const live = [...(tracked.get(device) ?? [])];
  return {
    count: live.length,
    bytes: live.reduce((a, b) => a + b.size, 0),
    labels: live.map((b) => b.label),
  };
}
