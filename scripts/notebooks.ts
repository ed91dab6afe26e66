/**
 * Executes the Jupyter Deno notebooks headless and fails on any cell error;
 * with --write it saves their new outputs (the committed notebooks keep
 * their outputs so that they read well on a repository page).
 *
 * Usage: deno run -A scripts/notebooks.ts [--write] [--timeout S] [NOTEBOOK...]
 */
import { parseArgs } from "node:util";

const HELP = `Usage: deno run -A scripts/notebooks.ts [options] [NOTEBOOK...]

Executes every notebook in notebooks/ (or the ones named) headless on a fresh
Deno kernel each, in order, and fails if any cell fails. Prints one line per
notebook with its time, and the failing cell's error. Installs the Deno
Jupyter kernel (deno jupyter --install) when it is missing.

Needs python3 with jupyter_client (Debian: apt-get install -y
--no-install-recommends python3-jupyter-client python3-ipykernel); the cells
run through scripts/notebook_run.py, which collects every output of a cell
(nbconvert --execute loses some under Deno 2.9's kernel).

Options:
  --write        save the executed notebooks (outputs, execution counts)
  --timeout S    seconds a cell may run (default 600)
  --help         this text`;

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    write: { type: "boolean", default: false },
    timeout: { type: "string", default: "600" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}
const timeout = Number(values.timeout);
if (!Number.isFinite(timeout) || timeout <= 0) {
  console.error(
    `notebooks: --timeout must be a positive number of seconds: received ${values.timeout}`,
  );
  Deno.exit(2);
}

const root = new URL("..", import.meta.url).pathname;
const runner = `${root}scripts/notebook_run.py`;

async function run(cmd: string, args: string[], cwd = root) {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output().catch(() => null);
  return out;
}

/** A python3 that can import jupyter_client (the PATH one, else the system one). */
async function findPython(): Promise<string | null> {
  for (const python of ["python3", "/usr/bin/python3"]) {
    const out = await run(python, ["-c", "import jupyter_client"]);
    if (out?.success) return python;
  }
  return null;
}

const python = await findPython();
if (!python) {
  console.error(
    "notebooks: no python3 with jupyter_client; apt-get install -y --no-install-recommends python3-jupyter-client python3-ipykernel",
  );
  Deno.exit(2);
}
const hasKernel = await run(python, [
  "-c",
  "import jupyter_client.kernelspec as k, sys; sys.exit(0 if 'deno' in k.find_kernel_specs() else 1)",
]);
if (!hasKernel?.success) {
  console.error("notebooks: installing the Deno Jupyter kernel (deno jupyter --install)");
  const install = await run(Deno.execPath(), ["jupyter", "--install"]);
  if (!install?.success) {
    console.error(new TextDecoder().decode(install?.stderr));
    Deno.exit(2);
  }
}

const notebooks = positionals.length ? positionals : [...Deno.readDirSync(`${root}notebooks`)]
  .filter((e) => e.isFile && e.name.endsWith(".ipynb"))
  .map((e) => `${root}notebooks/${e.name}`)
  .sort();

interface Report {
  ok: boolean;
  seconds?: number;
  error?: string | null;
  cells?: { id: string; seconds: number; status: string }[];
}

let failed = 0;
const started = performance.now();
for (const notebook of notebooks) {
  const name = notebook.startsWith(root) ? notebook.slice(root.length) : notebook;
  const args = [runner, notebook, "--timeout", String(timeout)];
  if (values.write) args.push("--write");
  const out = await run(python, args, Deno.cwd());
  const stdout = new TextDecoder().decode(out?.stdout ?? new Uint8Array());
  let report: Report;
  try {
    report = JSON.parse(stdout.trim().split("\n").at(-1) ?? "");
  } catch {
    const stderr = new TextDecoder().decode(out?.stderr ?? new Uint8Array());
    report = { ok: false, error: `runner gave no report: ${stdout}${stderr}`.trim() };
  }
  if (!report.ok) failed++;
  const slowest = (report.cells ?? []).toSorted((a, b) => b.seconds - a.seconds)[0];
  // Worded unlike any test runner's lines (go test's "ok <pkg> <time>" made CI
  // read this step as a run with no test): the test command's line is the verdict.
  console.log(
    `${report.ok ? "  ran     " : "  FAILED  "} ${name} in ${report.seconds ?? "-"} s` +
      (slowest ? ` (slowest cell ${slowest.id}: ${slowest.seconds} s)` : "") +
      (report.ok ? (values.write ? ", written" : "") : `\n     ${report.error}`),
  );
}
console.log(
  `notebooks: ${notebooks.length - failed} of ${notebooks.length} ran without error in ${
    ((performance.now() - started) / 1000).toFixed(1)
  } s`,
);
Deno.exit(failed ? 1 : 0);
