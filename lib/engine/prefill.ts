/**
 * Prefill of one sequence of one layer: the prompt's pages go to their
 * slots, full pages are summarized and (offload policies) backed up to the
 * host. Internal to the engine.
 *
 * @module
 */

import { bytesPerElement } from "../gpu/dtype.ts";
import { createBuffer } from "../gpu/buffers.ts";
import { pageRegions } from "../memory/page_plan.ts";
import { homeSlot, poolSlot } from "./geometry.ts";
import { slotOffset } from "../kernels/slot_layout.ts";
import type { LayerState } from "./layer.ts";
import type { OffloadMemory } from "./offload_memory.ts";
import type { ResolvedEngineOptions } from "./options.ts";

/** What a prefill needs from its engine. */
export interface PrefillContext {
  device: GPUDevice;
  options: ResolvedEngineOptions;
  maxPages: number;
  memory?: OffloadMemory;
  tick: number;
}

/** Records and submits the prefill of `n` checked tokens of sequence `seq` into `state`. */
export function recordPrefill(
  ctx: PrefillContext,
  state: LayerState,
  seq: number,
  n: number,
  kIn: Float32Array | GPUBuffer,
  vIn: Float32Array | GPUBuffer,
): void {
  const o = ctx.options;
  const P = o.pageSize;
  const row = o.numKvHeads * o.headDim;
  const { sinkPages: S, selectPages: K } = state.budget;
  const regions = pageRegions(n, state.budget, state.slidingWindow);
  const fullPages = Math.floor(n / P);
  const device = ctx.device;
  const k = state.input("prefill k", kIn, n * row * 4);
  const v = state.input("prefill v", vIn, n * row * 4);
  const encoder = device.createCommandEncoder({ label: "freekv prefill" });
  const mode = state.mode;
  const seqBase = seq * state.slotsPerSeq;
  const slotBytes = P * row * bytesPerElement(o.dtype);
  const pageIds = (from: number, to: number) =>
    Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
  const transient: GPUBuffer[] = [];
  // Element offset of token `t` of `slot` (its first head), in the slot layout.
  const kvShape = { pageSize: P, kvHeads: o.numKvHeads, headDim: o.headDim };
  const at = (slot: number, t: number) => slotOffset(o.slotLayout, kvShape, slot, t, 0);
  if (mode === "full" || mode === "quest") {
    const dst = new Uint32Array(n).map((_, t) => at(seqBase + Math.floor(t / P), t % P));
    state.encodeRows(encoder, k, v, state.kCache, state.vCache, dst, "prefill");
    if (mode === "quest" && fullPages > S) {
      state.planSummaries(
        pageIds(S, fullPages).map((p) => ({
          srcSlot: seqBase + p,
          dstPage: seq * ctx.maxPages + p,
          numTokens: P,
        })),
      ).encode(encoder, { kCache: state.kCache, summaries: state.summaries! });
    }
  } else {
    // Stage the whole prompt as pages of the slot layout (slot = page), then place sink and
    // window pages in their slots and back the full pages up to the host.
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const bytes = regions.numPages * slotBytes;
    const tk = createBuffer(device, "freekv prefill staging K", usage, bytes);
    const tv = createBuffer(device, "freekv prefill staging V", usage, bytes);
    transient.push(tk, tv);
    const dst = new Uint32Array(n).map((_, t) => at(Math.floor(t / P), t % P));
    state.encodeRows(encoder, k, v, tk, tv, dst, "prefill");
    const place = (p: number, slot: number) => {
      const at = (seqBase + slot) * slotBytes;
      encoder.copyBufferToBuffer(tk, p * slotBytes, state.kCache, at, slotBytes);
      encoder.copyBufferToBuffer(tv, p * slotBytes, state.vCache, at, slotBytes);
    };
    for (let p = 0; p < regions.sinkCount; p++) place(p, homeSlot(o, mode, p));
    for (let p = regions.windowStart; p < regions.numPages; p++) {
      place(p, homeSlot(o, mode, p));
    }
    if (mode === "offload") {
      const offloaded = pageIds(S, fullPages);
      if (offloaded.length) {
        state.planSummaries(offloaded.map((p) => ({
          srcSlot: p,
          dstPage: seq * ctx.maxPages + p,
          numTokens: P,
        }))).encode(encoder, { kCache: tk, summaries: state.summaries! });
        ctx.memory!.backup(
          encoder,
          state.index,
          tk,
          tv,
          offloaded.map((p) => ({ slot: p, page: seq * ctx.maxPages + p })),
        );
      }
      // The newest candidates that fit the pool stay resident (every head alike).
      const pool = K + o.cachePages;
      const resident = pageIds(Math.max(S, regions.windowStart - pool), regions.windowStart);
      resident.forEach((p, i) => place(p, poolSlot(o, i)));
      for (let h = 0; h < o.numKvHeads; h++) {
        const bh = seq * o.numKvHeads + h;
        state.caches![bh].admit(resident, ctx.tick);
        state.caches![bh].unpin();
        state.dirtyRows.add(bh);
      }
      state.flushResidency();
    }
  }
  if (ctx.memory) {
    ctx.memory.submit(encoder.finish());
    ctx.memory.flush();
  } else {
    device.queue.submit([encoder.finish()]);
  }
  for (const b of transient) b.destroy();
  state.length[seq] = n;
  state.prefilled[seq] = true;
  state.hasPrev[seq] = false;
  state.hasSpec[seq] = false;
}
