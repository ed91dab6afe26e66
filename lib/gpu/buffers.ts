/**
 * Small WebGPU buffer helpers: labelled buffers, reads, uniform packing,
 * buffer ranges and their size checks, a growable scratch buffer and a bind
 * group cache.
 *
 * @module
 */

import { assertDevice, describeValue, lostOr } from "./errors.ts";
import { createTrackedBuffer } from "./tracking.ts";

/**
 * Creates a labelled buffer, optionally initialised with `data` (padded to a
 * multiple of 4 bytes).
 *
 * @example
 * ```ts ignore
 * import { createBuffer } from "./buffers.ts";
 * const b = createBuffer(device, "q", GPUBufferUsage.STORAGE, new Float32Array(8));
 * ```
 */
export function createBuffer(
  device: GPUDevice,
  label: string,
  usage: GPUBufferUsageFlags,
  data?: ArrayBufferView | number,
): GPUBuffer {
  if (typeof data === "number" || data === undefined) {
    const size = Math.max(4, Math.ceil((data ?? 4) / 4) * 4);
    return createTrackedBuffer(device, { label, size, usage });
  }
  const size = Math.max(4, Math.ceil(data.byteLength / 4) * 4);
  const buffer = createTrackedBuffer(device, { label, size, usage, mappedAtCreation: true });
  new Uint8Array(buffer.getMappedRange()).set(
    new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  );
  buffer.unmap();
  return buffer;
}

/**
 * Copies `byteLength` bytes of `source` (from `offset`) to a fresh mappable
 * buffer and returns them once the GPU is done.
 *
 * @example
 * ```ts ignore
 * import { readBuffer } from "./buffers.ts";
 * const bytes = await readBuffer(device, out, 64);
 * const values = new Float32Array(bytes);
 * ```
 */
