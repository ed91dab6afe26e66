/**
 * The plain-loop CPU reference of the KV append kernel.
 *
 * @module
 */

import type { KvArray } from "../gpu/dtype.ts";
import { assertLength, describeValue } from "../gpu/errors.ts";
import { checkKvAppendOptions, checkKvAppendRows, type KvAppendOptions } from "./kv_append.ts";

/** Inputs of {@linkcode kvAppendReference}. */
export interface KvAppendInputs {
  /** New keys `[rows][Hkv][d]`. */
  k: Float32Array;
  /** New values `[rows][Hkv][d]`. */
  v: Float32Array;
  /** Key cache (`Float16Array` for f16); not modified. */
  kCache: KvArray;
  /** Value cache of the same type and length; not modified. */
  vCache: KvArray;
  /** Element offset of each row in the caches. */
  dstOffsets: Uint32Array;
}

/**
 * Returns copies of the caches with row `i` of `k`/`v` written at
 * `dstOffsets[i]` (rounded to the cache type; later rows win on overlap).
 *
 * @example
 * ```ts
 * import { kvAppendReference } from "./kv_append_reference.ts";
 * const { kCache } = kvAppendReference({
 *   k: new Float32Array([1, 2]), v: new Float32Array([3, 4]),
 *   kCache: new Float32Array(4), vCache: new Float32Array(4),
 *   dstOffsets: new Uint32Array([2]),
 * }, { numKvHeads: 1, headDim: 2 });
 * console.log(kCache); // [0, 0, 1, 2]
 * ```
 */
export function kvAppendReference(
  inputs: KvAppendInputs,
  options: KvAppendOptions,
): { kCache: KvArray; vCache: KvArray } {
  const action = "append KV rows";
  const { numKvHeads, headDim, headStride } = checkKvAppendOptions(options);
  const row = numKvHeads * headDim;
  checkKvAppendRows(inputs, false);
  const n = inputs.dstOffsets.length;
  assertLength("k", inputs.k, n * row, action);
  assertLength("v", inputs.v, n * row, action);
  const kCache = inputs.kCache.slice(), vCache = inputs.vCache.slice();
  assertLength("vCache", vCache, kCache.length, action);
  for (let i = 0; i < n; i++) {
    const at = inputs.dstOffsets[i];
    if (at + (numKvHeads - 1) * headStride + headDim > kCache.length) {
      throw new RangeError(
        `Cannot ${action} as 'dstOffsets' must leave room for a row in the caches: received ${at} at index ${i} (${
          describeValue(kCache)
        })`,
      );
    }
    for (let j = 0; j < row; j++) {
      const dst = at + Math.floor(j / headDim) * headStride + (j % headDim);
      kCache[dst] = inputs.k[i * row + j];
      vCache[dst] = inputs.v[i * row + j];
    }
  }
  return { kCache, vCache };
}
