/**
 * Hugging Face checkpoints of Llama-family decoders: `config.json` to
 * {@linkcode ModelConfig}, HF tensor names to {@linkcode ModelWeights}, and
 * the reverse (for converting llama2.c models into HF safetensors).
 *
 * Supported `architectures`: `LlamaForCausalLM` (SmolLM too),
 * `MistralForCausalLM`, `Qwen2ForCausalLM` (q/k/v biases). HF checkpoints
 * rotate half-split pairs (`ropeStyle: "half"`). `rope_scaling` (or
 * transformers 5's `rope_parameters`) of type `linear`, `llama3` and
 * `dynamic` (within the original context) is applied; Mistral's
 * `sliding_window` and Qwen2's (`use_sliding_window`, `max_window_layers` or
 * `layer_types`) become {@linkcode ModelConfig.slidingWindow}. Other fields
 * that change the math (`partial_rotary_factor`, logit soft-capping, other
 * rope types and their parameters) are refused by name.
 *
 * Tensor names: `model.embed_tokens.weight`,
 * `model.layers.N.input_layernorm.weight`,
 * `model.layers.N.self_attn.{q,k,v,o}_proj.weight` (+ `{q,k,v}_proj.bias`),
 * `model.layers.N.post_attention_layernorm.weight`,
 * `model.layers.N.mlp.{gate,up,down}_proj.weight`, `model.norm.weight`,
 * `lm_head.weight` (absent when tied).
 *
 * @module
 */

import { type TensorSource, writeSafetensors, writeShardedSafetensors } from "./safetensors.ts";
import type { LayerWeights, ModelConfig, ModelWeights, Tensor, WeightDtype } from "./types.ts";
import { convertTensor } from "./weight_convert.ts";
import { integerField, readRopeScaling, readSlidingWindow } from "./hf_config_fields.ts";
import { assertHeadsDivide, describeValue } from "../gpu/errors.ts";

/** `architectures` entries this module runs, with their family name. */
export const HF_ARCHITECTURES: Readonly<Record<string, string>> = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "mistral",
  Qwen2ForCausalLM: "qwen2",
};

/** Options of {@linkcode modelConfigFromHf}. */
export interface HfConfigOptions {
  /** Name of the config (a path) for error messages. */
  name?: string;
  /**
   * Drop `rope_scaling` (any type, supported or not) and run plain RoPE.
   * Results then differ from the original model past short contexts.
   */
  ignoreRopeScaling?: boolean;
}

/**
 * Reads a parsed `config.json` into a {@linkcode ModelConfig}. Required:
 * `architectures`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
 * `num_attention_heads`, `vocab_size`; the rest default as in `transformers`.
 * When `eos_token_id` is a list, its first entry is used.
 *
 * @example
 * ```ts
 * import { modelConfigFromHf } from "./hf_config.ts";
 * const config = modelConfigFromHf({
 *   architectures: ["LlamaForCausalLM"], hidden_size: 64, intermediate_size: 172,
 *   num_hidden_layers: 5, num_attention_heads: 8, num_key_value_heads: 4, vocab_size: 512,
 * });
 * config.ropeStyle; // "half"
 * ```
 */
