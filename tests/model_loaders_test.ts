// Model loaders: llama2.c checkpoints (v0, v1, v2), HF safetensors written by
// the test itself (f32/f16/bf16, single file and sharded, Qwen2 biases), and
// clear errors for broken files and configs.
import assert from "node:assert/strict";
import {
  hfTensorsFromWeights,
  modelConfigFromHf,
  writeHfCheckpoint,
} from "../lib/model/hf_config.ts";
import { encodeLlama2c, parseLlama2c } from "../lib/model/llama2c.ts";
import { convertWeights, loadModel, type LoadProgress } from "../lib/model/load.ts";
import { createReferenceModel } from "../lib/model/reference.ts";
import {
  encodeSafetensors,
  openSafetensors,
  parseSafetensorsHeader,
  writeSafetensors,
} from "../lib/model/safetensors.ts";
import { argmax } from "../lib/model/sampling.ts";
import type { ModelWeights, Tensor } from "../lib/model/types.ts";
import { tensorToFloat32 } from "../lib/model/weight_convert.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import { maxAbsDiff } from "./_assert.ts";

const MODEL = new URL("../models/stories260K/stories260K.bin", import.meta.url).pathname;
const BYTES = await Deno.readFile(MODEL);
const base = await loadModel(MODEL);
const STORY =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";

/** Greedy tokens from BOS, and every step's logits. */
function greedy(weights: ModelWeights, steps: number) {
  const model = createReferenceModel(weights);
  const tokens = [weights.config.bosId];
  const logits: Float32Array[] = [];
  for (let pos = 0; pos < steps; pos++) {
    const l = model.forward(tokens[pos], pos);
    logits.push(l);
    tokens.push(argmax(l));
  }
  return { tokens, logits };
}

/** Logits under teacher forcing of `tokens`. */
function forced(weights: ModelWeights, tokens: number[]): Float32Array[] {
  const model = createReferenceModel(weights);
  return tokens.slice(0, -1).map((t, pos) => model.forward(t, pos));
}

function maxAbsDiffRows(a: Float32Array[], b: Float32Array[]): number {
  return Math.max(0, ...a.map((row, i) => maxAbsDiff(row, b[i])));
}

const STEPS = 120;
const baseline = greedy(base.weights, STEPS);

async function withTempDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "freekv_loaders_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("llama2.c v0: stories260K header, tied classifier, tokenizer found next to it", () => {
  const c = base.config;
  assert.equal(base.format, "llama2c");
  assert.deepEqual(
    [
      c.dim,
      c.hiddenDim,
      c.numLayers,
      c.numQueryHeads,
      c.numKvHeads,
      c.headDim,
      c.vocabSize,
      c.maxSeqLen,
    ],
    [64, 172, 5, 8, 4, 8, 512, 512],
  );
  assert.equal(c.ropeStyle, "adjacent");
  assert.equal(c.ropeTheta, 10000);
  assert.equal(c.normEps, 1e-5);
  assert.equal(c.tiedEmbeddings, true);
  assert.equal(base.weights.classifier, undefined);
  assert.deepEqual([c.bosId, c.eosId], [1, 2]);
  assert.equal(base.tokenizer?.vocabSize, 512);
  assert.ok(base.files[1].endsWith("tok512.bin"));
  assert.deepEqual(base.weights.layers[4].w2.shape, [64, 172]);
  // First value of the embedding, straight from the file after the 28-byte header.
  assert.equal(
    (base.weights.tokenEmbedding.data as Float32Array)[0],
    new DataView(BYTES.buffer).getFloat32(28, true),
  );
  // Re-encoding gives the same tensors (the legacy RoPE table aside).
  const again = parseLlama2c(encodeLlama2c(base.weights));
  assert.deepEqual(again.layers[3].wv.data, base.weights.layers[3].wv.data);
});

