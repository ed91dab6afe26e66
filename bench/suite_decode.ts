// Decode-step benchmark: all policies on the same synthetic trace, in one
// run, at Llama-3.1-8B attention shapes. Run through scripts/bench.ts.
import { requestGpu } from "../lib/gpu/device.ts";
import {
  createRetrievalEngine,
  type EngineOptions,
  type PolicyName,
  type RetrievalEngine,
} from "../lib/engine/engine.ts";
import { measureReadBandwidth } from "../lib/kernels/roofline.ts";
import { createSyntheticSource, takePrompt, type TokenQkv } from "../lib/workloads/synthetic.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";

/** One row of the decode table. */
export interface DecodeRow {
  policy: string;
  context: number;
  batch: number;
  steps: number;
  median_ms: number;
  p10_ms: number;
  p90_ms: number;
  /** GPU-to-JS answers the engine waited for per step (median). */
  host_waits_per_step: number;
  /** Milliseconds of those waits per step (median). */
  host_wait_ms_per_step: number;
  /** Milliseconds of `beginStep` per step (median): answer, admission, recall issued. */
  begin_ms_per_step: number;
  /** Pages recalled per timed step (mean of the steps' statistics). */
  pages_recalled_per_step: number;
  /** Bytes of those pages per timed step (mean). */
  recalled_bytes_per_step: number;
  corrected_share: number;
  /** Share of corrected heads' fresh pages already on the GPU. */
  cache_hit_rate: number;
}

const SHAPE = { numLayers: 8, numQueryHeads: 32, numKvHeads: 8, headDim: 128 };
const BUDGET = { pageSize: 32, budget: 2048, sink: 512, window: 512 };
// Policy rows: name in the table -> engine options.
type VariantOptions = Partial<EngineOptions> & { policy: PolicyName };
const VARIANTS: { name: string; options: VariantOptions }[] = [
  { name: "full", options: { policy: "full" } },
  { name: "streaming", options: { policy: "streaming" } },
  { name: "quest", options: { policy: "quest" } },
  { name: "sync-offload-nhd", options: { policy: "sync-offload", hostLayout: "nhd" } },
  { name: "sync-offload-hnd", options: { policy: "sync-offload", hostLayout: "hnd" } },
  { name: "freekv-sync", options: { policy: "freekv", correction: "sync" } },
  { name: "freekv", options: { policy: "freekv" } },
  // Token-major GPU slots (slotLayout "nhd"; the default is "hnd", whose offload and
  // recall need no conversion kernels).
  { name: "full-nhd-slots", options: { policy: "full", slotLayout: "nhd" } },
  { name: "quest-nhd-slots", options: { policy: "quest", slotLayout: "nhd" } },
  { name: "sync-offload-nhd-slots", options: { policy: "sync-offload", slotLayout: "nhd" } },
  { name: "freekv-nhd-slots", options: { policy: "freekv", slotLayout: "nhd" } },
];

/**
 * Median step times of quest, freekv and sync-offload (HND) measured with
 * their steps taking turns on the same inputs.
 */
export interface PairedRow {
  context: number;
  batch: number;
  /** Timed steps of each policy (after the warm-up). */
  steps: number;
  quest_median_ms: number;
  freekv_median_ms: number;
  sync_hnd_median_ms: number;
}

const PAIRED = ["quest", "freekv", "sync-offload-hnd"] as const;

function pairedAt(paired: PairedRow[], context: number, batch: number): PairedRow | undefined {
  return paired.find((r) => r.context === context && r.batch === batch);
}

/**
 * One decode step as a decoder records it: begin, every layer (one entry of
 * `layers` each) into one encoder, end (one submit), then the GPU finishes
 * the token. Returns its milliseconds.
 */
