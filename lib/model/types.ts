/**
 * Model description shared by loaders, the CPU reference forward pass and the
 * WebGPU decoder. Matrices are row-major `[out, in]`.
 *
 * @module
 */

/** Storage type of a weight tensor. `bf16`/`f16` keep their 16-bit patterns. */
export type WeightDtype = "f32" | "f16" | "bf16";

/** A weight tensor: `f32` data in a `Float32Array`, 16-bit types as raw `Uint16Array` bits. */
export interface Tensor {
  /** Storage type. */
  dtype: WeightDtype;
  /** Shape, outermost first (`[out, in]` for matrices). */
  shape: number[];
  /** Elements in row-major order. */
  data: Float32Array | Uint16Array;
}

/** RoPE pairing: llama2.c rotates adjacent pairs (x[2i], x[2i+1]); HF Llama rotates halves (x[i], x[i+d/2]). */
export type RopeStyle = "adjacent" | "half";

/**
 * RoPE frequency scaling (Hugging Face `rope_scaling`), applied to the
 * inverse frequencies `theta^(-2i/d)` once, when a model is built:
 *
 * - `linear`: every inverse frequency divided by `factor` (positions / factor).
 * - `llama3` (Llama 3.1/3.2): per frequency, wavelengths `2*pi / f` longer than
 *   `originalMaxPositionEmbeddings / lowFreqFactor` are divided by `factor`,
 *   shorter than `originalMaxPositionEmbeddings / highFreqFactor` kept, and
 *   interpolated smoothly in between.
 * - `dynamic` (NTK-aware): plain RoPE while the sequence stays within
 *   `originalMaxPositionEmbeddings`, which is the only range this module runs
 *   it in (longer sequences are refused, naming `rope_scaling`).
 */
export type RopeScaling =
  | { type: "linear"; factor: number }
  | { type: "dynamic"; factor: number; originalMaxPositionEmbeddings: number }
  | {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositionEmbeddings: number;
  };

/** Hyper-parameters of a Llama-family decoder. */
export interface ModelConfig {
  /** Architecture family as loaded (`llama`, `mistral`, `qwen2`, `smollm` all run as Llama). */
  architecture: string;
  /** Hidden size. */
  dim: number;
  /** MLP inner size. */
  hiddenDim: number;
  /** Decoder layers. */
  numLayers: number;
  /** Query heads. */
  numQueryHeads: number;
  /** Key/value heads (GQA when fewer than query heads). */
  numKvHeads: number;
  /** Per-head size. */
  headDim: number;
  /** Vocabulary size. */
  vocabSize: number;
  /** Longest sequence the model accepts. */
  maxSeqLen: number;
  /** RoPE base. */
  ropeTheta: number;
  /** RoPE pairing. */
  ropeStyle: RopeStyle;
  /** RoPE frequency scaling; absent: plain RoPE. */
  ropeScaling?: RopeScaling;
  /**
   * Sliding-window attention (Mistral, Qwen2): a query at position `p` sees
   * keys `p - slidingWindow + 1 ..= p` (itself included). Absent: full attention.
   */
  slidingWindow?: number;
  /** Layers that use `slidingWindow` (Qwen2's `max_window_layers`); absent: all layers. */
  slidingWindowLayers?: readonly number[];
  /** RMSNorm epsilon. */
  normEps: number;
  /** Whether the classifier is the token embedding. */
  tiedEmbeddings: boolean;
  /** Whether q/k/v projections have biases (Qwen2). */
  qkvBias: boolean;
  /** Beginning-of-sequence token id. */
  bosId: number;
  /** End-of-sequence token id. */
  eosId: number;
}

/** Weights of one decoder layer. */
export interface LayerWeights {
  /** RMSNorm weight before attention, `[dim]`. */
  attnNorm: Tensor;
  /** Query projection `[Hq*d, dim]`. */
  wq: Tensor;
  /** Key projection `[Hkv*d, dim]`. */
  wk: Tensor;
  /** Value projection `[Hkv*d, dim]`. */
  wv: Tensor;
  /** Output projection `[dim, Hq*d]`. */
  wo: Tensor;
  /** Query bias `[Hq*d]` (Qwen2 only). */
  bq?: Tensor;
  /** Key bias `[Hkv*d]` (Qwen2 only). */
  bk?: Tensor;
  /** Value bias `[Hkv*d]` (Qwen2 only). */
  bv?: Tensor;
  /** RMSNorm weight before the MLP, `[dim]`. */
  ffnNorm: Tensor;
  /** Gate projection `[hidden, dim]` (llama2.c `w1`). */
  w1: Tensor;
  /** Down projection `[dim, hidden]` (llama2.c `w2`). */
  w2: Tensor;
  /** Up projection `[hidden, dim]` (llama2.c `w3`). */
  w3: Tensor;
}

/** A whole model's weights. */
export interface ModelWeights {
  /** Hyper-parameters. */
  config: ModelConfig;
  /** Token embedding `[vocab, dim]`. */
  tokenEmbedding: Tensor;
  /** Per-layer weights. */
  layers: LayerWeights[];
  /** Final RMSNorm `[dim]`. */
  finalNorm: Tensor;
  /** Classifier `[vocab, dim]`; absent when tied to the embedding. */
  classifier?: Tensor;
}
