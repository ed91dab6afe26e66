/**
 * The showcase: stories260K tells a story with `full` attention and with
 * `freekv` retrieval under a budget smaller than the story, side by side,
 * and reports how far they agree.
 *
 * Usage: deno run -A scripts/demo.ts [--max-tokens N] [--budget N] [--page-size N] [--tau X] [--json]
 */
import { flagChecks } from "./_flags.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { parseStoryModel, runStory } from "../web/story.ts";

const HELP = `Usage: deno run -A scripts/demo.ts [options]

Generates a story with the bundled stories260K model twice, with full
attention and with FreeKV retrieval (budget below the story length), then
reports where the greedy texts diverge, the next-token agreement and the KL
divergence of freekv's next-token distributions from full's under teacher
forcing on full's story, pages recalled and corrections.

Options:
  --max-tokens N   story length in tokens (default 400)
  --budget N       KV tokens attended per step (default 96)
  --page-size N    tokens per page (default 8)
  --tau X          correction threshold (default 0.9)
  --json           print one JSON object instead of the report
  --help           this text`;

const flags = flagChecks("demo");
const { intFlag } = flags;
const values = flags.parse(Deno.args, {
  "max-tokens": { type: "string", default: "400" },
  budget: { type: "string", default: "96" },
  "page-size": { type: "string", default: "8" },
  tau: { type: "string", default: "0.9" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}
const maxTokens = intFlag("max-tokens", values["max-tokens"], 1)!;
const tau = flags.tauFlag("tau", values.tau)!;
const retrieval = flags.retrieval({
  budget: intFlag("budget", values.budget, 1),
  pageSize: intFlag("page-size", values["page-size"], 1),
  tau,
});

const root = new URL("../models/stories260K/", import.meta.url);
const model = parseStoryModel(
  await Deno.readFile(new URL("stories260K.bin", root)),
  await Deno.readFile(new URL("tok512.bin", root)),
);
using gpu = await requestGpu();
// Greedy full and freekv stories, then freekv teacher-forced on full's story.
const result = await runStory(gpu.device, model, {
  maxTokens,
  budget: retrieval.budget,
  pageSize: retrieval.pageSize,
  tau,
  onProgress: (message) => console.error(`demo: ${message}`),
});
const runs = { full: result.full, freekv: result.freekv };
const full = runs.full.tokens;
const prefix = result.greedyAgreementTokens;
const report = {
  model: "stories260K",
  adapter: gpu.description,
  retrieval: { ...retrieval, tau },
  tokens: maxTokens,
  greedy_agreement_tokens: prefix,
  teacher_forced_agreement: result.teacherForcedAgreement,
  mean_kl_nats: result.meanKlNats,
  corrected_share: result.correctedShare,
  pages_recalled: result.pagesRecalled,
  ms_per_token: { full: runs.full.medianStepMs, freekv: runs.freekv.medianStepMs },
  text: { full: runs.full.text, freekv: runs.freekv.text },
};
if (values.json) {
  console.log(JSON.stringify(report, null, 2));
} else {
  console.log(`=== full attention (${full.length} tokens) ===\n${runs.full.text}\n`);
  console.log(
    `=== freekv, budget ${retrieval.budget} tokens (sink ${retrieval.sink}, window ${retrieval.window}, page ${retrieval.pageSize}) ===\n${runs.freekv.text}\n`,
  );
  console.log(
    `The greedy stories agree for the first ${prefix} of ${full.length} tokens; under teacher forcing ` +
      `freekv picks full's next token ${
        (100 * report.teacher_forced_agreement).toFixed(1)
      }% of the time, mean KL of its next-token distribution from full's ${
        report.mean_kl_nats.toFixed(4)
      } nats ` +
      `(${
        (100 * result.correctedShare).toFixed(1)
      }% of head-steps corrected, ${result.pagesRecalled} pages recalled). ` +
      `Median step: full ${runs.full.medianStepMs.toFixed(1)} ms, freekv ${
        runs.freekv.medianStepMs.toFixed(1)
      } ms.`,
  );
}
