/**
 * The append and select phases of a decode step, as functions of the layer
 * state and the engine's context. Internal to the engine.
 *
 * @module
 */

import { type PageRegions, pageRegions } from "../memory/page_plan.ts";
import type { RecallJob } from "../memory/recall.ts";
import type { PageTableBuffers, PageTablePlan } from "../kernels/page_table.ts";
import type { PageSelectionVariant } from "../kernels/selection.ts";
import type { KvAppendBuffers, KvAppendPlan } from "../kernels/kv_append.ts";
import { homeSlot, poolSlot } from "./geometry.ts";
import { slotOffset } from "../kernels/slot_layout.ts";
import type { LayerState } from "./layer.ts";
import type { OffloadMemory } from "./offload_memory.ts";
import type { ResolvedEngineOptions } from "./options.ts";
import type { StatsAccumulator } from "./stats.ts";

/** What the phases need from their engine. */
export interface PhaseContext {
  options: ResolvedEngineOptions;
  maxPages: number;
  memory?: OffloadMemory;
  tick: number;
  stats: StatsAccumulator;
  /**
   * Records copies that may wait for the end of the step, where they go
   * together: on a CPU adapter every group of copies between two passes
   * costs tens of microseconds, whatever its size.
   */
  atStepEnd(record: (encoder: GPUCommandEncoder) => void): void;
}

/** What the select phase decided for a layer's step. */
export interface SelectionPlan {
  /** Sequences whose top-k ran this step. */
  selects: boolean[];
  /** Sequences whose attention depends on the selection (more candidates than K). */
  needs: boolean[];
  /** Sequences whose correction check counts this step (freekv). */
  checked: boolean[];
  /** freekv: the correction check ran and stored this step's q as the next step's previous q. */
  queryKept: boolean;
  /** The layer must wait for the GPU before attending. */
  sync: boolean;
  /** Page tables pick fresh or speculative selections by the flags. */
  useFlags: boolean;
  /** Corrected heads attend their top-k among resident pages (freekv, resident correction). */
  useBest: boolean;
  /** freekv: the buffer holding the next step's speculation (`fresh` or `next`). */
  speculation?: GPUBuffer;
  /** The page tables, when the selection's dispatch built them. */
  table?: PageTablePlan;
}

/** What the page-table build of `state` reads and writes. */
export function tableBuffers(
  state: LayerState,
  useFlags: boolean,
  useBest: boolean,
): PageTableBuffers {
  return {
    fresh: state.fresh!,
    spec: useFlags ? state.spec : undefined,
    flags: useFlags ? state.flags : undefined,
    best: useBest ? state.best : undefined,
    residency: state.residency,
    table: state.table!,
    pages: state.pages!,
    hits: state.hits!,
  };
}

/** The step's K/V rows of a layer, planned by the append phase and stored by the store phase. */
export interface PendingRows {
  plan: KvAppendPlan;
  buffers: KvAppendBuffers;
  /** Pages that the rows fill: (sequence, logical page). */
  fills: { b: number; p: number }[];
}

/**
 * Append phase: plans the token's K/V rows into the window page; a page
 * leaving the window keeps a pool slot when one is free of pinned pages.
 * The rows go in with the selection's dispatch when it can take them, else
 * in the store phase.
 */
