/**
 * The WebGPU forward pass of a Llama-family decoder (Llama, Mistral, Qwen2,
 * SmolLM; llama2.c checkpoints): batched prefill over the prompt and
 * one-token decode steps, with decode attention delegated to an
 * {@linkcode AttentionBackend}.
 *
 * @module
 */

import { createBuffer } from "../gpu/buffers.ts";
import {
  assertDevice,
  assertFinite,
  assertHeadsDivide,
  assertInteger,
  assertOneOf,
  disposedError,
} from "../gpu/errors.ts";
import {
  type AttentionBackend,
  createDenseAttentionBackend,
  type DenseAttentionBackend,
} from "./backends/dense.ts";
import {
  type BufferSlice,
  createSeqUniform,
  type GpuMatrix,
  type KernelPlan,
  MAX_ATTENTION_HEAD_DIM,
  planCausalAttention,
  planEmbedding,
  planLinear,
  planResidualAdd,
  planRmsNorm,
  planRope,
  planSwiglu,
  recordPlans,
  uploadMatrix,
  uploadVector,
  writeSeqStart,
} from "./kernels.ts";
import { compileSampleToken, planSampleToken, type SampleTokenPlan } from "./kernels_sampling.ts";
import { assertRopeScalingRange, modelRopeInvFreq } from "./rope_scaling.ts";
import { assertSlidingWindow, attentionWindow, shortestAttentionWindow } from "./sliding_window.ts";
import type { ModelConfig, ModelWeights, Tensor, WeightDtype } from "./types.ts";

/** Options of {@linkcode createGpuModel}. */
export interface GpuModelOptions {
  /**
   * Where decode attention runs; default: a dense backend with a contiguous
   * cache of `maxSeqLen` positions, owned (and disposed) by the model. A
   * backend passed here stays the caller's to dispose.
   */
  attention?: AttentionBackend;
  /** Store the projection and embedding matrices as this type; default: as loaded. */
  weightDtype?: WeightDtype;
  /** Longest sequence (prompt + generated); default `config.maxSeqLen`. */
  maxSeqLen?: number;
  /** Prompt tokens per prefill block (a multiple of 64); default 256. */
  prefillChunk?: number;
  /** Largest weight buffer in bytes (bigger matrices are split by rows); default: the device limit. */
  maxBindingBytes?: number;
}

/** Options of {@linkcode GpuModel.decodeSampled}. */
export interface SampledDecodeOptions {
  /** Decode steps to run, which is also the number of tokens sampled (at least 1). */
  count: number;
  /** 0 (the default) is greedy; otherwise tokens are drawn from `softmax(logits / temperature)`. */
  temperature?: number;
  /** One uniform number in [0, 1) per step, used at temperature > 0 (as a CPU sampler's draws). */
  coins?: ArrayLike<number>;
}

/** A model on the GPU, ready to prefill and decode one sequence at a time. */
export interface GpuModel {
  /** Hyper-parameters. */
  readonly config: ModelConfig;
  /** Longest sequence accepted. */
  readonly maxSeqLen: number;
  /** Tokens of the current sequence processed so far (the next `pos`). */
  readonly position: number;
  /** The backend decode attention runs through. */
  readonly attention: AttentionBackend;
  /** Bytes of weights on the GPU. */
  readonly weightBytes: number;
  /**
   * Starts a new sequence: runs the prompt through every layer in blocks,
   * hands each layer's K/V to the backend and returns the logits of the last
   * prompt token (`[vocab]`).
   */
  prefill(tokens: ArrayLike<number>): Promise<Float32Array>;
  /** Runs `token` at position `pos` (which must equal `position`, or 0 to start over) and returns its logits. */
  decode(token: number, pos: number): Promise<Float32Array>;
  /**
   * Runs `options.count` decode steps from `token` at `pos` (which must
   * equal `position`, or 0), each sampling its next token on the GPU and
   * feeding it to the next step, and returns the sampled tokens after one
   * host wait for them all. Token `j` is sampled from the logits at position
   * `pos + j`, as {@linkcode decode} plus a CPU sampler would pick it (at
   * temperature > 0 up to f32 rounding at the edge of a token's mass).
   * The last token is not fed back: the next call starts from it.
   */
  decodeSampled(token: number, pos: number, options: SampledDecodeOptions): Promise<Uint32Array>;
  /** Destroys the weights and buffers (and the default backend). */
  [Symbol.dispose](): void;
}

