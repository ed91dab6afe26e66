// Boundaries that planted one-line bugs showed untested: the correction rule
// is strictly `group mean < tau`, so a group mean exactly equal to tau is
// not corrected, on the GPU kernel and through the engine.
import assert from "node:assert/strict";
import { gpuTest } from "./_gpu.ts";
import { querySimilarity } from "../lib/kernels/similarity.ts";
import { createRetrievalEngine } from "../lib/engine/engine.ts";

// Cosines exactly representable: 1 and 0, so group means are exact.
const qNow = new Float32Array([1, 0, 0, 1]);
const qPrev = new Float32Array([2, 0, 1, 0]);
const shape = { numQueryHeads: 2, numKvHeads: 1, headDim: 2 };

for (
  const [tau, flag] of [
    [0.5, 0], // mean == tau: not corrected
    [Math.fround(0.5 + 2 ** -20), 1], // just above the mean: corrected
    [0.4999, 0],
    [1, 1],
    [-1, 0],
  ] as const
) {
  gpuTest(`similarity: group mean 0.5 at tau ${tau} gives flag ${flag}`, async (gpu) => {
    const r = await querySimilarity(gpu.device, { qNow, qPrev, tau }, shape);
    assert.deepEqual([...r.cosine], [1, 0]);
    assert.deepEqual([...r.groupMean], [0.5]);
    assert.deepEqual([...r.flags], [flag]);
  });
}

gpuTest(
  "similarity: identical queries at tau 1 are not corrected (mean 1 is not below 1)",
  async (gpu) => {
    const q = new Float32Array([0, 1, 0, 1]);
    const r = await querySimilarity(gpu.device, { qNow: q, qPrev: q, tau: 1 }, shape);
    assert.deepEqual([...r.groupMean], [1]);
    assert.deepEqual([...r.flags], [0]);
  },
);

gpuTest("engine: a head whose group-mean cosine equals tau is not corrected", async (gpu) => {
  // Head 0: cosine 1; head 1: cosine 0; the group mean is 0.5 == tau.
  const prev = new Float32Array([2, 0, 0, 0, 1, 0, 0, 0]);
  const now = new Float32Array([1, 0, 0, 0, 0, 1, 0, 0]);
  for (const correction of ["resident", "sync"] as const) {
    using e = createRetrievalEngine(gpu.device, {
      numLayers: 1,
      numQueryHeads: 2,
      numKvHeads: 1,
      headDim: 4,
      maxContext: 64,
      pageSize: 2,
      budget: 8,
      sink: 2,
      window: 2,
      tau: 0.5,
      correction,
      policy: "freekv",
    });
    const kv = Float32Array.from({ length: 30 * 4 }, (_, i) => Math.sin(i));
    await e.prefill(0, 0, { k: kv, v: kv });
    const k = new Float32Array([0.5, 0.25, 0, 1]);
    await e.step(0, { q: prev, k, v: k });
    await e.step(0, { q: now, k, v: k });
    await e.step(0, { q: now, k, v: k }); // cosines 1, 1 this time: not corrected either
    await e.drain();
    assert.equal(e.totals().correctionsPerHead[0], 0, correction);
    assert.ok(e.totals().checksPerHead[0] >= 2, correction);
  }
});
