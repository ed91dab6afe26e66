// Flag checks shared by the scripts: a bad flag prints one line naming the
// flag, the rule and the value, then exits with status 2.

/** Checks of one script's flags; messages start with `script:`. */
export interface FlagChecks {
  /** Prints `script: message` on stderr and exits with status 2. */
  fail(message: string): never;
  /** An integer of at least `min`, or undefined when the flag is absent. */
  intFlag(name: string, value: string | undefined, min: number): number | undefined;
  /** A finite number, or undefined when the flag is absent. */
  numFlag(name: string, value: string | undefined): number | undefined;
}

/** Flag checks whose messages start with `script:`. */
export function flagChecks(script: string): FlagChecks {
  const fail = (message: string): never => {
    console.error(`${script}: ${message}`);
    Deno.exit(2);
  };
  return {
    fail,
    intFlag(name, value, min) {
      if (value === undefined) return undefined;
      const n = Number(value);
      if (value.trim() === "" || !Number.isInteger(n) || n < min) {
        fail(`--${name} must be an integer of at least ${min}: received ${JSON.stringify(value)}`);
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
  };
}
