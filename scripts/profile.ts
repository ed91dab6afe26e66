/**
 * Where a decode step's GPU time goes, per policy: greedy generation with
 * the bundled stories260K model (or any model by flag), once plainly for
 * tokens/s (every policy in one process, taking turns by groups of tokens,
 * so that a drifting machine slows them alike), once with timestamp queries
 * around every compute pass for GPU time per pass label, passes and
 * dispatches per token (skipped with --plain, or without timestamp
 * queries); then what each policy costs beyond `full` per token, on the GPU
 * and on the host.
 *
 * Usage: deno run -A scripts/profile.ts [--policies LIST] [--max-tokens N] ... (see --help)
 */
import { flagChecks } from "./_flags.ts";
import {
  type GapTotals,
  installPassTimer,
  measureFloors,
  type PassTotals,
  type SpanTotals,
} from "./_pass_timer.ts";
import { callsPer, type CallTotals, installCallCounter, noCalls } from "./_call_counter.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { loadModel } from "../lib/model/load.ts";
import { createGpuModel } from "../lib/model/gpu_model.ts";
import { type AttentionBackend, createDenseAttentionBackend } from "../lib/model/backends/dense.ts";
import { generate, type GenerationResult } from "../lib/model/generate.ts";
import { createEngineBackend } from "../lib/model/backends/engine.ts";
import { POLICIES, type PolicyName } from "../lib/engine/engine.ts";
import type { LoadedModel } from "../lib/model/load.ts";

const HELP = `Usage: deno run -A scripts/profile.ts [options]

Decodes greedily from BOS with each policy, first plainly (tokens/s: the
policies take turns by groups of --tokens-per-wait tokens in one process,
so that they see the same machine), then with a timestamp query around
every compute pass (GPU time per pass label,
passes and dispatches per token, and the largest GPU gaps between two
passes, where copies and barriers run), and splits what each policy costs beyond
full per token into GPU time in passes (less the attention it saves) and the
rest (JavaScript, WebGPU's host side, copies, waits). In the plain runs it
also times, per token, the attention backend's recording calls (recordStep of
every layer, until each returns: JavaScript and WebGPU calls, no waits), and
counts per token the buffer copies, queue writes, submits and bind groups
created, with the host time of GPUCommandEncoder.finish (where wgpu turns
the recorded passes and copies into commands), its BOS prefill included.
Also reports this adapter's GPU time of an empty pass and of a tiny dispatch.
With --plain, or where the adapter has no timestamp-query, only the plain
runs: the GPU figures are null. Progress goes to stderr.

Options:
  --model PATH          llama2.c .bin or Hugging Face directory
                        (default: models/stories260K/stories260K.bin)
  --policies LIST       comma-separated policies (default full,quest,freekv);
                        full is always run, first, as the reference; each
                        policy runs once
  --max-tokens N        tokens to generate per run (default 300)
  --budget N            KV tokens attended per step (default 96)
  --page-size N         KV page size in tokens (default 8)
  --tokens-per-wait N   decode steps per host wait (default 8)
  --plain               the plain runs only (no timestamp queries)
  --json                print one JSON object on stdout
  --help                this text`;

