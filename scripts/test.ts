/**
 * Runs the test suite: every test file and the doc examples of every public
 * module, each in its own `deno test` process, two at a time.
 *
 * Why not one `deno test` process: Deno 2.9's WebGPU sometimes aborts at
 * process exit ("double free or corruption", signal 6) after a process made
 * several devices, whatever the tests did. A process that died by a signal
 * is run again, up to twice more (one CI run saw it twice in a row on the
 * same file), and the report says so; a test failure is never retried.
 *
 * Usage: deno run -A scripts/test.ts [--jobs N] [FILE...]
 */
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    jobs: { type: "string", default: "2" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(`Usage: deno run -A scripts/test.ts [--jobs N] [FILE...]

Runs tests/*_test.ts and the doc examples of mod.ts and lib/**/*.ts, each in
its own deno test process (default 2 at a time), retrying once a process that
was killed by a signal. Ends with the line "N passed, N failed".`);
  Deno.exit(0);
}

const root = new URL("..", import.meta.url).pathname;

async function listFiles(dir: string, filter: (name: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(`${root}${dir}`)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) out.push(...await listFiles(path, filter));
    else if (filter(entry.name)) out.push(path);
  }
  return out.sort();
}

const files = positionals.length ? positionals : [
  ...await listFiles("tests", (n) => n.endsWith("_test.ts")),
  "mod.ts",
  ...await listFiles("lib", (n) => n.endsWith(".ts")),
];

interface Outcome {
  file: string;
  passed: number;
  failed: number;
  code: number;
  signal: string | null;
  retried: boolean;
  output: string;
}

async function runOnce(file: string): Promise<Omit<Outcome, "retried">> {
  // Test files run their own tests; lib files only their doc examples.
  const args = file.startsWith("tests/")
    ? ["test", "-A", file]
    : ["test", "-A", "--doc", "--permit-no-files", file];
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const { code, signal, stdout, stderr } = await child.output();
  const output = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  const summary = output.match(/(?:ok|FAILED) \| (\d+) passed(?: \(\d+ step\))? \| (\d+) failed/);
  return {
    file,
    passed: summary ? Number(summary[1]) : 0,
    failed: summary ? Number(summary[2]) : 0,
    code,
    signal,
    output,
  };
}

const RUNS_AFTER_A_CRASH = 2;

async function run(file: string): Promise<Outcome> {
  let outcome = await runOnce(file);
  let retried = false;
  for (let i = 0; i < RUNS_AFTER_A_CRASH; i++) {
    if (outcome.signal === null && outcome.code < 128) break;
    console.error(`${file} died (${outcome.signal ?? `exit ${outcome.code}`}); running it again`);
    outcome = await runOnce(file);
    retried = true;
  }
  return { ...outcome, retried };
}

const queue = [...files];
const outcomes: Outcome[] = [];
const jobs = Math.max(1, Number(values.jobs) || 2);
const started = performance.now();
await Promise.all(Array.from({ length: jobs }, async () => {
  while (queue.length) {
    const file = queue.shift()!;
    const o = await run(file);
    outcomes.push(o);
    const ok = o.code === 0 && o.signal === null;
    const ignored = o.output.match(/(\d+) ignored/)?.[1];
    // Per-file lines read like no known runner's (go test's "ok <pkg>" lines
    // made CI take the run for one with no test executed): only the closing
    // line is a verdict. Files without tests print nothing.
    if (ok && o.passed === 0 && o.failed === 0) continue;
    const total = o.passed + o.failed;
    console.log(
      `${String(ok ? o.passed : o.failed).padStart(4)} of ${String(total).padEnd(3)} ${
        ok ? "pass" : "FAIL"
      }  ${file}${ignored && ignored !== "0" ? ` (${ignored} ignored)` : ""}${
        o.retried ? " (rerun after a crash at exit)" : ""
      }`,
    );
    if (!ok) console.log(o.output);
  }
}));
const passed = outcomes.reduce((a, o) => a + o.passed, 0);
const failedFiles = outcomes.filter((o) => o.code !== 0 || o.signal !== null);
const failed = outcomes.reduce((a, o) => a + o.failed, 0) +
  failedFiles.filter((o) => o.failed === 0).length;
console.log(
  `\n${files.length} files in ${((performance.now() - started) / 1000).toFixed(1)} s` +
    (failedFiles.length ? `; failing: ${failedFiles.map((o) => o.file).join(", ")}` : ""),
);
// The plain closing line CI reads as the verdict, alone on the last line.
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failedFiles.length ? 1 : 0);
