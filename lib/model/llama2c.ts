/**
 * Reader for llama2.c checkpoints (`run.c`'s `.bin` files):
 *
 * - legacy v0: 7 int32 header (dim, hidden_dim, n_layers, n_heads,
 *   n_kv_heads, vocab_size, seq_len; a negative vocab_size means a separate
 *   classifier), then f32 tensors embedding, rms_att, wq, wk, wv, wo,
 *   rms_ffn, w1, w2, w3, rms_final, the legacy RoPE table (skipped), and the
 *   classifier when not shared;
 * - versioned: 256-byte header starting with magic `ak42` (0x616b3432), an
 *   int32 version, the 7 ints and a shared-classifier byte. Version 1 holds
 *   f32 tensors (norms first); version 2 holds Q8_0 int8 groups plus f32
 *   scales, dequantized to f32 here.
 *
 * llama2.c models rotate adjacent pairs (`ropeStyle: "adjacent"`), theta
 * 10000, RMSNorm eps 1e-5, BOS 1, EOS 2.
 *
 * @module
 */

import type { LayerWeights, ModelConfig, ModelWeights, Tensor } from "./types.ts";

/** Magic number of versioned llama2.c checkpoints ("ak42" little-endian). */
export const LLAMA2C_MAGIC = 0x616b3432;

/** Options for {@linkcode parseLlama2c}. */
export interface ParseLlama2cOptions {
  /** File name used in error messages. */
  name?: string;
}

interface Header {
  version: number;
  dim: number;
  hiddenDim: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  vocabSize: number;
  seqLen: number;
  shared: boolean;
  groupSize: number;
  dataOffset: number;
}

function fail(name: string, rule: string): never {
  throw new RangeError(`Cannot load llama2.c checkpoint ${JSON.stringify(name)} as ${rule}`);
}

function readHeader(bytes: Uint8Array, name: string): Header {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 28) {
    fail(name, `the file must hold at least a 28-byte header: received ${bytes.byteLength} bytes`);
  }
  let version = 0, at = 0;
  if (view.getUint32(0, true) === LLAMA2C_MAGIC) {
    if (bytes.byteLength < 256) {
      fail(
        name,
        `a versioned checkpoint must start with a 256-byte header: received ${bytes.byteLength} bytes`,
      );
    }
    version = view.getInt32(4, true);
    if (version !== 1 && version !== 2) {
      fail(
        name,
        `its header version must be 1 (f32) or 2 (Q8_0): received ${version}`,
      );
    }
    at = 8;
  }
  const ints = Array.from({ length: 7 }, (_, i) => view.getInt32(at + 4 * i, true));
  const [dim, hiddenDim, numLayers, numHeads, numKvHeads, rawVocab, seqLen] = ints;
  const fields = [
    "dim",
    "hidden_dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "seq_len",
  ];
  for (let i = 0; i < 7; i++) {
    const v = i === 5 ? Math.abs(ints[i]) : ints[i];
    if (v < 1) {
      fail(name, `header field '${fields[i]}' must be positive: received ${ints[i]}`);
    }
  }
  if (dim % numHeads !== 0) {
    fail(name, `'dim' (${dim}) must be divisible by 'n_heads': received ${numHeads}`);
  }
  if (numKvHeads > numHeads || numHeads % numKvHeads !== 0) {
    fail(
      name,
      `'n_heads' (${numHeads}) must be a multiple of 'n_kv_heads': received ${numKvHeads}`,
    );
  }
  let shared = rawVocab > 0, groupSize = 0;
  if (version > 0) {
    if (rawVocab < 0) {
      fail(name, `header field 'vocab_size' must be positive: received ${rawVocab}`);
    }
    shared = bytes[36] !== 0;
    if (version === 2) {
      groupSize = view.getInt32(37, true);
      if (groupSize < 1) {
        fail(name, `header field 'group_size' must be positive: received ${groupSize}`);
      }
    }
  }
  return {
    version,
    dim,
    hiddenDim,
    numLayers,
    numHeads,
    numKvHeads,
    vocabSize: Math.abs(rawVocab),
    seqLen,
    shared,
    groupSize,
    dataOffset: version === 0 ? 28 : 256,
  };
}

function configOf(h: Header): ModelConfig {
  return {
    architecture: "llama",
    dim: h.dim,
    hiddenDim: h.hiddenDim,
    numLayers: h.numLayers,
    numQueryHeads: h.numHeads,
    numKvHeads: h.numKvHeads,
    headDim: h.dim / h.numHeads,
    vocabSize: h.vocabSize,
    maxSeqLen: h.seqLen,
    ropeTheta: 10000,
    ropeStyle: "adjacent",
    normEps: 1e-5,
    tiedEmbeddings: h.shared,
    qkvBias: false,
    bosId: 1,
    eosId: 2,
  };
}

