/**
 * Plain-loop CPU forward pass of a Llama-family decoder, one token at a time
 * with a KV cache, written like llama2.c's `forward`. It is the oracle for
 * the WebGPU decoder; the per-op helpers are exported for kernel tests.
 *
 * Arithmetic: activations are stored as f32, dot products accumulate in f64.
 * 16-bit weights are widened to f32 once, when the model is created.
 *
 * @module
 */

import { assertHeadsDivide, assertInteger, assertLength } from "../gpu/errors.ts";
import { assertRopeScalingRange, modelRopeInvFreq } from "./rope_scaling.ts";
import { assertSlidingWindow, attentionWindow } from "./sliding_window.ts";
import type { ModelConfig, ModelWeights, RopeStyle, Tensor } from "./types.ts";
import { tensorToFloat32 } from "./weight_convert.ts";

/** Options of {@linkcode rmsnorm}. */
export interface RmsnormOptions {
  /** Epsilon added to the mean square (default 1e-5). */
  eps?: number;
  /** Output array (may be `x`); default a new one. */
  out?: Float32Array;
}

/**
 * RMSNorm: `out[i] = weight[i] * x[i] / sqrt(mean(x^2) + eps)`.
 *
 * @example
 * ```ts
 * import { rmsnorm } from "./reference.ts";
 * rmsnorm(new Float32Array([3, 4]), new Float32Array([1, 1]), { eps: 0 }); // ≈ [0.8485, 1.1314]
 * ```
 */
export function rmsnorm(
  x: Float32Array,
  weight: ArrayLike<number>,
  options: RmsnormOptions = {},
): Float32Array {
  const n = x.length;
  assertLength("weight", weight, n, "run rmsnorm");
  const out = options.out ?? new Float32Array(n);
  assertLength("out", out, n, "run rmsnorm");
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[i] * x[i];
  const scale = 1 / Math.sqrt(ss / n + (options.eps ?? 1e-5));
  for (let i = 0; i < n; i++) out[i] = weight[i] * (scale * x[i]);
  return out;
}

/** Options of {@linkcode matvec}. */
export interface MatvecOptions {
  /** Bias added to each output row. */
  bias?: ArrayLike<number>;
  /** Output array of `w.length / x.length` values; default a new one. */
  out?: Float32Array;
}

/**
 * Matrix-vector product `out = W x (+ bias)` with `W` row-major `[rows, x.length]`.
 *
 * @example
 * ```ts
 * import { matvec } from "./reference.ts";
 * matvec(new Float32Array([1, 2, 3, 4]), new Float32Array([1, 1])); // [3, 7]
 * ```
 */
export function matvec(
  w: Float32Array,
  x: Float32Array,
  options: MatvecOptions = {},
): Float32Array {
  const n = x.length;
  if (n === 0 || w.length % n !== 0) {
    throw new RangeError(
      `Cannot run matvec as 'w' length must be a multiple of 'x' length (${n}): received ${w.length}`,
    );
  }
  const rows = w.length / n;
  const out = options.out ?? new Float32Array(rows);
  assertLength("out", out, rows, "run matvec");
  const bias = options.bias;
  if (bias) assertLength("bias", bias, rows, "run matvec");
  for (let r = 0; r < rows; r++) {
    let sum = 0;
    const base = r * n;
    for (let j = 0; j < n; j++) sum += w[base + j] * x[j];
    out[r] = bias ? sum + bias[r] : sum;
  }
  return out;
}

/** Options of {@linkcode rope}. */
export interface RopeOptions {
  /** Per-head size; `x.length` must be a multiple of it. */
  headDim: number;
  /** RoPE base (default 10000). */
  theta?: number;
  /** Pairing of rotated elements (default `"adjacent"`, llama2.c). */
  style?: RopeStyle;
  /**
   * Inverse frequency of each pair (`headDim / 2` values, e.g. scaled by
   * {@linkcode modelRopeInvFreq}); default `theta^(-2i / headDim)` in f32.
   */
  invFreq?: ArrayLike<number>;
}

