// Property tests: seeded random configurations (page size 1-64, GQA group
// 1-8, head_dim 8-128, budgets from minimal to covering, every retrieval
// policy and both correction modes) decoded by the engine and checked
// against the CPU oracles at every step: the pages each head attends follow
// the policy's rule (sink, window, and the top-k of CPU summaries of every
// full page) and the output is CPU attention over exactly those pages.
import assert from "node:assert/strict";
import { gpuTest } from "./_gpu.ts";
import { assertClose } from "./_assert.ts";
import { createRetrievalEngine, type EngineOptions } from "../lib/engine/engine.ts";
import { attentionOverPages, oracleTopK } from "./_oracle.ts";
import { type PageBudget, pageRegions } from "../lib/memory/page_plan.ts";
import { createRandom, type Random } from "../lib/workloads/random.ts";

const CASES = Number(Deno.env.get("FREEKV_PROPERTY_CASES") ?? 200);
const SEED = Number(Deno.env.get("FREEKV_PROPERTY_SEED") ?? 11);

interface Case {
  id: number;
  options: EngineOptions;
  budget: PageBudget;
  prompt: number;
  steps: number;
}

function pick<T>(rng: Random, xs: readonly T[]): T {
  return xs[Math.floor(rng.next() * xs.length)];
}
const int = (rng: Random, lo: number, hi: number) => lo + Math.floor(rng.next() * (hi - lo + 1));

// Shapes compile their own pipelines (slow on a software adapter): cases
// draw from a seeded pool of shapes that spans the ranges, extremes included.
interface Shape {
  pageSize: number;
  group: number;
  numKvHeads: number;
  headDim: number;
}
function shapePool(rng: Random): Shape[] {
  const pool: Shape[] = [
    { pageSize: 1, group: 1, numKvHeads: 1, headDim: 8 },
    { pageSize: 64, group: 8, numKvHeads: 1, headDim: 128 },
    { pageSize: 3, group: 7, numKvHeads: 2, headDim: 12 },
  ];
  while (pool.length < 8) {
    pool.push({
      pageSize: pick(rng, [1, 2, 3, 4, 5, 8, 16, 32, 64]),
      group: int(rng, 1, 8),
      numKvHeads: int(rng, 1, 2),
      headDim: pick(rng, [8, 12, 16, 20, 32, 48, 64, 96, 128]),
    });
  }
  return pool;
}

function randomCase(rng: Random, id: number, shapes: Shape[]): Case {
  const { pageSize, group, numKvHeads, headDim } = pick(rng, shapes);
  const sinkPages = int(rng, 0, 2), windowPages = int(rng, 1, 2);
  const policy = pick(rng, ["quest", "sync-offload", "freekv", "freekv"] as const);
  const prompt = int(rng, 1, Math.max(2, Math.min(12, Math.floor(640 / pageSize)))) * pageSize +
    int(rng, 0, pageSize - 1);
  const fullPages = Math.floor(prompt / pageSize);
  // Selected pages from 1 (minimal) to covering every candidate.
  const candidates = Math.max(1, fullPages + 1 - sinkPages - windowPages);
  const selectPages = rng.next() < 0.25 ? candidates + 1 : int(rng, 1, Math.max(1, candidates));
  const steps = 3;
  const options: EngineOptions = {
    numLayers: 1,
    numQueryHeads: group * numKvHeads,
    numKvHeads,
    headDim,
    pageSize,
    sink: sinkPages * pageSize,
    window: windowPages * pageSize,
    budget: (sinkPages + windowPages + selectPages) * pageSize,
    maxContext: prompt + steps,
    policy,
    tau: pick(rng, [-1, 0.5, 0.9, 1]),
    correction: pick(rng, ["resident", "sync"] as const),
    cachePages: int(rng, 0, selectPages),
    // Both GPU slot layouts, alternating (no draw: the other draws stay as they were).
    slotLayout: id % 2 === 1 ? "nhd" : "hnd",
  };
  return {
    id,
    options,
    budget: { pageSize, sinkPages, windowPages, selectPages },
    prompt,
    steps,
  };
}

