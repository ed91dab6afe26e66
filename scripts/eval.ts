/**
 * Accuracy against full attention on a real model: sweeps of policy
 * configurations, a table, JSON and plots (see lib/eval/).
 *
 * Usage: deno run -A scripts/eval.ts [options] (see --help)
 */
import { flagChecks } from "./_flags.ts";
import { POLICIES, type PolicyName } from "../lib/engine/engine.ts";
import {
  buildSweep,
  configLabel,
  CORRECTION_MODES,
  type EvalRow,
  formatTable,
  parseBudget,
  plotSweep,
  type PolicyConfig,
  POOLING_MODES,
  resolveConfig,
  SUMMARY_KINDS,
  type SweepSpec,
} from "../lib/eval/mod.ts";
import { sweepAxes } from "../lib/eval/sweep.ts";

const DEFAULT_MODEL = "models/stories260K/stories260K.bin";
const flags = flagChecks("eval");
const fail: (message: string) => never = flags.fail;

const HELP = `Usage: deno run -A scripts/eval.ts [options]

Measures how close each retrieval policy comes to full attention on a real
model. The model writes its own texts (one story per seed, temperature 1);
each text's first CONTEXT tokens are prefilled up to the prefix, then
  - teacher forcing scores every later position: top-1 next-token agreement
    with full, KL(full || policy) of the next-token distributions, and
    attention-mass recall (share of full attention's probability, per layer
    and KV head, on the pages the policy attended);
  - free generation continues greedily from the prefix: tokens until the
    first divergence from full, share of identical tokens;
  - freekv's statistics: corrected share, adjacent-query cosine (mean, 10th
    percentile), resident-hit rate when the engine reports it.
Lists are comma-separated. The base grid is every policy at every budget;
each other list with several values adds a one-at-a-time sweep of that knob.
Progress goes to stderr, the table to stdout.

Options:
  --model PATH          llama2.c .bin or safetensors directory (default ${DEFAULT_MODEL})
  --texts N             stories, from seeds S..S+N-1 (default 3)
  --seed S              first seed (default 1)
  --contexts LIST       context lengths in tokens (default 512,1024)
  --prefix X            tokens prefilled before scoring: share of the context
                        below 1, a fraction (1/2) or tokens (default 1/2)
  --score-last N        instead of --prefix: score the last N positions of each context
  --greedy-tokens N     greedy tokens generated after the prefix, 0 = none (default 64)
  --policies LIST       ${
  POLICIES.filter((p) => p !== "full").join(", ")
} (default freekv,quest,streaming)
  --budgets LIST        tokens, or shares of the context: 1/4, 0.125 (default 1/4,1/8)
  --page-sizes LIST     tokens per page (default 8)
  --sink-pages LIST     sink pages (default 2)
  --window-pages LIST   window pages (default 2)
  --taus LIST           freekv correction thresholds in [-1, 1] (default: the engine's, 0.9)
  --poolings LIST       ${POOLING_MODES.join(", ")} (default: the engine's)
  --summaries LIST      ${SUMMARY_KINDS.join(", ")} (default: the engine's)
  --corrections LIST    freekv correction modes: ${
  CORRECTION_MODES.join(", ")
} (default: the engine's)
  --cache-pages LIST    pages freekv caches for corrections (default: the engine's)
  --answer-lags LIST    steps freekv's host follows behind the GPU (engine option
                        answerLag; scripts/generate.ts runs with its
                        --tokens-per-wait, 8 by default) (default 1)
  --sweep-contexts LIST contexts the knob sweeps run at (default: all)
  --sweep-budgets LIST  budgets the knob sweeps run at (default: all)
  --sweep-policies LIST policies the knob sweeps run for (default: all of --policies)
  --sweep-texts N       texts the knob sweeps run on, the first N (default: all)
  --concurrency N       sequences in flight at once (default 6)
  --mass-stride N       attention-mass recall every N-th scored step (default 1: all;
                        engines that pick pages on the GPU pay a readback per read)
  --trace FILE          attention-only metrics on a recorded trace
                        (scripts/generate.ts --record-trace) instead of a model;
                        --prefix then defaults to the trace's prompt
  --oracle              also run the page-selection oracle at each budget of the base
                        grid (and each page size, sink and window of the sweeps): on
                        the CPU reference model, each step, layer and KV head attends
                        sink, window and the pages holding the most of full
                        attention's probability: the ceiling of page selection at
                        that budget, compared with full on the same CPU model
                        (plain CPU loops: seconds on stories260K, far too slow for
                        models of billions of parameters)
  --json                print one JSON object with a 'rows' array instead of the table
  --markdown            print the table as Markdown
  --plot DIR            write one SVG per sweep and metric to DIR
  --from FILE           print the table and draw the plots of an earlier --json output
                        (no model, no device; the sweep flags are ignored)
  --help                this text`;