/**
 * Rotary position embedding, in place, of every head in `x` (`[heads][headDim]`)
 * at position `pos`. Pair `i` (of `headDim / 2`) turns by
 * `pos * theta^(-2i / headDim)`; `"adjacent"` pairs `(x[2i], x[2i+1])`,
 * `"half"` pairs `(x[i], x[i + headDim/2])` (Hugging Face). Returns `x`.
 *
 * @example
 * ```ts
 * import { rope } from "./reference.ts";
 * rope(new Float32Array([1, 0]), 1, { headDim: 2 }); // [cos 1, sin 1]
 * ```
 */
export function rope(x: Float32Array, pos: number, options: RopeOptions): Float32Array {
  const d = options.headDim;
  assertInteger("headDim", d, "apply rope", 2);
  if (d % 2 !== 0 || x.length % d !== 0) {
    throw new RangeError(
      `Cannot apply rope as 'headDim' must be even and divide x's length (${x.length}): received ${d}`,
    );
  }
  const theta = options.theta ?? 10000;
  const half = options.style === "half";
  const heads = x.length / d;
  const invFreq = options.invFreq;
  if (invFreq) assertLength("invFreq", invFreq, d / 2, "apply rope");
  for (let i = 0; i < d / 2; i++) {
    // f32 frequency like llama2.c's powf, then the angle in f32
    const freq = invFreq
      ? Math.fround(invFreq[i])
      : Math.fround(1 / Math.fround(Math.pow(theta, Math.fround((2 * i) / d))));
    const angle = Math.fround(pos * freq);
    const c = Math.cos(angle), s = Math.sin(angle);
    for (let h = 0; h < heads; h++) {
      const a = half ? h * d + i : h * d + 2 * i;
      const b = half ? a + d / 2 : a + 1;
      const v0 = x[a], v1 = x[b];
      x[a] = v0 * c - v1 * s;
      x[b] = v0 * s + v1 * c;
    }
  }
  return x;
}

/**
 * SwiGLU: `out[i] = silu(gate[i]) * up[i]` with `silu(g) = g / (1 + e^-g)`.
 *
 * @example
 * ```ts
 * import { swiglu } from "./reference.ts";
 * swiglu(new Float32Array([0, 1]), new Float32Array([5, 2])); // [0, 1.4621...]
 * ```
 */
export function swiglu(
  gate: Float32Array,
  up: Float32Array,
  options: { out?: Float32Array } = {},
): Float32Array {
  assertLength("up", up, gate.length, "run swiglu");
  const out = options.out ?? new Float32Array(gate.length);
  assertLength("out", out, gate.length, "run swiglu");
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
  return out;
}

/** Options of {@linkcode softmax}. */
export interface SoftmaxOptions {
  /** Only the first `length` values take part (default all). */
  length?: number;
}

/**
 * Softmax in place (max-subtracted); returns `x`.
 *
 * @example
 * ```ts
 * import { softmax } from "./reference.ts";
 * softmax(new Float32Array([0, 0])); // [0.5, 0.5]
 * ```
 */
export function softmax(x: Float32Array, options: SoftmaxOptions = {}): Float32Array {
  const n = options.length ?? x.length;
  assertInteger("length", n, "run softmax", 1, x.length);
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(x[i] - max);
    x[i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) x[i] /= sum;
  return x;
}

/** Per-layer hooks of {@linkcode ReferenceModel.forward}. */
export interface ForwardOptions {
  /**
   * Called per layer with the post-RoPE query `[Hq*d]`, key and value
   * `[Hkv*d]` of this token (views of the model's scratch memory: copy to keep).
   */
  onQkv?: (layer: number, q: Float32Array, k: Float32Array, v: Float32Array) => void;
  /** Called with the residual stream `[dim]` after each layer (a scratch view). */
  onHidden?: (layer: number, x: Float32Array) => void;
  /**
   * Restricts attention to some keys, per layer and KV head: called with
   * the full softmax of each query head of the group (`probs[g][i]` is head
   * `kvHead * group + g`'s probability of key `first + i`), it returns one
   * weight per key, 1 to keep it, 0 to drop it. The kept probabilities are
   * renormalized, which is exactly attention over the kept keys.
   */
  keyMask?: (
    layer: number,
    kvHead: number,
    probs: readonly Float32Array[],
    first: number,
  ) => ArrayLike<number>;
}

