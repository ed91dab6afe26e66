/**
 * One entry point for loading a model and its tokenizer, whatever the format:
 *
 * - a llama2.c checkpoint (`.bin`, legacy v0 or versioned `ak42` v1/v2),
 *   with `tokenizer.bin` or `tok{vocab}.bin` from the same directory;
 * - a Hugging Face checkpoint directory (or its `config.json`, or one of its
 *   `.safetensors` files): `config.json` + `model.safetensors` or sharded
 *   `model.safetensors.index.json`, with `tokenizer.json` when present.
 *
 * @module
 */

import { modelConfigFromHf, readHfWeights } from "./hf_config.ts";
import { loadHfTokenizer } from "./hf_tokenizer.ts";
import { LLAMA2C_MAGIC, parseLlama2c } from "./llama2c.ts";
import {
  type LoadProgress,
  openSafetensors,
  openSafetensorsIndex,
  type TensorSource,
} from "./safetensors.ts";
import { loadLlama2cTokenizer, type Tokenizer } from "./tokenizer.ts";
import type { ModelConfig, ModelWeights, Tensor, WeightDtype } from "./types.ts";
import { convertTensor } from "./weight_convert.ts";

export type { LoadProgress };

/** Where a model came from. */
export type ModelFormat = "llama2c" | "safetensors";

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions {
  /**
   * Tokenizer to load: a path (llama2.c `.bin`, `tokenizer.json` or a
   * directory holding it), `false` for none; default: look next to the model.
   */
  tokenizer?: string | false;
  /** Convert every tensor to this type after reading (default: keep the file's). */
  dtype?: WeightDtype;
  /** Called as tensor data is read (library code stays silent otherwise). */
  onProgress?: (progress: LoadProgress) => void;
  /**
   * Drop an HF config's `rope_scaling` (any type) and run plain RoPE; default:
   * apply `llama3`, `linear` and `dynamic`, refuse other types by name.
   */
  ignoreRopeScaling?: boolean;
}

/** A loaded model. */
export interface LoadedModel {
  /** The format detected. */
  format: ModelFormat;
  /** Hyper-parameters (same object as `weights.config`). */
  config: ModelConfig;
  /** All tensors. */
  weights: ModelWeights;
  /** The tokenizer, or null when none was found or asked for. */
  tokenizer: Tokenizer | null;
  /** Files read, model first. */
  files: string[];
}

const dirOf = (p: string) => (p.includes("/") ? p.slice(0, p.lastIndexOf("/")) || "/" : ".");
const baseOf = (p: string) => p.slice(p.lastIndexOf("/") + 1);

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function readPrefix(path: string, n: number): Promise<Uint8Array> {
  using file = await Deno.open(path, { read: true });
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await file.read(buf.subarray(got));
    if (r === null) break;
    got += r;
  }
  return buf.subarray(0, got);
}

/** Whether `file` is one shard named by the directory's index (then load them all). */
async function isIndexedShard(dir: string, file: string): Promise<boolean> {
  const index = `${dir}/model.safetensors.index.json`;
  if (!(await exists(index))) return false;
  try {
    const map = JSON.parse(await Deno.readTextFile(index))?.weight_map ?? {};
    return Object.values(map).includes(baseOf(file));
  } catch {
    return false;
  }
}

function looksLikeSafetensors(prefix: Uint8Array, size: number): boolean {
  if (prefix.length < 9) return false;
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  return n >= 2n && n <= BigInt(size - 8) && prefix[8] === 0x7b; // '{'
}

/**
 * Converts every tensor of a model to `dtype` (norm weights and biases too).
 * Tensors already of that type are shared, not copied.
 *
 * @example
 * ```ts
 * import { convertWeights, loadModel } from "./load.ts";
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const half = convertWeights(weights, "f16");
 * half.layers[0].wq.dtype; // "f16"
 * ```
 */
export function convertWeights(weights: ModelWeights, dtype: WeightDtype): ModelWeights {
  const c = (t: Tensor) => convertTensor(t, dtype);
  const out: ModelWeights = {
    config: { ...weights.config },
    tokenEmbedding: c(weights.tokenEmbedding),
    finalNorm: c(weights.finalNorm),
    layers: weights.layers.map((l) => {
      const layer = {
        attnNorm: c(l.attnNorm),
        wq: c(l.wq),
        wk: c(l.wk),
        wv: c(l.wv),
        wo: c(l.wo),
        ffnNorm: c(l.ffnNorm),
        w1: c(l.w1),
        w2: c(l.w2),
        w3: c(l.w3),
      };
      return l.bq && l.bk && l.bv ? { ...layer, bq: c(l.bq), bk: c(l.bk), bv: c(l.bv) } : layer;
    }),
  };
  if (weights.classifier) out.classifier = c(weights.classifier);
  return out;
}

/**
 * Loads a tokenizer: a llama2.c `.bin` file, a `tokenizer.json`, or a
 * directory holding `tokenizer.json`.
 *
 * @example
 * ```ts
 * import { loadTokenizer } from "./load.ts";
 * const tok = await loadTokenizer("models/stories260K/tok512.bin");
 * tok.decode(tok.encode("Hi there")); // "Hi there"
 * ```
 */
export async function loadTokenizer(
  path: string,
  options: { vocabSize?: number } = {},
): Promise<Tokenizer> {
  const info = await Deno.stat(path);
  if (info.isDirectory || path.endsWith(".json")) return await loadHfTokenizer(path);
  return await loadLlama2cTokenizer(path, { vocabSize: options.vocabSize });
}

