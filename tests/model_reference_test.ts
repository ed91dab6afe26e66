// CPU reference forward pass and sampling: stories260K against llama2.c's own
// expected outputs, and random tiny models (GQA, qkv bias, both RoPE styles)
// against an independent whole-sequence oracle built from kernels_reference.
import assert from "node:assert/strict";
import { loadModel } from "../lib/model/load.ts";
import {
  createReferenceModel,
  matvec,
  rmsnorm,
  rope,
  softmax,
  swiglu,
} from "../lib/model/reference.ts";
import type { ReferenceModel } from "../lib/model/reference.ts";
import { argmax, createLlama2cRandom, createSampler, type Sampler } from "../lib/model/sampling.ts";
import { createTextStream, type Tokenizer } from "../lib/model/tokenizer.ts";
import type { LayerWeights, ModelConfig, ModelWeights, Tensor } from "../lib/model/types.ts";
import {
  causalAttentionReference,
  matmulReference,
  rmsnormReference,
  ropeReference,
  swigluReference,
} from "../lib/model/kernels_reference.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";

const MODEL = new URL("../models/stories260K/stories260K.bin", import.meta.url).pathname;

// llama2.c test_all.py: `run stories260K.bin -z tok512.bin -t 0.0 -n 200`.
const EXPECTED_200 =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\nLily didn't want to help her mom, so she";
// llama2.c doc/stories260K.md: default 256 steps, greedy, and `-t 1.0 -p 0.9 -s 133742`.
const EXPECTED_256_GREEDY = EXPECTED_200 +
  " said, \"I'm sorry, mom. I didn't know what to do.\" Her mom said, \"Don't worry, Lily. We can help you.";
const EXPECTED_256_TOPP =
  "Once upon a time, there was a little boy named Timmy. Timmy loved to play with his toys and eat sandwiches. One day, Timmy's mom told him it was time to rest for a while. Timmy's friend Billy came over and took him a down.\nTimmy's mom saw that Timmy was sad, but Timmy said, \"I didn't understand what is it! We need to find some leafs.\" Timmy thought about it and took a deep breath on a spoon. He hoped it was important to be kind and continued to find its image next time.\nAfter they finished getting, Timmy's dad came up to his house and promised to help Timmy.";

const loaded = await loadModel(MODEL);
const tokenizer = loaded.tokenizer!;

/** run.c's generate loop: `steps` forward calls from BOS, stopping at BOS. */
function generate(model: ReferenceModel, tok: Tokenizer, sampler: Sampler, steps: number) {
  model.reset();
  const stream = createTextStream(tok);
  const tokens = [model.config.bosId];
  let text = stream.push(model.config.bosId);
  for (let pos = 0; pos < steps; pos++) {
    const next = sampler.sample(model.forward(tokens[pos], pos));
    if (next === model.config.bosId) break;
    tokens.push(next);
    text += stream.push(next);
  }
  return { text: text + stream.flush(), tokens };
}

Deno.test("stories260K greedy 200 steps reproduces llama2.c's test output exactly", () => {
  const model = createReferenceModel(loaded.weights);
  const { text, tokens } = generate(model, tokenizer, createSampler({ temperature: 0 }), 200);
  assert.ok(text.startsWith(
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
  ));
  assert.equal(text, EXPECTED_200);
  assert.equal(tokens.length, 201);
  assert.equal(tokenizer.decode(tokens), EXPECTED_200);
});

Deno.test("stories260K 256 steps: greedy and top-p with llama2.c's RNG match its docs", () => {
  const model = createReferenceModel(loaded.weights);
  const greedy = generate(model, tokenizer, createSampler({ temperature: 0 }), 256);
  assert.equal(greedy.text, EXPECTED_256_GREEDY);
  const sampler = createSampler({ temperature: 1, topP: 0.9, random: createLlama2cRandom(133742) });
  assert.equal(generate(model, tokenizer, sampler, 256).text, EXPECTED_256_TOPP);
});

