// Decode-step benchmark: all policies on the same synthetic trace, in one
// run, at Llama-3.1-8B attention shapes. Run through scripts/bench.ts.
import { requestGpu } from "../lib/gpu/device.ts";
import { createRetrievalEngine, type PolicyName, type StepStats } from "../lib/engine/engine.ts";
import { measureReadBandwidth } from "../lib/kernels/roofline.ts";
import { createSyntheticSource, takePrompt, type TokenQkv } from "../lib/workloads/synthetic.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";

/** One row of the decode table. */
export interface DecodeRow {
  policy: string;
  context: number;
  batch: number;
  steps: number;
  median_ms: number;
  p10_ms: number;
  p90_ms: number;
  selection_ms: number;
  recall_wait_ms: number;
  attention_ms: number;
  other_ms: number;
  pages_recalled_per_step: number;
  recalled_bytes_per_step: number;
  corrected_share: number;
}

const SHAPE = { numLayers: 4, numQueryHeads: 32, numKvHeads: 8, headDim: 128 };
const BUDGET = { pageSize: 32, budget: 2048, sink: 512, window: 512 };
// Policy rows: name in the table -> engine options.
const VARIANTS: { name: string; policy: PolicyName; hostLayout?: "hnd" | "nhd" }[] = [
  { name: "full", policy: "full" },
  { name: "streaming", policy: "streaming" },
  { name: "quest", policy: "quest" },
  { name: "sync-offload-nhd", policy: "sync-offload", hostLayout: "nhd" },
  { name: "sync-offload-hnd", policy: "sync-offload", hostLayout: "hnd" },
  { name: "freekv", policy: "freekv" },
];

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))];
}

function log(message: string): void {
  console.error(`bench decode: ${message}`);
}

/** Runs the suite; prints a table unless `json`. */
export async function runSuite(
  { quick, json }: { quick: boolean; json: boolean },
): Promise<object> {
  using gpu = await requestGpu();
  const { device } = gpu;
  // Nominal contexts; the prompt is 64 tokens shorter so that the steps fit a
  // 128 MiB binding for the resident policies.
  const configs = quick
    ? [{ nominal: 4096, batch: 1 }]
    : [{ nominal: 8192, batch: 1 }, { nominal: 8192, batch: 4 }, { nominal: 32768, batch: 1 }];
  const warmup = 2, steps = quick ? 4 : 8;
  const shiftProbability = 0.15;
  log(`${gpu.description}; measuring the streaming-read roofline`);
  const roofline = await measureReadBandwidth(device, {
    bytes: quick ? 32 << 20 : 128 << 20,
    iterations: 5,
  });
  log(`roofline ${roofline.gbps.toFixed(2)} GB/s`);
  const rows: DecodeRow[] = [];
  const skipped: { policy: string; context: number; batch: number; reason: string }[] = [];
  for (const { nominal, batch } of configs) {
    const context = nominal - 64;
    log(`context ${context}, batch ${batch}: generating the trace`);
    const sources = Array.from(
      { length: batch },
      (_, b) => createSyntheticSource({ ...SHAPE, seed: 100 + b, shiftProbability }),
    );
    const prompts = sources.map((s) => takePrompt(s, context, { queries: false }));
    const tokens: TokenQkv[][][] = sources.map((s) =>
      Array.from({ length: warmup + steps }, () => s.next())
    );
    // Batched inputs per step and layer, uploaded once per step like a decoder's.
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const stepBuffers = Array.from(
      { length: warmup + steps },
      (_, s) =>
        Array.from({ length: SHAPE.numLayers }, (_, l) => {
          const cat = (name: "q" | "k" | "v") => {
            const n = tokens[0][s][l][name].length;
            const x = new Float32Array(batch * n);
            for (let b = 0; b < batch; b++) x.set(tokens[b][s][l][name], b * n);
            return createBuffer(device, `bench ${name} step ${s} layer ${l}`, usage, x);
          };
          return { q: cat("q"), k: cat("k"), v: cat("v") };
        }),
    );
    const out = createBuffer(
      device,
      "bench out",
      usage,
      batch * SHAPE.numQueryHeads * SHAPE.headDim * 4,
    );
    for (const variant of VARIANTS) {
      let engine;
      try {
        engine = createRetrievalEngine(device, {
          ...SHAPE,
          ...BUDGET,
          batch,
          maxContext: nominal,
          policy: variant.policy,
          hostLayout: variant.hostLayout ?? "hnd",
        });
      } catch (error) {
        if (!(error instanceof RangeError)) throw error;
        skipped.push({ policy: variant.name, context, batch, reason: error.message });
        log(`skip ${variant.name}: ${error.message}`);
        continue;
      }
      try {
        log(`${variant.name}: prefill`);
        for (let b = 0; b < batch; b++) {
          for (let l = 0; l < SHAPE.numLayers; l++) {
            await engine.prefill(b, l, { k: prompts[b][l].k, v: prompts[b][l].v });
          }
        }
        await engine.drain();
        const latencies: number[] = [];
        const perStep: StepStats[][] = [];
        const before = engine.totals();
        for (let s = 0; s < warmup + steps; s++) {
          // The last two steps are profiled (wait after attention) for the breakdown.
          engine.profile = s >= warmup + steps - 2;
          const t0 = performance.now();
          const layerStats: StepStats[] = [];
          for (let l = 0; l < SHAPE.numLayers; l++) {
            await engine.step(l, { ...stepBuffers[s][l], out });
            layerStats.push(engine.lastStepStats()!);
          }
          await device.queue.onSubmittedWorkDone();
          const ms = performance.now() - t0;
          if (s >= warmup && !engine.profile) latencies.push(ms);
          if (s >= warmup) perStep.push(layerStats);
          if (s === warmup - 1) Object.assign(before, engine.totals());
        }
        await engine.drain();
        const after = engine.totals();
        const sum = (f: (x: StepStats) => number, which: StepStats[][]) =>
          which.reduce((a, st) => a + st.reduce((c, x) => c + f(x), 0), 0) / which.length;
        const profiled = perStep.slice(-2);
        const selection = sum((x) => x.selectionMs, profiled);
        const recall = sum((x) => x.recallWaitMs, profiled);
        const attention = sum((x) => x.attentionMs, profiled);
        const checks = after.checksPerHead.reduce((a, b) => a + b, 0) -
          before.checksPerHead.reduce((a, b) => a + b, 0);
        const corrections = after.correctionsPerHead.reduce((a, b) => a + b, 0) -
          before.correctionsPerHead.reduce((a, b) => a + b, 0);
        const row: DecodeRow = {
          policy: variant.name,
          context,
          batch,
          steps: latencies.length,
          median_ms: quantile(latencies, 0.5),
          p10_ms: quantile(latencies, 0.1),
          p90_ms: quantile(latencies, 0.9),
          selection_ms: selection,
          recall_wait_ms: recall,
          attention_ms: attention,
          // The rest of a step: appends, summaries, offloads, launches, waits.
          other_ms: Math.max(0, quantile(latencies, 0.5) - selection - recall - attention),
          pages_recalled_per_step: (after.pagesRecalled - before.pagesRecalled) / steps,
          recalled_bytes_per_step: (after.bytesRecalled - before.bytesRecalled) / steps,
          corrected_share: checks ? corrections / checks : 0,
        };
        rows.push(row);
        log(
          `${variant.name}: median ${row.median_ms.toFixed(1)} ms, recalled ${
            (row.recalled_bytes_per_step / 2 ** 20).toFixed(2)
          } MiB/step, corrected ${(100 * row.corrected_share).toFixed(1)}%`,
        );
      } finally {
        engine[Symbol.dispose]();
      }
    }
    out.destroy();
    for (const s of stepBuffers) for (const l of s) for (const b of Object.values(l)) b.destroy();
  }
  const ratios = ratiosOf(rows);
  if (!json) printTable(rows, roofline.gbps, ratios);
  return {
    suite: "decode",
    adapter: gpu.description,
    shape: { ...SHAPE, ...BUDGET, dtype: "f32" },
    roofline_gbps: roofline.gbps,
    rows,
    skipped,
    ratios,
  };
}

