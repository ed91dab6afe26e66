// The retrieval engine inside the real decoder (stories260K).
import assert from "node:assert/strict";
import { gpuTest } from "./_gpu.ts";
import { createGpuModel } from "../lib/model/gpu_model.ts";
import { generateText } from "../lib/model/generate.ts";
import { loadLlama2c } from "../lib/model/llama2c.ts";
import { type AttentionBackend, createDenseAttentionBackend } from "../lib/model/backends/dense.ts";
import { createEngineBackend } from "../lib/model/backends/engine.ts";
import { POLICIES } from "../lib/engine/engine.ts";

const weights = await loadLlama2c(
  new URL("../models/stories260K/stories260K.bin", import.meta.url),
);
const config = weights.config;
const TOKENS = 100;

async function story(
  device: GPUDevice,
  attention: AttentionBackend,
) {
  using model = createGpuModel(device, weights, { attention, maxSeqLen: 128 });
  return (await generateText(model, [config.bosId], { maxTokens: TOKENS, stopTokens: [] })).tokens;
}

gpuTest(
  "budget covering the context: every policy generates the dense text",
  async ({ device }) => {
    using dense = createDenseAttentionBackend(device, config, { maxSeqLen: 128 });
    const expected = await story(device, dense);
    assert.equal(expected.length, TOKENS);
    for (const policy of POLICIES) {
      // 128 tokens of budget cover the 101-token story.
      using backend = createEngineBackend(device, {
        ...config,
        maxContext: 128,
        policy,
        pageSize: 8,
        budget: 128,
        sink: 16,
        window: 32,
      });
      assert.deepEqual(await story(device, backend), expected, policy);
    }
  },
);

gpuTest(
  "freekv under a small budget retrieves, corrects and stays close to full",
  async ({ device }) => {
    using dense = createDenseAttentionBackend(device, config, { maxSeqLen: 128 });
    const expected = await story(device, dense);
    using backend = createEngineBackend(device, {
      ...config,
      maxContext: 128,
      policy: "freekv",
      pageSize: 8,
      budget: 64,
      sink: 16,
      window: 16,
    });
    const got = await story(device, backend);
    const totals = backend.engine.totals();
    assert.ok(totals.pagesRecalled > 0, "pages must be recalled");
    assert.ok(
      totals.correctedShare > 0 && totals.correctedShare < 1,
      `corrected ${totals.correctedShare}`,
    );
    // Greedy texts agree for a while (the budget covers the first 64 tokens exactly).
    let prefix = 0;
    while (prefix < got.length && got[prefix] === expected[prefix]) prefix++;
    assert.ok(prefix >= 60 || prefix === got.length, `agreement ${prefix}`);
  },
);

// Every policy, and freekv's sync correction, at a budget the decodes outgrow.
const EVERY_POLICY = [
  ...POLICIES.map((policy) => ({ policy })),
  { policy: "freekv" as const, correction: "sync" as const },
];
const SMALL_BUDGET = { maxContext: 128, pageSize: 8, budget: 32, sink: 8, window: 8 };

gpuTest(
  "a whole token recorded into one encoder gives the per-layer path's logits, every policy and mode",
  async ({ device }) => {
    const variants = [...EVERY_POLICY, { policy: "freekv" as const, cachePages: 0 }];
    for (const variant of variants) {
      const make = () => createEngineBackend(device, { ...config, ...SMALL_BUDGET, ...variant });
      using recorded = make();
      using layered = make();
      // The same backend without its recording methods: one submit (and await) per layer.
      const { beginStep: _b, recordStep: _r, endStep: _e, ...perLayer } = layered;
      using a = createGpuModel(device, weights, { attention: recorded, maxSeqLen: 128 });
      using b = createGpuModel(device, weights, { attention: perLayer, maxSeqLen: 128 });
      let la = await a.prefill([config.bosId, 403, 407]);
      let lb = await b.prefill([config.bosId, 403, 407]);
      for (let pos = 3; pos < 56; pos++) {
        let diff = 0;
        for (let i = 0; i < la.length; i++) diff = Math.max(diff, Math.abs(la[i] - lb[i]));
        assert.ok(diff <= 1e-5, `${JSON.stringify(variant)} pos ${pos}: ${diff}`);
        let token = 0;
        for (let i = 1; i < la.length; i++) if (la[i] > la[token]) token = i;
        la = await a.decode(token, pos);
        lb = await b.decode(token, pos);
      }
      const steps = recorded.engine.totals().steps;
      assert.equal(steps, layered.engine.totals().steps);
    }
  },
);

gpuTest(
  "GPU-sampled groups through the engine: the per-token path's tokens at answerLag 1, no wait inside a group at answerLag 8",
  async ({ device }) => {
    for (const variant of EVERY_POLICY) {
      const run = async (tokensPerWait: number, answerLag: number) => {
        using attention = createEngineBackend(device, {
          ...config,
          ...SMALL_BUDGET,
          ...variant,
          answerLag,
        });
        using model = createGpuModel(device, weights, { attention, maxSeqLen: 128 });
        const r = await generateText(model, [config.bosId], {
          maxTokens: 60,
          stopTokens: [],
          tokensPerWait,
        });
        return { tokens: r.tokens, waits: attention.engine.totals().hostWaits };
      };
      const name = JSON.stringify(variant);
      const perToken = await run(1, 1);
      // At lag 1 the engine's steps are the same whichever way the decoder groups them.
      const grouped = await run(8, 1);
      assert.deepEqual(grouped.tokens, perToken.tokens, name);
      const lagged = await run(8, 8);
      assert.equal(lagged.tokens.length, 60, name);
      if (variant.policy === "freekv" && !("correction" in variant)) {
        // At most the first step after prefill waits (it selects synchronously).
        assert.ok(lagged.waits <= 1, `${name}: ${lagged.waits} host waits`);
        assert.ok(perToken.waits <= 1, `${name}: ${perToken.waits} host waits per token`);
        // At lag 1 a group's steps wait for each other's answers.
        assert.ok(grouped.waits > 10, `${name}: ${grouped.waits} host waits at lag 1`);
      }
    }
  },
);