export async function timedStep(
  engine: RetrievalEngine,
  layers: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer }[],
  out: GPUBuffer,
): Promise<number> {
  const device = engine.device;
  const t0 = performance.now();
  await engine.beginStep();
  let encoder = device.createCommandEncoder({ label: "bench step" });
  for (let l = 0; l < layers.length; l++) {
    encoder = await engine.recordLayer(encoder, l, { ...layers[l], out });
  }
  engine.endStep(encoder);
  await device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

/** Median milliseconds of a lone GPU-to-JS answer (a 4-byte readback), measured now. */
async function measureHostWait(device: GPUDevice): Promise<number> {
  const src = createBuffer(device, "bench host wait", GPUBufferUsage.COPY_SRC, 4);
  const times: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    await readBuffer(device, src, 4);
    times.push(performance.now() - t0);
  }
  src.destroy();
  return quantile(times, 0.5);
}

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
    : [{ nominal: 8192, batch: 1 }, { nominal: 32768, batch: 1 }];
  const warmup = 2, steps = quick ? 4 : 8;
  // The block whose steps take turns runs longer: its medians decide the
  // paired ratios, and a step there costs a fraction of a second.
  const pairedSteps = 3 * steps;
  const shiftProbability = 0.15;
  log(`${gpu.description}; measuring the streaming-read roofline`);
  const roofline = await measureReadBandwidth(device, {
    bytes: quick ? 32 << 20 : 128 << 20,
    iterations: 5,
  });
  log(`roofline ${roofline.gbps.toFixed(2)} GB/s`);
  const hostWaitMs = await measureHostWait(device);
  log(`a lone host answer takes ${hostWaitMs.toFixed(1)} ms`);
  const rows: DecodeRow[] = [];
  const paired: PairedRow[] = [];
  const skipped: { policy: string; context: number; batch: number; reason: string }[] = [];
  for (const { nominal, batch } of configs) {
    const context = nominal - 64;
    log(`context ${context}, batch ${batch}: generating the trace`);
    const sources = Array.from(
      { length: batch },
      (_, b) => createSyntheticSource({ ...SHAPE, seed: 100 + b, shiftProbability }),
    );
    const prompts = sources.map((s) => takePrompt(s, context, { queries: false }));
    const engineFor = (options: VariantOptions) =>
      createRetrievalEngine(device, {
        ...SHAPE,
        ...BUDGET,
        batch,
        maxContext: nominal,
        ...options,
      });
    const prefill = async (engine: RetrievalEngine) => {
      for (let b = 0; b < batch; b++) {
        for (let l = 0; l < SHAPE.numLayers; l++) {
          await engine.prefill(b, l, { k: prompts[b][l].k, v: prompts[b][l].v });
        }
      }
      await engine.drain();
    };
    const tokens: TokenQkv[][][] = sources.map((s) =>
      Array.from({ length: warmup + pairedSteps }, () => s.next())
    );
    // Batched inputs per step and layer, uploaded once per step like a decoder's.
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const stepBuffers = Array.from(
      { length: warmup + pairedSteps },
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
        engine = engineFor(variant.options);
      } catch (error) {
        if (!(error instanceof RangeError)) throw error;
        skipped.push({ policy: variant.name, context, batch, reason: error.message });
        log(`skip ${variant.name}: ${error.message}`);
        continue;
      }
      try {
        log(`${variant.name}: prefill`);
        await prefill(engine);
        const latencies: number[] = [], waits: number[] = [], waitMs: number[] = [];
        const beginMs: number[] = [];
        let pagesRecalled = 0, bytesRecalled = 0;
        const before = engine.totals();
        for (let s = 0; s < warmup + steps; s++) {
          const ms = await timedStep(engine, stepBuffers[s], out);
          if (s >= warmup) {
            const stats = engine.lastStepStats()!;
            latencies.push(ms);
            waits.push(stats.hostWaits);
            waitMs.push(stats.hostWaitMs);
            beginMs.push(stats.beginMs);
            pagesRecalled += stats.pagesRecalled;
            bytesRecalled += stats.bytesRecalled;
          }
          if (s === warmup - 1) Object.assign(before, engine.totals());
        }
        // Read before draining: a drain takes freekv's pending answer and
        // recalls for a step that never runs.
        const after = engine.totals();
        await engine.drain();
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
          host_waits_per_step: quantile(waits, 0.5),
          host_wait_ms_per_step: quantile(waitMs, 0.5),
          begin_ms_per_step: quantile(beginMs, 0.5),
          pages_recalled_per_step: pagesRecalled / steps,
          recalled_bytes_per_step: bytesRecalled / steps,
          corrected_share: checks ? corrections / checks : 0,
          cache_hit_rate: after.residentHitRate,
        };
        rows.push(row);
        log(
          `${variant.name}: median ${
            row.median_ms.toFixed(1)
          } ms, ${row.host_waits_per_step} host waits/step, recalled ${
            (row.recalled_bytes_per_step / 2 ** 20).toFixed(2)
          } MiB/step, corrected ${(100 * row.corrected_share).toFixed(1)}%`,
        );
      } finally {
        engine[Symbol.dispose]();
      }
    }
    // quest, freekv and sync-offload again, their steps taking turns on the
    // same inputs, so that the machine's drift (2x between runs here) falls
    // on all of them alike.
    log(`paired ${PAIRED.join("/")}: prefill`);
    const pair = PAIRED.map((name) => engineFor(VARIANTS.find((v) => v.name === name)!.options));
    try {
      for (const engine of pair) await prefill(engine);
      const times: number[][] = pair.map(() => []);
      for (let s = 0; s < warmup + pairedSteps; s++) {
        // Rotate which goes first, so that each takes each place in turn.
        for (let j = 0; j < pair.length; j++) {
          const i = (s + j) % pair.length;
          const ms = await timedStep(pair[i], stepBuffers[s], out);
          if (s >= warmup) times[i].push(ms);
        }
      }
      const [quest, freekv, syncHnd] = times.map((t) => quantile(t, 0.5));
      paired.push({
        context,
        batch,
        steps: pairedSteps,
        quest_median_ms: quest,
        freekv_median_ms: freekv,
        sync_hnd_median_ms: syncHnd,
      });
      log(
        `paired: quest ${quest.toFixed(1)} ms, freekv ${freekv.toFixed(1)} ms, sync-offload-hnd ${
          syncHnd.toFixed(1)
        } ms`,
      );
    } finally {
      for (const engine of pair) engine[Symbol.dispose]();
    }
    out.destroy();
    for (const s of stepBuffers) for (const l of s) for (const b of Object.values(l)) b.destroy();
  }
  const ratios = ratiosOf(rows, hostWaitMs, paired);
  if (!json) printTable(rows, roofline.gbps, hostWaitMs, ratios);
  return {
    suite: "decode",
    adapter: gpu.description,
    shape: { ...SHAPE, ...BUDGET, dtype: "f32" },
    roofline_gbps: roofline.gbps,
    host_wait_ms: hostWaitMs,
    rows,
    paired,
    skipped,
    ratios,
  };
}