/** Speed ratios that the targets are stated in, per (context, batch). */
function ratiosOf(rows: DecodeRow[]): Record<string, number>[] {
  const out: Record<string, number>[] = [];
  const keys = new Set(rows.map((r) => `${r.context}x${r.batch}`));
  for (const key of keys) {
    const at = (p: string) => rows.find((r) => `${r.context}x${r.batch}` === key && r.policy === p);
    const f = at("freekv");
    if (!f) continue;
    const ratio = (p: string) => at(p) ? at(p)!.median_ms / f.median_ms : NaN;
    out.push({
      context: f.context,
      batch: f.batch,
      sync_nhd_over_freekv: ratio("sync-offload-nhd"),
      sync_hnd_over_freekv: ratio("sync-offload-hnd"),
      freekv_over_quest: at("quest") ? f.median_ms / at("quest")!.median_ms : NaN,
      full_over_freekv: ratio("full"),
    });
  }
  return out;
}

function printTable(rows: DecodeRow[], roofline: number, ratios: Record<string, number>[]): void {
  console.log(`streaming-read roofline: ${roofline.toFixed(2)} GB/s`);
  console.log(
    "policy            context batch  median ms   p10-p90 ms     select  recall  attn    other   MiB/step corrected",
  );
  for (const r of rows) {
    console.log(
      [
        r.policy.padEnd(17),
        String(r.context).padStart(7),
        String(r.batch).padStart(5),
        r.median_ms.toFixed(1).padStart(10),
        `${r.p10_ms.toFixed(1)}-${r.p90_ms.toFixed(1)}`.padStart(14),
        r.selection_ms.toFixed(1).padStart(8),
        r.recall_wait_ms.toFixed(1).padStart(7),
        r.attention_ms.toFixed(1).padStart(7),
        r.other_ms.toFixed(1).padStart(7),
        (r.recalled_bytes_per_step / 2 ** 20).toFixed(2).padStart(10),
        `${(100 * r.corrected_share).toFixed(1)}%`.padStart(9),
      ].join(" "),
    );
  }
  for (const r of ratios) {
    console.log(
      `context ${r.context} batch ${r.batch}: sync-nhd/freekv ${
        r.sync_nhd_over_freekv.toFixed(2)
      }x, sync-hnd/freekv ${r.sync_hnd_over_freekv.toFixed(2)}x, freekv/quest ${
        r.freekv_over_quest.toFixed(2)
      }x, full/freekv ${r.full_over_freekv.toFixed(2)}x`,
    );
  }
}
