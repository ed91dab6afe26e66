/**
 * Sweeps: from lists of knob values to a list of policy configurations.
 * The base grid is every policy at every budget with each knob at its first
 * value; each knob given more than one value adds a one-at-a-time sweep
 * (the other knobs at their first value) for the policies it applies to.
 *
 * @module
 */

import type { PolicyName } from "../engine/engine.ts";
import {
  type CORRECTION_MODES,
  parsePolicyConfig,
  type PolicyConfig,
  type POOLING_MODES,
  shareLabel,
  type SUMMARY_KINDS,
} from "./config.ts";
import type { EvalRow } from "./row.ts";

/** Knob lists of a sweep; a knob left out keeps the engine's default. */
export interface SweepSpec {
  /** Policies of the base grid (default freekv, quest, streaming). */
  policies?: PolicyName[];
  /** Budgets: tokens, shares or fractions (default "1/4", "1/8"). */
  budgets?: Array<number | string>;
  /** Page sizes in tokens. */
  pageSizes?: number[];
  /** Sink pages. */
  sinkPages?: number[];
  /** Window pages. */
  windowPages?: number[];
  /** freekv correction thresholds. */
  taus?: number[];
  /** GQA pooling modes. */
  poolings?: Array<(typeof POOLING_MODES)[number]>;
  /** Page summary kinds. */
  summaries?: Array<(typeof SUMMARY_KINDS)[number]>;
  /** freekv correction modes. */
  corrections?: Array<(typeof CORRECTION_MODES)[number]>;
  /** Pages cached on the GPU for corrections. */
  cachePages?: number[];
  /** Steps freekv's host follows behind the GPU (engine option `answerLag`). */
  answerLags?: number[];
  /** Budgets the knob sweeps run at (default: every budget). */
  sweepBudgets?: Array<number | string>;
}

/** A knob a sweep varies. */
export type SweepKnob =
  | "budget"
  | "pageSize"
  | "sinkPages"
  | "windowPages"
  | "tau"
  | "pooling"
  | "summary"
  | "correction"
  | "cachePages"
  | "answerLag";

/** One sweep: the knob, and the configurations (indices into `configs`) along it. */
export interface Sweep {
  /** The knob varied. */
  knob: SweepKnob;
  /** Indices into {@linkcode SweepPlan.configs}. */
  members: number[];
}

/** What {@linkcode buildSweep} returns. */
export interface SweepPlan {
  /** Every distinct configuration. */
  configs: PolicyConfig[];
  /** The base grid (policy × budget) indices. */
  base: number[];
  /** The sweeps: `budget` (the base grid) first, then one per knob given several values. */
  sweeps: Sweep[];
}

const KNOBS: Array<{
  knob: Exclude<SweepKnob, "budget">;
  list: keyof SweepSpec;
  field: keyof PolicyConfig;
  policies: PolicyName[];
}> = [
  {
    knob: "pageSize",
    list: "pageSizes",
    field: "pageSize",
    policies: ["streaming", "quest", "sync-offload", "freekv"],
  },
  {
    knob: "sinkPages",
    list: "sinkPages",
    field: "sinkPages",
    policies: ["streaming", "quest", "sync-offload", "freekv"],
  },
  {
    knob: "windowPages",
    list: "windowPages",
    field: "windowPages",
    policies: ["streaming", "quest", "sync-offload", "freekv"],
  },
  { knob: "tau", list: "taus", field: "tau", policies: ["freekv"] },
  {
    knob: "pooling",
    list: "poolings",
    field: "pooling",
    policies: ["quest", "sync-offload", "freekv"],
  },
  {
    knob: "summary",
    list: "summaries",
    field: "summary",
    policies: ["quest", "sync-offload", "freekv"],
  },
  { knob: "correction", list: "corrections", field: "correction", policies: ["freekv"] },
  { knob: "cachePages", list: "cachePages", field: "cachePages", policies: ["freekv"] },
  { knob: "answerLag", list: "answerLags", field: "answerLag", policies: ["freekv"] },
];

function valueLabel(knob: SweepKnob, value: unknown): string {
  switch (knob) {
    case "pooling":
    case "summary":
    case "correction":
      return String(value);
    case "pageSize":
      return `page=${value}`;
    case "sinkPages":
      return `sink=${value}p`;
    case "windowPages":
      return `window=${value}p`;
    default:
      return `${knob}=${value}`;
  }
}

/**
 * Expands knob lists into configurations (duplicates merged, so a sweep's
 * point at the base value is the base configuration itself).
 *
 * @example
 * ```ts
 * import { buildSweep } from "./sweep.ts";
 * const plan = buildSweep({ policies: ["freekv", "quest"], budgets: ["1/4", "1/8"], taus: [0.9, 0.8] });
 * console.log(plan.configs.length, plan.sweeps.map((s) => s.knob).join()); // 6 budget,tau
 * ```
 */
