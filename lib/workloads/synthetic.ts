/**
 * A synthetic attention workload whose knobs are the properties that matter
 * to KV retrieval: how similar adjacent steps' queries are, how local the
 * attention is, and how much of it falls on a few heavy-hitter tokens.
 *
 * Model: each KV head has `topics` random unit directions. A token's key is
 * noise plus a pull towards one topic (heavy hitters pull much harder); with
 * probability `locality` a new token takes its head's current topic. A
 * query is its head's current topic plus a slowly drifting per-head
 * direction; with probability `shiftProbability` per KV head and step the
 * topic jumps, which is what fine-grained correction must catch.
 *
 * @module
 */

import { assertFinite, assertInteger } from "../gpu/errors.ts";
import { createRandom, type Random } from "./random.ts";

/** Shape and knobs of {@linkcode createSyntheticSource}. */
export interface SyntheticOptions {
  /** Decoder layers. */
  numLayers: number;
  /** Query heads. */
  numQueryHeads: number;
  /** KV heads. */
  numKvHeads: number;
  /** Per-head size. */
  headDim: number;
  /** Seed (default 1). */
  seed?: number;
  /** Topic directions per KV head (default 16). */
  topics?: number;
  /** Cosine similarity of a query's drift between adjacent steps (default 0.98). */
  querySimilarity?: number;
  /** Chance per KV head and step that its topic jumps (default 0.15). */
  shiftProbability?: number;
  /** Chance that a new token's key takes its head's current topic (default 0.3). */
  locality?: number;
  /** Share of tokens that are heavy hitters, in runs of 8 tokens (default 0.02). */
  heavyHitterShare?: number;
  /**
   * Query norm (default 8): with it a heavy hitter of the query's topic
   * scores about 10 and an ordinary token of the topic about 2, so attention
   * is peaked as in trained models.
   */
  queryNorm?: number;
}

/** q, k, v of one token at one layer. */
export interface TokenQkv {
  /** `[Hq * d]` */
  q: Float32Array;
  /** `[Hkv * d]` */
  k: Float32Array;
  /** `[Hkv * d]` */
  v: Float32Array;
}

/** A source of per-layer q, k, v for a prompt and then decode steps. */
export interface AttentionSource {
  /** Shape of the data. */
  readonly numLayers: number;
  /** Query heads. */
  readonly numQueryHeads: number;
  /** KV heads. */
  readonly numKvHeads: number;
  /** Per-head size. */
  readonly headDim: number;
  /** Next token's q, k, v for every layer (index = layer). */
  next(): TokenQkv[];
}

function unit(rng: Random, d: number): Float32Array {
  const v = new Float32Array(d);
  let n = 0;
  for (let i = 0; i < d; i++) n += (v[i] = rng.normal()) ** 2;
  n = Math.sqrt(n);
  for (let i = 0; i < d; i++) v[i] /= n;
  return v;
}

/**
 * Creates a seeded synthetic source; every call of `next()` yields the next
 * token for all layers.
 *
 * @example
 * ```ts
 * import { createSyntheticSource } from "./synthetic.ts";
 * const src = createSyntheticSource({ numLayers: 2, numQueryHeads: 4, numKvHeads: 2, headDim: 8 });
 * const [layer0] = src.next();
 * console.log(layer0.q.length, layer0.k.length); // 32 16
 * ```
 */