/** Shapes of the stacked tensors, in the file order of each version. */
function shapes(h: Header) {
  const { dim, hiddenDim: hd, numLayers: L, vocabSize: V } = h;
  const kvDim = (dim / h.numHeads) * h.numKvHeads;
  return {
    embedding: [V, dim],
    attnNorm: [dim],
    wq: [dim, dim],
    wk: [kvDim, dim],
    wv: [kvDim, dim],
    wo: [dim, dim],
    ffnNorm: [dim],
    w1: [hd, dim],
    w2: [dim, hd],
    w3: [hd, dim],
    finalNorm: [dim],
    classifier: [V, dim],
    layers: L,
  };
}

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * Parses a whole llama2.c checkpoint held in memory. Weights come out as
 * `f32` tensors that copy the file's data.
 *
 * @example
 * ```ts
 * import { parseLlama2c } from "./llama2c.ts";
 * const bytes = await Deno.readFile("models/stories260K/stories260K.bin");
 * const weights = parseLlama2c(bytes);
 * weights.config.numKvHeads; // 4
 * ```
 */
export function parseLlama2c(bytes: Uint8Array, options: ParseLlama2cOptions = {}): ModelWeights {
  const name = options.name ?? "<memory>";
  const h = readHeader(bytes, name);
  const s = shapes(h);
  const L = s.layers;
  const perLayer = ["attnNorm", "wq", "wk", "wv", "wo", "ffnNorm", "w1", "w2", "w3"] as const;
  const headSize = h.dim / h.numHeads;

  // Expected size first, so a truncated file is named before any parsing.
  let expected: number;
  const matrices = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"] as const;
  const matrixFloats = size(s.embedding) + L * matrices.reduce((a, k) => a + size(s[k]), 0) +
    (h.shared ? 0 : size(s.classifier));
  const normFloats = L * (size(s.attnNorm) + size(s.ffnNorm)) + size(s.finalNorm);
  if (h.version === 2) {
    const weightsList = [s.embedding, ...matrices.flatMap((k) => Array(L).fill(s[k]))];
    if (!h.shared) weightsList.push(s.classifier);
    for (const shape of weightsList) {
      if (size(shape) % h.groupSize !== 0) {
        fail(
          name,
          `every Q8_0 tensor size must be a multiple of 'group_size' (${h.groupSize}): received ${
            size(shape)
          } for shape [${shape}]`,
        );
      }
    }
    expected = h.dataOffset + 4 * normFloats + matrixFloats + 4 * (matrixFloats / h.groupSize);
  } else {
    const ropeFloats = h.version === 0 ? h.seqLen * headSize : 0;
    expected = h.dataOffset + 4 * (normFloats + matrixFloats + ropeFloats);
  }
  if (bytes.byteLength !== expected) {
    fail(
      name,
      `a v${h.version} file with dim=${h.dim}, hidden_dim=${h.hiddenDim}, n_layers=${L}, ` +
        `n_heads=${h.numHeads}, n_kv_heads=${h.numKvHeads}, vocab_size=${h.vocabSize}, ` +
        `seq_len=${h.seqLen}, ${h.shared ? "shared" : "separate"} classifier must be ${expected} ` +
        `bytes: received ${bytes.byteLength}${bytes.byteLength < expected ? " (truncated?)" : ""}`,
    );
  }

  let offset = h.dataOffset;
  const f32 = (shape: number[]): Tensor => {
    const n = size(shape);
    const data = new Float32Array(n);
    new Uint8Array(data.buffer).set(bytes.subarray(offset, offset + 4 * n));
    offset += 4 * n;
    return { dtype: "f32", shape: shape.slice(), data };
  };
  const stacked = (shape: number[]): Tensor[] => Array.from({ length: L }, () => f32(shape));

  const layers: Partial<LayerWeights>[] = Array.from({ length: L }, () => ({}));
  const put = (key: (typeof perLayer)[number], ts: Tensor[]) =>
    ts.forEach((t, i) => layers[i][key] = t);
  let tokenEmbedding: Tensor, finalNorm: Tensor, classifier: Tensor | undefined;

  if (h.version === 0) {
    tokenEmbedding = f32(s.embedding);
    for (const key of perLayer) put(key, stacked(s[key]));
    finalNorm = f32(s.finalNorm);
    offset += 4 * h.seqLen * headSize; // legacy freq_cis_real + freq_cis_imag
    if (!h.shared) classifier = f32(s.classifier);
  } else if (h.version === 1) {
    put("attnNorm", stacked(s.attnNorm));
    put("ffnNorm", stacked(s.ffnNorm));
    finalNorm = f32(s.finalNorm);
    tokenEmbedding = f32(s.embedding);
    for (const key of matrices) put(key, stacked(s[key]));
    if (!h.shared) classifier = f32(s.classifier);
  } else {
    put("attnNorm", stacked(s.attnNorm));
    put("ffnNorm", stacked(s.ffnNorm));
    finalNorm = f32(s.finalNorm);
    // int8 values of every quantized tensor, then all their f32 scales.
    const order: { shape: number[]; set: (t: Tensor) => void }[] = [
      { shape: s.embedding, set: (t) => tokenEmbedding = t },
    ];
    for (const key of matrices) {
      for (let l = 0; l < L; l++) order.push({ shape: s[key], set: (t) => layers[l][key] = t });
    }
    if (!h.shared) order.push({ shape: s.classifier, set: (t) => classifier = t });
    const quant = order.map(({ shape }) => {
      const q = new Int8Array(bytes.buffer, bytes.byteOffset + offset, size(shape));
      offset += size(shape);
      return q;
    });
    order.forEach(({ shape, set }, i) => {
      const n = size(shape), q = quant[i];
      const scales = new Float32Array(n / h.groupSize);
      new Uint8Array(scales.buffer).set(bytes.subarray(offset, offset + 4 * scales.length));
      offset += 4 * scales.length;
      const data = new Float32Array(n);
      for (let j = 0; j < n; j++) data[j] = q[j] * scales[Math.floor(j / h.groupSize)];
      set({ dtype: "f32", shape: shape.slice(), data });
    });
  }
  return {
    config: configOf(h),
    tokenEmbedding: tokenEmbedding!,
    layers: layers as LayerWeights[],
    finalNorm: finalNorm!,
    ...(classifier ? { classifier } : {}),
  };
}

