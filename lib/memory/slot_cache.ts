/**
 * The GPU slot cache of one (layer, sequence, KV head): which page sits in
 * which of its `selectPages + cachePages` pool slots, with least-recently-used
 * eviction. The engine keeps this CPU mirror and writes its residency rows
 * (page -> local slot, or EMPTY) to the GPU, where the page-table kernel
 * reads them.
 *
 * @module
 */

import type { SlotLoad } from "./page_plan.ts";

/** Marks a page with no slot in a residency row. */
export const NOT_RESIDENT = 0xffffffff;

/**
 * Residency of one (layer, sequence, KV head).
 *
 * @example
 * ```ts
 * import { SlotCache } from "./slot_cache.ts";
 * const cache = new SlotCache(2, new Uint32Array(16).fill(0xffffffff));
 * console.log(cache.admit([3, 5], 1)); // [ { page: 3, slot: 0 }, { page: 5, slot: 1 } ]
 * console.log(cache.admit([5, 7], 2)); // [ { page: 7, slot: 0 } ]
 * ```
 */
export class SlotCache {
  /** Page held by each pool slot, -1 when free. */
  readonly slotPage: Int32Array;
  /** Tick of each slot's last use (selection or promotion). */
  readonly lastUse: Float64Array;
  /** The residency row: page id -> local slot or {@linkcode NOT_RESIDENT}; shared with the GPU mirror. */
  readonly row: Uint32Array;
  /** 1 where a slot holds a page of the latest admitted selection (never evicted by a promotion). */
  #pinnedSlot: Uint8Array;

  /** A cache of `slots` pool slots writing residency into `row`. */
  constructor(slots: number, row: Uint32Array) {
    this.slotPage = new Int32Array(slots).fill(-1);
    this.lastUse = new Float64Array(slots).fill(-Infinity);
    this.row = row;
    this.#pinnedSlot = new Uint8Array(slots);
  }

  /** Pages of the latest admitted selection: never evicted by a promotion. */
  get pinned(): ReadonlySet<number> {
    const pages = new Set<number>();
    this.#pinnedSlot.forEach((pinned, s) => {
      if (pinned) pages.add(this.slotPage[s]);
    });
    return pages;
  }

  /** Lets promotions evict every page (as after a prefill: no selection yet). */
  unpin(): void {
    this.#pinnedSlot.fill(0);
  }

  /** True when `page` sits in a slot. */
  has(page: number): boolean {
    return this.row[page] !== NOT_RESIDENT;
  }

  /** Resident pages, in slot order. */
  pages(): number[] {
    return [...this.slotPage].filter((p) => p >= 0);
  }

  /**
   * Makes every page of `pages` resident, evicting the least recently used
   * slots that hold none of them; returns the pages to copy in. Pins `pages`.
   */
  admit(pages: ArrayLike<number>, tick: number): SlotLoad[] {
    // Called for every (layer, sequence, KV head) each step: typed arrays
    // and one small list, no sets.
    const pinned = this.#pinnedSlot;
    pinned.fill(0);
    const missing: number[] = [];
    for (let i = 0; i < pages.length; i++) {
      const slot = this.row[pages[i]];
      if (slot === NOT_RESIDENT) missing.push(pages[i]);
      else {
        this.lastUse[slot] = tick;
        pinned[slot] = 1;
      }
    }
    const loads: SlotLoad[] = [];
    for (const page of missing) {
      if (this.row[page] !== NOT_RESIDENT) continue; // listed twice
      const slot = this.#victim();
      if (slot < 0) break; // more pages than slots: cannot happen with k <= slots
      this.#place(page, slot, tick);
      pinned[slot] = 1;
      loads.push({ page, slot });
    }
    return loads;
  }

  /**
   * Gives `page` (already on the GPU elsewhere, e.g. leaving the window) a
   * slot unless every slot holds a pinned page; returns the slot or -1.
   */
  promote(page: number, tick: number): number {
    if (this.row[page] !== NOT_RESIDENT) return -1;
    const slot = this.#victim();
    if (slot < 0) return -1;
    this.#place(page, slot, tick);
    return slot;
  }

  /** Forgets every page. */
  clear(): void {
    for (const page of this.slotPage) if (page >= 0) this.row[page] = NOT_RESIDENT;
    this.slotPage.fill(-1);
    this.lastUse.fill(-Infinity);
    this.#pinnedSlot.fill(0);
  }

  #place(page: number, slot: number, tick: number): void {
    const old = this.slotPage[slot];
    if (old >= 0) this.row[old] = NOT_RESIDENT;
    this.slotPage[slot] = page;
    this.row[page] = slot;
    this.lastUse[slot] = tick;
  }

  /** Free slot first, else the least recently used slot whose page is not pinned. */
  #victim(): number {
    let best = -1;
    for (let s = 0; s < this.slotPage.length; s++) {
      if (this.#pinnedSlot[s]) continue;
      if (best < 0 || this.lastUse[s] < this.lastUse[best]) best = s;
    }
    return best;
  }
}
