/**
 * Policy configurations of the evaluation harness: plain objects whose
 * engine fields pass through to {@linkcode EngineOptions}, with the budget
 * given in tokens or as a share of the context, and sink/window in pages.
 *
 * @module
 */

import { type EngineOptions, POLICIES, type PolicyName } from "../engine/engine.ts";

/** freekv's correction modes (engine option `correction`). */
export const CORRECTION_MODES = ["sync", "resident"] as const;
/** GQA pooling modes of page selection (engine option `pooling`). */
export const POOLING_MODES = ["softmax-mean", "mean", "max"] as const;
/** Page summary kinds (engine option `summary`). */
export const SUMMARY_KINDS = ["minmax", "box"] as const;

/**
 * One policy configuration. Every field other than `name`, `budget`,
 * `sinkPages` and `windowPages` is an engine option and passes through to
 * the engine unchanged (so options the engine gains later, such as
 * `correction` and `cachePages`, need no change here beyond their check).
 */
export interface PolicyConfig {
  /** Label in tables and plots (default: see {@linkcode configLabel}). */
  name?: string;
  /** Engine policy (default `freekv`). */
  policy?: PolicyName;
  /**
   * Tokens attended per step: an integer number of tokens, a share of the
   * context below 1 (0.25), or a fraction string ("1/4"); rounded down to
   * whole pages. Default "1/4". Ignored by `full`.
   */
  budget?: number | string;
  /** Tokens per page (default 8). */
  pageSize?: number;
  /** Sink pages (default 2); `sink` in tokens overrides it. */
  sinkPages?: number;
  /** Window pages (default 2); `window` in tokens overrides it. */
  windowPages?: number;
  /** Sink tokens (engine option). */
  sink?: number;
  /** Window tokens (engine option). */
  window?: number;
  /** freekv correction threshold (engine option, default 0.9). */
  tau?: number;
  /** GQA pooling (engine option). */
  pooling?: (typeof POOLING_MODES)[number];
  /** Page summary kind (engine option). */
  summary?: (typeof SUMMARY_KINDS)[number];
  /** freekv correction mode (engine option; needs an engine that has it). */
  correction?: (typeof CORRECTION_MODES)[number];
  /** Pages cached on the GPU for corrections (engine option; needs an engine that has it). */
  cachePages?: number;
  /** Steps the engine's host follows behind the GPU (engine option, default 1). */
  answerLag?: number;
  /** Any other engine option. */
  [engineOption: string]: unknown;
}

/** A configuration resolved for one context length. */
export interface ResolvedConfig {
  /** Label. */
  name: string;
  /** The configuration as given (normalized). */
  config: PolicyConfig;
  /** Engine policy. */
  policy: PolicyName;
  /** Tokens attended per step (the context for `full`). */
  budget: number;
  /** The budget as given ("1/4", "0.25", "96"). */
  budgetSpec: string;
  /** Tokens per page. */
  pageSize: number;
  /** Sink tokens. */
  sink: number;
  /** Window tokens. */
  window: number;
  /** The engine options of this configuration (shape and maxContext excluded). */
  engine: Partial<EngineOptions> & Record<string, unknown>;
}

const EVAL_FIELDS = new Set(["name", "budget", "sinkPages", "windowPages"]);
/** The fields that shape a configuration's budget (and its name): no policy knob among them. */
export const BUDGET_SHAPE_FIELDS: readonly string[] = [
  "name",
  "budget",
  "pageSize",
  "sinkPages",
  "windowPages",
  "sink",
  "window",
];
/** Engine options a configuration may set, and how each is checked. */
const ENGINE_FIELDS: Record<string, (v: unknown) => string | null> = {
  policy: oneOf(POLICIES),
  pageSize: integer(1),
  sink: integer(0),
  window: integer(1),
  tau: (v) =>
    typeof v === "number" && Number.isFinite(v) && v >= -1 && v <= 1 ? null : "a number in [-1, 1]",
  pooling: oneOf(POOLING_MODES),
  summary: oneOf(SUMMARY_KINDS),
  correction: oneOf(CORRECTION_MODES),
  cachePages: integer(0),
  answerLag: integer(1),
  dtype: oneOf(["f32", "f16"]),
  fullFirstLayer: boolean,
  fuseCorrection: boolean,
  hostLayout: oneOf(["hnd", "nhd"]),
  recallBuffering: oneOf(["double", "single"]),
  recallStaging: oneOf(["write-buffer", "mapped"]),
};

