/**
 * The row an evaluation reports per configuration and context, and the
 * pieces both evaluations (`evaluateModel` on a model,
 * `evaluateTrace` on a recorded trace) build it from: the job pool, the
 * per-head attention statistics of a tap record, and the row itself.
 *
 * @module
 */

import type { EngineOptions } from "../engine/options.ts";
import type { ResolvedConfig } from "./config.ts";
import {
  attentionMassRecall,
  groupMeanCosine,
  matchLength,
  mean,
  percentile,
  shareIdentical,
} from "./metrics.ts";
import type { EvalText } from "./stories.ts";
import type { TapRecord, TapShape } from "./tap.ts";

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
  /** Pages freekv caches for corrections (null for other policies, or an engine without the option). */
  cache_pages: number | null;
  /** Steps the engine's host followed behind the GPU (engine option `answerLag`). */
  answer_lag: number;
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

/** The prompt tokens before the first scored step (see `EvalOptions.prefix`). */
export function resolvePrefix(prefix: number, context: number): number {
  const p = prefix < 0 ? context - 1 + prefix : prefix < 1 ? Math.floor(context * prefix) : prefix;
  if (!Number.isInteger(p) || p < 1 || p > context - 2) {
    throw new RangeError(
      `Cannot evaluate as the prefix must leave at least one scored step in a context of ${context}: received ${prefix} (${p} tokens)`,
    );
  }
  return p;
}

/**
 * Throws a `RangeError` unless `texts` is not empty, every context is an
 * integer of at least 3 and every text holds the longest context.
 */
export function checkTextsAndContexts(
  texts: readonly EvalText[],
  contexts: readonly number[],
  action: string,
): void {
  if (texts.length === 0) {
    throw new RangeError(`Cannot ${action} as 'texts' must not be empty: received none`);
  }
  for (const context of contexts) {
    if (!Number.isInteger(context) || context < 3) {
      throw new RangeError(
        `Cannot ${action} as a context must be an integer of at least 3: received ${context}`,
      );
    }
    for (const t of texts) {
      if (t.tokens.length < context) {
        throw new RangeError(
          `Cannot ${action} as text '${t.id}' must hold at least ${context} tokens: received ${t.tokens.length}`,
        );
      }
    }
  }
}

/** One text's teacher-forced and greedy outcome against `full`. */
export interface TextOutcome {
  /** Scored steps whose top-1 equals full's. */
  agree: number;
  /** KL(full || policy) per scored step. */
  kl: readonly number[];
  /** Greedy tokens of the policy, and of full. */
  greedy: readonly number[];
  fullGreedy: readonly number[];
}

/** The agreement, KL and greedy columns of a row over its texts (`steps` scored in all). */
export function outcomeColumns(
  parts: readonly TextOutcome[],
  steps: number,
): Pick<
  EvalRow,
  "agreement" | "kl" | "kl_p99" | "greedy_match_len" | "greedy_share" | "greedy_tokens"
> {
  const kls = parts.flatMap((p) => p.kl);
  const g = parts[0].greedy.length;
  return {
    agreement: parts.reduce((a, p) => a + p.agree, 0) / steps,
    kl: mean(kls),
    kl_p99: percentile(kls, 99),
    greedy_match_len: g ? mean(parts.map((p) => matchLength(p.greedy, p.fullGreedy))) : null,
    greedy_share: g ? mean(parts.map((p) => shareIdentical(p.greedy, p.fullGreedy))) : null,
    greedy_tokens: g,
  };
}