Deno.test("reference model: rewinding the cache and hooks", () => {
  const model = createReferenceModel(loaded.weights);
  const toks = [1, 400, 300, 290, 280];
  const first = toks.map((t, p) => model.forward(t, p));
  assert.equal(model.length, 5);
  // Rewind to position 2 with a different token, then replay the original.
  model.forward(17, 2);
  assert.equal(model.length, 3);
  const replay = model.forward(toks[2], 2);
  assert.deepEqual(replay, first[2]);
  const seen: number[] = [];
  const keys: Float32Array[] = [];
  const kv = model.config.numKvHeads * model.config.headDim;
  model.forward(toks[3], 3, {
    onQkv(layer, q, k, v) {
      seen.push(layer);
      assert.equal(q.length, model.config.numQueryHeads * model.config.headDim);
      assert.equal(k.length, kv);
      assert.equal(v.length, kv);
      keys.push(Float32Array.from(k));
    },
    onHidden(layer, x) {
      assert.equal(x.length, model.config.dim);
      assert.equal(layer, seen.at(-1));
    },
  });
  keys.forEach((k, layer) => assert.deepEqual(model.key(layer, 3), k));
  assert.deepEqual(seen, [0, 1, 2, 3, 4]);
  model.reset();
  assert.equal(model.length, 0);
});

Deno.test("reference model: bad input throws before touching state", () => {
  const model = createReferenceModel(loaded.weights, { maxSeqLen: 4 });
  model.forward(1, 0);
  assert.throws(() => model.forward(512, 1), {
    name: "RangeError",
    message: /'token' must be between 0 and 511: received 512/,
  });
  assert.throws(() => model.forward(1, 2), {
    name: "RangeError",
    message: /'pos' must be between 0 and 1: received 2/,
  });
  assert.throws(() => model.forward(1.5, 1), {
    name: "TypeError",
    message: /'token' must be an integer/,
  });
  assert.equal(model.length, 1);
  for (let p = 1; p < 4; p++) model.forward(5, p);
  assert.throws(() => model.forward(5, 4), {
    name: "RangeError",
    message: /'pos' must be between 0 and 3: received 4/,
  });
  assert.throws(() => model.key(0, 4), /'pos' must be between 0 and 3/);
  const broken = { ...loaded.weights, layers: loaded.weights.layers.slice(1) };
  assert.throws(() => createReferenceModel(broken), /'layers' must have 5 entries: received 4/);
  const badShape = structuredClone(loaded.weights);
  badShape.layers[2].wk.shape = [64, 32];
  assert.throws(() => createReferenceModel(badShape), {
    name: "RangeError",
    message: /tensor 'layers\[2\]\.wk' must have shape \[32,64\]: received \[64,32\]/,
  });
});

// ---------------------------------------------------------------------------
// Random tiny models against a whole-sequence oracle.

function tensor(rng: ReturnType<typeof createRandom>, shape: number[], scale: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype: "f32", shape, data: randomNormalArray(rng, n, scale) };
}