const values = flags.parse(Deno.args, {
  model: { type: "string" },
  texts: { type: "string" },
  seed: { type: "string" },
  contexts: { type: "string" },
  prefix: { type: "string" },
  "greedy-tokens": { type: "string" },
  policies: { type: "string" },
  budgets: { type: "string" },
  "page-sizes": { type: "string" },
  "sink-pages": { type: "string" },
  "window-pages": { type: "string" },
  taus: { type: "string" },
  poolings: { type: "string" },
  summaries: { type: "string" },
  corrections: { type: "string" },
  "cache-pages": { type: "string" },
  "answer-lags": { type: "string" },
  "sweep-contexts": { type: "string" },
  "sweep-budgets": { type: "string" },
  "sweep-policies": { type: "string" },
  "sweep-texts": { type: "string" },
  "score-last": { type: "string" },
  concurrency: { type: "string" },
  "mass-stride": { type: "string" },
  trace: { type: "string" },
  oracle: { type: "boolean", default: false },
  json: { type: "boolean", default: false },
  markdown: { type: "boolean", default: false },
  plot: { type: "string" },
  from: { type: "string" },
  help: { type: "boolean", short: "h", default: false },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}

// ---- Flags: every check before a model is loaded or a device made. ----
function list(name: string, value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const items = value.split(",").map((s) => s.trim());
  if (items.some((s) => s === "")) {
    fail(
      `--${name} must be a comma-separated list without empty items: received ${
        JSON.stringify(value)
      }`,
    );
  }
  return items;
}
function intList(name: string, value: string | undefined, min: number): number[] | undefined {
  return list(name, value)?.map((s) => flags.intFlag(name, s, min)!);
}
function enumList<T extends string>(
  name: string,
  value: string | undefined,
  allowed: readonly T[],
): T[] | undefined {
  return list(name, value)?.map((s) => {
    if (!allowed.includes(s as T)) {
      fail(`--${name} items must be one of ${allowed.join(", ")}: received ${JSON.stringify(s)}`);
    }
    return s as T;
  });
}
function budgetList(name: string, value: string | undefined): string[] | undefined {
  return list(name, value)?.map((s) => {
    try {
      parseBudget(s);
    } catch {
      fail(
        `--${name} items must be token counts, shares below 1 or fractions like 1/4: received ${
          JSON.stringify(s)
        }`,
      );
    }
    return s;
  });
}
function share(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(value);
  const n = m ? Number(m[1]) / Number(m[2]) : Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n <= 0 || (n >= 1 && !Number.isInteger(n))) {
    fail(
      `--${name} must be a share below 1, a fraction like 1/2 or a token count: received ${
        JSON.stringify(value)
      }`,
    );
  }
  return n;
}

const texts = flags.intFlag("texts", values.texts, 1) ?? 3;
const seed = flags.intFlag("seed", values.seed, 0) ?? 1;
const contexts = intList("contexts", values.contexts, 3) ?? [512, 1024];
const scoreLast = flags.intFlag("score-last", values["score-last"], 1);
if (scoreLast !== undefined && values.prefix !== undefined) {
  fail("--prefix and --score-last must not be given together");
}
const prefix = scoreLast !== undefined ? -scoreLast : share("prefix", values.prefix);
const greedyTokens = flags.intFlag("greedy-tokens", values["greedy-tokens"], 0) ?? 64;
const concurrency = flags.intFlag("concurrency", values.concurrency, 1) ?? 6;
const massStride = flags.intFlag("mass-stride", values["mass-stride"], 1) ?? 1;
const taus = list("taus", values.taus)?.map((s) => {
  const t = flags.numFlag("taus", s)!;
  if (t < -1 || t > 1) fail(`--taus items must be in [-1, 1]: received ${s}`);
  return t;
});
const spec: SweepSpec = {
  policies: enumList(
    "policies",
    values.policies,
    POLICIES.filter((p) => p !== "full") as PolicyName[],
  ),
  budgets: budgetList("budgets", values.budgets),
  pageSizes: intList("page-sizes", values["page-sizes"], 1) ?? [8],
  sinkPages: intList("sink-pages", values["sink-pages"], 0) ?? [2],
  windowPages: intList("window-pages", values["window-pages"], 1) ?? [2],
  taus,
  poolings: enumList("poolings", values.poolings, POOLING_MODES),
  summaries: enumList("summaries", values.summaries, SUMMARY_KINDS),
  corrections: enumList("corrections", values.corrections, CORRECTION_MODES),
  cachePages: intList("cache-pages", values["cache-pages"], 0),
  answerLags: intList("answer-lags", values["answer-lags"], 1),
  sweepBudgets: budgetList("sweep-budgets", values["sweep-budgets"]),
};
const sweepContexts = intList("sweep-contexts", values["sweep-contexts"], 3);
const sweepTexts = flags.intFlag("sweep-texts", values["sweep-texts"], 1);
const sweepPolicies = enumList(
  "sweep-policies",
  values["sweep-policies"],
  POLICIES.filter((p) => p !== "full") as PolicyName[],
);
if (scoreLast !== undefined) {
  for (const c of contexts) {
    if (scoreLast > c - 2) {
      fail(`--score-last must be at most context - 2 (${c - 2}): received ${scoreLast}`);
    }
  }
}
for (const c of sweepContexts ?? []) {
  if (!contexts.includes(c)) {
    fail(`--sweep-contexts items must be among --contexts (${contexts}): received ${c}`);
  }
}
if (values.oracle && values.trace) fail("--oracle needs a model: received it with --trace");
let plan;
try {
  plan = buildSweep(spec);
} catch (error) {
  fail((error as Error).message);
}
const baseSet = new Set(plan.base);
const include = (k: number, context: number, textIndex = 0) =>
  baseSet.has(k) || (
    (sweepContexts === undefined || sweepContexts.includes(context)) &&
    (sweepTexts === undefined || textIndex < sweepTexts) &&
    (sweepPolicies === undefined || sweepPolicies.includes(plan.configs[k].policy ?? "freekv"))
  );
