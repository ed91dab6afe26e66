/**
 * Generates text with a Llama-family model on WebGPU.
 *
 * Usage: deno run -A scripts/generate.ts [--model PATH] [--prompt TEXT] ... (see --help)
 *
 * The generated text (only the continuation, not the prompt) streams to
 * stdout; statistics go to stderr, or with --json everything is one JSON
 * object on stdout.
 */
import { flagChecks } from "./_flags.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { loadModel } from "../lib/model/load.ts";
import { createGpuModel } from "../lib/model/gpu_model.ts";
import {
  type AttentionBackend,
  createDenseAttentionBackend,
  createRecordingBackend,
} from "../lib/model/backends/dense.ts";
import { generate, type GenerationResult } from "../lib/model/generate.ts";
import { createTraceWriter, type TraceWriter } from "../lib/workloads/trace.ts";
import { createEngineBackend, type EngineBackend } from "../lib/model/backends/engine.ts";
import {
  CORRECTION_MODES,
  type CorrectionMode,
  POLICIES,
  type PolicyName,
} from "../lib/engine/engine.ts";
import type { WeightDtype } from "../lib/model/types.ts";

const DEFAULT_MODEL = "models/stories260K/stories260K.bin";
const DEFAULT_TOKENIZER = "models/stories260K/tok512.bin";

const flags = flagChecks("generate");
// Explicit types let TypeScript see that fail() never returns.
const fail: (message: string) => never = flags.fail;
const { intFlag, numFlag } = flags;

const HELP = `Usage: deno run -A scripts/generate.ts [options]

Generates text with a Llama-family model (llama2.c .bin, or a Hugging Face
safetensors directory) on WebGPU. The generated continuation streams to stdout;
statistics go to stderr.

Options:
  --model PATH          model file or directory (default: ${DEFAULT_MODEL})
  --tokenizer PATH      tokenizer (llama2.c .bin or tokenizer.json); default: next to the
                        model (${DEFAULT_TOKENIZER} for the default model)
  --prompt TEXT         prompt (default: empty, generation starts from BOS)
  --max-tokens N        most tokens to generate (default 256)
  --ignore-eos          keep generating past the model's end-of-text tokens (EOS and
                        BOS), so that every policy decodes --max-tokens steps (a
                        speed comparison then covers the same contexts)
  --temperature T       sampling temperature, 0 = greedy (default 0)
  --top-p P             nucleus sampling mass in (0, 1), 1 = off (default 1)
  --seed S              sampler seed (default 0)
  --dtype D             GPU weight storage: f32, f16 or bf16 (default: as loaded)
  --max-seq-len N       longest sequence, prompt included (default: the model's)
  --ignore-rope-scaling load a config's rope_scaling (llama3, linear, dynamic, or a
                        type this module does not implement, such as yarn) as plain
                        RoPE; outputs then differ from the original model. Without it
                        llama3 and linear scaling are applied, dynamic runs within
                        its original context, and other types are refused
  --policy NAME         attention policy, run by the retrieval engine:
                        ${POLICIES.join(", ")}, or dense (the decoder's own
                        contiguous cache, no engine) (default full)
  --budget N            KV tokens attended per step (default 2048)
  --page-size N         KV page size in tokens (default 32)
  --sink N              sink tokens (default budget/4 in whole pages)
  --window N            window tokens (default budget/4 in whole pages)
                        (not the model's own sliding_window: Mistral/Qwen2 windows
                        from config.json are applied by every policy)
  --tau X               correction threshold of freekv, in [-1, 1] (default 0.9)
  --correction MODE     freekv's correction: resident (attend the corrected head's
                        pages already on the GPU, no host wait) or sync (wait and
                        recall first) (default resident)
  --cache-pages N       extra GPU slots per KV head for recently used pages
                        (default: twice the selected pages)
  --json                print one JSON object (text, tokens, statistics) on stdout
  --tokens-per-wait N   decode steps recorded per host wait (default 8): tokens are
                        sampled on the GPU and read back together, and the
                        engine's CPU side (freekv's recalls) follows N steps
                        behind; 1 samples each token on the CPU from its logits
                        (top-p always does)
  --record-trace FILE   record every layer's post-RoPE q, k, v of every token to FILE
  --help                this text`;