Deno.test("llama2.c v1 (ak42) with a separate classifier, and v2 Q8_0 dequantized", async () => {
  await withTempDir(async (dir) => {
    const untied: ModelWeights = {
      ...base.weights,
      config: { ...base.config, tiedEmbeddings: false },
      classifier: {
        ...base.weights.tokenEmbedding,
        data: (base.weights.tokenEmbedding.data as Float32Array).map((v) => v * 0.5),
      },
    };
    for (const version of [0, 1] as const) {
      const path = `${dir}/v${version}.bin`;
      await Deno.writeFile(path, encodeLlama2c(untied, { version }));
      const got = await loadModel(path, { tokenizer: false });
      assert.equal(got.tokenizer, null);
      assert.equal(got.config.tiedEmbeddings, false);
      assert.deepEqual(got.weights.classifier!.data, untied.classifier!.data);
      assert.deepEqual(got.weights.layers[2].w3.data, base.weights.layers[2].w3.data);
      assert.deepEqual(got.weights.finalNorm.data, base.weights.finalNorm.data);
    }
    const v2 = `${dir}/v2.bin`;
    await Deno.writeFile(v2, encodeLlama2c(base.weights, { version: 2 }));
    const q = await loadModel(v2, { tokenizer: false });
    // Q8_0 error is at most half a quantization step: max|w| / 254 per group of 64.
    const a = base.weights.layers[1].wq.data as Float32Array,
      b = q.weights.layers[1].wq.data as Float32Array;
    for (let g = 0; g < a.length / 64; g++) {
      let max = 0, err = 0;
      for (let j = g * 64; j < (g + 1) * 64; j++) {
        max = Math.max(max, Math.abs(a[j]));
        err = Math.max(err, Math.abs(a[j] - b[j]));
      }
      assert.ok(err <= max / 254 + 1e-7, `group ${g}: error ${err}, max ${max}`);
    }
    assert.deepEqual(q.weights.layers[0].attnNorm.data, base.weights.layers[0].attnNorm.data);
    const top1 = forced(q.weights, baseline.tokens).filter((l, i) =>
      argmax(l) === baseline.tokens[i + 1]
    );
    assert.ok(top1.length >= STEPS * 0.9, `Q8_0 top-1 agreement ${top1.length}/${STEPS}`);
  });
});

Deno.test("llama2.c: truncated, padded and nonsense files give clear errors", () => {
  const fails = (bytes: Uint8Array, re: RegExp) =>
    assert.throws(() => parseLlama2c(bytes, { name: "x.bin" }), {
      name: "RangeError",
      message: re,
    });
  fails(
    BYTES.subarray(0, 1000),
    /"x\.bin" as a v0 file with dim=64, .* must be 1056540 bytes: received 1000 \(truncated\?\)/,
  );
  const longer = new Uint8Array(BYTES.length + 4);
  longer.set(BYTES);
  fails(longer, /must be 1056540 bytes: received 1056544$/);
  fails(BYTES.subarray(0, 10), /must hold at least a 28-byte header: received 10 bytes/);
  const edit = (i: number, v: number) => {
    const b = BYTES.slice(0, 4096);
    new DataView(b.buffer).setInt32(4 * i, v, true);
    return b;
  };
  fails(edit(0, -64), /header field 'dim' must be positive: received -64/);
  fails(edit(3, 7), /'dim' \(64\) must be divisible by 'n_heads': received 7/);
  fails(edit(4, 3), /'n_heads' \(8\) must be a multiple of 'n_kv_heads': received 3/);
  fails(edit(6, 0), /header field 'seq_len' must be positive: received 0/);
  const v3 = new Uint8Array(256);
  new DataView(v3.buffer).setUint32(0, 0x616b3432, true);
  new DataView(v3.buffer).setInt32(4, 3, true);
  fails(v3, /header version must be 1 \(f32\) or 2 \(Q8_0\): received 3/);
  fails(v3.subarray(0, 100), /must start with a 256-byte header: received 100 bytes/);
});

