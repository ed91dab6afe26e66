/**
 * Next-token sampling on the CPU, as llama2.c does it: greedy argmax at
 * temperature 0; otherwise softmax of `logits / temperature`, then either
 * plain multinomial sampling or nucleus (top-p) sampling. Seeded through
 * {@linkcode createRandom}, or any `{ next(): number }` source.
 *
 * @module
 */

import { assertFinite, assertInteger } from "../gpu/errors.ts";
import { createRandom } from "../workloads/random.ts";

/** A source of uniform numbers in [0, 1). */
export interface UniformSource {
  /** Uniform float in [0, 1). */
  next(): number;
}

/** Options of {@linkcode createSampler}. */
export interface SamplerOptions {
  /** 0 means greedy (default 1). */
  temperature?: number;
  /** Nucleus probability in (0, 1]; 1 disables top-p (default 1). */
  topP?: number;
  /** Keep only the `topK` most likely tokens first (default: all). */
  topK?: number;
  /** Seed for {@linkcode createRandom} (default 0); ignored when `random` is given. */
  seed?: number;
  /** Custom uniform source (one draw per sampled token). */
  random?: UniformSource;
}

/** Picks the next token from logits. */
export interface Sampler {
  /** Returns the next token id; `logits` is not modified. */
  sample(logits: ArrayLike<number>): number;
}

/**
 * Index of the largest value (the lowest index on ties).
 *
 * @example
 * ```ts
 * import { argmax } from "./sampling.ts";
 * argmax([0.1, 3, 3, -1]); // 1
 * ```
 */
export function argmax(values: ArrayLike<number>): number {
  if (values.length === 0) {
    throw new RangeError("Cannot take argmax as 'values' must not be empty: received length 0");
  }
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * Creates a sampler. At temperature 0 it is greedy and never draws a random
 * number.
 *
 * @example
 * ```ts
 * import { createSampler } from "./sampling.ts";
 * const sampler = createSampler({ temperature: 0.8, topP: 0.9, seed: 42 });
 * const token = sampler.sample(new Float32Array([0, 2, 1])); // 0, 1 or 2
 * ```
 */
export function createSampler(options: SamplerOptions = {}): Sampler {
  const temperature = options.temperature ?? 1;
  const topP = options.topP ?? 1;
  assertFinite("temperature", temperature, "create a sampler", 0);
  assertFinite("topP", topP, "create a sampler");
  if (!(topP > 0 && topP <= 1)) {
    throw new RangeError(
      `Cannot create a sampler as 'topP' must be in (0, 1] (1 keeps every token): received ${topP}`,
    );
  }
  if (options.topK !== undefined) assertInteger("topK", options.topK, "create a sampler", 1);
  const rng = options.random ?? createRandom(options.seed ?? 0);
  let probs = new Float64Array(0);
  let order = new Int32Array(0);
  return {
    sample(logits: ArrayLike<number>): number {
      const n = logits.length;
      if (n === 0) {
        throw new RangeError("Cannot sample as 'logits' must not be empty: received length 0");
      }
      if (temperature === 0) return argmax(logits);
      if (probs.length !== n) {
        probs = new Float64Array(n);
        order = new Int32Array(n);
      }
      let max = -Infinity;
      for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
      let sum = 0;
      for (let i = 0; i < n; i++) {
        probs[i] = Math.exp((logits[i] - max) / temperature);
        sum += probs[i];
      }
      for (let i = 0; i < n; i++) probs[i] /= sum;
      if (options.topK !== undefined && options.topK < n) {
        for (let i = 0; i < n; i++) order[i] = i;
        const sorted = Array.from(order).sort((a, b) => probs[b] - probs[a] || a - b);
        let kept = 0;
        for (let r = 0; r < options.topK; r++) kept += probs[sorted[r]];
        for (let r = options.topK; r < n; r++) probs[sorted[r]] = 0;
        for (let i = 0; i < n; i++) probs[i] /= kept;
      }
      const coin = rng.next();
      if (topP >= 1) {
        let cdf = 0;
        for (let i = 0; i < n; i++) {
          cdf += probs[i];
          if (coin < cdf) return i;
        }
        return lastNonZero(probs);
      }
      // Nucleus: drop tokens below (1 - p) / (n - 1) (they cannot be in the
      // nucleus), sort the rest, keep the smallest prefix whose mass exceeds p.
      const cutoff = (1 - topP) / (n - 1);
      let m = 0;
      for (let i = 0; i < n; i++) if (probs[i] >= cutoff) order[m++] = i;
      const cand = Array.from(order.subarray(0, m)).sort((a, b) => probs[b] - probs[a] || a - b);
      let cumulative = 0, last = cand.length - 1;
      for (let r = 0; r < cand.length; r++) {
        cumulative += probs[cand[r]];
        if (cumulative > topP) {
          last = r;
          break;
        }
      }
      const r = coin * cumulative;
      let cdf = 0;
      for (let i = 0; i <= last; i++) {
        cdf += probs[cand[i]];
        if (r < cdf) return cand[i];
      }
      return cand[last];
    },
  };
}

function lastNonZero(p: Float64Array): number {
  for (let i = p.length - 1; i > 0; i--) if (p[i] > 0) return i;
  return 0;
}

/**
 * llama2.c's random generator (xorshift64* on a 64-bit state, 24-bit floats),
 * so that a seeded llama2.c run (`run -s SEED`) can be reproduced exactly.
 *
 * @example
 * ```ts
 * import { createLlama2cRandom, createSampler } from "./sampling.ts";
 * const sampler = createSampler({ temperature: 1, topP: 0.9, random: createLlama2cRandom(133742) });
 * ```
 */
export function createLlama2cRandom(seed: number | bigint): UniformSource {
  const mask = (1n << 64n) - 1n;
  let state = BigInt(seed) & mask;
  return {
    next(): number {
      state ^= state >> 12n;
      state = (state ^ (state << 25n)) & mask;
      state ^= state >> 27n;
      const u32 = Number(((state * 0x2545f4914f6cdd1dn) & mask) >> 32n);
      return (u32 >>> 8) / 16777216;
    },
  };
}
