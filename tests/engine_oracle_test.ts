// End-to-end oracle of the engine at budgets below the context: every step
// of every layer, the pages each head attends follow the policy's rule
// (computed on the CPU from summaries of every full page), and the output
// equals the CPU reference attention over exactly those pages. Also the host
// waits per step of every policy and misuse of the recording API.
import assert from "node:assert/strict";
import { gpuTest } from "./_gpu.ts";
import {
  createRetrievalEngine,
  type EngineOptions,
  type PolicyName,
} from "../lib/engine/engine.ts";
import { createSyntheticSource, takePrompt } from "../lib/workloads/synthetic.ts";
import { pageRegions } from "../lib/memory/page_plan.ts";
import { assertClose } from "./_assert.ts";
import { attentionOverPages, oracleTopK } from "./_oracle.ts";

const SHAPE = { numLayers: 2, numQueryHeads: 4, numKvHeads: 2, headDim: 8 };
// 1 sink page, 2 window pages, 3 selected pages of 4 tokens.
const SMALL = { pageSize: 4, sink: 4, window: 8, budget: 24, maxContext: 160 };
const BUDGET = { pageSize: 4, sinkPages: 1, windowPages: 2, selectPages: 3 };
const PROMPT = 10;
const STEPS = 36; // candidates grow from 0 past K = 3

type Config = Partial<EngineOptions> & { policy: PolicyName; slidingWindow?: number };

/**
 * Pages a policy attends besides its selection: its sink pages inside the
 * sliding window and its window (streaming spends the budget on them), or
 * every page in the sliding window (full).
 */
function sinkAndWindow(tokens: number, policy: PolicyName, slidingWindow: number): number[] {
  const P = BUDGET.pageSize;
  const budget = policy === "streaming"
    ? { ...BUDGET, windowPages: SMALL.budget / P - BUDGET.sinkPages, selectPages: 0 }
    : BUDGET;
  const r = pageRegions(tokens, budget, slidingWindow);
  const pages: number[] = [];
  if (policy === "full") {
    for (let p = Math.floor(r.firstToken / P); p < r.numPages; p++) pages.push(p);
    return pages;
  }
  for (let p = r.sinkFrom; p < r.sinkCount; p++) pages.push(p);
  for (let p = r.windowStart; p < r.numPages; p++) pages.push(p);
  return pages;
}

/** How long a run is: the prompt, the decode steps after it, the engine's maxContext. */
interface RunLength {
  prompt: number;
  steps: number;
  maxContext: number;
}
const SHORT: RunLength = { prompt: PROMPT, steps: STEPS, maxContext: SMALL.maxContext };