/** Speed ratios that the targets are stated in, per (context, batch). */
function ratiosOf(
  rows: DecodeRow[],
  hostWaitMs: number,
  paired: PairedRow[],
): Record<string, number>[] {
  const out: Record<string, number>[] = [];
  const keys = new Set(rows.map((r) => `${r.context}x${r.batch}`));
  for (const key of keys) {
    const at = (p: string) => rows.find((r) => `${r.context}x${r.batch}` === key && r.policy === p);
    const f = at("freekv");
    if (!f) continue;
    const ratio = (p: string) => at(p) ? at(p)!.median_ms / f.median_ms : NaN;
    const hnd = at("sync-offload-hnd");
    const pair = pairedAt(paired, f.context, f.batch);
    // The default rows have HND GPU slots; `*-nhd-slots` the same policy with NHD slots.
    const slots = (row: string, nhdRow: string) =>
      at(row) && at(nhdRow) ? at(row)!.median_ms / at(nhdRow)!.median_ms : NaN;
    out.push({
      context: f.context,
      batch: f.batch,
      sync_nhd_over_freekv: ratio("sync-offload-nhd"),
      sync_hnd_over_freekv: ratio("sync-offload-hnd"),
      freekv_over_quest: at("quest") ? f.median_ms / at("quest")!.median_ms : NaN,
      freekv_over_quest_paired: pair ? pair.freekv_median_ms / pair.quest_median_ms : NaN,
      full_over_freekv: ratio("full"),
      // Target: at least 0.8 x (layers - 1) x host_wait_ms.
      sync_hnd_minus_freekv_ms: hnd ? hnd.median_ms - f.median_ms : NaN,
      sync_hnd_minus_freekv_ms_paired: pair ? pair.sync_hnd_median_ms - pair.freekv_median_ms : NaN,
      sync_hnd_over_freekv_paired: pair ? pair.sync_hnd_median_ms / pair.freekv_median_ms : NaN,
      saved_waits_target_ms: 0.8 * (SHAPE.numLayers - 1) * hostWaitMs,
      // HND GPU slots against NHD slots, policy by policy (< 1: HND faster).
      hnd_slots_over_nhd_full: slots("full", "full-nhd-slots"),
      hnd_slots_over_nhd_quest: slots("quest", "quest-nhd-slots"),
      hnd_slots_over_nhd_sync_offload: slots("sync-offload-hnd", "sync-offload-nhd-slots"),
      hnd_slots_over_nhd_freekv: slots("freekv", "freekv-nhd-slots"),
    });
  }
  return out;
}

