// `deno bench -A bench/recall_bench.ts`: one layer of the recall benchmark
// (8 KV heads x 32 random pages, head_dim 128, page size 32, f32: 8 MiB) by
// each method. The full comparison is `scripts/bench.ts --suite recall`.
import { requestGpu } from "../lib/gpu/device.ts";
import { HostPagePool, type HostPoolLayout } from "../lib/memory/host_pool.ts";
import { createRandom } from "../lib/workloads/random.ts";
import { createRecaller, type RecallerOptions, type RecallJob } from "../lib/memory/recall.ts";

const gpu = await requestGpu().catch(() => null);
const H = 8, D = 128, P = 32, PAGES = 32, POOL_PAGES = 64;

function makePool(layout: HostPoolLayout): HostPagePool {
  const pool = new HostPagePool({
    layers: 1,
    kvHeads: H,
    headDim: D,
    pageSize: P,
    layout,
    chunkPages: POOL_PAGES,
  });
  const rng = createRandom(2);
  const run = new Float32Array(pool.runElements);
  for (let head = 0; head < H; head++) {
    for (let page = 0; page < POOL_PAGES; page++) {
      for (let i = 0; i < run.length; i++) run[i] = rng.normal();
      pool.writeRun({ layer: 0, head, page }, run);
    }
  }
  return pool;
}

const rng = createRandom(3);
const jobs: RecallJob[] = [];
for (let head = 0; head < H; head++) {
  const pages = [...Array(POOL_PAGES).keys()].sort(() => rng.next() - 0.5);
  for (let slot = 0; slot < PAGES; slot++) jobs.push({ layer: 0, head, page: pages[slot], slot });
}
const bytes = jobs.length * 2 * P * D * 4;

if (gpu) {
  const { device } = gpu;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const size = PAGES * P * H * D * 4;
  const caches = [{
    kCache: device.createBuffer({ label: "bench k", size, usage }),
    vCache: device.createBuffer({ label: "bench v", size, usage }),
  }];
  const hnd = makePool("hnd"), nhd = makePool("nhd");
  const target = device.createBuffer({ label: "bench big-write", size: bytes, usage });
  const big = new Uint8Array(bytes);
  const common = { group: "recall 8 MiB", n: 10, warmup: 2 };

  Deno.bench("big-write (upper bound)", { ...common, baseline: true }, async () => {
    device.queue.writeBuffer(target, 0, big);
    device.queue.submit([]);
    await device.queue.onSubmittedWorkDone();
  });
  const variants: Array<[string, Partial<RecallerOptions>]> = [
    ["hnd-double", {}],
    ["hnd-double-mapped", { staging: "mapped" }],
    ["hnd-single", { buffering: "single" }],
  ];
  for (const [name, options] of variants) {
    const recaller = createRecaller(device, hnd, { caches, ...options });
    Deno.bench(name, common, async () => {
      await recaller.recall(jobs).done;
    });
  }
  const fragmented = createRecaller(device, nhd, { caches });
  Deno.bench("nhd-fragmented", { ...common, n: 4 }, async () => {
    await fragmented.recall(jobs).done;
  });
} else {
  Deno.bench("recall (no WebGPU adapter)", { ignore: true }, () => {});
}
