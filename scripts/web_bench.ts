/**
 * The page's decode benchmark (web/decode_bench.ts) in Deno: the same code,
 * shapes and policy rows as the page, for the two runtimes side by side.
 *
 * Usage: deno run -A scripts/web_bench.ts [--quick] [--json]
 */
import { parseArgs } from "node:util";
import { requestGpu } from "../mod.ts";
import { DEFAULT_BENCH, QUICK_BENCH, runDecodeBench } from "../web/decode_bench.ts";
import { measureHostWait } from "../web/host_waits.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(`Usage: deno run -A scripts/web_bench.ts [--quick] [--json]

Runs the decode benchmark of the page (web/decode_bench.ts) in Deno, with the
page's shapes: by default the quick decode suite's (4 layers, 32 query heads,
8 KV heads, head_dim 128, 4032 tokens, budget 2048); --quick: the small
shapes the page uses under ?quick. Also measures a lone host wait (mapAsync
and onSubmittedWorkDone round trips). Progress on stderr.

Options:
  --quick   small shapes (the page's ?quick)
  --json    print one JSON object instead of the table
  --help    this text`);
  Deno.exit(0);
}

using gpu = await requestGpu();
const wait = await measureHostWait(gpu.device);
const result = await runDecodeBench(
  gpu.device,
  values.quick ? QUICK_BENCH : DEFAULT_BENCH,
  (m) => console.error(`web bench: ${m}`),
);
if (values.json) {
  console.log(JSON.stringify({ adapter: gpu.description, hostWait: wait, ...result }, null, 2));
} else {
  console.log(
    `${gpu.description}; lone host wait: mapAsync ${wait.mapAsyncMs.toFixed(3)} ms, ` +
      `onSubmittedWorkDone ${wait.submittedWorkDoneMs.toFixed(3)} ms`,
  );
  console.log(
    "policy             median ms   p10-p90 ms      x freekv  waits  wait ms  measured  asked",
  );
  for (const r of result.rows) {
    console.log(
      [
        r.policy.padEnd(17),
        r.medianMs.toFixed(2).padStart(10),
        `${r.p10Ms.toFixed(1)}-${r.p90Ms.toFixed(1)}`.padStart(14),
        r.overFreekv.toFixed(2).padStart(10),
        String(r.hostWaitsPerStep).padStart(6),
        r.hostWaitMsPerStep.toFixed(2).padStart(8),
        String(r.measuredWaitsPerStep).padStart(9),
        String(r.answersPerStep).padStart(6),
      ].join(" "),
    );
  }
  for (const s of result.skipped) console.log(`${s.policy}: skipped: ${s.reason}`);
}
