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
import { argmax } from "../model/sampling.ts";
import type { ModelWeights } from "../model/types.ts";
import { type PolicyConfig, resolveConfig, type ResolvedConfig } from "./config.ts";
import { klFromLogProbs, logSoftmax, matchLength, mean } from "./metrics.ts";
import {
  attentionStats,
  buildRow,
  checkTextsAndContexts,
  engineOptionsFor,
  type EvalRow,
  outcomeColumns,
  pool,
  resolvePrefix,
  type TotalsLike,
} from "./row.ts";
import type { EvalText } from "./stories.ts";
import { createTapBackend, type TapShape } from "./tap.ts";

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

/**
 * Evaluates every configuration at every context on every text against
 * `full` on the same model: see {@linkcode EvalRow} for what is measured.
 * Rows come in configuration order, contexts inner.
 *
 * @example
 * ```ts ignore
 * import { requestGpu } from "../gpu/device.ts";
 * import { loadModel } from "../model/load.ts";
 * import { evaluateModel } from "./run.ts";
 * import { generateStories } from "./stories.ts";
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
  checkTextsAndContexts(texts, contexts, "evaluate");
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
    const inner = createEngineBackend(device, engineOptionsFor(config, rc, context));
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
      const massSteps = parts.reduce((a, p) => a + p.massSteps, 0);
      const g = parts[0].greedy.length;
      const hits = parts.map((p) => p.residentHitRate).filter((x): x is number => x !== null);
      const waits = parts.map((p) => p.hostWaits).filter((x): x is number => x !== null);
      const heads = { numLayers: L, numKvHeads: hkv, massSum, massSteps, checks, corrections };
      const config = {
        rc,
        configIndex: k,
        context: contexts[ci],
        engineOptions: parts[0].engineOptions,
      };
      rows.push(buildRow(config, { ...heads, cosines: cos }, {
        texts: used.length,
        prefix: prefixes[ci],
        steps,
        ...outcomeColumns(parts.map((p, i) => ({ ...p, fullGreedy: refs[i].greedy })), steps),
        resident_hit_rate: hits.length ? mean(hits) : null,
        host_waits_per_step: waits.length ? waits.reduce((a, b) => a + b, 0) / steps : null,
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
      }));
    }
  }
  return rows;
}
