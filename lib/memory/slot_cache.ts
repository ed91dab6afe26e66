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
  /** Pages of the latest admitted selection: never evicted by a promotion. */
  pinned: ReadonlySet<number> = new Set();

  /** A cache of `slots` pool slots writing residency into `row`. */
  constructor(slots: number, row: Uint32Array) {
    this.slotPage = new Int32Array(slots).fill(-1);
    this.lastUse = new Float64Array(slots).fill(-Infinity);
    this.row = row;
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
    const wanted = new Set<number>();
    for (let i = 0; i < pages.length; i++) wanted.add(pages[i]);
    const loads: SlotLoad[] = [];
    for (const page of wanted) {
      const slot = this.row[page];
      if (slot !== NOT_RESIDENT) this.lastUse[slot] = tick;
    }
    for (const page of wanted) {
      if (this.row[page] !== NOT_RESIDENT) continue;
      const slot = this.#victim(wanted);
      if (slot < 0) break; // more pages than slots: cannot happen with k <= slots
      this.#place(page, slot, tick);
      loads.push({ page, slot });
    }
    this.pinned = wanted;
    return loads;
  }

  /**
   * Gives `page` (already on the GPU elsewhere, e.g. leaving the window) a
   * slot unless every slot holds a pinned page; returns the slot or -1.
   */
  promote(page: number, tick: number): number {
    if (this.row[page] !== NOT_RESIDENT) return -1;
    const slot = this.#victim(this.pinned);
    if (slot < 0) return -1;
    this.#place(page, slot, tick);
    return slot;
  }

  /** Forgets every page. */
  clear(): void {
    for (const page of this.slotPage) if (page >= 0) this.row[page] = NOT_RESIDENT;
    this.slotPage.fill(-1);
    this.lastUse.fill(-Infinity);
    this.pinned = new Set();
  }

  #place(page: number, slot: number, tick: number): void {
    const old = this.slotPage[slot];
    if (old >= 0) this.row[old] = NOT_RESIDENT;
    this.slotPage[slot] = page;
    this.row[page] = slot;
    this.lastUse[slot] = tick;
  }

  /** Free slot first, else the least recently used slot whose page is not kept. */
  #victim(keep: ReadonlySet<number>): number {
    let best = -1;
    for (let s = 0; s < this.slotPage.length; s++) {
      const page = this.slotPage[s];
      if (page >= 0 && keep.has(page)) continue;
      if (best < 0 || this.lastUse[s] < this.lastUse[best]) best = s;
    }
    return best;
  }
}
