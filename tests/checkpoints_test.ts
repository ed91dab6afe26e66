// The checkpoints people bring: Llama-3 `rope_scaling` (llama3, linear,
// dynamic) and Mistral/Qwen2 sliding windows, on stories260K converted to HF
// safetensors + config.json by the test itself, decoded on the GPU against
// the CPU reference; the llama3 frequency formula checked by hand; configs
// this module does not implement refused by name.
import assert from "node:assert/strict";
import { gpuTest, testGpu } from "./_gpu.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";
import { type AttentionBackend, createDenseAttentionBackend } from "../lib/model/backends/dense.ts";
import { createEngineBackend } from "../lib/model/backends/engine.ts";
import { createGpuModel } from "../lib/model/gpu_model.ts";
import { hfConfigFromModel, modelConfigFromHf, writeHfCheckpoint } from "../lib/model/hf_config.ts";
import { createSeqUniform, planCausalAttention, recordPlans } from "../lib/model/kernels.ts";
import { causalAttentionReference } from "../lib/model/kernels_reference.ts";
import { loadModel } from "../lib/model/load.ts";
import { createReferenceModel, rope } from "../lib/model/reference.ts";
import { scaledRopeInvFreq } from "../lib/model/rope_scaling.ts";
import { argmax } from "../lib/model/sampling.ts";
import { attentionWindow } from "../lib/model/sliding_window.ts";
import type { ModelWeights, Tensor } from "../lib/model/types.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import { maxAbsDiff } from "./_assert.ts";

const MODEL = new URL("../models/stories260K/stories260K.bin", import.meta.url).pathname;
const base = await loadModel(MODEL, { tokenizer: false });

/** Greedy story of the unscaled model from BOS: the token stream every case replays. */
const STORY = (() => {
  const ref = createReferenceModel(base.weights);
  const tokens = [base.config.bosId];
  for (let pos = 0; pos < 140; pos++) tokens.push(argmax(ref.forward(tokens[pos], pos)));
  return tokens;
})();

/**
 * Writes `weights` as an HF checkpoint, lets `edit` change its config.json,
 * and loads it back the way a user would.
 */
