/**
 * What copies between two compute passes cost on the GPU's timeline: pairs
 * of one-dispatch passes with 0, 1, 2, 5 or 10 small `copyBufferToBuffer`
 * between them, the gap from the first pass's end to the second's begin
 * read from timestamp queries. On lavapipe a group of two or more copies
 * costs about the same whatever its size, which is why the engine records
 * the copies of every layer together at the end of a step.
 *
 * Usage: deno run -A bench/copy_groups.ts [--json]
 *
 * @module
 */
import { requestGpu } from "../lib/gpu/device.ts";

if (Deno.args.includes("--help")) {
  console.log(`Usage: deno run -A bench/copy_groups.ts [--json]

Times the GPU gap between two one-dispatch compute passes with 0, 1, 2, 5
and 10 copies of 256 bytes between them (timestamp queries; 200 pairs in one
command buffer per count, 3 rounds, median gap in microseconds). Needs the
adapter's timestamp-query feature.`);
  Deno.exit(0);
}
const json = Deno.args.includes("--json");

using gpu = await requestGpu();
const { device } = gpu;
if (!device.features.has("timestamp-query")) {
  console.error("copy_groups: this adapter has no timestamp-query feature");
  Deno.exit(1);
}
const module = device.createShaderModule({
  code: `@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) i: u32) { a[i] += 1u; }`,
});
const pipeline = device.createComputePipeline({
  layout: "auto",
  compute: { module, entryPoint: "main" },
});
const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const buffers = Array.from({ length: 16 }, () => device.createBuffer({ size: 1024, usage }));
const group = device.createBindGroup({
  layout: pipeline.getBindGroupLayout(0),
  entries: [{ binding: 0, resource: { buffer: buffers[0] } }],
});
const PAIRS = 200;

/** Median gap in microseconds over `PAIRS` pairs with `copies` copies between the passes. */
async function gap(copies: number): Promise<number> {
  const querySet = device.createQuerySet({ type: "timestamp", count: 4 * PAIRS });
  const encoder = device.createCommandEncoder();
  for (let p = 0; p < PAIRS; p++) {
    for (let j = 0; j < 2; j++) {
      const pass = encoder.beginComputePass({
        timestampWrites: {
          querySet,
          beginningOfPassWriteIndex: 4 * p + 2 * j,
          endOfPassWriteIndex: 4 * p + 2 * j + 1,
        },
      });
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(1);
      pass.end();
      if (j > 0) continue;
      for (let c = 0; c < copies; c++) {
        encoder.copyBufferToBuffer(buffers[1 + (c % 7)], 0, buffers[8 + (c % 8)], 0, 256);
      }
    }
  }
  const bytes = 4 * PAIRS * 8;
  const resolve = device.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const read = device.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  encoder.resolveQuerySet(querySet, 0, 4 * PAIRS, resolve, 0);
  encoder.copyBufferToBuffer(resolve, 0, read, 0, bytes);
  device.queue.submit([encoder.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const t = new BigUint64Array(read.getMappedRange());
  const gaps = Array.from({ length: PAIRS }, (_, p) => Number(t[4 * p + 2] - t[4 * p + 1]) / 1e3)
    .sort((a, b) => a - b);
  read.unmap();
  for (const b of [read, resolve]) b.destroy();
  querySet.destroy();
  return gaps[PAIRS >> 1];
}

const counts = [0, 1, 2, 5, 10];
const rounds: number[][] = [];
for (let r = 0; r < 3; r++) {
  const row: number[] = [];
  for (const c of counts) row.push(await gap(c));
  rounds.push(row);
}
const medians = counts.map((_, i) => rounds.map((r) => r[i]).sort((a, b) => a - b)[1]);
if (json) {
  console.log(JSON.stringify(
    {
      adapter: gpu.description,
      pairs: PAIRS,
      gaps_us: Object.fromEntries(counts.map((c, i) => [c, Math.round(medians[i] * 10) / 10])),
    },
    null,
    2,
  ));
} else {
  console.log(`${gpu.description}: GPU gap between two passes, median of ${PAIRS} pairs`);
  counts.forEach((c, i) =>
    console.log(`  ${String(c).padStart(2)} copies: ${medians[i].toFixed(1)} us`)
  );
}
