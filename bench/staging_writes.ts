/**
 * What a decode step's recall of scattered runs costs from the first call
 * until the queue is idle, three ways: one `writeBuffer` per run into a
 * staging buffer then two placement copies (K and V part) per run; the runs
 * gathered by JavaScript into one `writeBuffer`, then the same copies (the
 * engine's path for runs that stand alone); and two `writeBuffer` per run
 * straight into the caches. In Deno 2.9 a `mapAsync` call returns once the
 * queue is idle, so a dummy map right after the submit ends the timing.
 *
 * Usage: deno run -A bench/staging_writes.ts [--runs N] [--rounds N] [--json]
 *
 * @module
 */
import { requestGpu } from "../lib/gpu/device.ts";
import { median } from "../lib/gpu/timing.ts";
import { createRandom } from "../lib/workloads/random.ts";
import { flagChecks } from "../scripts/_flags.ts";

const USAGE = `Usage: deno run -A bench/staging_writes.ts [--runs N] [--rounds N] [--json]

Recalls --runs runs of 32 KiB (a page of 32 tokens, 128 dims, K and V, f32)
from random places of a 1 GiB host pool into random places of two 128 MiB
caches, three ways, taking turns round by round (the first two untimed):
per-run writes into a staging buffer, the runs gathered into one write, and
two writes per run straight into the caches; the first two place with two
copies per run. Reports the median milliseconds from the first call until the
queue is idle. Progress goes to stderr.

Options:
  --runs N     runs per recall, 1 to 1024 (default 71: a decode step's recall
               at the Llama-3.1-8B shape, 8 layers, 8K context)
  --rounds N   rounds, at least 3 (default 24)
  --json       print one JSON object on stdout
  --help       this text`;

const flags = flagChecks("staging_writes");
const values = flags.parse(Deno.args, {
  runs: { type: "string", default: "71" },
  rounds: { type: "string", default: "24" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", default: false },
});
if (values.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const runs = flags.intFlag("runs", values.runs, 1)!;
if (runs > 1024) flags.fail(`--runs must be at most 1024: received "${values.runs}"`);
const rounds = flags.intFlag("rounds", values.rounds, 3)!;

const RUN = 32 << 10, HALF = RUN / 2;
const POOL_RUNS = (1 << 30) / RUN, CACHE_PARTS = (128 << 20) / HALF;
using gpu = await requestGpu();
const { device } = gpu;
const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
const kCache = device.createBuffer({ label: "bench k", size: 128 << 20, usage });
const vCache = device.createBuffer({ label: "bench v", size: 128 << 20, usage });
const staging = device.createBuffer({ label: "bench staging", size: runs * RUN, usage });
const idle = device.createBuffer({
  label: "bench idle",
  size: 4,
  usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
});
const pool = new Uint8Array(POOL_RUNS * RUN).fill(1);
const host = new Uint8Array(runs * RUN).fill(1);

type Recall = (from: number[], to: number[]) => void;
const methods: Record<string, Recall> = {
  "write per run": (from, to) => {
    const encoder = device.createCommandEncoder();
    for (let i = 0; i < runs; i++) {
      device.queue.writeBuffer(staging, i * RUN, pool, from[i], RUN);
      encoder.copyBufferToBuffer(staging, i * RUN, kCache, to[i], HALF);
      encoder.copyBufferToBuffer(staging, i * RUN + HALF, vCache, to[i], HALF);
    }
    device.queue.submit([encoder.finish()]);
  },
  "gathered write": (from, to) => {
    const encoder = device.createCommandEncoder();
    for (let i = 0; i < runs; i++) {
      host.set(pool.subarray(from[i], from[i] + RUN), i * RUN);
      encoder.copyBufferToBuffer(staging, i * RUN, kCache, to[i], HALF);
      encoder.copyBufferToBuffer(staging, i * RUN + HALF, vCache, to[i], HALF);
    }
    device.queue.writeBuffer(staging, 0, host, 0, runs * RUN);
    device.queue.submit([encoder.finish()]);
  },
  "two writes per run into the caches": (from, to) => {
    for (let i = 0; i < runs; i++) {
      device.queue.writeBuffer(kCache, to[i], pool, from[i], HALF);
      device.queue.writeBuffer(vCache, to[i], pool, from[i] + HALF, HALF);
    }
    device.queue.submit([]);
  },
};

async function untilIdle(recall: Recall, from: number[], to: number[]): Promise<number> {
  const t0 = performance.now();
  recall(from, to);
  const mapped = idle.mapAsync(GPUMapMode.READ);
  const ms = performance.now() - t0;
  await mapped;
  idle.unmap();
  return ms;
}

const random = createRandom(7);
const times: Record<string, number[]> = {};
const names = Object.keys(methods);
for (let round = 0; round < rounds; round++) {
  const from = Array.from({ length: runs }, () => random.int(POOL_RUNS) * RUN);
  const to = Array.from({ length: runs }, () => random.int(CACHE_PARTS) * HALF);
  const order = round % 2 ? [...names].reverse() : names;
  for (const name of order) {
    const ms = await untilIdle(methods[name], from, to);
    if (round >= 2) (times[name] ??= []).push(ms);
  }
  console.error(`staging_writes: round ${round + 1}/${rounds}`);
}
const rows = names.map((method) => ({ method, median_ms: median(times[method]) }));
for (const b of [kCache, vCache, staging, idle]) b.destroy();
if (values.json) {
  console.log(JSON.stringify({ adapter: gpu.description, runs, run_bytes: RUN, rounds, rows }));
} else {
  console.log(`${gpu.description}: ${runs} runs of ${RUN >> 10} KiB, until the queue is idle`);
  for (const r of rows) console.log(`${r.method.padEnd(36)} ${r.median_ms.toFixed(3)} ms`);
}
