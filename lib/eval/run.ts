/**
 * The evaluation harness: runs a model over texts with `full` attention
 * and with each policy configuration, and measures how close each comes:
 * teacher-forced next-token agreement and KL(full || policy), attention-mass
 * recall per layer and KV head, greedy free-generation agreement, and
 * freekv's own statistics (corrected share, adjacent-query cosine,
 * resident-hit rate when the engine reports it).
 *
 * Jobs (one per configuration, context and text) run concurrently on one
 * device: a decode step mostly waits for readbacks, so several sequences in
 * flight keep the adapter busy.
 *
 * @module
 */

import { createEngineBackend } from "../model/backends/engine.ts";
import { createGpuModel } from "../model/gpu_model.ts";
import { generateText } from "../model/generate.ts";
import { argmax } from "../model/sampling.ts";
import type { ModelWeights } from "../model/types.ts";
import type { Trace } from "../workloads/trace.ts";
import { createRetrievalEngine } from "../engine/engine.ts";
import { type PolicyConfig, resolveConfig, type ResolvedConfig } from "./config.ts";
import {
  attentionMassRecall,
  groupMeanCosine,
  klFromLogProbs,
  logSoftmax,
  matchLength,
  mean,
  percentile,
  shareIdentical,
} from "./metrics.ts";
import { createTapBackend, readAttendedPages, type TapRecord, type TapShape } from "./tap.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";

/** A text to evaluate on: token ids, BOS first. */
export interface EvalText {
  /** Where it came from (a seed, a file). */
  id: string;
  /** Token ids. */
  tokens: number[];
}

/** Options of {@linkcode generateStories}. */
export interface StoryOptions {
  /** One story per seed. */
  seeds: number[];
  /** Tokens per story, BOS included. */
  length: number;
  /** Sampling temperature (default 1: the model's own distribution). */
  temperature?: number;
  /** Called after each story. */
  onStory?: (index: number, text: EvalText) => void;
}

/**
 * Lets the model write its own texts: one story per seed, sampled at
 * temperature 1 with full (dense) attention, BOS first, stop tokens ignored
 * (a story that ends starts another), `length` tokens each. The stories run
 * concurrently.
 *
 * @example
 * ```ts ignore
 * import { requestGpu } from "../gpu/device.ts";
 * import { loadModel } from "../model/load.ts";
 * import { generateStories } from "./run.ts";
 * using gpu = await requestGpu();
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const texts = await generateStories(gpu.device, weights, { seeds: [1, 2], length: 64 });
 * console.log(texts[0].tokens.length); // 64
 * ```
 */
export async function generateStories(
  device: GPUDevice,
  weights: ModelWeights,
  options: StoryOptions,
): Promise<EvalText[]> {
  const { seeds, length } = options;
  if (!Number.isInteger(length) || length < 2) {
    throw new RangeError(
      `Cannot generate stories as 'length' must be an integer of at least 2: received ${length}`,
    );
  }
  const config = weights.config;
  return await Promise.all(seeds.map(async (seed, index) => {
    using model = createGpuModel(device, weights, { maxSeqLen: length });
    const r = await generateText(model, [config.bosId], {
      maxTokens: length - 1,
      temperature: options.temperature ?? 1,
      seed,
      stopTokens: [],
    });
    const text = { id: `seed ${seed}`, tokens: [config.bosId, ...r.tokens] };
    if (text.tokens.length < length) {
      throw new Error(
        `Cannot generate stories as the model stopped after ${text.tokens.length} of ${length} tokens (seed ${seed})`,
      );
    }
    options.onStory?.(index, text);
    return text;
  }));
}

/** A share of the context (below 1) or a token count. */
export type TokensOrShare = number;