// Budgets too small for a context fail here, not after an hour of runs.
if (!values.trace) {
  for (let k = 0; k < plan.configs.length; k++) {
    for (const context of contexts) {
      if (!include(k, context)) continue;
      try {
        resolveConfig(plan.configs[k], context);
      } catch (error) {
        fail(`${(error as Error).message} (context ${context})`);
      }
    }
  }
}

// ---- Runs. ----
const { requestGpu } = await import("../lib/gpu/device.ts");
const [{ evaluateModel }, { evaluateTrace }, { generateStories }] = await Promise.all([
  import("../lib/eval/run.ts"),
  import("../lib/eval/trace_eval.ts"),
  import("../lib/eval/stories.ts"),
]);
const progress = (m: string) => console.error(`eval: ${m}`);
const t0 = performance.now();
let rows: EvalRow[];
let source: Record<string, unknown>;
let sweeps = plan.sweeps;
if (values.from) {
  // Tables and plots of an earlier --json run; no device, no model.
  let saved;
  try {
    saved = JSON.parse(await Deno.readTextFile(values.from));
    if (!Array.isArray(saved.rows) || !Array.isArray(saved.sweeps)) {
      throw new Error("no rows or sweeps");
    }
  } catch (error) {
    fail(`--from must name the output of an earlier --json run: ${(error as Error).message}`);
  }
  rows = saved.rows;
  sweeps = saved.sweeps;
  const { rows: _rows, sweeps: _sweeps, ...rest } = saved;
  source = rest;
} else {
  using gpu = await requestGpu();
  if (values.trace) {
    const { readTrace } = await import("../lib/workloads/trace.ts");
    let trace;
    try {
      trace = await readTrace(values.trace);
    } catch (error) {
      fail(`--trace could not be read: ${(error as Error).message}`);
    }
    const n = trace.numTokens;
    const prefixTokens = prefix === undefined
      ? trace.header.promptLength
      : prefix < 0
      ? n + prefix
      : prefix < 1
      ? Math.floor(n * prefix)
      : prefix;
    if (prefixTokens < 1 || prefixTokens >= n) {
      fail(
        `--prefix must leave at least one step of the trace's ${n} tokens: received ${prefixTokens} tokens`,
      );
    }
    for (const c of plan.configs) {
      try {
        resolveConfig(c, n);
      } catch (error) {
        fail(`${(error as Error).message} (trace of ${n} tokens)`);
      }
    }
    progress(
      `trace ${values.trace}: ${n} tokens, prefix ${prefixTokens}, ${plan.configs.length} configurations`,
    );
    rows = await evaluateTrace(gpu.device, trace, {
      configs: plan.configs,
      prefix: prefixTokens,
      concurrency,
      onProgress: progress,
    });
    source = {
      trace: values.trace,
      model: trace.header.model ?? null,
      tokens: n,
      prefix: prefixTokens,
    };
  } else {
    const { loadModel } = await import("../lib/model/load.ts");
    const modelPath = values.model ?? DEFAULT_MODEL;
    let loaded;
    try {
      loaded = await loadModel(modelPath, { tokenizer: false });
    } catch (error) {
      fail(`--model could not be loaded: ${(error as Error).message}`);
    }
    const seeds = Array.from({ length: texts }, (_, i) => seed + i);
    const longest = Math.max(...contexts);
    progress(`writing ${texts} stories of ${longest} tokens (seeds ${seeds.join(", ")})`);
    const stories = await generateStories(gpu.device, loaded.weights, {
      seeds,
      length: longest,
      onStory: (i) => progress(`story ${i + 1}/${texts} written`),
    });
    progress(`evaluating ${plan.configs.length} configurations at contexts ${contexts.join(", ")}`);
    rows = await evaluateModel(gpu.device, loaded.weights, {
      configs: plan.configs,
      contexts,
      texts: stories,
      prefix,
      greedyTokens,
      concurrency,
      massStride,
      include,
      onProgress: progress,
    });
    if (values.oracle) {
      const { evaluateOracle } = await import("../lib/eval/oracle.ts");
      // One oracle per budget shape the runs use (base grid and sweeps).
      // Named after the first configuration of that shape ("freekv/sink=1p" -> "oracle/sink=1p").
      const shapes = new Map<string, PolicyConfig>();
      for (let k = 0; k < plan.configs.length; k++) {
        const { budget, pageSize, sinkPages, windowPages } = plan.configs[k];
        const shape = { budget, pageSize, sinkPages, windowPages };
        const key = JSON.stringify(shape);
        const name = configLabel(plan.configs[k]).replace(/^[^/]+/, "oracle");
        if (!shapes.has(key)) shapes.set(key, { ...shape, name });
      }
      const oracleConfigs = [...shapes.values()];
      progress(`oracle: ${oracleConfigs.length} budget shapes on the CPU reference model`);
      const oracleRows = evaluateOracle(loaded.weights, {
        configs: oracleConfigs,
        contexts,
        texts: stories,
        prefix,
        greedyTokens,
        onProgress: progress,
      });
      // After the policies' indices; the budget sweep draws the oracle too.
      const first = plan.configs.length;
      for (const r of oracleRows) r.config_index += first;
      sweeps = sweeps.map((sw) =>
        sw.knob === "budget"
          ? { ...sw, members: [...sw.members, ...oracleConfigs.map((_, k) => first + k)] }
          : sw
      );
      rows = [...rows, ...oracleRows];
    }
    source = {
      model: modelPath,
      seeds,
      prefix: prefix ?? 0.5,
      greedy_tokens: greedyTokens,
      mass_stride: massStride,
    };
  }
}
const seconds = (performance.now() - t0) / 1000;
progress(`done in ${seconds.toFixed(0)} s`);