async function checkPolicy(
  device: GPUDevice,
  config: Config,
  run: RunLength = SHORT,
): Promise<{ minCandidates: number; maxCandidates: number }> {
  const { numLayers: L, numKvHeads: hkv, headDim: d } = SHAPE;
  const row = hkv * d;
  using engine = createRetrievalEngine(device, {
    ...SHAPE,
    ...SMALL,
    maxContext: run.maxContext,
    ...config,
  });
  const W = config.slidingWindow ?? 0;
  const src = createSyntheticSource({ ...SHAPE, seed: 21, shiftProbability: 0.3 });
  const prompt = takePrompt(src, run.prompt, { queries: false });
  const cap = run.maxContext * row;
  const keys = Array.from({ length: L }, () => new Float32Array(cap));
  const values = Array.from({ length: L }, () => new Float32Array(cap));
  for (let l = 0; l < L; l++) {
    keys[l].set(prompt[l].k);
    values[l].set(prompt[l].v);
    await engine.prefill(0, l, { k: prompt[l].k, v: prompt[l].v });
  }
  const previousQ: (Float32Array | null)[] = new Array(L).fill(null);
  const lag = config.answerLag ?? 1;
  // Per layer, per step: the speculation the rule expects (tau -1).
  const speculations: (number[][] | null)[][] = Array.from({ length: L }, () => []);
  let crossed = false, holes = 0;
  let minCandidates = Infinity, maxCandidates = 0;
  for (let s = 0; s < run.steps; s++) {
    const token = src.next();
    const tokens = run.prompt + s + 1;
    for (let l = 0; l < L; l++) {
      keys[l].set(token[l].k, (tokens - 1) * row);
      values[l].set(token[l].v, (tokens - 1) * row);
      const out = (await engine.step(l, token[l]))!;
      const attended = await engine.attendedPages(l);
      const where = `${config.policy} ${config.correction ?? ""} step ${s} layer ${l}`;
      // The output is attention over exactly the pages reported.
      const cache = { keys: keys[l], values: values[l], tokens };
      const want = attentionOverPages(SHAPE, BUDGET, cache, token[l].q, attended, W);
      assertClose(out, want, 1e-4, where);
      const r = pageRegions(tokens, BUDGET, W);
      minCandidates = Math.min(minCandidates, r.candidateCount);
      maxCandidates = Math.max(maxCandidates, r.candidateCount);
      const base = sinkAndWindow(tokens, config.policy, W);
      if (config.policy === "full" || config.policy === "streaming") {
        for (let h = 0; h < hkv; h++) assert.deepEqual(attended[h], base, `${where} head ${h}`);
        crossed ||= r.candidateCount > BUDGET.selectPages;
        continue;
      }
      const fresh = r.candidateCount >= BUDGET.selectPages
        ? oracleTopK(SHAPE, BUDGET, keys[l], tokens, token[l].q, W)
        : null;
      for (let h = 0; h < hkv; h++) {
        const got = attended[h];
        for (const p of base) {
          assert.ok(got.includes(p), `${where} head ${h}: sink/window page ${p}`);
        }
        const selected = got.filter((p) => !base.includes(p));
        let expected: number[] | null = null;
        if (r.candidateCount <= BUDGET.selectPages) {
          expected = Array.from({ length: r.candidateCount }, (_, i) => r.candidateStart + i);
        } else if (config.policy !== "freekv" || config.tau === 1) {
          expected = fresh![h];
        } else if (config.tau === -1 && previousQ[l] === null) {
          // The first step after the prefill has no speculation: it selects
          // with its own query (and waits for it).
          expected = fresh![h];
        } else if (config.tau === -1) {
          // The speculation: the previous step's query over this step's
          // candidates (recalled one step behind).
          const spec = oracleTopK(SHAPE, BUDGET, keys[l], tokens, previousQ[l]!, W);
          speculations[l][s] = spec;
          if (lag === 1) expected = spec[h];
          else {
            // answerLag steps behind, the pages of the speculation taken
            // when this step began are resident; the others may be holes.
            const taken = speculations[l][s - lag + 1]?.[h] ?? [];
            for (const p of selected) {
              assert.ok(spec[h].includes(p), `${where} head ${h}: ${p} not in ${spec[h]}`);
            }
            for (const p of spec[h].filter((p) => taken.includes(p))) {
              assert.ok(selected.includes(p), `${where} head ${h}: recalled page ${p} missing`);
            }
            if (selected.length < spec[h].length) holes++;
          }
        } else {
          // Resident correction: the speculation, or for a corrected head its
          // best pages among those on the GPU: always candidates, at most K.
          assert.ok(selected.length <= BUDGET.selectPages, `${where} head ${h}: ${selected}`);
          for (const p of selected) {
            assert.ok(p >= r.candidateStart && p < r.windowStart, `${where} head ${h}: page ${p}`);
          }
        }
        if (expected) {
          assert.deepEqual(selected, [...expected].sort((a, b) => a - b), `${where} head ${h}`);
        }
      }
      if (r.candidateCount > BUDGET.selectPages) crossed = true;
      previousQ[l] = token[l].q;
    }
  }
  assert.ok(crossed, "the decode must cross the point where candidates stop fitting");
  // The lag is real: some speculative pages were not yet recalled when attended.
  if (lag > 1 && config.tau === -1) assert.ok(holes > 0, "no step attended before its recall");
  await engine.drain();
  return { minCandidates, maxCandidates };
}