export function modelConfigFromHf(json: unknown, options: HfConfigOptions = {}): ModelConfig {
  const where = JSON.stringify(options.name ?? "config.json");
  const action = `load model config ${where}`;
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new TypeError(
      `Cannot ${action} as 'json' must be a JSON object: received ${describeValue(json)}`,
    );
  }
  const j = json as Record<string, unknown>;
  const archs = j.architectures;
  if (!Array.isArray(archs) || archs.length === 0) {
    throw new TypeError(`Cannot ${action} as field 'architectures' is missing`);
  }
  const arch = archs.find((a) => typeof a === "string" && a in HF_ARCHITECTURES) as
    | string
    | undefined;
  if (!arch) {
    throw new TypeError(
      `Cannot ${action} as architecture ${
        JSON.stringify(archs[0])
      } is not supported: expected one of ${Object.keys(HF_ARCHITECTURES).join(", ")}`,
    );
  }
  const int = (field: string, fallback?: number, min = 1): number => {
    const v = j[field] ?? fallback;
    if (v === undefined) throw new TypeError(`Cannot ${action} as field '${field}' is missing`);
    return integerField(field, v, min, action);
  };
  const num = (field: string, fallback: number): number => {
    const v = j[field] ?? fallback;
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) {
      throw new RangeError(
        `Cannot ${action} as field '${field}' must be a positive number: received ${
          JSON.stringify(v)
        }`,
      );
    }
    return v;
  };
  const tokenId = (field: string, fallback: number): number => {
    let v = j[field] ?? fallback;
    if (Array.isArray(v)) v = v[0];
    if (typeof v !== "number" || !Number.isInteger(v)) {
      throw new TypeError(
        `Cannot ${action} as field '${field}' must be a token id: received ${JSON.stringify(v)}`,
      );
    }
    return v;
  };
  const dim = int("hidden_size");
  const hiddenDim = int("intermediate_size");
  const numLayers = int("num_hidden_layers");
  const numQueryHeads = int("num_attention_heads");
  const vocabSize = int("vocab_size");
  const numKvHeads = int("num_key_value_heads", numQueryHeads);
  assertHeadsDivide(numQueryHeads, numKvHeads, action, [
    "num_attention_heads",
    "num_key_value_heads",
  ]);
  if (j.head_dim === undefined && dim % numQueryHeads !== 0) {
    throw new RangeError(
      `Cannot ${action} as 'hidden_size' (${dim}) must be divisible by 'num_attention_heads': received ${numQueryHeads}`,
    );
  }
  const headDim = int("head_dim", dim / numQueryHeads);
  if (headDim % 2 !== 0) {
    throw new RangeError(`Cannot ${action} as 'head_dim' must be even: received ${headDim}`);
  }
  const act = j.hidden_act ?? "silu";
  if (act !== "silu") {
    throw new TypeError(
      `Cannot ${action} as 'hidden_act' must be "silu": received ${JSON.stringify(act)}`,
    );
  }
  for (const flag of ["attention_bias", "mlp_bias"]) {
    if (j[flag] === true) {
      throw new TypeError(`Cannot ${action} as '${flag}: true' is not supported`);
    }
  }
  const partial = j.partial_rotary_factor ?? 1;
  if (partial !== 1) {
    throw new RangeError(
      `Cannot ${action} as 'partial_rotary_factor' must be 1 (RoPE on the whole head): received ${
        JSON.stringify(partial)
      }`,
    );
  }
  for (const field of ["attn_logit_softcapping", "final_logit_softcapping"]) {
    if (j[field] != null) {
      throw new TypeError(
        `Cannot ${action} as '${field}' is not supported: received ${JSON.stringify(j[field])}`,
      );
    }
  }
  const maxSeqLen = int("max_position_embeddings", 2048);
  const rope = readRopeScaling(j, action, maxSeqLen, options.ignoreRopeScaling ?? false);
  const family = HF_ARCHITECTURES[arch];
  const window = readSlidingWindow(j, family, numLayers, action);
  const tied = j.tie_word_embeddings ?? false;
  if (typeof tied !== "boolean") {
    throw new TypeError(
      `Cannot ${action} as 'tie_word_embeddings' must be a boolean: received ${
        JSON.stringify(tied)
      }`,
    );
  }
  const llamaIds = family !== "qwen2";
  return {
    architecture: typeof j.model_type === "string" ? j.model_type : family,
    dim,
    hiddenDim,
    numLayers,
    numQueryHeads,
    numKvHeads,
    headDim,
    vocabSize,
    maxSeqLen,
    ropeTheta: rope.theta ?? num("rope_theta", 10000),
    ropeStyle: "half",
    ...(rope.scaling ? { ropeScaling: rope.scaling } : {}),
    ...window,
    normEps: num("rms_norm_eps", 1e-6),
    tiedEmbeddings: tied,
    qkvBias: family === "qwen2",
    bosId: tokenId("bos_token_id", llamaIds ? 1 : -1),
    eosId: tokenId("eos_token_id", llamaIds ? 2 : -1),
  };
}