interface LayerGpu {
  attnNorm: GPUBuffer;
  ffnNorm: GPUBuffer;
  wq: GpuMatrix;
  wk: GpuMatrix;
  wv: GpuMatrix;
  wo: GpuMatrix;
  w1: GpuMatrix;
  w2: GpuMatrix;
  w3: GpuMatrix;
  bq?: GPUBuffer;
  bk?: GPUBuffer;
  bv?: GPUBuffer;
}

function checkConfig(c: ModelConfig, action: string): void {
  for (
    const key of [
      "dim",
      "hiddenDim",
      "numLayers",
      "numQueryHeads",
      "numKvHeads",
      "vocabSize",
      "maxSeqLen",
    ] as const
  ) assertInteger(`config.${key}`, c[key], action, 1);
  assertInteger("config.headDim", c.headDim, action, 2, MAX_ATTENTION_HEAD_DIM);
  if (c.headDim % 2 !== 0) {
    throw new RangeError(
      `Cannot ${action} as 'config.headDim' must be even: received ${c.headDim}`,
    );
  }
  assertHeadsDivide(c.numQueryHeads, c.numKvHeads, action, [
    "config.numQueryHeads",
    "config.numKvHeads",
  ]);
  assertOneOf("config.ropeStyle", c.ropeStyle, ["adjacent", "half"] as const, action);
  assertSlidingWindow(c, action);
}

