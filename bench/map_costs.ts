/**
 * What filling a GPU buffer through a mapping costs in this runtime, step by
 * step, against `writeBuffer` of the same bytes: `mapAsync(WRITE)`,
 * `getMappedRange`, filling the range from JavaScript, `unmap`, and the GPU
 * copy out of the mapped buffer. If `getMappedRange` and `unmap` copied
 * nothing, a mapped staging buffer would let a recall gather straight into
 * GPU-visible memory, saving the second host copy that `writeBuffer` makes.
 *
 * Usage: deno run -A bench/map_costs.ts [--mib N] [--rounds N] [--json]
 *
 * @module
 */
import { requestGpu } from "../lib/gpu/device.ts";
import { flagChecks } from "../scripts/_flags.ts";

const USAGE = `Usage: deno run -A bench/map_costs.ts [--mib N] [--rounds N] [--json]

Times, round by round (median over the rounds, milliseconds), the steps of
filling one GPU buffer through a mapping: mapAsync(WRITE) of a MAP_WRITE
buffer, getMappedRange of all of it, filling that range from a host array
(one TypedArray.set), unmap, and a copyBufferToBuffer out of it until the GPU
finished; then the same bytes written with writeBuffer in 4 MiB pieces (the
calls, then the wait until the GPU finished). Progress goes to stderr.

Options:
  --mib N      buffer size in MiB, a multiple of 4 (default 32)
  --rounds N   rounds, the first untimed (default 9)
  --json       print one JSON object on stdout
  --help       this text`;

const flags = flagChecks("map_costs");
const values = flags.parse(Deno.args, {
  mib: { type: "string", default: "32" },
  rounds: { type: "string", default: "9" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", default: false },
});
if (values.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const mib = flags.multipleFlag("mib", values.mib, 4)!;
const rounds = flags.intFlag("rounds", values.rounds, 2)!;

using gpu = await requestGpu();
const { device } = gpu;
const size = mib << 20, piece = 4 << 20;
const source = new Uint8Array(size);
for (let i = 0; i < size; i += 4096) source[i] = i & 255;
const target = device.createBuffer({
  label: "map costs target",
  size,
  usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
});
const staging = device.createBuffer({
  label: "map costs staging",
  size,
  usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC,
});
const steps = [
  "map_async",
  "get_mapped_range",
  "fill",
  "unmap",
  "gpu_copy",
  "write_buffer_calls",
  "write_buffer_gpu",
] as const;
const times: Record<(typeof steps)[number], number[]> = Object.fromEntries(
  steps.map((s) => [s, []]),
) as never;
for (let round = 0; round < rounds; round++) {
  console.error(`map_costs: round ${round + 1} of ${rounds}`);
  const mark: number[] = [performance.now()];
  await staging.mapAsync(GPUMapMode.WRITE);
  mark.push(performance.now());
  const range = new Uint8Array(staging.getMappedRange());
  mark.push(performance.now());
  range.set(source);
  mark.push(performance.now());
  staging.unmap();
  mark.push(performance.now());
  const encoder = device.createCommandEncoder({ label: "map costs copy" });
  encoder.copyBufferToBuffer(staging, 0, target, 0, size);
  device.queue.submit([encoder.finish()]);
  await device.queue.onSubmittedWorkDone();
  mark.push(performance.now());
  for (let at = 0; at < size; at += piece) {
    device.queue.writeBuffer(target, at, source, at, piece);
    device.queue.submit([]);
  }
  mark.push(performance.now());
  await device.queue.onSubmittedWorkDone();
  mark.push(performance.now());
  if (round > 0) steps.forEach((s, i) => times[s].push(mark[i + 1] - mark[i]));
}
staging.destroy();
target.destroy();
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const medians = Object.fromEntries(
  steps.map((s) => [s, Math.round(median(times[s]) * 100) / 100]),
) as Record<(typeof steps)[number], number>;
if (values.json) {
  console.log(JSON.stringify({ adapter: gpu.description, bytes: size, rounds, medians }, null, 2));
} else {
  console.log(`${gpu.description}: ${mib} MiB, median of ${rounds - 1} rounds (ms)`);
  for (const s of steps) console.log(`  ${s.padEnd(20)} ${medians[s].toFixed(2)}`);
}
