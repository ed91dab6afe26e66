/**
 * Soak: many decode steps of the attention-only driver at a small shape,
 * sequences recycled (reset + prefill) when they reach maxContext, with
 * host memory (`Deno.memoryUsage()`) and the library's live GPU buffers
 * sampled after every episode, and the statistics checked to add up.
 *
 * Usage: deno run -A scripts/soak.ts [--steps N] [--policy NAME] [--correction MODE] [--json]
 */
import { flagChecks } from "./_flags.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { liveBuffers } from "../lib/gpu/tracking.ts";
import { bytesPerElement } from "../lib/gpu/dtype.ts";
import { createRetrievalEngine } from "../lib/engine/engine.ts";
import {
  CORRECTION_MODES,
  type CorrectionMode,
  type EngineOptions,
  POLICIES,
  type PolicyName,
} from "../lib/engine/options.ts";
import { driveEngine } from "../lib/workloads/driver.ts";
import { createSyntheticSource } from "../lib/workloads/synthetic.ts";

/** What one soak run measured. */
export interface SoakResult {
  steps: number;
  episodes: number;
  seconds: number;
  /** Per episode after it ended: host heap and RSS bytes, live GPU buffers and bytes. */
  samples: { step: number; heapUsed: number; rss: number; gpuBuffers: number; gpuBytes: number }[];
  /** Growth from the end of the warm-up episodes to the end of the run. */
  heapGrowth: number;
  rssGrowth: number;
  gpuBytesGrowth: number;
  pagesRecalled: number;
  bytesRecalled: number;
  pageBytes: number;
  pagesOffloaded: number;
  correctedShare: number;
  /** Live GPU buffers after dispose (must be 0). */
  leakedBuffers: number;
}

/** Runs `steps` decode steps; `onProgress` hears after every episode. */
export async function soak(
  device: GPUDevice,
  options: {
    steps: number;
    policy?: PolicyName;
    correction?: CorrectionMode;
    maxContext?: number;
    /** Episodes before memory must stay flat (default: half of them). */
    warmupEpisodes?: number;
    onProgress?: (done: number, sample: SoakResult["samples"][number]) => void;
  },
): Promise<SoakResult> {
  const shape = { numLayers: 1, numQueryHeads: 4, numKvHeads: 2, headDim: 16 };
  const maxContext = options.maxContext ?? 2048;
  const engineOptions: EngineOptions = {
    ...shape,
    maxContext,
    pageSize: 8,
    budget: 64,
    sink: 16,
    window: 16,
    policy: options.policy ?? "freekv",
    correction: options.correction ?? "resident",
    tau: 0.9,
  };
  const prompt = 64;
  const perEpisode = maxContext - prompt;
  const start = performance.now();
  const before = liveBuffers(device).count;
  const samples: SoakResult["samples"] = [];
  let done = 0, episodes = 0;
  const engine = createRetrievalEngine(device, engineOptions);
  try {
    while (done < options.steps) {
      const steps = Math.min(perEpisode, options.steps - done);
      if (episodes > 0) await engine.reset(0);
      const source = createSyntheticSource({ ...shape, seed: 1 + episodes, shiftProbability: 0.1 });
      await driveEngine(engine, [source], { promptLengths: [prompt], steps });
      done += steps;
      episodes++;
      const m = Deno.memoryUsage();
      const live = liveBuffers(device);
      const sample = {
        step: done,
        heapUsed: m.heapUsed,
        rss: m.rss,
        gpuBuffers: live.count,
        gpuBytes: live.bytes,
      };
      samples.push(sample);
      options.onProgress?.(done, sample);
    }
    const totals = engine.totals();
    // Warm-up: the first half of the episodes by default (scratch buffers
    // grow by powers of two until the largest step of the run was seen).
    const warmup = options.warmupEpisodes ?? Math.max(1, Math.floor(samples.length / 2));
    const warm = samples[Math.min(warmup, samples.length) - 1];
    const last = samples[samples.length - 1];
    const result: SoakResult = {
      steps: done,
      episodes,
      seconds: (performance.now() - start) / 1000,
      samples,
      heapGrowth: last.heapUsed - warm.heapUsed,
      rssGrowth: last.rss - warm.rss,
      gpuBytesGrowth: last.gpuBytes - warm.gpuBytes,
      pagesRecalled: totals.pagesRecalled,
      bytesRecalled: totals.bytesRecalled,
      pageBytes: 2 * engineOptions.pageSize! * shape.headDim * bytesPerElement("f32"),
      pagesOffloaded: totals.pagesOffloaded,
      correctedShare: totals.correctedShare,
      leakedBuffers: 0,
    };
    engine[Symbol.dispose]();
    result.leakedBuffers = liveBuffers(device).count - before;
    return result;
  } finally {
    engine[Symbol.dispose]();
  }
}

