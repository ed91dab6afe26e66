/**
 * The attention-only driver: feeds a retrieval engine per-layer q, k, v from
 * sources (synthetic workloads or recorded traces of a real model), so that
 * benchmarks and accuracy studies replay attention without the model.
 *
 * @module
 */

import type { RetrievalEngine, StepStats } from "../engine/engine.ts";
import { assertInteger } from "../gpu/errors.ts";
import { type AttentionSource, takePrompt, type TokenQkv } from "./synthetic.ts";
import type { Trace } from "./trace.ts";

/**
 * Replays a recorded trace token by token (prompt first), from token
 * `start`. Throws a `RangeError` once the trace is exhausted.
 *
 * @example
 * ```ts
 * import { encodeTraceHeader, parseTrace } from "./trace.ts";
 * import { createTraceSource } from "./driver.ts";
 * const head = encodeTraceHeader({ numLayers: 1, numQueryHeads: 1, numKvHeads: 1, headDim: 1, promptLength: 1 });
 * const bytes = new Uint8Array(head.length + 12);
 * bytes.set(head);
 * const source = createTraceSource(parseTrace(bytes));
 * console.log(source.next()[0].q.length); // 1
 * ```
 */
export function createTraceSource(trace: Trace, options: { start?: number } = {}): AttentionSource {
  let t = options.start ?? 0;
  assertInteger("start", t, "replay a trace", 0, trace.numTokens);
  const h = trace.header;
  return {
    numLayers: h.numLayers,
    numQueryHeads: h.numQueryHeads,
    numKvHeads: h.numKvHeads,
    headDim: h.headDim,
    next(): TokenQkv[] {
      if (t >= trace.numTokens) {
        throw new RangeError(
          `Cannot replay a trace as the token must be below its ${trace.numTokens} tokens: received token ${t}`,
        );
      }
      const layers = Array.from({ length: h.numLayers }, (_, l) => ({
        q: trace.q(t, l),
        k: trace.k(t, l),
        v: trace.v(t, l),
      }));
      t++;
      return layers;
    },
  };
}

/** Options of {@linkcode driveEngine}. */
export interface DriveOptions {
  /** Prompt tokens per sequence (one entry per source). */
  promptLengths: number[];
  /** Decode steps after the prompt. */
  steps: number;
  /**
   * Called (and awaited) after every layer's step with its output
   * `[batch][Hq][d]`, and after the last layer with the step's statistics.
   */
  onLayer?: (
    step: number,
    layer: number,
    out: Float32Array,
    stats: StepStats | null,
  ) => unknown;
}

/** What {@linkcode driveEngine} measured. */
export interface DriveResult {
  /** Wall milliseconds of each decode step (all layers, GPU work included). */
  stepMs: number[];
}

/**
 * Prefills one sequence per source and decodes `steps` tokens through the
 * engine, the batch stepping together.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createRetrievalEngine } from "../engine/engine.ts";
 * import { createSyntheticSource } from "./synthetic.ts";
 * import { driveEngine } from "./driver.ts";
 * using gpu = await requestGpu();
 * const shape = { numLayers: 1, numQueryHeads: 2, numKvHeads: 1, headDim: 8 };
 * using engine = createRetrievalEngine(gpu.device, {
 *   ...shape, maxContext: 64, pageSize: 4, budget: 16, sink: 4, window: 4,
 * });
 * const r = await driveEngine(engine, [createSyntheticSource(shape)], { promptLengths: [30], steps: 3 });
 * console.log(r.stepMs.length); // 3
 * ```
 */
export async function driveEngine(
  engine: RetrievalEngine,
  sources: AttentionSource[],
  options: DriveOptions,
): Promise<DriveResult> {
  const { batch, numLayers } = engine.options;
  if (sources.length !== batch || options.promptLengths.length !== batch) {
    throw new RangeError(
      `Cannot drive the engine as 'sources' and 'promptLengths' must have one entry per sequence (${batch}): received ${sources.length} and ${options.promptLengths.length}`,
    );
  }
  assertInteger("steps", options.steps, "drive the engine", 0);
  for (let b = 0; b < batch; b++) {
    const prompt = takePrompt(sources[b], options.promptLengths[b], { queries: false });
    for (let l = 0; l < numLayers; l++) {
      await engine.prefill(b, l, { k: prompt[l].k, v: prompt[l].v });
    }
  }
  const stepMs: number[] = [];
  for (let s = 0; s < options.steps; s++) {
    const tokens = sources.map((src) => src.next());
    const t0 = performance.now();
    for (let l = 0; l < numLayers; l++) {
      const cat = (name: "q" | "k" | "v") => {
        const n = tokens[0][l][name].length;
        const x = new Float32Array(batch * n);
        tokens.forEach((t, b) => x.set(t[l][name], b * n));
        return x;
      };
      const out = (await engine.step(l, { q: cat("q"), k: cat("k"), v: cat("v") }))!;
      const last = l === numLayers - 1;
      await options.onLayer?.(s, l, out, last ? engine.lastStepStats() : null);
    }
    stepMs.push(performance.now() - t0);
  }
  await engine.drain();
  return { stepMs };
}
