import assert from "node:assert/strict";
import { gpuTest, testGpu } from "./_gpu.ts";
import { createGpuModel } from "../lib/model/gpu_model.ts";
import { generate, generateText } from "../lib/model/generate.ts";
import { loadLlama2c } from "../lib/model/llama2c.ts";
import { loadLlama2cTokenizer } from "../lib/model/tokenizer.ts";
import { createReferenceModel } from "../lib/model/reference.ts";
import { readTrace } from "../lib/workloads/trace.ts";

const MODEL = new URL("../models/stories260K/stories260K.bin", import.meta.url);
const TOKENIZER = new URL("../models/stories260K/tok512.bin", import.meta.url);
const SCRIPT = new URL("../scripts/generate.ts", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;
const LILY = "Once upon a time, there was a little girl named Lily. She loved to play outside";

const weights = await loadLlama2c(MODEL);
const tokenizer = await loadLlama2cTokenizer(TOKENIZER);

gpuTest("generate streams greedy tokens and text with statistics", async ({ device }) => {
  using model = createGpuModel(device, weights);
  const seen: number[] = [];
  let streamed = "";
  const gen = generate(model, [1], { maxTokens: 40, tokenizer });
  let result;
  while (true) {
    const r = await gen.next();
    if (r.done) {
      result = r.value;
      break;
    }
    assert.equal(r.value.index, seen.length);
    assert.equal(r.value.position, 1 + seen.length);
    assert.ok(r.value.ms >= 0);
    seen.push(r.value.token);
    streamed += r.value.text;
  }
  assert.deepEqual(result.tokens, seen);
  assert.equal(result.tokens.length, 40);
  assert.equal(result.stopReason, "max-tokens");
  assert.equal(result.text, streamed);
  assert.equal(result.text, tokenizer.decode([1, ...seen]));
  assert.ok(result.text.startsWith(LILY), result.text);
  const s = result.stats;
  assert.equal(s.promptTokens, 1);
  assert.equal(s.generatedTokens, 40);
  assert.equal(s.decodeSteps, 39);
  assert.equal(s.stepMs.length, 39);
  assert.ok(s.prefillMs > 0 && s.decodeTokensPerSecond > 0 && s.medianStepMs > 0);
  assert.ok(s.totalMs >= s.prefillMs + s.decodeMs - 1);
});

gpuTest("generate stops at stop tokens and at maxSeqLen", async ({ device }) => {
  using model = createGpuModel(device, weights, { maxSeqLen: 10 });
  const greedy = await generateText(model, [1], { maxTokens: 50 });
  assert.equal(greedy.stopReason, "max-seq-len");
  assert.equal(greedy.tokens.length, 10); // positions 1..10, the last one never decoded
  const stopped = await generateText(model, [1], { maxTokens: 50, stopTokens: [greedy.tokens[3]] });
  assert.equal(stopped.stopReason, "stop-token");
  assert.deepEqual(stopped.tokens, greedy.tokens.slice(0, 3));
  const none = await generateText(model, [1], { maxTokens: 0 });
  assert.deepEqual(none.tokens, []);
});

gpuTest("seeded sampling is reproducible, and matches the CPU reference", async ({ device }) => {
  using model = createGpuModel(device, weights);
  const prompt = tokenizer.encode("Once upon a time", { bos: true });
  const opts = { maxTokens: 30, temperature: 0.9, topP: 0.9, seed: 42 };
  const a = await generateText(model, prompt, opts);
  const b = await generateText(model, prompt, opts);
  const c = await generateText(model, prompt, { ...opts, seed: 43 });
  assert.deepEqual(a.tokens, b.tokens);
  assert.notDeepEqual(a.tokens, c.tokens);
  // Same sampler over the CPU reference's logits gives the same tokens.
  const { createSampler } = await import("../lib/model/sampling.ts");
  const ref = createReferenceModel(weights);
  const sampler = createSampler({ temperature: 0.9, topP: 0.9, seed: 42 });
  let logits = new Float32Array() as Float32Array;
  prompt.forEach((t, i) => logits = ref.forward(t, i));
  const expected: number[] = [];
  for (let i = 0; i < 30; i++) {
    const t = sampler.sample(logits);
    if (t === 1 || t === 2) break;
    expected.push(t);
    logits = ref.forward(t, prompt.length + i);
  }
  assert.deepEqual(a.tokens, expected);
});

gpuTest(
  "tokensPerWait: GPU-sampled groups give the CPU path's tokens, one wait per group",
  async ({ device }) => {
    using model = createGpuModel(device, weights);
    const prompt = tokenizer.encode("Once upon a time", { bos: true });
    const cpu = await generateText(model, prompt, { maxTokens: 40, tokensPerWait: 1 });
    assert.equal(cpu.stats.decodeWaits, 39);
    for (const tokensPerWait of [8, 5]) {
      const gpu = await generateText(model, prompt, { maxTokens: 40, tokensPerWait });
      assert.deepEqual(gpu.tokens, cpu.tokens, `tokensPerWait ${tokensPerWait}`);
      assert.equal(gpu.stats.decodeWaits, Math.ceil(39 / tokensPerWait));
      assert.equal(gpu.stats.decodeSteps, 39);
    }
    // Temperature without top-p samples on the GPU with the seeded draws.
    const opts = { maxTokens: 30, temperature: 0.9, seed: 42 };
    const hot = await generateText(model, prompt, { ...opts, tokensPerWait: 8 });
    const hotCpu = await generateText(model, prompt, { ...opts, tokensPerWait: 1 });
    assert.deepEqual(hot.tokens, hotCpu.tokens);
    assert.ok(hot.stats.decodeWaits < hotCpu.stats.decodeWaits);
    // A stop token inside a group ends generation there; the group's later
    // steps ran, so the model's position lies past it.
    const stopped = await generateText(model, prompt, {
      maxTokens: 40,
      stopTokens: [cpu.tokens[10]],
      tokensPerWait: 8,
    });
    assert.equal(stopped.stopReason, "stop-token");
    assert.deepEqual(stopped.tokens, cpu.tokens.slice(0, 10));
    assert.equal(stopped.stats.decodeSteps, 16);
    assert.equal(model.position, prompt.length + 16);
    // maxSeqLen cuts the last group short.
    using short = createGpuModel(device, weights, { maxSeqLen: 10 });
    const capped = await generateText(short, [1], { maxTokens: 50, tokensPerWait: 8 });
    assert.equal(capped.stopReason, "max-seq-len");
    assert.equal(capped.tokens.length, 10);
    assert.equal(capped.stats.decodeWaits, 2);
  },
);

gpuTest("generate rejects bad options before running", async ({ device }) => {
  using model = createGpuModel(device, weights);
  await assert.rejects(
    () => generateText(model, [], {}),
    (e) => e instanceof RangeError && /'prompt' must hold at least one token/.test(e.message),
  );
  await assert.rejects(
    () => generateText(model, [1], { maxTokens: -1 }),
    (e) => e instanceof RangeError && /'maxTokens' must be at least 0: received -1/.test(e.message),
  );
  await assert.rejects(
    () => generateText(model, [1], { temperature: NaN }),
    (e) => e instanceof TypeError && /'temperature' must be a finite number/.test(e.message),
  );
  await assert.rejects(
    () => generateText(model, [1], { tokensPerWait: 0 }),
    (e) =>
      e instanceof RangeError && /'tokensPerWait' must be at least 1: received 0/.test(e.message),
  );
});

async function runScript(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, ...args],
    cwd: ROOT,
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test({
  name: "scripts/generate.ts: text on stdout, stats on stderr, JSON, trace, errors",
  ignore: testGpu === null,
  fn: async () => {
    const plain = await runScript(["--max-tokens", "30"]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.ok(plain.stdout.startsWith(LILY), plain.stdout);
    assert.match(plain.stderr, /30 tokens generated \(max-tokens\); decode [\d.]+ tokens\/s/);

    const trace = await Deno.makeTempFile({ suffix: ".fkvtrace" });
    const json = await runScript([
      "--json",
      "--max-tokens",
      "12",
      "--prompt",
      "Once upon a time",
      "--record-trace",
      trace,
    ]);
    assert.equal(json.code, 0, json.stderr);
    const r = JSON.parse(json.stdout);
    assert.equal(r.policy, "full");
    assert.equal(r.tokens.length, 12);
    assert.equal(r.stats.generatedTokens, 12);
    assert.equal(typeof r.text, "string");
    assert.ok(r.text.length > 0);
    const t = await readTrace(trace);
    assert.equal(t.header.promptLength, r.promptTokens.length);
    assert.equal(t.header.numLayers, 5);
    // every prompt token and every generated token but the last went through the model
    assert.equal(t.numTokens, r.promptTokens.length + 11);
    const ref = createReferenceModel(weights);
    const all = [...r.promptTokens, ...r.tokens];
    let worst = 0;
    for (let i = 0; i < t.numTokens; i++) {
      ref.forward(all[i], i, {
        onQkv: (l, q, k) => {
          for (let j = 0; j < q.length; j++) {
            worst = Math.max(worst, Math.abs(q[j] - t.q(i, l)[j]));
          }
          for (let j = 0; j < k.length; j++) {
            worst = Math.max(worst, Math.abs(k[j] - t.k(i, l)[j]));
          }
        },
      });
    }
    assert.ok(worst < 1e-4, `trace q/k differ from the reference by ${worst}`);
    await Deno.remove(trace);

    // --ignore-eos: the default story ends (stop token) before 400 tokens;
    // with the flag it runs on to --max-tokens.
    const stops = await runScript(["--json", "--max-tokens", "400"]);
    assert.equal(stops.code, 0, stops.stderr);
    const stopped = JSON.parse(stops.stdout);
    assert.equal(stopped.stopReason, "stop-token");
    assert.equal(stopped.ignoreEos, false);
    const runsOn = await runScript(["--json", "--max-tokens", "400", "--ignore-eos"]);
    assert.equal(runsOn.code, 0, runsOn.stderr);
    const ran = JSON.parse(runsOn.stdout);
    assert.equal(ran.stopReason, "max-tokens");
    assert.equal(ran.ignoreEos, true);
    assert.equal(ran.tokens.length, 400);
    assert.deepEqual(ran.tokens.slice(0, stopped.tokens.length), stopped.tokens);

    // Through the engine: a budget below the story length still generates.
    const freekv = await runScript(
      ["--policy", "freekv", "--budget", "64", "--page-size", "8", "--max-tokens", "80"],
    );
    assert.equal(freekv.code, 0, freekv.stderr);
    assert.ok(freekv.stdout.startsWith(LILY), freekv.stdout);
    assert.match(freekv.stderr, /budget 64 \(sink 16, window 16, page 8\); \d+ pages recalled/);
    const unknown = await runScript(["--policy", "magic"]);
    assert.equal(unknown.code, 2);
    assert.match(
      unknown.stderr,
      /--policy must be one of full, streaming, quest, sync-offload, freekv, dense/,
    );
    const small = await runScript(
      ["--policy", "quest", "--budget", "32", "--sink", "16", "--window", "16", "--page-size", "8"],
    );
    assert.equal(small.code, 2);
    assert.match(
      small.stderr,
      /--budget must be at least sink \+ window \+ one page \(40\): received 32/,
    );
    const bad = await runScript(["--max-tokens", "many"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--max-tokens must be an integer of at least 0: received "many"/);
  },
});