function oneOf(values: readonly string[]): (v: unknown) => string | null {
  return (v) =>
    typeof v === "string" && values.includes(v)
      ? null
      : `one of ${values.map((x) => `"${x}"`).join(", ")}`;
}
function integer(min: number): (v: unknown) => string | null {
  return (v) =>
    Number.isInteger(v) && (v as number) >= min ? null : `an integer of at least ${min}`;
}
function boolean(v: unknown): string | null {
  return typeof v === "boolean" ? null : "a boolean";
}

function fail(what: string, message: string): never {
  throw new RangeError(`Cannot ${what} as ${message}`);
}

/**
 * Parses a budget: an integer token count ("96", 96), a share of the
 * context below 1 ("0.25", 0.25) or a fraction ("1/4"). Returns the share
 * (below 1) or the token count (at least 1).
 *
 * @example
 * ```ts
 * import { parseBudget } from "./config.ts";
 * console.log(parseBudget("1/8"), parseBudget("96"), parseBudget(0.25)); // 0.125 96 0.25
 * ```
 */
export function parseBudget(value: number | string): number {
  const what = "parse a budget";
  const bad = () =>
    fail(
      what,
      `it must be a token count, a share below 1 or a fraction like "1/4": received ${
        JSON.stringify(value)
      }`,
    );
  let n: number;
  if (typeof value === "number") n = value;
  else if (typeof value === "string") {
    const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(value);
    if (m) {
      const num = Number(m[1]), den = Number(m[2]);
      if (den === 0 || num === 0 || num > den) bad();
      n = num / den;
      if (n === 1) return 1;
      return n;
    }
    if (value.trim() === "") bad();
    n = Number(value);
  } else return bad();
  if (!Number.isFinite(n) || n <= 0) bad();
  if (n >= 1 && !Number.isInteger(n)) bad();
  return n;
}

/**
 * Checks a configuration and returns a normalized copy; throws a
 * `RangeError` naming the field for a wrong value or an unknown field.
 *
 * @example
 * ```ts
 * import { parsePolicyConfig } from "./config.ts";
 * console.log(parsePolicyConfig({ policy: "quest", budget: "1/8" }).policy); // quest
 * ```
 */
export function parsePolicyConfig(input: unknown): PolicyConfig {
  const what = "parse a policy configuration";
  if (input == null || typeof input !== "object" || Array.isArray(input)) {
    fail(what, `it must be an object: received ${JSON.stringify(input)}`);
  }
  const config = { ...(input as Record<string, unknown>) } as PolicyConfig;
  for (const [key, value] of Object.entries(config)) {
    if (value === undefined) {
      delete config[key];
      continue;
    }
    if (EVAL_FIELDS.has(key)) continue;
    const check = ENGINE_FIELDS[key];
    if (!check) {
      fail(
        what,
        `'${key}' must be one of ${
          [...EVAL_FIELDS, ...Object.keys(ENGINE_FIELDS)].join(", ")
        }: received an unknown field`,
      );
    }
    const rule = check(value);
    if (rule) fail(what, `'${key}' must be ${rule}: received ${JSON.stringify(value)}`);
  }
  if (config.name !== undefined && (typeof config.name !== "string" || config.name === "")) {
    fail(what, `'name' must be a non-empty string: received ${JSON.stringify(config.name)}`);
  }
  if (config.budget !== undefined) parseBudget(config.budget);
  for (const key of ["sinkPages", "windowPages"] as const) {
    const v = config[key];
    if (v !== undefined && !(Number.isInteger(v) && v >= (key === "sinkPages" ? 0 : 1))) {
      fail(
        what,
        `'${key}' must be an integer of at least ${key === "sinkPages" ? 0 : 1}: received ${
          JSON.stringify(v)
        }`,
      );
    }
  }
  return config;
}

