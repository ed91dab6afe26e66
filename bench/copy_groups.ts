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
import { measureCopyGroups } from "../scripts/_pass_timer.ts";

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
const counts = [0, 1, 2, 5, 10];
const PAIRS = 200;
const medians = await measureCopyGroups(device, counts, PAIRS);
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
