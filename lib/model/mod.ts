/**
 * The model layer: a Llama-family decoder (GQA, RoPE, RMSNorm, SwiGLU) on
 * WebGPU whose decode attention runs through the retrieval engine.
 *
 * - Loading: llama2.c checkpoints and Hugging Face safetensors (+
 *   `config.json`, `tokenizer.json`) through {@linkcode loadModel}; Llama 3
 *   `rope_scaling` and Mistral/Qwen2 sliding windows are applied.
 * - Running: {@linkcode createGpuModel} over an attention backend, either
 *   {@linkcode createEngineBackend} (any retrieval policy) or
 *   {@linkcode createDenseAttentionBackend} (plain causal attention);
 *   {@linkcode generate} and {@linkcode generateText} decode tokens, sampled
 *   on the GPU and read back `tokensPerWait` (8) at a time; give the engine
 *   backend the same `answerLag` so that freekv's recalls follow the groups.
 * - Checking: {@linkcode createReferenceModel}, a plain-loop CPU forward
 *   pass, is the oracle of the GPU decoder.
 *
 * The forward-pass kernels (`kernels.ts`) and their CPU references
 * (`kernels_reference.ts`) are internal: import them from their files.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/mod.ts";
 * import { createEngineBackend, createGpuModel, generateText, loadModel, resolveBudget } from "./mod.ts";
 * using gpu = await requestGpu();
 * const loaded = await loadModel("models/stories260K/stories260K.bin");
 * using attention = createEngineBackend(gpu.device, {
 *   ...loaded.config, ...resolveBudget({ budget: 96, pageSize: 8 }), maxContext: 512, policy: "freekv",
 *   answerLag: 8,
 * });
 * using model = createGpuModel(gpu.device, loaded.weights, { attention, maxSeqLen: 512 });
 * const { text } = await generateText(model, [loaded.config.bosId], {
 *   maxTokens: 32, tokenizer: loaded.tokenizer!,
 * });
 * console.log(text);
 * ```
 *
 * @module
 */

export * from "./types.ts";
export * from "./load.ts";
export * from "./llama2c.ts";
export * from "./tokenizer.ts";
export * from "./hf_tokenizer.ts";
export * from "./safetensors.ts";
export * from "./hf_config.ts";
export * from "./rope_scaling.ts";
export * from "./sliding_window.ts";
export * from "./reference.ts";
export * from "./sampling.ts";
export * from "./weight_convert.ts";
export * from "./backends/dense.ts";
export * from "./backends/engine.ts";
export * from "./gpu_model.ts";
export * from "./generate.ts";
