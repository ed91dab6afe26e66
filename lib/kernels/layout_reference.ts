/**
 * Plain-loop CPU references of the layout kernels: NHD -> HND runs and the
 * HND -> NHD scatter, bit for bit.
 *
 * @module
 */

import type { KvArray } from "../gpu/dtype.ts";
import {
  type KvLayoutShape,
  kvLayoutSizes,
  type RunSlotHeadJob,
  type SlotHeadJob,
} from "./layout.ts";

/** Host copies of one layer's NHD caches (`[slot][token][kvHead][d]`). */
export interface NhdCacheArrays {
  /** Keys. */
  kCache: KvArray;
  /** Values. */
  vCache: KvArray;
}

/** Options of {@linkcode hndToNhdReference}. */
export interface HndToNhdReferenceOptions extends KvLayoutShape {
  /** The jobs, as for `HndToNhd.plan`. */
  jobs: readonly RunSlotHeadJob[];
}

// Integer view of a KV array, so copies keep every bit (NaN payloads too).
function bits(array: KvArray): Uint16Array | Uint32Array {
  return array instanceof Float32Array
    ? new Uint32Array(array.buffer, array.byteOffset, array.length)
    : new Uint16Array(array.buffer, array.byteOffset, array.length);
}

/**
 * CPU reference of the NHD -> HND conversion (`createNhdToHnd`): returns the runs of `jobs`
 * (`[job][K: P x d][V: P x d]`), copied bit for bit from the host caches.
 *
 * @example
 * ```ts
 * import { nhdToHndReference } from "./layout_reference.ts";
 * const kCache = new Float32Array([1, 2, 3, 4]), vCache = new Float32Array([5, 6, 7, 8]);
 * const shape = { pageSize: 1, kvHeads: 2, headDim: 2, dtype: "f32" } as const;
 * console.log([...nhdToHndReference({ kCache, vCache }, [{ slot: 0, head: 1 }], shape)]);
 * // [3, 4, 7, 8]
 * ```
 */
export function nhdToHndReference(
  caches: NhdCacheArrays,
  jobs: readonly SlotHeadJob[],
  shape: KvLayoutShape,
): KvArray {
  const { pageElements, runElements } = kvLayoutSizes(shape, "run the NHD to HND reference");
  const { pageSize: P, kvHeads: H, headDim: d } = shape;
  const pairs = jobs.flatMap(({ slot, head }) =>
    head === undefined ? [...Array(H).keys()].map((h) => ({ slot, head: h })) : [{ slot, head }]
  );
  const out = shape.dtype === "f16"
    ? new Float16Array(pairs.length * runElements)
    : new Float32Array(pairs.length * runElements);
  const dst = bits(out), k = bits(caches.kCache), v = bits(caches.vCache);
  for (let j = 0; j < pairs.length; j++) {
    const { slot, head } = pairs[j];
    for (let t = 0; t < P; t++) {
      for (let i = 0; i < d; i++) {
        const src = ((slot * P + t) * H + head) * d + i;
        dst[j * runElements + t * d + i] = k[src];
        dst[j * runElements + pageElements + t * d + i] = v[src];
      }
    }
  }
  return out;
}

/**
 * CPU reference of the HND -> NHD scatter (`createHndToNhd`): copies each job's run of
 * `runs` into the host caches, bit for bit, in place.
 *
 * @example
 * ```ts
 * import { hndToNhdReference } from "./layout_reference.ts";
 * const kCache = new Float32Array(4), vCache = new Float32Array(4);
 * hndToNhdReference(new Float32Array([3, 4, 7, 8]), { kCache, vCache }, {
 *   pageSize: 1, kvHeads: 2, headDim: 2, dtype: "f32", jobs: [{ run: 0, slot: 0, head: 1 }],
 * });
 * console.log([...kCache], [...vCache]); // [0, 0, 3, 4] [0, 0, 7, 8]
 * ```
 */
export function hndToNhdReference(
  runs: KvArray,
  caches: NhdCacheArrays,
  options: HndToNhdReferenceOptions,
): void {
  const { pageElements, runElements } = kvLayoutSizes(options, "run the HND to NHD reference");
  const { pageSize: P, kvHeads: H, headDim: d } = options;
  const src = bits(runs), k = bits(caches.kCache), v = bits(caches.vCache);
  for (const { run, slot, head } of options.jobs) {
    for (let t = 0; t < P; t++) {
      for (let i = 0; i < d; i++) {
        const dst = ((slot * P + t) * H + head) * d + i;
        k[dst] = src[run * runElements + t * d + i];
        v[dst] = src[run * runElements + pageElements + t * d + i];
      }
    }
  }
}