function randomModel(seed: number, c: Partial<ModelConfig>): ModelWeights {
  const rng = createRandom(seed);
  const config: ModelConfig = {
    architecture: "test",
    dim: 24,
    hiddenDim: 40,
    numLayers: 2,
    numQueryHeads: 6,
    numKvHeads: 2,
    headDim: 8,
    vocabSize: 37,
    maxSeqLen: 64,
    ropeTheta: 10000,
    ropeStyle: "half",
    normEps: 1e-6,
    tiedEmbeddings: false,
    qkvBias: true,
    bosId: 1,
    eosId: 2,
    ...c,
  };
  const { dim, hiddenDim: h, headDim: d } = config;
  const q = config.numQueryHeads * d, kv = config.numKvHeads * d;
  const norm = (): Tensor => ({
    dtype: "f32",
    shape: [dim],
    data: Float32Array.from({ length: dim }, () => 1 + 0.2 * rng.normal()),
  });
  const layers: LayerWeights[] = Array.from({ length: config.numLayers }, () => ({
    attnNorm: norm(),
    wq: tensor(rng, [q, dim], 0.3),
    wk: tensor(rng, [kv, dim], 0.3),
    wv: tensor(rng, [kv, dim], 0.3),
    wo: tensor(rng, [dim, q], 0.3),
    ...(config.qkvBias
      ? { bq: tensor(rng, [q], 0.5), bk: tensor(rng, [kv], 0.5), bv: tensor(rng, [kv], 0.5) }
      : {}),
    ffnNorm: norm(),
    w1: tensor(rng, [h, dim], 0.3),
    w2: tensor(rng, [dim, h], 0.3),
    w3: tensor(rng, [h, dim], 0.3),
  }));
  const w: ModelWeights = {
    config,
    tokenEmbedding: tensor(rng, [config.vocabSize, dim], 1),
    layers,
    finalNorm: norm(),
  };
  if (!config.tiedEmbeddings) w.classifier = tensor(rng, [config.vocabSize, dim], 0.3);
  return w;
}

