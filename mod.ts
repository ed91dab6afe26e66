/**
 * freekv: FreeKV-style KV-cache retrieval for LLM decoding on WebGPU.
 *
 * - Kernels (WGSL, each with a plain-loop CPU reference): paged decode
 *   attention, page summaries, page scoring + GQA pooling + top-k, query
 *   similarity, NHD <-> HND layout conversion, a streaming-read roofline.
 * - Memory: a host page pool (head-major HND runs), offload through a ring of
 *   mapped buffers, double-buffered streamed recall.
 * - Policies through one engine: `full`, `streaming`, `quest`,
 *   `sync-offload` and `freekv` (speculative retrieval with fine-grained
 *   correction).
 * - A Llama-family decoder (llama2.c checkpoints, Hugging Face safetensors)
 *   whose decode attention runs through the engine.
 *
 * The caller owns the device:
 *
 * ```ts
 * import { createRetrievalEngine, requestGpu } from "./mod.ts";
 * using gpu = await requestGpu();
 * using engine = createRetrievalEngine(gpu.device, {
 *   numLayers: 1, numQueryHeads: 4, numKvHeads: 2, headDim: 8, maxContext: 256,
 *   pageSize: 8, budget: 48, sink: 8, window: 16, policy: "freekv",
 * });
 * await engine.prefill(0, 0, { k: new Float32Array(100 * 16), v: new Float32Array(100 * 16) });
 * const out = await engine.step(0, {
 *   q: new Float32Array(32).fill(0.5), k: new Float32Array(16), v: new Float32Array(16),
 * });
 * console.log(out?.length); // 32
 * ```
 *
 * @module
 */

export * from "./lib/gpu/mod.ts";
export * from "./lib/kernels/mod.ts";
export * from "./lib/memory/mod.ts";
export * from "./lib/engine/mod.ts";
export * from "./lib/workloads/mod.ts";
export * from "./lib/model/mod.ts";
