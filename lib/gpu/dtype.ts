/**
 * Element types of KV data. `f16` values are stored as IEEE half floats
 * (`Float16Array` on the host, `f16` in WGSL, which needs `shader-f16`).
 *
 * @module
 */

/** Storage precision of keys and values. */
export type KvDtype = "f32" | "f16";

/** Every supported {@linkcode KvDtype}. */
export const KV_DTYPES: readonly KvDtype[] = ["f32", "f16"];

/**
 * Bytes per element of a {@linkcode KvDtype}.
 *
 * @example
 * ```ts
 * import { bytesPerElement } from "./dtype.ts";
 * console.log(bytesPerElement("f16")); // 2
 * ```
 */
export function bytesPerElement(dtype: KvDtype): number {
  return dtype === "f16" ? 2 : 4;
}

/** A host typed array of a {@linkcode KvDtype}. */
export type KvArray = Float32Array | Float16Array;

/**
 * Allocates a zeroed host array of `length` elements of `dtype`.
 *
 * @example
 * ```ts
 * import { allocKvArray } from "./dtype.ts";
 * const a = allocKvArray("f16", 4); // Float16Array(4)
 * ```
 */
export function allocKvArray(dtype: KvDtype, length: number): KvArray {
  return dtype === "f16" ? new Float16Array(length) : new Float32Array(length);
}

/**
 * Copies `values` into a new array of `dtype`, rounding to half precision
 * when `dtype` is `f16`.
 *
 * @example
 * ```ts
 * import { toKvArray } from "./dtype.ts";
 * const h = toKvArray("f16", new Float32Array([0.1])); // Float16Array [0.0999755859375]
 * ```
 */
export function toKvArray(dtype: KvDtype, values: ArrayLike<number>): KvArray {
  return dtype === "f16" ? Float16Array.from(values) : Float32Array.from(values);
}