export function buildSweep(spec: SweepSpec): SweepPlan {
  const policies = spec.policies ?? ["freekv", "quest", "streaming"];
  const budgets = spec.budgets ?? ["1/4", "1/8"];
  const sweepBudgets = spec.sweepBudgets ?? budgets;
  const configs: PolicyConfig[] = [];
  const keys = new Map<string, number>();
  const add = (config: PolicyConfig): number => {
    const { name: _name, ...rest } = parsePolicyConfig(config);
    const key = JSON.stringify(Object.entries(rest).sort(([a], [b]) => a.localeCompare(b)));
    const known = keys.get(key);
    if (known !== undefined) return known;
    configs.push(config);
    keys.set(key, configs.length - 1);
    return configs.length - 1;
  };
  const baseFor = (policy: PolicyName, budget: number | string): PolicyConfig => {
    const c: PolicyConfig = { name: policy, policy, budget };
    for (const k of KNOBS) {
      const list = spec[k.list] as unknown[] | undefined;
      if (list?.length && k.policies.includes(policy)) c[k.field] = list[0];
    }
    return c;
  };
  const base = policies.flatMap((p) => budgets.map((b) => add(baseFor(p, b))));
  const sweeps: Sweep[] = [{ knob: "budget", members: base }];
  for (const k of KNOBS) {
    const list = spec[k.list] as unknown[] | undefined;
    if (!list || list.length < 2) continue;
    const members: number[] = [];
    for (const p of policies) {
      if (!k.policies.includes(p)) continue;
      for (const b of sweepBudgets) {
        for (const value of list) {
          const c = baseFor(p, b);
          c[k.field] = value;
          if (value !== list[0]) c.name = `${p}/${valueLabel(k.knob, value)}`;
          members.push(add(c));
        }
      }
    }
    if (members.length) sweeps.push({ knob: k.knob, members });
  }
  return { configs, base, sweeps };
}

/** How to plot one sweep: x, the line of a row, and labels. */
export interface SweepAxes<Row> {
  /** x value of a row. */
  x: (row: Row) => number | string;
  /** Line a row belongs to. */
  series: (row: Row) => string;
  /** x axis label. */
  xLabel: string;
  /** Log x axis (budgets). */
  xType: "linear" | "log" | "point";
  /** Tick labels. */
  xTickFormat?: (x: number) => string;
}

/** The fields of an evaluation row ({@linkcode EvalRow}) the sweep axes read. */
export type SweepRowFields = Pick<
  EvalRow,
  | "policy"
  | "base_policy"
  | "context"
  | "budget_share"
  | "budget_spec"
  | "page_size"
  | "sink"
  | "window"
  | "tau"
  | "correction"
  | "cache_pages"
  | "answer_lag"
  | "pooling"
  | "summary"
>;

/**
 * The axes a sweep is drawn on: the budget sweep against the budget share,
 * one line per policy; every other knob against its values (categories for
 * pooling, summary and correction), one line per policy and budget. Contexts are told apart by
 * panels (`facet: "context"` in `plotSweep`).
 *
 * @example
 * ```ts
 * import { sweepAxes } from "./sweep.ts";
 * console.log(sweepAxes("tau").xLabel); // tau
 * ```
 */
export function sweepAxes<Row extends SweepRowFields>(knob: SweepKnob): SweepAxes<Row> {
  switch (knob) {
    case "budget":
      return {
        x: (r) => r.budget_share,
        series: (r) => r.policy,
        xLabel: "budget (share of the context)",
        xType: "log",
        xTickFormat: shareLabel,
      };
    case "pooling":
    case "summary":
    case "correction":
      return {
        x: (r) => r[knob] ?? "-",
        series: (r) => `${r.base_policy} ${r.budget_spec}`,
        xLabel: knob,
        xType: "point",
      };
    default: {
      const x: Record<string, (r: Row) => number> = {
        tau: (r) => r.tau ?? NaN,
        pageSize: (r) => r.page_size,
        sinkPages: (r) => r.sink / r.page_size,
        windowPages: (r) => r.window / r.page_size,
        cachePages: (r) => r.cache_pages ?? NaN,
        answerLag: (r) => r.answer_lag,
      };
      const labels: Record<string, string> = {
        tau: "tau",
        pageSize: "page size (tokens)",
        sinkPages: "sink (pages)",
        windowPages: "window (pages)",
        cachePages: "cached pages",
        answerLag: "answer lag (steps)",
      };
      return {
        x: x[knob],
        series: (r) => `${r.base_policy} ${r.budget_spec}`,
        xLabel: labels[knob],
        xType: "linear",
      };
    }
  }
}
