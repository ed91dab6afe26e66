/// <reference lib="dom" />
/**
 * The page: the stories260K demo under `full` and `freekv`, the decode
 * benchmark's policies, and the adapter. Query flags: `?quick` (short story,
 * small bench shapes: what the browser test drives), `?tokens=N` (story
 * length), `?bench=0` / `?story=0` (leave that section out).
 *
 * @module
 */

import * as Plot from "@observablehq/plot";
import { type Gpu, requestGpu } from "../mod.ts";
import {
  type DecodeBenchResult,
  DEFAULT_BENCH,
  QUICK_BENCH,
  runDecodeBench,
} from "./decode_bench.ts";
import { type HostWaitTimes, measureHostWait } from "./host_waits.ts";
import { parseStoryModel, runStory, type StoryResult } from "./story.ts";

const params = new URLSearchParams(location.search);
const quick = params.has("quick");
const storyTokens = Number(params.get("tokens") ?? (quick ? 200 : 400));
const benchOptions = quick ? QUICK_BENCH : DEFAULT_BENCH;
const runBench = params.get("bench") !== "0";
const runStorySection = params.get("story") !== "0";

const $ = <T extends Element = HTMLElement>(selector: string) => {
  const el = document.querySelector<T>(selector);
  if (!el) throw new Error(`the page has no ${selector}`);
  return el;
};
const fmt = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : "–");
const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : "–");

const started = performance.now();
function status(message: string): void {
  $("#status").textContent = message;
  console.info(`freekv page: ${((performance.now() - started) / 1000).toFixed(1)} s: ${message}`);
}

/** Appends a row of cells (first one a header) to a table body. */
function addRow(body: HTMLElement, cells: (string | number)[], attrs: Record<string, string> = {}) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, v);
  cells.forEach((cell, i) => {
    const td = document.createElement(i === 0 ? "th" : "td");
    td.textContent = String(cell);
    tr.append(td);
  });
  body.append(tr);
  return tr;
}

function showAdapter(gpu: Gpu): void {
  const body = $("#adapter-info tbody");
  const info = gpu.adapter.info;
  const l = gpu.device.limits;
  const mib = (x: number) => `${(x / 2 ** 20).toFixed(0)} MiB`;
  const rows: [string, string][] = [
    ["description", gpu.description || "–"],
    ["vendor / architecture", `${info.vendor || "–"} / ${info.architecture || "–"}`],
    ["fallback (software) adapter", String(info.isFallbackAdapter ?? "unknown")],
    ["shader-f16", gpu.f16 ? "yes" : "no (f16 KV uses the packed kernels)"],
    ["timestamp-query", gpu.timestamps ? "yes" : "no (no GPU-timed breakdowns)"],
    ["maxStorageBufferBindingSize", mib(l.maxStorageBufferBindingSize)],
    ["maxBufferSize", mib(l.maxBufferSize)],
    ["maxStorageBuffersPerShaderStage", String(l.maxStorageBuffersPerShaderStage)],
    ["maxComputeWorkgroupStorageSize", `${l.maxComputeWorkgroupStorageSize} bytes`],
    ["maxComputeInvocationsPerWorkgroup", String(l.maxComputeInvocationsPerWorkgroup)],
    ["user agent", navigator.userAgent],
  ];
  for (const r of rows) addRow(body, r);
  // What the limits mean for the engine at the Llama-3.1-8B head shape.
  const tokenBytes = 8 * 128 * 4;
  const limits = [
    `One KV buffer binding holds at most ${
      Math.floor(l.maxStorageBufferBindingSize / tokenBytes)
    } tokens of one layer at 8 KV heads × head_dim 128 in f32: the longest context "full" and "quest" can keep resident; the offload policies keep only the budget on the GPU.`,
    "WebGPU has no streams: recall overlaps compute only because the queue stays busy while JavaScript fills the other staging buffer.",
    "Every GPU-to-JS answer (mapAsync, onSubmittedWorkDone) is a host wait; the policies differ in how many a step waits for (table above).",
    info.isFallbackAdapter || /swiftshader|llvmpipe/i.test(gpu.description)
      ? "This is a software adapter on the CPU: kernels share the cores with JavaScript, so compare ratios, not milliseconds."
      : "Timings on a shared machine are noisy: compare ratios within one run.",
  ];
  for (const text of limits) {
    const li = document.createElement("li");
    li.textContent = text;
    $("#adapter-limits").append(li);
  }
}

async function fetchBytes(url: string): Promise<Uint8Array> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`Cannot fetch ${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

function showStory(result: StoryResult): void {
  for (const policy of ["full", "freekv"] as const) {
    const run = result[policy];
    $(`#story-${policy} .text`).textContent = run.text;
    $(`#story-${policy} .rate`).textContent = `${run.tokens.length} tokens, ${
      fmt(run.tokensPerSecond, 1)
    } tokens/s (median step ${fmt(run.medianStepMs)} ms)`;
  }
  const body = $("#agreement tbody");
  body.textContent = "";
  const n = result.full.tokens.length;
  addRow(body, ["greedy agreement", `first ${result.greedyAgreementTokens} of ${n} tokens`]);
  addRow(body, ["teacher-forced next-token agreement", pct(result.teacherForcedAgreement)]);
  addRow(body, ["mean KL(full ‖ freekv), nats", fmt(result.meanKlNats, 4)]);
  addRow(body, ["head-steps corrected", pct(result.correctedShare)]);
  addRow(body, ["pages recalled", result.pagesRecalled]);
  addRow(body, [
    "decode tokens/s (full / freekv)",
    `${fmt(result.full.tokensPerSecond, 1)} / ${fmt(result.freekv.tokensPerSecond, 1)}`,
  ]);
}