/**
 * Loads a model (llama2.c `.bin` or Hugging Face safetensors checkpoint,
 * detected from `path`) and, unless `tokenizer: false`, its tokenizer.
 *
 * @example
 * ```ts
 * import { loadModel } from "./load.ts";
 * const { format, config, tokenizer } = await loadModel("models/stories260K/stories260K.bin");
 * format; // "llama2c"
 * config.numLayers; // 5
 * tokenizer!.vocabSize; // 512
 * ```
 */
export async function loadModel(
  path: string,
  options: LoadModelOptions = {},
): Promise<LoadedModel> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new TypeError(
        `Cannot load model as 'path' must exist: received ${JSON.stringify(path)}`,
      );
    }
    throw error;
  }
  let loaded: LoadedModel;
  if (info.isDirectory) {
    loaded = await loadHf(path.replace(/\/+$/, "") || "/", undefined, options);
  } else {
    const prefix = await readPrefix(path, 9);
    const name = baseOf(path);
    if (name === "config.json" || name.endsWith(".index.json")) {
      loaded = await loadHf(dirOf(path), name.endsWith(".index.json") ? path : undefined, options);
    } else if (
      name.endsWith(".safetensors") ||
      (prefix.length >= 4 &&
        new DataView(prefix.buffer, prefix.byteOffset).getUint32(0, true) !== LLAMA2C_MAGIC &&
        looksLikeSafetensors(prefix, info.size))
    ) {
      loaded = await loadHf(dirOf(path), path, options);
    } else {
      loaded = await loadLlama2cModel(path, info.size, options);
    }
  }
  if (options.dtype) {
    loaded.weights = convertWeights(loaded.weights, options.dtype);
    loaded.config = loaded.weights.config;
  }
  const c = loaded.config, tok = loaded.tokenizer;
  if (tok) {
    if (c.bosId < 0 && tok.bosId >= 0) c.bosId = tok.bosId;
    if (c.eosId < 0 && tok.eosId >= 0) c.eosId = tok.eosId;
  }
  return loaded;
}

async function loadLlama2cModel(
  path: string,
  size: number,
  options: LoadModelOptions,
): Promise<LoadedModel> {
  const bytes = await Deno.readFile(path);
  options.onProgress?.({ file: path, loadedBytes: size, totalBytes: size });
  const weights = parseLlama2c(bytes, { name: path });
  const files = [path];
  let tokenizer: Tokenizer | null = null;
  let tokPath: string | undefined;
  if (typeof options.tokenizer === "string") tokPath = options.tokenizer;
  else if (options.tokenizer !== false) {
    const dir = dirOf(path);
    for (
      const candidate of [`tok${weights.config.vocabSize}.bin`, "tokenizer.bin", "tokenizer.json"]
    ) {
      if (await exists(`${dir}/${candidate}`)) {
        tokPath = `${dir}/${candidate}`;
        break;
      }
    }
  }
  if (tokPath) {
    tokenizer = await loadTokenizer(tokPath, { vocabSize: weights.config.vocabSize });
    files.push(tokPath);
  }
  return { format: "llama2c", config: weights.config, weights, tokenizer, files };
}

async function loadHf(
  dir: string,
  weightsFile: string | undefined,
  options: LoadModelOptions,
): Promise<LoadedModel> {
  const configPath = `${dir}/config.json`;
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(configPath));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new TypeError(
        `Cannot load model as a Hugging Face checkpoint needs ${
          JSON.stringify(configPath)
        }: not found`,
      );
    }
    throw new TypeError(
      `Cannot load model as ${JSON.stringify(configPath)} must be JSON: ${
        (error as Error).message
      }`,
    );
  }
  const config = modelConfigFromHf(json, {
    name: configPath,
    ignoreRopeScaling: options.ignoreRopeScaling,
  });
  let source: TensorSource;
  const files = [configPath];
  const sourceOptions = { onProgress: options.onProgress };
  if (weightsFile?.endsWith(".index.json")) {
    source = await openSafetensorsIndex(weightsFile, sourceOptions);
    files.push(weightsFile);
  } else if (weightsFile && !(await isIndexedShard(dir, weightsFile))) {
    source = await openSafetensors(weightsFile, sourceOptions);
    files.push(weightsFile);
  } else if (await exists(`${dir}/model.safetensors.index.json`)) {
    files.push(`${dir}/model.safetensors.index.json`);
    source = await openSafetensorsIndex(files[1], sourceOptions);
  } else if (await exists(`${dir}/model.safetensors`)) {
    files.push(`${dir}/model.safetensors`);
    source = await openSafetensors(files[1], sourceOptions);
  } else {
    const found: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      if (e.name.endsWith(".safetensors")) found.push(e.name);
    }
    if (found.length !== 1) {
      throw new TypeError(
        `Cannot load model as ${
          JSON.stringify(dir)
        } must hold model.safetensors or model.safetensors.index.json: received ${
          found.length === 0 ? "no .safetensors file" : `${found.length} .safetensors files`
        }`,
      );
    }
    files.push(`${dir}/${found[0]}`);
    source = await openSafetensors(files[1], sourceOptions);
  }
  let weights: ModelWeights;
  try {
    weights = await readHfWeights(config, source);
  } finally {
    source.close();
  }
  let tokenizer: Tokenizer | null = null;
  const tokPath = typeof options.tokenizer === "string"
    ? options.tokenizer
    : options.tokenizer !== false && (await exists(`${dir}/tokenizer.json`))
    ? `${dir}/tokenizer.json`
    : undefined;
  if (tokPath) {
    tokenizer = await loadTokenizer(tokPath, { vocabSize: config.vocabSize });
    files.push(tokPath);
  }
  return { format: "safetensors", config: weights.config, weights, tokenizer, files };
}
