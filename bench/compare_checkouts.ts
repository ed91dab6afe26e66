/**
 * Paired comparison of two checkouts of this module: decode steps of an
 * engine from another checkout (for example a `git worktree` of an older
 * commit) and of this one, alternating on the same synthetic inputs in one
 * process, so that the machine's drift falls on both alike. Llama-3.1-8B
 * attention heads, budget 2048 (sink 512, window 512, page 32), batch 1.
 *
 * Usage: deno run -A bench/compare_checkouts.ts --other DIR [--context N]
 * [--policy NAME] [--layers N] [--steps N] [--json]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { requestGpu } from "../lib/gpu/device.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";
import {
  createRetrievalEngine,
  POLICIES,
  type PolicyName,
  type RetrievalEngine,
} from "../lib/engine/engine.ts";
import { createSyntheticSource, takePrompt } from "../lib/workloads/synthetic.ts";
import { timedStep } from "./suite_decode.ts";

const HELP = `Usage: deno run -A bench/compare_checkouts.ts --other DIR [options]

Steps a retrieval engine from the checkout in DIR (its lib/engine/engine.ts)
and one from this checkout alternately, on the same synthetic Llama-3.1-8B
inputs, and reports each one's median step and the median of the paired
ratios (this checkout over DIR's). Progress goes to stderr.

Options:
  --other DIR     the other checkout (required)
  --context N     tokens prefilled before the timed steps (default 32704)
  --policy NAME   ${POLICIES.join(", ")} (default freekv)
  --layers N      layers (default 4)
  --steps N       timed steps per engine, after 2 warm-up steps (default 12)
  --json          print one JSON object on stdout
  --help          this text`;

const fail = (message: string): never => {
  console.error(`compare_checkouts: ${message}`);
  Deno.exit(2);
};
let values;
try {
  values = parseArgs({
    args: Deno.args,
    options: {
      other: { type: "string" },
      context: { type: "string", default: "32704" },
      policy: { type: "string", default: "freekv" },
      layers: { type: "string", default: "4" },
      steps: { type: "string", default: "12" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  }).values;
} catch (error) {
  fail(`${(error as Error).message} (see --help)`);
}
if (values!.help) {
  console.log(HELP);
  Deno.exit(0);
}
const int = (name: string, value: string, min: number): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) {
    fail(`--${name} must be an integer of at least ${min}: received ${JSON.stringify(value)}`);
  }
  return n;
};
const context = int("context", values!.context!, 2048);
const layers = int("layers", values!.layers!, 1);
const steps = int("steps", values!.steps!, 1);
const policy = values!.policy as PolicyName;
if (!POLICIES.includes(policy)) {
  fail(`--policy must be one of ${POLICIES.join(", ")}: received ${JSON.stringify(policy)}`);
}
if (!values!.other) fail("--other DIR is required (see --help)");
const otherEngine = resolve(values!.other!, "lib/engine/engine.ts");
let other: { createRetrievalEngine: typeof createRetrievalEngine };
try {
  other = await import(`file://${otherEngine}`);
} catch (error) {
  fail(`--other could not be loaded (${otherEngine}): ${(error as Error).message}`);
}

const SHAPE = { numLayers: layers, numQueryHeads: 32, numKvHeads: 8, headDim: 128 };
const BUDGET = { pageSize: 32, budget: 2048, sink: 512, window: 512 };
const WARMUP = 2;
using gpu = await requestGpu();
const { device } = gpu;
console.error(`compare_checkouts: ${gpu.description}; prefilling ${context} tokens twice`);
const source = createSyntheticSource({ ...SHAPE, seed: 100, shiftProbability: 0.15 });
const prompt = takePrompt(source, context, { queries: false });
const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const tokens = Array.from({ length: WARMUP + steps }, () =>
  source.next().map((t, l) => ({
    q: createBuffer(device, `q ${l}`, usage, t.q),
    k: createBuffer(device, `k ${l}`, usage, t.k),
    v: createBuffer(device, `v ${l}`, usage, t.v),
  })));
const out = createBuffer(device, "out", usage, SHAPE.numQueryHeads * SHAPE.headDim * 4);
const options = { ...SHAPE, ...BUDGET, maxContext: context + 64, policy };
// [the other checkout's engine, this one's]
const engines: RetrievalEngine[] = [
  other!.createRetrievalEngine(device, options),
  createRetrievalEngine(device, options),
];
for (const engine of engines) {
  for (let l = 0; l < layers; l++) {
    await engine.prefill(0, l, { k: prompt[l].k, v: prompt[l].v });
  }
  await engine.drain();
}
const times: number[][] = [[], []];
for (let s = 0; s < WARMUP + steps; s++) {
  // Alternate which goes first.
  for (const i of s % 2 === 0 ? [0, 1] : [1, 0]) {
    const ms = await timedStep(engines[i], tokens[s], out);
    if (s >= WARMUP) times[i].push(ms);
  }
}
for (const engine of engines) engine[Symbol.dispose]();
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const report = {
  adapter: gpu.description,
  other: resolve(values!.other!),
  policy,
  context,
  layers,
  steps,
  other_median_ms: median(times[0]),
  this_median_ms: median(times[1]),
  paired_ratio_median: median(times[1].map((t, i) => t / times[0][i])),
};
if (values!.json) console.log(JSON.stringify(report, null, 2));
else {
  console.log(
    `${policy}, context ${context}, ${layers} layers: other ${
      report.other_median_ms.toFixed(1)
    } ms, this ${report.this_median_ms.toFixed(1)} ms a step; this / other, paired: ${
      report.paired_ratio_median.toFixed(2)
    }`,
  );
}