async function checkCase(device: GPUDevice, c: Case, rng: Random): Promise<void> {
  const { numKvHeads: hkv, headDim: d, numQueryHeads: hq } = c.options;
  const row = hkv * d;
  const where0 = `case ${c.id} ${JSON.stringify(c.options)}`;
  using engine = createRetrievalEngine(device, c.options);
  const total = c.prompt + c.steps;
  // Whole pages (the reference reads page-sized slots); the tail stays 0.
  const cap = Math.ceil(total / c.budget.pageSize) * c.budget.pageSize * row;
  const keys = new Float32Array(cap), values = new Float32Array(cap);
  for (let i = 0; i < total * row; i++) keys[i] = rng.next() * 2 - 1;
  for (let i = 0; i < total * row; i++) values[i] = rng.next() * 2 - 1;
  await engine.prefill(0, 0, {
    k: keys.slice(0, c.prompt * row),
    v: values.slice(0, c.prompt * row),
  });
  // The speculation is the previous step's query's top-k over this step's candidates.
  let previousQ: Float32Array | null = null;
  let q = Float32Array.from({ length: hq * d }, () => rng.next() * 2 - 1);
  for (let s = 0; s < c.steps; s++) {
    const tokens = c.prompt + s + 1;
    // Queries drift, sometimes jump: corrections happen at every tau.
    if (rng.next() < 0.3) q = q.map(() => rng.next() * 2 - 1);
    else q = q.map((x) => x + 0.2 * (rng.next() - 0.5));
    const k = keys.subarray((tokens - 1) * row, tokens * row);
    const v = values.subarray((tokens - 1) * row, tokens * row);
    const out = (await engine.step(0, { q, k: k.slice(), v: v.slice() }))!;
    const attended = await engine.attendedPages(0);
    const where = `${where0} step ${s}`;
    assertClose(
      out,
      attentionOverPages(c.options, c.budget, { keys, values, tokens }, q, attended),
      2e-4,
      where,
    );
    const r = pageRegions(tokens, c.budget);
    const base: number[] = [];
    for (let p = 0; p < r.sinkCount; p++) base.push(p);
    for (let p = r.windowStart; p < r.numPages; p++) base.push(p);
    const K = c.budget.selectPages;
    const fresh = r.candidateCount >= K ? oracleTopK(c.options, c.budget, keys, tokens, q) : null;
    const previous = previousQ && r.candidateCount >= K
      ? oracleTopK(c.options, c.budget, keys, tokens, previousQ)
      : null;
    const freekv = c.options.policy === "freekv";
    for (let h = 0; h < hkv; h++) {
      const got = attended[h];
      for (const p of base) assert.ok(got.includes(p), `${where} head ${h}: sink/window ${p}`);
      const selected = got.filter((p) => !base.includes(p));
      if (r.candidateCount <= K) {
        // Covering: every candidate, which makes it full attention.
        assert.deepEqual(
          selected,
          Array.from({ length: r.candidateCount }, (_, i) => r.sinkCount + i),
          `${where} head ${h}`,
        );
      } else if (freekv && c.options.correction === "resident" && previous) {
        // A corrected head attends pages resident on the GPU (its fresh
        // selection first, kept pages after); the others their speculation.
        if (c.options.tau === -1) {
          assert.deepEqual(selected, [...previous[h]].sort((a, b) => a - b), `${where} head ${h}`);
        }
        assert.ok(selected.length <= K, `${where} head ${h}: at most K selected`);
      } else if (!freekv || c.options.tau === 1 || !previous) {
        assert.deepEqual(selected, [...fresh![h]].sort((a, b) => a - b), `${where} head ${h}`);
      } else if (c.options.tau === -1) {
        assert.deepEqual(selected, [...previous[h]].sort((a, b) => a - b), `${where} head ${h}`);
      } else {
        const allowed = new Set([...fresh![h], ...previous[h]]);
        for (const p of selected) assert.ok(allowed.has(p), `${where} head ${h}: page ${p}`);
        assert.ok(selected.length <= K, `${where} head ${h}: at most K selected`);
      }
    }
    previousQ = q;
  }
}

gpuTest(
  `property: ${CASES} random configurations against the CPU oracles (seed ${SEED})`,
  async (gpu) => {
    const rng = createRandom(SEED);
    const shapes = shapePool(rng);
    const seen = {
      policies: new Set<string>(),
      pageSizes: new Set<number>(),
      covering: 0,
      minimal: 0,
    };
    for (let i = 0; i < CASES; i++) {
      const c = randomCase(rng, i, shapes);
      seen.policies.add(`${c.options.policy}/${c.options.correction}`);
      seen.pageSizes.add(c.budget.pageSize);
      if (c.budget.selectPages === 1) seen.minimal++;
      const candidates = Math.floor(c.prompt / c.budget.pageSize) + 1 - c.budget.sinkPages -
        c.budget.windowPages;
      if (c.budget.selectPages >= candidates) seen.covering++;
      await checkCase(gpu.device, c, rng);
    }
    assert.ok(seen.policies.size >= 5, [...seen.policies].join(", "));
    assert.ok(seen.pageSizes.has(1) && seen.pageSizes.has(64));
    assert.ok(seen.minimal > 0 && seen.covering > 0, JSON.stringify(seen));
  },
);
