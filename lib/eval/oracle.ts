/**
 * The ceiling of page selection at a budget: an oracle that attends, per
 * decode step, layer and KV head, the sink and window pages plus the
 * candidate pages holding the most of full attention's probability (summed
 * over the group's query heads), known exactly because it runs on the CPU
 * reference model with the whole KV cache. No policy that picks pages
 * before attending can hold more attention mass at the same budget, so its
 * agreement with `full` says how much of a gap is the budget's and how much
 * the selection's.
 *
 * It is an analysis, not a policy: it runs on the CPU reference model (the
 * GPU decoder's oracle), and its rows compare it with `full` on the same
 * reference model, so that the two share their arithmetic. Plain loops in
 * JavaScript: about 1-2 ms a step on stories260K, hours a text on a model
 * of billions of parameters.
 *
 * @module
 */

import { type PageBudget, pageRegions } from "../memory/page_plan.ts";
import { createReferenceModel, type ReferenceModel } from "../model/reference.ts";
import { argmax } from "../model/sampling.ts";
import { attentionWindow } from "../model/sliding_window.ts";
import type { ModelWeights } from "../model/types.ts";
import {
  BUDGET_SHAPE_FIELDS,
  type PolicyConfig,
  resolveConfig,
  type ResolvedConfig,
} from "./config.ts";
import { groupMeanCosine, klFromLogProbs, logSoftmax, matchLength, mean } from "./metrics.ts";
import {
  buildRow,
  checkTextsAndContexts,
  type EvalRow,
  outcomeColumns,
  resolvePrefix,
} from "./row.ts";
import type { EvalText } from "./stories.ts";

/** Fields an oracle configuration may set: the budget's shape only. */
const ORACLE_FIELDS = new Set(BUDGET_SHAPE_FIELDS);

/**
 * The pages the oracle attends at one step of one KV head: sink pages,
 * window pages, and the `selectCount` candidates with the most probability
 * summed over the group's heads (ties to the lower page). `probs[g][i]` is
 * head g's probability of key `first + i`; the step sees `numTokens` keys.
 * Returns the pages in increasing order.
 *
 * @example
 * ```ts
 * import { oraclePages } from "./oracle.ts";
 * // Pages of 2 tokens, 1 sink, 1 window, 1 selected among pages 1-2.
 * const probs = [new Float32Array([0.1, 0.1, 0.05, 0.05, 0.3, 0.2, 0.1, 0.1])];
 * const budget = { pageSize: 2, sinkPages: 1, windowPages: 1, selectPages: 1 };
 * console.log(oraclePages(probs, 8, budget)); // [0, 2, 3]
 * ```
 */
export function oraclePages(
  probs: readonly ArrayLike<number>[],
  numTokens: number,
  budget: PageBudget,
  first = 0,
  slidingWindow = 0,
): number[] {
  const P = budget.pageSize;
  const r = pageRegions(numTokens, budget, slidingWindow);
  const pages: number[] = [];
  for (let p = r.sinkFrom; p < r.sinkCount; p++) pages.push(p);
  const mass: Array<[number, number]> = [];
  for (let p = r.candidateStart; p < r.windowStart; p++) {
    let m = 0;
    for (let t = Math.max(p * P, first); t < (p + 1) * P; t++) {
      for (const row of probs) m += row[t - first];
    }
    mass.push([p, m]);
  }
  mass.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  for (const [p] of mass.slice(0, r.selectCount)) pages.push(p);
  for (let p = r.windowStart; p < r.numPages; p++) pages.push(p);
  return pages.sort((a, b) => a - b);
}

/** Options of {@linkcode evaluateOracle}. */
export interface OracleOptions {
  /**
   * Budget shapes: `budget`, `pageSize`, `sinkPages`/`sink`,
   * `windowPages`/`window` and `name`, as in {@linkcode PolicyConfig}.
   */
  configs: PolicyConfig[];
  /** Context lengths; each text's first `context` tokens are used. */
  contexts: number[];
  /** Texts (each at least as long as the longest context). */
  texts: EvalText[];
  /** As `EvalOptions.prefix` (default 0.5). */
  prefix?: number;
  /** Greedy tokens generated after the prefix (default 128; 0 skips free generation). */
  greedyTokens?: number;
  /** Progress lines. */
  onProgress?: (message: string) => void;
}

/** One run of a reference model over a text. */
interface RefRun {
  logProbs: Float64Array[];
  top: number[];
  greedy: number[];
  /** Per (layer, KV head) attended mass summed over steps. */
  massSum: Float64Array;
  cosines: number[][];
  steps: number;
  ms: number;
}