/** Options of {@linkcode evaluateModel}. */
export interface EvalOptions {
  /** Policy configurations to compare with `full`. */
  configs: PolicyConfig[];
  /** Context lengths; each text's first `context` tokens are used. */
  contexts: number[];
  /** Texts (each at least as long as the longest context). */
  texts: EvalText[];
  /**
   * Prompt prefilled before scoring, a share of the context below 1 or a
   * token count (default 0.5): teacher forcing scores the positions after it,
   * greedy generation continues from it. A negative token count `-n`
   * scores the last `n` positions of each context.
   */
  prefix?: TokensOrShare;
  /** Greedy tokens generated after the prefix (default 128; 0 skips free generation). */
  greedyTokens?: number;
  /** Jobs in flight at once (default 6). */
  concurrency?: number;
  /**
   * Attention-mass recall every `massStride` teacher-forced steps (default 1);
   * see `TapOptions.massStride`.
   */
  massStride?: number;
  /**
   * Only these (config index, context, text index) jobs run; default all.
   * A (config, context) with no text left gets no row.
   */
  include?: (configIndex: number, context: number, textIndex: number) => boolean;
  /** Progress lines. */
  onProgress?: (message: string) => void;
}

/** Statistics of one configuration at one context, over all texts. */
export interface EvalRow {
  /** The configuration's label (`freekv`, `freekv/mean`, `freekv/tau=0.8`). */
  policy: string;
  /** The engine policy. */
  base_policy: string;
  /** Index of the configuration in the list given. */
  config_index: number;
  /** Context length (tokens of each text used). */
  context: number;
  /** Tokens attended per step (the context for `full`). */
  budget: number;
  /** The budget as given (`1/4`, `96`). */
  budget_spec: string;
  /** budget / context. */
  budget_share: number;
  /** Tokens per page. */
  page_size: number;
  /** Sink tokens. */
  sink: number;
  /** Window tokens. */
  window: number;
  /** freekv's correction threshold (null for other policies). */
  tau: number | null;
  /** freekv's correction mode as the engine resolved it (null when the engine has none or the policy is not freekv). */
  correction: string | null;
  /** Pages the engine caches for corrections (null when it has no such option). */
  cache_pages: number | null;
  /** GQA pooling of page scores. */
  pooling: string;
  /** Page summary kind. */
  summary: string;
  /** Texts evaluated. */
  texts: number;
  /** Prompt tokens before the first scored step. */
  prefix: number;
  /** Teacher-forced steps scored, over all texts. */
  steps: number;
  /** Share of scored steps whose top-1 next token equals full's. */
  agreement: number | null;
  /** Mean KL(full || policy) of the next-token distributions, nats. */
  kl: number | null;
  /** 99th percentile of the per-step KL, nats. */
  kl_p99: number | null;
  /** Mean attention-mass recall over steps, layers and KV heads. */
  mass_recall: number;
  /** Lowest per-(layer, KV head) mean mass recall. */
  mass_recall_min_head: number;
  /** Greedy tokens before the first divergence from full, mean over texts. */
  greedy_match_len: number | null;
  /** Share of greedy tokens identical to full's at the same position. */
  greedy_share: number | null;
  /** Greedy tokens generated per text. */
  greedy_tokens: number;
  /** Share of checked head-steps freekv corrected (0 for other policies). */
  corrected_share: number;
  /** Share of a corrected head's pages found resident (null when the engine does not report it). */
  resident_hit_rate: number | null;
  /** Steps that waited on the host, per scored step (null when the engine does not report it). */
  host_waits_per_step: number | null;
  /** Mean adjacent-query cosine (group mean per KV head, as freekv compares with tau). */
  cosine_mean: number;
  /** 10th percentile of the adjacent-query cosine. */
  cosine_p10: number;
  /** Per layer, per KV head statistics: `[layer][head]`. */
  per_head: {
    mass_recall: number[][];
    corrected_share: number[][];
    cosine_mean: number[][];
    cosine_p10: number[][];
  };
  /** Teacher-forced ms per step (wall, one sequence among several in flight). */
  ms_per_step: number;
  /**
   * The main metrics per text (in text order), so that rows can be compared
   * on a common subset of texts.
   */
  per_text: Array<{
    id: string;
    steps: number;
    agreement: number | null;
    kl: number | null;
    mass_recall: number;
    greedy_match_len: number | null;
    corrected_share: number;
  }>;
}

interface Reference {
  /** Log-probabilities of full's next-token distribution per scored step. */
  logProbs: Float32Array[];
  /** full's top-1 per scored step. */
  top: number[];
  /** full's greedy continuation. */
  greedy: number[];
}

