/**
 * Accuracy of the retrieval policies against full attention on the same
 * attention trace: output error, attention-mass recall (the share of full
 * attention's probability that falls on the pages a policy attended), and
 * how often freekv corrected a head. Also compares the GQA pooling modes.
 *
 * Usage: deno run -A scripts/accuracy.ts [--trace FILE] [--context N] [--steps N]
 *        [--budget N] [--page-size N] [--tau X] [--json]
 */
import { flagChecks } from "./_flags.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { createRetrievalEngine, type EngineOptions } from "../lib/engine/engine.ts";
import { driveEngine } from "../lib/workloads/driver.ts";
import {
  type AttentionSource,
  createSyntheticSource,
  type TokenQkv,
} from "../lib/workloads/synthetic.ts";
import { readTrace } from "../lib/workloads/trace.ts";
import type { PoolingMode } from "../lib/kernels/selection.ts";

const flags = flagChecks("accuracy");

const HELP = `Usage: deno run -A scripts/accuracy.ts [options]

Replays one attention trace through every policy and compares with full
attention: relative L2 error of the attention output, attention-mass recall
(share of full attention's probability on the attended pages), corrected
share and the resident-hit rate of corrected heads. Variants: streaming,
quest and freekv with each GQA pooling mode, with box summaries, and freekv
with correction "sync" and with cachePages 0.

Options:
  --trace FILE     a trace from scripts/generate.ts --record-trace (default: a
                   synthetic workload, 2 layers of Llama-3.1-8B attention heads)
  --context N      prompt tokens: synthetic (default 4096); with --trace, how
                   many of its tokens to prefill (default: its prompt length)
  --steps N        decode steps (default 24; with --trace: the trace's generated tokens)
  --budget N       tokens attended per step (default 512)
  --page-size N    tokens per page (default 32)
  --tau X          freekv correction threshold (default 0.9)
  --json           one JSON object on stdout
  --help           this text`;