/**
 * Runs the oracle (or, with `budget` null, full attention) over `tokens`:
 * the prefix with full attention, then teacher forcing and greedy
 * generation from the prefix.
 */
function runReference(
  model: ReferenceModel,
  tokens: readonly number[],
  context: number,
  prefix: number,
  greedyTokens: number,
  budget: PageBudget | null,
): RefRun {
  const c = model.config;
  const { numLayers: L, numKvHeads: hkv, numQueryHeads: hq, headDim: d } = c;
  const group = hq / hkv;
  const massSum = new Float64Array(L * hkv);
  const cosines: number[][] = Array.from({ length: L * hkv }, () => []);
  const prevQ = Array.from({ length: L }, () => new Float32Array(hq * d));
  let havePrev = false, scoring = false;
  let pos = 0;
  const options = budget === null ? {} : {
    keyMask: (l: number, kh: number, probs: readonly Float32Array[], first: number) => {
      const keep = new Uint8Array(pos + 1 - first);
      const pages = oraclePages(probs, pos + 1, budget, first, attentionWindow(c, l));
      let kept = 0;
      for (const p of pages) {
        for (let t = Math.max(p * budget.pageSize, first); t < (p + 1) * budget.pageSize; t++) {
          if (t > pos) break;
          keep[t - first] = 1;
          for (const row of probs) kept += row[t - first];
        }
      }
      if (scoring) massSum[l * hkv + kh] += kept / group;
      return keep;
    },
  };
  const scored = {
    ...options,
    onQkv: (l: number, q: Float32Array) => {
      if (havePrev) {
        const cos = groupMeanCosine(q, prevQ[l], c);
        for (let h = 0; h < hkv; h++) cosines[l * hkv + h].push(cos[h]);
      }
      prevQ[l].set(q);
    },
  };
  let logits: Float32Array = new Float32Array(0);
  for (pos = 0; pos < prefix; pos++) logits = model.forward(tokens[pos], pos);
  const start = logits;
  const logProbs: Float64Array[] = [], top: number[] = [];
  const t0 = performance.now();
  scoring = true;
  for (pos = prefix; pos < context - 1; pos++) {
    const out = model.forward(tokens[pos], pos, scored);
    havePrev = true;
    logProbs.push(logSoftmax(out));
    top.push(argmax(out));
  }
  scoring = false;
  const steps = context - 1 - prefix;
  const ms = (performance.now() - t0) / Math.max(1, steps);
  // Free generation from the prefix (forward rewinds the cache to `pos`).
  const greedy: number[] = [];
  const g = Math.min(greedyTokens, context - prefix);
  logits = start;
  for (let i = 0; i < g; i++) {
    const next = argmax(logits);
    greedy.push(next);
    pos = prefix + i;
    if (i < g - 1) logits = model.forward(next, pos, options);
  }
  return { logProbs, top, greedy, massSum, cosines, steps, ms };
}

function checkOracleConfig(config: PolicyConfig): void {
  if (config === null || typeof config !== "object") {
    throw new TypeError(
      `Cannot evaluate the oracle as a configuration must be an object: received ${config}`,
    );
  }
  for (const key of Object.keys(config)) {
    if (!ORACLE_FIELDS.has(key)) {
      throw new RangeError(
        `Cannot evaluate the oracle as a configuration may set only ${
          [...ORACLE_FIELDS].join(", ")
        }: received '${key}'`,
      );
    }
  }
}

/**
 * Evaluates the page-selection oracle at each budget shape, context and
 * text against `full`, both on the CPU reference model: the same columns
 * as {@linkcode evaluateModel}'s rows (`policy` "oracle" unless named,
 * `base_policy` "oracle", corrected share 0). Mass recall is exact at every
 * scored step. Rows come in configuration order, contexts inner.
 *
 * @example
 * ```ts ignore
 * import { loadModel } from "../model/load.ts";
 * import { evaluateOracle } from "./oracle.ts";
 * const { weights } = await loadModel("models/stories260K/stories260K.bin");
 * const text = { id: "demo", tokens: [1, 403, 407, 261, 378, 432, 383, 286, 261, 376] };
 * const rows = evaluateOracle(weights, {
 *   texts: [text], contexts: [10], configs: [{ budget: 8, pageSize: 2, sinkPages: 1, windowPages: 1 }],
 *   greedyTokens: 0,
 * });
 * console.log(rows[0].mass_recall);
 * ```
 */
