/**
 * Plugs the retrieval engine into the WebGPU decoder: an
 * {@linkcode AttentionBackend} whose decode attention runs under any policy.
 *
 * @module
 */

import {
  createRetrievalEngine,
  type EngineOptions,
  type RetrievalEngine,
} from "../../engine/engine.ts";
import { assertSlidingWindow, attentionWindow } from "../sliding_window.ts";
import type { ModelConfig } from "../types.ts";
import type { AttentionBackend, AttentionStepIo } from "./dense.ts";
import { assertDevice } from "../../gpu/errors.ts";

export { type BudgetInput, resolveBudget } from "../../engine/options.ts";

/**
 * Options of {@linkcode createEngineBackend}: the engine's options without
 * the batch, plus the model's sliding window (spreading a
 * {@linkcode ModelConfig} in passes it).
 */
export type EngineBackendOptions =
  & Omit<EngineOptions, "batch">
  & Partial<Pick<ModelConfig, "slidingWindow" | "slidingWindowLayers">>;

/** An attention backend backed by a {@linkcode RetrievalEngine} (batch 1). */
export interface EngineBackend extends AttentionBackend {
  /** The engine, for statistics. */
  readonly engine: RetrievalEngine;
}

/**
 * Creates a decoder attention backend that runs `options.policy`. A model's
 * sliding window (`slidingWindow`, `slidingWindowLayers`) becomes the
 * engine's per-layer `slidingWindow`: every policy attends only inside it.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../../gpu/device.ts";
 * import { createEngineBackend } from "./engine.ts";
 * using gpu = await requestGpu();
 * using backend = createEngineBackend(gpu.device, {
 *   numLayers: 1, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 64,
 *   policy: "freekv", pageSize: 4, budget: 16, sink: 4, window: 4,
 * });
 * console.log(backend.engine.options.policy); // freekv
 * ```
 */
export function createEngineBackend(
  device: GPUDevice,
  options: EngineBackendOptions,
): EngineBackend {
  assertDevice(device, "create an engine attention backend");
  const { slidingWindow, slidingWindowLayers, ...engineOptions } = options;
  const action = "create an engine attention backend";
  const windowed = { numLayers: options.numLayers, slidingWindow, slidingWindowLayers };
  assertSlidingWindow(windowed, action);
  const engine = createRetrievalEngine(device, {
    ...engineOptions,
    slidingWindow: Array.from(
      { length: options.numLayers },
      (_, l) => attentionWindow(windowed, l),
    ),
    batch: 1,
  });
  // As the model compiles its own kernels when it is created: no step of a
  // generation pays for a compile.
  engine.compile();
  let prefilled = 0;
  const checkPos = (layer: number, pos: number) => {
    const length = engine.length(layer, 0);
    if (pos !== length) {
      throw new RangeError(
        `Cannot run a decode step as 'pos' must equal the tokens cached at layer ${layer} (${length}): received ${pos}`,
      );
    }
  };
  return {
    engine,
    // The engine masks keys outside each layer's window.
    appliesSlidingWindow: true,
    async prefill(layer: number, k: GPUBuffer, v: GPUBuffer, length: number): Promise<void> {
      // A prefill of layer 0 after a whole prompt starts a new sequence.
      if (layer === 0 && prefilled === options.numLayers) {
        await engine.reset(0);
        prefilled = 0;
      }
      await engine.prefill(0, layer, { k, v, length });
      prefilled++;
    },
    async step(layer: number, pos: number, io: AttentionStepIo): Promise<void> {
      checkPos(layer, pos);
      await engine.step(layer, io);
    },
    beginStep(): Promise<void> {
      return engine.beginStep();
    },
    recordStep(encoder, layer, pos, io): Promise<GPUCommandEncoder> {
      checkPos(layer, pos);
      return engine.recordLayer(encoder, layer, io);
    },
    endStep(encoder, waitFollows): void {
      engine.endStep(encoder, { waitFollows });
    },
    [Symbol.dispose](): void {
      engine[Symbol.dispose]();
    },
  };
}