export function appendPhase(
  ctx: PhaseContext,
  encoder: GPUCommandEncoder,
  state: LayerState,
  k: GPUBuffer,
  v: GPUBuffer,
): PendingRows {
  const o = ctx.options;
  const P = o.pageSize;
  const kvShape = { pageSize: P, kvHeads: o.numKvHeads, headDim: o.headDim };
  const { sinkPages: S, windowPages: W } = state.budget;
  const dst = new Uint32Array(o.batch);
  const fills: { b: number; p: number }[] = [];
  const copies: number[][] = [];
  for (let b = 0; b < o.batch; b++) {
    const len = state.length[b];
    const p = Math.floor(len / P);
    const base = b * state.slotsPerSeq;
    if (len % P === 0 && state.mode === "offload" && p - W >= S) {
      const leaving = p - W;
      for (let h = 0; h < o.numKvHeads; h++) {
        const bh = b * o.numKvHeads + h;
        const slot = state.caches![bh].promote(leaving, ctx.tick);
        if (slot < 0) continue;
        state.dirtyRows.add(bh);
        copies.push([base + homeSlot(o, "offload", leaving), base + poolSlot(o, slot), h]);
      }
    }
    dst[b] = slotOffset(o.slotLayout, kvShape, base + homeSlot(o, state.mode, p), len % P, 0);
    state.length[b] = len + 1;
    if ((len + 1) % P === 0 && p >= S) fills.push({ b, p });
  }
  // Before the append: the leaving page's home slot is the new page's.
  state.encodeSlotCopies(encoder, copies);
  return {
    plan: state.planRows(dst, "append"),
    buffers: { k, v, kCache: state.kCache, vCache: state.vCache },
    fills,
  };
}

/**
 * Store phase: the rows, unless the selection's dispatch `appended` them;
 * then a page that filled is summarized and backed up to the host. This
 * step's selection never reads such a page's summary: the page is in the
 * window (at least one page). The next step's speculation may, so it
 * follows this phase.
 */
export function storePhase(
  ctx: PhaseContext,
  encoder: GPUCommandEncoder,
  state: LayerState,
  rows: PendingRows,
  appended: boolean,
): void {
  if (!appended) rows.plan.encode(encoder, rows.buffers);
  const o = ctx.options;
  const P = o.pageSize;
  const { fills } = rows;
  if (fills.length && (state.mode === "quest" || state.mode === "offload")) {
    const jobs = fills.map(({ b, p }) => ({
      srcSlot: b * state.slotsPerSeq + homeSlot(o, state.mode, p),
      dstPage: b * ctx.maxPages + p,
      numTokens: P,
    }));
    state.planSummaries(jobs).encode(encoder, {
      kCache: state.kCache,
      summaries: state.summaries!,
    });
    if (state.mode === "offload") {
      // The filled page stays in its home slot until the next step's append.
      const backups = jobs.map((j) => ({ slot: j.srcSlot, page: j.dstPage }));
      ctx.atStepEnd((e) => ctx.memory!.backup(e, state.index, state.kCache, state.vCache, backups));
    }
  }
}

/**
 * Select phase: top-k with this step's query for every sequence whose
 * selection matters now or next step, and (freekv) the correction flags.
 * Records the store phase of `rows` too, inside this step's selection
 * dispatch where it can. Decides whether the layer must wait for the GPU.
 */
