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
  if (typeof value === "object") {
    const name = (value as object).constructor?.name;
    if (name && name !== "Object") return `a ${name}`;
    const keys = Object.keys(value as object);
    return keys.length
      ? `an object with keys ${keys.slice(0, 6).join(", ")}${keys.length > 6 ? ", ..." : ""}`
      : "an empty object";
  }
  return typeof value;
}

/**
 * Throws a `TypeError` unless `value` is a non-null object (an options bag,
 * a set of buffers, a step).
 *
 * @example
 * ```ts
 * import { assertObject } from "./errors.ts";
 * try {
 *   assertObject("options", null, "create a cache");
 * } catch (e) {
 *   console.log((e as Error).message); // Cannot create a cache as 'options' must be an object: received null
 * }
 * ```
 */
export function assertObject<T>(
  name: string,
  value: T,
  action: string,
): asserts value is T & object {
  if (value == null || typeof value !== "object") {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be an object: received ${describeValue(value)}`,
    );
  }
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
 * Throws a `TypeError` unless `value` is a finite number, and a
 * `RangeError` when it is below `min`.
 *
 * @example
 * ```ts
 * import { assertFinite } from "./errors.ts";
 * assertFinite("tau", 0.9, "create an engine");
 * assertFinite("temperature", 0.8, "sample", 0);
 * ```
 */
export function assertFinite(
  name: string,
  value: unknown,
  action: string,
  min = -Infinity,
): asserts value is number {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be a finite number: received ${describeValue(value)}`,
    );
  }
  if (value < min) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must be at least ${min}: received ${value}`,
    );
  }
}

/**
 * Throws a `TypeError` unless `value` is a boolean.
 *
 * @example
 * ```ts
 * import { assertBoolean } from "./errors.ts";
 * assertBoolean("storeQuery", true, "plan page selection");
 * ```
 */
export function assertBoolean(
  name: string,
  value: unknown,
  action: string,
): asserts value is boolean {
  if (typeof value !== "boolean") {
    throw new TypeError(
      `Cannot ${action} as '${name}' must be a boolean: received ${describeValue(value)}`,
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
 * (grouped-query attention); both must be positive integers. `names` are
 * the two arguments' names in messages (default `numQueryHeads`,
 * `numKvHeads`; a config file may call them otherwise).
 *
 * @example
 * ```ts
 * import { assertHeadsDivide } from "./errors.ts";
 * assertHeadsDivide(32, 8, "run attention");
 * try {
 *   assertHeadsDivide(8, 3, "load a config", ["num_attention_heads", "num_key_value_heads"]);
 * } catch (e) {
 *   console.log((e as Error).message); // Cannot load a config as 'num_attention_heads' must be a multiple of 'num_key_value_heads' (3): received 8
 * }
 * ```
 */
export function assertHeadsDivide(
  numQueryHeads: unknown,
  numKvHeads: unknown,
  action: string,
  names: readonly [string, string] = ["numQueryHeads", "numKvHeads"],
): void {
  const [q, kv] = names;
  assertInteger(kv, numKvHeads, action, 1);
  assertInteger(q, numQueryHeads, action, 1);
  if (numQueryHeads % numKvHeads !== 0) {
    throw new RangeError(
      `Cannot ${action} as '${q}' must be a multiple of '${kv}' (${numKvHeads}): received ${numQueryHeads}`,
    );
  }
}

/**
 * The error every disposed object throws when used again: a `TypeError`
 * `Cannot <action> as the <what> must not be disposed: received a disposed
 * <what>` (the message convention: the rule, then what was received).
 *
 * @example
 * ```ts
 * import { disposedError } from "./errors.ts";
 * console.log(disposedError("run attention", "plan").message);
 * // Cannot run attention as the plan must not be disposed: received a disposed plan
 * ```
 */
export function disposedError(action: string, what: string): TypeError {
  return new TypeError(
    `Cannot ${action} as the ${what} must not be disposed: received a disposed ${what}`,
  );
}

const lostDevices = new WeakMap<GPUDevice, GPUDeviceLostInfo>();
const watchedDevices = new WeakSet<GPUDevice>();

/**
 * Starts following `device.lost` so that later checks know, without
 * waiting, that the device was lost (or destroyed). `requestGpu` and every
 * `create*` call it; a device lost before its first call is known one
 * macrotask later.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { isDeviceLost, watchDevice } from "./errors.ts";
 * const gpu = await requestGpu();
 * watchDevice(gpu.device);
 * gpu.device.destroy();
 * await gpu.lost;
 * console.log(isDeviceLost(gpu.device)); // true
 * ```
 */
