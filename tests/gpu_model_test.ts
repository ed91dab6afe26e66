import assert from "node:assert/strict";
import { countCompiles, gpuTest } from "./_gpu.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import { createGpuModel } from "../lib/model/gpu_model.ts";
import { createEngineBackend } from "../lib/model/backends/engine.ts";
import { forgetPipelines } from "../lib/gpu/pipelines.ts";
import {
  type AttentionBackend,
  createDenseAttentionBackend,
  createRecordingBackend,
} from "../lib/model/backends/dense.ts";
import { loadLlama2c } from "../lib/model/llama2c.ts";
import { loadLlama2cTokenizer } from "../lib/model/tokenizer.ts";
import { createReferenceModel } from "../lib/model/reference.ts";
import { argmax } from "../lib/model/sampling.ts";
import { sampleTokenReference } from "../lib/model/kernels_reference.ts";
import type { ModelConfig, ModelWeights, Tensor, WeightDtype } from "../lib/model/types.ts";
import { convertTensor } from "../lib/model/weight_convert.ts";
import { maxAbsDiff } from "./_assert.ts";

const MODEL = new URL("../models/stories260K/stories260K.bin", import.meta.url);
const TOKENIZER = new URL("../models/stories260K/tok512.bin", import.meta.url);

/** A random Llama-family model with every optional feature switchable. */
function syntheticModel(over: Partial<ModelConfig>, dtype: WeightDtype = "f32"): ModelWeights {
  const config: ModelConfig = {
    architecture: "llama",
    dim: 48,
    hiddenDim: 72,
    numLayers: 2,
    numQueryHeads: 8,
    numKvHeads: 2,
    headDim: 8,
    vocabSize: 97,
    maxSeqLen: 256,
    ropeTheta: 10000,
    ropeStyle: "half",
    normEps: 1e-5,
    tiedEmbeddings: false,
    qkvBias: true,
    bosId: 1,
    eosId: 2,
    ...over,
  };
  const rng = createRandom(11);
  const t = (scale: number, ...shape: number[]): Tensor =>
    convertTensor({
      dtype: "f32",
      shape,
      data: randomNormalArray(rng, shape.reduce((a, b) => a * b), scale),
    }, dtype);
  const ones = (n: number): Tensor => {
    const data = randomNormalArray(rng, n, 0.1);
    for (let i = 0; i < n; i++) data[i] += 1;
    return { dtype: "f32", shape: [n], data };
  };
  const { dim, hiddenDim: h, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = config;
  const s = 1 / Math.sqrt(dim);
  return {
    config,
    tokenEmbedding: t(1, config.vocabSize, dim),
    finalNorm: ones(dim),
    classifier: config.tiedEmbeddings ? undefined : t(s, config.vocabSize, dim),
    layers: Array.from({ length: config.numLayers }, () => ({
      attnNorm: ones(dim),
      ffnNorm: ones(dim),
      wq: t(s, hq * d, dim),
      wk: t(s, hkv * d, dim),
      wv: t(s, hkv * d, dim),
      wo: t(1 / Math.sqrt(hq * d), dim, hq * d),
      w1: t(s, h, dim),
      w2: t(1 / Math.sqrt(h), dim, h),
      w3: t(s, h, dim),
      ...(config.qkvBias ? { bq: t(0.1, hq * d), bk: t(0.1, hkv * d), bv: t(0.1, hkv * d) } : {}),
    })),
  };
}

gpuTest(
  "stories260K: greedy 200 tokens from BOS match the CPU reference at every step",
  async ({ device }) => {
    const weights = await loadLlama2c(MODEL);
    const tokenizer = await loadLlama2cTokenizer(TOKENIZER);
    const ref = createReferenceModel(weights);
    using model = createGpuModel(device, weights);
    const tokens = [weights.config.bosId];
    let logits = await model.prefill(tokens);
    let worst = 0;
    for (let step = 0; step < 200; step++) {
      const expected = ref.forward(tokens[step], step);
      worst = Math.max(worst, maxAbsDiff(logits, expected));
      const next = argmax(logits);
      assert.equal(next, argmax(expected), `step ${step}: GPU and CPU pick different tokens`);
      tokens.push(next);
      if (step < 199) logits = await model.decode(next, step + 1);
    }
    assert.ok(worst < 1e-3, `max abs logit diff ${worst}`);
    const text = tokenizer.decode(tokens);
    assert.ok(
      text.startsWith(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
      ),
      text,
    );
    assert.equal(model.position, 200);
  },
);

gpuTest(
  "stories260K: batched prefill equals token-by-token decode, in f32, f16 and bf16",
  async ({ device }) => {
    const weights = await loadLlama2c(MODEL);
    const tokenizer = await loadLlama2cTokenizer(TOKENIZER);
    const prompt = tokenizer.encode(
      "Once upon a time, there was a big dog named Max. Max liked to run in the sun with his friend the cat.",
      { bos: true },
    );
    assert.ok(prompt.length > 20);
    const ref = createReferenceModel(weights);
    let expected: Float32Array = new Float32Array();
    for (let i = 0; i < prompt.length; i++) expected = ref.forward(prompt[i], i);
    for (const [dtype, tol] of [["f32", 1e-4], ["f16", 0.05], ["bf16", 0.3]] as const) {
      using model = createGpuModel(device, weights, { weightDtype: dtype });
      const batched = await model.prefill(prompt);
      let stepped = await model.prefill(prompt.slice(0, 1));
      for (let i = 1; i < prompt.length; i++) stepped = await model.decode(prompt[i], i);
      assert.ok(maxAbsDiff(batched, stepped) < (dtype === "f32" ? 1e-4 : 2e-3), dtype);
      assert.ok(maxAbsDiff(batched, expected) < tol, `${dtype}: ${maxAbsDiff(batched, expected)}`);
      // and decoding continues identically after either path
      const next = argmax(batched);
      const a = await model.decode(next, prompt.length);
      await model.prefill(prompt);
      const b = await model.decode(next, prompt.length);
      assert.ok(maxAbsDiff(a, b) < 1e-4);
    }
  },
);

gpuTest(
  "synthetic model: bias, half RoPE, separate classifier, GQA 4, chunked prefill, split weights",
  async ({ device }) => {
    for (const [dtype, tol] of [["f32", 2e-4], ["bf16", 2e-4]] as const) {
      // Weights already bf16 on the host: the reference reads the same values.
      const weights = syntheticModel({}, dtype);
      const ref = createReferenceModel(weights);
      using model = createGpuModel(device, weights, {
        prefillChunk: 64,
        maxBindingBytes: 48 * 4 * 10 + 4, // 10-row (f32) weight parts: embedding in 10 dispatches
        maxSeqLen: 150,
      });
      const rng = createRandom(5);
      const prompt = Array.from({ length: 100 }, () => rng.int(97));
      const logits = await model.prefill(prompt);
      let expected: Float32Array = new Float32Array();
      for (let i = 0; i < prompt.length; i++) expected = ref.forward(prompt[i], i);
      assert.ok(
        maxAbsDiff(logits, expected) < tol,
        `${dtype} prefill ${maxAbsDiff(logits, expected)}`,
      );
      for (let i = 0; i < 5; i++) {
        const token = rng.int(97);
        const got = await model.decode(token, 100 + i);
        const want = ref.forward(token, 100 + i);
        assert.ok(maxAbsDiff(got, want) < tol, `${dtype} decode ${i}`);
      }
    }
  },
);

gpuTest(
  "synthetic model: GQA 7, tied embeddings, adjacent RoPE, head_dim 16",
  async ({ device }) => {
    const weights = syntheticModel({
      numQueryHeads: 7,
      numKvHeads: 1,
      headDim: 16,
      dim: 40,
      tiedEmbeddings: true,
      qkvBias: false,
      ropeStyle: "adjacent",
    });
    const ref = createReferenceModel(weights);
    using model = createGpuModel(device, weights);
    const prompt = [1, 5, 9, 33, 2, 80, 17];
    const logits = await model.prefill(prompt);
    let expected: Float32Array = new Float32Array();
    for (let i = 0; i < prompt.length; i++) expected = ref.forward(prompt[i], i);
    assert.ok(maxAbsDiff(logits, expected) < 2e-4);
    const got = await model.decode(4, prompt.length);
    assert.ok(maxAbsDiff(got, ref.forward(4, prompt.length)) < 2e-4);
  },
);

gpuTest("recording backend sees every token's q, k, v token-major", async ({ device }) => {
  const weights = syntheticModel({ numLayers: 3 });
  const c = weights.config;
  const ref = createReferenceModel(weights);
  const records: Array<[number, Float32Array, Float32Array, Float32Array]> = [];
  const inner = createDenseAttentionBackend(device, c, { maxSeqLen: 32 });
  using backend = createRecordingBackend(device, inner, {
    shape: c,
    onRecord: (l, q, k, v) => records.push([l, q, k, v]),
  });
  using model = createGpuModel(device, weights, { attention: backend, maxSeqLen: 32 });
  const tokens = [1, 7, 8, 9, 10];
  await model.prefill(tokens.slice(0, 3));
  await model.decode(tokens[3], 3);
  await model.decode(tokens[4], 4);
  const expected: Array<[number, Float32Array, Float32Array, Float32Array]> = [];
  tokens.forEach((t, pos) =>
    ref.forward(t, pos, {
      onQkv: (l, q, k, v) => expected.push([l, q.slice(), k.slice(), v.slice()]),
    })
  );
  assert.equal(records.length, tokens.length * c.numLayers);
  records.forEach(([l, q, k, v], i) => {
    assert.equal(l, expected[i][0]);
    assert.ok(maxAbsDiff(q, expected[i][1]) < 1e-4, `q ${i}`);
    assert.ok(maxAbsDiff(k, expected[i][2]) < 1e-4, `k ${i}`);
    assert.ok(maxAbsDiff(v, expected[i][3]) < 1e-5, `v ${i}`);
  });
});

gpuTest("a custom backend receives prefill and step calls in order", async ({ device }) => {
  const weights = syntheticModel({ numLayers: 2 });
  const dense = createDenseAttentionBackend(device, weights.config, { maxSeqLen: 16 });
  const calls: string[] = [];
  let disposed = false;
  const spy: AttentionBackend = {
    prefill: (
      l,
      k,
      v,
      n,
      extras,
    ) => (calls.push(`p${l}:${n}:${!!extras?.q}`), dense.prefill(l, k, v, n)),
    step: (l, pos, io) => (calls.push(`s${l}@${pos}`), dense.step(l, pos, io)),
    [Symbol.dispose]: () => {
      disposed = true;
      dense[Symbol.dispose]();
    },
  };
  {
    using model = createGpuModel(device, weights, { attention: spy, maxSeqLen: 16 });
    await model.prefill([1, 2, 3]);
    await model.decode(4, 3);
  }
  assert.deepEqual(calls, ["p0:3:true", "p1:3:true", "s0@3", "s1@3"]);
  assert.equal(disposed, false, "a backend passed in stays the caller's");
  spy[Symbol.dispose]();
});

gpuTest(
  "decodeSampled: greedy tokens equal decode + argmax, one step per token, position advanced",
  async ({ device }) => {
    const weights = syntheticModel({ numLayers: 2 });
    using model = createGpuModel(device, weights, { maxSeqLen: 40 });
    const prompt = [1, 7, 9];
    let logits = await model.prefill(prompt);
    const expected: number[] = [];
    let token = argmax(logits);
    const first = token;
    for (let pos = prompt.length; pos < prompt.length + 20; pos++) {
      logits = await model.decode(token, pos);
      token = argmax(logits);
      expected.push(token);
    }
    await model.prefill(prompt);
    // Groups of 7, 1 and 12 steps: each starts from the last token of the one before.
    const got: number[] = [];
    let last = first;
    for (const count of [7, 1, 12]) {
      const group = await model.decodeSampled(last, model.position, { count });
      assert.equal(group.length, count);
      got.push(...group);
      last = group[count - 1];
    }
    assert.deepEqual(got, expected);
    assert.equal(model.position, prompt.length + 20);
    // Temperature: the sampler's draws pick the tokens the CPU would from each step's logits.
    await model.prefill(prompt);
    const coins = [0.1, 0.5, 0.9, 0.3, 0.7];
    const sampled = await model.decodeSampled(first, prompt.length, {
      count: 5,
      temperature: 0.8,
      coins,
    });
    await model.prefill(prompt);
    let input = first;
    for (let j = 0; j < 5; j++) {
      const l = await model.decode(input, prompt.length + j);
      assert.equal(sampled[j], sampleTokenReference(l, 0.8, coins[j]), `step ${j}`);
      input = sampled[j];
    }
  },
);

gpuTest("bad input: clear errors before any GPU work, state unchanged", async ({ device }) => {
  const weights = syntheticModel({ numLayers: 1 });
  using model = createGpuModel(device, weights, { maxSeqLen: 8 });
  await assert.rejects(
    () => model.prefill(Array.from({ length: 9 }, () => 3)),
    (e) => e instanceof RangeError && /at most maxSeqLen \(8\) tokens: received 9/.test(e.message),
  );
  await assert.rejects(
    () => model.prefill([1, 97]),
    (e) =>
      e instanceof RangeError &&
      /'tokens\[1\]' must be between 0 and 96: received 97/.test(e.message),
  );
  await assert.rejects(
    () => model.prefill([1, 2.5]),
    (e) => e instanceof TypeError && /'tokens\[1\]' must be an integer/.test(e.message),
  );
  await assert.rejects(
    () => model.prefill([]),
    (e) => e instanceof RangeError && /'tokens' must not be empty/.test(e.message),
  );
  await model.prefill([1, 2, 3]);
  await assert.rejects(
    () => model.decode(-1, 3),
    (e) =>
      e instanceof RangeError && /'token' must be between 0 and 96: received -1/.test(e.message),
  );
  await assert.rejects(
    () => model.decode(5, 5),
    (e) => e instanceof RangeError && /'pos' must be the next position \(3\)/.test(e.message),
  );
  assert.equal(model.position, 3);
  const refusals: [() => Promise<unknown>, RegExp][] = [
    [() => model.decodeSampled(5, 3, { count: 0 }), /'count' must be between 1 and 5: received 0/],
    [() => model.decodeSampled(5, 3, { count: 6 }), /'count' must be between 1 and 5: received 6/],
    [() => model.decodeSampled(5, 4, { count: 1 }), /'pos' must be the next position \(3\)/],
    [() => model.decodeSampled(97, 3, { count: 1 }), /'token' must be between 0 and 96/],
    [
      () => model.decodeSampled(5, 3, { count: 2, temperature: -1 }),
      /'temperature' must be at least 0: received -1/,
    ],
    [
      () => model.decodeSampled(5, 3, { count: 2, temperature: 1, coins: [0.5] }),
      /'coins' must hold one number in \[0, 1\) per step \(2\) at temperature 1: received length 1/,
    ],
    [
      () => model.decodeSampled(5, 3, { count: 2, temperature: 1, coins: [0.5, 1] }),
      /'coins\[1\]' must be in \[0, 1\): received 1/,
    ],
    [
      () => model.decodeSampled(5, 3, undefined as unknown as { count: number }),
      /'options' must be an object with 'count'/,
    ],
  ];
  for (const [call, message] of refusals) {
    await assert.rejects(call, (e) => e instanceof Error && message.test(e.message));
  }
  assert.equal(model.position, 3);
  for (let pos = 3; pos < 8; pos++) await model.decode(5, pos);
  await assert.rejects(
    () => model.decode(5, 8),
    (e) => e instanceof RangeError && /'pos' must be between 0 and 7: received 8/.test(e.message),
  );
  const first = model.decode(5, 0);
  await assert.rejects(
    () => model.decode(5, 0),
    (e) => e instanceof Error && /still running a previous call/.test(e.message),
  );
  await first;
  assert.throws(
    () => createGpuModel(device, weights, { prefillChunk: 100 }),
    (e) =>
      e instanceof RangeError &&
      /'prefillChunk' must be a multiple of 64: received 100/.test(e.message),
  );
  const broken = { ...weights, layers: [{ ...weights.layers[0], wk: weights.layers[0].wq }] };
  assert.throws(
    () => createGpuModel(device, broken),
    (e) =>
      e instanceof RangeError &&
      /'layers\[0\].wk' must have shape \[16,48\]: received \[64,48\]/.test(e.message),
  );
  assert.throws(
    () => createDenseAttentionBackend(device, weights.config, { maxSeqLen: 0 }),
    (e) => e instanceof RangeError && /'maxSeqLen' must be between 1 and/.test(e.message),
  );
});

gpuTest(
  "a model over the engine compiles nothing while it decodes past the budget",
  async ({ device }) => {
    using compiles = countCompiles(device);
    for (const policy of ["full", "quest", "freekv"] as const) {
      // Another model's pipelines must not hide a missing one.
      forgetPipelines(device);
      const weights = syntheticModel({});
      using backend = createEngineBackend(device, {
        ...weights.config,
        maxContext: 256,
        policy,
        pageSize: 4,
        budget: 24,
        sink: 4,
        window: 8,
      });
      using model = createGpuModel(device, weights, { attention: backend, maxSeqLen: 256 });
      const prompt = Array.from({ length: 10 }, (_, i) => (i * 7) % 97);
      const logits = await model.prefill(prompt);
      const before = compiles.count;
      // 40 tokens: the candidates outgrow the 3 selected pages after a few steps.
      const tokens = await model.decodeSampled(argmax(logits), prompt.length, { count: 40 });
      assert.equal(tokens.length, 40);
      assert.equal(compiles.count, before, `${policy}: pipelines compiled while decoding`);
    }
  },
);