export async function readBuffer(
  device: GPUDevice,
  source: GPUBuffer,
  byteLength: number = source.size,
  offset = 0,
): Promise<ArrayBuffer> {
  assertDevice(device, "read a GPU buffer");
  const size = Math.ceil(byteLength / 4) * 4;
  const staging = createTrackedBuffer(device, {
    label: `freekv readback of ${source.label}`,
    size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    const encoder = device.createCommandEncoder({ label: "freekv readback" });
    encoder.copyBufferToBuffer(source, offset, staging, 0, size);
    device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    return staging.getMappedRange().slice(0, byteLength);
  } catch (error) {
    throw await lostOr(device, "read a GPU buffer", error);
  } finally {
    staging.destroy();
  }
}

const lastWrites = new WeakMap<GPUBuffer, Uint8Array>();

/**
 * `queue.writeBuffer(buffer, 0, data)`, skipped when the previous call for
 * `buffer` wrote the same bytes. Returns whether it wrote. In wgpu every
 * write is a staging allocation and a queue copy, and most of a decode
 * step's parameters repeat from step to step (and layer to layer). Use it
 * only for buffers that nothing else writes, on the GPU or the CPU.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { createBuffer, writeIfChanged } from "./buffers.ts";
 * using gpu = await requestGpu();
 * const b = createBuffer(gpu.device, "params", GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, 16);
 * const q = gpu.device.queue;
 * console.log(writeIfChanged(q, b, new Uint32Array([1, 2, 3, 4])), writeIfChanged(q, b, new Uint32Array([1, 2, 3, 4]))); // true false
 * b.destroy();
 * ```
 */
export function writeIfChanged(queue: GPUQueue, buffer: GPUBuffer, data: ArrayBufferView): boolean {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const last = lastWrites.get(buffer);
  if (last && last.length === bytes.length) {
    let same = true;
    for (let i = 0; i < bytes.length; i++) {
      if (last[i] !== bytes[i]) {
        same = false;
        break;
      }
    }
    if (same) return false;
  }
  queue.writeBuffer(buffer, 0, bytes as Uint8Array<ArrayBuffer>);
  lastWrites.set(buffer, bytes.slice());
  return true;
}

/** A uniform buffer writer: packs u32/i32/f32 fields at 4-byte slots. */
export function packUniforms(
  values: Array<number | { f32: number } | { i32: number }>,
): ArrayBuffer {
  const n = Math.max(4, Math.ceil(values.length / 4) * 4);
  const buf = new ArrayBuffer(n * 4);
  const u = new Uint32Array(buf), f = new Float32Array(buf), i = new Int32Array(buf);
  values.forEach((v, k) => {
    if (typeof v === "number") u[k] = v;
    else if ("f32" in v) f[k] = v.f32;
    else i[k] = v.i32;
  });
  return buf;
}

/**
 * A range of a buffer: `offset` (default 0) and `size` bytes (default: to
 * the end). Offsets bound as storage must honour the device's
 * `minStorageBufferOffsetAlignment`. Wherever a kernel takes a buffer it
 * takes `GPUBuffer | BufferSlice`.
 */
export interface BufferSlice {
  /** The buffer. */
  buffer: GPUBuffer;
  /** First byte (default 0). */
  offset?: number;
  /** Bytes (default: to the end of the buffer). */
  size?: number;
}

/**
 * Checks that `ref` (a buffer or a {@linkcode BufferSlice}) is a GPU buffer
 * with `usage` (default `STORAGE`) whose range lies inside it, and returns
 * the whole range (`size`: the bytes from `offset` to the range's end).
 * Throws `TypeError` (not a buffer, missing usage) or `RangeError` (a range
 * past the end) with the message convention.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { bufferRange, createBuffer } from "./buffers.ts";
 * using gpu = await requestGpu();
 * const b = createBuffer(gpu.device, "x", GPUBufferUsage.STORAGE, 64);
 * console.log(bufferRange("x", { buffer: b, offset: 16 }, "run a kernel").size); // 48
 * b.destroy();
 * ```
 */
export function bufferRange(
  name: string,
  ref: GPUBuffer | BufferSlice,
  action: string,
  usage: GPUBufferUsageFlags = GPUBufferUsage.STORAGE,
): Required<BufferSlice> {
  const whole = typeof GPUBuffer !== "undefined" && ref instanceof GPUBuffer;
  const buffer = whole ? ref : (ref as BufferSlice | undefined)?.buffer;
  if (typeof GPUBuffer === "undefined" || !(buffer instanceof GPUBuffer)) {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be a GPUBuffer or a buffer slice: received ${
        describeValue(ref)
      }`,
    );
  }
  if ((buffer.usage & usage) !== usage) {
    throw new TypeError(
      `Cannot ${action} as '${name}' must have usage ${usage}: received buffer '${buffer.label}' with usage ${buffer.usage}`,
    );
  }
  const offset = whole ? 0 : (ref as BufferSlice).offset ?? 0;
  const size = whole ? buffer.size : (ref as BufferSlice).size ?? buffer.size - offset;
  if (offset < 0 || size < 0 || offset + size > buffer.size) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must lie inside its buffer: received ${size} bytes at offset ${offset} of a ${buffer.size}-byte buffer`,
    );
  }
  return { buffer, offset, size };
}

/**
 * Checks that `ref` (a buffer or a {@linkcode BufferSlice}) is a GPU buffer
 * with `usage` (default `STORAGE`) whose range holds at least `bytes` bytes,
 * and returns the binding of exactly those bytes. Throws `TypeError` (not a
 * buffer, missing usage) or `RangeError` (too small, or a range past the
 * end) with the message convention.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { assertBufferSize, createBuffer } from "./buffers.ts";
 * using gpu = await requestGpu();
 * const b = createBuffer(gpu.device, "x", GPUBufferUsage.STORAGE, 64);
 * try {
 *   assertBufferSize("x", b, 128, "run a kernel");
 * } catch (e) {
 *   console.log((e as Error).message); // Cannot run a kernel as 'x' must hold at least 128 bytes: ...
 * }
 * b.destroy();
 * ```
 */