/** All-positions logits, computed token-batched with kernels_reference ops. */
function sequenceOracle(w: ModelWeights, tokens: number[]): Float32Array[] {
  const c = w.config, T = tokens.length, f = (t: Tensor) => t.data as Float32Array;
  let x = new Float32Array(T * c.dim);
  tokens.forEach((t, i) =>
    x.set(f(w.tokenEmbedding).subarray(t * c.dim, (t + 1) * c.dim), i * c.dim)
  );
  for (const l of w.layers) {
    const xn = rmsnormReference(x, f(l.attnNorm), { eps: c.normEps });
    const rot = { headDim: c.headDim, start: 0, theta: c.ropeTheta, style: c.ropeStyle };
    const q = ropeReference(matmulReference(l.wq, xn, { bias: l.bq && f(l.bq) }), {
      heads: c.numQueryHeads,
      ...rot,
    });
    const k = ropeReference(matmulReference(l.wk, xn, { bias: l.bk && f(l.bk) }), {
      heads: c.numKvHeads,
      ...rot,
    });
    const v = matmulReference(l.wv, xn, { bias: l.bv && f(l.bv) });
    const att = causalAttentionReference(q, k, v, {
      numQueryHeads: c.numQueryHeads,
      numKvHeads: c.numKvHeads,
      headDim: c.headDim,
      start: 0,
    });
    const o = matmulReference(l.wo, att);
    x = x.map((v, i) => v + o[i]);
    const hn = rmsnormReference(x, f(l.ffnNorm), { eps: c.normEps });
    const ff = matmulReference(
      l.w2,
      swigluReference(matmulReference(l.w1, hn), matmulReference(l.w3, hn)),
    );
    x = x.map((v, i) => v + ff[i]);
  }
  const out = rmsnormReference(x, f(w.finalNorm), { eps: c.normEps });
  const logits = matmulReference(c.tiedEmbeddings ? w.tokenEmbedding : w.classifier!, out);
  return tokens.map((_, i) => logits.subarray(i * c.vocabSize, (i + 1) * c.vocabSize));
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

Deno.test("reference model matches a sequence oracle: GQA groups, bias, both RoPE styles", () => {
  const cases: Partial<ModelConfig>[] = [
    {},
    { ropeStyle: "adjacent", qkvBias: false, tiedEmbeddings: true },
    { numQueryHeads: 7, numKvHeads: 1, dim: 28, headDim: 4 },
    { numQueryHeads: 4, numKvHeads: 4, headDim: 16, dim: 20 }, // qDim != dim
    {
      numQueryHeads: 8,
      numKvHeads: 2,
      headDim: 2,
      dim: 16,
      ropeStyle: "adjacent",
      ropeTheta: 500000,
    },
  ];
  cases.forEach((c, i) => {
    const w = randomModel(100 + i, c);
    const rng = createRandom(7 + i);
    const tokens = Array.from({ length: 19 }, () => rng.int(w.config.vocabSize));
    const expected = sequenceOracle(w, tokens);
    const model = createReferenceModel(w);
    tokens.forEach((t, pos) => {
      const got = model.forward(t, pos);
      const err = maxRelDiff(got, expected[pos]);
      assert.ok(err < 2e-5, `case ${i} pos ${pos}: relative error ${err}`);
    });
  });
});

Deno.test("reference ops: small known values", () => {
  const n = rmsnorm(new Float32Array([3, 4]), [1, 2], { eps: 0 });
  const r = 1 / Math.sqrt(12.5);
  assert.ok(Math.abs(n[0] - 3 * r) < 1e-6 && Math.abs(n[1] - 8 * r) < 1e-6);
  assert.deepEqual(
    matvec(new Float32Array([1, 2, 3, 4, 5, 6]), new Float32Array([1, -1]), { bias: [1, 1, 1] }),
    new Float32Array([0, 0, 0]),
  );
  assert.throws(
    () => matvec(new Float32Array(5), new Float32Array(2)),
    /'w' length must be a multiple of 'x' length \(2\): received 5/,
  );
  // half and adjacent agree after the HF permutation of the pairs
  const a = new Float32Array([1, 2, 3, 4]), h = new Float32Array([1, 3, 2, 4]);
  rope(a, 5, { headDim: 4 });
  rope(h, 5, { headDim: 4, style: "half" });
  assert.deepEqual([a[0], a[2], a[1], a[3]], [h[0], h[1], h[2], h[3]]);
  const s = softmax(new Float32Array([1, 1, 5]), { length: 2 });
  assert.deepEqual(s, new Float32Array([0.5, 0.5, 5]));
  const g = swiglu(new Float32Array([2]), new Float32Array([3]));
  assert.ok(Math.abs(g[0] - 3 * 2 / (1 + Math.exp(-2))) < 1e-6);
  assert.throws(
    () => rope(new Float32Array(6), 0, { headDim: 4 }),
    /'headDim' must be even and divide/,
  );
});

Deno.test("sampling: greedy, seeded, top-p and top-k restrict the support", () => {
  const logits = new Float32Array([0, 3, 2.9, -5, 1]);
  assert.equal(argmax(logits), 1);
  assert.equal(createSampler({ temperature: 0 }).sample(logits), 1);
  const draw = (o: object) => {
    const s = createSampler(o);
    return Array.from({ length: 400 }, () => s.sample(logits));
  };
  assert.deepEqual(draw({ seed: 5 }), draw({ seed: 5 }));
  assert.notDeepEqual(draw({ seed: 5 }), draw({ seed: 6 }));
  // p(1) ≈ 0.47, p(2) ≈ 0.43: a 0.8 nucleus holds exactly tokens 1 and 2.
  assert.deepEqual(new Set(draw({ topP: 0.8, seed: 1 })), new Set([1, 2]));
  assert.deepEqual(new Set(draw({ topK: 1, seed: 1 })), new Set([1]));
  const all = draw({ seed: 3 });
  assert.ok(all.includes(4) && all.includes(0), "plain sampling reaches the tail");
  const counts = [0, 0, 0, 0, 0];
  all.forEach((t) => counts[t]++);
  assert.ok(Math.abs(counts[1] / 400 - 0.47) < 0.08, `token 1 frequency ${counts[1] / 400}`);
  assert.throws(() => createSampler({ temperature: -1 }), {
    name: "RangeError",
    message: /'temperature' must be at least 0: received -1/,
  });
  assert.throws(() => createSampler({ topK: 0 }), {
    name: "RangeError",
    message: /'topK' must be at least 1/,
  });
  assert.throws(() => argmax([]), /must not be empty/);
});
