/**
 * A small seeded random generator (SplitMix32 seeding a xoshiro128**) for
 * reproducible tests and benchmarks.
 *
 * @module
 */

/** A seeded source of random numbers. */
export interface Random {
  /** Uniform float in [0, 1). */
  next(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  /** Standard normal (Box-Muller). */
  normal(): number;
}

/**
 * Creates a seeded generator; the same seed gives the same sequence on every
 * platform.
 *
 * @example
 * ```ts
 * import { createRandom } from "./random.ts";
 * const rng = createRandom(42);
 * const x = rng.next(); // in [0, 1)
 * ```
 */
export function createRandom(seed: number): Random {
  let s = seed >>> 0;
  const splitmix = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = splitmix(), b = splitmix(), c = splitmix(), d = splitmix();
  const nextU32 = () => {
    const result = Math.imul(rotl(Math.imul(b, 5) >>> 0, 7), 9) >>> 0;
    const t = (b << 9) >>> 0;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d >>> 0, 11);
    a >>>= 0, b >>>= 0, c >>>= 0;
    return result;
  };
  const next = () => nextU32() / 4294967296;
  let spare: number | undefined;
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    normal: () => {
      if (spare !== undefined) {
        const v = spare;
        spare = undefined;
        return v;
      }
      const u = 1 - next(), v = next();
      const r = Math.sqrt(-2 * Math.log(u));
      spare = r * Math.sin(2 * Math.PI * v);
      return r * Math.cos(2 * Math.PI * v);
    },
  };
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/**
 * A `Float32Array` of `length` normal values times `scale`.
 *
 * @example
 * ```ts
 * import { createRandom, randomNormalArray } from "./random.ts";
 * const q = randomNormalArray(createRandom(1), 128);
 * ```
 */
export function randomNormalArray(rng: Random, length: number, scale = 1): Float32Array {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = rng.normal() * scale;
  return out;
}

/**
 * A `Float32Array` of `length` uniform values in [lo, hi).
 *
 * @example
 * ```ts
 * import { createRandom, randomUniformArray } from "./random.ts";
 * const x = randomUniformArray(createRandom(1), 16, -1, 1);
 * ```
 */
export function randomUniformArray(rng: Random, length: number, lo = -1, hi = 1): Float32Array {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = lo + (hi - lo) * rng.next();
  return out;
}
