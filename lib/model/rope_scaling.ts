/**
 * RoPE inverse frequencies with Hugging Face `rope_scaling` applied
 * (`linear`, `llama3`, `dynamic`): one f32 array per model, shared by the
 * CPU reference forward pass and the GPU RoPE kernel so that both rotate by
 * the same angles.
 *
 * @module
 */

import { assertFinite, assertInteger } from "../gpu/errors.ts";
import type { ModelConfig, RopeScaling } from "./types.ts";

/**
 * Inverse frequencies `theta^(-2i/d)` for `i < d/2` (f64), then scaled by
 * `scaling` (f64), rounded to f32 once at the end.
 *
 * For `llama3`, with `L = originalMaxPositionEmbeddings` and wavelength
 * `w = 2*pi / f`: `w > L / lowFreqFactor` gives `f / factor`,
 * `w < L / highFreqFactor` keeps `f`, and in between
 * `s = (L / w - lowFreqFactor) / (highFreqFactor - lowFreqFactor)` gives
 * `(1 - s) * f / factor + s * f`. `linear` divides every `f` by `factor`;
 * `dynamic` leaves them as they are (it only changes RoPE past `L`).
 *
 * @example
 * ```ts
 * import { scaledRopeInvFreq } from "./rope_scaling.ts";
 * console.log(scaledRopeInvFreq(4, 10000, { type: "linear", factor: 2 })); // Float32Array [0.5, 0.005]
 * ```
 */
export function scaledRopeInvFreq(
  headDim: number,
  theta: number,
  scaling?: RopeScaling,
): Float32Array {
  const action = "compute RoPE frequencies";
  assertInteger("headDim", headDim, action, 2);
  assertFinite("theta", theta, action);
  if (scaling) checkRopeScaling(scaling, action);
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < out.length; i++) {
    const f = Math.pow(theta, -(2 * i) / headDim);
    out[i] = scaling ? scaleFrequency(f, scaling) : f;
  }
  return out;
}

/**
 * The inverse frequencies of a model: {@linkcode scaledRopeInvFreq} of its
 * `headDim`, `ropeTheta` and `ropeScaling`.
 *
 * @example
 * ```ts
 * import { modelRopeInvFreq } from "./rope_scaling.ts";
 * const f = modelRopeInvFreq({ headDim: 4, ropeTheta: 10000 });
 * console.log(f); // Float32Array [1, 0.01]
 * ```
 */
export function modelRopeInvFreq(
  config: Pick<ModelConfig, "headDim" | "ropeTheta" | "ropeScaling">,
): Float32Array {
  return scaledRopeInvFreq(config.headDim, config.ropeTheta, config.ropeScaling);
}

/**
 * Throws when a model with `dynamic` RoPE scaling would run past its original
 * context (where NTK scaling changes the frequencies with the sequence length,
 * which this module does not model).
 *
 * @example
 * ```ts
 * import { assertRopeScalingRange } from "./rope_scaling.ts";
 * const ropeScaling = { type: "dynamic" as const, factor: 2, originalMaxPositionEmbeddings: 64 };
 * assertRopeScalingRange({ ropeScaling }, 64, "create a model"); // fine
 * ```
 */
export function assertRopeScalingRange(
  config: Pick<ModelConfig, "ropeScaling">,
  maxSeqLen: number,
  action: string,
): void {
  const s = config.ropeScaling;
  if (s?.type === "dynamic" && maxSeqLen > s.originalMaxPositionEmbeddings) {
    throw new RangeError(
      `Cannot ${action} as 'rope_scaling' of type "dynamic" is only supported within the original context: 'maxSeqLen' must be at most original_max_position_embeddings (${s.originalMaxPositionEmbeddings}): received ${maxSeqLen}`,
    );
  }
}

function scaleFrequency(f: number, s: RopeScaling): number {
  switch (s.type) {
    case "linear":
      return f / s.factor;
    case "dynamic":
      return f;
    case "llama3": {
      const wavelength = (2 * Math.PI) / f;
      const lowFreqWavelength = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
      const highFreqWavelength = s.originalMaxPositionEmbeddings / s.highFreqFactor;
      if (wavelength > lowFreqWavelength) return f / s.factor;
      if (wavelength < highFreqWavelength) return f;
      const smooth = (s.originalMaxPositionEmbeddings / wavelength - s.lowFreqFactor) /
        (s.highFreqFactor - s.lowFreqFactor);
      return (1 - smooth) * (f / s.factor) + smooth * f;
    }
  }
}

function checkRopeScaling(s: RopeScaling, action: string): void {
  const positive = (name: string, v: number) => {
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) {
      throw new RangeError(
        `Cannot ${action} as 'ropeScaling.${name}' must be a positive number: received ${v}`,
      );
    }
  };
  if (!["linear", "dynamic", "llama3"].includes(s.type)) {
    throw new TypeError(
      `Cannot ${action} as 'ropeScaling.type' must be one of linear, dynamic, llama3: received ${
        JSON.stringify(s.type)
      }`,
    );
  }
  positive("factor", s.factor);
  if (s.type === "linear") return;
  assertInteger(
    "ropeScaling.originalMaxPositionEmbeddings",
    s.originalMaxPositionEmbeddings,
    action,
    1,
  );
  if (s.type === "llama3") {
    positive("lowFreqFactor", s.lowFreqFactor);
    positive("highFreqFactor", s.highFreqFactor);
    if (!(s.highFreqFactor > s.lowFreqFactor)) {
      throw new RangeError(
        `Cannot ${action} as 'ropeScaling.highFreqFactor' must be greater than 'lowFreqFactor' (${s.lowFreqFactor}): received ${s.highFreqFactor}`,
      );
    }
  }
}