const CONFIGS: Config[] = [
  { policy: "quest" },
  { policy: "sync-offload" },
  { policy: "sync-offload", hostLayout: "nhd" },
  { policy: "freekv", correction: "sync", tau: 1 },
  { policy: "freekv", correction: "resident", tau: -1 },
  { policy: "freekv", correction: "resident", tau: -1, cachePages: 0 },
  { policy: "freekv", correction: "resident", tau: 0.9 },
  { policy: "freekv", correction: "sync", tau: 0.9, cachePages: 0 },
  // Head-major GPU slots: every kernel that indexes slots, offload and recall as copies.
  { policy: "quest", slotLayout: "hnd" },
  { policy: "sync-offload", slotLayout: "hnd" },
  { policy: "sync-offload", hostLayout: "nhd", slotLayout: "hnd" },
  { policy: "freekv", correction: "sync", tau: 0.9, cachePages: 0, slotLayout: "hnd" },
  { policy: "freekv", correction: "resident", tau: 0.9, slotLayout: "hnd" },
  { policy: "freekv", correction: "resident", tau: -1, slotLayout: "hnd" },
  // A 22-token sliding window (mid-page): the sink leaves it, candidates
  // start at its first page, attention masks the tokens before it.
  { policy: "full", slidingWindow: 22 },
  { policy: "streaming", slidingWindow: 22 },
  { policy: "quest", slidingWindow: 22 },
  { policy: "sync-offload", slidingWindow: 22 },
  { policy: "freekv", correction: "sync", tau: 1, slidingWindow: 22 },
  { policy: "freekv", correction: "resident", tau: -1, slidingWindow: 22 },
  { policy: "freekv", correction: "resident", tau: 0.9, slidingWindow: 22 },
  // The host three steps behind: speculative pages are recalled later (a
  // cache of K pages, so that some are not resident yet when attended).
  { policy: "freekv", correction: "resident", tau: -1, answerLag: 3, cachePages: 3 },
  { policy: "freekv", correction: "resident", tau: 0.9, answerLag: 3 },
  { policy: "freekv", correction: "sync", tau: 0.9, answerLag: 3, slidingWindow: 22 },
  // Eight steps behind: two steps share one answer read-back (the last one
  // left open for the final drain to read when the steps are odd).
  { policy: "freekv", correction: "resident", tau: -1, answerLag: 8, cachePages: 3 },
  { policy: "freekv", correction: "resident", tau: 0.9, answerLag: 8, slotLayout: "hnd" },
];
for (const config of CONFIGS) {
  gpuTest(
    `oracle: ${JSON.stringify(config)} attends the rule's pages, output equals the reference`,
    async ({ device }) => {
      await checkPolicy(device, config);
    },
  );
}

// Candidates growing from 126 to 134 pages: selection changes from the
// one-dispatch kernel (up to `countingTopkMax` candidates, here 128) to the
// score and radix top-k dispatches mid-decode.
const LONG: RunLength = { prompt: 516, steps: 32, maxContext: 640 };
for (
  const config of [
    { policy: "quest", countingTopkMax: 128 },
    { policy: "freekv", correction: "sync", tau: 1, countingTopkMax: 128 },
    { policy: "freekv", correction: "resident", tau: -1, countingTopkMax: 128 },
    { policy: "freekv", correction: "resident", tau: 0.9, countingTopkMax: 128 },
  ] satisfies Config[]
) {
  gpuTest(
    `oracle across the one-dispatch selection's limit: ${JSON.stringify(config)}`,
    async ({ device }) => {
      const { minCandidates, maxCandidates } = await checkPolicy(device, config, LONG);
      assert.ok(minCandidates <= 128 && maxCandidates > 128, `${minCandidates}-${maxCandidates}`);
    },
  );
}

/** An engine of `config` with a 60-token synthetic prompt prefilled, and the source of its next tokens. */
async function prefilledEngine(device: GPUDevice, config: Partial<EngineOptions>, seed: number) {
  const engine = createRetrievalEngine(device, { ...SHAPE, ...SMALL, ...config });
  const src = createSyntheticSource({ ...SHAPE, seed });
  const prompt = takePrompt(src, 60, { queries: false });
  for (let l = 0; l < SHAPE.numLayers; l++) {
    await engine.prefill(0, l, { k: prompt[l].k, v: prompt[l].v });
  }
  return { engine, src };
}

/** Records the next token's step, every layer into one encoder, as a decoder does; returns its host waits. */
async function recordStep(
  device: GPUDevice,
  engine: ReturnType<typeof createRetrievalEngine>,
  src: ReturnType<typeof createSyntheticSource>,
  waitFollows?: boolean,
): Promise<number> {
  const token = src.next();
  await engine.beginStep();
  let encoder = device.createCommandEncoder();
  for (let l = 0; l < SHAPE.numLayers; l++) {
    encoder = await engine.recordLayer(encoder, l, token[l]);
  }
  engine.endStep(encoder, { waitFollows });
  const stats = engine.lastStepStats()!;
  // beginStep's share of the step on the CPU.
  assert.ok(stats.beginMs >= 0 && stats.beginMs <= stats.totalMs, JSON.stringify(stats));
  return stats.hostWaits;
}

gpuTest(
  "host waits per step: none for full, streaming, quest and freekv resident; one per layer for sync-offload",
  async ({ device }) => {
    const expected: [Config, number][] = [
      [{ policy: "full" }, 0],
      [{ policy: "streaming" }, 0],
      [{ policy: "quest" }, 0],
      [{ policy: "freekv" }, 0], // the answer of step i arrives while step i+1 is recorded
      [{ policy: "sync-offload" }, SHAPE.numLayers],
    ];
    for (const [config, waits] of expected) {
      const { engine, src } = await prefilledEngine(device, config, 3);
      using _engine = engine;
      const perStep: number[] = [];
      for (let s = 0; s < 8; s++) {
        const stepWaits = await recordStep(device, engine, src);
        // Like a decoder waiting for its logits: the step's answer rides the same wait.
        await device.queue.onSubmittedWorkDone();
        perStep.push(stepWaits);
      }
      // The first step after prefill may select synchronously.
      assert.deepEqual(perStep.slice(2), new Array(6).fill(waits), config.policy);
      assert.equal(engine.lastStepStats()!.step, 7);
    }
  },
);

