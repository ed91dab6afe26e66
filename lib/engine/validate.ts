/**
 * Checks of the engine's inputs, made before any state changes or GPU work.
 * Internal to the engine.
 *
 * @module
 */

import {
  assertAllFinite,
  assertInteger,
  assertLength,
  assertObject,
  describeValue,
} from "../gpu/errors.ts";
import type { ResolvedEngineOptions } from "./options.ts";

/** Options of `RetrievalEngine.endStep`. */
export interface EndStepOptions {
  /**
   * True when the caller waits for this step's GPU work right after ending
   * it (reading its logits, say), so that the step's answer rides that
   * wait. Default: true at `answerLag` 1, false above.
   */
  waitFollows?: boolean;
}

/** q, k, v of one decode step of one layer, for the whole batch. */
export interface StepInputs {
  /** `[batch][Hq][d]` f32: a GPU buffer (STORAGE | COPY_SRC) or an array. */
  q: GPUBuffer | Float32Array;
  /** `[batch][Hkv][d]` f32. */
  k: GPUBuffer | Float32Array;
  /** `[batch][Hkv][d]` f32. */
  v: GPUBuffer | Float32Array;
  /** Where to write the output `[batch][Hq][d]` f32; `step` reads it back and returns it when absent. */
  out?: GPUBuffer;
}

/** A prompt's K/V for `prefill`: `[tokens][Hkv][d]` f32. */
export interface PrefillInputs {
  /** Keys, post-RoPE. */
  k: Float32Array | GPUBuffer;
  /** Values. */
  v: Float32Array | GPUBuffer;
  /** Tokens (required when `k` is a GPU buffer). */
  length?: number;
}

/** Checks a prompt's K/V; returns its token count. */
export function checkPrefillInputs(
  o: ResolvedEngineOptions,
  action: string,
  kv: PrefillInputs,
): number {
  assertObject("kv", kv, action);
  const row = o.numKvHeads * o.headDim;
  const n = kv.length ??
    (kv.k instanceof Float32Array && kv.k.length % row === 0 ? kv.k.length / row : NaN);
  if (kv.length === undefined && !Number.isInteger(n)) {
    throw new RangeError(
      `Cannot ${action} as 'k' must hold whole rows of numKvHeads * headDim = ${row} values: received ${
        kv.k instanceof Float32Array ? `${kv.k.length} values` : describeValue(kv.k)
      }`,
    );
  }
  assertInteger("length", n, action, 1, o.maxContext);
  for (const name of ["k", "v"] as const) {
    const x = kv[name];
    if (x instanceof Float32Array) {
      assertLength(name, x, n * row, action);
      assertAllFinite(name, x, action);
    } else if (!(x instanceof GPUBuffer) || x.size < n * row * 4) {
      throw new RangeError(
        `Cannot ${action} as '${name}' must be a Float32Array or a GPUBuffer of at least ${
          n * row * 4
        } bytes: received ${x instanceof GPUBuffer ? `a buffer of ${x.size}` : describeValue(x)}`,
      );
    }
  }
  return n;
}

/** Checks one layer's step inputs. */
export function checkStepInputs(
  o: ResolvedEngineOptions,
  action: string,
  inputs: StepInputs,
): void {
  assertObject("inputs", inputs, action);
  const { batch: B, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = o;
  const sizes = { q: B * hq * d, k: B * hkv * d, v: B * hkv * d };
  for (const name of ["q", "k", "v"] as const) {
    const x = inputs[name];
    if (x instanceof Float32Array) {
      assertLength(name, x, sizes[name], action);
      assertAllFinite(name, x, action);
    } else if (!(x instanceof GPUBuffer) || x.size < sizes[name] * 4) {
      throw new RangeError(
        `Cannot ${action} as '${name}' must be a Float32Array or a GPUBuffer of at least ${
          sizes[name] * 4
        } bytes: received ${x instanceof GPUBuffer ? `a buffer of ${x.size}` : describeValue(x)}`,
      );
    }
  }
  if (
    inputs.out !== undefined &&
    (!(inputs.out instanceof GPUBuffer) || inputs.out.size < sizes.q * 4)
  ) {
    throw new RangeError(
      `Cannot ${action} as 'out' must be a GPUBuffer of at least ${sizes.q * 4} bytes: received ${
        inputs.out instanceof GPUBuffer
          ? `a buffer of ${inputs.out.size}`
          : describeValue(inputs.out)
      }`,
    );
  }
}
