/**
 * Where a layer keeps its pages on the GPU, as pure functions of the resolved
 * options: which mode a layer runs, its page budget, its slots per sequence
 * and the home slot of each sink and window page. Testable without a GPU.
 *
 * @module
 */

import type { PageBudget, PageRegions } from "../memory/page_plan.ts";
import type { ResolvedEngineOptions } from "./options.ts";

/**
 * How a layer holds its KV: everything on the GPU (`full`, `quest`), sink and
 * window only (`streaming`), or sink + window + selection slots with the rest
 * offloaded to the host (`offload`: `sync-offload` and `freekv`).
 */
export type LayerMode = "full" | "streaming" | "quest" | "offload";

/**
 * The mode of `layer` under `options`.
 *
 * @example
 * ```ts
 * import { resolveEngineOptions } from "./options.ts";
 * import { layerMode } from "./geometry.ts";
 * const o = resolveEngineOptions({
 *   numLayers: 2, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 256,
 *   budget: 64, pageSize: 8, sink: 16, window: 16, policy: "freekv",
 * });
 * console.log(layerMode(o, 0)); // offload
 * ```
 */
export function layerMode(options: ResolvedEngineOptions, layer: number): LayerMode {
  if (layer === 0 && options.fullFirstLayer) return "full";
  switch (options.policy) {
    case "full":
    case "streaming":
    case "quest":
      return options.policy;
    default:
      return "offload";
  }
}

/**
 * The page budget of the policy: streaming spends the whole budget on sink +
 * window (same memory as the others).
 *
 * @example
 * ```ts
 * import { resolveEngineOptions } from "./options.ts";
 * import { modeBudget } from "./geometry.ts";
 * const o = resolveEngineOptions({
 *   numLayers: 1, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 256,
 *   budget: 64, pageSize: 8, sink: 16, window: 16,
 * });
 * console.log(modeBudget(o, "offload").selectPages, modeBudget(o, "streaming").windowPages); // 4 6
 * ```
 */
export function modeBudget(options: ResolvedEngineOptions, mode: LayerMode): PageBudget {
  const P = options.pageSize;
  const sinkPages = options.sink / P;
  if (mode === "streaming") {
    return { pageSize: P, sinkPages, windowPages: options.budget / P - sinkPages, selectPages: 0 };
  }
  return {
    pageSize: P,
    sinkPages,
    windowPages: options.window / P,
    selectPages: (options.budget - options.sink - options.window) / P,
  };
}

/**
 * Pages per sequence in page-id space.
 *
 * @example
 * ```ts
 * import { resolveEngineOptions } from "./options.ts";
 * import { maxPagesOf } from "./geometry.ts";
 * const o = resolveEngineOptions({
 *   numLayers: 2, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 256,
 *   budget: 64, pageSize: 8, sink: 16, window: 16, policy: "freekv",
 * });
 * console.log(maxPagesOf(o)); // 32
 * ```
 */
export function maxPagesOf(options: ResolvedEngineOptions): number {
  return Math.ceil(options.maxContext / options.pageSize);
}

/**
 * GPU slots per sequence: every page for `full` and `quest`; sink + window
 * for `streaming`; sink + window + selected + cache pages for `offload`.
 *
 * @example
 * ```ts
 * import { resolveEngineOptions } from "./options.ts";
 * import { slotsPerSeq } from "./geometry.ts";
 * const o = resolveEngineOptions({
 *   numLayers: 2, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 256,
 *   budget: 64, pageSize: 8, sink: 16, window: 16, policy: "freekv",
 * });
 * console.log(slotsPerSeq(o, "offload"), slotsPerSeq(o, "streaming")); // 12 8
 * ```
 */
export function slotsPerSeq(options: ResolvedEngineOptions, mode: LayerMode): number {
  const { sinkPages: S, windowPages: W, selectPages: K } = modeBudget(options, mode);
  if (mode === "full" || mode === "quest") return maxPagesOf(options);
  return mode === "streaming" ? S + W : S + W + K + options.cachePages;
}