/** Runs `jobs` with at most `limit` in flight; resolves with their results in order. */
export async function pool<T>(jobs: Array<() => Promise<T>>, limit: number): Promise<T[]> {
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
export function attentionStats(
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

/** The engine totals an evaluation reads (engines without them leave them out). */
export interface TotalsLike {
  correctionsPerHead?: number[];
  checksPerHead?: number[];
  residentHitRate?: number;
  hostWaits?: number;
}

/** Per (layer, KV head) sums of one configuration: mass recall, corrections, cosines. */
export interface HeadSums {
  /** Decoder layers `L`. */
  numLayers: number;
  /** KV heads `Hkv`. */
  numKvHeads: number;
  /** Mass recall summed over steps, `[L * Hkv]`. */
  massSum: Float64Array;
  /** Steps summed into `massSum`. */
  massSteps: number;
  /** Checked head-steps per head (may be shorter: missing heads count 0). */
  checks: number[];
  /** Corrected head-steps per head (may be shorter). */
  corrections: number[];
  /** Adjacent-query cosines per head, `[L * Hkv][]`. */
  cosines: number[][];
}

/** The columns of an {@linkcode EvalRow} that each evaluation measures its own way. */
export type MeasuredColumns = Pick<
  EvalRow,
  | "texts"
  | "prefix"
  | "steps"
  | "agreement"
  | "kl"
  | "kl_p99"
  | "greedy_match_len"
  | "greedy_share"
  | "greedy_tokens"
  | "resident_hit_rate"
  | "host_waits_per_step"
  | "ms_per_step"
  | "per_text"
>;

/**
 * One row: the configuration's columns from `rc` and the engine's resolved
 * `engineOptions`, the per-head columns from `heads`, the rest from
 * `measured` (`resident_hit_rate` kept for freekv only).
 */
export function buildRow(
  config: {
    rc: ResolvedConfig;
    configIndex: number;
    context: number;
    engineOptions: Record<string, unknown>;
  },
  heads: HeadSums,
  measured: MeasuredColumns,
): EvalRow {
  const { rc, context, engineOptions: eo } = config;
  const { numLayers: L, numKvHeads: hkv, massSum, massSteps, checks, corrections, cosines } = heads;
  const isFreekv = rc.policy === "freekv";
  const perHead = (f: (i: number) => number) =>
    Array.from({ length: L }, (_, l) => Array.from({ length: hkv }, (_, h) => f(l * hkv + h)));
  const massHead = perHead((i) => massSum[i] / massSteps);
  const allChecks = checks.reduce((a, b) => a + b, 0);
  const m = measured;
  return {
    policy: rc.name,
    base_policy: rc.policy,
    config_index: config.configIndex,
    context,
    budget: rc.budget,
    budget_spec: rc.policy === "full" ? "1" : rc.budgetSpec,
    budget_share: rc.budget / context,
    page_size: rc.pageSize,
    sink: rc.sink,
    window: rc.window,
    tau: isFreekv ? Number(eo.tau) : null,
    correction: isFreekv && typeof eo.correction === "string" ? eo.correction : null,
    cache_pages: isFreekv && typeof eo.cachePages === "number" && eo.cachePages >= 0
      ? eo.cachePages
      : null,
    answer_lag: typeof eo.answerLag === "number" ? eo.answerLag : 1,
    pooling: String(eo.pooling ?? "softmax-mean"),
    summary: String(eo.summary ?? "minmax"),
    texts: m.texts,
    prefix: m.prefix,
    steps: m.steps,
    agreement: m.agreement,
    kl: m.kl,
    kl_p99: m.kl_p99,
    mass_recall: massHead.flat().reduce((a, b) => a + b, 0) / (L * hkv),
    mass_recall_min_head: Math.min(...massHead.flat()),
    greedy_match_len: m.greedy_match_len,
    greedy_share: m.greedy_share,
    greedy_tokens: m.greedy_tokens,
    corrected_share: allChecks ? corrections.reduce((a, b) => a + b, 0) / allChecks : 0,
    resident_hit_rate: isFreekv ? m.resident_hit_rate : null,
    host_waits_per_step: m.host_waits_per_step,
    cosine_mean: mean(cosines.flat()),
    cosine_p10: percentile(cosines.flat(), 10),
    per_head: {
      mass_recall: massHead,
      corrected_share: perHead((i) => (checks[i] ? (corrections[i] ?? 0) / checks[i] : 0)),
      cosine_mean: perHead((i) => mean(cosines[i])),
      cosine_p10: perHead((i) => percentile(cosines[i], 10)),
    },
    ms_per_step: m.ms_per_step,
    per_text: m.per_text,
  };
}

/** The engine options of `rc` at `context` on `shape` (a model config or a trace header). */
export function engineOptionsFor<S extends object>(
  shape: S,
  rc: ResolvedConfig,
  context: number,
): S & EngineOptions {
  return { ...shape, ...rc.engine, maxContext: context } as S & EngineOptions;
}
