/**
 * Benchmark suites that print a table, or one JSON object with `--json`.
 * Each suite lives in `bench/suite_<name>.ts` and exports `runSuite`.
 *
 * Usage: deno run -A scripts/bench.ts --suite NAME [--quick] [--json]
 */
import { flagChecks } from "./_flags.ts";

const SUITES = ["kernels", "recall", "decode"];

const flags = flagChecks("bench");
const values = flags.parse(Deno.args, {
  suite: { type: "string", default: "kernels" },
  quick: { type: "boolean", default: false },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
});

if (values.help) {
  console.log(`Usage: deno run -A scripts/bench.ts --suite NAME [--quick] [--json]

Suites: ${SUITES.join(", ")}
  --suite NAME  which suite to run (default: kernels)
  --quick       smaller sizes, finishes in under a minute
  --json        print one JSON object on stdout instead of a table
Progress goes to stderr.`);
  Deno.exit(0);
}
if (!SUITES.includes(values.suite!)) {
  flags.fail(
    `--suite must be one of ${SUITES.join(", ")}: received ${JSON.stringify(values.suite)}`,
  );
}
const suite = await import(`../bench/suite_${values.suite}.ts`);
const result = await suite.runSuite({ quick: values.quick, json: values.json });
if (values.json) console.log(JSON.stringify(result, null, 2));
