/**
 * Next-token sampling on the GPU (greedy, or softmax with temperature from a
 * given uniform number), so that a decode loop feeds each token to the next
 * step without waiting for the host. Its CPU oracle is
 * {@linkcode sampleTokenReference} in `kernels_reference.ts`.
 *
 * @module
 */

import sampleTokenSrc from "../../shaders/sample_token.wgsl" with { type: "text" };
import type { BufferSlice } from "../gpu/buffers.ts";
import { packUniforms } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { assertFinite, assertInteger } from "../gpu/errors.ts";
import { bindGroup, checkFits, type KernelPlan, makePlan, uniform } from "./kernels_plan.ts";

/** Options of {@linkcode planSampleToken}. */
export interface SampleTokenPlanOptions {
  /** f32 `[vocab]` logits of the step. */
  logits: GPUBuffer | BufferSlice;
  /** f32 uniform numbers in [0, 1), one per step (read at temperature > 0). */
  coins: GPUBuffer | BufferSlice;
  /** u32 `[1]`: the sampled token (the next step's input). */
  token: GPUBuffer | BufferSlice;
  /** u32 `[steps]`: every step's sampled token, at its step index. */
  history: GPUBuffer | BufferSlice;
  /**
   * Uniform from `createSeqUniform`: the step's position, which the decoder
   * rewrites before every step anyway; the step index is this position
   * minus the run's first ({@linkcode SampleTokenPlan.setRun}).
   */
  seq: GPUBuffer;
  /** Vocabulary size. */
  vocab: number;
}

/** A {@linkcode planSampleToken} plan; the run's first position and temperature are set per run. */
export interface SampleTokenPlan extends KernelPlan {
  /**
   * Queues the write of the run's first position (step `j` runs at
   * position `first + j`, reads `coins[j]` and writes `history[j]`) and the
   * temperature (0: greedy) for the submits that follow.
   */
  setRun(first: number, temperature: number): void;
}

/**
 * Compiles the sampling kernel now (a model does when it is created), not
 * at the first decode step that samples.
 */
export function compileSampleToken(device: GPUDevice): void {
  cachedPipeline(device, "sample_token", sampleTokenSrc);
}

/**
 * Plans one sampling dispatch: greedy is the largest logit (lowest index on
 * ties); at temperature `T > 0` it is the first token whose cumulative
 * `softmax(logits / T)` mass exceeds `coins[step]`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planSampleToken } from "./kernels_sampling.ts";
 * import { createSeqUniform, recordPlans } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
 * const logits = createBuffer(d, "logits", S, new Float32Array([0.5, 2, 1]));
 * const coins = createBuffer(d, "coins", S, new Float32Array([0.5]));
 * const token = createBuffer(d, "token", S, 4);
 * const history = createBuffer(d, "history", S, 4);
 * const seq = createSeqUniform(d, "position", 5);
 * using plan = planSampleToken(d, { logits, coins, token, history, seq, vocab: 3 });
 * plan.setRun(5, 0);
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Uint32Array(await readBuffer(d, history))); // Uint32Array [1]
 * ```
 */
export function planSampleToken(
  device: GPUDevice,
  options: SampleTokenPlanOptions,
): SampleTokenPlan {
  const action = "plan token sampling";
  const { vocab } = options;
  assertInteger("vocab", vocab, action, 1);
  checkFits("logits", options.logits, vocab, action);
  checkFits("token", options.token, 1, action);
  checkFits("coins", options.coins, 1, action);
  checkFits("history", options.history, 1, action);
  const pipeline = cachedPipeline(device, "sample_token", sampleTokenSrc);
  const params = uniform(device, "sample token", [vocab, { f32: 0 }, 0, 0]);
  const plan = makePlan("sample token", [{
    pipeline,
    bindGroup: bindGroup(device, "sample token", pipeline, [
      params,
      options.logits,
      options.coins,
      options.token,
      options.history,
      options.seq,
    ]),
    workgroups: [1, 1, 1],
  }], [params]);
  return {
    ...plan,
    setRun(first: number, temperature: number): void {
      const what = "set a sampling run";
      assertInteger("first", first, what, 0, 0xffffffff);
      assertFinite("temperature", temperature, what, 0);
      device.queue.writeBuffer(
        params,
        0,
        new Uint8Array(packUniforms([vocab, { f32: temperature }, first, 0])),
      );
    },
  };
}
