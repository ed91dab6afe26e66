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
import {
  bindGroup,
  checkFits,
  type KernelPlan,
  makePlan,
  sliceBytes,
  uniform,
} from "./kernels_plan.ts";

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
  /** Vocabulary size. */
  vocab: number;
}

/** A {@linkcode planSampleToken} plan; the step index and temperature are set per step. */
export interface SampleTokenPlan extends KernelPlan {
  /**
   * Queues the write of the step index (where the coin is read and the
   * token is written in `history`) and the temperature (0: greedy) for the
   * next submit that records the plan.
   */
  setStep(step: number, temperature: number): void;
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
 * import { recordPlans } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
 * const logits = createBuffer(d, "logits", S, new Float32Array([0.5, 2, 1]));
 * const coins = createBuffer(d, "coins", S, new Float32Array([0.5]));
 * const token = createBuffer(d, "token", S, 4);
 * const history = createBuffer(d, "history", S, 4);
 * using plan = planSampleToken(d, { logits, coins, token, history, vocab: 3 });
 * plan.setStep(0, 0);
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
  const steps = Math.floor(Math.min(sliceBytes(options.coins), sliceBytes(options.history)) / 4);
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
    ]),
    workgroups: [1, 1, 1],
  }], [params]);
  return {
    ...plan,
    setStep(step: number, temperature: number): void {
      const what = "set a sampling step";
      assertInteger("step", step, what, 0, steps - 1);
      assertFinite("temperature", temperature, what, 0);
      device.queue.writeBuffer(
        params,
        0,
        new Uint8Array(packUniforms([vocab, { f32: temperature }, step, 0])),
      );
    },
  };
}
