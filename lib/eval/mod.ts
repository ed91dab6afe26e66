/**
 * The evaluation layer: how close each retrieval policy comes to full
 * attention on a real model (teacher forcing, KL, attention-mass recall,
 * greedy agreement, freekv's corrections and query similarity), the
 * page-selection oracle on the CPU reference model (the ceiling of any page
 * selection at a budget), sweeps of policy configurations, tables and plots. `scripts/eval.ts` is its
 * command line; notebooks call these functions directly.
 *
 * @example
 * ```ts
 * import { buildSweep, formatTable, klDivergence } from "./mod.ts";
 * console.log(klDivergence([0, 1], [0, 1]), buildSweep({}).configs.length); // 0 6
 * console.log(typeof formatTable); // function
 * ```
 *
 * @module
 */

export * from "./charts.ts";
export * from "./config.ts";
export * from "./metrics.ts";
export * from "./plot.ts";
export * from "./report.ts";
export type { EvalRow } from "./row.ts";
export * from "./run.ts";
export * from "./stories.ts";
export * from "./sweep.ts";
export * from "./tap.ts";
export * from "./trace_eval.ts";
export * from "./oracle.ts";
