// The evaluation harness: metrics on hand-computed cases, configuration
// parsing, sweeps, tables and plots, and short end-to-end runs on stories260K.
import assert from "node:assert/strict";
import { gpuTest, testGpu } from "./_gpu.ts";
import {
  attentionMassRecall,
  buildSweep,
  configLabel,
  evaluateModel,
  evaluateOracle,
  formatTable,
  generateStories,
  groupMeanCosine,
  klDivergence,
  klFromLogProbs,
  logSoftmax,
  matchLength,
  mean,
  oraclePages,
  parseBudget,
  parsePolicyConfig,
  percentile,
  plotSweep,
  resolveConfig,
  shareIdentical,
  shareLabel,
} from "../lib/eval/mod.ts";
import { loadModel } from "../lib/model/load.ts";
import { createReferenceModel } from "../lib/model/reference.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MODEL = `${ROOT}models/stories260K/stories260K.bin`;

Deno.test("KL of identical distributions is 0", () => {
  assert.equal(klDivergence([0.3, -1, 2, 5], [0.3, -1, 2, 5]), 0);
  // Softmax is shift-invariant: the same distribution from other logits.
  assert.ok(klDivergence([0, 1, 2], [10, 11, 12]) < 1e-12);
});

Deno.test("KL of a hand-built 3-token pair", () => {
  // p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4):
  // KL = 1/2 ln 2 + 1/4 ln(1/2) + 1/4 ln 1 = ln(2) / 4.
  const p = [0.5, 0.25, 0.25], q = [0.25, 0.5, 0.25];
  const expected = Math.log(2) / 4;
  assert.ok(Math.abs(klFromLogProbs(p.map(Math.log), q.map(Math.log)) - expected) < 1e-12);
  // The same pair as logits (log-probabilities plus any constant).
  assert.ok(
    Math.abs(klDivergence(p.map((x) => Math.log(x) + 3), q.map(Math.log)) - expected) < 1e-9,
  );
  // And the other direction differs: KL(q || p) = 1/4 ln(1/2) + 1/2 ln 2 = ln(2) / 4 too here,
  // so check an asymmetric pair by hand: p = (0.9, 0.05, 0.05), q = (1/3, 1/3, 1/3).
  const kl = klDivergence([0.9, 0.05, 0.05].map(Math.log), [0, 0, 0]);
  const byHand = 0.9 * Math.log(0.9 * 3) + 2 * 0.05 * Math.log(0.05 * 3);
  assert.ok(Math.abs(kl - byHand) < 1e-9);
  const lp = logSoftmax([0, 0, 0]);
  assert.ok(Math.abs(lp[0] + Math.log(3)) < 1e-12);
});

Deno.test("attention-mass recall: 1 when every page is attended, the attended share otherwise", () => {
  // One query head, d = 1, q = 1; keys 0 and ln 3: probabilities 1/4 and 3/4.
  const shape = { numQueryHeads: 1, numKvHeads: 1, headDim: 1, pageSize: 1 };
  const keys = new Float32Array([0, Math.log(3)]);
  const all = attentionMassRecall([1], keys, 2, { ...shape, attended: [[0, 1]] });
  assert.ok(Math.abs(all[0] - 1) < 1e-12);
  const last = attentionMassRecall([1], keys, 2, { ...shape, attended: [[1]] });
  assert.ok(Math.abs(last[0] - 0.75) < 1e-6);
  const none = attentionMassRecall([1], keys, 2, { ...shape, attended: [[]] });
  assert.equal(none[0], 0);
  // GQA: two query heads share a KV head; recall is their mean.
  const gqa = attentionMassRecall([1, -1], keys, 2, {
    numQueryHeads: 2,
    numKvHeads: 1,
    headDim: 1,
    pageSize: 1,
    attended: [[1]],
  });
  // Head 2 sees scores 0 and -ln 3: probabilities 3/4 and 1/4 -> 1/4 on page 1.
  assert.ok(Math.abs(gqa[0] - (0.75 + 0.25) / 2) < 1e-6);
});

