/**
 * Text generation with a {@linkcode GpuModel}: prefill the prompt, then
 * sample and decode one token at a time, streaming tokens (and text pieces
 * when a tokenizer is given) as they come, with timing statistics.
 *
 * @module
 */

import { assertFinite, assertInteger } from "../gpu/errors.ts";
import { median } from "../gpu/timing.ts";
import type { GpuModel } from "./gpu_model.ts";
import { createRandom } from "../workloads/random.ts";
import { createSampler, type Sampler } from "./sampling.ts";
import { createTextStream, type Tokenizer } from "./tokenizer.ts";

/** Options of {@linkcode generate}. */
export interface GenerateOptions {
  /**
   * Most tokens to generate (default 256). Fewer when the model's
   * `maxSeqLen` is reached: the cache then holds `maxSeqLen` positions and
   * the last token, sampled from them, is yielded but never fed back.
   */
  maxTokens?: number;
  /** Sampling temperature; 0 (the default) is greedy. */
  temperature?: number;
  /** Nucleus sampling mass in (0, 1); 1 (the default) samples from the whole distribution. */
  topP?: number;
  /** Seed of the sampler (default 0). */
  seed?: number;
  /** A sampler to use instead of one built from `temperature`, `topP`, `seed`. */
  sampler?: Sampler;
  /**
   * Tokens that end generation (not yielded); default: the model's EOS and
   * BOS (a generated BOS starts a new document, as llama2.c treats it).
   */
  stopTokens?: readonly number[];
  /** Turns tokens into text pieces; without it `text` is empty. */
  tokenizer?: Tokenizer;
  /** Stops generation (throwing the signal's reason) when aborted. */
  signal?: AbortSignal;
  /**
   * Decode steps recorded per host wait (default 8). Above 1, tokens are
   * sampled on the GPU ({@linkcode GpuModel.decodeSampled}) and come back
   * together, so Deno's ~11 ms per GPU answer is paid once per group
   * instead of once per token; a stop token ends generation with the rest
   * of its group discarded (the model's position then lies past it). 1
   * reads every token's logits back and samples on the CPU, which is also
   * what top-p and a custom `sampler` do. Greedy tokens are the same either
   * way; at temperature > 0 the same draws pick the same tokens up to f32
   * rounding at the edge of a token's mass.
   */
  tokensPerWait?: number;
}

/** One generated token. */
export interface GeneratedToken {
  /** Token id. */
  token: number;
  /** Text this token completes (may be empty while a character is split). */
  text: string;
  /** 0 for the first generated token. */
  index: number;
  /** Position of the token in the sequence (prompt length + index). */
  position: number;
  /** Milliseconds of the decode step and sampling (for the first token: prefill and sampling). */
  ms: number;
}

/** Why generation stopped. */
export type StopReason = "stop-token" | "max-tokens" | "max-seq-len";

/** Timing of one generation. */
export interface GenerationStats {
  /** Prompt tokens. */
  promptTokens: number;
  /** Tokens generated (stop token excluded). */
  generatedTokens: number;
  /** Wall time of the prefill call. */
  prefillMs: number;
  /** Prompt tokens per second of prefill. */
  prefillTokensPerSecond: number;
  /** Decode steps run (one per generated token after the first that needed logits). */
  decodeSteps: number;
  /** Wall time of all decode steps (decode + sampling). */
  decodeMs: number;
  /** Host answers the decode steps awaited (one per token, or one per group of `tokensPerWait`). */
  decodeWaits: number;
  /** Decode steps per second. */
  decodeTokensPerSecond: number;
  /** Milliseconds of every decode step, in order (a group's time shared by its steps). */
  stepMs: number[];
  /** Median of `stepMs` (0 without steps). */
  medianStepMs: number;
  /** Wall time of the whole generation, prefill included (and time the consumer held tokens). */
  totalMs: number;
}

/** What {@linkcode generate} returns when done. */
export interface GenerationResult {
  /** Generated token ids (stop token excluded). */
  tokens: number[];
  /** Their text (empty without a tokenizer). */
  text: string;
  /** Why it stopped. */
  stopReason: StopReason;
  /** Timing. */
  stats: GenerationStats;
}

function medianOrZero(xs: number[]): number {
  return xs.length === 0 ? 0 : median(xs);
}

/**
 * Generates from `prompt` (token ids, at least one: usually starting with
 * BOS), yielding each token as it comes; the generator's return value holds
 * all tokens, the text and the statistics. Starts a new sequence on `model`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { loadLlama2c } from "./llama2c.ts";
 * import { loadLlama2cTokenizer } from "./tokenizer.ts";
 * import { createGpuModel } from "./gpu_model.ts";
 * import { generate } from "./generate.ts";
 * using gpu = await requestGpu();
 * using model = createGpuModel(gpu.device, await loadLlama2c("models/stories260K/stories260K.bin"));
 * const tokenizer = await loadLlama2cTokenizer("models/stories260K/tok512.bin");
 * let text = "";
 * for await (const t of generate(model, [1], { maxTokens: 5, tokenizer })) text += t.text;
 * console.log(text); // Once upon a time,
 * ```
 */
