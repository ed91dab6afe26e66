/**
 * The decode-step benchmark of the page, runnable unchanged in a browser and
 * in Deno (`deno run -A scripts/web_bench.ts`): every policy on the same
 * synthetic trace, in one run, on a device the caller owns. It follows
 * `bench/suite_decode.ts` (same policy rows, warm-up, median over steps,
 * queue drained before the clock stops) with shapes as options, and counts
 * the host waits of each step twice: as the engine reports them and as
 * measured from outside by wrapping `mapAsync` / `onSubmittedWorkDone`.
 *
 * Only the module's public API is used (`mod.ts`).
 *
 * @module
 */

import {
  createRetrievalEngine,
  createSyntheticSource,
  type PolicyName,
  takePrompt,
} from "../mod.ts";
import { trackHostWaits } from "./host_waits.ts";

/** Shapes and lengths of one run. */
export interface DecodeBenchOptions {
  numLayers: number;
  numQueryHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Prompt tokens before the timed steps. */
  context: number;
  budget: number;
  sink: number;
  window: number;
  pageSize: number;
  /** Timed steps per policy (after `warmup`). */
  steps: number;
  warmup: number;
  /** Chance per KV head and step that its topic jumps (default 0.15). */
  shiftProbability?: number;
}

/**
 * The default shape: the quick decode suite's (`scripts/bench.ts --suite
 * decode --quick`): Llama-3.1-8B attention heads, 4 layers, 4032 tokens,
 * budget 2048 (sink 512, window 512, 32 pages of 32).
 */
export const DEFAULT_BENCH: DecodeBenchOptions = {
  numLayers: 4,
  numQueryHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  context: 4032,
  budget: 2048,
  sink: 512,
  window: 512,
  pageSize: 32,
  steps: 8,
  warmup: 2,
};

/** A small shape for tests (`?quick` on the page). */
export const QUICK_BENCH: DecodeBenchOptions = {
  numLayers: 2,
  numQueryHeads: 8,
  numKvHeads: 2,
  headDim: 64,
  context: 1024,
  budget: 256,
  sink: 64,
  window: 64,
  pageSize: 16,
  steps: 4,
  warmup: 2,
};

/** The policy rows, as in the decode suite. */
export const BENCH_VARIANTS: readonly {
  name: string;
  policy: PolicyName;
  hostLayout: "hnd" | "nhd";
}[] = [
  { name: "full", policy: "full", hostLayout: "hnd" },
  { name: "streaming", policy: "streaming", hostLayout: "hnd" },
  { name: "quest", policy: "quest", hostLayout: "hnd" },
  { name: "sync-offload-nhd", policy: "sync-offload", hostLayout: "nhd" },
  { name: "sync-offload-hnd", policy: "sync-offload", hostLayout: "hnd" },
  { name: "freekv", policy: "freekv", hostLayout: "hnd" },
];

/** One policy's figures. */
export interface DecodeBenchRow {
  policy: string;
  /** Median wall milliseconds of a decode step (all layers, queue drained). */
  medianMs: number;
  p10Ms: number;
  p90Ms: number;
  /** Host waits per step as the engine counts them (its answers that were not ready; median). */
  hostWaitsPerStep: number;
  /** Milliseconds of those waits per step (median). */
  hostWaitMsPerStep: number;
  /**
   * Host waits per step measured from outside ({@linkcode trackHostWaits}):
   * every GPU-to-JS answer the step's calls waited for, recalls and
   * read-backs included, concurrent answers once (median).
   */
  measuredWaitsPerStep: number;
  /** GPU-to-JS answers a step asked for, waited or left in the background (median). */
  answersPerStep: number;
  /** Median step / freekv's median step. */
  overFreekv: number;
  /** MiB recalled from the host per step. */
  mibRecalledPerStep: number;
  /** Share of checked head-steps corrected (freekv). */
  correctedShare: number;
}

/** What {@linkcode runDecodeBench} returns. */
export interface DecodeBenchResult {
  options: DecodeBenchOptions;
  rows: DecodeBenchRow[];
  /** Policies that could not run on this adapter, with the engine's reason. */
  skipped: { policy: string; reason: string }[];
}

function upload(device: GPUDevice, label: string, data: Float32Array | number): GPUBuffer {
  const buffer = device.createBuffer({
    label,
    size: typeof data === "number" ? data : data.byteLength,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  });
  if (typeof data !== "number") {
    device.queue.writeBuffer(
      buffer,
      0,
      data.buffer as ArrayBuffer,
      data.byteOffset,
      data.byteLength,
    );
  }
  return buffer;
}

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))];
}

/**
 * Runs every policy of {@linkcode BENCH_VARIANTS} on `device` with one
 * synthetic trace; `onProgress` gets a line per phase.
 */
