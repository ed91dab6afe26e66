// Flag checks shared by the scripts: a bad flag prints one line naming the
// flag, the rule and the value, then exits with status 2. Every check runs
// before a model is loaded or a device is made.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { type BudgetInput, resolveBudget, resolveEngineOptions } from "../lib/engine/options.ts";

/** Checks of one script's flags; messages start with `script:`. */
export interface FlagChecks {
  /** Prints `script: message` on stderr and exits with status 2. */
  fail(message: string): never;
  /** `parseArgs` (strict); an unknown flag or a missing value fails with one line. */
  parse<O extends NonNullable<ParseArgsConfig["options"]>>(
    args: string[],
    options: O,
  ): ReturnType<typeof parseArgs<{ args: string[]; options: O; strict: true }>>["values"];
  /** An integer of at least `min`, or undefined when the flag is absent. */
  intFlag(name: string, value: string | undefined, min: number): number | undefined;
  /** A positive multiple of `step`, or undefined when the flag is absent. */
  multipleFlag(name: string, value: string | undefined, step: number): number | undefined;
  /** A finite number, or undefined when the flag is absent. */
  numFlag(name: string, value: string | undefined): number | undefined;
  /** A correction threshold in [-1, 1] (a cosine), or undefined when absent. */
  tauFlag(name: string, value: string | undefined): number | undefined;
  /**
   * Resolves --budget/--page-size/--sink/--window (and --tau) as the engine
   * will, failing with the engine's rule named by its flag.
   */
  retrieval(input: BudgetInput & { tau?: number }): Required<BudgetInput>;
}

const FLAG_NAMES: Record<string, string> = {
  budget: "--budget",
  pageSize: "--page-size",
  sink: "--sink",
  window: "--window",
  tau: "--tau",
};

/** Flag checks whose messages start with `script:`. */
export function flagChecks(script: string): FlagChecks {
  const fail = (message: string): never => {
    console.error(`${script}: ${message}`);
    Deno.exit(2);
  };
  return {
    fail,
    parse(args, options) {
      try {
        return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
      } catch (error) {
        return fail(`${(error as Error).message.replace(/\s*\n\s*/g, " ")} (see --help)`);
      }
    },
    intFlag(name, value, min) {
      if (value === undefined) return undefined;
      const n = Number(value);
      if (value.trim() === "" || !Number.isInteger(n) || n < min) {
        fail(`--${name} must be an integer of at least ${min}: received ${JSON.stringify(value)}`);
      }
      return n;
    },
    multipleFlag(name, value, step) {
      const n = this.intFlag(name, value, step);
      if (n !== undefined && n % step !== 0) {
        fail(`--${name} must be a multiple of ${step}: received ${JSON.stringify(value)}`);
      }
      return n;
    },
    numFlag(name, value) {
      if (value === undefined) return undefined;
      const n = Number(value);
      if (value.trim() === "" || !Number.isFinite(n)) {
        fail(`--${name} must be a number: received ${JSON.stringify(value)}`);
      }
      return n;
    },
    tauFlag(name, value) {
      const t = this.numFlag(name, value);
      if (t !== undefined && (t < -1 || t > 1)) {
        fail(
          `--${name} must be in [-1, 1] (a cosine threshold: -1 never corrects, 1 corrects every head that moved): received ${
            JSON.stringify(value)
          }`,
        );
      }
      return t;
    },
    retrieval(input) {
      const budget = resolveBudget(input);
      try {
        // A stand-in shape: only the budget geometry and tau are checked here.
        resolveEngineOptions({
          numLayers: 1,
          numQueryHeads: 1,
          numKvHeads: 1,
          headDim: 8,
          maxContext: 1,
          ...budget,
          ...(input.tau === undefined ? {} : { tau: input.tau }),
        });
      } catch (error) {
        const message = (error as Error).message
          .replace(/^Cannot create a retrieval engine as /, "")
          .replace(/'(\w+)'/g, (m, name: string) => FLAG_NAMES[name] ?? m);
        fail(message);
      }
      return budget;
    },
  };
}