gpuTest(
  "answerLag 4 with a decoder that waits once per 4 steps: no host wait inside a group",
  async ({ device }) => {
    for (const lag of [1, 4]) {
      const { engine, src } = await prefilledEngine(
        device,
        { policy: "freekv", answerLag: lag },
        5,
      );
      using _engine = engine;
      const perStep: number[] = [];
      for (let s = 0; s < 16; s++) {
        // The group's last step tells the engine that the decoder waits next.
        perStep.push(await recordStep(device, engine, src, s % 4 === 3));
        if (s % 4 === 3) await device.queue.onSubmittedWorkDone();
      }
      const inGroups = perStep.slice(4).reduce((a, b) => a + b, 0);
      // Lag 1 waits for the previous step inside every group; lag 4 never.
      if (lag === 4) assert.equal(inGroups, 0, `lag 4: ${perStep}`);
      else assert.ok(inGroups >= 9, `lag 1: ${perStep}`);
      await engine.drain();
    }
  },
);

gpuTest("the recording API refuses misuse without changing state", async ({ device }) => {
  using engine = createRetrievalEngine(device, { ...SHAPE, ...SMALL, policy: "freekv" });
  const src = createSyntheticSource({ ...SHAPE, seed: 4 });
  const prompt = takePrompt(src, 20, { queries: false });
  for (let l = 0; l < SHAPE.numLayers; l++) {
    await engine.prefill(0, l, { k: prompt[l].k, v: prompt[l].v });
  }
  const token = src.next();
  const enc = device.createCommandEncoder();
  await assert.rejects(() => engine.recordLayer(enc, 0, token[0]), /must be begun first/);
  assert.throws(() => engine.endStep(enc), /every layer must be recorded first/);
  await engine.beginStep();
  await assert.rejects(() => engine.beginStep(), /previous step must be ended first/);
  await assert.rejects(() => engine.recordLayer(enc, 1, token[1]), /'layer' must be 0/);
  await assert.rejects(
    () => engine.recordLayer({} as GPUCommandEncoder, 0, token[0]),
    /'encoder' must be a GPUCommandEncoder/,
  );
  assert.equal(engine.length(0, 0), 20);
  let encoder = await engine.recordLayer(enc, 0, token[0]);
  assert.throws(() => engine.endStep(encoder), /after 1 of 2 layers/);
  await assert.rejects(() => engine.prefill(0, 0, prompt[0]), /no decode step may be open/);
  encoder = await engine.recordLayer(encoder, 1, token[1]);
  engine.endStep(encoder);
  assert.equal(engine.length(1, 0), 21);
  engine[Symbol.dispose]();
  await assert.rejects(() => engine.beginStep(), /the engine must not be disposed/);
  await assert.rejects(
    () => engine.recordLayer(enc, 0, token[0]),
    /the engine must not be disposed/,
  );
});

gpuTest(
  "answers read back in pairs (answerLag 8): drain reads the open pair, every answer is taken once",
  async ({ device }) => {
    const totals = [];
    for (const lag of [1, 8]) {
      const { engine, src } = await prefilledEngine(
        device,
        { policy: "freekv", answerLag: lag },
        5,
      );
      using _engine = engine;
      // Five steps: at lag 8 two pairs are read back and the fifth step's answer waits alone.
      for (let s = 0; s < 5; s++) await recordStep(device, engine, src);
      const before = engine.totals().checksPerHead.reduce((a, b) => a + b, 0);
      await engine.drain();
      const after = engine.totals().checksPerHead.reduce((a, b) => a + b, 0);
      // At lag 8 no answer was taken before the drain.
      if (lag === 8) assert.ok(before < after, `checks ${before} then ${after}`);
      totals.push(engine.totals());
    }
    const [one, eight] = totals;
    assert.ok(one.checksPerHead.some((n) => n > 0), "the steps were checked");
    assert.deepEqual(eight.checksPerHead, one.checksPerHead);
    assert.deepEqual(eight.correctionsPerHead, one.correctionsPerHead);
    assert.ok(eight.pagesRecalled > 0);
  },
);