/**
 * Reads a llama2.c checkpoint from a file (see {@linkcode parseLlama2c}).
 *
 * @example
 * ```ts
 * import { loadLlama2c } from "./llama2c.ts";
 * const weights = await loadLlama2c("models/stories260K/stories260K.bin");
 * weights.config.dim; // 64
 * ```
 */
export async function loadLlama2c(path: string | URL): Promise<ModelWeights> {
  const bytes = await Deno.readFile(path);
  return parseLlama2c(bytes, { name: String(path) });
}

/** Options for {@linkcode encodeLlama2c}. */
export interface EncodeLlama2cOptions {
  /** File layout: 0 (legacy, default), 1 (versioned f32) or 2 (versioned Q8_0). */
  version?: 0 | 1 | 2;
  /** Q8_0 group size for version 2 (default 64, halved until it divides `dim`). */
  groupSize?: number;
}

/**
 * Serializes f32 weights into a llama2.c checkpoint (v0, v1 or the lossy
 * Q8_0 v2). Requires
 * `ropeStyle: "adjacent"`, no qkv bias and f32 tensors. Useful for tests of
 * the reader and for exporting small models to `run.c`.
 *
 * @example
 * ```ts
 * import { encodeLlama2c, parseLlama2c } from "./llama2c.ts";
 * const bytes = await Deno.readFile("models/stories260K/stories260K.bin");
 * const again = encodeLlama2c(parseLlama2c(bytes));
 * again.length === bytes.length; // true
 * ```
 */