interface JobResult {
  agree: number;
  kl: number[];
  massSum: Float64Array; // [L*hkv]
  massSteps: number;
  steps: number;
  cosines: number[][]; // [L*hkv][]
  checks: number[];
  corrections: number[];
  residentHitRate: number | null;
  hostWaits: number | null;
  greedy: number[];
  ms: number;
  engineOptions: Record<string, unknown>;
}

function resolvePrefix(prefix: TokensOrShare, context: number): number {
  const p = prefix < 0 ? context - 1 + prefix : prefix < 1 ? Math.floor(context * prefix) : prefix;
  if (!Number.isInteger(p) || p < 1 || p > context - 2) {
    throw new RangeError(
      `Cannot evaluate as the prefix must leave at least one scored step in a context of ${context}: received ${prefix} (${p} tokens)`,
    );
  }
  return p;
}

/** Runs `jobs` with at most `limit` in flight; resolves with their results in order. */
async function pool<T>(jobs: Array<() => Promise<T>>, limit: number): Promise<T[]> {
  const results = new Array<T>(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, jobs.length)) }, worker));
  return results;
}

/** Mass recall per (layer, KV head) summed over steps, and adjacent-query cosines, from a tap record. */
function attentionStats(
  rec: TapRecord,
  shape: TapShape,
  pageSize: number,
  skipMass: boolean,
): { massSum: Float64Array; massSteps: number; cosines: number[][] } {
  const { numLayers: L, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = shape;
  const massSum = new Float64Array(L * hkv);
  const cosines: number[][] = Array.from({ length: L * hkv }, () => []);
  let massSteps = 0;
  for (let l = 0; l < L; l++) {
    for (let s = 0; s < rec.steps; s++) {
      const q = rec.q[l].subarray(s * hq * d, (s + 1) * hq * d);
      const pages = rec.attended[l][s];
      if (skipMass) {
        if (l === 0) massSteps++;
        for (let h = 0; h < hkv; h++) massSum[l * hkv + h] += 1;
      } else if (pages) {
        if (l === 0) massSteps++;
        const r = attentionMassRecall(q, rec.k[l], rec.prefillLength + s + 1, {
          numQueryHeads: hq,
          numKvHeads: hkv,
          headDim: d,
          pageSize,
          attended: pages,
        });
        for (let h = 0; h < hkv; h++) massSum[l * hkv + h] += r[h];
      }
      if (s > 0) {
        const c = groupMeanCosine(q, rec.q[l].subarray((s - 1) * hq * d, s * hq * d), shape);
        for (let h = 0; h < hkv; h++) cosines[l * hkv + h].push(c[h]);
      }
    }
  }
  return { massSum, massSteps, cosines };
}

interface TotalsLike {
  correctionsPerHead?: number[];
  checksPerHead?: number[];
  residentHitRate?: number;
  hostWaits?: number;
}

/**
 * Evaluates every configuration at every context on every text against
 * `full` on the same model: see {@linkcode EvalRow} for what is measured.
 * Rows come in configuration order, contexts inner.
 *
 * @example
 * ```ts ignore
 * import { requestGpu } from "../gpu/device.ts";
 * import { loadModel } from "../model/load.ts";
 * import { evaluateModel, generateStories } from "./run.ts";
 * using gpu = await requestGpu();
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const texts = await generateStories(gpu.device, weights, { seeds: [1], length: 128 });
 * const rows = await evaluateModel(gpu.device, weights, {
 *   texts, contexts: [128], configs: [{ policy: "freekv", budget: "1/4" }], greedyTokens: 16,
 * });
 * console.log(rows[0].agreement);
 * ```
 */
export async function evaluateModel(
  device: GPUDevice,
  weights: ModelWeights,
  options: EvalOptions,
): Promise<EvalRow[]> {
  const config = weights.config;
  const shape: TapShape = config;
  const { contexts, texts } = options;
  const greedyTokens = options.greedyTokens ?? 128;
  const prefixOption = options.prefix ?? 0.5;
  const log = options.onProgress ?? (() => {});
  if (texts.length === 0) {
    throw new RangeError("Cannot evaluate as 'texts' must not be empty: received none");
  }
  for (const context of contexts) {
    if (!Number.isInteger(context) || context < 3) {
      throw new RangeError(
        `Cannot evaluate as a context must be an integer of at least 3: received ${context}`,
      );
    }
    for (const t of texts) {
      if (t.tokens.length < context) {
        throw new RangeError(
          `Cannot evaluate as text '${t.id}' must hold at least ${context} tokens: received ${t.tokens.length}`,
        );
      }
    }
  }
  // Resolve everything first so a bad configuration fails before any run.
  const resolved: ResolvedConfig[][] = options.configs.map((c) =>
    contexts.map((ctx) => resolveConfig(c, ctx))
  );
  const prefixes = contexts.map((ctx) => resolvePrefix(prefixOption, ctx));

  /** One pass of teacher forcing and one of greedy generation on a fresh model. */
  const runJob = async (
    rc: ResolvedConfig,
    ci: number,
    text: EvalText,
    reference: Reference | null,
  ): Promise<JobResult & { reference?: Reference }> => {
    const context = contexts[ci], prefix = prefixes[ci];
    const inner = createEngineBackend(
      device,
      {
        ...config,
        ...rc.engine,
        maxContext: context,
      } as Parameters<typeof createEngineBackend>[1],
    );
    using tap = createTapBackend(device, inner, shape, context, {
      massStride: options.massStride,
    });
    using model = createGpuModel(device, weights, { attention: tap, maxSeqLen: context });
    const tokens = text.tokens;
    // Teacher forcing.
    tap.arm();
    let logits = await model.prefill(tokens.slice(0, prefix));
    const own: Reference = { logProbs: [], top: [], greedy: [] };
    let agree = 0;
    const kl: number[] = [];
    const t0 = performance.now();
    for (let t = prefix, s = 0; t < context - 1; t++, s++) {
      logits = await model.decode(tokens[t], t);
      const lp = logSoftmax(logits);
      const top = argmax(logits);
      if (reference) {
        if (top === reference.top[s]) agree++;
        kl.push(klFromLogProbs(reference.logProbs[s], lp));
      } else {
        own.logProbs.push(Float32Array.from(lp));
        own.top.push(top);
      }
    }
    const ms = (performance.now() - t0) / Math.max(1, context - 1 - prefix);
    const totals = inner.engine.totals() as TotalsLike;
    const rec = await tap.read();
    tap.disarm();
    const { massSum, massSteps, cosines } = attentionStats(
      rec,
      shape,
      rc.pageSize,
      rc.policy === "full",
    );
    // Free generation.
    const greedy: number[] = [];
    const g = Math.min(greedyTokens, context - prefix);
    if (g > 0) {
      logits = await model.prefill(tokens.slice(0, prefix));
      for (let i = 0; i < g; i++) {
        const next = argmax(logits);
        greedy.push(next);
        if (i < g - 1) logits = await model.decode(next, prefix + i);
      }
    }
    own.greedy = greedy;
    return {
      agree,
      kl,
      massSum,
      massSteps,
      steps: rec.steps,
      cosines,
      checks: totals.checksPerHead ?? [],
      corrections: totals.correctionsPerHead ?? [],
      residentHitRate: typeof totals.residentHitRate === "number" ? totals.residentHitRate : null,
      hostWaits: typeof totals.hostWaits === "number" ? totals.hostWaits : null,
      greedy,
      ms,
      engineOptions: { ...inner.engine.options } as Record<string, unknown>,
      reference: reference ? undefined : own,
    };
  };

  // References first: full on every (context, text).
  const refConfig = (ci: number) => resolveConfig({ policy: "full", pageSize: 8 }, contexts[ci]);
  const references = new Map<string, Promise<Reference>>();
  const refResolvers = new Map<string, (r: Reference) => void>();
  const refRejecters = new Map<string, (e: unknown) => void>();
  for (let ci = 0; ci < contexts.length; ci++) {
    for (let ti = 0; ti < texts.length; ti++) {
      const key = `${ci}:${ti}`;
      references.set(
        key,
        new Promise<Reference>((resolve, reject) => {
          refResolvers.set(key, resolve);
          refRejecters.set(key, reject);
        }),
      );
      references.get(key)!.catch(() => {});
    }
  }
  type Job = { kind: "ref"; ci: number; ti: number } | {
    kind: "policy";
    k: number;
    ci: number;
    ti: number;
  };
  const jobs: Job[] = [];
  for (let ci = 0; ci < contexts.length; ci++) {
    for (let ti = 0; ti < texts.length; ti++) jobs.push({ kind: "ref", ci, ti });
  }
  const wanted = (k: number, ci: number, ti: number) =>
    options.include?.(k, contexts[ci], ti) ?? true;
  for (let ti = 0; ti < texts.length; ti++) {
    for (let ci = contexts.length - 1; ci >= 0; ci--) {
      for (let k = 0; k < options.configs.length; k++) {
        if (wanted(k, ci, ti)) jobs.push({ kind: "policy", k, ci, ti });
      }
    }
  }
  const results = new Map<string, JobResult>();
  let done = 0;
  const total = jobs.length;
  const started = performance.now();
  await pool(
    jobs.map((job) => async () => {
      const key = `${job.ci}:${job.ti}`;
      const text = texts[job.ti];
      if (job.kind === "ref") {
        try {
          const r = await runJob(refConfig(job.ci), job.ci, text, null);
          refResolvers.get(key)!(r.reference!);
        } catch (e) {
          refRejecters.get(key)!(e);
          throw e;
        }
      } else {
        const ref = await references.get(key)!;
        const rc = resolved[job.k][job.ci];
        results.set(`${job.k}:${key}`, await runJob(rc, job.ci, text, ref));
      }
      done++;
      const label = job.kind === "ref" ? "full (reference)" : resolved[job.k][job.ci].name;
      log(
        `${done}/${total} ${label} context ${contexts[job.ci]} ${text.id} (${
          ((performance.now() - started) / 1000).toFixed(0)
        } s)`,
      );
    }),
    options.concurrency ?? 6,
  );

  // Aggregate per (config, context).
  const { numLayers: L, numKvHeads: hkv } = config;
  const rows: EvalRow[] = [];
  for (let k = 0; k < options.configs.length; k++) {
    for (let ci = 0; ci < contexts.length; ci++) {
      const used = texts.map((_, ti) => ti).filter((ti) => wanted(k, ci, ti));
      if (used.length === 0) continue;
      const rc = resolved[k][ci];
      const parts = used.map((ti) => results.get(`${k}:${ci}:${ti}`)!);
      const refs = await Promise.all(used.map((ti) => references.get(`${ci}:${ti}`)!));
      const steps = parts.reduce((a, p) => a + p.steps, 0);
      const kls = parts.flatMap((p) => p.kl);
      const massSum = new Float64Array(L * hkv);
      const checks = new Array(L * hkv).fill(0), corrections = new Array(L * hkv).fill(0);
      const cos: number[][] = Array.from({ length: L * hkv }, () => []);
      for (const p of parts) {
        for (let i = 0; i < L * hkv; i++) {
          massSum[i] += p.massSum[i];
          checks[i] += p.checks[i] ?? 0;
          corrections[i] += p.corrections[i] ?? 0;
          for (const c of p.cosines[i]) cos[i].push(c);
        }
      }
      const perHead = (f: (i: number) => number) =>
        Array.from({ length: L }, (_, l) => Array.from({ length: hkv }, (_, h) => f(l * hkv + h)));
      const massSteps = parts.reduce((a, p) => a + p.massSteps, 0);
      const massHead = perHead((i) => massSum[i] / massSteps);
      const allChecks = checks.reduce((a, b) => a + b, 0);
      const allCorrections = corrections.reduce((a, b) => a + b, 0);
      const g = parts[0].greedy.length;
      const eo = parts[0].engineOptions;
      const isFreekv = rc.policy === "freekv";
      const hits = parts.map((p) => p.residentHitRate).filter((x): x is number => x !== null);
      const waits = parts.map((p) => p.hostWaits).filter((x): x is number => x !== null);
      rows.push({
        policy: rc.name,
        base_policy: rc.policy,
        config_index: k,
        context: contexts[ci],
        budget: rc.budget,
        budget_spec: rc.policy === "full" ? "1" : rc.budgetSpec,
        budget_share: rc.budget / contexts[ci],
        page_size: rc.pageSize,
        sink: rc.sink,
        window: rc.window,
        tau: isFreekv ? Number(eo.tau) : null,
        correction: isFreekv && typeof eo.correction === "string" ? eo.correction : null,
        cache_pages: typeof eo.cachePages === "number" && eo.cachePages >= 0 ? eo.cachePages : null,
        pooling: String(eo.pooling ?? "softmax-mean"),
        summary: String(eo.summary ?? "minmax"),
        texts: used.length,
        prefix: prefixes[ci],
        steps,
        agreement: parts.reduce((a, p) => a + p.agree, 0) / steps,
        kl: mean(kls),
        kl_p99: percentile(kls, 99),
        mass_recall: massHead.flat().reduce((a, b) => a + b, 0) / (L * hkv),
        mass_recall_min_head: Math.min(...massHead.flat()),
        greedy_match_len: g
          ? mean(parts.map((p, ti) => matchLength(p.greedy, refs[ti].greedy)))
          : null,
        greedy_share: g
          ? mean(parts.map((p, ti) => shareIdentical(p.greedy, refs[ti].greedy)))
          : null,
        greedy_tokens: g,
        corrected_share: allChecks ? allCorrections / allChecks : 0,
        resident_hit_rate: isFreekv && hits.length ? mean(hits) : null,
        host_waits_per_step: waits.length ? waits.reduce((a, b) => a + b, 0) / steps : null,
        cosine_mean: mean(cos.flat()),
        cosine_p10: percentile(cos.flat(), 10),
        per_head: {
          mass_recall: massHead,
          corrected_share: perHead((i) => (checks[i] ? corrections[i] / checks[i] : 0)),
          cosine_mean: perHead((i) => mean(cos[i])),
          cosine_p10: perHead((i) => percentile(cos[i], 10)),
        },
        ms_per_step: mean(parts.map((p) => p.ms)),
        per_text: parts.map((p, i) => {
          const checked = p.checks.reduce((a, b) => a + b, 0);
          return {
            id: texts[used[i]].id,
            steps: p.steps,
            agreement: p.agree / p.steps,
            kl: mean(p.kl),
            mass_recall: p.massSum.reduce((a, b) => a + b, 0) / (p.massSteps * L * hkv),
            greedy_match_len: g ? matchLength(p.greedy, refs[i].greedy) : null,
            corrected_share: checked ? p.corrections.reduce((a, b) => a + b, 0) / checked : 0,
          };
        }),
      });
    }
  }
  return rows;
}

/** Options of {@linkcode evaluateTrace}. */
export interface TraceEvalOptions {
  /** Policy configurations. */
  configs: PolicyConfig[];
  /** Tokens prefilled before the scored steps (default: the trace's prompt length). */
  prefix?: number;
  /** Jobs in flight at once (default 6). */
  concurrency?: number;
  /** Progress lines. */
  onProgress?: (message: string) => void;
}

/**
 * The attention-only metrics on a recorded trace (no model): each
 * configuration replays the trace's q, k, v through an engine; rows carry
 * mass recall, corrected share and cosine statistics, with the model
 * metrics (`agreement`, `kl`, greedy) null. The context is the trace's
 * token count.
 *
 * @example
 * ```ts ignore
 * import { requestGpu } from "../gpu/device.ts";
 * import { readTrace } from "../workloads/trace.ts";
 * import { evaluateTrace } from "./run.ts";
 * using gpu = await requestGpu();
 * const trace = await readTrace("story.trace");
 * const rows = await evaluateTrace(gpu.device, trace, { configs: [{ policy: "quest" }] });
 * ```
 */
export async function evaluateTrace(
  device: GPUDevice,
  trace: Trace,
  options: TraceEvalOptions,
): Promise<EvalRow[]> {
  const h = trace.header;
  const shape: TapShape = h;
  const { numLayers: L, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = h;
  const context = trace.numTokens;
  const prefix = options.prefix ?? h.promptLength;
  if (!Number.isInteger(prefix) || prefix < 1 || prefix >= context) {
    throw new RangeError(
      `Cannot evaluate a trace as the prefix must be an integer in [1, ${
        context - 1
      }] (the trace holds ${context} tokens): received ${prefix}`,
    );
  }
  const resolved = options.configs.map((c) => resolveConfig(c, context));
  const log = options.onProgress ?? (() => {});
  let done = 0;
  const rows = await pool(
    resolved.map((rc, k) => async (): Promise<EvalRow> => {
      using engine = createRetrievalEngine(
        device,
        {
          ...shape,
          ...rc.engine,
          maxContext: context,
        } as Parameters<typeof createRetrievalEngine>[1],
      );
      const out = createTrackedBuffer(device, {
        label: "eval trace output",
        size: hq * d * 4,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      });
      const eng = engine as unknown as { totals(): TotalsLike };
      const steps = context - prefix;
      const rec: TapRecord = {
        prefillLength: prefix,
        steps,
        q: [],
        k: [],
        attended: Array.from({ length: L }, () => []),
        corrected: Array.from({ length: L }, () => []),
      };
      try {
        for (let l = 0; l < L; l++) {
          const k = new Float32Array(context * hkv * d), v = new Float32Array(prefix * hkv * d);
          const q = new Float32Array(steps * hq * d);
          for (let t = 0; t < context; t++) {
            k.set(trace.k(t, l), t * hkv * d);
            if (t < prefix) v.set(trace.v(t, l), t * hkv * d);
            else q.set(trace.q(t, l), (t - prefix) * hq * d);
          }
          rec.k.push(k);
          rec.q.push(q);
          await engine.prefill(0, l, { k: k.subarray(0, prefix * hkv * d), v });
        }
        for (let t = prefix; t < context; t++) {
          for (let l = 0; l < L; l++) {
            await engine.step(l, { q: trace.q(t, l), k: trace.k(t, l), v: trace.v(t, l), out });
            rec.attended[l].push(await readAttendedPages(engine, l, hkv));
          }
        }
        await engine.drain();
      } finally {
        out.destroy();
      }
      const totals = eng.totals();
      const { massSum, massSteps, cosines } = attentionStats(rec, shape, rc.pageSize, false);
      const checks = totals.checksPerHead ?? [], corrections = totals.correctionsPerHead ?? [];
      const perHead = (f: (i: number) => number) =>
        Array.from(
          { length: L },
          (_, l) => Array.from({ length: hkv }, (_, hh) => f(l * hkv + hh)),
        );
      const massHead = perHead((i) => massSum[i] / massSteps);
      const allChecks = checks.reduce((a, b) => a + b, 0);
      const eo = engine.options as unknown as Record<string, unknown>;
      const isFreekv = rc.policy === "freekv";
      log(`${++done}/${resolved.length} ${rc.name} on the trace`);
      return {
        policy: rc.name,
        base_policy: rc.policy,
        config_index: k,
        context,
        budget: rc.budget,
        budget_spec: rc.policy === "full" ? "1" : rc.budgetSpec,
        budget_share: rc.budget / context,
        page_size: rc.pageSize,
        sink: rc.sink,
        window: rc.window,
        tau: isFreekv ? Number(eo.tau) : null,
        correction: isFreekv && typeof eo.correction === "string" ? eo.correction : null,
        cache_pages: typeof eo.cachePages === "number" && eo.cachePages >= 0 ? eo.cachePages : null,
        pooling: String(eo.pooling ?? "softmax-mean"),
        summary: String(eo.summary ?? "minmax"),
        texts: 1,
        prefix,
        steps,
        agreement: null,
        kl: null,
        kl_p99: null,
        mass_recall: massHead.flat().reduce((a, b) => a + b, 0) / (L * hkv),
        mass_recall_min_head: Math.min(...massHead.flat()),
        greedy_match_len: null,
        greedy_share: null,
        greedy_tokens: 0,
        corrected_share: allChecks ? corrections.reduce((a, b) => a + b, 0) / allChecks : 0,
        resident_hit_rate: isFreekv && typeof totals.residentHitRate === "number"
          ? totals.residentHitRate
          : null,
        host_waits_per_step: typeof totals.hostWaits === "number" ? totals.hostWaits / steps : null,
        cosine_mean: mean(cosines.flat()),
        cosine_p10: percentile(cosines.flat(), 10),
        per_head: {
          mass_recall: massHead,
          corrected_share: perHead((i) => (checks[i] ? (corrections[i] ?? 0) / checks[i] : 0)),
          cosine_mean: perHead((i) => mean(cosines[i])),
          cosine_p10: perHead((i) => percentile(cosines[i], 10)),
        },
        ms_per_step: 0,
        per_text: [],
      };
    }),
    options.concurrency ?? 6,
  );
  return rows;
}
