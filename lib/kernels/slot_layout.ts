/**
 * The layout of a GPU KV cache slot (one page of every KV head), shared by
 * every kernel that indexes slots:
 *
 * - `"nhd"` (token-major): `[slot][P][Hkv][d]`, a token's row of every head
 *   is contiguous;
 * - `"hnd"` (head-major): `[slot][Hkv][P][d]`, one (page, head) of K (or V)
 *   is one contiguous run of `P * d` elements, the same order as a host
 *   pool run's K part, so recall and offload are plain copies.
 *
 * Both have the same slot size; only the token and head strides differ.
 *
 * @module
 */

import { assertOneOf } from "../gpu/errors.ts";

/** Layout of a GPU cache slot: token-major `"nhd"` or head-major `"hnd"`. */
export type SlotLayout = "nhd" | "hnd";

/** Every {@linkcode SlotLayout}. */
export const SLOT_LAYOUTS: readonly SlotLayout[] = ["nhd", "hnd"];

/** Strides of a slot layout, in head rows (`d` elements). */
export interface SlotStrides {
  /** Head rows between consecutive slots (`P * Hkv` in both layouts). */
  slot: number;
  /** Head rows between consecutive tokens of one head. */
  token: number;
  /** Head rows between consecutive heads of one token. */
  head: number;
}

/**
 * The strides of `layout` for pages of `pageSize` tokens and `kvHeads`
 * heads, in head rows; multiply by `d` for elements.
 *
 * @example
 * ```ts
 * import { slotStrides } from "./slot_layout.ts";
 * console.log(slotStrides("hnd", 4, 2)); // { slot: 8, token: 1, head: 4 }
 * ```
 */
export function slotStrides(
  layout: SlotLayout,
  pageSize: number,
  kvHeads: number,
): SlotStrides {
  assertOneOf("slotLayout", layout, SLOT_LAYOUTS, "index a KV slot");
  return layout === "hnd"
    ? { slot: pageSize * kvHeads, token: 1, head: pageSize }
    : { slot: pageSize * kvHeads, token: kvHeads, head: 1 };
}

/**
 * Element offset of (slot, token, head) in a cache of `layout` with head
 * size `headDim` (the first of its `headDim` elements).
 *
 * @example
 * ```ts
 * import { slotOffset } from "./slot_layout.ts";
 * const shape = { pageSize: 4, kvHeads: 2, headDim: 8 };
 * console.log(slotOffset("nhd", shape, 1, 2, 1), slotOffset("hnd", shape, 1, 2, 1)); // 104 112
 * ```
 */
export function slotOffset(
  layout: SlotLayout,
  shape: { pageSize: number; kvHeads: number; headDim: number },
  slot: number,
  token: number,
  head: number,
): number {
  const s = slotStrides(layout, shape.pageSize, shape.kvHeads);
  return (slot * s.slot + token * s.token + head * s.head) * shape.headDim;
}
