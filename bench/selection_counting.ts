/**
 * Where counting top-k stops paying: page selection with `countingTopkMax`
 * 0 (score dispatch + radix-select top-k) against 1024 (one dispatch that
 * scores and ranks by counting, where workgroup memory allows), over a range
 * of candidate counts, at stories260K's and Llama-3.1-8B's heads. Samples of
 * the two alternate, so that the machine's drift falls on both; a row
 * reports each median and the median of the paired ratios (radix over
 * counting: above 1, counting is faster). The selector's default
 * `countingTopkMax` (128) comes from these crossovers.
 *
 * Usage: deno run -A bench/selection_counting.ts [--json]
 *
 * @module
 */
import { requestGpu } from "../lib/gpu/device.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";
import { timeGpuWork } from "../lib/gpu/timing.ts";
import { createPageSelector } from "../lib/kernels/selection.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";

if (Deno.args.includes("--help")) {
  console.log(`Usage: deno run -A bench/selection_counting.ts [--json]

Page selection with countingTopkMax 0 (radix select) and 1024 (counting, one
dispatch where it fits) at 32-480 candidate pages, samples alternating;
prints each median and the paired ratio radix / counting.`);
  Deno.exit(0);
}
const json = Deno.args.includes("--json");
const HEADS = {
  stories260K: { hq: 8, hkv: 4, d: 8, k: 6 },
  "llama-3.1-8b": { hq: 32, hkv: 8, d: 128, k: 32 },
};
const COUNTS = [32, 64, 96, 128, 224, 480];
const ROUNDS = 6, REPS = 10;
const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

using gpu = await requestGpu();
const { device } = gpu;
const rows = [];
for (const [model, { hq, hkv, d, k }] of Object.entries(HEADS)) {
  for (const count of COUNTS) {
    const rng = createRandom(count);
    const q = createBuffer(device, "q", STORAGE, randomNormalArray(rng, hq * d));
    const summaries = createBuffer(
      device,
      "summaries",
      STORAGE,
      randomNormalArray(rng, (count + 3) * hkv * 2 * d),
    );
    const selected = createBuffer(device, "selected", STORAGE, hkv * k * 4);
    const ms: Record<"radix" | "counting", number[]> = { radix: [], counting: [] };
    for (let round = 0; round < ROUNDS; round++) {
      for (const [variant, countingTopkMax] of [["radix", 0], ["counting", 1024]] as const) {
        using selector = createPageSelector(device, {
          numQueryHeads: hq,
          numKvHeads: hkv,
          headDim: d,
          countingTopkMax,
        });
        using plan = selector.plan({
          pageOffset: [0],
          candidateStart: [3],
          candidateEnd: [3 + count],
          k,
        });
        const timing = await timeGpuWork(device, (encoder, ts) => {
          for (let i = 0; i < REPS; i++) {
            plan.encode(encoder, { q, summaries, selected }, {
              timestampWrites: ts && {
                querySet: ts.querySet,
                beginIndex: i === 0 ? ts.beginIndex : undefined,
                endIndex: i === REPS - 1 ? ts.endIndex : undefined,
              },
            });
          }
        }, { iterations: 3 });
        ms[variant].push(timing.medianMs / REPS);
      }
    }
    for (const b of [q, summaries, selected]) b.destroy();
    const row = {
      model,
      candidates: count,
      radix_ms: median(ms.radix),
      counting_ms: median(ms.counting),
      radix_over_counting_paired: median(ms.radix.map((r, i) => r / ms.counting[i])),
    };
    rows.push(row);
    console.error(
      `  ${model} ${count} pages: radix ${row.radix_ms.toFixed(3)} ms, counting ${
        row.counting_ms.toFixed(3)
      } ms, paired radix/counting ${row.radix_over_counting_paired.toFixed(2)}`,
    );
  }
}
if (json) console.log(JSON.stringify({ adapter: gpu.description, rows }, null, 2));
else console.table(rows);
