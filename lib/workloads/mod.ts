/**
 * Workloads that drive the retrieval engine without a model: a synthetic
 * attention source (Llama-style heads with drifting queries and a few
 * strongly attended pages), recorded traces of a real model's q, k and v,
 * and {@linkcode driveEngine}, which prefills and steps an engine through
 * any of them. The seeded random helpers (`random.ts`) are internal.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/mod.ts";
 * import { createRetrievalEngine } from "../engine/mod.ts";
 * import { createSyntheticSource, driveEngine } from "./mod.ts";
 * using gpu = await requestGpu();
 * const shape = { numLayers: 1, numQueryHeads: 4, numKvHeads: 2, headDim: 16 };
 * using engine = createRetrievalEngine(gpu.device, {
 *   ...shape, maxContext: 512, pageSize: 8, budget: 64, policy: "freekv",
 * });
 * const source = createSyntheticSource({ ...shape, seed: 1 });
 * const { stepMs } = await driveEngine(engine, [source], { promptLengths: [300], steps: 4 });
 * console.log(stepMs.length); // 4
 * ```
 *
 * @module
 */

export * from "./synthetic.ts";
export * from "./driver.ts";
export * from "./trace.ts";