Deno.test("agreement metrics, cosine and summaries by hand", () => {
  assert.equal(matchLength([1, 2, 3], [1, 2, 3]), 3);
  assert.equal(matchLength([1, 2, 3], [2, 2, 3]), 0);
  assert.equal(shareIdentical([5, 6, 7, 8], [5, 6, 7, 8]), 1);
  assert.equal(shareIdentical([1, 2, 3, 4], [1, 0, 3, 0]), 0.5);
  assert.equal(mean([1, 2, 3, 6]), 3);
  assert.equal(percentile([0, 10], 10), 1);
  assert.ok(Number.isNaN(percentile([], 10)));
  const c = groupMeanCosine([1, 0, 0, 2], [2, 0, 3, 0], {
    numQueryHeads: 2,
    numKvHeads: 2,
    headDim: 2,
  });
  assert.deepEqual([...c], [1, 0]);
});

Deno.test("configurations: parsing, labels, budgets", () => {
  assert.equal(parseBudget("1/4"), 0.25);
  assert.equal(parseBudget("96"), 96);
  assert.equal(parseBudget(0.125), 0.125);
  for (const bad of ["1/0", "0", "abc", "", "5/4", 1.5, -3, "0/4"]) {
    assert.throws(() => parseBudget(bad), RangeError, String(bad));
  }
  assert.throws(() => parsePolicyConfig(null), /must be an object/);
  assert.throws(() => parsePolicyConfig({ policy: "fast" }), /'policy' must be one of/);
  assert.throws(() => parsePolicyConfig({ tua: 0.9 }), /'tua' must be one of .*unknown field/);
  assert.throws(() => parsePolicyConfig({ tau: "0.9" }), /'tau' must be a number in \[-1, 1\]/);
  assert.throws(() => parsePolicyConfig({ tau: 2 }), /'tau' must be a number in \[-1, 1\]/);
  assert.throws(() => parsePolicyConfig({ pooling: "median" }), /'pooling' must be one of/);
  assert.throws(
    () => parsePolicyConfig({ correction: "later" }),
    /'correction' must be one of "sync", "resident"/,
  );
  assert.throws(
    () => parsePolicyConfig({ cachePages: -1 }),
    /'cachePages' must be an integer of at least 0/,
  );
  assert.throws(() => parsePolicyConfig({ sinkPages: 1.5 }), /'sinkPages' must be an integer/);
  assert.throws(
    () => parsePolicyConfig({ windowPages: 0 }),
    /'windowPages' must be an integer of at least 1/,
  );
  assert.throws(() => parsePolicyConfig({ budget: "1/0" }), /budget/);
  assert.throws(() => parsePolicyConfig({ name: "" }), /'name' must be a non-empty string/);
  // Engine fields pass through untouched.
  const r = resolveConfig({
    policy: "freekv",
    budget: "1/8",
    correction: "sync",
    cachePages: 3,
    tau: 0.8,
  }, 512);
  assert.equal(r.budget, 64);
  assert.deepEqual(
    { ...r.engine },
    {
      policy: "freekv",
      correction: "sync",
      cachePages: 3,
      tau: 0.8,
      pageSize: 8,
      budget: 64,
      sink: 16,
      window: 16,
    },
  );
  assert.equal(r.name, "freekv/sync/cachePages=3/tau=0.8");
  assert.equal(configLabel({ name: "mine", policy: "quest" }), "mine");
  // Budgets round down to whole pages; too small for sink + window + a page is refused.
  assert.equal(
    resolveConfig({ policy: "quest", budget: 100, pageSize: 16, sinkPages: 1, windowPages: 1 }, 512)
      .budget,
    96,
  );
  assert.throws(
    () => resolveConfig({ policy: "quest", budget: "1/8" }, 128),
    /budget \(1\/8 of 128 tokens = 16 in pages of 8\) must be at least sink \+ window \+ one page \(40\)/,
  );
  // full ignores the budget.
  assert.equal(resolveConfig({ policy: "full", budget: "1/8" }, 128).budget, 128);
  assert.equal(shareLabel(0.25), "1/4");
});

