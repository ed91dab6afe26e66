// deno bench -A bench/decode_bench.ts
// One decode step (all layers) per policy on the same synthetic trace:
// Llama-3.1-8B attention shapes, 2 layers, 4K context, budget 2048.
import { requestGpu } from "../lib/gpu/device.ts";
import {
  createRetrievalEngine,
  type PolicyName,
  type RetrievalEngine,
} from "../lib/engine/engine.ts";
import { createSyntheticSource, takePrompt } from "../lib/workloads/synthetic.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";

const SHAPE = { numLayers: 2, numQueryHeads: 32, numKvHeads: 8, headDim: 128 };
const CONTEXT = 4096, ITERATIONS = 12, WARMUP = 2;
const gpu = await requestGpu();
const { device } = gpu;
const source = createSyntheticSource({ ...SHAPE, seed: 7, shiftProbability: 0.15 });
const prompt = takePrompt(source, CONTEXT, { queries: false });
const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
// Enough distinct tokens for every iteration of every policy.
const tokens = Array.from({ length: ITERATIONS + WARMUP + 2 }, () =>
  source.next().map((t, l) => ({
    q: createBuffer(device, `bench q ${l}`, usage, t.q),
    k: createBuffer(device, `bench k ${l}`, usage, t.k),
    v: createBuffer(device, `bench v ${l}`, usage, t.v),
  })));
const out = createBuffer(device, "bench out", usage, 32 * 128 * 4);

async function engineFor(policy: PolicyName, hostLayout: "hnd" | "nhd" = "hnd") {
  const engine = createRetrievalEngine(device, {
    ...SHAPE,
    maxContext: CONTEXT + 64,
    policy,
    hostLayout,
  });
  for (let l = 0; l < SHAPE.numLayers; l++) {
    await engine.prefill(0, l, { k: prompt[l].k, v: prompt[l].v });
  }
  await engine.drain();
  return engine;
}

const variants: [string, PolicyName, "hnd" | "nhd"][] = [
  ["full", "full", "hnd"],
  ["streaming", "streaming", "hnd"],
  ["quest", "quest", "hnd"],
  ["sync-offload-nhd", "sync-offload", "nhd"],
  ["sync-offload-hnd", "sync-offload", "hnd"],
  ["freekv", "freekv", "hnd"],
];
for (const [name, policy, layout] of variants) {
  let engine: RetrievalEngine | undefined;
  let step = 0;
  Deno.bench({
    name,
    group: "decode step",
    baseline: name === "freekv",
    n: ITERATIONS,
    warmup: WARMUP,
    async fn(b) {
      engine ??= await engineFor(policy, layout);
      const t = tokens[step++ % tokens.length];
      b.start();
      for (let l = 0; l < SHAPE.numLayers; l++) await engine.step(l, { ...t[l], out });
      await device.queue.onSubmittedWorkDone();
      b.end();
    },
  });
}
