/**
 * The GPU layer: the device the caller owns, KV element types, the readback
 * ring, GPU timing, and the buffer-range type every kernel takes. The
 * argument checks (`errors.ts`), buffer helpers (`buffers.ts`) and the
 * pipeline cache (`pipelines.ts`) are internal: import them from their
 * files.
 *
 * @module
 */

export * from "./device.ts";
export * from "./dtype.ts";
export * from "./readback.ts";
export * from "./timing.ts";
export { type LiveBuffers, liveBuffers } from "./tracking.ts";
export type { BufferSlice } from "./buffers.ts";