/** A CPU model with its own KV cache. */
export interface ReferenceModel {
  /** The model's hyper-parameters. */
  readonly config: ModelConfig;
  /** Positions currently in the KV cache (the next position to feed). */
  readonly length: number;
  /**
   * Runs `token` at position `pos` (0 ≤ pos ≤ length; a smaller pos rewinds
   * the cache) and returns fresh next-token logits `[vocab]`.
   */
  forward(token: number, pos: number, options?: ForwardOptions): Float32Array;
  /** Forgets the KV cache. */
  reset(): void;
  /** Cached key `[Hkv*d]` of `layer` at `pos` (a view). */
  key(layer: number, pos: number): Float32Array;
  /** Cached value `[Hkv*d]` of `layer` at `pos` (a view). */
  value(layer: number, pos: number): Float32Array;
}

/** Options of {@linkcode createReferenceModel}. */
export interface ReferenceModelOptions {
  /** Longest sequence the KV cache accepts (default `config.maxSeqLen`). */
  maxSeqLen?: number;
}

interface F32Layer {
  attnNorm: Float32Array;
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  wo: Float32Array;
  bq?: Float32Array;
  bk?: Float32Array;
  bv?: Float32Array;
  ffnNorm: Float32Array;
  w1: Float32Array;
  w2: Float32Array;
  w3: Float32Array;
}

function expectShape(name: string, t: Tensor | undefined, shape: number[]): Float32Array {
  if (!t) {
    throw new TypeError(`Cannot create reference model as tensor '${name}' is missing`);
  }
  const ok = t.shape.length === shape.length && t.shape.every((v, i) => v === shape[i]);
  const count = shape.reduce((a, b) => a * b, 1);
  if (!ok || t.data.length !== count) {
    throw new RangeError(
      `Cannot create reference model as tensor '${name}' must have shape [${shape}]: received [${t.shape}] with ${t.data.length} values`,
    );
  }
  return tensorToFloat32(t);
}

/**
 * Builds a CPU reference model from weights (any of f32/f16/bf16; 16-bit
 * tensors are widened to f32 here). Shapes are checked against the config.
 * `ropeScaling` rotates by {@linkcode modelRopeInvFreq}'s frequencies (the
 * ones the GPU decoder uses); `slidingWindow` limits attention to the last
 * `slidingWindow` positions in the layers it covers.
 *
 * @example
 * ```ts
 * import { createReferenceModel } from "./reference.ts";
 * import { loadModel } from "./load.ts";
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const model = createReferenceModel(weights);
 * const logits = model.forward(weights.config.bosId, 0);
 * logits.length; // 512
 * ```
 */