/**
 * Local slot of sink or window page `page` (identity where every page has a slot).
 *
 * @example
 * ```ts
 * import { resolveEngineOptions } from "./options.ts";
 * import { homeSlot } from "./geometry.ts";
 * const o = resolveEngineOptions({
 *   numLayers: 2, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 256,
 *   budget: 64, pageSize: 8, sink: 16, window: 16, policy: "freekv",
 * });
 * console.log(homeSlot(o, "offload", 1), homeSlot(o, "offload", 5)); // 1 3
 * ```
 */
export function homeSlot(options: ResolvedEngineOptions, mode: LayerMode, page: number): number {
  if (mode === "full" || mode === "quest") return page;
  const { sinkPages: S, windowPages: W } = modeBudget(options, mode);
  return page < S ? page : S + ((page - S) % W);
}

/**
 * Local slot of pool slot `i` (selected and cache pages follow sink and window).
 *
 * @example
 * ```ts
 * import { resolveEngineOptions } from "./options.ts";
 * import { poolSlot } from "./geometry.ts";
 * const o = resolveEngineOptions({
 *   numLayers: 2, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 256,
 *   budget: 64, pageSize: 8, sink: 16, window: 16, policy: "freekv",
 * });
 * console.log(poolSlot(o, 0)); // 4
 * ```
 */
export function poolSlot(options: ResolvedEngineOptions, i: number): number {
  const { sinkPages: S, windowPages: W } = modeBudget(options, "offload");
  return S + W + i;
}

/**
 * The page table of a layer whose attended pages are known on the CPU
 * (`full`: every page; `streaming`: sink + window; under a sliding window
 * only pages that reach into it), rows of `maxPages` slots per (sequence,
 * KV head), with their page ids and the pages per sequence.
 *
 * @example
 * ```ts
 * import { resolveEngineOptions } from "./options.ts";
 * import { residentPageTable } from "./geometry.ts";
 * import { pageRegions } from "../memory/page_plan.ts";
 * const o = resolveEngineOptions({
 *   numLayers: 1, numQueryHeads: 1, numKvHeads: 1, headDim: 8, maxContext: 64,
 *   budget: 16, pageSize: 4, sink: 4, window: 4, policy: "streaming",
 * });
 * const r = pageRegions(30, { pageSize: 4, sinkPages: 1, windowPages: 3, selectPages: 0 });
 * console.log(residentPageTable(o, "streaming", [r], 4, 4).pages); // [ [ 0, 5, 6, 7 ] ]
 * ```
 */
export function residentPageTable(
  options: ResolvedEngineOptions,
  mode: "full" | "streaming",
  regions: readonly PageRegions[],
  slotsPerSequence: number,
  maxPages: number,
): { pageTable: Uint32Array; pageIds: Uint32Array; numPages: number[]; pages: number[][] } {
  const hkv = options.numKvHeads;
  const pageTable = new Uint32Array(regions.length * hkv * maxPages);
  const pageIds = new Uint32Array(pageTable.length);
  const numPages: number[] = [];
  const pages = regions.map((r, b) => {
    const list: number[] = [];
    const first = Math.floor(r.firstToken / options.pageSize);
    for (let p = 0; p < r.numPages; p++) {
      const kept = mode === "full"
        ? p >= first
        : (p >= r.sinkFrom && p < r.sinkCount) || p >= r.windowStart;
      if (kept) list.push(p);
    }
    numPages.push(list.length);
    const slots = list.map((p) => b * slotsPerSequence + homeSlot(options, mode, p));
    for (let h = 0; h < hkv; h++) {
      pageTable.set(slots, (b * hkv + h) * maxPages);
      pageIds.set(list, (b * hkv + h) * maxPages);
    }
    return list;
  });
  return { pageTable, pageIds, numPages, pages };
}