/**
 * A `config.json` object for a {@linkcode ModelConfig} (`LlamaForCausalLM`;
 * `Qwen2ForCausalLM` when it has q/k/v biases; `MistralForCausalLM` when it
 * has a sliding window on every layer and no biases). `ropeScaling` becomes
 * `rope_scaling`; a Qwen2 window on the last layers becomes
 * `max_window_layers`, on other layers `layer_types`. Only `"half"` RoPE is
 * expressible; convert adjacent-pair weights with
 * {@linkcode hfTensorsFromWeights} first.
 *
 * @example
 * ```ts
 * import { hfConfigFromModel, modelConfigFromHf } from "./hf_config.ts";
 * import { loadModel } from "./load.ts";
 * const { config } = await loadModel("models/stories260K/stories260K.bin");
 * const json = hfConfigFromModel({ ...config, ropeStyle: "half" });
 * modelConfigFromHf(json).numKvHeads; // 4
 * ```
 */
export function hfConfigFromModel(config: ModelConfig): Record<string, unknown> {
  if (config.ropeStyle !== "half") {
    throw new TypeError(
      `Cannot write HF config as 'ropeStyle' must be "half": received ${
        JSON.stringify(config.ropeStyle)
      }`,
    );
  }
  const qwen = config.qkvBias;
  const window = config.slidingWindow;
  const slides = config.slidingWindowLayers;
  const mistral = !qwen && window !== undefined;
  if (mistral && slides !== undefined && slides.length !== config.numLayers) {
    throw new TypeError(
      `Cannot write HF config as a Mistral 'sliding_window' applies to every layer: received 'slidingWindowLayers' [${slides}]`,
    );
  }
  const extra: Record<string, unknown> = {};
  if (window !== undefined) {
    extra.sliding_window = window;
    if (qwen) {
      extra.use_sliding_window = true;
      const first = slides === undefined ? 0 : Math.min(...slides, config.numLayers);
      const suffix = slides === undefined ||
        slides.length === config.numLayers - first && slides.every((l) => l >= first);
      if (suffix) {
        extra.max_window_layers = first;
      } else {
        extra.layer_types = Array.from(
          { length: config.numLayers },
          (_, l) => slides.includes(l) ? "sliding_attention" : "full_attention",
        );
      }
    }
  }
  const s = config.ropeScaling;
  if (s) {
    extra.rope_scaling = s.type === "linear"
      ? { rope_type: s.type, factor: s.factor }
      : s.type === "dynamic"
      ? {
        rope_type: s.type,
        factor: s.factor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
      }
      : {
        rope_type: s.type,
        factor: s.factor,
        low_freq_factor: s.lowFreqFactor,
        high_freq_factor: s.highFreqFactor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
      };
  }
  return {
    architectures: [
      qwen ? "Qwen2ForCausalLM" : mistral ? "MistralForCausalLM" : "LlamaForCausalLM",
    ],
    model_type: qwen ? "qwen2" : mistral ? "mistral" : "llama",
    hidden_size: config.dim,
    intermediate_size: config.hiddenDim,
    num_hidden_layers: config.numLayers,
    num_attention_heads: config.numQueryHeads,
    num_key_value_heads: config.numKvHeads,
    head_dim: config.headDim,
    vocab_size: config.vocabSize,
    max_position_embeddings: config.maxSeqLen,
    rope_theta: config.ropeTheta,
    rms_norm_eps: config.normEps,
    tie_word_embeddings: config.tiedEmbeddings,
    hidden_act: "silu",
    bos_token_id: config.bosId,
    eos_token_id: config.eosId,
    torch_dtype: "float32",
    ...extra,
  };
}

/** HF tensor names of one layer. */
function layerNames(l: number) {
  const p = `model.layers.${l}.`;
  return {
    attnNorm: p + "input_layernorm.weight",
    wq: p + "self_attn.q_proj.weight",
    wk: p + "self_attn.k_proj.weight",
    wv: p + "self_attn.v_proj.weight",
    wo: p + "self_attn.o_proj.weight",
    bq: p + "self_attn.q_proj.bias",
    bk: p + "self_attn.k_proj.bias",
    bv: p + "self_attn.v_proj.bias",
    ffnNorm: p + "post_attention_layernorm.weight",
    w1: p + "mlp.gate_proj.weight",
    w2: p + "mlp.down_proj.weight",
    w3: p + "mlp.up_proj.weight",
  } as const;
}

/** Options of {@linkcode readHfWeights}. */
export interface ReadHfWeightsOptions {
  /** Convert every tensor to this type while loading (default: keep the file's). */
  dtype?: WeightDtype;
}