Deno.test("sweeps: base grid plus one-at-a-time knobs, duplicates merged", () => {
  const plan = buildSweep({
    policies: ["freekv", "quest", "streaming"],
    budgets: ["1/4", "1/8"],
    taus: [0.9, 0.5],
    poolings: ["softmax-mean", "mean"],
  });
  // Base 3 x 2; tau adds freekv x 2 budgets x 1 new value; pooling adds
  // (freekv, quest) x 2 budgets x 1 new value.
  assert.equal(plan.base.length, 6);
  assert.equal(plan.configs.length, 6 + 2 + 4);
  assert.deepEqual(plan.sweeps.map((s) => s.knob), ["budget", "tau", "pooling"]);
  const tau = plan.sweeps[1].members.map((i) => plan.configs[i]);
  assert.deepEqual(tau.map((c) => c.name), [
    "freekv",
    "freekv/tau=0.5",
    "freekv",
    "freekv/tau=0.5",
  ]);
  // streaming takes no pooling or tau.
  assert.ok(
    plan.configs.filter((c) => c.policy === "streaming").every((c) =>
      c.tau === undefined && c.pooling === undefined
    ),
  );
});

Deno.test("eval script: --from prints the table and draws the plots of a saved run", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await runEval([
      "--from",
      "docs/eval/stories260K_freekv_2texts.json",
      "--markdown",
      "--plot",
      dir,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^\| policy \| context \|/);
    assert.match(r.stdout, /\| freekv \| 512 \| 64 \(1\/8\) \|/);
    assert.ok(Deno.statSync(`${dir}/eval_budget_agreement.svg`).isFile);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tables and plots", () => {
  const row = {
    policy: "freekv",
    base_policy: "freekv",
    config_index: 0,
    context: 512,
    budget: 128,
    budget_spec: "1/4",
    budget_share: 0.25,
    page_size: 8,
    sink: 16,
    window: 16,
    tau: 0.9,
    correction: "sync",
    cache_pages: null,
    answer_lag: 1,
    pooling: "softmax-mean",
    summary: "minmax",
    texts: 1,
    prefix: 256,
    steps: 255,
    agreement: 0.99,
    kl: 0.01,
    kl_p99: 0.1,
    mass_recall: 0.95,
    mass_recall_min_head: 0.9,
    greedy_match_len: 12,
    greedy_share: 0.5,
    greedy_tokens: 64,
    corrected_share: 0.2,
    resident_hit_rate: null,
    host_waits_per_step: null,
    cosine_mean: 0.9,
    cosine_p10: 0.7,
    per_head: { mass_recall: [], corrected_share: [], cosine_mean: [], cosine_p10: [] },
    ms_per_step: 1,
    per_text: [],
  };
  const md = formatTable([row], { markdown: true }).split("\n");
  assert.equal(md.length, 3);
  assert.match(
    md[2],
    /^\| freekv \| 512 \| 128 \(1\/4\) \| 8 \| 2\/2 \| 0.9 \| sync \| - \| 99.00 \| 0.0100 \| 95.00 /,
  );
  const svg = plotSweep([row, { ...row, budget_share: 0.125, agreement: 0.97 }], {
    x: "budget_share",
    y: "agreement",
    title: "agreement",
  });
  assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /<path[^>]* d="M/); // the line
  assert.match(svg, />freekv</); // its label
  assert.match(svg, /<\/svg>$/);
  // Text x values make a categorical axis; facets make one panel per value.
  const cat = plotSweep([row, { ...row, pooling: "mean", context: 1024 }], {
    x: "pooling",
    y: "kl",
    facet: "context",
  });
  assert.match(cat, />softmax-mean</);
  assert.match(cat, />context 1024</);
});

