// Every script answers a bad flag like generate.ts: one line on stderr that
// names the flag, the rule and the value, exit status 2, before a model is
// loaded or a device made (so it is quick and prints nothing else).
import assert from "node:assert/strict";

const CASES: [script: string, args: string[], says: RegExp][] = [
  ["generate.ts", ["--top-p", "2"], /--top-p must be in \(0, 1\]: received 2/],
  ["generate.ts", ["--tau", "1.5"], /--tau must be in \[-1, 1\].*received "1.5"/],
  [
    "generate.ts",
    ["--budget", "100", "--page-size", "8"],
    /--budget must be a multiple of --page-size \(8\): received 100/,
  ],
  ["generate.ts", ["--bogus"], /Unknown option '--bogus'.*\(see --help\)/],
  [
    "generate.ts",
    ["--tokens-per-wait", "0"],
    /--tokens-per-wait must be an integer of at least 1: received "0"/,
  ],
  ["demo.ts", ["--tau", "5"], /--tau must be in \[-1, 1\].*received "5"/],
  ["demo.ts", ["--max-tokens", "0"], /--max-tokens must be an integer of at least 1: received "0"/],
  [
    "demo.ts",
    ["--budget", "8"],
    /--budget must be at least sink \+ window \+ one page \(16\): received 8/,
  ],
  ["demo.ts", ["--nope"], /Unknown option '--nope'/],
  [
    "accuracy.ts",
    ["--budget", "100"],
    /--budget must be a multiple of --page-size \(32\): received 100/,
  ],
  ["accuracy.ts", ["--tau", "x"], /--tau must be a number: received "x"/],
  ["accuracy.ts", ["--trace", "/nonexistent/trace.bin"], /--trace could not be read/],
  ["accuracy.ts", ["--steps=-3"], /--steps must be an integer of at least 1: received "-3"/],
  ["accuracy.ts", ["--steps", "-3"], /Option '--steps' argument is ambiguous.*\(see --help\)/],
  [
    "bench.ts",
    ["--suite", "nope"],
    /--suite must be one of kernels, recall, decode: received "nope"/,
  ],
  ["bench.ts", ["--quick=3"], /--quick.*\(see --help\)/],
  ["eval.ts", ["--taus", "0.9,2"], /--taus items must be in \[-1, 1\]: received 2/],
  [
    "eval.ts",
    ["--answer-lags", "0"],
    /--answer-lags must be an integer of at least 1: received "0"/,
  ],
  [
    "profile.ts",
    ["--policies", "full,best"],
    /--policies must list names from .*: received "best"/,
  ],
  [
    "profile.ts",
    ["--max-tokens", "0"],
    /--max-tokens must be an integer of at least 1: received "0"/,
  ],
  ["bench/map_costs.ts", ["--mib", "6"], /--mib must be a multiple of 4: received "6"/],
  [
    "bench/gather_threads.ts",
    ["--piece-kib", "3"],
    /--piece-kib must divide 4096: received "3"/,
  ],
  [
    "bench/staging_writes.ts",
    ["--runs", "2000"],
    /--runs must be at most 1024: received "2000"/,
  ],
  ["soak.ts", ["--steps", "0"], /--steps must be an integer of at least 1: received "0"/],
  ["soak.ts", ["--policy", "best"], /--policy must be one of .*: received "best"/],
];

for (const [script, args, says] of CASES) {
  Deno.test(`${script} ${args.join(" ")}: one line, exit 2`, async () => {
    const t0 = performance.now();
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script.includes("/") ? script : `scripts/${script}`, ...args],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const stderr = new TextDecoder().decode(out.stderr).split("\n")
      .filter((l) => l.trim() && !l.includes("XDG_RUNTIME_DIR"));
    assert.equal(out.code, 2, stderr.join("\n"));
    assert.equal(stderr.length, 1, `one line: ${stderr.join(" | ")}`);
    assert.match(stderr[0], new RegExp(`^${script.replace(/^.*\//, "").replace(".ts", "")}: `));
    assert.match(stderr[0], says);
    assert.equal(new TextDecoder().decode(out.stdout), "");
    // No model load, no device: a flag error comes back fast.
    assert.ok(performance.now() - t0 < 30_000);
  });
}