async function checkpoint(
  weights: ModelWeights,
  edit: (json: Record<string, unknown>) => void,
): Promise<ModelWeights> {
  const dir = await Deno.makeTempDir({ prefix: "freekv_checkpoints_" });
  try {
    await writeHfCheckpoint(dir, weights);
    const json = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    edit(json);
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(json));
    return (await loadModel(dir, { tokenizer: false })).weights;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Reference logits of `tokens[0..n)` under teacher forcing (the logits after each). */
function referenceLogits(weights: ModelWeights, n: number): Float32Array[] {
  const ref = createReferenceModel(weights);
  return STORY.slice(0, n).map((t, pos) => ref.forward(t, pos));
}

/**
 * Prefills `prompt` story tokens on the GPU (in 64-token blocks), then
 * decodes the rest of `length` under teacher forcing; every logit row must
 * match the CPU reference within `tol` (the tolerance of the stories260K
 * GPU test) and pick the same token.
 */
async function gpuMatchesReference(
  device: GPUDevice,
  weights: ModelWeights,
  prompt: number,
  length: number,
  attention?: AttentionBackend,
): Promise<number> {
  const expected = referenceLogits(weights, length);
  using model = createGpuModel(device, weights, {
    maxSeqLen: 192,
    prefillChunk: 64,
    ...(attention ? { attention } : {}),
  });
  let worst = 0;
  const check = (got: Float32Array, pos: number) => {
    worst = Math.max(worst, maxAbsDiff(got, expected[pos]));
    assert.equal(argmax(got), argmax(expected[pos]), `position ${pos}: different tokens`);
  };
  check(await model.prefill(STORY.slice(0, prompt)), prompt - 1);
  for (let pos = prompt; pos < length; pos++) check(await model.decode(STORY[pos], pos), pos);
  assert.ok(worst < 1e-3, `max abs logit diff ${worst}`);
  return worst;
}

/** How far a feature moves the reference logits from the plain model's (it must bite). */
function effect(weights: ModelWeights, length: number): number {
  const plain = referenceLogits(base.weights, length);
  const got = referenceLogits(weights, length);
  return Math.max(...got.map((row, i) => maxAbsDiff(row, plain[i])));
}

const LLAMA3 = {
  rope_type: "llama3",
  factor: 8,
  low_freq_factor: 1,
  high_freq_factor: 8,
  original_max_position_embeddings: 256,
};

Deno.test("llama3 inv_freq by hand: kept, divided and smoothly interpolated frequencies", () => {
  // head_dim 8, theta 10000: f = 1, 0.1, 0.01, 0.001, wavelengths 2*pi/f =
  // 6.28, 62.8, 628, 6283. With L = 256, low 1, high 8: wavelengths above
  // 256/1 are divided by 8, below 256/8 = 32 kept, 62.8 lies in between.
  const f = scaledRopeInvFreq(8, 10000, {
    type: "llama3",
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 8,
    originalMaxPositionEmbeddings: 256,
  });
  assert.equal(f[0], 1); // 6.28 < 32: kept
  assert.equal(f[2], Math.fround(0.01 / 8)); // 628 > 256: divided
  assert.equal(f[3], Math.fround(0.001 / 8)); // 6283 > 256: divided
  // s = (256 / (20 pi) - 1) / (8 - 1); (1 - s) * 0.1 / 8 + s * 0.1
  //   = 0.0125 + 0.0875 * s = 0.0125 * 12.8 / pi = 0.16 / pi = 0.0509295818
  assert.equal(f[1], Math.fround(0.16 / Math.PI));
  // Llama 3.1's own numbers (theta 500000, head_dim 128, factor 8, low 1,
  // high 4, L 8192): thresholds 8192 and 2048 tokens of wavelength.
  const l31 = scaledRopeInvFreq(128, 500000, {
    type: "llama3",
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  });
  const plain = scaledRopeInvFreq(128, 500000);
  const wavelength = (i: number) => 2 * Math.PI / plain[i];
  let kept = 0, divided = 0, smoothed = 0;
  for (let i = 0; i < 64; i++) {
    if (wavelength(i) < 2048) kept++, assert.equal(l31[i], plain[i]);
    else if (wavelength(i) > 8192) {
      divided++, assert.ok(Math.abs(l31[i] - plain[i] / 8) <= 1e-7 * plain[i], `pair ${i}`);
    } else {
      smoothed++;
      const s = (8192 / wavelength(i) - 1) / 3;
      assert.ok(Math.abs(l31[i] - ((1 - s) * plain[i] / 8 + s * plain[i])) <= 1e-7 * plain[i]);
      assert.ok(l31[i] < plain[i] && l31[i] > plain[i] / 8);
    }
  }
  assert.ok(kept > 0 && divided > 0 && smoothed > 0, `${kept} ${divided} ${smoothed}`);
  // linear: every frequency / factor, so position 2t turns like position t unscaled.
  const linear = scaledRopeInvFreq(8, 10000, { type: "linear", factor: 2 });
  const x = Float32Array.from(randomNormalArray(createRandom(3), 16));
  const a = rope(x.slice(), 14, { headDim: 8, style: "half", invFreq: linear });
  const b = rope(x.slice(), 7, { headDim: 8, style: "half" });
  assert.ok(maxAbsDiff(a, b) < 1e-5);
  // dynamic changes nothing within the original context.
  assert.deepEqual(
    scaledRopeInvFreq(8, 10000, { type: "dynamic", factor: 4, originalMaxPositionEmbeddings: 64 }),
    scaledRopeInvFreq(8, 10000),
  );
});

Deno.test("HF config: rope_scaling and sliding windows read, unknown ones refused by name", () => {
  const good = hfConfigFromModel({ ...base.config, ropeStyle: "half" });
  const read = (over: Record<string, unknown>, ignoreRopeScaling = false) =>
    modelConfigFromHf({ ...good, ...over }, { name: "m/config.json", ignoreRopeScaling });
  assert.deepEqual(read({ rope_scaling: LLAMA3 }).ropeScaling, {
    type: "llama3",
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 8,
    originalMaxPositionEmbeddings: 256,
  });
  // legacy `type`, transformers 5 `rope_parameters` (with its rope_theta)
  assert.deepEqual(read({ rope_scaling: { type: "linear", factor: 4 } }).ropeScaling, {
    type: "linear",
    factor: 4,
  });
  const v5 = read({ rope_parameters: { ...LLAMA3, rope_theta: 500000 } });
  assert.equal(v5.ropeTheta, 500000);
  assert.equal(v5.ropeScaling?.type, "llama3");
  assert.deepEqual(read({ rope_scaling: { type: "dynamic", factor: 2 } }).ropeScaling, {
    type: "dynamic",
    factor: 2,
    originalMaxPositionEmbeddings: 512,
  });
  assert.equal(read({ rope_scaling: { rope_type: "default" } }).ropeScaling, undefined);
  assert.equal(read({ rope_scaling: null }).ropeScaling, undefined);
  assert.equal(read({ rope_scaling: LLAMA3 }, true).ropeScaling, undefined);
  const refused: Array<[Record<string, unknown>, RegExp]> = [
    [
      { rope_scaling: { rope_type: "yarn", factor: 4 } },
      /^Cannot load model config "m\/config\.json" as 'rope_scaling\.rope_type' must be one of default, linear, dynamic, llama3: received "yarn"/,
    ],
    [
      { rope_scaling: { type: "longrope", short_factor: [1] } },
      /'rope_scaling\.type' must be one of .*: received "longrope"/,
    ],
    [
      { rope_scaling: { ...LLAMA3, attention_factor: 1.5 } },
      /'rope_scaling\.attention_factor' is not supported with rope type "llama3": received 1\.5/,
    ],
    [
      { rope_scaling: { rope_type: "linear", factor: 2, beta_fast: 32 } },
      /'rope_scaling\.beta_fast' is not supported with rope type "linear"/,
    ],
    [
      { rope_scaling: { ...LLAMA3, low_freq_factor: undefined } },
      /'rope_scaling\.low_freq_factor' is missing \(rope type "llama3"\)/,
    ],
    [
      { rope_scaling: { ...LLAMA3, high_freq_factor: 0.5 } },
      /'rope_scaling\.high_freq_factor' must be greater than 'low_freq_factor' \(1\): received 0\.5/,
    ],
    [
      { rope_scaling: { rope_type: "linear", factor: -1 } },
      /'rope_scaling\.factor' must be a positive number: received -1/,
    ],
    [
      { rope_scaling: { rope_type: "linear", type: "dynamic", factor: 2 } },
      /'rope_scaling\.type' must equal 'rope_scaling\.rope_type' \("linear"\): received "dynamic"/,
    ],
    [
      { rope_parameters: { rope_type: "yarn", rope_theta: 1e6 } },
      /'rope_parameters\.rope_type' must be one of .*: received "yarn"/,
    ],
    [{ partial_rotary_factor: 0.5 }, /'partial_rotary_factor' must be 1 .*: received 0\.5/],
    [{ final_logit_softcapping: 30 }, /'final_logit_softcapping' is not supported: received 30/],
  ];
  for (const [over, message] of refused) {
    assert.throws(() => read(over), (e) => e instanceof Error && message.test(e.message));
  }
  // Sliding windows: Mistral on every layer; Qwen2 only with use_sliding_window,
  // on layers >= max_window_layers or as `layer_types` says; Llama ignores it.
  const mistral = { architectures: ["MistralForCausalLM"], model_type: "mistral" };
  const c = read({ ...mistral, sliding_window: 24 });
  assert.deepEqual([c.slidingWindow, c.slidingWindowLayers], [24, undefined]);
  assert.equal(read({ ...mistral, sliding_window: null }).slidingWindow, undefined);
  assert.equal(read({ sliding_window: 24 }).slidingWindow, undefined);
  const qwen = { architectures: ["Qwen2ForCausalLM"], model_type: "qwen2" };
  assert.equal(read({ ...qwen, sliding_window: 24 }).slidingWindow, undefined);
  const q = read({ ...qwen, sliding_window: 24, use_sliding_window: true, max_window_layers: 3 });
  assert.deepEqual([q.slidingWindow, q.slidingWindowLayers], [24, [3, 4]]);
  assert.deepEqual([0, 1, 2, 3, 4].map((l) => attentionWindow(q, l)), [0, 0, 0, 24, 24]);
  const all = read({ ...qwen, sliding_window: 24, use_sliding_window: true, max_window_layers: 0 });
  assert.deepEqual([all.slidingWindow, all.slidingWindowLayers], [24, undefined]);
  const none = read({ ...qwen, sliding_window: 24, use_sliding_window: true });
  assert.equal(none.slidingWindow, undefined); // max_window_layers defaults to 28 > 5 layers
  const types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"];
  const t = read({
    ...qwen,
    sliding_window: 24,
    use_sliding_window: true,
    layer_types: [...types, "full_attention"],
  });
  assert.deepEqual(t.slidingWindowLayers, [0, 2]);
  assert.throws(
    () =>
      read({
        ...qwen,
        sliding_window: 24,
        use_sliding_window: true,
        layer_types: [...types, "chunked_attention"],
      }),
    /'layer_types\[4\]' must be one of sliding_attention, full_attention: received "chunked_attention"/,
  );
  assert.throws(
    () => read({ ...mistral, sliding_window: 0 }),
    /field 'sliding_window' must be an integer of at least 1: received 0/,
  );
  // and they write back
  for (const config of [c, q, t, read({ rope_scaling: LLAMA3 })]) {
    assert.deepEqual(modelConfigFromHf(hfConfigFromModel(config)), config);
  }
});

gpuTest(
  "stories260K with llama3 and linear rope_scaling: GPU decode matches the CPU reference",
  async ({ device }) => {
    const llama3 = await checkpoint(base.weights, (j) => j.rope_scaling = LLAMA3);
    assert.equal(llama3.config.ropeScaling?.type, "llama3");
    assert.ok(effect(llama3, 40) > 0.1, "llama3 scaling must change the logits");
    await gpuMatchesReference(device, llama3, 100, 130);
    const linear = await checkpoint(base.weights, (j) => {
      j.rope_scaling = { type: "linear", factor: 2 };
    });
    assert.ok(effect(linear, 40) > 0.1, "linear scaling must change the logits");
    await gpuMatchesReference(device, linear, 20, 50);
  },
);

gpuTest(
  "Mistral and Qwen2 sliding windows: prefill in blocks and decode (dense and engine backends) match the CPU reference",
  async ({ device }) => {
    // Mistral: a 24-token window on every layer, prompt (100) and story far past it.
    const mistral = await checkpoint(base.weights, (j) => {
      j.architectures = ["MistralForCausalLM"];
      j.model_type = "mistral";
      j.sliding_window = 24;
    });
    assert.equal(mistral.config.slidingWindow, 24);
    assert.ok(effect(mistral, 60) > 0.1, "the window must change the logits");
    await gpuMatchesReference(device, mistral, 100, 130);
    // Qwen2 (zero q/k/v biases): a 16-token window on layers 3 and 4 only.
    const zeros = (n: number): Tensor => ({ dtype: "f32", shape: [n], data: new Float32Array(n) });
    const qDim = base.config.numQueryHeads * base.config.headDim;
    const kvDim = base.config.numKvHeads * base.config.headDim;
    const biased: ModelWeights = {
      ...base.weights,
      config: { ...base.config, qkvBias: true },
      layers: base.weights.layers.map((l) => ({
        ...l,
        bq: zeros(qDim),
        bk: zeros(kvDim),
        bv: zeros(kvDim),
      })),
    };
    const qwen = await checkpoint(biased, (j) => {
      assert.deepEqual(j.architectures, ["Qwen2ForCausalLM"]);
      Object.assign(j, { sliding_window: 16, use_sliding_window: true, max_window_layers: 3 });
    });
    assert.deepEqual(qwen.config.slidingWindowLayers, [3, 4]);
    assert.ok(effect(qwen, 40) > 0.01, "the window must change the logits");
    await gpuMatchesReference(device, qwen, 70, 90);
    // The retrieval engine applies the windows too: with `full` its logits
    // are the reference's, and the other policies decode inside the window.
    const engineOptions = {
      maxContext: 192,
      pageSize: 4,
      budget: 16,
      sink: 4,
      window: 4,
    };
    for (const weights of [mistral, qwen]) {
      using full = createEngineBackend(device, {
        ...weights.config,
        ...engineOptions,
        policy: "full",
      });
      await gpuMatchesReference(device, weights, 70, 100, full);
    }
    for (const policy of ["streaming", "quest", "freekv"] as const) {
      using backend = createEngineBackend(device, {
        ...mistral.config,
        ...engineOptions,
        policy,
      });
      using model = createGpuModel(device, mistral, { maxSeqLen: 192, attention: backend });
      await model.prefill(STORY.slice(0, 70));
      for (let pos = 70; pos < 90; pos++) {
        const logits = await model.decode(STORY[pos], pos);
        assert.ok(logits.every(Number.isFinite), `${policy} position ${pos}`);
      }
      // Attended pages lie in the window (24 tokens: pages 16.. of 90 tokens
      // at page 4; the sink page 0 has left it).
      const pages = await backend.engine.attendedPages(1);
      for (const p of pages.flat()) {
        assert.ok(p >= Math.floor((90 - 24) / 4), `${policy} page ${p}`);
      }
    }
  },
);

gpuTest(
  "causal attention kernel with a sliding window matches its reference",
  async ({ device }) => {
    const rng = createRandom(17);
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
    for (
      const [rows, start, hq, hkv, d, window] of [
        [70, 0, 4, 2, 8, 16],
        [1, 200, 7, 1, 8, 65],
        [9, 3, 2, 2, 16, 1],
        [5, 0, 2, 1, 8, 100],
      ]
    ) {
      const n = start + rows;
      const q = randomNormalArray(rng, rows * hq * d);
      const k = randomNormalArray(rng, n * hkv * d);
      const v = randomNormalArray(rng, n * hkv * d);
      const bufs = [q, k, v].map((a) => createBuffer(device, "attention input", S, a));
      const out = createBuffer(device, "attention output", S, q.byteLength);
      const seq = createSeqUniform(device, "seq", start);
      using plan = planCausalAttention(device, {
        q: bufs[0],
        k: bufs[1],
        v: bufs[2],
        output: out,
        rows,
        numQueryHeads: hq,
        numKvHeads: hkv,
        headDim: d,
        seq,
        window,
      });
      const read = createBuffer(
        device,
        "attention readback",
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        q.byteLength,
      );
      const enc = device.createCommandEncoder({ label: "windowed attention" });
      recordPlans(enc, [plan], "windowed attention");
      enc.copyBufferToBuffer(out, 0, read, 0, q.byteLength);
      device.queue.submit([enc.finish()]);
      await read.mapAsync(GPUMapMode.READ);
      const got = new Float32Array(read.getMappedRange().slice(0));
      const want = causalAttentionReference(q, k, v, {
        numQueryHeads: hq,
        numKvHeads: hkv,
        headDim: d,
        start,
        window,
      });
      assert.ok(maxAbsDiff(got, want) < 2e-5, `${rows}@${start} window ${window}`);
      for (const b of [...bufs, out, seq, read]) b.destroy();
    }
  },
);

gpuTest(
  "windows and dynamic scaling the decoder cannot honour are refused by name",
  async ({ device }) => {
    const windowed = { ...base.weights, config: { ...base.config, slidingWindow: 24 } };
    // The retrieval engine applies windows: a model longer than its window is accepted.
    {
      using engine = createEngineBackend(device, {
        ...windowed.config,
        maxContext: 64,
        policy: "freekv",
        pageSize: 4,
        budget: 16,
        sink: 4,
        window: 4,
      });
      using model = createGpuModel(device, windowed, { attention: engine, maxSeqLen: 64 });
      assert.equal(model.maxSeqLen, 64);
      assert.deepEqual(engine.engine.options.slidingWindow, new Array(5).fill(24));
    }
    // A backend that does not say it applies the window: refused.
    const plain = createDenseAttentionBackend(device, base.config, { maxSeqLen: 64 });
    try {
      assert.throws(
        () => createGpuModel(device, windowed, { attention: plain, maxSeqLen: 64 }),
        (e) =>
          e instanceof RangeError &&
          /'sliding_window' \(24 tokens\) is shorter than 'maxSeqLen' \(64\)/.test(e.message),
      );
    } finally {
      plain[Symbol.dispose]();
    }
    // dynamic NTK scaling past the original context: refused on both paths.
    const dynamic = {
      ...base.weights,
      config: {
        ...base.config,
        ropeScaling: { type: "dynamic" as const, factor: 2, originalMaxPositionEmbeddings: 128 },
      },
    };
    const dynamicMessage = (e: unknown) =>
      e instanceof RangeError &&
      /'rope_scaling' of type "dynamic" .* at most original_max_position_embeddings \(128\): received 256/
        .test(e.message);
    assert.throws(() => createGpuModel(device, dynamic, { maxSeqLen: 256 }), dynamicMessage);
    assert.throws(() => createReferenceModel(dynamic, { maxSeqLen: 256 }), dynamicMessage);
    // and within it runs as plain RoPE
    using model = createGpuModel(device, dynamic, { maxSeqLen: 128 });
    const ref = createReferenceModel(base.weights);
    const got = await model.prefill(STORY.slice(0, 10));
    let want: Float32Array = new Float32Array();
    for (let pos = 0; pos < 10; pos++) want = ref.forward(STORY[pos], pos);
    assert.ok(maxAbsDiff(got, want) < 1e-3);
  },
);

Deno.test({
  name: "generate.ts: --ignore-rope-scaling runs a yarn config, without it the type is named",
  ignore: testGpu === null,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "freekv_checkpoints_" });
    try {
      await writeHfCheckpoint(dir, base.weights);
      const json = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
      json.rope_scaling = { rope_type: "yarn", factor: 4, original_max_position_embeddings: 128 };
      await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(json));
      const generate = async (...args: string[]) => {
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", "scripts/generate.ts", ...args],
          cwd: new URL("..", import.meta.url).pathname,
          stdout: "piped",
          stderr: "piped",
        }).output();
        const text = (b: Uint8Array) => new TextDecoder().decode(b);
        return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
      };
      const common = [
        "--model",
        dir,
        "--tokenizer",
        "models/stories260K/tok512.bin",
        "--max-tokens",
        "12",
        "--policy",
        "dense",
      ];
      const refused = await generate(...common);
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(
        refused.stderr,
        /'rope_scaling\.rope_type' must be one of default, linear, dynamic, llama3: received "yarn" \(.*--ignore-rope-scaling/,
      );
      const plain = await generate(...common, "--ignore-rope-scaling");
      assert.equal(plain.code, 0, plain.stderr);
      assert.match(plain.stdout, /^Once upon a time, there was a little girl/);
      assert.match((await generate("--help")).stdout, /--ignore-rope-scaling load a config's/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