export function assertBufferSize(
  name: string,
  ref: GPUBuffer | BufferSlice,
  bytes: number,
  action: string,
  usage: GPUBufferUsageFlags = GPUBufferUsage.STORAGE,
): Required<BufferSlice> {
  const { buffer, offset, size } = bufferRange(name, ref, action, usage);
  if (size < bytes) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must hold at least ${bytes} bytes: received ${size} bytes at offset ${offset} of a ${buffer.size}-byte buffer`,
    );
  }
  return { buffer, offset, size: bytes };
}

/**
 * Throws unless `writable` lies in another buffer than `other`: a dispatch
 * may not bind one buffer both writable and read-only (WebGPU's usage rule).
 */
export function assertNotShared(
  name: string,
  writable: { buffer: GPUBuffer },
  otherName: string,
  other: { buffer: GPUBuffer },
  action: string,
): void {
  if (writable.buffer === other.buffer) {
    throw new RangeError(
      `Cannot ${action} as '${name}' is bound writable and must not share a buffer with '${otherName}': received both in buffer '${writable.buffer.label}'`,
    );
  }
}

/**
 * Throws a `RangeError` unless the range `slice` fits one storage binding
 * of `device` (`maxStorageBufferBindingSize`).
 */
export function assertBindable(
  name: string,
  slice: Required<BufferSlice>,
  device: GPUDevice,
  action: string,
): void {
  const limit = device.limits.maxStorageBufferBindingSize;
  if (slice.size > limit) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must fit the device's maxStorageBufferBindingSize ${limit}: received ${slice.size} bytes`,
    );
  }
}

/**
 * A scratch buffer that grows to the next power of two (at least 256 bytes)
 * when asked for more than it holds; the old buffer is destroyed (work
 * already submitted keeps it alive).
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { GrowableBuffer } from "./buffers.ts";
 * using gpu = await requestGpu();
 * using scratch = new GrowableBuffer(gpu.device, "scratch", GPUBufferUsage.STORAGE);
 * console.log(scratch.ensure(1000), scratch.buffer.size); // true 1024
 * console.log(scratch.ensure(800)); // false: it fits
 * ```
 */
export class GrowableBuffer {
  #device: GPUDevice;
  #label: string;
  #usage: GPUBufferUsageFlags;
  #buffer: GPUBuffer | undefined;

  /** A scratch buffer of `usage`; nothing is allocated before the first `ensure`. */
  constructor(device: GPUDevice, label: string, usage: GPUBufferUsageFlags) {
    this.#device = device;
    this.#label = label;
    this.#usage = usage;
  }

  /** Makes the buffer hold `bytes`; returns true when it was (re)allocated. */
  ensure(bytes: number): boolean {
    if (this.#buffer && this.#buffer.size >= bytes) return false;
    this.#buffer?.destroy();
    const size = 2 ** Math.ceil(Math.log2(Math.max(256, bytes)));
    this.#buffer = createTrackedBuffer(this.#device, {
      label: this.#label,
      size,
      usage: this.#usage,
    });
    return true;
  }

  /** The current buffer; throws a `TypeError` before the first `ensure`. */
  get buffer(): GPUBuffer {
    if (!this.#buffer) {
      throw new TypeError(
        `Cannot use '${this.#label}' as it must be sized first: received no ensure() call`,
      );
    }
    return this.#buffer;
  }

  /** Destroys the buffer. */
  [Symbol.dispose](): void {
    this.#buffer?.destroy();
    this.#buffer = undefined;
  }
}

/**
 * A small most-recently-used cache of bind groups (or anything built from
 * GPU resources), keyed by the list of resources and numbers they bind.
 *
 * @example
 * ```ts
 * import { BindGroupCache } from "./buffers.ts";
 * const cache = new BindGroupCache<string>(2);
 * let built = 0;
 * const make = () => `group ${++built}`;
 * cache.get(["a", 0], make);
 * console.log(cache.get(["a", 0], make)); // group 1
 * ```
 */
export class BindGroupCache<T = GPUBindGroup> {
  #entries: Array<{ key: readonly unknown[]; value: T }> = [];
  #capacity: number;

  /** Keeps at most `capacity` entries (default 8). */
  constructor(capacity = 8) {
    this.#capacity = capacity;
  }

  /** The entry under `key`, built by `create` when missing. */
  get(key: readonly unknown[], create: () => T): T {
    const list = this.#entries;
    const found = list.findIndex((e) =>
      e.key.length === key.length && e.key.every((x, i) => x === key[i])
    );
    if (found >= 0) {
      const e = list[found];
      if (found > 0) list.splice(found, 1), list.unshift(e);
      return e.value;
    }
    const value = create();
    list.unshift({ key: [...key], value });
    if (list.length > this.#capacity) list.pop();
    return value;
  }

  /** Forgets every entry (after a buffer they bind was replaced). */
  clear(): void {
    this.#entries = [];
  }
}