/**
 * Reads the tensors of a model from a {@linkcode TensorSource} by their HF
 * names and checks their shapes. A missing tensor is an error naming it.
 *
 * @example
 * ```ts
 * import { readHfWeights, writeHfCheckpoint, modelConfigFromHf } from "./hf_config.ts";
 * import { openSafetensors } from "./safetensors.ts";
 * import { loadModel } from "./load.ts";
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const dir = await Deno.makeTempDir();
 * await writeHfCheckpoint(dir, weights);
 * const config = modelConfigFromHf(JSON.parse(await Deno.readTextFile(`${dir}/config.json`)));
 * using source = await openSafetensors(`${dir}/model.safetensors`);
 * const back = await readHfWeights(config, source);
 * ```
 */
export async function readHfWeights(
  config: ModelConfig,
  source: TensorSource,
  options: ReadHfWeightsOptions = {},
): Promise<ModelWeights> {
  const { dim, hiddenDim, vocabSize, headDim: d } = config;
  const qDim = config.numQueryHeads * d, kvDim = config.numKvHeads * d;
  const get = async (name: string, shape: number[]): Promise<Tensor> => {
    if (!source.has(name)) {
      throw new TypeError(`Cannot load model as tensor '${name}' is missing from the checkpoint`);
    }
    const e = source.entry(name);
    if (e.shape.length !== shape.length || e.shape.some((v, i) => v !== shape[i])) {
      throw new RangeError(
        `Cannot load model as tensor '${name}' must have shape [${shape}]: received [${e.shape}]`,
      );
    }
    const t = await source.read(name);
    return options.dtype ? convertTensor(t, options.dtype) : t;
  };
  const tokenEmbedding = await get("model.embed_tokens.weight", [vocabSize, dim]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    const n = layerNames(l);
    const layer: LayerWeights = {
      attnNorm: await get(n.attnNorm, [dim]),
      wq: await get(n.wq, [qDim, dim]),
      wk: await get(n.wk, [kvDim, dim]),
      wv: await get(n.wv, [kvDim, dim]),
      wo: await get(n.wo, [dim, qDim]),
      ffnNorm: await get(n.ffnNorm, [dim]),
      w1: await get(n.w1, [hiddenDim, dim]),
      w2: await get(n.w2, [dim, hiddenDim]),
      w3: await get(n.w3, [hiddenDim, dim]),
    };
    if (config.qkvBias) {
      layer.bq = await get(n.bq, [qDim]);
      layer.bk = await get(n.bk, [kvDim]);
      layer.bv = await get(n.bv, [kvDim]);
    }
    layers.push(layer);
  }
  const finalNorm = await get("model.norm.weight", [dim]);
  const weights: ModelWeights = { config: { ...config }, tokenEmbedding, layers, finalNorm };
  if (!config.tiedEmbeddings) weights.classifier = await get("lm_head.weight", [vocabSize, dim]);
  return weights;
}

/**
 * Reorders the rows of a q/k projection (or bias) so that half-split RoPE on
 * the result equals adjacent-pair RoPE on the original: within each head,
 * row `2i + j` moves to `j * d/2 + i` (what HF's Llama conversion script
 * does). Attention scores are unchanged because q and k move alike.
 *
 * @example
 * ```ts
 * import { permuteForHalfRope } from "./hf_config.ts";
 * const t = { dtype: "f32" as const, shape: [4, 1], data: new Float32Array([0, 1, 2, 3]) };
 * permuteForHalfRope(t, 4).data; // [0, 2, 1, 3]
 * ```
 */