/**
 * The default label of a configuration: the policy, then the fields that
 * differ from the defaults (budget, page size and sink/window excluded,
 * which the tables show in their own columns), e.g. `freekv/mean/tau=0.8`.
 *
 * @example
 * ```ts
 * import { configLabel } from "./config.ts";
 * console.log(configLabel({ policy: "freekv", pooling: "mean", tau: 0.8, budget: "1/4" })); // freekv/mean/tau=0.8
 * ```
 */
export function configLabel(config: PolicyConfig): string {
  if (config.name) return config.name;
  const parts: string[] = [config.policy ?? "freekv"];
  const skip = new Set(["policy", ...BUDGET_SHAPE_FIELDS]);
  for (const [key, value] of Object.entries(config)) {
    if (skip.has(key) || value === undefined) continue;
    if (key === "pooling" || key === "summary" || key === "correction") parts.push(String(value));
    else parts.push(`${key}=${value}`);
  }
  return parts.join("/");
}

/**
 * Resolves a configuration for a context of `context` tokens: the budget
 * in whole pages (at least sink + window + one page), sink and window in
 * tokens, and the engine options.
 *
 * @example
 * ```ts
 * import { resolveConfig } from "./config.ts";
 * const r = resolveConfig({ policy: "freekv", budget: "1/8", sinkPages: 1, windowPages: 2 }, 512);
 * console.log(r.budget, r.sink, r.window); // 64 8 16
 * ```
 */
export function resolveConfig(input: PolicyConfig, context: number): ResolvedConfig {
  const what = "resolve a policy configuration";
  const config = parsePolicyConfig(input);
  if (!Number.isInteger(context) || context < 1) {
    fail(what, `'context' must be an integer of at least 1: received ${context}`);
  }
  const policy = config.policy ?? "freekv";
  const pageSize = config.pageSize ?? 8;
  const sink = config.sink ?? pageSize * (config.sinkPages ?? 2);
  const window = config.window ?? pageSize * (config.windowPages ?? 2);
  const budgetSpec = String(config.budget ?? "1/4");
  const share = parseBudget(config.budget ?? "1/4");
  let budget: number;
  if (policy === "full") budget = context;
  else {
    const tokens = share < 1 ? context * share : share;
    budget = Math.floor(tokens / pageSize) * pageSize;
    if (budget < sink + window + pageSize) {
      fail(
        what,
        `the budget (${budgetSpec} of ${context} tokens = ${budget} in pages of ${pageSize}) must be at least sink + window + one page (${
          sink + window + pageSize
        })`,
      );
    }
  }
  const engine: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    if (!EVAL_FIELDS.has(key)) engine[key] = value;
  }
  // `full` ignores the budget; give the engine the smallest valid one.
  const engineBudget = policy === "full" ? sink + window + pageSize : budget;
  Object.assign(engine, { policy, pageSize, budget: engineBudget, sink, window });
  return {
    name: configLabel(config),
    config,
    policy,
    budget,
    budgetSpec,
    pageSize,
    sink,
    window,
    engine: engine as ResolvedConfig["engine"],
  };
}

/**
 * Formats a share as a fraction when it is close to 1/n (1/4, 1/8), else
 * as a decimal; handy for `xTickFormat` of budget shares.
 *
 * @example
 * ```ts
 * import { shareLabel } from "./config.ts";
 * console.log(shareLabel(0.125), shareLabel(0.3)); // 1/8 0.3
 * ```
 */
export function shareLabel(share: number): string {
  const n = Math.round(1 / share);
  if (n >= 1 && Math.abs(1 / n - share) < 1e-9) return n === 1 ? "1" : `1/${n}`;
  return String(Number(share.toFixed(4)));
}