const flags = flagChecks("profile");
const fail: (message: string) => never = flags.fail;
const values = flags.parse(Deno.args, {
  model: { type: "string" },
  policies: { type: "string", default: "full,quest,freekv" },
  "max-tokens": { type: "string", default: "300" },
  budget: { type: "string", default: "96" },
  "page-size": { type: "string", default: "8" },
  "tokens-per-wait": { type: "string", default: "8" },
  plain: { type: "boolean", default: false },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}
const maxTokens = flags.intFlag("max-tokens", values["max-tokens"], 1)!;
const tokensPerWait = flags.intFlag("tokens-per-wait", values["tokens-per-wait"], 1)!;
const retrieval = flags.retrieval({
  budget: flags.intFlag("budget", values.budget, 1),
  pageSize: flags.intFlag("page-size", values["page-size"], 1),
});
const requested = values.policies!.split(",").map((s) => s.trim()).filter(Boolean);
for (const p of requested) {
  if (p !== "dense" && !POLICIES.includes(p as PolicyName)) {
    fail(
      `--policies must list names from ${POLICIES.join(", ")}, dense: received ${
        JSON.stringify(p)
      }`,
    );
  }
}
// Each policy once: a run's calls are counted under its name.
const policies = ["full", ...new Set(requested.filter((p) => p !== "full"))];
const progress = (m: string) => console.error(`profile: ${m}`);

const modelPath = values.model ?? "models/stories260K/stories260K.bin";
let loaded: LoadedModel;
try {
  loaded = await loadModel(modelPath, {
    tokenizer: values.model === undefined ? "models/stories260K/tok512.bin" : undefined,
  });
} catch (error) {
  fail((error as Error).message);
}
const { config, weights } = loaded;
const maxSeqLen = Math.min(config.maxSeqLen, maxTokens + 1);

using gpu = await requestGpu();
const device = gpu.device;
// Timestamp queries around every pass, unless asked not to or not offered.
const timed = !values.plain && gpu.timestamps;
if (!values.plain && !timed) {
  progress(`the adapter (${gpu.description}) has no timestamp-query: plain runs only`);
}
let floors: { passNs: number; dispatchNs: number } | null = null;
if (timed) {
  progress("measuring the floors of a pass and a dispatch");
  floors = await measureFloors(device);
}

/** A model of `policy` decoding through the engine (or the dense backend). */
function modelFor(policy: string) {
  const backend: AttentionBackend = policy === "dense"
    ? createDenseAttentionBackend(device, config, { maxSeqLen })
    : createEngineBackend(device, {
      ...config,
      ...retrieval,
      maxContext: maxSeqLen,
      policy: policy as PolicyName,
      answerLag: tokensPerWait,
    });
  // Host time of the layers' recording: until each recordStep returns (a
  // layer that waits returns at its first wait).
  let recordMs = 0;
  const recordStep = backend.recordStep?.bind(backend);
  if (recordStep) {
    backend.recordStep = (...args) => {
      const t0 = performance.now();
      try {
        return recordStep(...args);
      } finally {
        recordMs += performance.now() - t0;
      }
    };
  }
  const model = createGpuModel(device, weights, { attention: backend, maxSeqLen });
  return {
    model,
    recordMs: () => recordMs,
    [Symbol.dispose]() {
      model[Symbol.dispose]();
      backend[Symbol.dispose]();
    },
  };
}

/** One greedy generation of `policy`. */
async function decode(policy: string): Promise<GenerationResult> {
  using m = modelFor(policy);
  const it = generate(m.model, [config.bosId], { maxTokens, tokensPerWait });
  while (true) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}

/**
 * Greedy generations of every policy in turns of `tokensPerWait` tokens
 * (the order alternating), through `generate` as users run it; each result's
 * times are its own decode steps only.
 */
async function decodeTakingTurns(
  names: string[],
): Promise<{ result: GenerationResult; recordMs: number; calls: CallTotals }[]> {
  const models = names.map(modelFor);
  using counter = installCallCounter();
  try {
    const runs = models.map((m, index) => ({
      name: names[index],
      it: generate(m.model, [config.bosId], { maxTokens, tokensPerWait }),
      result: undefined as GenerationResult | undefined,
    }));
    for (let turn = 0; runs.some((r) => !r.result); turn++) {
      for (const run of turn % 2 ? [...runs].reverse() : runs) {
        counter.current = run.name;
        for (let i = 0; i < tokensPerWait && !run.result; i++) {
          const r = await run.it.next();
          if (r.done) run.result = r.value;
        }
        counter.current = null;
      }
    }
    const calls = counter.totals();
    return runs.map((r, i) => ({
      result: r.result!,
      recordMs: models[i].recordMs(),
      calls: calls.get(r.name) ?? noCalls(),
    }));
  } finally {
    for (const m of models) m[Symbol.dispose]();
  }
}

interface PolicyProfile {
  policy: string;
  tokens: number;
  tokensPerSecond: number;
  msPerToken: number;
  /** Host time of the layers' recording calls per token, in the plain run. */
  recordMsPerToken: number;
  /**
   * WebGPU calls per token in the plain run (its BOS prefill included):
   * buffer copies, queue writes, submits, bind groups created, and the host
   * milliseconds of `GPUCommandEncoder.finish`.
   */
  callsPerToken: CallTotals;
  /** GPU figures from the timed run; null (and no passes or gaps) without it. */
  gpuMsPerToken: number | null;
  /** GPU wall of the decode command buffers, first pass to last, per token. */
  gpuSpanMsPerToken: number | null;
  passesPerToken: number | null;
  dispatchesPerToken: number | null;
  passes: { label: string; msPerToken: number; passesPerToken: number; dispatches: number }[];
  /** The largest GPU gaps between consecutive passes (copies and barriers between them). */
  gaps: { between: string; msPerToken: number; perToken: number; usEach: number }[];
}

progress(`${policies.join(", ")}: decoding ${maxTokens} tokens each, taking turns`);
const plainRuns = await decodeTakingTurns(policies);
const profiles: PolicyProfile[] = [];
for (const [index, policy] of policies.entries()) {
  const { result: plain, recordMs, calls } = plainRuns[index];
  const plainProfile = {
    policy,
    tokens: plain.stats.decodeSteps,
    tokensPerSecond: plain.stats.decodeTokensPerSecond,
    msPerToken: plain.stats.decodeMs / plain.stats.decodeSteps,
    recordMsPerToken: recordMs / plain.stats.decodeSteps,
    callsPerToken: callsPer(calls, plain.stats.decodeSteps),
  };
  if (!timed) {
    profiles.push({
      ...plainProfile,
      gpuMsPerToken: null,
      gpuSpanMsPerToken: null,
      passesPerToken: null,
      dispatchesPerToken: null,
      passes: [],
      gaps: [],
    });
    continue;
  }
  progress(`${policy}: decoding again with every pass timed`);
  const timer = installPassTimer(device);
  let totals: Map<string, PassTotals>;
  let spans: Map<string, SpanTotals>;
  let gaps: Map<string, GapTotals>;
  let steps: number;
  try {
    const timed = await decode(policy);
    await timer.collect();
    totals = timer.totals();
    spans = timer.spans();
    gaps = timer.gaps();
    steps = timed.stats.decodeSteps;
  } finally {
    timer[Symbol.dispose]();
  }
  // Decode passes only: prefill passes are few and labelled as such.
  const rows = [...totals].filter(([label]) => !label.startsWith("prefill"));
  const sum = (f: (t: PassTotals) => number) => rows.reduce((a, [, t]) => a + f(t), 0);
  profiles.push({
    ...plainProfile,
    gpuMsPerToken: sum((t) => t.ns) / 1e6 / steps,
    gpuSpanMsPerToken: [...spans].filter(([label]) => !label.startsWith("prefill"))
      .reduce((a, [, t]) => a + t.ns, 0) / 1e6 / steps,
    passesPerToken: sum((t) => t.passes) / steps,
    dispatchesPerToken: sum((t) => t.dispatches) / steps,
    passes: rows
      .sort((a, b) => b[1].ns - a[1].ns)
      .map(([label, t]) => ({
        label,
        msPerToken: t.ns / 1e6 / steps,
        passesPerToken: t.passes / steps,
        dispatches: t.dispatches / t.passes,
      })),
    gaps: [...gaps].filter(([between]) => !between.includes("prefill"))
      .sort((a, b) => b[1].ns - a[1].ns)
      .slice(0, 8)
      .map(([between, g]) => ({
        between,
        msPerToken: g.ns / 1e6 / steps,
        perToken: g.count / steps,
        usEach: g.ns / 1e3 / g.count,
      })),
  });
}

const full = profiles[0];
const attentionMs = (p: PolicyProfile) =>
  p.passes.filter((x) => /attention|append/.test(x.label)).reduce((a, x) => a + x.msPerToken, 0);
// What a policy costs beyond full, per token: GPU time in passes (its own
// kernels, less the attention it saves) and the rest of the wall time
// (JavaScript, WebGPU's host side, copies and waits).
// a - b, null where either is (a GPU figure of untimed runs).
const diff = (a: number | null, b: number | null) => a === null || b === null ? null : a - b;
const versusFull = profiles.slice(1).map((p) => ({
  policy: p.policy,
  ratioToFull: p.tokensPerSecond / full.tokensPerSecond,
  extraMsPerToken: p.msPerToken - full.msPerToken,
  extraGpuMsPerToken: diff(p.gpuMsPerToken, full.gpuMsPerToken),
  attentionSavedMsPerToken: timed ? attentionMs(full) - attentionMs(p) : null,
  extraHostMsPerToken: diff(
    diff(p.msPerToken, p.gpuMsPerToken),
    diff(full.msPerToken, full.gpuMsPerToken),
  ),
  extraRecordMsPerToken: p.recordMsPerToken - full.recordMsPerToken,
  extraFinishMsPerToken: p.callsPerToken.finishMs - full.callsPerToken.finishMs,
  addedPasses: p.passes.filter((x) => !full.passes.some((y) => y.label === x.label)),
  // At full's speed times 0.9 a policy may spend this much more per token.
  budgetAt09MsPerToken: full.msPerToken / 0.9 - full.msPerToken,
}));

const report = {
  model: modelPath,
  adapter: gpu.description,
  retrieval,
  maxTokens,
  tokensPerWait,
  floors: floors && { passUs: floors.passNs / 1e3, dispatchUs: floors.dispatchNs / 1e3 },
  policies: profiles,
  versusFull,
};
if (values.json) {
  console.log(JSON.stringify(report, null, 2));
} else {
  const f = (x: number | null, d = 2) => x === null ? "-" : x.toFixed(d);
  console.log(
    floors
      ? `${gpu.description}; floors: a pass ${f(floors.passNs / 1e3, 1)} us, a dispatch ${
        f(floors.dispatchNs / 1e3, 1)
      } us`
      : `${gpu.description}; plain runs only`,
  );
  for (const p of profiles) {
    const gpuPart = timed
      ? `; GPU in passes ${f(p.gpuMsPerToken)} ms/token, first pass to last ${
        f(p.gpuSpanMsPerToken)
      } ms/token; ${f(p.passesPerToken, 1)} passes, ${f(p.dispatchesPerToken, 1)} dispatches/token`
      : "";
    console.log(
      `\n${p.policy}: ${f(p.tokensPerSecond, 1)} tokens/s (${f(p.msPerToken)} ms/token; recording ${
        f(p.recordMsPerToken)
      } ms/token)${gpuPart}`,
    );
    const c = p.callsPerToken;
    console.log(
      `  per token: ${f(c.copies, 1)} copies, ${f(c.writes, 1)} writes, ${
        f(c.submits, 2)
      } submits, ${f(c.bindGroups, 2)} bind groups created; finish ${f(c.finishMs, 3)} ms`,
    );
    for (const x of p.passes) {
      console.log(
        `  ${x.label.padEnd(34)} ${f(x.msPerToken, 3).padStart(7)} ms/token  ${
          f(x.passesPerToken, 2).padStart(6)
        } passes/token  ${f(x.dispatches, 1).padStart(4)} dispatches/pass`,
      );
    }
    if (timed) console.log("  largest gaps between passes (copies, barriers):");
    for (const g of p.gaps) {
      console.log(
        `    ${f(g.msPerToken, 3)} ms/token  ${f(g.perToken, 2)}/token  ${
          f(g.usEach, 0)
        } us each  ${g.between}`,
      );
    }
  }
  for (const v of versusFull) {
    const split = timed
      ? ` = GPU in passes ${f(v.extraGpuMsPerToken)} (attention saves ${
        f(v.attentionSavedMsPerToken)
      }; added passes ${
        v.addedPasses.map((x) => `${x.label} ${f(x.msPerToken)}`).join(", ")
      }) + host and the rest ${f(v.extraHostMsPerToken)}`
      : "";
    console.log(
      `\n${v.policy} vs full: ${f(v.ratioToFull)}x the tokens/s; ${
        v.extraMsPerToken < 0 ? "" : "+"
      }${f(v.extraMsPerToken)} ms/token${split} (recording ${f(v.extraRecordMsPerToken)}, finish ${
        f(v.extraFinishMsPerToken)
      }); 0.9x full allows +${f(v.budgetAt09MsPerToken)}`,
    );
  }
}