export function watchDevice(device: GPUDevice): void {
  if (watchedDevices.has(device)) return;
  watchedDevices.add(device);
  device.lost.then((info) => lostDevices.set(device, info), () => {});
}

/**
 * Whether `device` is known to be lost (destroyed included).
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { isDeviceLost } from "./errors.ts";
 * using gpu = await requestGpu();
 * console.log(isDeviceLost(gpu.device)); // false
 * ```
 */
export function isDeviceLost(device: GPUDevice): boolean {
  return lostDevices.has(device);
}

/**
 * The error of every operation on a lost (or destroyed) device:
 * `Cannot <action> as the GPU device was lost (<reason>: <message>)`. Work
 * already submitted is gone; make a new device and new engines.
 *
 * @example
 * ```ts
 * import { DeviceLostError } from "./errors.ts";
 * const e = new DeviceLostError("run a decode step", { reason: "destroyed", message: "" });
 * console.log(e.message); // Cannot run a decode step as the GPU device was lost (destroyed) ...
 * ```
 */
export class DeviceLostError extends Error {
  /** `"destroyed"` or `"unknown"`. */
  readonly reason: string;
  /** Creates the error for `action` from the device's lost info. */
  constructor(action: string, info: { reason: string; message: string }, options?: ErrorOptions) {
    super(
      `Cannot ${action} as the GPU device was lost (${info.reason}${
        info.message ? `: ${info.message}` : ""
      }); request a new device and create new objects on it`,
      options,
    );
    this.name = "DeviceLostError";
    this.reason = info.reason;
  }
}

/**
 * Throws a `TypeError` unless `device` is a `GPUDevice` (a hint is added
 * when `requestGpu()`'s result was passed instead of its `.device`), and a
 * {@linkcode DeviceLostError} when the device is known to be lost.
 *
 * @example
 * ```ts
 * import { assertDevice } from "./errors.ts";
 * try {
 *   assertDevice(undefined, "create a kernel");
 * } catch (e) {
 *   console.log((e as Error).message); // Cannot create a kernel as 'device' must be a GPUDevice ...
 * }
 * ```
 */
export function assertDevice(device: unknown, action: string): asserts device is GPUDevice {
  if (typeof GPUDevice === "undefined" || !(device instanceof GPUDevice)) {
    const inner = device != null && typeof device === "object" &&
      (device as { device?: unknown }).device;
    const hint = typeof GPUDevice !== "undefined" && inner instanceof GPUDevice
      ? " (pass requestGpu()'s .device, not its result)"
      : "";
    throw new TypeError(
      `Cannot ${action} as 'device' must be a GPUDevice${hint}: received ${describeValue(device)}`,
    );
  }
  watchDevice(device);
  const info = lostDevices.get(device);
  if (info) throw new DeviceLostError(action, info);
}

/**
 * For an error raised by GPU work on `device`: a {@linkcode DeviceLostError}
 * (with the error as its cause) when the device is lost or turns out lost
 * within one macrotask, else `error` itself.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { lostOr } from "./errors.ts";
 * using gpu = await requestGpu();
 * const e = await lostOr(gpu.device, "read", new Error("x"));
 * console.log((e as Error).message); // x
 * ```
 */
export async function lostOr(device: GPUDevice, action: string, error: unknown): Promise<unknown> {
  if (error instanceof DeviceLostError) return error;
  watchDevice(device);
  if (!lostDevices.has(device)) await new Promise((resolve) => setTimeout(resolve, 0));
  const info = lostDevices.get(device);
  return info ? new DeviceLostError(action, info, { cause: error }) : error;
}