const values = flags.parse(Deno.args, {
  trace: { type: "string" },
  context: { type: "string", default: "4096" },
  steps: { type: "string", default: "24" },
  budget: { type: "string", default: "512" },
  "page-size": { type: "string", default: "32" },
  tau: { type: "string", default: "0.9" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}
const positive = (name: string, text: string) => flags.intFlag(name, text, 1)!;
const tau = flags.tauFlag("tau", values.tau)!;
const budget = flags.retrieval({
  budget: positive("budget", values.budget!),
  pageSize: positive("page-size", values["page-size"]!),
  tau,
});
const contextFlag = positive("context", values.context!);
const stepsFlag = positive("steps", values.steps!);

// Materialize every token so the policies and the mass oracle see the same data.
let shape: { numLayers: number; numQueryHeads: number; numKvHeads: number; headDim: number };
let promptLength: number;
let tokens: TokenQkv[][];
if (values.trace) {
  const trace = await readTrace(values.trace).catch((error: Error) =>
    flags.fail(`--trace could not be read: ${error.message}`)
  );
  shape = trace.header;
  promptLength = Deno.args.includes("--context") ? contextFlag : trace.header.promptLength;
  tokens = Array.from(
    { length: trace.numTokens },
    (_, t) =>
      Array.from({ length: shape.numLayers }, (_, l) => ({
        q: trace.q(t, l),
        k: trace.k(t, l),
        v: trace.v(t, l),
      })),
  );
} else {
  shape = { numLayers: 2, numQueryHeads: 32, numKvHeads: 8, headDim: 128 };
  promptLength = contextFlag;
  const source = createSyntheticSource({ ...shape, seed: 3, shiftProbability: 0.15 });
  const total = promptLength + stepsFlag;
  console.error(`accuracy: generating ${total} synthetic tokens`);
  tokens = Array.from({ length: total }, () => source.next());
}
const steps = tokens.length - promptLength;
if (steps < 1) {
  flags.fail(
    `--context must leave generated tokens of the trace to decode (at most ${
      tokens.length - 1
    }): received ${promptLength}`,
  );
}

function arraySource(): AttentionSource {
  let t = 0;
  return { ...shape, next: () => tokens[t++] };
}

interface Variant {
  name: string;
  options: Partial<EngineOptions>;
}
const variants: Variant[] = [
  { name: "full", options: { policy: "full" } },
  { name: "streaming", options: { policy: "streaming" } },
];
for (const pooling of ["softmax-mean", "mean", "max"] as PoolingMode[]) {
  variants.push({ name: `quest/${pooling}`, options: { policy: "quest", pooling } });
  variants.push({ name: `freekv/${pooling}`, options: { policy: "freekv", pooling, tau } });
}
// The box summary (center ± mean deviation) instead of min/max.
variants.push({ name: "quest/box", options: { policy: "quest", summary: "box" } });
variants.push({ name: "freekv/box", options: { policy: "freekv", summary: "box", tau } });
// Correction modes and the extra GPU slots (default: twice the selected pages).
variants.push({ name: "freekv-sync", options: { policy: "freekv", correction: "sync", tau } });
variants.push({ name: "freekv/cache0", options: { policy: "freekv", cachePages: 0, tau } });
variants.push({
  name: "freekv-sync/cache0",
  options: { policy: "freekv", correction: "sync", cachePages: 0, tau },
});

using gpu = await requestGpu();
const { numLayers: L, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = shape;
const group = hq / hkv;
const P = budget.pageSize;
const results: Record<string, {
  outputs: Float32Array[];
  pages: number[][][];
  correctedShare: number;
  residentHitRate: number;
}> = {};
for (const v of variants) {
  console.error(`accuracy: ${v.name}`);
  using engine = createRetrievalEngine(gpu.device, {
    ...shape,
    ...budget,
    maxContext: tokens.length + P,
    ...v.options,
  });
  const outputs: Float32Array[] = [], pages: number[][][] = [];
  await driveEngine(engine, [arraySource()], {
    promptLengths: [promptLength],
    steps,
    onLayer: async (_s, l, out) => {
      outputs.push(out);
      pages.push((await engine.attendedPages(l)).slice(0, hkv));
    },
  });
  const totals = engine.totals();
  results[v.name] = {
    outputs,
    pages,
    correctedShare: totals.correctedShare,
    residentHitRate: totals.residentHitRate,
  };
}

// Full attention's probabilities per (step, layer, query head), by page.
console.error("accuracy: attention mass");
const massByPage: Float64Array[][] = []; // [step*L + layer][qHead] -> mass per page
for (let s = 0; s < steps; s++) {
  const t = promptLength + s;
  for (let l = 0; l < L; l++) {
    const q = tokens[t][l].q;
    const perHead: Float64Array[] = [];
    for (let h = 0; h < hq; h++) {
      const kvh = Math.floor(h / group);
      const scores = new Float64Array(t + 1);
      let max = -Infinity;
      for (let i = 0; i <= t; i++) {
        const k = tokens[i][l].k;
        let dot = 0;
        for (let j = 0; j < d; j++) dot += q[h * d + j] * k[kvh * d + j];
        scores[i] = dot / Math.sqrt(d);
        max = Math.max(max, scores[i]);
      }
      let sum = 0;
      for (let i = 0; i <= t; i++) sum += scores[i] = Math.exp(scores[i] - max);
      const mass = new Float64Array(Math.ceil((t + 1) / P));
      for (let i = 0; i <= t; i++) mass[Math.floor(i / P)] += scores[i] / sum;
      perHead.push(mass);
    }
    massByPage.push(perHead);
  }
}

const rows = variants.map((v) => {
  const r = results[v.name];
  let err = 0, recall = 0;
  for (let i = 0; i < r.outputs.length; i++) {
    const a = r.outputs[i], b = results.full.outputs[i];
    let num = 0, den = 0;
    for (let j = 0; j < a.length; j++) num += (a[j] - b[j]) ** 2, den += b[j] ** 2;
    err += Math.sqrt(num / den);
    for (let h = 0; h < hq; h++) {
      const mass = massByPage[i][h];
      for (const p of r.pages[i][Math.floor(h / group)]) recall += mass[p];
    }
  }
  const n = r.outputs.length;
  return {
    variant: v.name,
    output_rel_error: err / n,
    attention_mass_recall: recall / (n * hq),
    corrected_share: r.correctedShare,
    resident_hit_rate: r.residentHitRate,
  };
});
const report = {
  source: values.trace ?? "synthetic",
  shape,
  prompt: promptLength,
  steps,
  retrieval: { ...budget, tau },
  rows,
};
if (values.json) console.log(JSON.stringify(report, null, 2));
else {
  console.log(
    `${report.source}: prompt ${promptLength} tokens, ${steps} steps, budget ${budget.budget} ` +
      `(sink ${budget.sink}, window ${budget.window}, page ${P}), tau ${tau}`,
  );
  console.log(
    "variant              output rel. error   attention mass recall   corrected  hit rate",
  );
  for (const r of rows) {
    console.log(
      `${r.variant.padEnd(20)} ${r.output_rel_error.toExponential(2).padStart(17)} ${
        (100 * r.attention_mass_recall).toFixed(2).padStart(22)
      }% ${(100 * r.corrected_share).toFixed(1).padStart(10)}% ${
        (100 * r.resident_hit_rate).toFixed(1).padStart(8)
      }%`,
    );
  }
}