export function permuteForHalfRope(tensor: Tensor, headDim: number): Tensor {
  const rows = tensor.shape[0];
  if (headDim % 2 !== 0 || rows % headDim !== 0) {
    throw new RangeError(
      `Cannot permute tensor as 'headDim' must be even and divide its ${rows} rows: received ${headDim}`,
    );
  }
  const cols = tensor.data.length / rows;
  const data = new (tensor.data.constructor as Float32ArrayConstructor | Uint16ArrayConstructor)(
    tensor.data.length,
  );
  const half = headDim / 2;
  for (let h = 0; h < rows / headDim; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = h * headDim + 2 * i + j, to = h * headDim + j * half + i;
        data.set(tensor.data.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return { dtype: tensor.dtype, shape: tensor.shape.slice(), data };
}

/** Options of {@linkcode hfTensorsFromWeights}. */
export interface HfTensorsOptions {
  /** Store every tensor as this type (default: keep). */
  dtype?: WeightDtype;
}

/**
 * HF-named tensors of a model. Adjacent-pair RoPE models (llama2.c) get
 * their q/k rows permuted ({@linkcode permuteForHalfRope}) so they run as
 * `"half"`; the returned `config` says so.
 *
 * @example
 * ```ts
 * import { hfTensorsFromWeights } from "./hf_config.ts";
 * import { loadModel } from "./load.ts";
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const { tensors, config } = hfTensorsFromWeights(weights);
 * tensors.has("model.layers.0.self_attn.q_proj.weight"); // true
 * config.ropeStyle; // "half"
 * ```
 */
export function hfTensorsFromWeights(
  weights: ModelWeights,
  options: HfTensorsOptions = {},
): { tensors: Map<string, Tensor>; config: ModelConfig } {
  const c = weights.config;
  const permute = c.ropeStyle === "adjacent";
  const out = new Map<string, Tensor>();
  const put = (name: string, t: Tensor, rope = false) => {
    const p = rope && permute ? permuteForHalfRope(t, c.headDim) : t;
    out.set(name, options.dtype ? convertTensor(p, options.dtype) : p);
  };
  put("model.embed_tokens.weight", weights.tokenEmbedding);
  weights.layers.forEach((l, i) => {
    const n = layerNames(i);
    put(n.attnNorm, l.attnNorm);
    put(n.wq, l.wq, true);
    put(n.wk, l.wk, true);
    put(n.wv, l.wv);
    put(n.wo, l.wo);
    if (l.bq) put(n.bq, l.bq, true);
    if (l.bk) put(n.bk, l.bk, true);
    if (l.bv) put(n.bv, l.bv);
    put(n.ffnNorm, l.ffnNorm);
    put(n.w1, l.w1);
    put(n.w2, l.w2);
    put(n.w3, l.w3);
  });
  put("model.norm.weight", weights.finalNorm);
  if (!c.tiedEmbeddings) {
    if (!weights.classifier) {
      throw new TypeError(
        "Cannot convert model as tensor 'classifier' is missing and embeddings are not tied",
      );
    }
    put("lm_head.weight", weights.classifier);
  }
  return { tensors: out, config: { ...c, ropeStyle: "half" } };
}

/** Options of {@linkcode writeHfCheckpoint}. */
export interface WriteHfCheckpointOptions extends HfTensorsOptions {
  /** Split into shards of at most this many bytes with an index (default: one file). */
  maxShardBytes?: number;
}

/**
 * Writes a model as a Hugging Face checkpoint directory: `config.json` plus
 * `model.safetensors`, or shards and `model.safetensors.index.json` when
 * `maxShardBytes` is given. llama2.c models are converted to half-split RoPE.
 *
 * @example
 * ```ts
 * import { writeHfCheckpoint } from "./hf_config.ts";
 * import { loadModel } from "./load.ts";
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const dir = await Deno.makeTempDir();
 * await writeHfCheckpoint(dir, weights, { dtype: "bf16" });
 * const again = await loadModel(dir); // same model, half-split RoPE, bf16 weights
 * ```
 */
export async function writeHfCheckpoint(
  dir: string,
  weights: ModelWeights,
  options: WriteHfCheckpointOptions = {},
): Promise<void> {
  const { tensors, config } = hfTensorsFromWeights(weights, options);
  const json = hfConfigFromModel(config);
  const dtypes = new Set([...tensors.values()].map((t) => t.dtype));
  json.torch_dtype = dtypes.has("f32") ? "float32" : dtypes.has("bf16") ? "bfloat16" : "float16";
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(json, null, 2) + "\n");
  const metadata = { format: "pt" };
  if (options.maxShardBytes !== undefined) {
    await writeShardedSafetensors(dir, tensors, { maxShardBytes: options.maxShardBytes, metadata });
  } else {
    await writeSafetensors(`${dir}/model.safetensors`, tensors, { metadata });
  }
}