function printTable(
  rows: DecodeRow[],
  roofline: number,
  hostWaitMs: number,
  ratios: Record<string, number>[],
): void {
  console.log(
    `streaming-read roofline: ${roofline.toFixed(2)} GB/s; a lone host answer: ${
      hostWaitMs.toFixed(1)
    } ms`,
  );
  console.log(
    "policy            context batch  median ms   p10-p90 ms  waits/step  wait ms  begin ms   MiB/step corrected  hit rate",
  );
  for (const r of rows) {
    console.log(
      [
        r.policy.padEnd(17),
        String(r.context).padStart(7),
        String(r.batch).padStart(5),
        r.median_ms.toFixed(1).padStart(10),
        `${r.p10_ms.toFixed(1)}-${r.p90_ms.toFixed(1)}`.padStart(14),
        String(r.host_waits_per_step).padStart(10),
        r.host_wait_ms_per_step.toFixed(1).padStart(8),
        r.begin_ms_per_step.toFixed(2).padStart(9),
        (r.recalled_bytes_per_step / 2 ** 20).toFixed(2).padStart(10),
        `${(100 * r.corrected_share).toFixed(1)}%`.padStart(9),
        `${(100 * r.cache_hit_rate).toFixed(1)}%`.padStart(9),
      ].join(" "),
    );
  }
  for (const r of ratios) {
    console.log(
      `context ${r.context} batch ${r.batch}: sync-nhd/freekv ${
        r.sync_nhd_over_freekv.toFixed(2)
      }x, sync-hnd/freekv ${r.sync_hnd_over_freekv.toFixed(2)}x, freekv/quest ${
        r.freekv_over_quest.toFixed(2)
      }x (taking turns: ${r.freekv_over_quest_paired.toFixed(2)}x), full/freekv ${
        r.full_over_freekv.toFixed(2)
      }x, sync-hnd - freekv ${r.sync_hnd_minus_freekv_ms.toFixed(1)} ms (taking turns: ${
        r.sync_hnd_minus_freekv_ms_paired.toFixed(1)
      } ms; target >= ${r.saved_waits_target_ms.toFixed(1)} ms)`,
    );
  }
}