export function encodeLlama2c(
  weights: ModelWeights,
  options: EncodeLlama2cOptions = {},
): Uint8Array {
  const version = options.version ?? 0;
  const c = weights.config;
  if (c.ropeStyle !== "adjacent" || c.qkvBias || c.dim !== c.numQueryHeads * c.headDim) {
    throw new TypeError(
      `Cannot encode llama2.c checkpoint as the model must use adjacent RoPE, no qkv bias and ` +
        `dim = heads * headDim: received ropeStyle ${
          JSON.stringify(c.ropeStyle)
        }, qkvBias ${c.qkvBias}`,
    );
  }
  const tensors: Tensor[] = [];
  const L = weights.layers;
  const all = (key: keyof LayerWeights) => L.map((l) => l[key] as Tensor);
  const shared = !weights.classifier;
  const headSize = c.headDim;
  if (version === 0) {
    tensors.push(weights.tokenEmbedding);
    for (const k of ["attnNorm", "wq", "wk", "wv", "wo", "ffnNorm", "w1", "w2", "w3"] as const) {
      tensors.push(...all(k));
    }
    tensors.push(weights.finalNorm);
    // Legacy RoPE table: cos then sin, [seq_len, head_size / 2] each.
    const cos = new Float32Array(c.maxSeqLen * headSize / 2);
    const sin = new Float32Array(cos.length);
    for (let p = 0; p < c.maxSeqLen; p++) {
      for (let i = 0; i < headSize / 2; i++) {
        const a = p / Math.pow(c.ropeTheta, (2 * i) / headSize);
        cos[p * headSize / 2 + i] = Math.cos(a);
        sin[p * headSize / 2 + i] = Math.sin(a);
      }
    }
    tensors.push({ dtype: "f32", shape: [cos.length], data: cos });
    tensors.push({ dtype: "f32", shape: [sin.length], data: sin });
  } else if (version === 1) {
    tensors.push(...all("attnNorm"), ...all("ffnNorm"), weights.finalNorm, weights.tokenEmbedding);
    for (const k of ["wq", "wk", "wv", "wo", "w1", "w2", "w3"] as const) tensors.push(...all(k));
  } else {
    return encodeQ80(weights, options.groupSize);
  }
  if (!shared) tensors.push(weights.classifier!);
  for (const t of tensors) {
    if (t.dtype !== "f32") {
      throw new TypeError(
        `Cannot encode llama2.c checkpoint as every tensor must be f32: received ${t.dtype}`,
      );
    }
  }
  const headerBytes = version === 0 ? 28 : 256;
  const total = headerBytes + 4 * tensors.reduce((a, t) => a + t.data.length, 0);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  if (version === 1) {
    view.setUint32(0, LLAMA2C_MAGIC, true);
    view.setInt32(4, 1, true);
    at = 8;
  }
  const vocab = version === 0 && !shared ? -c.vocabSize : c.vocabSize;
  [c.dim, c.hiddenDim, c.numLayers, c.numQueryHeads, c.numKvHeads, vocab, c.maxSeqLen]
    .forEach((v, i) => view.setInt32(at + 4 * i, v, true));
  if (version === 1) out[36] = shared ? 1 : 0;
  let offset = headerBytes;
  for (const t of tensors) {
    const d = t.data as Float32Array;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), offset);
    offset += d.byteLength;
  }
  return out;
}

function encodeQ80(weights: ModelWeights, requestedGroup?: number): Uint8Array {
  const c = weights.config;
  let group = requestedGroup ?? 64;
  if (requestedGroup === undefined) { while (c.dim % group !== 0) group /= 2; }
  const L = weights.layers;
  const norms = [...L.map((l) => l.attnNorm), ...L.map((l) => l.ffnNorm), weights.finalNorm];
  const quant = [weights.tokenEmbedding];
  for (const k of ["wq", "wk", "wv", "wo", "w1", "w2", "w3"] as const) {
    quant.push(...L.map((l) => l[k]));
  }
  if (weights.classifier) quant.push(weights.classifier);
  for (const t of [...norms, ...quant]) {
    if (t.dtype !== "f32") {
      throw new TypeError(
        `Cannot encode llama2.c checkpoint as every tensor must be f32: received ${t.dtype}`,
      );
    }
    if (quant.includes(t) && t.data.length % group !== 0) {
      throw new RangeError(
        `Cannot encode llama2.c checkpoint as 'groupSize' must divide every tensor size: ` +
          `received ${group} for a tensor of ${t.data.length} values`,
      );
    }
  }
  const normFloats = norms.reduce((a, t) => a + t.data.length, 0);
  const qCount = quant.reduce((a, t) => a + t.data.length, 0);
  const out = new Uint8Array(256 + 4 * normFloats + qCount + 4 * (qCount / group));
  const view = new DataView(out.buffer);
  view.setUint32(0, LLAMA2C_MAGIC, true);
  view.setInt32(4, 2, true);
  [c.dim, c.hiddenDim, c.numLayers, c.numQueryHeads, c.numKvHeads, c.vocabSize, c.maxSeqLen]
    .forEach((v, i) => view.setInt32(8 + 4 * i, v, true));
  out[36] = weights.classifier ? 0 : 1;
  view.setInt32(37, group, true);
  let at = 256;
  for (const t of norms) {
    const d = t.data as Float32Array;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), at);
    at += d.byteLength;
  }
  const allScales: Float32Array[] = [];
  for (const t of quant) {
    const d = t.data as Float32Array;
    const scales = new Float32Array(d.length / group);
    for (let g = 0; g < scales.length; g++) {
      let max = 0;
      for (let j = g * group; j < (g + 1) * group; j++) max = Math.max(max, Math.abs(d[j]));
      const scale = Math.fround(max / 127);
      scales[g] = scale;
      for (let j = g * group; j < (g + 1) * group; j++) {
        view.setInt8(at + j, scale === 0 ? 0 : Math.round(d[j] / scale));
      }
    }
    at += d.length;
    allScales.push(scales);
  }
  for (const s of allScales) {
    out.set(new Uint8Array(s.buffer), at);
    at += s.byteLength;
  }
  return out;
}