export function selectPhase(
  ctx: PhaseContext,
  encoder: GPUCommandEncoder,
  state: LayerState,
  q: GPUBuffer,
  regions: PageRegions[],
  rows: PendingRows,
): SelectionPlan {
  const o = ctx.options;
  const B = o.batch;
  const K = state.budget.selectPages;
  const freekv = state.qPrev !== undefined;
  // Selection changes attention only past K candidates; freekv also selects
  // at exactly K so that the next step has a speculation.
  const needs = regions.map((r) => r.candidateCount > K);
  // freekv's speculation is chosen over the next step's candidates (a page
  // leaving the window then is one of them), whenever they fill K pages.
  const next = freekv
    ? regions.map((_, b) => pageRegions(state.length[b] + 1, state.budget, state.slidingWindow))
    : regions;
  const selects = next.map((r, b) => freekv ? r.candidateCount >= K : needs[b]);
  // Next step a page leaves the window, or the sliding window leaves a page behind.
  const boundary = freekv &&
    next.some((r, b) =>
      r.windowStart !== regions[b].windowStart || r.candidateStart !== regions[b].candidateStart
    );
  const checked = needs.map((n, b) => freekv && n && state.hasPrev[b] && state.hasSpec[b]);
  // This step's top-k (for corrected heads, and the speculation unless a
  // page leaves the window next step).
  const now = boundary ? needs : selects;
  const range = (rs: PageRegions[], on: boolean[]) => ({
    pageOffset: Uint32Array.from({ length: B }, (_, b) => b * ctx.maxPages),
    // Sequences that do not select get a dummy range; their result is ignored.
    candidateStart: Uint32Array.from(rs, (r, b) => on[b] ? r.candidateStart : 0),
    candidateEnd: Uint32Array.from(rs, (r, b) => on[b] ? r.windowStart : K),
    k: K,
    tau: o.tau,
    // A fused check keeps this step's q for the next (no copy).
    storeQuery: freekv,
  });
  const nowPlan = now.some(Boolean) ? state.planSelection(range(regions, now)) : null;
  const check = freekv && checked.some(Boolean);
  // The correction check rides the one-dispatch selection when there is one,
  // unless a sequence without a speculation gets its flags by copy (decide).
  const missingSpec = needs.some((n, b) => n && !state.hasSpec[b]);
  const fusedCheck = check && !missingSpec && nowPlan !== null && nowPlan.fusesSimilarity;
  const similarity = check
    ? {
      qPrev: state.qPrev!,
      cosine: state.cosine!,
      groupMean: state.groupMean!,
      flags: state.flags!,
    }
    : undefined;
  if (similarity && !fusedCheck) state.similarityPlan!.encode(encoder, { qNow: q, ...similarity });
  const decision = decide(o, state, needs, checked, encoder);
  const residentOnly = decision.useBest
    ? {
      mask: state.residency!,
      maskStride: ctx.maxPages,
      selected: state.best!,
      // The page table reads `best` only for corrected heads.
      flags: state.flags!,
    }
    : undefined;
  // The page tables ride the same dispatch, unless the layer waits first.
  let table: PageTablePlan | undefined;
  if (nowPlan?.fusesTable && !decision.sync) {
    table = state.planTable({
      sequences: regions,
      useFlags: decision.useFlags,
      useBest: decision.useBest,
    });
  }
  // The rows ride the same dispatch where it can take them: one dispatch
  // less, whose fixed cost dominates a small model's step.
  const appended = nowPlan !== null && nowPlan.fusesAppend && state.rowsFusable;
  if (nowPlan) {
    nowPlan.encode(encoder, {
      q,
      summaries: state.summaries!,
      selected: state.fresh!,
      ...(residentOnly ? { residentOnly } : {}),
      ...(fusedCheck ? { similarity } : {}),
      ...(table
        ? {
          pageTable: {
            plan: table,
            buffers: tableBuffers(state, decision.useFlags, decision.useBest),
          },
        }
        : {}),
      ...(appended ? { append: { plan: rows.plan, buffers: rows.buffers } } : {}),
    });
    ctx.stats.current!.pagesSelected += now.filter(Boolean).length * o.numKvHeads * K;
  }
  // Before the next step's speculation: it reads the summary of a page
  // that this step's row fills.
  storePhase(ctx, encoder, state, rows, appended);
  if (boundary && selects.some(Boolean)) {
    state.planSelection(range(next, selects), "next").encode(encoder, {
      q,
      summaries: state.summaries!,
      selected: state.next!,
    });
    ctx.stats.current!.pagesSelected += selects.filter(Boolean).length * o.numKvHeads * K;
  }
  return {
    selects,
    needs,
    checked,
    queryKept: check,
    speculation: boundary ? state.next! : state.fresh!,
    ...decision,
    ...(table ? { table } : {}),
  };
}

/**
 * The one-dispatch selections that the select phase of `state` can encode,
 * as `decide` picks them: for `RetrievalEngine.compile`.
 */