Deno.test("safetensors f32 (single and sharded) decodes stories260K identically", async () => {
  await withTempDir(async (dir) => {
    await writeHfCheckpoint(`${dir}/single`, base.weights);
    const progress: LoadProgress[] = [];
    const single = await loadModel(`${dir}/single`, { onProgress: (p) => progress.push(p) });
    assert.equal(single.format, "safetensors");
    assert.equal(single.config.ropeStyle, "half");
    assert.equal(single.config.tiedEmbeddings, true);
    assert.equal(single.tokenizer, null);
    assert.equal(progress.length, 2 + 9 * 5);
    assert.equal(progress.at(-1)!.loadedBytes, progress.at(-1)!.totalBytes);
    assert.ok(progress.every((p, i) => i === 0 || p.loadedBytes > progress[i - 1].loadedBytes));
    const got = greedy(single.weights, STEPS);
    assert.deepEqual(got.tokens, baseline.tokens);
    const text = base.tokenizer!.decode(got.tokens);
    assert.ok(text.startsWith(STORY), text);
    // Same function up to float summation order in q·k (measured: identical).
    assert.ok(maxAbsDiffRows(got.logits, baseline.logits) < 1e-5);

    await writeHfCheckpoint(`${dir}/sharded`, base.weights, { maxShardBytes: 300_000 });
    const index = JSON.parse(
      await Deno.readTextFile(`${dir}/sharded/model.safetensors.index.json`),
    );
    const shards = new Set(Object.values(index.weight_map));
    assert.ok(shards.size >= 3, `${shards.size} shards`);
    for (
      const entry of [
        `${dir}/sharded`,
        `${dir}/sharded/config.json`,
        `${dir}/sharded/model.safetensors.index.json`,
        `${dir}/sharded/${[...shards][1]}`, // one shard: the index brings the rest
      ]
    ) {
      const sharded = await loadModel(entry, { tokenizer: false });
      assert.deepEqual(greedy(sharded.weights, 20).logits, got.logits.slice(0, 20));
    }
    // Pointing at the weights file itself also works.
    const direct = await loadModel(`${dir}/single/model.safetensors`);
    assert.deepEqual(direct.weights.layers[1].wk.data, single.weights.layers[1].wk.data);
  });
});

Deno.test("safetensors f16 and bf16 variants stay close to f32", async () => {
  await withTempDir(async (dir) => {
    // Measured max |Δlogit| over 120 forced steps: f16 0.017, bf16 0.13; top-1 agreement 120/120.
    for (const [dtype, tol, agree] of [["f16", 0.04, 0.97], ["bf16", 0.3, 0.9]] as const) {
      await writeHfCheckpoint(`${dir}/${dtype}`, base.weights, { dtype });
      const m = await loadModel(`${dir}/${dtype}`);
      assert.equal(m.weights.layers[0].wq.dtype, dtype);
      assert.ok(m.weights.layers[0].wq.data instanceof Uint16Array);
      const cfg = JSON.parse(await Deno.readTextFile(`${dir}/${dtype}/config.json`));
      assert.equal(cfg.torch_dtype, dtype === "f16" ? "float16" : "bfloat16");
      const logits = forced(m.weights, baseline.tokens);
      const diff = maxAbsDiffRows(logits, baseline.logits);
      assert.ok(diff < tol, `${dtype}: max |Δlogit| ${diff}`);
      const same = logits.filter((l, i) => argmax(l) === baseline.tokens[i + 1]).length;
      assert.ok(same >= agree * STEPS, `${dtype}: top-1 agreement ${same}/${STEPS}`);
    }
    // dtype option converts at load.
    const f16 = await loadModel(MODEL, { dtype: "f16", tokenizer: false });
    assert.equal(f16.weights.tokenEmbedding.dtype, "f16");
    assert.equal(convertWeights(f16.weights, "f32").layers[0].w1.dtype, "f32");
  });
});

Deno.test("Qwen2 checkpoint with q/k/v biases and untied lm_head round-trips", async () => {
  const rng = createRandom(3);
  const c = {
    ...base.config,
    tiedEmbeddings: false,
    qkvBias: true,
    ropeStyle: "half" as const,
    ropeTheta: 1e6,
  };
  const t = (shape: number[]): Tensor => ({
    dtype: "f32",
    shape,
    data: randomNormalArray(rng, shape.reduce((a, b) => a * b, 1), 0.2),
  });
  const weights: ModelWeights = {
    ...base.weights,
    config: c,
    classifier: t([512, 64]),
    layers: base.weights.layers.map((l) => ({ ...l, bq: t([64]), bk: t([32]), bv: t([32]) })),
  };
  await withTempDir(async (dir) => {
    await writeHfCheckpoint(dir, weights);
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    assert.deepEqual(cfg.architectures, ["Qwen2ForCausalLM"]);
    const m = await loadModel(dir);
    assert.equal(m.config.qkvBias, true);
    assert.equal(m.config.ropeTheta, 1e6);
    assert.deepEqual(m.weights.layers[2].bk!.data, weights.layers[2].bk!.data);
    assert.deepEqual(m.weights.classifier!.data, weights.classifier!.data);
    const toks = [1, 50, 300, 7, 99, 12];
    assert.deepEqual(forced(m.weights, toks), forced(weights, toks));
  });
  // Adjacent-RoPE models with biases get their bias rows permuted like their weights.
  const adjacent = { ...weights, config: { ...c, ropeStyle: "adjacent" as const } };
  const { tensors, config } = hfTensorsFromWeights(adjacent);
  const bq = tensors.get("model.layers.0.self_attn.q_proj.bias")!.data;
  assert.equal(config.ropeStyle, "half");
  assert.equal(bq[1], weights.layers[0].bq!.data[2]);
  assert.equal(bq[4], weights.layers[0].bq!.data[1]);
});