async function runEval(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "scripts/eval.ts", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("eval script: --help, and bad flags fail with one line before any model is loaded", async () => {
  const help = await runEval(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: deno run -A scripts\/eval.ts/);
  const cases: Array<[string[], RegExp]> = [
    [
      ["--budgets", "1/4,lots"],
      /^eval: --budgets items must be token counts, shares below 1 or fractions like 1\/4: received "lots"$/,
    ],
    [["--policies", "freekv,fast"], /^eval: --policies items must be one of .*: received "fast"$/],
    [["--taus", "0.9,2"], /^eval: --taus items must be in \[-1, 1\]: received 2$/],
    [
      ["--contexts", "512,"],
      /^eval: --contexts must be a comma-separated list without empty items/,
    ],
    [["--texts", "0"], /^eval: --texts must be an integer of at least 1: received "0"$/],
    [
      ["--corrections", "later"],
      /^eval: --corrections items must be one of sync, resident: received "later"$/,
    ],
    [
      ["--contexts", "64", "--budgets", "1/8"],
      /^eval: Cannot resolve a policy configuration as the budget/,
    ],
    [["--sweep-contexts", "256"], /^eval: --sweep-contexts items must be among --contexts/],
    [["--model", "/nonexistent/model.bin", "--bogus"], /^eval: Unknown option '--bogus'/],
    [
      ["--oracle", "--trace", "x.fkvtrace"],
      /^eval: --oracle needs a model: received it with --trace$/,
    ],
    [
      ["--prefix", "1/2", "--score-last", "64"],
      /^eval: --prefix and --score-last must not be given together$/,
    ],
    [
      ["--contexts", "128", "--score-last", "127"],
      /^eval: --score-last must be at most context - 2 \(126\)/,
    ],
    [
      ["--from", "/nonexistent.json"],
      /^eval: --from must name the output of an earlier --json run/,
    ],
  ];
  for (const [args, message] of cases) {
    const r = await runEval(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr.trim(), message);
  }
});

gpuTest(
  "evaluateModel: full agrees with itself, a budget covering the context is exact, streaming loses mass",
  async (gpu) => {
    const { weights } = await loadModel(MODEL, { tokenizer: false });
    const texts = await generateStories(gpu.device, weights, { seeds: [3], length: 80 });
    assert.equal(texts[0].tokens.length, 80);
    assert.equal(texts[0].tokens[0], weights.config.bosId);
    const rows = await evaluateModel(gpu.device, weights, {
      texts,
      contexts: [80],
      prefix: 0.5,
      greedyTokens: 8,
      configs: [
        { policy: "full" },
        { name: "quest-all", policy: "quest", budget: 80, sinkPages: 1, windowPages: 1 },
        { policy: "streaming", budget: 24, sinkPages: 1, windowPages: 1 },
        { policy: "freekv", budget: 32, sinkPages: 1, windowPages: 1, tau: 0.9 },
      ],
    });
    const [full, all, streaming, freekv] = rows;
    assert.equal(rows.length, 4);
    assert.equal(full.steps, 80 - 1 - 40);
    // A policy agrees with itself.
    assert.equal(full.agreement, 1);
    assert.ok(full.kl! < 1e-6, String(full.kl));
    assert.equal(full.greedy_match_len, 8);
    assert.equal(full.greedy_share, 1);
    // A budget that covers the context attends everything.
    assert.ok(Math.abs(all.mass_recall - 1) < 1e-6, String(all.mass_recall));
    assert.equal(all.agreement, 1);
    assert.ok(all.kl! < 1e-6, String(all.kl));
    // Streaming with 3 pages of 80 tokens misses attention mass.
    assert.ok(streaming.mass_recall < 0.99, String(streaming.mass_recall));
    assert.ok(streaming.mass_recall > 0);
    assert.equal(streaming.budget, 24);
    // freekv reports its statistics.
    assert.equal(freekv.tau, 0.9);
    assert.ok(freekv.corrected_share >= 0 && freekv.corrected_share <= 1);
    assert.ok(freekv.cosine_p10 <= freekv.cosine_mean);
    assert.equal(freekv.per_head.mass_recall.length, weights.config.numLayers);
    assert.equal(freekv.per_head.cosine_mean[0].length, weights.config.numKvHeads);
  },
);

Deno.test({
  name: "eval script: a short run end to end (JSON and plots), and on a recorded trace",
  ignore: testGpu === null,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const r = await runEval([
        "--texts",
        "1",
        "--contexts",
        "64",
        "--budgets",
        "1/2",
        "--sink-pages",
        "1",
        "--window-pages",
        "1",
        "--policies",
        "freekv,streaming",
        "--taus",
        "0.9,0.5",
        "--greedy-tokens",
        "4",
        "--oracle",
        "--json",
        "--plot",
        dir,
      ]);
      assert.equal(r.code, 0, r.stderr);
      const report = JSON.parse(r.stdout);
      // Three configurations and the oracle of their one budget shape.
      assert.equal(report.rows.length, 4);
      const oracle = report.rows[3];
      assert.deepEqual([oracle.policy, oracle.base_policy, oracle.config_index], [
        "oracle",
        "oracle",
        3,
      ]);
      assert.ok(report.sweeps[0].members.includes(3), JSON.stringify(report.sweeps));
      // No page set of this budget holds more attention mass.
      for (const row of report.rows.slice(0, 3)) {
        assert.ok(oracle.mass_recall >= row.mass_recall - 1e-9, `${row.policy} ${row.mass_recall}`);
      }
      for (const row of report.rows) {
        for (
          const key of [
            "policy",
            "context",
            "budget",
            "page_size",
            "tau",
            "correction",
            "agreement",
            "kl",
            "mass_recall",
            "greedy_match_len",
            "corrected_share",
          ]
        ) assert.ok(key in row, key);
        assert.equal(row.context, 64);
        assert.equal(row.budget, 32);
      }
      const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      assert.ok(files.includes("eval_budget_agreement.svg"), files.join());
      assert.ok(files.includes("eval_tau_corrected_share.svg"), files.join());
      assert.match(await Deno.readTextFile(`${dir}/eval_tau_kl.svg`), /^<svg /);

      // A recorded trace: attention-only metrics.
      const trace = `${dir}/story.trace`;
      const g = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "scripts/generate.ts", "--max-tokens", "40", "--record-trace", trace],
        cwd: ROOT,
        stdout: "null",
        stderr: "piped",
      }).output();
      assert.equal(g.code, 0, new TextDecoder().decode(g.stderr));
      const t = await runEval([
        "--trace",
        trace,
        "--prefix",
        "1/2",
        "--budgets",
        "32",
        "--sink-pages",
        "1",
        "--window-pages",
        "1",
        "--policies",
        "quest,streaming",
        "--json",
      ]);
      assert.equal(t.code, 0, t.stderr);
      const tr = JSON.parse(t.stdout);
      assert.equal(tr.rows.length, 2);
      for (const row of tr.rows) {
        assert.equal(row.agreement, null);
        assert.ok(row.mass_recall > 0 && row.mass_recall <= 1 + 1e-9, String(row.mass_recall));
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("oraclePages: sink, window and the candidates with the most group mass", () => {
  // Pages of 2 tokens; 10 tokens = pages 0-4; sink 1, window 1 (page 4), 2 selected of 1-3.
  const budget = { pageSize: 2, sinkPages: 1, windowPages: 1, selectPages: 2 };
  // Two heads of a group: page 1 holds 0.3, page 2 holds 0.25, page 3 holds 0.35 in total.
  const h0 = [0.05, 0.05, 0.1, 0.1, 0.05, 0.05, 0.1, 0.1, 0.2, 0.2];
  const h1 = [0.1, 0.1, 0.05, 0.05, 0.1, 0.05, 0.1, 0.05, 0.2, 0.2];
  assert.deepEqual(oraclePages([h0, h1], 10, budget), [0, 1, 3, 4]);
  // Ties go to the lower page.
  const flat = new Array(10).fill(0.1);
  assert.deepEqual(oraclePages([flat], 10, budget), [0, 1, 2, 4]);
  // Candidates that fit the selection are all attended; a partial last page is the window.
  assert.deepEqual(oraclePages([flat.slice(0, 7)], 7, budget), [0, 1, 2, 3]);
  // A sliding window of 5 over 10 tokens: keys 5-9 (probs start at key 5); the
  // sink left the window, page 2 is partly inside it.
  const inWindow = [0.1, 0.1, 0.2, 0.3, 0.3];
  assert.deepEqual(oraclePages([inWindow], 10, budget, 5, 5), [2, 3, 4]);
});

Deno.test("reference keyMask: keeping every key is full attention, keeping the last W is a sliding window", async () => {
  const { weights } = await loadModel(MODEL, { tokenizer: false });
  const tokens = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315];
  const W = 5;
  const plain = createReferenceModel(weights);
  const masked = createReferenceModel(weights);
  const windowed = createReferenceModel({
    ...weights,
    config: { ...weights.config, slidingWindow: W },
  });
  const lastW = createReferenceModel(weights);
  const all = {
    keyMask: (_l: number, _h: number, probs: readonly Float32Array[]) => probs[0].map(() => 1),
  };
  for (let pos = 0; pos < tokens.length; pos++) {
    const want = plain.forward(tokens[pos], pos).slice();
    const got = masked.forward(tokens[pos], pos, all);
    for (let i = 0; i < want.length; i++) {
      assert.ok(Math.abs(got[i] - want[i]) < 1e-5, `pos ${pos} logit ${i}`);
    }
    const wantW = windowed.forward(tokens[pos], pos).slice();
    const gotW = lastW.forward(tokens[pos], pos, {
      keyMask: (_l, _h, probs, first) => probs[0].map((_, i) => (first + i > pos - W ? 1 : 0)),
    });
    for (let i = 0; i < wantW.length; i++) {
      assert.ok(Math.abs(gotW[i] - wantW[i]) < 1e-5, `window: pos ${pos} logit ${i}`);
    }
  }
  // A mask of the wrong length, or one that keeps nothing, is refused.
  const bad = createReferenceModel(weights);
  bad.forward(tokens[0], 0);
  assert.throws(
    () => bad.forward(tokens[1], 1, { keyMask: () => [1] }),
    /Cannot run forward as 'keyMask result' must have length 2: received length 1/,
  );
  assert.throws(
    () => bad.forward(tokens[1], 1, { keyMask: () => [0, 0] }),
    /Cannot run forward as 'keyMask' must keep some attention of layer 0 KV head 0: received a mask that keeps 0/,
  );
});