const HELP = `Usage: deno run -A scripts/soak.ts [options]

Decodes many steps of the attention-only driver (1 layer, 4 query heads,
2 KV heads, head_dim 16, page 8, budget 64) with sequences recycled at
maxContext, and checks that host memory and the library's GPU buffers stay
flat over the second half of the episodes and that bytes recalled = pages recalled x
page bytes. Progress goes to stderr. Exit status 1 when a check fails.

Options:
  --steps N          decode steps (default 20000)
  --policy NAME      ${POLICIES.join(", ")} (default freekv)
  --correction MODE  ${CORRECTION_MODES.join(", ")} (default resident)
  --max-context N    tokens per episode, prompt included (default 2048)
  --json             one JSON object on stdout
  --help             this text`;

if (import.meta.main) {
  const flags = flagChecks("soak");
  const values = flags.parse(Deno.args, {
    steps: { type: "string" },
    policy: { type: "string" },
    correction: { type: "string" },
    "max-context": { type: "string" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const steps = flags.intFlag("steps", values.steps, 1) ?? 20000;
  const maxContext = flags.intFlag("max-context", values["max-context"], 128) ?? 2048;
  const policy = (values.policy ?? "freekv") as PolicyName;
  if (!POLICIES.includes(policy)) {
    flags.fail(
      `--policy must be one of ${POLICIES.join(", ")}: received ${JSON.stringify(policy)}`,
    );
  }
  const correction = (values.correction ?? "resident") as CorrectionMode;
  if (!CORRECTION_MODES.includes(correction)) {
    flags.fail(
      `--correction must be one of ${CORRECTION_MODES.join(", ")}: received ${
        JSON.stringify(correction)
      }`,
    );
  }
  using gpu = await requestGpu();
  const r = await soak(gpu.device, {
    steps,
    policy,
    correction,
    maxContext,
    onProgress: (done, s) =>
      console.error(
        `soak: ${done}/${steps} steps, heap ${(s.heapUsed / 2 ** 20).toFixed(1)} MiB, rss ${
          (s.rss / 2 ** 20).toFixed(1)
        } MiB, GPU ${s.gpuBuffers} buffers ${(s.gpuBytes / 2 ** 20).toFixed(2)} MiB`,
      ),
  });
  const checks = {
    statsAddUp: r.bytesRecalled === r.pagesRecalled * r.pageBytes,
    gpuFlat: r.gpuBytesGrowth === 0,
    // Host: within 8 MiB of heap and 64 MiB of RSS after warm-up (GC noise).
    heapFlat: r.heapGrowth < 8 * 2 ** 20,
    rssFlat: r.rssGrowth < 64 * 2 ** 20,
    noLeaks: r.leakedBuffers === 0,
  };
  if (values.json) console.log(JSON.stringify({ ...r, checks }, null, 2));
  else {
    console.log(
      `${r.steps} steps in ${r.episodes} episodes, ${r.seconds.toFixed(0)} s; heap growth ${
        (r.heapGrowth / 2 ** 20).toFixed(2)
      } MiB, rss growth ${
        (r.rssGrowth / 2 ** 20).toFixed(2)
      } MiB, GPU growth ${r.gpuBytesGrowth} B; recalled ${r.pagesRecalled} pages = ${r.bytesRecalled} B (page ${r.pageBytes} B); checks ${
        JSON.stringify(checks)
      }`,
    );
  }
  if (!Object.values(checks).every(Boolean)) Deno.exit(1);
}