export function selectionVariants(
  o: ResolvedEngineOptions,
  state: LayerState,
  maxPages: number,
): PageSelectionVariant[] {
  // This step's selection stores the step's rows too (the next step's
  // speculation at a window boundary never does).
  const append = state.rowsFusable ? o.dtype : undefined;
  // quest never waits: its tables always ride the selection.
  if (state.mode === "quest") return [{ table: true, append }];
  if (state.mode !== "offload") return [];
  // sync-offload waits before building its tables.
  if (state.qPrev === undefined) return [{ append }];
  // The next step's speculation at a window boundary, a first step that
  // waits, and steps whose candidates still fit K pages (no check yet).
  const always: PageSelectionVariant[] = [{}, { append }, { table: true, append }];
  // The check waits under "sync".
  if (o.correction === "sync") return [...always, { similarity: true, append }];
  const best = { maskStride: maxPages, flagged: true };
  return [
    ...always,
    { residentOnly: best, similarity: true, table: true, append },
    // A sequence prefilled past the budget (no speculation yet) beside
    // checked ones: the step waits for its selection.
    { residentOnly: best, append },
  ];
}

/** Whether the layer waits, and how its page tables pick selections. */
function decide(
  o: ResolvedEngineOptions,
  state: LayerState,
  needs: boolean[],
  checked: boolean[],
  encoder: GPUCommandEncoder,
): { sync: boolean; useFlags: boolean; useBest: boolean } {
  const freekv = state.qPrev !== undefined;
  if (state.mode === "quest" || !needs.some(Boolean)) {
    return { sync: false, useFlags: false, useBest: false };
  }
  if (!freekv) return { sync: true, useFlags: false, useBest: false };
  // freekv: a sequence without a speculation yet (first step) selects synchronously.
  const missingSpec = needs.some((n, b) => n && !state.hasSpec[b]);
  if (missingSpec) {
    if (!checked.some(Boolean)) return { sync: true, useFlags: false, useBest: false };
    // Others of the batch keep their own correction flags (as they would
    // alone); a sequence without a speculation takes its fresh selection.
    const bytes = o.numKvHeads * 4;
    checked.forEach((c, b) => {
      if (!c) encoder.copyBufferToBuffer(state.correctAll!, 0, state.flags!, b * bytes, bytes);
    });
    return { sync: true, useFlags: true, useBest: o.correction === "resident" };
  }
  const sync = o.correction === "sync" && checked.some(Boolean);
  return { sync, useFlags: true, useBest: !sync };
}

/**
 * After a correct phase's wait: counts the correction checks and admits the
 * fresh selection of the heads that attend it now (every head of
 * `sync-offload` or of a sequence without a speculation; corrected heads
 * under `correction: "sync"`). Returns the recalls this needs.
 */
export function admitCorrected(
  ctx: PhaseContext,
  state: LayerState,
  plan: { needs: boolean[]; checked: boolean[] },
  fresh: Uint32Array,
  flags: Uint32Array | null,
): RecallJob[] {
  const o = ctx.options;
  const hkv = o.numKvHeads;
  const K = state.budget.selectPages;
  const jobs: RecallJob[] = [];
  for (let b = 0; b < o.batch; b++) {
    if (!plan.needs[b]) continue;
    for (let h = 0; h < hkv; h++) {
      const bh = b * hkv + h;
      const pages = fresh.subarray(bh * K, (bh + 1) * K);
      const corrected = !flags || !plan.checked[b] || flags[bh] !== 0;
      if (flags && plan.checked[b]) {
        let resident = 0;
        for (const p of pages) if (state.caches![bh].has(p)) resident++;
        state.lastCorrections[bh] = corrected ? 1 : 0;
        ctx.stats.checked(state.index * hkv + h, corrected, K, resident);
      }
      // Under "resident" only a sequence without a speculation (just
      // prefilled) waits for its pages; corrected heads of the others
      // attend what is resident, as they would in a batch of their own.
      const waits = o.correction === "sync" || !plan.checked[b];
      if (corrected && waits) ctx.memory!.admit(state, b, h, pages, ctx.tick, jobs);
    }
  }
  return jobs;
}
