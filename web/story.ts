/**
 * The demo of `deno task demo` as a function that runs in a browser or in
 * Deno: stories260K tells a greedy story with `full` attention and with
 * `freekv` retrieval under a budget below the story length, then a teacher-
 * forced pass over full's story measures next-token agreement and the KL
 * divergence of freekv's next-token distributions from full's. The
 * reference distributions are the ones full computed while telling its
 * story (same model, tokens and positions), so that pass runs one model.
 * `scripts/demo.ts` calls it with the files read from disk.
 *
 * The model comes in as bytes (fetched by the page, read by Deno), so no
 * file system is needed. Only the module's public API is used (`mod.ts`),
 * and the evaluation's metrics (`lib/eval/metrics.ts`).
 *
 * @module
 */

import {
  argmax,
  createEngineBackend,
  createGpuModel,
  generateText,
  type ModelWeights,
  parseLlama2c,
  parseLlama2cTokenizer,
  type PolicyName,
  resolveBudget,
  type Tokenizer,
} from "../mod.ts";
import { klDivergence, matchLength } from "../lib/eval/metrics.ts";

/** The model and tokenizer parsed from their files' bytes. */
export interface StoryModel {
  weights: ModelWeights;
  tokenizer: Tokenizer;
}

/** Parses stories260K.bin and tok512.bin (or any llama2.c pair). */
export function parseStoryModel(modelBytes: Uint8Array, tokenizerBytes: Uint8Array): StoryModel {
  const weights = parseLlama2c(modelBytes, { name: "stories260K.bin" });
  const tokenizer = parseLlama2cTokenizer(tokenizerBytes, {
    name: "tok512.bin",
    vocabSize: weights.config.vocabSize,
  });
  return { weights, tokenizer };
}

/** Options of {@linkcode runStory}; the defaults are the demo's. */
export interface StoryOptions {
  /** Story length in tokens (default 400). */
  maxTokens?: number;
  /** KV tokens attended per step (default 96). */
  budget?: number;
  /** Tokens per page (default 8). */
  pageSize?: number;
  /** Correction threshold (default 0.9). */
  tau?: number;
  /** Skip the teacher-forced pass (agreement, KL). */
  skipTeacherForcing?: boolean;
  /** Called per generated token of each policy. */
  onToken?: (policy: "full" | "freekv", text: string, index: number) => void;
  /** Called with a line per phase. */
  onProgress?: (message: string) => void;
}

/** One policy's story. */
export interface StoryRun {
  text: string;
  tokens: number[];
  /** Decode tokens per second (after the first token). */
  tokensPerSecond: number;
  /** Median decode step, milliseconds. */
  medianStepMs: number;
}

/** What {@linkcode runStory} returns. */
export interface StoryResult {
  retrieval: { budget: number; pageSize: number; sink: number; window: number; tau: number };
  full: StoryRun;
  freekv: StoryRun;
  /** Tokens until the greedy stories first differ. */
  greedyAgreementTokens: number;
  /** Share of full's story where teacher-forced freekv picks full's next token (NaN when skipped). */
  teacherForcedAgreement: number;
  /** Mean KL(full || freekv) of the next-token distributions, nats (NaN when skipped). */
  meanKlNats: number;
  /** Share of checked head-steps corrected in the teacher-forced freekv run (greedy run when skipped). */
  correctedShare: number;
  /** Pages recalled in that run. */
  pagesRecalled: number;
}

/** Runs the demo on `device`: greedy stories, then (unless skipped) teacher forcing. */
export async function runStory(
  device: GPUDevice,
  model: StoryModel,
  options: StoryOptions = {},
): Promise<StoryResult> {
  const { weights, tokenizer } = model;
  const config = weights.config;
  const maxTokens = options.maxTokens ?? 400;
  const tau = options.tau ?? 0.9;
  const retrieval = resolveBudget({
    budget: options.budget ?? 96,
    pageSize: options.pageSize ?? 8,
  });
  const progress = options.onProgress ?? (() => {});
  const bos = config.bosId >= 0 ? config.bosId : tokenizer.bosId;

  const makeModel = (policy: PolicyName) => {
    const attention = createEngineBackend(device, {
      ...config,
      ...retrieval,
      maxContext: config.maxSeqLen,
      policy,
      tau,
    });
    return { attention, model: createGpuModel(device, weights, { attention }) };
  };

  const runs = {} as Record<"full" | "freekv", StoryRun>;
  let greedyTotals = { correctedShare: 0, pagesRecalled: 0 };
  // Full's next-token logits along its own story: the reference of the
  // teacher-forced pass below, so that pass runs only the freekv model.
  const fullLogits: Float32Array[] = [];
  for (const policy of ["full", "freekv"] as const) {
    progress(`${policy}: generating ${maxTokens} tokens`);
    const { attention, model: gpuModel } = makeModel(policy);
    try {
      const r = await generateText(gpuModel, [bos], {
        maxTokens,
        tokenizer,
        stopTokens: [],
        // Greedy, as the demo's default sampler, keeping full's logits.
        sampler: {
          sample(logits) {
            if (policy === "full") fullLogits.push(Float32Array.from(logits));
            return argmax(logits);
          },
        },
        onToken: (t) => options.onToken?.(policy, t.text, t.index),
      });
      runs[policy] = {
        text: r.text,
        tokens: r.tokens,
        tokensPerSecond: r.stats.decodeTokensPerSecond,
        medianStepMs: r.stats.medianStepMs,
      };
      if (policy === "freekv") greedyTotals = attention.engine.totals();
    } finally {
      gpuModel[Symbol.dispose]();
      attention[Symbol.dispose]();
    }
  }
  const full = runs.full.tokens, fkv = runs.freekv.tokens;
  const prefix = matchLength(full, fkv);

  let agreement = NaN, kl = NaN, totals = greedyTotals;
  if (!options.skipTeacherForcing) {
    // Feed full's story to a freekv model; compare its next-token choice and
    // distribution with full's (the logits full had when it told the story,
    // which a full model fed the same tokens would compute again).
    progress(`teacher forcing freekv on full's story`);
    const forced = makeModel("freekv");
    try {
      const story = [bos, ...full];
      let logits = await forced.model.prefill([story[0]]);
      let agree = 0, klSum = 0;
      for (let i = 1; i < story.length; i++) {
        if (argmax(logits) === story[i]) agree++;
        klSum += klDivergence(fullLogits[i - 1], logits);
        if (i < story.length - 1) logits = await forced.model.decode(story[i], i);
        if (i % 100 === 0) progress(`teacher forcing ${i}/${story.length - 1}`);
      }
      agreement = agree / full.length;
      kl = klSum / full.length;
      totals = forced.attention.engine.totals();
    } finally {
      forced.model[Symbol.dispose]();
      forced.attention[Symbol.dispose]();
    }
  }
  return {
    retrieval: { ...retrieval, tau },
    full: runs.full,
    freekv: runs.freekv,
    greedyAgreementTokens: prefix,
    teacherForcedAgreement: agreement,
    meanKlNats: kl,
    correctedShare: totals.correctedShare,
    pagesRecalled: totals.pagesRecalled,
  };
}