export async function runDecodeBench(
  device: GPUDevice,
  options: Partial<DecodeBenchOptions> = {},
  onProgress: (message: string) => void = () => {},
): Promise<DecodeBenchResult> {
  const o = { ...DEFAULT_BENCH, ...options };
  const shape = {
    numLayers: o.numLayers,
    numQueryHeads: o.numQueryHeads,
    numKvHeads: o.numKvHeads,
    headDim: o.headDim,
  };
  onProgress(`generating a ${o.context}-token synthetic trace`);
  const source = createSyntheticSource({
    ...shape,
    seed: 100,
    shiftProbability: o.shiftProbability ?? 0.15,
  });
  const prompt = takePrompt(source, o.context, { queries: false });
  const total = o.warmup + o.steps;
  const stepBuffers = Array.from(
    { length: total },
    (_, s) =>
      source.next().map((t, l) => ({
        q: upload(device, `web bench q step ${s} layer ${l}`, t.q),
        k: upload(device, `web bench k step ${s} layer ${l}`, t.k),
        v: upload(device, `web bench v step ${s} layer ${l}`, t.v),
      })),
  );
  const out = upload(device, "web bench out", o.numQueryHeads * o.headDim * 4);
  const rows: Omit<DecodeBenchRow, "overFreekv">[] = [];
  const skipped: DecodeBenchResult["skipped"] = [];
  try {
    for (const variant of BENCH_VARIANTS) {
      let engine;
      try {
        engine = createRetrievalEngine(device, {
          ...shape,
          pageSize: o.pageSize,
          budget: o.budget,
          sink: o.sink,
          window: o.window,
          batch: 1,
          maxContext: o.context + total + o.pageSize,
          policy: variant.policy,
          hostLayout: variant.hostLayout,
        });
      } catch (error) {
        if (!(error instanceof RangeError)) throw error;
        skipped.push({ policy: variant.name, reason: error.message });
        onProgress(`skip ${variant.name}: ${error.message}`);
        continue;
      }
      try {
        onProgress(`${variant.name}: prefill`);
        for (let l = 0; l < o.numLayers; l++) {
          await engine.prefill(0, l, { k: prompt[l].k, v: prompt[l].v });
        }
        await engine.drain();
        onProgress(`${variant.name}: ${total} steps`);
        const latencies: number[] = [], waits: number[] = [], waitMs: number[] = [];
        const measured: number[] = [], asked: number[] = [];
        const before = engine.totals();
        for (let s = 0; s < total; s++) {
          if (s === o.warmup) Object.assign(before, engine.totals());
          const t0 = performance.now();
          const tracked = await trackHostWaits(async () => {
            for (let l = 0; l < o.numLayers; l++) {
              await engine.step(l, { ...stepBuffers[s][l], out });
            }
          });
          // As in the decode suite: the clock stops when the queue is empty.
          await device.queue.onSubmittedWorkDone();
          const ms = performance.now() - t0;
          const stats = engine.lastStepStats()!;
          if (s >= o.warmup) {
            latencies.push(ms);
            waits.push(stats.hostWaits);
            waitMs.push(stats.hostWaitMs);
            measured.push(tracked.waits);
            asked.push(tracked.asked);
          }
        }
        await engine.drain();
        const after = engine.totals();
        const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
        const checks = sum(after.checksPerHead) - sum(before.checksPerHead);
        const corrections = sum(after.correctionsPerHead) - sum(before.correctionsPerHead);
        const row = {
          policy: variant.name,
          medianMs: quantile(latencies, 0.5),
          p10Ms: quantile(latencies, 0.1),
          p90Ms: quantile(latencies, 0.9),
          hostWaitsPerStep: quantile(waits, 0.5),
          hostWaitMsPerStep: quantile(waitMs, 0.5),
          measuredWaitsPerStep: quantile(measured, 0.5),
          answersPerStep: quantile(asked, 0.5),
          mibRecalledPerStep: (after.bytesRecalled - before.bytesRecalled) / o.steps / 2 ** 20,
          correctedShare: checks ? corrections / checks : 0,
        };
        rows.push(row);
        onProgress(
          `${variant.name}: median ${
            row.medianMs.toFixed(2)
          } ms, ${row.hostWaitsPerStep} host waits (measured ${row.measuredWaitsPerStep})`,
        );
      } finally {
        engine[Symbol.dispose]();
      }
    }
  } finally {
    out.destroy();
    for (const step of stepBuffers) {
      for (const layer of step) for (const b of Object.values(layer)) b.destroy();
    }
  }
  const freekv = rows.find((r) => r.policy === "freekv")?.medianMs ?? NaN;
  return {
    options: o,
    rows: rows.map((r) => ({ ...r, overFreekv: r.medianMs / freekv })),
    skipped,
  };
}
