/**
 * The seam between the decoder and the KV cache: the decoder computes q, k,
 * v (post-RoPE) and hands them to an {@linkcode AttentionBackend}, which
 * keeps the cache and computes decode attention. The dense backend here
 * keeps a contiguous cache per layer; retrieval engines plug in the same way.
 *
 * @module
 */

import { createBuffer } from "../../gpu/buffers.ts";
import { assertDevice, assertHeadsDivide, assertInteger, disposedError } from "../../gpu/errors.ts";
import {
  createSeqUniform,
  type KernelPlan,
  MAX_ATTENTION_HEAD_DIM,
  planCausalAttention,
  writeSeqStart,
} from "../kernels.ts";
import { assertSlidingWindow, attentionWindow } from "../sliding_window.ts";
import type { ModelConfig } from "../types.ts";
import { createTrackedBuffer } from "../../gpu/tracking.ts";

/** The buffers of one decode step of one layer, all f32. */
export interface AttentionStepIo {
  /** Query `[Hq][d]`, post-RoPE. */
  q: GPUBuffer;
  /** Key of the new token `[Hkv][d]`, post-RoPE. */
  k: GPUBuffer;
  /** Value of the new token `[Hkv][d]`. */
  v: GPUBuffer;
  /** Attention output `[Hq][d]`, written by the backend. */
  out: GPUBuffer;
}

/** Extra prompt data a decoder passes to {@linkcode AttentionBackend.prefill}. */
export interface AttentionPrefillExtras {
  /** Queries of the prompt `[length][Hq][d]` f32, post-RoPE (for recorders and selection warm-up). */
  q?: GPUBuffer;
}

/**
 * Where decode attention runs. The decoder calls `prefill` once per layer
 * after the prompt, then `step` for every layer of every generated token, in
 * order; it submits the commands that produce the inputs before each call
 * and overwrites those buffers only after the returned promise resolves, so
 * a backend must have submitted its own reads of them by then.
 */
export interface AttentionBackend {
  /**
   * After the prompt's K/V for `layer` are computed (post-RoPE): k, v GPU
   * buffers `[length][Hkv][d]` f32. The commands that produced them are
   * already submitted. Starts a new sequence for this layer.
   */
  prefill(
    layer: number,
    k: GPUBuffer,
    v: GPUBuffer,
    length: number,
    extras?: AttentionPrefillExtras,
  ): Promise<void>;
  /**
   * One decode step of one layer for the token at position `pos`: appends
   * k/v to the cache and writes the attention output into `io.out` (the
   * backend submits its own commands; queue order makes them visible to
   * later submits).
   */
  step(layer: number, pos: number, io: AttentionStepIo): Promise<void>;
  /**
   * Optional recording form of a decode step, so that a decoder records a
   * whole token into one encoder: `beginStep` before layer 0 (it may await
   * the previous step's answer), `recordStep` per layer (returns the encoder
   * to continue with: the same one, unless the backend had to submit and
   * wait), and `endStep`, which submits the encoder with whatever the
   * backend must read back.
   */
  beginStep?(pos: number): Promise<void>;
  /** See {@linkcode AttentionBackend.beginStep}. */
  recordStep?(
    encoder: GPUCommandEncoder,
    layer: number,
    pos: number,
    io: AttentionStepIo,
  ): GPUCommandEncoder | Promise<GPUCommandEncoder>;
  /**
   * See {@linkcode AttentionBackend.beginStep}. `waitFollows`: the decoder
   * waits for this step's GPU work right after (it reads the logits or the
   * sampled tokens back).
   */
  endStep?(encoder: GPUCommandEncoder, waitFollows: boolean): void;
  /**
   * Whether `step` applies the model's sliding window
   * ({@linkcode ModelConfig.slidingWindow}), or never holds more tokens than
   * it. A decoder refuses a model whose window is shorter than its sequence
   * unless this is true.
   */
  readonly appliesSlidingWindow?: boolean;
  /** Frees its GPU resources. */
  [Symbol.dispose](): void;
}

/**
 * The attention shape a backend needs from a {@linkcode ModelConfig}, with
 * its sliding window when it has one.
 */
export type AttentionBackendShape =
  & Pick<ModelConfig, "numLayers" | "numQueryHeads" | "numKvHeads" | "headDim">
  & Partial<Pick<ModelConfig, "slidingWindow" | "slidingWindowLayers">>;

/** Options of {@linkcode createDenseAttentionBackend}. */
export interface DenseAttentionBackendOptions {
  /** Positions the cache holds per layer. */
  maxSeqLen: number;
}

/** The dense (full attention) backend: a contiguous f32 KV cache per layer. */
export interface DenseAttentionBackend extends AttentionBackend {
  /** Positions the cache holds per layer. */
  readonly maxSeqLen: number;
  /** Bytes of KV cache on the GPU. */
  readonly byteLength: number;
  /** Tokens cached in `layer`. */
  length(layer: number): number;
}

