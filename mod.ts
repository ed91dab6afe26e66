/**
 * freekv: FreeKV-style KV-cache retrieval for LLM decoding on WebGPU.
 *
 * Paged decode attention, page summaries, page selection (top-k), query
 * similarity and layout-conversion kernels in WGSL, each with a plain-loop
 * CPU reference; host KV page pools; double-buffered recall; and the
 * retrieval policies `full`, `streaming`, `quest`, `sync-offload`, `freekv`.
 *
 * The caller owns the device:
 *
 * ```ts ignore
 * import { requestGpu } from "@freekv/freekv";
 * using gpu = await requestGpu();
 * console.log(gpu.description);
 * ```
 *
 * @module
 */

export * from "./lib/device.ts";
export * from "./lib/dtype.ts";
export * from "./lib/errors.ts";
export * from "./lib/gpu_util.ts";
export * from "./lib/random.ts";
