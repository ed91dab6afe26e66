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
