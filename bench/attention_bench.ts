// `deno bench` entries for paged decode attention at Llama-3.1-8B attention
// shapes (32 query heads, 8 KV heads, head_dim 128, page 32), batch 1, and
// the streaming-read roofline. Each iteration records several layers (each
// with its own caches and page tables) into one command buffer, submits and
// waits for the queue: Deno's queue wait has a coarse granularity (about
// 10 ms), so one ~5 ms layer alone would measure the wait. Divide by the
// layer count in the name for one layer; `bench/kernels_attention.ts`
// reports GPU-timed GB/s instead. Skipped when no WebGPU adapter exists.
import { type AttentionPlan, createPagedAttention } from "../lib/kernels/attention.ts";
import { type Gpu, requestGpu } from "../lib/gpu/device.ts";
import type { KvDtype } from "../lib/gpu/dtype.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";
import { createStreamRead } from "../lib/kernels/roofline.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";

const HQ = 32, HKV = 8, D = 128, P = 32, LAYERS = 8;
// Layers per iteration: ~8 MiB to 64 MiB of K/V each, at most ~512 MiB in all.
const layersFor = (tokens: number) => (tokens <= 2048 ? LAYERS : 2);
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

function attentionLayers(
  device: GPUDevice,
  dtype: KvDtype,
  tokens: number,
  count: number,
  seed: number,
) {
  const rng = createRandom(seed);
  const numPages = tokens / P, numSlots = numPages + 4;
  const attention = createPagedAttention(device, {
    numQueryHeads: HQ,
    numKvHeads: HKV,
    headDim: D,
    pageSize: P,
    dtype,
  });
  const init = randomNormalArray(rng, numSlots * P * HKV * D);
  const data = dtype === "f16" ? Float16Array.from(init) : init;
  const q = createBuffer(device, "bench q", STORAGE, randomNormalArray(rng, HQ * D));
  const out = createBuffer(device, "bench out", STORAGE, HQ * D * 4);
  const layers: Array<{ plan: AttentionPlan; k: GPUBuffer; v: GPUBuffer }> = [];
  for (let l = 0; l < count; l++) {
    const pageTable = new Uint32Array(HKV * numPages);
    for (let h = 0; h < HKV; h++) {
      const start = rng.int(numSlots);
      for (let p = 0; p < numPages; p++) pageTable[h * numPages + p] = (start + 7 * p) % numSlots;
    }
    layers.push({
      plan: attention.plan({
        pageTable,
        numPages: [numPages],
        lastPageLen: [P],
        maxPages: numPages,
        numSlots,
      }),
      k: createBuffer(device, `bench k ${l}`, STORAGE, data),
      v: createBuffer(device, `bench v ${l}`, STORAGE, data),
    });
  }
  return (encoder: GPUCommandEncoder) => {
    for (const { plan, k, v } of layers) plan.encode(encoder, { q, kCache: k, vCache: v, out });
  };
}

if (gpu) {
  const { device } = gpu;
  const dtypes: KvDtype[] = ["f32", "f16"];
  for (const tokens of [2048, 8192]) {
    for (const dtype of dtypes) {
      const count = layersFor(tokens);
      const record = attentionLayers(device, dtype, tokens, count, tokens);
      const mib = (2 * tokens * HKV * D * (dtype === "f16" ? 2 : 4)) >> 20;
      Deno.bench({
        name: `paged_attention ${dtype} ${tokens} tokens x ${count} layers (${mib} MiB K/V each)`,
        group: `attention ${tokens}`,
        baseline: dtype === "f32",
        fn: () => run(device, record),
      });
    }
  }

  // The roofline: the same streaming-read kernel as measureReadBandwidth,
  // over 8 x 16 MiB, the K/V bytes of the 2048-token f32 case.
  const bytes = 16 << 20;
  const stream = createStreamRead(device, { workgroupSize: 256 });
  const plan = stream.plan({ bytes, workgroups: 1024 });
  const sink = createBuffer(device, "bench stream sink", STORAGE, 256);
  const sources = Array.from(
    { length: LAYERS },
    (_, i) => createBuffer(device, `bench stream src ${i}`, STORAGE, bytes),
  );
  Deno.bench({
    name: `stream_read roofline ${LAYERS} x 16 MiB`,
    group: "attention 2048",
    fn: () =>
      run(device, (encoder) => {
        for (const source of sources) plan.encode(encoder, { source, sink });
      }),
  });
}
