// `deno bench` entries for the selection-side kernels at Llama-3.1-8B
// attention shapes (32 query heads, 8 KV heads, head_dim 128, page 32).
// Each iteration encodes, submits and waits for the queue, so the figures
// include submission overhead (Deno's queue wait has a coarse granularity);
// `bench/kernels_selection.ts` reports GPU-timed GB/s instead.
// Skipped when no WebGPU adapter exists.
import { type Gpu, requestGpu } from "../lib/gpu/device.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import { createPageSelector } from "../lib/kernels/selection.ts";
import { createQuerySimilarity } from "../lib/kernels/similarity.ts";
import { createPageSummarizer } from "../lib/kernels/summaries.ts";

const HQ = 32, HKV = 8, D = 128, P = 32, K = 32;
const STORAGE = GPUBufferUsage.STORAGE;

let gpu: Gpu | null = null;
try {
  gpu = await requestGpu();
} catch {
  gpu = null;
}

async function run(device: GPUDevice, record: (encoder: GPUCommandEncoder) => void): Promise<void> {
  const encoder = device.createCommandEncoder({ label: "bench" });
  record(encoder);
  device.queue.submit([encoder.finish()]);
  await device.queue.onSubmittedWorkDone();
}

if (gpu) {
  const { device } = gpu;
  const rng = createRandom(1);

  for (const tokens of [4096, 32768]) {
    const pages = tokens / P;
    const q = createBuffer(device, "bench q", STORAGE, randomNormalArray(rng, HQ * D));
    const summaries = createBuffer(
      device,
      "bench summaries",
      STORAGE,
      randomNormalArray(rng, pages * HKV * 2 * D),
    );
    const selected = createBuffer(device, "bench selected", STORAGE, HKV * K * 4);
    const selector = createPageSelector(device, { numQueryHeads: HQ, numKvHeads: HKV, headDim: D });
    const plan = selector.plan({
      pageOffset: [0],
      candidateStart: [0],
      candidateEnd: [pages],
      k: K,
    });
    Deno.bench({
      name: `page_select softmax-mean ${tokens} tokens (${pages} pages), k ${K}`,
      group: "selection",
      baseline: tokens === 4096,
      fn: () => run(device, (e) => plan.encode(e, { q, summaries, selected })),
    });
  }

  for (const numJobs of [1, 256]) {
    const kCache = createBuffer(
      device,
      "bench k cache",
      STORAGE,
      Float16Array.from(randomNormalArray(rng, numJobs * P * HKV * D)),
    );
    const summaries = createBuffer(device, "bench summaries", STORAGE, numJobs * HKV * 2 * D * 4);
    const summarizer = createPageSummarizer(device, {
      numKvHeads: HKV,
      headDim: D,
      pageSize: P,
      dtype: "f16",
    });
    const plan = summarizer.plan(
      Array.from({ length: numJobs }, (_, i) => ({ srcSlot: i, dstPage: i, numTokens: P })),
    );
    Deno.bench({
      name: `page_summary minmax f16, ${numJobs} page${numJobs > 1 ? "s" : ""}`,
      group: "summaries",
      baseline: numJobs === 1,
      fn: () => run(device, (e) => plan.encode(e, { kCache, summaries })),
    });
  }

  const n = HQ * D;
  const qNow = createBuffer(device, "bench q now", STORAGE, randomNormalArray(rng, n));
  const qPrev = createBuffer(device, "bench q prev", STORAGE, randomNormalArray(rng, n));
  const cosine = createBuffer(device, "bench cosine", STORAGE, HQ * 4);
  const groupMean = createBuffer(device, "bench group mean", STORAGE, HKV * 4);
  const flags = createBuffer(device, "bench flags", STORAGE, HKV * 4);
  const similarity = createQuerySimilarity(device, {
    numQueryHeads: HQ,
    numKvHeads: HKV,
    headDim: D,
  });
  const plan = similarity.plan({ batch: 1, tau: 0.9 });
  Deno.bench({
    name: "query_similarity batch 1",
    fn: () => run(device, (e) => plan.encode(e, { qNow, qPrev, cosine, groupMean, flags })),
  });
}
