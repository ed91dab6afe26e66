/**
 * Which logical pages a sequence keeps where: sink, window, selection
 * candidates, and the per-head residency of the selection slots. Pure logic,
 * shared by the GPU engine and its CPU reference.
 *
 * @module
 */

/** Page counts of the attention budget, in pages. */
export interface PageBudget {
  /** Tokens per page. */
  pageSize: number;
  /** Sink pages (the first tokens). */
  sinkPages: number;
  /** Window pages (the most recent tokens, including the partial last page). */
  windowPages: number;
  /** Selected pages (top-k). */
  selectPages: number;
}

/** Page regions of a sequence of `numTokens` tokens. */
export interface PageRegions {
  /** Pages holding at least one token. */
  numPages: number;
  /** Valid tokens of the last page (1..pageSize). */
  lastPageLen: number;
  /** Sink pages present: logical pages `[0, sinkCount)`. */
  sinkCount: number;
  /** First window page: window is `[windowStart, numPages)`. */
  windowStart: number;
  /** Selection candidates: `[candidateStart, windowStart)`. */
  candidateCount: number;
  /** First token a sliding window lets the query see (0 without one). */
  firstToken: number;
  /** First sink page inside the sliding window (0 without one): sinks attended are `[sinkFrom, sinkCount)`. */
  sinkFrom: number;
  /** First candidate page: `sinkCount`, or the sliding window's first page when that is later. */
  candidateStart: number;
  /** Pages selected: `min(selectPages, candidateCount)`. */
  selectCount: number;
}

/**
 * Splits a sequence of `numTokens` tokens into sink, candidate and window
 * pages. With a sliding window of `slidingWindow` tokens (0: none), the last
 * token sees tokens `numTokens - slidingWindow ..`: sink pages wholly before
 * that are not attended and candidates start at the window's first page.
 *
 * @example
 * ```ts
 * import { pageRegions } from "./page_plan.ts";
 * const r = pageRegions(100, { pageSize: 8, sinkPages: 1, windowPages: 2, selectPages: 3 });
 * console.log(r.numPages, r.candidateCount, r.selectCount); // 13 10 3
 * ```
 */
export function pageRegions(
  numTokens: number,
  budget: PageBudget,
  slidingWindow = 0,
): PageRegions {
  const numPages = Math.ceil(numTokens / budget.pageSize);
  const lastPageLen = numTokens - (numPages - 1) * budget.pageSize;
  const sinkCount = Math.min(budget.sinkPages, numPages);
  const windowStart = Math.max(sinkCount, numPages - budget.windowPages);
  const firstToken = slidingWindow > 0 ? Math.max(0, numTokens - slidingWindow) : 0;
  const firstPage = Math.floor(firstToken / budget.pageSize);
  const candidateStart = Math.min(windowStart, Math.max(sinkCount, firstPage));
  const candidateCount = windowStart - candidateStart;
  return {
    numPages,
    lastPageLen,
    sinkCount,
    windowStart,
    candidateCount,
    selectCount: Math.min(budget.selectPages, candidateCount),
    firstToken,
    sinkFrom: Math.min(sinkCount, firstPage),
    candidateStart,
  };
}

/** A page to bring into a selection slot. */
export interface SlotLoad {
  /** Logical page. */
  page: number;
  /** Selection slot index (0..selectPages-1). */
  slot: number;
}

/**
 * The selection slots of one (layer, sequence, KV head): which logical page
 * each slot holds. Pages that stay selected keep their slot; missing pages
 * take the slots of pages that left the selection.
 *
 * @example
 * ```ts
 * import { SelectionSlots } from "./page_plan.ts";
 * const slots = new SelectionSlots(3);
 * slots.assign([4, 9, 12]);
 * slots.assign([9, 12, 20]); // 20 takes the slot 4 left
 * console.log(slots.resident(), slots.slotOf(20)); // [ 20, 9, 12 ] 0
 * ```
 */
export class SelectionSlots {
  /** Logical page per slot, -1 when empty. */
  readonly pages: Int32Array;

  /** Creates `count` empty slots. */
  constructor(count: number) {
    this.pages = new Int32Array(count).fill(-1);
  }

  /** Pages currently resident, in slot order. */
  resident(): number[] {
    return [...this.pages].filter((p) => p >= 0);
  }

  /** Slot holding `page`, or -1. */
  slotOf(page: number): number {
    return this.pages.indexOf(page);
  }

  /**
   * Makes exactly `selection` resident: returns the loads needed (pages not
   * yet resident, placed in freed or empty slots) and applies them.
   *
   * @example
   * ```ts
   * import { SelectionSlots } from "./page_plan.ts";
   * const s = new SelectionSlots(2);
   * s.assign([5, 7]);
   * console.log(s.assign([7, 9])); // [{ page: 9, slot: 0 }]
   * ```
   */
  assign(selection: ArrayLike<number>): SlotLoad[] {
    if (selection.length > this.pages.length) {
      throw new RangeError(
        `Cannot assign selection slots as the selection must have at most ${this.pages.length} pages: received ${selection.length}`,
      );
    }
    const wanted = new Set<number>();
    for (let i = 0; i < selection.length; i++) wanted.add(selection[i]);
    const free: number[] = [];
    for (let s = 0; s < this.pages.length; s++) {
      if (this.pages[s] < 0 || !wanted.has(this.pages[s])) free.push(s);
      else wanted.delete(this.pages[s]);
    }
    const loads: SlotLoad[] = [];
    for (const page of wanted) loads.push({ page, slot: free.shift()! });
    for (const s of free) this.pages[s] = -1;
    for (const { page, slot } of loads) this.pages[slot] = page;
    return loads;
  }
}