const values = flags.parse(Deno.args, {
  model: { type: "string" },
  tokenizer: { type: "string" },
  prompt: { type: "string", default: "" },
  "max-tokens": { type: "string" },
  "ignore-eos": { type: "boolean", default: false },
  temperature: { type: "string" },
  "top-p": { type: "string" },
  seed: { type: "string" },
  dtype: { type: "string" },
  "max-seq-len": { type: "string" },
  "ignore-rope-scaling": { type: "boolean", default: false },
  policy: { type: "string", default: "full" },
  budget: { type: "string" },
  "page-size": { type: "string" },
  tau: { type: "string" },
  correction: { type: "string" },
  "cache-pages": { type: "string" },
  sink: { type: "string" },
  window: { type: "string" },
  json: { type: "boolean", default: false },
  "record-trace": { type: "string" },
  "tokens-per-wait": { type: "string" },
  help: { type: "boolean", short: "h", default: false },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}

const maxTokens = intFlag("max-tokens", values["max-tokens"], 0) ?? 256;
const temperature = numFlag("temperature", values.temperature) ?? 0;
if (temperature < 0) fail(`--temperature must be at least 0: received ${temperature}`);
const topP = numFlag("top-p", values["top-p"]) ?? 1;
if (!(topP > 0 && topP <= 1)) fail(`--top-p must be in (0, 1]: received ${topP}`);
const seed = intFlag("seed", values.seed, 0) ?? 0;
const maxSeqLenFlag = intFlag("max-seq-len", values["max-seq-len"], 1);
const dtype = values.dtype as WeightDtype | undefined;
if (dtype !== undefined && !["f32", "f16", "bf16"].includes(dtype)) {
  fail(`--dtype must be one of f32, f16, bf16: received ${JSON.stringify(dtype)}`);
}
const policy = values.policy!;
if (policy !== "dense" && !POLICIES.includes(policy as PolicyName)) {
  fail(
    `--policy must be one of ${POLICIES.join(", ")}, dense: received ${JSON.stringify(policy)}`,
  );
}
const tau = flags.tauFlag("tau", values.tau) ?? 0.9;
const retrieval = flags.retrieval({
  budget: intFlag("budget", values.budget, 1),
  pageSize: intFlag("page-size", values["page-size"], 1),
  sink: intFlag("sink", values.sink, 0),
  window: intFlag("window", values.window, 1),
  tau,
});
const correction = values.correction ?? "resident";
if (!CORRECTION_MODES.includes(correction as CorrectionMode)) {
  fail(
    `--correction must be one of ${CORRECTION_MODES.join(", ")}: received ${
      JSON.stringify(correction)
    }`,
  );
}
const cachePages = intFlag("cache-pages", values["cache-pages"], 0);
const tokensPerWait = intFlag("tokens-per-wait", values["tokens-per-wait"], 1) ?? 8;

const modelPath = values.model ?? DEFAULT_MODEL;
const tokenizerPath = values.tokenizer ??
  (values.model === undefined ? DEFAULT_TOKENIZER : undefined);
let loaded;
try {
  loaded = await loadModel(modelPath, {
    tokenizer: tokenizerPath,
    ignoreRopeScaling: values["ignore-rope-scaling"],
  });
} catch (error) {
  fail((error as Error).message);
}
const { config, weights, tokenizer } = loaded;
if (!tokenizer) fail(`no tokenizer found for ${modelPath}; pass --tokenizer PATH`);

const prompt = tokenizer.encode(values.prompt!, { bos: true });
const maxSeqLen = maxSeqLenFlag ?? config.maxSeqLen;
if (prompt.length > maxSeqLen) {
  fail(
    `the prompt has ${prompt.length} tokens, more than the maximum sequence length ${maxSeqLen}`,
  );
}

using gpu = await requestGpu();
const device = gpu.device;

let trace: TraceWriter | undefined;
let engineBackend: EngineBackend | undefined;
let backend: AttentionBackend;
try {
  backend = policy === "dense"
    ? createDenseAttentionBackend(device, config, { maxSeqLen })
    : engineBackend = createEngineBackend(device, {
      ...config,
      ...retrieval,
      maxContext: maxSeqLen,
      policy: policy as PolicyName,
      tau,
      correction: correction as CorrectionMode,
      ...(cachePages === undefined ? {} : { cachePages }),
      // The host takes each step's answer when the decoder next waits.
      answerLag: tokensPerWait,
    });
} catch (error) {
  fail((error as Error).message);
}
if (values["record-trace"]) {
  trace = await createTraceWriter(values["record-trace"], {
    numLayers: config.numLayers,
    numQueryHeads: config.numQueryHeads,
    numKvHeads: config.numKvHeads,
    headDim: config.headDim,
    promptLength: prompt.length,
    model: modelPath,
  });
  const writer = trace;
  backend = createRecordingBackend(device, backend, {
    shape: config,
    onRecord: (layer, q, k, v) => writer.append(layer, q, k, v),
  });
}
using _backend = backend;
let gpuModel;
try {
  gpuModel = createGpuModel(device, weights, { attention: backend, weightDtype: dtype, maxSeqLen });
} catch (error) {
  fail((error as Error).message);
}
using model = gpuModel;

const encoder = new TextEncoder();
const it = generate(model, prompt, {
  maxTokens,
  temperature,
  topP,
  seed,
  tokenizer,
  tokensPerWait,
  ...(values["ignore-eos"] ? { stopTokens: [] } : {}),
});
let result: GenerationResult;
while (true) {
  const r = await it.next();
  if (r.done) {
    result = r.value;
    break;
  }
  if (!values.json) await Deno.stdout.write(encoder.encode(r.value.text));
}
await trace?.close();

const s = result.stats;
if (values.json) {
  console.log(JSON.stringify(
    {
      model: modelPath,
      config,
      device: gpu.description,
      policy,
      weightDtype: dtype ?? weights.layers[0].wq.dtype,
      prompt: values.prompt,
      promptTokens: prompt,
      tokens: result.tokens,
      text: result.text,
      stopReason: result.stopReason,
      ignoreEos: values["ignore-eos"],
      trace: values["record-trace"] ?? null,
      retrieval: engineBackend ? { ...retrieval, tau } : null,
      engine: engineBackend?.engine.totals() ?? null,
      stats: { ...s, stepMs: s.stepMs.map((x) => Math.round(x * 1000) / 1000) },
    },
    null,
    2,
  ));
} else {
  await Deno.stdout.write(encoder.encode("\n"));
  console.error(
    `generate: ${gpu.description}; policy ${policy}; ${s.promptTokens} prompt tokens ` +
      `prefilled in ${s.prefillMs.toFixed(1)} ms; ${s.generatedTokens} tokens generated ` +
      `(${result.stopReason}); decode ${s.decodeTokensPerSecond.toFixed(1)} tokens/s, ` +
      `median step ${s.medianStepMs.toFixed(2)} ms, ${s.decodeWaits} host waits`,
  );
  if (engineBackend) {
    const t = engineBackend.engine.totals();
    console.error(
      `generate: budget ${retrieval.budget} (sink ${retrieval.sink}, window ${retrieval.window}, ` +
        `page ${retrieval.pageSize}); ${t.pagesRecalled} pages recalled, ` +
        `${(100 * t.correctedShare).toFixed(1)}% of head-steps corrected`,
    );
  }
}
