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