function checkShape(shape: AttentionBackendShape, action: string): void {
  assertInteger("numLayers", shape.numLayers, action, 1);
  assertHeadsDivide(shape.numQueryHeads, shape.numKvHeads, action);
  assertInteger("headDim", shape.headDim, action, 1, MAX_ATTENTION_HEAD_DIM);
  assertSlidingWindow(shape, action);
}

/**
 * Creates the dense backend: per layer a `[maxSeqLen][Hkv][d]` K and V
 * cache; `step` appends the new k/v (or overwrites from `pos` when `pos` is
 * behind the cached length) and runs causal attention over positions
 * `0..=pos`, or over the last `slidingWindow` of them in the layers the
 * shape's sliding window covers (the cache still holds every position). It
 * reports `appliesSlidingWindow` when the shape carries a `slidingWindow`,
 * so build it from the model's config.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../../gpu/device.ts";
 * import { createDenseAttentionBackend } from "./dense.ts";
 * using gpu = await requestGpu();
 * const shape = { numLayers: 2, numQueryHeads: 4, numKvHeads: 2, headDim: 8 };
 * using backend = createDenseAttentionBackend(gpu.device, shape, { maxSeqLen: 16 });
 * console.log(backend.byteLength); // 4096
 * ```
 */
export function createDenseAttentionBackend(
  device: GPUDevice,
  shape: AttentionBackendShape,
  options: DenseAttentionBackendOptions,
): DenseAttentionBackend {
  assertDevice(device, "create a dense attention backend");
  const action = "create a dense attention backend";
  checkShape(shape, action);
  const { numLayers, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = shape;
  const maxSeqLen = options.maxSeqLen;
  const rowBytes = hkv * d * 4;
  const limit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
  assertInteger("maxSeqLen", maxSeqLen, action, 1, Math.floor(limit / rowBytes));
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const kCache: GPUBuffer[] = [], vCache: GPUBuffer[] = [], seq: GPUBuffer[] = [];
  for (let l = 0; l < numLayers; l++) {
    kCache.push(createBuffer(device, `dense K cache layer ${l}`, usage, maxSeqLen * rowBytes));
    vCache.push(createBuffer(device, `dense V cache layer ${l}`, usage, maxSeqLen * rowBytes));
    seq.push(createSeqUniform(device, `dense attention position layer ${l}`, 0));
  }
  const lengths = new Array<number>(numLayers).fill(0);
  const plans: Array<{ q: GPUBuffer; out: GPUBuffer; plan: KernelPlan } | undefined> = [];
  let disposed = false;
  const checkLayer = (layer: number, what: string) => {
    if (disposed) throw disposedError(what, "dense attention backend");
    assertInteger("layer", layer, what, 0, numLayers - 1);
  };
  const planFor = (layer: number, q: GPUBuffer, out: GPUBuffer): KernelPlan => {
    const cached = plans[layer];
    if (cached && cached.q === q && cached.out === out) return cached.plan;
    cached?.plan[Symbol.dispose]();
    const plan = planCausalAttention(device, {
      q,
      k: kCache[layer],
      v: vCache[layer],
      output: out,
      rows: 1,
      numQueryHeads: hq,
      numKvHeads: hkv,
      headDim: d,
      seq: seq[layer],
      window: attentionWindow(shape, layer),
    });
    plans[layer] = { q, out, plan };
    return plan;
  };
  const recordStep = (
    enc: GPUCommandEncoder,
    layer: number,
    pos: number,
    io: AttentionStepIo,
  ): GPUCommandEncoder => {
    const what = "run a dense attention step";
    checkLayer(layer, what);
    assertInteger("pos", pos, what, 0, Math.min(lengths[layer], maxSeqLen - 1));
    const plan = planFor(layer, io.q, io.out);
    writeSeqStart(device, seq[layer], pos);
    enc.copyBufferToBuffer(io.k, 0, kCache[layer], pos * rowBytes, rowBytes);
    enc.copyBufferToBuffer(io.v, 0, vCache[layer], pos * rowBytes, rowBytes);
    const pass = enc.beginComputePass({ label: `dense attention layer ${layer}` });
    plan.record(pass);
    pass.end();
    lengths[layer] = pos + 1;
    return enc;
  };
  return {
    maxSeqLen,
    appliesSlidingWindow: shape.slidingWindow !== undefined,
    byteLength: 2 * numLayers * maxSeqLen * rowBytes,
    length: (layer) => {
      checkLayer(layer, "read a cache length");
      return lengths[layer];
    },
    prefill(layer, k, v, length) {
      const what = "prefill the dense attention backend";
      checkLayer(layer, what);
      assertInteger("length", length, what, 0, maxSeqLen);
      if (length > 0) {
        const enc = device.createCommandEncoder({ label: `dense prefill layer ${layer}` });
        enc.copyBufferToBuffer(k, 0, kCache[layer], 0, length * rowBytes);
        enc.copyBufferToBuffer(v, 0, vCache[layer], 0, length * rowBytes);
        device.queue.submit([enc.finish()]);
      }
      lengths[layer] = length;
      return Promise.resolve();
    },
    step(layer, pos, io) {
      const enc = device.createCommandEncoder({ label: `dense attention layer ${layer}` });
      recordStep(enc, layer, pos, io);
      device.queue.submit([enc.finish()]);
      return Promise.resolve();
    },
    recordStep,
    endStep(encoder) {
      device.queue.submit([encoder.finish()]);
    },
    [Symbol.dispose]() {
      if (disposed) return;
      disposed = true;
      for (const p of plans) p?.plan[Symbol.dispose]();
      for (const b of [...kCache, ...vCache, ...seq]) b.destroy();
    },
  };
}

/** Receives the q, k, v of one layer of one token (copies owned by the callee). */
export type AttentionRecordCallback = (
  layer: number,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
) => void;

/** Options of {@linkcode createRecordingBackend}. */
export interface RecordingBackendOptions {
  /** The attention shape of the model. */
  shape: AttentionBackendShape;
  /**
   * Called for every token (prompt first, then generated) and every layer,
   * token-major: token t, layers 0..L-1, then token t+1.
   */
  onRecord: AttentionRecordCallback;
}

/**
 * Wraps a backend so that every layer's post-RoPE q, k, v are read back and
 * passed to `onRecord` (token-major, as trace files want) before the inner
 * backend runs. The prompt's records are held until the last layer's
 * prefill, then replayed token by token. Needs the decoder to pass the
 * prompt's queries (`extras.q`), as {@linkcode AttentionPrefillExtras} says.
 * Disposing it disposes the inner backend.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../../gpu/device.ts";
 * import { createDenseAttentionBackend, createRecordingBackend } from "./dense.ts";
 * using gpu = await requestGpu();
 * const shape = { numLayers: 1, numQueryHeads: 1, numKvHeads: 1, headDim: 2 };
 * const inner = createDenseAttentionBackend(gpu.device, shape, { maxSeqLen: 4 });
 * let records = 0;
 * using backend = createRecordingBackend(gpu.device, inner, { shape, onRecord: () => records++ });
 * ```
 */
export function createRecordingBackend(
  device: GPUDevice,
  inner: AttentionBackend,
  options: RecordingBackendOptions,
): AttentionBackend {
  assertDevice(device, "create a recording backend");
  const { shape, onRecord } = options;
  checkShape(shape, "create a recording backend");
  const qLen = shape.numQueryHeads * shape.headDim;
  const kvLen = shape.numKvHeads * shape.headDim;
  let prompt: Array<{ q: Float32Array; k: Float32Array; v: Float32Array } | undefined> = [];
  const readAll = async (parts: Array<[GPUBuffer, number]>): Promise<Float32Array[]> => {
    const total = parts.reduce((s, [, n]) => s + n, 0);
    const staging = createTrackedBuffer(device, {
      label: "recording backend readback",
      size: Math.max(4, total * 4),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      const enc = device.createCommandEncoder({ label: "recording backend readback" });
      let at = 0;
      for (const [b, n] of parts) {
        if (n > 0) enc.copyBufferToBuffer(b, 0, staging, at * 4, n * 4);
        at += n;
      }
      device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const all = new Float32Array(staging.getMappedRange().slice(0));
      at = 0;
      return parts.map(([, n]) => all.subarray(at, at += n));
    } finally {
      staging.destroy();
    }
  };
  return {
    appliesSlidingWindow: inner.appliesSlidingWindow,
    async prefill(layer, k, v, length, extras) {
      const what = "record a prefill";
      assertInteger("layer", layer, what, 0, shape.numLayers - 1);
      if (!extras?.q) {
        throw new TypeError(
          `Cannot ${what} as 'extras.q' (the prompt's queries) must be passed: received ${extras?.q}`,
        );
      }
      if (layer === 0) prompt = [];
      const [q, kk, vv] = await readAll([[extras.q, length * qLen], [k, length * kvLen], [
        v,
        length * kvLen,
      ]]);
      prompt[layer] = { q, k: kk, v: vv };
      await inner.prefill(layer, k, v, length, extras);
      if (layer === shape.numLayers - 1) {
        for (let t = 0; t < length; t++) {
          for (let l = 0; l < shape.numLayers; l++) {
            const p = prompt[l];
            if (!p) throw new Error(`Cannot record a prefill as layer ${l} was never prefilled`);
            onRecord(
              l,
              p.q.slice(t * qLen, (t + 1) * qLen),
              p.k.slice(t * kvLen, (t + 1) * kvLen),
              p.v.slice(t * kvLen, (t + 1) * kvLen),
            );
          }
        }
        prompt = [];
      }
    },
    async step(layer, pos, io) {
      const [q, k, v] = await readAll([[io.q, qLen], [io.k, kvLen], [io.v, kvLen]]);
      onRecord(layer, q.slice(), k.slice(), v.slice());
      await inner.step(layer, pos, io);
    },
    [Symbol.dispose]() {
      inner[Symbol.dispose]();
    },
  };
}
