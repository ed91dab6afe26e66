// CPU oracles shared by the engine's end-to-end tests: the pages a selection
// rule picks from summaries of every full page, and attention over exactly
// the pages an engine reports (the cache in token order, slot = page).
import { pagedAttentionReference } from "../lib/kernels/attention_reference.ts";
import { pageSummariesReference } from "../lib/kernels/summaries_reference.ts";
import { selectPagesReference } from "../lib/kernels/selection_reference.ts";
import { EMPTY_SLOT } from "../lib/kernels/attention.ts";
import { type PageBudget, pageRegions } from "../lib/memory/page_plan.ts";

/** Head geometry of the oracles. */
export interface OracleShape {
  numQueryHeads: number;
  numKvHeads: number;
  headDim: number;
}

/** Top-k pages per KV head of `q` over the full pages of `keys` (`[token][Hkv][d]`). */
export function oracleTopK(
  shape: OracleShape,
  budget: PageBudget,
  keys: Float32Array,
  tokens: number,
  q: Float32Array,
  slidingWindow = 0,
): number[][] {
  const { numKvHeads: hkv, headDim: d } = shape;
  const P = budget.pageSize;
  const r = pageRegions(tokens, budget, slidingWindow);
  const fullPages = Math.floor(tokens / P);
  const summaries = pageSummariesReference({
    kCache: keys.subarray(0, fullPages * P * hkv * d),
    jobs: Array.from({ length: fullPages }, (_, p) => ({ srcSlot: p, dstPage: p, numTokens: P })),
    numPages: fullPages,
  }, { numKvHeads: hkv, headDim: d, pageSize: P });
  const K = budget.selectPages;
  const sel = selectPagesReference({
    q,
    summaries,
    pageOffset: [0],
    candidateStart: [r.candidateStart],
    candidateEnd: [r.windowStart],
    k: K,
  }, { numQueryHeads: shape.numQueryHeads, numKvHeads: hkv, headDim: d });
  return Array.from({ length: hkv }, (_, h) => [...sel.selected.subarray(h * K, (h + 1) * K)]);
}

/** CPU attention of `q` over `pagesPerHead` of a token-order cache (slot = page). */
export function attentionOverPages(
  shape: OracleShape,
  budget: PageBudget,
  cache: { keys: Float32Array; values: Float32Array; tokens: number },
  q: Float32Array,
  pagesPerHead: number[][],
  slidingWindow = 0,
): Float32Array {
  const n = Math.max(...pagesPerHead.map((p) => p.length));
  const table = new Uint32Array(shape.numKvHeads * n).fill(EMPTY_SLOT);
  // Holes first, so that every head's last entry is the sequence's last page.
  pagesPerHead.forEach((pages, h) => table.set(pages, h * n + n - pages.length));
  const r = pageRegions(cache.tokens, budget, slidingWindow);
  return pagedAttentionReference({
    q,
    kCache: cache.keys,
    vCache: cache.values,
    pageTable: table,
    numPages: [n],
    lastPageLen: [r.lastPageLen],
    // Slot = page, so the table is its own page ids.
    ...(slidingWindow > 0 ? { firstToken: [r.firstToken], pageIds: table } : {}),
  }, {
    numQueryHeads: shape.numQueryHeads,
    numKvHeads: shape.numKvHeads,
    headDim: shape.headDim,
    pageSize: budget.pageSize,
    slotLayout: "nhd",
  }).out;
}