function showBench(result: DecodeBenchResult, wait: HostWaitTimes): void {
  const body = $("#bench tbody");
  body.textContent = "";
  for (const r of result.rows) {
    const tr = addRow(body, [
      r.policy,
      fmt(r.medianMs),
      `${fmt(r.p10Ms)}–${fmt(r.p90Ms)}`,
      `${fmt(r.overFreekv)}×`,
      r.hostWaitsPerStep,
      fmt(r.hostWaitMsPerStep),
      r.measuredWaitsPerStep,
      r.answersPerStep,
      fmt(r.mibRecalledPerStep),
      pct(r.correctedShare),
    ], { "data-policy": r.policy });
    if (r.policy === "freekv") tr.classList.add("highlight");
  }
  for (const s of result.skipped) {
    addRow(body, [s.policy, `skipped: ${s.reason}`], { "data-policy": s.policy });
  }
  const rows = result.rows.map((r) => ({
    ...r,
    waitingMs: r.measuredWaitsPerStep * wait.mapAsyncMs,
  }));
  const plot = Plot.plot({
    width: 720,
    height: 40 + 28 * rows.length,
    marginLeft: 130,
    caption: "Median decode step per policy (bars); the black tick is the measured host waits " +
      "per step × the lone mapAsync round trip on this page.",
    x: { label: "ms per decode step", grid: true },
    y: { label: null, domain: rows.map((r) => r.policy) },
    marks: [
      Plot.barX(rows, {
        x: "medianMs",
        y: "policy",
        fill: (d: { policy: string }) => (d.policy === "freekv" ? "#3a8a3a" : "#9ab"),
        tip: true,
      }),
      Plot.tickX(rows, { x: "waitingMs", y: "policy", stroke: "black", strokeWidth: 2 }),
      Plot.ruleX([0]),
    ],
  });
  $("#bench-plot").replaceChildren(plot);
}

async function storySection(gpu: Gpu): Promise<void> {
  status("Loading stories260K…");
  const [modelBytes, tokBytes] = await Promise.all([
    fetchBytes("models/stories260K/stories260K.bin"),
    fetchBytes("models/stories260K/tok512.bin"),
  ]);
  const model = parseStoryModel(modelBytes, tokBytes);
  const texts = { full: "", freekv: "" };
  const story = await runStory(gpu.device, model, {
    maxTokens: storyTokens,
    onProgress: (m) => status(`Story: ${m}…`),
    onToken: (policy, text) => {
      texts[policy] += text;
      $(`#story-${policy} .text`).textContent = texts[policy];
    },
  });
  const r = story.retrieval;
  $("#story-setup").textContent =
    `Greedy, from BOS, ${storyTokens} tokens; freekv budget ${r.budget}` +
    ` tokens (sink ${r.sink}, window ${r.window}, page ${r.pageSize}), tau ${r.tau}: the same ` +
    `settings as deno task demo${storyTokens === 400 ? "" : " (which makes 400 tokens)"}.`;
  showStory(story);
}

async function benchSection(gpu: Gpu, wait: HostWaitTimes): Promise<void> {
  const o = benchOptions;
  $("#bench-setup").textContent = `${o.numLayers} layers, ${o.numQueryHeads} query heads, ` +
    `${o.numKvHeads} KV heads, head_dim ${o.headDim}, f32; ${o.context}-token synthetic ` +
    `context, budget ${o.budget} (sink ${o.sink}, window ${o.window}, page ${o.pageSize}); ` +
    `median of ${o.steps} steps after ${o.warmup} warm-up, queue drained before the clock ` +
    `stops. Host waits: the engine's count (its answers not ready when needed) and their ` +
    `time; measured: every GPU-to-JS answer the step's calls waited for (recalls and ` +
    `read-backs included, concurrent answers once); asked: also those left running.`;
  const bench = await runDecodeBench(gpu.device, o, (m) => status(`Bench: ${m}…`));
  showBench(bench, wait);
}

async function main(): Promise<void> {
  status("Requesting a WebGPU device…");
  const gpu = await requestGpu({
    onLost: (info) => console.error(`WebGPU device lost: ${info.message}`),
  });
  gpu.device.addEventListener("uncapturederror", (event) => {
    const message = (event as GPUUncapturedErrorEvent).error.message;
    console.error(`WebGPU error: ${message}`);
  });
  showAdapter(gpu);

  status("Measuring a lone host wait…");
  const wait = await measureHostWait(gpu.device);
  $("#host-wait").textContent = `A lone host wait on this page: mapAsync round trip ${
    fmt(wait.mapAsyncMs, 3)
  } ms, onSubmittedWorkDone ${
    fmt(wait.submittedWorkDoneMs, 3)
  } ms (medians of ${wait.samples}). Deno 2.9 answers each in about 11 ms.`;

  // The sections run one after the other; a failure is shown in its section
  // and the page ends in the "error" state, the others still run.
  const failures: string[] = [];
  const section = async (name: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (error) {
      console.error(error);
      failures.push(`${name}: ${(error as Error).message}`);
      const p = document.createElement("p");
      p.className = "failure";
      p.textContent = `Failed: ${(error as Error).message}`;
      $(`#${name}`).append(p);
    }
  };
  if (runStorySection) await section("story", () => storySection(gpu));
  if (runBench) await section("decode", () => benchSection(gpu, wait));
  await gpu.device.queue.onSubmittedWorkDone();
  if (failures.length) {
    status(`Failed: ${failures.join("; ")}`);
    document.body.dataset.state = "error";
  } else {
    status("Done.");
    document.body.dataset.state = "done";
  }
}

main().catch((error) => {
  console.error(error);
  status(`Failed: ${(error as Error).message}`);
  document.body.dataset.state = "error";
});