function checkShape(name: string, t: Tensor | undefined, shape: number[], action: string): void {
  if (!t) throw new TypeError(`Cannot ${action} as '${name}' must be a tensor: received ${t}`);
  if (t.shape.length !== shape.length || t.shape.some((n, i) => n !== shape[i])) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must have shape [${shape}]: received [${t.shape}]`,
    );
  }
}

function checkWeights(w: ModelWeights, action: string): void {
  const c = w.config;
  const qDim = c.numQueryHeads * c.headDim, kvDim = c.numKvHeads * c.headDim;
  checkShape("tokenEmbedding", w.tokenEmbedding, [c.vocabSize, c.dim], action);
  checkShape("finalNorm", w.finalNorm, [c.dim], action);
  if (!c.tiedEmbeddings) checkShape("classifier", w.classifier, [c.vocabSize, c.dim], action);
  if (w.layers.length !== c.numLayers) {
    throw new RangeError(
      `Cannot ${action} as 'layers' must have ${c.numLayers} entries: received ${w.layers.length}`,
    );
  }
  w.layers.forEach((l, i) => {
    const p = `layers[${i}].`;
    checkShape(p + "attnNorm", l.attnNorm, [c.dim], action);
    checkShape(p + "ffnNorm", l.ffnNorm, [c.dim], action);
    checkShape(p + "wq", l.wq, [qDim, c.dim], action);
    checkShape(p + "wk", l.wk, [kvDim, c.dim], action);
    checkShape(p + "wv", l.wv, [kvDim, c.dim], action);
    checkShape(p + "wo", l.wo, [c.dim, qDim], action);
    checkShape(p + "w1", l.w1, [c.hiddenDim, c.dim], action);
    checkShape(p + "w2", l.w2, [c.dim, c.hiddenDim], action);
    checkShape(p + "w3", l.w3, [c.hiddenDim, c.dim], action);
    if (l.bq) checkShape(p + "bq", l.bq, [qDim], action);
    if (l.bk) checkShape(p + "bk", l.bk, [kvDim], action);
    if (l.bv) checkShape(p + "bv", l.bv, [kvDim], action);
  });
}

const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/**
 * Uploads `weights` and plans the decode step. Prefill plans are built per
 * prompt. A decode step is one submit when the backend records (more if it
 * must wait inside the step); otherwise one per layer plus one for the
 * classifier.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createGpuModel } from "./gpu_model.ts";
 * import type { ModelWeights, Tensor } from "./types.ts";
 * using gpu = await requestGpu();
 * const t = (...shape: number[]): Tensor => ({
 *   dtype: "f32", shape, data: new Float32Array(shape.reduce((a, b) => a * b)).fill(0.01),
 * });
 * const config = {
 *   architecture: "llama", dim: 8, hiddenDim: 16, numLayers: 1, numQueryHeads: 2,
 *   numKvHeads: 1, headDim: 4, vocabSize: 10, maxSeqLen: 16, ropeTheta: 10000,
 *   ropeStyle: "adjacent" as const, normEps: 1e-5, tiedEmbeddings: true, qkvBias: false,
 *   bosId: 1, eosId: 2,
 * };
 * const weights: ModelWeights = {
 *   config, tokenEmbedding: t(10, 8), finalNorm: t(8),
 *   layers: [{
 *     attnNorm: t(8), ffnNorm: t(8), wq: t(8, 8), wk: t(4, 8), wv: t(4, 8), wo: t(8, 8),
 *     w1: t(16, 8), w2: t(8, 16), w3: t(16, 8),
 *   }],
 * };
 * using model = createGpuModel(gpu.device, weights);
 * const logits = await model.prefill([1, 5]);
 * console.log(logits.length, model.position); // 10 2
 * ```
 */
export function createGpuModel(
  device: GPUDevice,
  weights: ModelWeights,
  options: GpuModelOptions = {},
): GpuModel {
  assertDevice(device, "create a GPU model");
  const action = "create a GPU model";
  const config = weights.config;
  checkConfig(config, action);
  checkWeights(weights, action);
  if (options.weightDtype !== undefined) {
    assertOneOf("weightDtype", options.weightDtype, ["f32", "f16", "bf16"] as const, action);
  }
  const maxSeqLen = options.maxSeqLen ?? config.maxSeqLen;
  assertInteger("maxSeqLen", maxSeqLen, action, 1);
  assertRopeScalingRange(config, maxSeqLen, action);
  const window = shortestAttentionWindow(config);
  if (
    options.attention && window > 0 && window < maxSeqLen && !options.attention.appliesSlidingWindow
  ) {
    throw new RangeError(
      `Cannot ${action} as the model's 'sliding_window' (${window} tokens) is shorter than 'maxSeqLen' (${maxSeqLen}) and the attention backend does not apply it: use the dense backend built from the model's config, or a maxSeqLen of at most ${window}`,
    );
  }
  const chunk = options.prefillChunk ?? 256;
  assertInteger("prefillChunk", chunk, action, 64);
  if (chunk % 64 !== 0) {
    throw new RangeError(
      `Cannot ${action} as 'prefillChunk' must be a multiple of 64: received ${chunk}`,
    );
  }
  if (options.maxBindingBytes !== undefined) {
    assertInteger("maxBindingBytes", options.maxBindingBytes, action, 16);
  }

  const {
    dim,
    hiddenDim: hidden,
    numLayers: L,
    numQueryHeads: hq,
    numKvHeads: hkv,
    headDim: d,
    vocabSize: vocab,
  } = config;
  const qDim = hq * d, kvDim = hkv * d;

  // Everything created goes into `owned` so a failure half-way frees it all.
  const ownedBuffers: GPUBuffer[] = [];
  const ownedMatrices: GpuMatrix[] = [];
  const ownedPlans: KernelPlan[] = [];
  let ownedBackend: DenseAttentionBackend | undefined;
  const disposeAll = () => {
    for (const p of ownedPlans) p[Symbol.dispose]();
    for (const m of ownedMatrices) m[Symbol.dispose]();
    for (const b of ownedBuffers) b.destroy();
    ownedBackend?.[Symbol.dispose]();
  };
  const buffer = (label: string, usage: number, data: ArrayBufferView | number) => {
    const b = createBuffer(device, label, usage, data);
    ownedBuffers.push(b);
    return b;
  };
  const vector = (t: Tensor, label: string) => {
    const b = uploadVector(device, t, label);
    ownedBuffers.push(b);
    return b;
  };
  const matrix = (t: Tensor, label: string) => {
    const m = uploadMatrix(device, t, {
      dtype: options.weightDtype,
      label,
      maxPartBytes: options.maxBindingBytes,
    });
    ownedMatrices.push(m);
    return m;
  };
  const plan = (p: KernelPlan) => (ownedPlans.push(p), p);

  try {
    // Sampling runs on the first decode step: compiled with the rest.
    compileSampleToken(device);
    const embedding = matrix(weights.tokenEmbedding, "token embedding");
    const classifier = config.tiedEmbeddings
      ? embedding
      : matrix(weights.classifier!, "classifier");
    const finalNorm = vector(weights.finalNorm, "final norm");
    const invFreq = buffer(
      "rope inverse frequencies",
      GPUBufferUsage.STORAGE,
      modelRopeInvFreq(config),
    );
    const layers: LayerGpu[] = weights.layers.map((lw, i) => ({
      attnNorm: vector(lw.attnNorm, `layer ${i} attention norm`),
      ffnNorm: vector(lw.ffnNorm, `layer ${i} ffn norm`),
      wq: matrix(lw.wq, `layer ${i} wq`),
      wk: matrix(lw.wk, `layer ${i} wk`),
      wv: matrix(lw.wv, `layer ${i} wv`),
      wo: matrix(lw.wo, `layer ${i} wo`),
      w1: matrix(lw.w1, `layer ${i} w1`),
      w2: matrix(lw.w2, `layer ${i} w2`),
      w3: matrix(lw.w3, `layer ${i} w3`),
      bq: lw.bq && vector(lw.bq, `layer ${i} bq`),
      bk: lw.bk && vector(lw.bk, `layer ${i} bk`),
      bv: lw.bv && vector(lw.bv, `layer ${i} bv`),
    }));
    const weightBytes = ownedMatrices.reduce((s, m) => s + m.byteLength, 0) +
      ownedBuffers.reduce((s, b) => s + b.size, 0);

    const backend = options.attention ??
      (ownedBackend = createDenseAttentionBackend(device, config, { maxSeqLen }));

    // Decode-step buffers and plans, built once.
    const x = buffer("decode x", STORAGE, dim * 4);
    const xb = buffer("decode normed x", STORAGE, dim * 4);
    const q = buffer("decode q", STORAGE, qDim * 4);
    const k = buffer("decode k", STORAGE, kvDim * 4);
    const v = buffer("decode v", STORAGE, kvDim * 4);
    const att = buffer("decode attention output", STORAGE, qDim * 4);
    const tmp = buffer("decode projection output", STORAGE, dim * 4);
    const h1 = buffer("decode gate", STORAGE, hidden * 4);
    const h3 = buffer("decode up", STORAGE, hidden * 4);
    const logits = buffer("logits", STORAGE, vocab * 4);
    const tokenBuf = buffer("decode token", STORAGE, 4);
    const seq = createSeqUniform(device, "decode position", 0);
    ownedBuffers.push(seq);
    const readback = buffer(
      "logits readback",
      GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      vocab * 4,
    );

    /** Norm + q/k/v projections + RoPE over `rows` rows (the part before attention). */
    const planPreAttention = (
      lw: LayerGpu,
      io: {
        x: BufferSlice;
        xb: BufferSlice;
        q: BufferSlice;
        k: BufferSlice;
        v: BufferSlice;
        seq: GPUBuffer;
      },
      rows: number,
    ): KernelPlan[] => [
      planRmsNorm(device, {
        input: io.x,
        weight: lw.attnNorm,
        output: io.xb,
        rows,
        dim,
        eps: config.normEps,
      }),
      planLinear(device, { weight: lw.wq, input: io.xb, output: io.q, tokens: rows, bias: lw.bq }),
      planLinear(device, { weight: lw.wk, input: io.xb, output: io.k, tokens: rows, bias: lw.bk }),
      planLinear(device, { weight: lw.wv, input: io.xb, output: io.v, tokens: rows, bias: lw.bv }),
      planRope(device, {
        data: io.q,
        rows,
        heads: hq,
        headDim: d,
        style: config.ropeStyle,
        invFreq,
        seq: io.seq,
      }),
      planRope(device, {
        data: io.k,
        rows,
        heads: hkv,
        headDim: d,
        style: config.ropeStyle,
        invFreq,
        seq: io.seq,
      }),
    ];

    /** Output projection, residual and the SwiGLU MLP (the part after attention). */
    const planPostAttention = (
      lw: LayerGpu,
      io: {
        x: BufferSlice;
        xb: BufferSlice;
        att: BufferSlice;
        tmp: BufferSlice;
        h1: BufferSlice;
        h3: BufferSlice;
      },
      rows: number,
    ): KernelPlan[] => [
      planLinear(device, { weight: lw.wo, input: io.att, output: io.tmp, tokens: rows }),
      planResidualAdd(device, { target: io.x, addend: io.tmp, n: rows * dim }),
      planRmsNorm(device, {
        input: io.x,
        weight: lw.ffnNorm,
        output: io.xb,
        rows,
        dim,
        eps: config.normEps,
      }),
      planLinear(device, { weight: lw.w1, input: io.xb, output: io.h1, tokens: rows }),
      planLinear(device, { weight: lw.w3, input: io.xb, output: io.h3, tokens: rows }),
      planSwiglu(device, { gate: io.h1, up: io.h3, n: rows * hidden }),
      planLinear(device, { weight: lw.w2, input: io.h1, output: io.tmp, tokens: rows }),
      planResidualAdd(device, { target: io.x, addend: io.tmp, n: rows * dim }),
    ];

    const dec = { x: { buffer: x }, xb: { buffer: xb }, seq };
    const decodeEmbed = plan(
      planEmbedding(device, { table: embedding, tokens: tokenBuf, output: x, count: 1 }),
    );
    const decodePre = layers.map((lw) =>
      planPreAttention(lw, {
        ...dec,
        q: { buffer: q },
        k: { buffer: k },
        v: { buffer: v },
      }, 1).map(plan)
    );
    const decodePost = layers.map((lw) =>
      planPostAttention(lw, {
        ...dec,
        att: { buffer: att },
        tmp: { buffer: tmp },
        h1: { buffer: h1 },
        h3: { buffer: h3 },
      }, 1).map(plan)
    );
    const finalPlans = [
      planRmsNorm(device, {
        input: x,
        weight: finalNorm,
        output: xb,
        rows: 1,
        dim,
        eps: config.normEps,
      }),
      planLinear(device, { weight: classifier, input: xb, output: logits }),
    ].map(plan);
    // What a decode step records before each layer's attention (the previous
    // layer's MLP, this layer's norm and projections), and after the last.
    const beforeAttention = layers.map((_, l) =>
      l === 0 ? [decodeEmbed, ...decodePre[0]] : [...decodePost[l - 1], ...decodePre[l]]
    );
    const afterLastAttention = [...decodePost[L - 1], ...finalPlans];

    let position = 0;
    let busy = false;
    let disposed = false;
    const enter = (what: string) => {
      if (disposed) throw disposedError(what, "model");
      if (busy) {
        throw new Error(`Cannot ${what} as the model is still running a previous call`);
      }
      busy = true;
    };

    const readLogits = async (): Promise<Float32Array> => {
      await readback.mapAsync(GPUMapMode.READ);
      const out = new Float32Array(readback.getMappedRange().slice(0));
      readback.unmap();
      return out;
    };
    const finish = (encoder: GPUCommandEncoder): Promise<Float32Array> => {
      recordPlans(encoder, finalPlans, "final norm and classifier");
      encoder.copyBufferToBuffer(logits, 0, readback, 0, vocab * 4);
      device.queue.submit([encoder.finish()]);
      return readLogits();
    };

    const checkToken = (name: string, token: unknown, what: string) =>
      assertInteger(name, token, what, 0, vocab - 1);

    const prefill = async (tokens: ArrayLike<number>): Promise<Float32Array> => {
      const what = "prefill the model";
      if (tokens == null || typeof tokens.length !== "number") {
        throw new TypeError(
          `Cannot ${what} as 'tokens' must be an array of token ids: received ${tokens}`,
        );
      }
      const n = tokens.length;
      if (n < 1) {
        throw new RangeError(`Cannot ${what} as 'tokens' must not be empty: received length 0`);
      }
      if (n > maxSeqLen) {
        throw new RangeError(
          `Cannot ${what} as the prompt must be at most maxSeqLen (${maxSeqLen}) tokens: received ${n}`,
        );
      }
      for (let i = 0; i < n; i++) checkToken(`tokens[${i}]`, tokens[i], what);
      const limit = device.limits.maxStorageBufferBindingSize;
      if (n * kvDim * 4 > limit) {
        throw new RangeError(
          `Cannot ${what} as the prompt's K/V (${n} x ${kvDim} f32) must fit one storage binding of ${limit} bytes: received ${n} tokens`,
        );
      }
      enter(what);
      const temp: GPUBuffer[] = [];
      const plans: KernelPlan[] = [];
      try {
        const tb = (label: string, bytes: number, data?: ArrayBufferView) => {
          const b = createBuffer(device, `prefill ${label}`, STORAGE, data ?? bytes);
          temp.push(b);
          return b;
        };
        const rowsMax = Math.min(chunk, n);
        const xAll = tb("x", n * dim * 4);
        const qAll = tb("q", n * qDim * 4);
        const kAll = tb("k", n * kvDim * 4);
        const vAll = tb("v", n * kvDim * 4);
        const toks = tb("tokens", n * 4, Uint32Array.from(tokens));
        const cxb = tb("normed x", rowsMax * dim * 4);
        const catt = tb("attention output", rowsMax * qDim * 4);
        const ctmp = tb("projection output", rowsMax * dim * 4);
        const ch1 = tb("gate", rowsMax * hidden * 4);
        const ch3 = tb("up", rowsMax * hidden * 4);
        const chunks: Array<{ start: number; rows: number; seq: GPUBuffer }> = [];
        for (let start = 0; start < n; start += chunk) {
          const s = createSeqUniform(device, `prefill position ${start}`, start);
          temp.push(s);
          chunks.push({ start, rows: Math.min(chunk, n - start), seq: s });
        }
        const rowSlice = (b: GPUBuffer, width: number, c: { start: number; rows: number }) => ({
          buffer: b,
          offset: c.start * width * 4,
          size: c.rows * width * 4,
        });
        const scratch = (b: GPUBuffer, width: number, rows: number) => ({
          buffer: b,
          offset: 0,
          size: rows * width * 4,
        });
        for (let l = 0; l < L; l++) {
          const lw = layers[l];
          const layerPlans: KernelPlan[] = [];
          for (const c of chunks) {
            const xs = rowSlice(xAll, dim, c);
            if (l === 0) {
              layerPlans.push(planEmbedding(device, {
                table: embedding,
                tokens: { buffer: toks, offset: c.start * 4, size: c.rows * 4 },
                output: xs,
                count: c.rows,
              }));
            }
            const xbs = scratch(cxb, dim, c.rows);
            const qs = rowSlice(qAll, qDim, c);
            layerPlans.push(...planPreAttention(lw, {
              x: xs,
              xb: xbs,
              q: qs,
              k: rowSlice(kAll, kvDim, c),
              v: rowSlice(vAll, kvDim, c),
              seq: c.seq,
            }, c.rows));
            const atts = scratch(catt, qDim, c.rows);
            layerPlans.push(planCausalAttention(device, {
              q: qs,
              k: kAll,
              v: vAll,
              output: atts,
              rows: c.rows,
              numQueryHeads: hq,
              numKvHeads: hkv,
              headDim: d,
              seq: c.seq,
              window: attentionWindow(config, l),
            }));
            layerPlans.push(...planPostAttention(lw, {
              x: xs,
              xb: xbs,
              att: atts,
              tmp: scratch(ctmp, dim, c.rows),
              h1: scratch(ch1, hidden, c.rows),
              h3: scratch(ch3, hidden, c.rows),
            }, c.rows));
          }
          plans.push(...layerPlans);
          const enc = device.createCommandEncoder({ label: `prefill layer ${l}` });
          recordPlans(enc, layerPlans, `prefill layer ${l}`);
          device.queue.submit([enc.finish()]);
          await backend.prefill(l, kAll, vAll, n, { q: qAll });
        }
        const enc = device.createCommandEncoder({ label: "prefill classifier" });
        enc.copyBufferToBuffer(xAll, (n - 1) * dim * 4, x, 0, dim * 4);
        const out = await finish(enc);
        position = n;
        return out;
      } finally {
        for (const p of plans) p[Symbol.dispose]();
        for (const b of temp) b.destroy();
        busy = false;
      }
    };

    const checkPosition = (pos: number, what: string) => {
      assertInteger("pos", pos, what, 0, maxSeqLen - 1);
      if (pos !== position && pos !== 0) {
        throw new RangeError(
          `Cannot ${what} as 'pos' must be the next position (${position}) or 0 to start over: received ${pos}`,
        );
      }
    };

    /**
     * Records and submits the decode step at `pos` (its input token already
     * written to `tokenBuf`); `tail` records what follows the classifier;
     * `waitFollows`: the caller reads back right after this step.
     */
    const runStep = async (
      pos: number,
      tail: (encoder: GPUCommandEncoder) => void,
      waitFollows: boolean,
    ) => {
      writeSeqStart(device, seq, pos);
      // Backends that record let a whole token go in one encoder (one
      // submit, unless the policy waits inside the step).
      const recording = backend.recordStep !== undefined;
      if (recording) await backend.beginStep?.(pos);
      let enc = device.createCommandEncoder({ label: "decode step" });
      for (let l = 0; l < L; l++) {
        recordPlans(enc, beforeAttention[l], `decode layer ${l}`);
        const io = { q, k, v, out: att };
        if (recording) enc = await backend.recordStep!(enc, l, pos, io);
        else {
          device.queue.submit([enc.finish()]);
          await backend.step(l, pos, io);
          enc = device.createCommandEncoder({ label: `decode layer ${l + 1}` });
        }
      }
      recordPlans(enc, afterLastAttention, "decode mlp and classifier");
      tail(enc);
      if (backend.endStep) backend.endStep(enc, waitFollows);
      else device.queue.submit([enc.finish()]);
      position = pos + 1;
    };

    const decode = async (token: number, pos: number): Promise<Float32Array> => {
      const what = "decode a token";
      checkToken("token", token, what);
      checkPosition(pos, what);
      enter(what);
      try {
        device.queue.writeBuffer(tokenBuf, 0, new Uint32Array([token]));
        await runStep(
          pos,
          (enc) => enc.copyBufferToBuffer(logits, 0, readback, 0, vocab * 4),
          true,
        );
        return await readLogits();
      } finally {
        busy = false;
      }
    };

    // Sampling buffers grow to the longest run asked for.
    let sampling: {
      steps: number;
      coins: GPUBuffer;
      history: GPUBuffer;
      read: GPUBuffer;
      plan: SampleTokenPlan;
    } | undefined;
    const disposeSampling = () => {
      if (!sampling) return;
      sampling.plan[Symbol.dispose]();
      for (const b of [sampling.coins, sampling.history, sampling.read]) b.destroy();
      sampling = undefined;
    };
    const samplingFor = (steps: number) => {
      if (sampling && sampling.steps >= steps) return sampling;
      disposeSampling();
      const size = Math.max(16, 2 ** Math.ceil(Math.log2(steps)));
      const coins = createBuffer(device, "sampling coins", STORAGE, size * 4);
      const history = createBuffer(device, "sampled tokens", STORAGE, size * 4);
      const read = createBuffer(
        device,
        "sampled tokens readback",
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        size * 4,
      );
      const plan = planSampleToken(device, {
        logits,
        coins,
        token: tokenBuf,
        history,
        seq,
        vocab,
      });
      return sampling = { steps: size, coins, history, read, plan };
    };

    const decodeSampled = async (
      token: number,
      pos: number,
      options: SampledDecodeOptions,
    ): Promise<Uint32Array> => {
      const what = "decode sampled tokens";
      checkToken("token", token, what);
      checkPosition(pos, what);
      if (options == null || typeof options !== "object") {
        throw new TypeError(
          `Cannot ${what} as 'options' must be an object with 'count': received ${options}`,
        );
      }
      const { count } = options;
      assertInteger("count", count, what, 1, maxSeqLen - pos);
      const temperature = options.temperature ?? 0;
      assertFinite("temperature", temperature, what, 0);
      const coins = options.coins;
      if (temperature > 0) {
        if (coins == null || typeof coins.length !== "number" || coins.length < count) {
          throw new RangeError(
            `Cannot ${what} as 'coins' must hold one number in [0, 1) per step (${count}) at temperature ${temperature}: received ${
              coins == null ? coins : `length ${coins.length}`
            }`,
          );
        }
        for (let j = 0; j < count; j++) {
          if (!(coins[j] >= 0 && coins[j] < 1)) {
            throw new RangeError(
              `Cannot ${what} as 'coins[${j}]' must be in [0, 1): received ${coins[j]}`,
            );
          }
        }
      }
      enter(what);
      try {
        const s = samplingFor(count);
        device.queue.writeBuffer(tokenBuf, 0, new Uint32Array([token]));
        if (temperature > 0) {
          device.queue.writeBuffer(
            s.coins,
            0,
            Float32Array.from({ length: count }, (_, j) => coins![j]),
          );
        }
        // Each step finds its index from the position runStep writes.
        s.plan.setRun(pos, temperature);
        for (let j = 0; j < count; j++) {
          await runStep(
            pos + j,
            (enc) => recordPlans(enc, [s.plan], "sample token"),
            j === count - 1,
          );
        }
        const enc = device.createCommandEncoder({ label: "sampled tokens readback" });
        enc.copyBufferToBuffer(s.history, 0, s.read, 0, count * 4);
        device.queue.submit([enc.finish()]);
        await s.read.mapAsync(GPUMapMode.READ, 0, count * 4);
        const out = new Uint32Array(s.read.getMappedRange(0, count * 4).slice(0));
        s.read.unmap();
        return out;
      } finally {
        busy = false;
      }
    };

    return {
      config,
      maxSeqLen,
      get position() {
        return position;
      },
      attention: backend,
      weightBytes,
      prefill,
      decode,
      decodeSampled,
      [Symbol.dispose]() {
        if (disposed) return;
        disposed = true;
        disposeSampling();
        disposeAll();
      },
    };
  } catch (error) {
    disposeAll();
    throw error;
  }
}