Deno.test("HF config: defaults, missing fields, unsupported architectures and options", () => {
  const good = {
    architectures: ["MistralForCausalLM"],
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    vocab_size: 100,
  };
  const c = modelConfigFromHf(good);
  assert.equal(c.architecture, "mistral");
  assert.deepEqual([c.numKvHeads, c.headDim, c.normEps, c.ropeTheta, c.tiedEmbeddings], [
    4,
    8,
    1e-6,
    10000,
    false,
  ]);
  assert.equal(modelConfigFromHf({ ...good, eos_token_id: [7, 9] }).eosId, 7);
  assert.equal(
    modelConfigFromHf({ ...good, architectures: ["LlamaForCausalLM"], model_type: "smollm" })
      .architecture,
    "smollm",
  );
  for (
    const field of [
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
      "vocab_size",
    ]
  ) {
    const j: Record<string, unknown> = { ...good };
    delete j[field];
    assert.throws(() => modelConfigFromHf(j, { name: "m/config.json" }), {
      name: "TypeError",
      message: new RegExp(`"m/config\\.json" as field '${field}' is missing`),
    });
  }
  assert.throws(() => modelConfigFromHf({ ...good, architectures: ["GPT2LMHeadModel"] }), {
    name: "TypeError",
    message: /architecture "GPT2LMHeadModel" is not supported: expected one of LlamaForCausalLM/,
  });
  assert.throws(
    () => modelConfigFromHf({ ...good, architectures: undefined }),
    /field 'architectures' is missing/,
  );
  assert.throws(
    () => modelConfigFromHf({ ...good, num_key_value_heads: 3 }),
    /'num_attention_heads' must be a multiple of 'num_key_value_heads' \(3\): received/,
  );
  assert.throws(
    () => modelConfigFromHf({ ...good, hidden_size: -1 }),
    /'hidden_size' must be an integer of at least 1: received -1/,
  );
  assert.throws(
    () => modelConfigFromHf({ ...good, hidden_act: "gelu" }),
    /'hidden_act' must be "silu": received "gelu"/,
  );
  // rope_scaling types and sliding windows: tests/checkpoints_test.ts
  const scaled = { ...good, rope_scaling: { rope_type: "yarn", factor: 8 } };
  assert.throws(
    () => modelConfigFromHf(scaled),
    /'rope_scaling\.rope_type' must be one of default, linear, dynamic, llama3: received "yarn"/,
  );
  assert.equal(modelConfigFromHf(scaled, { ignoreRopeScaling: true }).ropeScaling, undefined);
  assert.throws(() => modelConfigFromHf([]), /must be a JSON object/);
});