// Which sweeps each row belongs to.
const sweepsOf = (k: number) => sweeps.filter((s) => s.members.includes(k)).map((s) => s.knob);
const out = rows.map((r) => ({ ...r, sweeps: sweepsOf(r.config_index) }));

if (values.plot) {
  await Deno.mkdir(values.plot, { recursive: true });
  const metrics: Array<[keyof EvalRow, string]> = values.trace
    ? [["mass_recall", "attention-mass recall"], ["corrected_share", "corrected share"]]
    : [
      ["agreement", "top-1 agreement with full"],
      ["kl", "KL(full || policy), nats"],
      ["mass_recall", "attention-mass recall"],
      ["corrected_share", "corrected share"],
    ];
  for (const sweep of sweeps) {
    const members = new Set(sweep.members);
    const axes = sweepAxes<EvalRow>(sweep.knob);
    let sel = out.filter((r) => members.has(r.config_index));
    if (sweep.knob !== "budget") {
      // A knob sweep's lines need two points: drop the base rows of contexts
      // and budgets the knob did not run at.
      const count = new Map<string, number>();
      const key = (r: EvalRow) => `${r.context}:${axes.series(r)}`;
      for (const r of sel) count.set(key(r), (count.get(key(r)) ?? 0) + 1);
      sel = sel.filter((r) => count.get(key(r))! > 1);
    }
    for (const [metric, label] of metrics) {
      if (metric === "corrected_share" && !sel.some((r) => r.base_policy === "freekv")) continue;
      const data = metric === "corrected_share"
        ? sel.filter((r) => r.base_policy === "freekv")
        : sel;
      const svg = plotSweep(data, {
        x: axes.x,
        y: (r) => Number(r[metric]),
        series: axes.series,
        facet: "context",
        xLabel: axes.xLabel,
        xType: axes.xType,
        xTickFormat: axes.xTickFormat,
        yLabel: label,
        title: `${label} against ${axes.xLabel}`,
      });
      const file = `${values.plot}/eval_${sweep.knob}_${metric}.svg`;
      await Deno.writeTextFile(file, svg);
      progress(`wrote ${file}`);
    }
  }
}

if (values.json) {
  console.log(
    JSON.stringify({ contexts, seconds, ...source, sweeps, rows: out }, null, 2),
  );
} else {
  console.log(formatTable(out, { markdown: values.markdown }));
}