export async function* generate(
  model: GpuModel,
  prompt: ArrayLike<number>,
  options: GenerateOptions = {},
): AsyncGenerator<GeneratedToken, GenerationResult, void> {
  const action = "generate";
  const maxTokens = options.maxTokens ?? 256;
  assertInteger("maxTokens", maxTokens, action, 0);
  if (options.seed !== undefined) assertInteger("seed", options.seed, action);
  if (options.temperature !== undefined) assertFinite("temperature", options.temperature, action);
  if (options.topP !== undefined) assertFinite("topP", options.topP, action);
  const tokensPerWait = options.tokensPerWait ?? 8;
  assertInteger("tokensPerWait", tokensPerWait, action, 1);
  if (prompt == null || typeof prompt.length !== "number" || prompt.length < 1) {
    throw new RangeError(
      `Cannot ${action} as 'prompt' must hold at least one token id: received ${
        prompt == null ? prompt : `length ${prompt.length}`
      }`,
    );
  }
  const temperature = options.temperature ?? 0;
  const topP = options.topP ?? 1;
  // One source of draws: the first token's CPU sample, then the GPU's coins.
  const random = createRandom(options.seed ?? 0);
  const sampler = options.sampler ?? createSampler({ temperature, topP, random });
  const onGpu = options.sampler === undefined && topP >= 1 && tokensPerWait > 1;
  const stop = new Set(options.stopTokens ?? [model.config.eosId, model.config.bosId]);
  const stream = options.tokenizer ? createTextStream(options.tokenizer) : undefined;
  if (stream) { for (let i = 0; i < prompt.length; i++) stream.push(prompt[i]); }

  const tStart = performance.now();
  const logits = await model.prefill(prompt);
  const prefillMs = performance.now() - tStart;
  const tokens: number[] = [];
  const stepMs: number[] = [];
  let decodeWaits = 0;
  let text = "";
  let stopReason: StopReason = "max-tokens";
  let pos = prompt.length;
  // Tokens come in groups: the first from the prefill's logits, then one
  // group per host wait (one token each on the CPU path).
  let group: number[] = [sampler.sample(logits)];
  let groupMs = performance.now() - tStart;
  let index = 0;
  generation: while (index < maxTokens) {
    for (const token of group) {
      if (stop.has(token)) {
        stopReason = "stop-token";
        break generation;
      }
      tokens.push(token);
      const piece = stream ? stream.push(token) : "";
      text += piece;
      yield { token, text: piece, index, position: prompt.length + index, ms: groupMs };
      if (++index >= maxTokens) break generation;
    }
    options.signal?.throwIfAborted();
    if (pos >= model.maxSeqLen) {
      stopReason = "max-seq-len";
      break;
    }
    const count = onGpu ? Math.min(tokensPerWait, maxTokens - index, model.maxSeqLen - pos) : 1;
    const last = tokens[tokens.length - 1];
    const t0 = performance.now();
    if (onGpu) {
      const coins = temperature > 0
        ? Float32Array.from({ length: count }, () => random.next())
        : undefined;
      group = [...await model.decodeSampled(last, pos, { count, temperature, coins })];
    } else {
      group = [sampler.sample(await model.decode(last, pos))];
    }
    decodeWaits++;
    pos += count;
    // Time of the model and sampler only, not of the consumer between yields.
    groupMs = (performance.now() - t0) / count;
    for (let j = 0; j < count; j++) stepMs.push(groupMs);
  }
  if (stream) {
    const rest = stream.flush();
    text += rest;
  }
  const totalMs = performance.now() - tStart;
  const decodeMs = stepMs.reduce((a, b) => a + b, 0);
  return {
    tokens,
    text,
    stopReason,
    stats: {
      promptTokens: prompt.length,
      generatedTokens: tokens.length,
      prefillMs,
      prefillTokensPerSecond: prompt.length / (prefillMs / 1000),
      decodeSteps: stepMs.length,
      decodeMs,
      decodeWaits,
      decodeTokensPerSecond: stepMs.length ? stepMs.length / (decodeMs / 1000) : 0,
      stepMs,
      medianStepMs: medianOrZero(stepMs),
      totalMs,
    },
  };
}

/** Options of {@linkcode generateText}. */
export interface GenerateTextOptions extends GenerateOptions {
  /** Called for every generated token as it comes. */
  onToken?: (token: GeneratedToken) => void | Promise<void>;
}

/**
 * Runs {@linkcode generate} to the end, calling `onToken` as tokens come,
 * and returns the result.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { loadLlama2c } from "./llama2c.ts";
 * import { createGpuModel } from "./gpu_model.ts";
 * import { generateText } from "./generate.ts";
 * using gpu = await requestGpu();
 * using model = createGpuModel(gpu.device, await loadLlama2c("models/stories260K/stories260K.bin"));
 * const result = await generateText(model, [1], { maxTokens: 5, temperature: 0.8, seed: 7 });
 * console.log(result.tokens.length, result.stats.decodeTokensPerSecond > 0); // 5 true
 * ```
 */
export async function generateText(
  model: GpuModel,
  prompt: ArrayLike<number>,
  options: GenerateTextOptions = {},
): Promise<GenerationResult> {
  const it = generate(model, prompt, options);
  while (true) {
    const r = await it.next();
    if (r.done) return r.value;
    await options.onToken?.(r.value);
  }
}
