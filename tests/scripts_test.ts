// The command-line scripts: --help everywhere, and the accuracy harness's JSON.
import assert from "node:assert/strict";
import { testGpu } from "./_gpu.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Runs `scripts/NAME`, or a path relative to the repository when it names a folder. */
async function runScript(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script.includes("/") ? script : `scripts/${script}`, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

/** Runs a script (as `runScript`), asserts it exited 0, and parses its stdout as JSON. */
async function runJson(script: string, args: string[]) {
  const r = await runScript(script, args);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

Deno.test("every script answers --help", async () => {
  const scripts = ["generate.ts", "demo.ts", "bench.ts", "accuracy.ts", "test.ts", "profile.ts"];
  for (const script of scripts) {
    const r = await runScript(script, ["--help"]);
    assert.equal(r.code, 0, `${script}: ${r.stderr}`);
    assert.match(r.stdout, /Usage: deno run -A scripts\//, script);
  }
  for (
    const bench of [
      "bench/compare_checkouts.ts",
      "bench/selection_counting.ts",
      "bench/blocking_calls.ts",
      "bench/copy_groups.ts",
      "bench/map_costs.ts",
      "bench/gather_threads.ts",
      "bench/staging_writes.ts",
    ]
  ) {
    const r = await runScript(bench, ["--help"]);
    assert.equal(r.code, 0, `${bench}: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`Usage: deno run -A ${bench}`), bench);
  }
});

Deno.test({
  name: "accuracy harness: full is exact, retrieval beats streaming on attention mass",
  ignore: testGpu === null,
  fn: async () => {
    const report = await runJson("accuracy.ts", [
      "--context",
      "512",
      "--steps",
      "4",
      "--budget",
      "128",
      "--page-size",
      "16",
      "--json",
    ]);
    const row = (v: string) => report.rows.find((x: { variant: string }) => x.variant === v);
    assert.equal(row("full").output_rel_error, 0);
    assert.ok(Math.abs(row("full").attention_mass_recall - 1) < 1e-6);
    assert.ok(
      row("quest/softmax-mean").attention_mass_recall > row("streaming").attention_mass_recall,
    );
    assert.ok(row("freekv/mean").corrected_share >= 0);
    const bad = await runScript("accuracy.ts", ["--budget", "zero"]);
    assert.equal(bad.code, 2);
    assert.match(
      bad.stderr,
      /accuracy: --budget must be an integer of at least 1: received "zero"/,
    );
  },
});

/** profile.ts's JSON for full and `policy` over a short decode (40 tokens, budget 32, page 4). */
async function runProfile(policy: string, extra: string[] = []) {
  return await runJson("profile.ts", [
    ...["--policies", policy, "--max-tokens", "40", "--budget", "32", "--page-size", "4"],
    ...extra,
    "--json",
  ]);
}

Deno.test({
  name: "profile: GPU time per pass label for full and a retrieval policy",
  ignore: testGpu === null,
  fn: async () => {
    const report = await runProfile("quest");
    assert.deepEqual(report.policies.map((p: { policy: string }) => p.policy), ["full", "quest"]);
    for (const p of report.policies) {
      assert.ok(p.tokens > 30 && p.tokensPerSecond > 0 && p.gpuMsPerToken > 0, p.policy);
      // Recording a token's layers takes host time, less than the token.
      assert.ok(p.recordMsPerToken > 0 && p.recordMsPerToken < p.msPerToken, p.policy);
      // The span from a step's first pass to its last holds every pass.
      assert.ok(p.gpuSpanMsPerToken >= p.gpuMsPerToken, p.policy);
      // One attention pass per layer and token (5 layers).
      const attention = p.passes.find((x: { label: string }) =>
        x.label === "freekv paged attention"
      );
      assert.ok(Math.abs(attention.passesPerToken - 5) < 1e-9, p.policy);
      // Gaps: label pairs of consecutive passes, and together no longer than the span.
      assert.ok(p.gaps.length > 0, p.policy);
      const gapMs = p.gaps.reduce((a: number, g: { msPerToken: number }) => a + g.msPerToken, 0);
      assert.ok(gapMs <= p.gpuSpanMsPerToken - p.gpuMsPerToken + 1e-6, `${p.policy} ${gapMs}`);
      for (const g of p.gaps) assert.match(g.between, /^.+ -> .+$/);
      // WebGPU calls of the plain run: a decode submit per token at least,
      // and finish's host time is part of the token's.
      const calls = p.callsPerToken;
      assert.deepEqual(Object.keys(calls), [
        "copies",
        "writes",
        "submits",
        "bindGroups",
        "finishMs",
      ]);
      assert.ok(calls.submits >= 1 && calls.writes > 0, `${p.policy} ${JSON.stringify(calls)}`);
      assert.ok(calls.finishMs > 0 && calls.finishMs < p.msPerToken, p.policy);
    }
    // full copies little more than its sampled tokens back (once per 8
    // tokens); quest also writes its selection's inputs every step.
    const [fullCalls, questCalls] = report.policies.map(
      (p: { callsPerToken: Record<string, number> }) => p.callsPerToken,
    );
    assert.ok(fullCalls.copies > 0 && fullCalls.copies < 0.5, String(fullCalls.copies));
    assert.ok(questCalls.writes > fullCalls.writes, `${questCalls.writes} ${fullCalls.writes}`);
    const [quest] = report.versusFull;
    assert.equal(quest.policy, "quest");
    assert.ok(
      Math.abs(
        quest.extraRecordMsPerToken -
          (report.policies[1].recordMsPerToken - report.policies[0].recordMsPerToken),
      ) < 1e-9,
    );
    assert.ok(
      Math.abs(
        quest.extraFinishMsPerToken -
          (report.policies[1].callsPerToken.finishMs - report.policies[0].callsPerToken.finishMs),
      ) < 1e-9,
    );
    assert.ok(
      quest.addedPasses.some((x: { label: string }) => x.label === "freekv page selection"),
    );
    assert.ok(report.floors.dispatchUs > 0);
    // A pass of one dispatch costs at least that dispatch.
    assert.ok(report.floors.passUs > 0, String(report.floors.passUs));
  },
});

Deno.test({
  name: "compare_checkouts: this checkout against itself, steps alternating",
  ignore: testGpu === null,
  fn: async () => {
    const report = await runJson("bench/compare_checkouts.ts", [
      "--other",
      ".",
      "--context",
      "2112",
      "--layers",
      "1",
      "--steps",
      "2",
      "--json",
    ]);
    assert.equal(report.policy, "freekv");
    assert.ok(report.other_median_ms > 0 && report.this_median_ms > 0);
    assert.ok(report.paired_ratio_median > 0);
  },
});

Deno.test({
  name: "blocking_calls: one timed row per WebGPU call, with the busy time for scale",
  ignore: testGpu === null,
  fn: async () => {
    const report = await runJson("bench/blocking_calls.ts", ["--json"]);
    assert.ok(report.busyMs > 0);
    // The table's shape, not a speed (speeds belong to the benchmark's reader).
    const calls = report.rows.map((x: { call: string }) => x.call);
    for (const call of ["writeBuffer 64 B", "submit (a copy)", "onSubmittedWorkDone"]) {
      assert.ok(calls.includes(call), call);
    }
    for (const row of report.rows) assert.ok(row.ms >= 0 && Number.isFinite(row.ms), row.call);
  },
});

Deno.test({
  name: "profile --plain: tokens/s, recording and call counts without timestamp queries",
  ignore: testGpu === null,
  fn: async () => {
    const report = await runProfile("freekv", ["--plain"]);
    assert.equal(report.floors, null);
    assert.deepEqual(report.policies.map((p: { policy: string }) => p.policy), ["full", "freekv"]);
    for (const p of report.policies) {
      assert.ok(p.tokens > 30 && p.tokensPerSecond > 0 && p.recordMsPerToken > 0, p.policy);
      assert.ok(p.callsPerToken.submits >= 1, p.policy);
      assert.equal(p.gpuMsPerToken, null);
      assert.equal(p.passesPerToken, null);
      assert.deepEqual([p.passes, p.gaps], [[], []]);
    }
    // freekv copies each layer's selection, flags and hits into the step's answer.
    assert.ok(report.policies[1].callsPerToken.copies > report.policies[0].callsPerToken.copies);
    const [freekv] = report.versusFull;
    assert.equal(freekv.extraGpuMsPerToken, null);
    assert.equal(freekv.extraHostMsPerToken, null);
    assert.equal(freekv.attentionSavedMsPerToken, null);
    assert.ok(Number.isFinite(freekv.extraRecordMsPerToken) && freekv.ratioToFull > 0);
    // The text report: no GPU figures, the comparison line still there.
    const text = await runScript("profile.ts", [
      ...["--policies", "freekv,freekv", "--max-tokens", "16", "--plain"],
    ]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /plain runs only/);
    assert.doesNotMatch(text.stdout, /GPU in passes/);
    // A policy named twice runs once.
    assert.equal(text.stdout.match(/^freekv: /gm)?.length, 1);
    assert.match(
      text.stdout,
      /^freekv vs full: [\d.]+x the tokens\/s; [+-][\d.]+ ms\/token \(recording /m,
    );
  },
});

Deno.test({
  name: "recall suite --quick: bytes checked, two methods paired with the writes",
  ignore: testGpu === null,
  fn: async () => {
    // The suite reads recalled runs back and throws on wrong bytes.
    const report = await runJson("bench.ts", ["--suite", "recall", "--quick", "--json"]);
    assert.deepEqual(
      report.paired.map((p: { method: string; placement: string }) => `${p.method} ${p.placement}`),
      [
        "hnd-slots-staged adjacent",
        "hnd-slots-staged scattered",
        "one-buffer-slots-direct adjacent",
        "one-buffer-slots-direct scattered",
      ],
    );
    for (const p of report.paired) {
      assert.ok(p.method_median_ms > 0 && p.share_of_best_write > 0, p.method);
      // The fastest write is the fastest of three, one of them the big write.
      assert.ok(p.best_write_median_ms <= p.big_write_median_ms + 1e-9, p.method);
    }
    const [summary] = report.summary;
    assert.equal(summary.dtype, "f32");
    assert.equal(summary.default_path_share_of_best_write, report.paired[0].share_of_best_write);
    assert.equal(
      summary.one_buffer_slots_share_of_best_write,
      report.paired[2].share_of_best_write,
    );
    assert.equal(
      summary.target_85pct_of_big_write,
      summary.default_path_share_of_best_write >= 0.85,
    );
  },
});

Deno.test({
  name: "map_costs: a median per step of filling a buffer through a mapping, and of writeBuffer",
  ignore: testGpu === null,
  fn: async () => {
    const report = await runJson("bench/map_costs.ts", ["--mib", "4", "--rounds", "2", "--json"]);
    assert.equal(report.bytes, 4 << 20);
    assert.deepEqual(Object.keys(report.medians), [
      "map_async",
      "get_mapped_range",
      "fill",
      "unmap",
      "gpu_copy",
      "write_buffer_calls",
      "write_buffer_gpu",
    ]);
    for (const ms of Object.values(report.medians)) {
      assert.ok(typeof ms === "number" && ms >= 0 && Number.isFinite(ms), String(ms));
    }
  },
});

Deno.test({
  name: "staging_writes: a median for each way of moving a recall's runs",
  ignore: testGpu === null,
  fn: async () => {
    const report = await runJson("bench/staging_writes.ts", [
      "--runs",
      "8",
      "--rounds",
      "3",
      "--json",
    ]);
    assert.equal(report.runs, 8);
    assert.deepEqual(report.rows.map((row: { method: string }) => row.method), [
      "write per run",
      "gathered write",
      "two writes per run into the caches",
    ]);
    for (const row of report.rows) {
      assert.ok(Number.isFinite(row.median_ms) && row.median_ms > 0, String(row.median_ms));
    }
  },
});

Deno.test({
  name: "gather_threads: every method moves the bytes, timed against the contiguous write",
  ignore: testGpu === null,
  fn: async () => {
    const report = await runJson("bench/gather_threads.ts", [
      "--mib",
      "4",
      "--piece-kib",
      "64",
      "--rounds",
      "2",
      "--submit-each",
      "--json",
    ]);
    assert.equal(report.bytes, 4 << 20);
    assert.equal(report.piece_bytes, 64 << 10);
    assert.equal(report.submit_each, true);
    assert.deepEqual(report.rows.map((row: { method: string }) => row.method), [
      "contiguous",
      "one-thread",
      "worker-shared-pool",
      "worker-own-pool",
      "write-per-piece",
    ]);
    for (const row of report.rows) {
      assert.ok(row.median_ms > 0 && Number.isFinite(row.median_ms), row.method);
      assert.ok(row.share_of_contiguous > 0, row.method);
      assert.equal(row.main_wait_ms === null, !row.method.startsWith("worker"), row.method);
    }
    assert.equal(report.rows[0].share_of_contiguous, 1);
    assert.deepEqual(Object.keys(report.host), [
      "gather_ms",
      "gather_us_per_piece",
      "contiguous_copy_ms",
      "placement_encode_ms",
      "placement_encode_us_per_copy",
    ]);
    for (const ms of Object.values(report.host)) {
      assert.ok(typeof ms === "number" && ms >= 0 && Number.isFinite(ms), String(ms));
    }
  },
});

Deno.test({
  name: "copy_groups: a GPU gap per number of copies between two passes",
  ignore: testGpu === null || !testGpu.device.features.has("timestamp-query"),
  fn: async () => {
    const report = await runJson("bench/copy_groups.ts", ["--json"]);
    assert.deepEqual(Object.keys(report.gaps_us), ["0", "1", "2", "5", "10"]);
    for (const us of Object.values(report.gaps_us)) {
      assert.ok(typeof us === "number" && us >= 0 && Number.isFinite(us), String(us));
    }
  },
});