export function evaluateOracle(weights: ModelWeights, options: OracleOptions): EvalRow[] {
  const config = weights.config;
  const { contexts, texts } = options;
  const log = options.onProgress ?? (() => {});
  const greedyTokens = options.greedyTokens ?? 128;
  if (!Array.isArray(options.configs) || options.configs.length === 0) {
    throw new RangeError(
      `Cannot evaluate the oracle as 'configs' must be a non-empty array: received ${options.configs}`,
    );
  }
  if (!Number.isInteger(greedyTokens) || greedyTokens < 0) {
    throw new RangeError(
      `Cannot evaluate the oracle as 'greedyTokens' must be an integer of at least 0: received ${greedyTokens}`,
    );
  }
  checkTextsAndContexts(texts, contexts, "evaluate the oracle");
  for (const c of options.configs) checkOracleConfig(c);
  // Resolved as quest's (all KV attended from the GPU, the same budget rule).
  const resolved: ResolvedConfig[][] = options.configs.map((c) =>
    contexts.map((ctx) => {
      const rc = resolveConfig({ ...c, policy: "quest" }, ctx);
      return { ...rc, name: c.name ?? rc.name.replace(/^quest/, "oracle") };
    })
  );
  const prefixes = contexts.map((ctx) => resolvePrefix(options.prefix ?? 0.5, ctx));
  const maxSeqLen = Math.max(...contexts);
  const model = createReferenceModel(weights, { maxSeqLen });
  const { numLayers: L, numKvHeads: hkv } = config;
  const started = performance.now();
  const seconds = () => ((performance.now() - started) / 1000).toFixed(0);

  const references = contexts.map((context, ci) =>
    texts.map((text) => {
      log(`oracle: full (reference) context ${context} ${text.id} (${seconds()} s)`);
      return runReference(model, text.tokens, context, prefixes[ci], greedyTokens, null);
    })
  );
  const rows: EvalRow[] = [];
  options.configs.forEach((_, k) => {
    contexts.forEach((context, ci) => {
      const rc = resolved[k][ci];
      const P = rc.pageSize;
      const budget: PageBudget = {
        pageSize: P,
        sinkPages: rc.sink / P,
        windowPages: rc.window / P,
        selectPages: (rc.budget - rc.sink - rc.window) / P,
      };
      const parts = texts.map((text, ti) => {
        log(`oracle: ${rc.name} context ${context} ${text.id} (${seconds()} s)`);
        const run = runReference(model, text.tokens, context, prefixes[ci], greedyTokens, budget);
        const ref = references[ci][ti];
        const kl = run.logProbs.map((lp, s) => klFromLogProbs(ref.logProbs[s], lp));
        const agree = run.top.filter((t, s) => t === ref.top[s]).length;
        return { run, ref, kl, agree };
      });
      const steps = parts.reduce((a, p) => a + p.run.steps, 0);
      const massSum = new Float64Array(L * hkv);
      const cosines: number[][] = Array.from({ length: L * hkv }, () => []);
      for (const { run } of parts) {
        for (let i = 0; i < L * hkv; i++) {
          massSum[i] += run.massSum[i];
          for (const c of run.cosines[i]) cosines[i].push(c);
        }
      }
      const g = parts[0].run.greedy.length;
      const row = buildRow(
        { rc, configIndex: k, context, engineOptions: {} },
        {
          numLayers: L,
          numKvHeads: hkv,
          massSum,
          massSteps: steps,
          checks: [],
          corrections: [],
          cosines,
        },
        {
          texts: texts.length,
          prefix: prefixes[ci],
          steps,
          ...outcomeColumns(
            parts.map((p) => ({ ...p, greedy: p.run.greedy, fullGreedy: p.ref.greedy })),
            steps,
          ),
          resident_hit_rate: null,
          host_waits_per_step: null,
          ms_per_step: mean(parts.map((p) => p.run.ms)),
          per_text: parts.map((p, ti) => ({
            id: texts[ti].id,
            steps: p.run.steps,
            agreement: p.agree / p.run.steps,
            kl: mean(p.kl),
            mass_recall: p.run.massSum.reduce((a, b) => a + b, 0) / (p.run.steps * L * hkv),
            greedy_match_len: g ? matchLength(p.run.greedy, p.ref.greedy) : null,
            corrected_share: 0,
          })),
        },
      );
      rows.push({ ...row, base_policy: "oracle", pooling: "exact", summary: "exact" });
    });
  });
  return rows;
}