Deno.test("evaluateOracle: a covering budget is full, free picks hold at least a fixed window's mass", async () => {
  const { weights } = await loadModel(MODEL, { tokenizer: false });
  // A fixed story prefix (the eval's own texts need a GPU).
  const tokens = [
    1,
    403,
    407,
    261,
    378,
    432,
    383,
    286,
    261,
    376,
    298,
    315,
    421,
    395,
    317,
    426,
    338,
    401,
    396,
    267,
    337,
    410,
    408,
    419,
    292,
    411,
    322,
    265,
    282,
    295,
    433,
    426,
    385,
    328,
    432,
    358,
    394,
    261,
    370,
    432,
    352,
    266,
    268,
    388,
    426,
    338,
    391,
    266,
    267,
    337,
    335,
    312,
    432,
    398,
    312,
    286,
    267,
    414,
    270,
    333,
    415,
    426,
    13,
    438,
  ];
  const texts = [{ id: "story", tokens }];
  const rows = evaluateOracle(weights, {
    texts,
    contexts: [64],
    prefix: 0.5,
    greedyTokens: 6,
    configs: [
      { budget: 64, pageSize: 4, sinkPages: 1, windowPages: 1 },
      { budget: 16, pageSize: 4, sinkPages: 1, windowPages: 1 },
      { budget: 16, pageSize: 4, sinkPages: 1, windowPages: 2, name: "one selected" },
    ],
  });
  const [all, small, one] = rows;
  assert.deepEqual(rows.map((r) => [r.policy, r.base_policy]), [
    ["oracle", "oracle"],
    ["oracle", "oracle"],
    ["one selected", "oracle"],
  ]);
  assert.equal(all.steps, 64 - 1 - 32);
  assert.equal(all.agreement, 1);
  assert.ok(all.kl! < 1e-9, String(all.kl));
  assert.ok(Math.abs(all.mass_recall - 1) < 1e-9, String(all.mass_recall));
  assert.equal(all.greedy_match_len, 6);
  // 4 of 16 pages: mass is lost. Layer 0 sees the same queries and keys in
  // both runs, and two free picks can take the second window page of the
  // other shape: they hold at least its mass at every step.
  assert.ok(small.mass_recall < 1, String(small.mass_recall));
  small.per_head.mass_recall[0].forEach((m, h) => {
    assert.ok(m >= one.per_head.mass_recall[0][h] - 1e-12, `head ${h}: ${m}`);
  });
  assert.equal(small.corrected_share, 0);
  assert.equal(small.per_head.mass_recall.length, weights.config.numLayers);
  // Only the budget's shape may be set; bad input fails before any run.
  assert.throws(
    () => evaluateOracle(weights, { texts, contexts: [64], configs: [{ budget: 16, tau: 0.5 }] }),
    /Cannot evaluate the oracle as a configuration may set only name, budget, pageSize, sinkPages, windowPages, sink, window: received 'tau'/,
  );
  assert.throws(
    () => evaluateOracle(weights, { texts, contexts: [128], configs: [{ budget: 16 }] }),
    /Cannot evaluate the oracle as text 'story' must hold at least 128 tokens: received 64/,
  );
  assert.throws(
    () => evaluateOracle(weights, { texts, contexts: [64], configs: [] }),
    /Cannot evaluate the oracle as 'configs' must be a non-empty array/,
  );
});