export function createReferenceModel(
  weights: ModelWeights,
  options: ReferenceModelOptions = {},
): ReferenceModel {
  const c = weights.config;
  const action = "create reference model";
  for (
    const k of [
      "dim",
      "hiddenDim",
      "numLayers",
      "numQueryHeads",
      "numKvHeads",
      "headDim",
      "vocabSize",
    ] as const
  ) {
    assertInteger(k, c[k], action, 1);
  }
  assertHeadsDivide(c.numQueryHeads, c.numKvHeads, action);
  if (weights.layers.length !== c.numLayers) {
    throw new RangeError(
      `Cannot ${action} as 'layers' must have ${c.numLayers} entries: received ${weights.layers.length}`,
    );
  }
  const maxSeqLen = options.maxSeqLen ?? c.maxSeqLen;
  assertInteger("maxSeqLen", maxSeqLen, action, 1);
  assertRopeScalingRange(c, maxSeqLen, action);
  assertSlidingWindow(c, action);
  const { dim, hiddenDim, headDim: d, numQueryHeads: hq, numKvHeads: hkv, vocabSize } = c;
  const qDim = hq * d, kvDim = hkv * d;
  const layers: F32Layer[] = weights.layers.map((l, i) => {
    const p = `layers[${i}].`;
    const layer: F32Layer = {
      attnNorm: expectShape(p + "attnNorm", l.attnNorm, [dim]),
      wq: expectShape(p + "wq", l.wq, [qDim, dim]),
      wk: expectShape(p + "wk", l.wk, [kvDim, dim]),
      wv: expectShape(p + "wv", l.wv, [kvDim, dim]),
      wo: expectShape(p + "wo", l.wo, [dim, qDim]),
      ffnNorm: expectShape(p + "ffnNorm", l.ffnNorm, [dim]),
      w1: expectShape(p + "w1", l.w1, [hiddenDim, dim]),
      w2: expectShape(p + "w2", l.w2, [dim, hiddenDim]),
      w3: expectShape(p + "w3", l.w3, [hiddenDim, dim]),
    };
    if (c.qkvBias) {
      layer.bq = expectShape(p + "bq", l.bq, [qDim]);
      layer.bk = expectShape(p + "bk", l.bk, [kvDim]);
      layer.bv = expectShape(p + "bv", l.bv, [kvDim]);
    }
    return layer;
  });
  const embedding = expectShape("tokenEmbedding", weights.tokenEmbedding, [vocabSize, dim]);
  const finalNorm = expectShape("finalNorm", weights.finalNorm, [dim]);
  const classifier = c.tiedEmbeddings
    ? embedding
    : expectShape("classifier", weights.classifier, [vocabSize, dim]);

  // Scratch, like llama2.c's RunState.
  const x = new Float32Array(dim), xb = new Float32Array(dim);
  const q = new Float32Array(qDim), att = new Float32Array(qDim);
  const k = new Float32Array(kvDim), v = new Float32Array(kvDim);
  const hb = new Float32Array(hiddenDim), hb2 = new Float32Array(hiddenDim);
  let capacity = Math.min(maxSeqLen, 256);
  let keyCache = layers.map(() => new Float32Array(capacity * kvDim));
  let valueCache = layers.map(() => new Float32Array(capacity * kvDim));
  let length = 0;
  const scale = 1 / Math.sqrt(d);
  const group = hq / hkv;
  // Scores, then probabilities, of each query head of a KV head's group.
  let groupProbs = Array.from({ length: group }, () => new Float32Array(capacity));
  const ropeOptions: RopeOptions = { headDim: d, theta: c.ropeTheta, style: c.ropeStyle };
  if (c.ropeScaling) ropeOptions.invFreq = modelRopeInvFreq(c);
  const windows = layers.map((_, l) => attentionWindow(c, l));

  const grow = (needed: number) => {
    const next = Math.min(maxSeqLen, Math.max(needed, capacity * 2));
    const widen = (a: Float32Array) => {
      const b = new Float32Array(next * kvDim);
      b.set(a);
      return b;
    };
    keyCache = keyCache.map(widen);
    valueCache = valueCache.map(widen);
    groupProbs = groupProbs.map(() => new Float32Array(next));
    capacity = next;
  };

  const checkCached = (layer: number, pos: number) => {
    assertInteger("layer", layer, "read the KV cache", 0, c.numLayers - 1);
    assertInteger("pos", pos, "read the KV cache", 0, length - 1);
  };

  // Attention of layer `l` at `pos` over keys first..pos (all, or those
  // `mask` keeps, renormalized), into `att`.
  const attend = (
    l: number,
    kc: Float32Array,
    vc: Float32Array,
    first: number,
    pos: number,
    mask?: ForwardOptions["keyMask"],
  ) => {
    const n = pos + 1 - first;
    for (let kh = 0; kh < hkv; kh++) {
      const kvo = kh * d;
      const probs = groupProbs.map((p) => p.subarray(0, n));
      for (let g = 0; g < group; g++) {
        const qo = (kh * group + g) * d;
        for (let t = first; t <= pos; t++) {
          let s = 0;
          const ko = t * kvDim + kvo;
          for (let i = 0; i < d; i++) s += q[qo + i] * kc[ko + i];
          probs[g][t - first] = s * scale;
        }
        softmax(probs[g]);
      }
      const keep = mask?.(l, kh, probs, first);
      if (keep) assertLength("keyMask result", keep, n, "run forward");
      for (let g = 0; g < group; g++) {
        const qo = (kh * group + g) * d, p = probs[g];
        let kept = 1;
        if (keep) {
          kept = 0;
          for (let i = 0; i < n; i++) kept += p[i] * keep[i];
          if (!(kept > 0)) {
            throw new RangeError(
              `Cannot run forward as 'keyMask' must keep some attention of layer ${l} KV head ${kh}: received a mask that keeps ${kept}`,
            );
          }
        }
        for (let i = 0; i < d; i++) {
          let acc = 0;
          for (let t = first; t <= pos; t++) {
            const w = keep ? p[t - first] * keep[t - first] : p[t - first];
            acc += w * vc[t * kvDim + kvo + i];
          }
          att[qo + i] = keep ? acc / kept : acc;
        }
      }
    }
  };

  return {
    config: c,
    get length() {
      return length;
    },
    reset() {
      length = 0;
    },
    key(layer: number, pos: number): Float32Array {
      checkCached(layer, pos);
      return keyCache[layer].subarray(pos * kvDim, (pos + 1) * kvDim);
    },
    value(layer: number, pos: number): Float32Array {
      checkCached(layer, pos);
      return valueCache[layer].subarray(pos * kvDim, (pos + 1) * kvDim);
    },
    forward(token: number, pos: number, fwd: ForwardOptions = {}): Float32Array {
      assertInteger("token", token, "run forward", 0, vocabSize - 1);
      assertInteger("pos", pos, "run forward", 0, Math.min(length, maxSeqLen - 1));
      if (pos >= capacity) grow(pos + 1);
      x.set(embedding.subarray(token * dim, (token + 1) * dim));
      for (let l = 0; l < layers.length; l++) {
        const w = layers[l];
        rmsnorm(x, w.attnNorm, { eps: c.normEps, out: xb });
        matvec(w.wq, xb, { out: q, bias: w.bq });
        matvec(w.wk, xb, { out: k, bias: w.bk });
        matvec(w.wv, xb, { out: v, bias: w.bv });
        rope(q, pos, ropeOptions);
        rope(k, pos, ropeOptions);
        fwd.onQkv?.(l, q, k, v);
        keyCache[l].set(k, pos * kvDim);
        valueCache[l].set(v, pos * kvDim);
        const kc = keyCache[l], vc = valueCache[l];
        // Sliding window: keys first..pos (probability 0 is key `first`).
        const first = windows[l] > 0 ? Math.max(0, pos - windows[l] + 1) : 0;
        attend(l, kc, vc, first, pos, fwd.keyMask);
        matvec(w.wo, att, { out: xb });
        for (let i = 0; i < dim; i++) x[i] += xb[i];
        rmsnorm(x, w.ffnNorm, { eps: c.normEps, out: xb });
        matvec(w.w1, xb, { out: hb });
        matvec(w.w3, xb, { out: hb2 });
        swiglu(hb, hb2, { out: hb });
        matvec(w.w2, hb, { out: xb });
        for (let i = 0; i < dim; i++) x[i] += xb[i];
        fwd.onHidden?.(l, x);
      }
      length = pos + 1;
      rmsnorm(x, finalNorm, { eps: c.normEps, out: xb });
      return matvec(classifier, xb);
    },
  };
}
