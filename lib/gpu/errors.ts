/**
 * Argument checks shared by every module. Each throws before any GPU work
 * starts, with a message that names the argument, the rule and the value.
 *
 * @module
 */

/** Formats a received value for an error message. */
export function describeValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean" || value == null) {
    return String(value);
  }
  if (ArrayBuffer.isView(value)) {
    return `${value.constructor.name} of length ${(value as unknown as ArrayLike<number>).length}`;
  }
  if (Array.isArray(value)) return `array of length ${value.length}`;
  return typeof value;
}

/**
 * Throws a `TypeError` unless `value` is an integer, and a `RangeError` unless
 * it lies in `[min, max]`.
 *
 * @example
 * ```ts
 * import { assertInteger } from "./errors.ts";
 * assertInteger("pageSize", 32, "create a cache", 1);
 * ```
 */
export function assertInteger(
  name: string,
  value: unknown,
  action: string,
  min = -Infinity,
  max = Infinity,
): asserts value is number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be an integer: received ${describeValue(value)}`,
    );
  }
  if (value < min || value > max) {
    const rule = max === Infinity
      ? `at least ${min}`
      : min === -Infinity
      ? `at most ${max}`
      : `between ${min} and ${max}`;
    throw new RangeError(`Cannot ${action} as '${name}' must be ${rule}: received ${value}`);
  }
}

/**
 * Throws a `TypeError` unless `value` is a finite number.
 *
 * @example
 * ```ts
 * import { assertFinite } from "./errors.ts";
 * assertFinite("tau", 0.9, "create an engine");
 * ```
 */
export function assertFinite(
  name: string,
  value: unknown,
  action: string,
): asserts value is number {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be a finite number: received ${describeValue(value)}`,
    );
  }
}

/**
 * Throws a `RangeError` unless `array.length === expected`.
 *
 * @example
 * ```ts
 * import { assertLength } from "./errors.ts";
 * assertLength("q", new Float32Array(8), 8, "run attention");
 * ```
 */
export function assertLength(
  name: string,
  array: ArrayLike<unknown>,
  expected: number,
  action: string,
): void {
  if (array == null || typeof array.length !== "number") {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be an array: received ${describeValue(array)}`,
    );
  }
  if (array.length !== expected) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must have length ${expected}: received length ${array.length}`,
    );
  }
}

/**
 * Throws a `RangeError` naming the first index at which `array` holds a value
 * that is not finite (NaN or infinite).
 *
 * @example
 * ```ts
 * import { assertAllFinite } from "./errors.ts";
 * assertAllFinite("q", new Float32Array([1, 2]), "run attention");
 * ```
 */
export function assertAllFinite(name: string, array: ArrayLike<number>, action: string): void {
  for (let i = 0; i < array.length; i++) {
    if (!Number.isFinite(array[i])) {
      throw new RangeError(
        `Cannot ${action} as '${name}' must hold only finite values: received ${
          array[i]
        } at index ${i}`,
      );
    }
  }
}

/**
 * Throws a `TypeError` unless `value` is one of `choices`.
 *
 * @example
 * ```ts
 * import { assertOneOf } from "./errors.ts";
 * assertOneOf("dtype", "f16", ["f32", "f16"] as const, "create a pool");
 * ```
 */
export function assertOneOf<T extends string>(
  name: string,
  value: unknown,
  choices: readonly T[],
  action: string,
): asserts value is T {
  if (!choices.includes(value as T)) {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be one of ${
        choices.map((c) => JSON.stringify(c)).join(", ")
      }: received ${describeValue(value)}`,
    );
  }
}

/**
 * Throws a `TypeError` unless `buffer` is a `GPUBuffer` with `STORAGE` usage.
 *
 * @example
 * ```ts
 * import { assertStorageBuffer } from "./errors.ts";
 * try {
 *   assertStorageBuffer("q", new Float32Array(4), "run attention");
 * } catch (e) {
 *   console.log((e as Error).message); // Cannot run attention as 'q' must be a GPUBuffer: ...
 * }
 * ```
 */
export function assertStorageBuffer(
  name: string,
  buffer: unknown,
  action: string,
): asserts buffer is GPUBuffer {
  if (typeof GPUBuffer === "undefined" || !(buffer instanceof GPUBuffer)) {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be a GPUBuffer: received ${describeValue(buffer)}`,
    );
  }
  if ((buffer.usage & GPUBufferUsage.STORAGE) === 0) {
    throw new TypeError(
      `Cannot ${action} as '${name}' must have STORAGE usage: received buffer '${buffer.label}' with usage ${buffer.usage}`,
    );
  }
}

/**
 * Throws a `RangeError` unless `numQueryHeads` is a multiple of `numKvHeads`
 * (grouped-query attention); both must be positive integers.
 *
 * @example
 * ```ts
 * import { assertHeadsDivide } from "./errors.ts";
 * assertHeadsDivide(32, 8, "run attention");
 * ```
 */
export function assertHeadsDivide(
  numQueryHeads: unknown,
  numKvHeads: unknown,
  action: string,
): void {
  assertInteger("numKvHeads", numKvHeads, action, 1);
  assertInteger("numQueryHeads", numQueryHeads, action, 1);
  if (numQueryHeads % numKvHeads !== 0) {
    throw new RangeError(
      `Cannot ${action} as 'numQueryHeads' must be a multiple of 'numKvHeads' (${numKvHeads}): received ${numQueryHeads}`,
    );
  }
}

/**
 * The error every disposed object throws when used again: a `TypeError`
 * `Cannot <action> as the <what> was disposed`.
 *
 * @example
 * ```ts
 * import { disposedError } from "./errors.ts";
 * console.log(disposedError("run attention", "plan").message); // Cannot run attention as the plan was disposed
 * ```
 */
export function disposedError(action: string, what: string): TypeError {
  return new TypeError(`Cannot ${action} as the ${what} was disposed`);
}
