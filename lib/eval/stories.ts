/**
 * Texts to evaluate on: the model writes its own stories, one per seed.
 *
 * @module
 */

import { createGpuModel } from "../model/gpu_model.ts";
import { generateText } from "../model/generate.ts";
import type { ModelWeights } from "../model/types.ts";

/** A text to evaluate on: token ids, BOS first. */
export interface EvalText {
  /** Where it came from (a seed, a file). */
  id: string;
  /** Token ids. */
  tokens: number[];
}

/** Options of {@linkcode generateStories}. */
export interface StoryOptions {
  /** One story per seed. */
  seeds: number[];
  /** Tokens per story, BOS included. */
  length: number;
  /** Sampling temperature (default 1: the model's own distribution). */
  temperature?: number;
  /** Called after each story. */
  onStory?: (index: number, text: EvalText) => void;
}

/**
 * Lets the model write its own texts: one story per seed, sampled at
 * temperature 1 with full (dense) attention, BOS first, stop tokens ignored
 * (a story that ends starts another), `length` tokens each. The stories run
 * concurrently.
 *
 * @example
 * ```ts ignore
 * import { requestGpu } from "../gpu/device.ts";
 * import { loadModel } from "../model/load.ts";
 * import { generateStories } from "./stories.ts";
 * using gpu = await requestGpu();
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const texts = await generateStories(gpu.device, weights, { seeds: [1, 2], length: 64 });
 * console.log(texts[0].tokens.length); // 64
 * ```
 */
export async function generateStories(
  device: GPUDevice,
  weights: ModelWeights,
  options: StoryOptions,
): Promise<EvalText[]> {
  const { seeds, length } = options;
  if (!Number.isInteger(length) || length < 2) {
    throw new RangeError(
      `Cannot generate stories as 'length' must be an integer of at least 2: received ${length}`,
    );
  }
  const config = weights.config;
  return await Promise.all(seeds.map(async (seed, index) => {
    using model = createGpuModel(device, weights, { maxSeqLen: length });
    const r = await generateText(model, [config.bosId], {
      maxTokens: length - 1,
      temperature: options.temperature ?? 1,
      seed,
      stopTokens: [],
    });
    const text = { id: `seed ${seed}`, tokens: [config.bosId, ...r.tokens] };
    if (text.tokens.length < length) {
      throw new Error(
        `Cannot generate stories as the model stopped after ${text.tokens.length} of ${length} tokens (seed ${seed})`,
      );
    }
    options.onStory?.(index, text);
    return text;
  }));
}