Deno.test("safetensors: reader round trip and errors for broken files", async () => {
  const a: Tensor = { dtype: "bf16", shape: [3], data: new Uint16Array([0x3f80, 0x4000, 0xc000]) };
  const b: Tensor = { dtype: "f32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) };
  const bytes = encodeSafetensors({ b, a }, { metadata: { format: "pt" } });
  const header = parseSafetensorsHeader(bytes, { fileSize: bytes.length });
  assert.deepEqual([...header.entries.keys()], ["a", "b"]);
  assert.equal(header.dataOffset % 8, 0);
  assert.deepEqual(header.metadata, { format: "pt" });
  await withTempDir(async (dir) => {
    const path = `${dir}/t.safetensors`;
    await writeSafetensors(path, { b, a }, { metadata: { format: "pt" } });
    assert.deepEqual(await Deno.readFile(path), bytes);
    {
      using f = await openSafetensors(path);
      assert.deepEqual(tensorToFloat32(await f.read("a")), new Float32Array([1, 2, -2]));
      assert.deepEqual(await f.read("b"), b);
      await assert.rejects(() => f.read("c"), {
        name: "TypeError",
        message: /'c' is not in the checkpoint/,
      });
    }
    // Truncated data.
    await Deno.writeFile(path, bytes.subarray(0, bytes.length - 3));
    await assert.rejects(() => openSafetensors(path), {
      name: "RangeError",
      message:
        /tensor 'b' must end within the file's 19 data bytes: received end 22 \(truncated\?\)/,
    });
    // Header length beyond the file.
    const bad = bytes.slice();
    new DataView(bad.buffer).setBigUint64(0, 1n << 40n, true);
    await Deno.writeFile(path, bad);
    await assert.rejects(
      () => openSafetensors(path),
      /header length must be between 2 and \d+ bytes: received 1099511627776/,
    );
    await Deno.writeFile(path, bytes.subarray(0, 5));
    await assert.rejects(
      () => openSafetensors(path),
      /must start with an 8-byte header length: received 5 bytes/,
    );
  });
  const withHeader = (json: string) => {
    const text = new TextEncoder().encode(json);
    const out = new Uint8Array(8 + text.length + 16);
    new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
    out.set(text, 8);
    return out;
  };
  assert.throws(() => parseSafetensorsHeader(withHeader("{nope")), /its header must be UTF-8 JSON/);
  assert.throws(
    () =>
      parseSafetensorsHeader(withHeader('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}')),
    /tensor 'w' \(F32 \[2\]\) must span 8 bytes: received data_offsets \[0,4\]/,
  );
  assert.throws(
    () =>
      parseSafetensorsHeader(withHeader('{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,4]}}')),
    /tensor 'w' must have a known dtype: received "Q4"/,
  );
  // A known but unsupported dtype fails when read, naming the tensor.
  await withTempDir(async (dir) => {
    const path = `${dir}/i.safetensors`;
    await Deno.writeFile(
      path,
      withHeader('{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}'),
    );
    using f = await openSafetensors(path);
    await assert.rejects(() => f.read("ids"), {
      name: "TypeError",
      message: /tensor 'ids' as its dtype must be one of F32, F16, BF16: received I64/,
    });
  });
  assert.throws(
    () => encodeSafetensors({ w: { dtype: "f32", shape: [3], data: new Float32Array(2) } }),
    /tensor 'w' \(f32 \[3\]\) must hold 3 values in a Float32Array: received Float32Array of length 2/,
  );
});

Deno.test("HF checkpoint: missing tensor, missing config and missing weights are named", async () => {
  await withTempDir(async (dir) => {
    const { tensors, config } = hfTensorsFromWeights(base.weights);
    tensors.delete("model.layers.3.mlp.up_proj.weight");
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    await assert.rejects(() => loadModel(dir), {
      name: "TypeError",
      message: /needs ".*\/config\.json": not found/,
    });
    const { hfConfigFromModel } = await import("../lib/model/hf_config.ts");
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(hfConfigFromModel(config)));
    await assert.rejects(() => loadModel(dir), {
      name: "TypeError",
      message: /tensor 'model\.layers\.3\.mlp\.up_proj\.weight' is missing from the checkpoint/,
    });
    // Untied config without lm_head.
    await Deno.writeTextFile(
      `${dir}/config.json`,
      JSON.stringify({ ...hfConfigFromModel(config), tie_word_embeddings: false }),
    );
    tensors.set("model.layers.3.mlp.up_proj.weight", base.weights.layers[3].w3);
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    await assert.rejects(() => loadModel(dir), /tensor 'lm_head\.weight' is missing/);
    // Wrong shape.
    await Deno.writeTextFile(
      `${dir}/config.json`,
      JSON.stringify({ ...hfConfigFromModel(config), intermediate_size: 170 }),
    );
    await assert.rejects(
      () => loadModel(dir),
      /tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' must have shape \[170,64\]: received \[172,64\]/,
    );
    await Deno.remove(`${dir}/model.safetensors`);
    await assert.rejects(
      () => loadModel(dir),
      /must hold model\.safetensors or model\.safetensors\.index\.json: received no \.safetensors file/,
    );
    await assert.rejects(
      () => loadModel(`${dir}/nothing.bin`),
      /'path' must exist: received ".*nothing\.bin"/,
    );
  });
});
