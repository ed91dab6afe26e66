/**
 * Which WebGPU calls block the JavaScript thread while GPU work is in
 * flight, and for how long: each call is made right after submitting a
 * compute-heavy command buffer, and the call itself is timed (not its
 * promise). The engine's step ordering rests on these figures: in Deno 2.9
 * on Mesa's adapters `submit`, `mapAsync` and `onSubmittedWorkDone` return
 * only once the queue is idle, whatever buffer they concern, so a decode
 * step makes one such call, after recording, and starts its maps there.
 *
 * Usage: deno run -A bench/blocking_calls.ts [--json]
 *
 * @module
 */
import { requestGpu } from "../lib/gpu/device.ts";

if (Deno.args.includes("--help")) {
  console.log(`Usage: deno run -A bench/blocking_calls.ts [--json]

Times WebGPU calls made while a compute-heavy command buffer runs (the call,
not its promise): writeBuffer, createBindGroup, createBuffer, encoding,
submit, mapAsync (of a buffer of the running work, and of one whose work
finished before), onSubmittedWorkDone. Reports the median of 3 trials in ms
and the busy time (one submit awaited alone) for scale.`);
  Deno.exit(0);
}
const json = Deno.args.includes("--json");

using gpu = await requestGpu();
const { device } = gpu;
const module = device.createShaderModule({
  code: `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  var x = a[g.x];
  for (var i = 0u; i < 20000u; i++) { x = x * 1.0001 + 0.5; }
  a[g.x] = x;
}`,
});
const pipeline = device.createComputePipeline({
  layout: "auto",
  compute: { module, entryPoint: "main" },
});
const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const work = device.createBuffer({ size: 64 * 64 * 4, usage });
const other = device.createBuffer({ size: 1 << 20, usage });
const group = device.createBindGroup({
  layout: pipeline.getBindGroupLayout(0),
  entries: [{ binding: 0, resource: { buffer: work } }],
});
const readback = () =>
  device.createBuffer({ size: 256, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });

/** A command buffer of four heavy passes, optionally copying into `read`. */
function busy(read?: GPUBuffer): GPUCommandBuffer {
  const encoder = device.createCommandEncoder({ label: "busy" });
  for (let i = 0; i < 4; i++) {
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(64);
    pass.end();
  }
  if (read) encoder.copyBufferToBuffer(work, 0, read, 0, 256);
  return encoder.finish();
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const msOf = (call: () => unknown) => {
  const t0 = performance.now();
  call();
  return performance.now() - t0;
};

// Each case: what it prepares before the busy submit, and the call timed after it.
type Case = { name: string; run: () => Promise<number> };
const afterBusy = (name: string, call: () => unknown): Case => ({
  name,
  run: async () => {
    device.queue.submit([busy()]);
    const ms = msOf(call);
    await device.queue.onSubmittedWorkDone();
    return ms;
  },
});
const cases: Case[] = [
  afterBusy("writeBuffer 64 B", () => device.queue.writeBuffer(other, 0, new Uint32Array(16))),
  afterBusy("writeBuffer 1 MiB", () => device.queue.writeBuffer(other, 0, new Uint8Array(1 << 20))),
  afterBusy("createBindGroup", () =>
    device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: work } }],
    })),
  afterBusy("createBuffer", () => device.createBuffer({ size: 1024, usage }).destroy()),
  afterBusy("encode and finish 4 passes", () => busy()),
  afterBusy("submit (a copy)", () => {
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(work, 0, other, 0, 256);
    device.queue.submit([encoder.finish()]);
  }),
  afterBusy("onSubmittedWorkDone", () => device.queue.onSubmittedWorkDone()),
  {
    name: "mapAsync of a buffer the running work writes",
    run: async () => {
      const read = readback();
      device.queue.submit([busy(read)]);
      let map!: Promise<void>;
      const ms = msOf(() => map = read.mapAsync(GPUMapMode.READ));
      await map;
      read.destroy();
      return ms;
    },
  },
  {
    name: "mapAsync of a buffer whose work finished before",
    run: async () => {
      const read = readback();
      device.queue.submit([busy(read)]);
      await device.queue.onSubmittedWorkDone();
      device.queue.submit([busy()]);
      let map!: Promise<void>;
      const ms = msOf(() => map = read.mapAsync(GPUMapMode.READ));
      await map;
      await device.queue.onSubmittedWorkDone();
      read.destroy();
      return ms;
    },
  },
];

await device.queue.onSubmittedWorkDone();
const busyMs: number[] = [];
for (let i = 0; i < 3; i++) {
  const t0 = performance.now();
  device.queue.submit([busy()]);
  await device.queue.onSubmittedWorkDone();
  busyMs.push(performance.now() - t0);
}
const rows = [];
for (const c of cases) {
  const samples = [];
  for (let i = 0; i < 3; i++) samples.push(await c.run());
  rows.push({ call: c.name, ms: median(samples) });
  console.error(`blocking_calls: ${c.name}: ${median(samples).toFixed(2)} ms`);
}
work.destroy();
other.destroy();
const report = { adapter: gpu.description, busyMs: median(busyMs), rows };
if (json) console.log(JSON.stringify(report, null, 2));
else {
  console.log(`${gpu.description}; the busy command buffer alone: ${report.busyMs.toFixed(1)} ms`);
  for (const r of rows) console.log(`${r.call.padEnd(50)} ${r.ms.toFixed(2).padStart(8)} ms`);
}
