/**
 * CPU reference of the page-table kernel (`shaders/page_table.wgsl`): the
 * test oracle of {@linkcode createPageTableBuilder}.
 *
 * @module
 */

import type { PageTableSequence, PageTableShape } from "./page_table.ts";
import { EMPTY_PAGE } from "./page_table.ts";

/** Inputs of {@linkcode pageTableReference}. */
export interface PageTableReferenceInputs {
  /** Per sequence regions. */
  sequences: readonly PageTableSequence[];
  /** `[b][h][k]` pages selected with this step's query. */
  fresh: ArrayLike<number>;
  /** `[b][h][k]` the previous step's selection (used where a flag is 0). */
  spec?: ArrayLike<number>;
  /** `[b][h]` correction flags; absent: every head uses `fresh`. */
  flags?: ArrayLike<number>;
  /** `[b][h][maxPages]` local pool slot or {@linkcode EMPTY_PAGE} (ignored with `identity`). */
  residency?: ArrayLike<number>;
  /** `[b][h][k]` top-k among resident pages: a flagged head attends it instead of `fresh`. */
  best?: ArrayLike<number>;
}

/** What {@linkcode pageTableReference} returns. */
export interface PageTableReferenceResult {
  /** `[b][h][maxEntries]` absolute slots ({@linkcode EMPTY_PAGE} for holes and unused entries). */
  table: Uint32Array;
  /** `[b][h][maxEntries]` page ids, {@linkcode EMPTY_PAGE} for holes and unused entries. */
  pages: Uint32Array;
  /** `[b][h]` selected (or candidate) pages that were resident. */
  hits: Uint32Array;
  /** Table entries per sequence (the attention's page count), as the plan's `entries`. */
  entries: number[];
}

/**
 * Builds the attention page tables on the CPU exactly as the kernel does.
 *
 * @example
 * ```ts
 * import { pageTableReference } from "./page_table_reference.ts";
 * const r = pageTableReference(
 *   { numKvHeads: 1, selectPages: 1, maxPages: 8, sinkPages: 1, windowPages: 1, slotsPerSeq: 8, identity: true },
 *   { sequences: [{ sinkCount: 1, windowStart: 4, numPages: 5, candidateCount: 3 }], fresh: [2] },
 * );
 * console.log([...r.pages.slice(0, 3)]); // [0, 2, 4]
 * ```
 */
export function pageTableReference(
  shape: PageTableShape,
  inputs: PageTableReferenceInputs,
): PageTableReferenceResult {
  const { numKvHeads: hkv, selectPages: k, maxPages, sinkPages: S, windowPages: W } = shape;
  const B = inputs.sequences.length;
  const maxEntries = S + k + W;
  const table = new Uint32Array(B * hkv * maxEntries).fill(EMPTY_PAGE);
  const pages = new Uint32Array(B * hkv * maxEntries).fill(EMPTY_PAGE);
  const hits = new Uint32Array(B * hkv);
  const entries = new Array<number>(B).fill(0);
  const home = (p: number) => (shape.identity || p < S ? p : S + ((p - S) % W));
  for (let b = 0; b < B; b++) {
    const s = inputs.sequences[b];
    const base = b * shape.slotsPerSeq;
    for (let h = 0; h < hkv; h++) {
      const bh = b * hkv + h;
      const poolSlot = (p: number) => {
        if (shape.identity) return p;
        const r = inputs.residency![bh * maxPages + p];
        return r === EMPTY_PAGE ? EMPTY_PAGE : S + W + r;
      };
      const row = bh * maxEntries;
      let n = 0;
      const put = (p: number, slot: number) => {
        table[row + n] = slot === EMPTY_PAGE ? EMPTY_PAGE : base + slot;
        pages[row + n] = slot === EMPTY_PAGE ? EMPTY_PAGE : p;
        n++;
      };
      const candidateStart = s.candidateStart ?? s.sinkCount;
      for (let p = s.sinkFrom ?? 0; p < s.sinkCount; p++) put(p, home(p));
      const slotOf = (p: number) => (p < maxPages ? poolSlot(p) : EMPTY_PAGE);
      if (s.candidateCount <= k) {
        for (let p = candidateStart; p < s.windowStart; p++) {
          if (slotOf(p) !== EMPTY_PAGE) hits[bh]++;
          put(p, slotOf(p));
        }
      } else {
        const useFresh = !inputs.flags || inputs.flags[bh] !== 0;
        const src = useFresh ? inputs.fresh : inputs.spec!;
        const useBest = inputs.flags !== undefined && inputs.flags[bh] === 1 &&
          inputs.best !== undefined;
        for (let i = 0; i < k; i++) {
          if (slotOf(src[bh * k + i]) !== EMPTY_PAGE) hits[bh]++;
          const p = useBest ? inputs.best![bh * k + i] : src[bh * k + i];
          put(p, slotOf(p));
        }
      }
      for (let p = s.windowStart; p < s.numPages; p++) put(p, home(p));
      entries[b] = n;
    }
  }
  return { table, pages, hits, entries };
}