export function createSyntheticSource(options: SyntheticOptions): AttentionSource {
  const action = "create a synthetic source";
  assertInteger("numLayers", options.numLayers, action, 1);
  assertInteger("numQueryHeads", options.numQueryHeads, action, 1);
  assertInteger("numKvHeads", options.numKvHeads, action, 1);
  assertInteger("headDim", options.headDim, action, 1);
  const { numLayers, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = options;
  if (hq % hkv !== 0) {
    throw new RangeError(
      `Cannot ${action} as 'numQueryHeads' must be a multiple of 'numKvHeads' (${hkv}): received ${hq}`,
    );
  }
  const topics = options.topics ?? 16;
  assertInteger("topics", topics, action, 1);
  const knobs = {
    querySimilarity: options.querySimilarity ?? 0.98,
    shiftProbability: options.shiftProbability ?? 0.15,
    locality: options.locality ?? 0.3,
    heavyHitterShare: options.heavyHitterShare ?? 0.02,
  };
  for (const [name, value] of Object.entries(knobs)) {
    assertFinite(name, value, action);
    if (value < 0 || value > 1) {
      throw new RangeError(`Cannot ${action} as '${name}' must be in [0, 1]: received ${value}`);
    }
  }
  const rng = createRandom(options.seed ?? 1);
  const g = hq / hkv;
  // Per layer and KV head: topic directions and the current topic.
  const dirs = Array.from(
    { length: numLayers * hkv },
    () => Array.from({ length: topics }, () => unit(rng, d)),
  );
  const current = new Int32Array(numLayers * hkv).map(() => rng.int(topics));
  const drift = Array.from({ length: numLayers * hq }, () => unit(rng, d));
  const a = Math.sqrt(knobs.querySimilarity), b = Math.sqrt(1 - knobs.querySimilarity);
  const queryNorm = options.queryNorm ?? 8;
  assertFinite("queryNorm", queryNorm, action);
  // Heavy-hitter status per (layer, KV head), decided once per run of 8 tokens.
  const heavy = new Uint8Array(numLayers * hkv);
  let tokenIndex = 0;
  return {
    numLayers,
    numQueryHeads: hq,
    numKvHeads: hkv,
    headDim: d,
    next(): TokenQkv[] {
      const out: TokenQkv[] = [];
      for (let l = 0; l < numLayers; l++) {
        const q = new Float32Array(hq * d),
          k = new Float32Array(hkv * d),
          v = new Float32Array(hkv * d);
        for (let h = 0; h < hkv; h++) {
          const lh = l * hkv + h;
          if (rng.next() < knobs.shiftProbability) current[lh] = rng.int(topics);
          const keyTopic = rng.next() < knobs.locality ? current[lh] : rng.int(topics);
          if (tokenIndex % 8 === 0) heavy[lh] = rng.next() < knobs.heavyHitterShare ? 1 : 0;
          const pull = heavy[lh] ? 3 : 0.6;
          const dir = dirs[lh][keyTopic];
          for (let i = 0; i < d; i++) {
            k[h * d + i] = dir[i] * pull * Math.sqrt(d) * 0.5 + rng.normal() * 0.5;
            v[h * d + i] = rng.normal();
          }
          const topic = dirs[lh][current[lh]];
          for (let j = 0; j < g; j++) {
            const qh = h * g + j;
            const dr = drift[l * hq + qh];
            let n = 0;
            for (let i = 0; i < d; i++) {
              n += (dr[i] = a * dr[i] + b * rng.normal() / Math.sqrt(d)) ** 2;
            }
            n = Math.sqrt(n);
            for (let i = 0; i < d; i++) {
              q[qh * d + i] = queryNorm * (0.8 * topic[i] + 0.6 * dr[i] / n);
            }
          }
        }
        out.push({ q, k, v });
      }
      tokenIndex++;
      return out;
    },
  };
}

/**
 * Collects `count` tokens of a source as per-layer prompt arrays:
 * `k`, `v` `[count][Hkv][d]` and `q` `[count][Hq][d]` (empty with
 * `queries: false`).
 *
 * @example
 * ```ts
 * import { createSyntheticSource, takePrompt } from "./synthetic.ts";
 * const src = createSyntheticSource({ numLayers: 1, numQueryHeads: 2, numKvHeads: 1, headDim: 4 });
 * const [p] = takePrompt(src, 10);
 * console.log(p.k.length); // 40
 * ```
 */
export function takePrompt(
  source: AttentionSource,
  count: number,
  options: { queries?: boolean } = {},
): TokenQkv[] {
  assertInteger("count", count, "take a prompt", 1);
  const { numLayers, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = source;
  // Without queries (`queries: false`) q is empty: prompts only need K/V.
  const qLen = options.queries === false ? 0 : count * hq * d;
  const layers = Array.from({ length: numLayers }, () => ({
    q: new Float32Array(qLen),
    k: new Float32Array(count * hkv * d),
    v: new Float32Array(count * hkv * d),
  }));
  for (let t = 0; t < count; t++) {
    const tok = source.next();
    for (let l = 0; l < numLayers; l++) {
      if (qLen) layers[l].q.set(tok[l].q, t * hq * d);
      layers[l].k.set(tok[l].k, t * hkv * d);
      layers[l].v.set(tok[l].v, t * hkv * d);
    }
  }
  return layers;
}
