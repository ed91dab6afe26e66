/**
 * Sliding-window attention of Mistral and Qwen2 models: which layers use a
 * window and how long it is ({@linkcode ModelConfig.slidingWindow}).
 *
 * @module
 */

import { assertInteger } from "../gpu/errors.ts";
import type { ModelConfig } from "./types.ts";

/** The sliding-window fields of a {@linkcode ModelConfig}. */
export type SlidingWindowConfig = Pick<
  ModelConfig,
  "numLayers" | "slidingWindow" | "slidingWindowLayers"
>;

/**
 * The window of `layer` in tokens (a query at position `p` sees keys
 * `p - window + 1 ..= p`), or 0 for full attention.
 *
 * @example
 * ```ts
 * import { attentionWindow } from "./sliding_window.ts";
 * const config = { numLayers: 4, slidingWindow: 16, slidingWindowLayers: [2, 3] };
 * console.log(attentionWindow(config, 1), attentionWindow(config, 2)); // 0 16
 * ```
 */
export function attentionWindow(config: SlidingWindowConfig, layer: number): number {
  const w = config.slidingWindow;
  if (w === undefined) return 0;
  const layers = config.slidingWindowLayers;
  return layers === undefined || layers.includes(layer) ? w : 0;
}

/**
 * The shortest window of any layer, or 0 when every layer attends fully.
 *
 * @example
 * ```ts
 * import { shortestAttentionWindow } from "./sliding_window.ts";
 * console.log(shortestAttentionWindow({ numLayers: 2, slidingWindow: 8, slidingWindowLayers: [] })); // 0
 * ```
 */
export function shortestAttentionWindow(config: SlidingWindowConfig): number {
  let shortest = 0;
  for (let l = 0; l < config.numLayers; l++) {
    const w = attentionWindow(config, l);
    if (w > 0 && (shortest === 0 || w < shortest)) shortest = w;
  }
  return shortest;
}

/**
 * Validates the sliding-window fields: `slidingWindow` an integer of at least
 * 1, `slidingWindowLayers` layer indices.
 *
 * @example
 * ```ts
 * import { assertSlidingWindow } from "./sliding_window.ts";
 * assertSlidingWindow({ numLayers: 2, slidingWindow: 8 }, "create a model");
 * ```
 */
export function assertSlidingWindow(config: SlidingWindowConfig, action: string): void {
  if (config.slidingWindow !== undefined) {
    assertInteger("slidingWindow", config.slidingWindow, action, 1);
  }
  const layers = config.slidingWindowLayers;
  if (layers !== undefined) {
    if (!Array.isArray(layers)) {
      throw new TypeError(
        `Cannot ${action} as 'slidingWindowLayers' must be an array of layer indices: received ${typeof layers}`,
      );
    }
    layers.forEach((l, i) =>
      assertInteger(`slidingWindowLayers[${i}]`, l, action, 0, config.numLayers - 1)
    );
  }
}
