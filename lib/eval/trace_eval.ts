/**
 * The attention-only evaluation: a recorded trace's q, k, v replayed
 * through an engine per configuration, with no model.
 *
 * @module
 */

import { createRetrievalEngine } from "../engine/engine.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";
import type { Trace } from "../workloads/trace.ts";
import { type PolicyConfig, resolveConfig } from "./config.ts";
import {
  attentionStats,
  buildRow,
  engineOptionsFor,
  type EvalRow,
  pool,
  type TotalsLike,
} from "./row.ts";
import { readAttendedPages, type TapRecord, type TapShape } from "./tap.ts";

/** Options of {@linkcode evaluateTrace}. */
export interface TraceEvalOptions {
  /** Policy configurations. */
  configs: PolicyConfig[];
  /** Tokens prefilled before the scored steps (default: the trace's prompt length). */
  prefix?: number;
  /** Jobs in flight at once (default 6). */
  concurrency?: number;
  /** Progress lines. */
  onProgress?: (message: string) => void;
}

/**
 * The attention-only metrics on a recorded trace (no model): each
 * configuration replays the trace's q, k, v through an engine; rows carry
 * mass recall, corrected share and cosine statistics, with the model
 * metrics (`agreement`, `kl`, greedy) null. The context is the trace's
 * token count.
 *
 * @example
 * ```ts ignore
 * import { requestGpu } from "../gpu/device.ts";
 * import { readTrace } from "../workloads/trace.ts";
 * import { evaluateTrace } from "./trace_eval.ts";
 * using gpu = await requestGpu();
 * const trace = await readTrace("story.trace");
 * const rows = await evaluateTrace(gpu.device, trace, { configs: [{ policy: "quest" }] });
 * ```
 */
export async function evaluateTrace(
  device: GPUDevice,
  trace: Trace,
  options: TraceEvalOptions,
): Promise<EvalRow[]> {
  const h = trace.header;
  const shape: TapShape = h;
  const { numLayers: L, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = h;
  const context = trace.numTokens;
  const prefix = options.prefix ?? h.promptLength;
  if (!Number.isInteger(prefix) || prefix < 1 || prefix >= context) {
    throw new RangeError(
      `Cannot evaluate a trace as the prefix must be an integer in [1, ${
        context - 1
      }] (the trace holds ${context} tokens): received ${prefix}`,
    );
  }
  const resolved = options.configs.map((c) => resolveConfig(c, context));
  const log = options.onProgress ?? (() => {});
  let done = 0;
  const rows = await pool(
    resolved.map((rc, k) => async (): Promise<EvalRow> => {
      using engine = createRetrievalEngine(device, engineOptionsFor(shape, rc, context));
      const out = createTrackedBuffer(device, {
        label: "eval trace output",
        size: hq * d * 4,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      });
      const eng = engine as unknown as { totals(): TotalsLike };
      const steps = context - prefix;
      const rec: TapRecord = {
        prefillLength: prefix,
        steps,
        q: [],
        k: [],
        attended: Array.from({ length: L }, () => []),
        corrected: Array.from({ length: L }, () => []),
      };
      try {
        for (let l = 0; l < L; l++) {
          const k = new Float32Array(context * hkv * d), v = new Float32Array(prefix * hkv * d);
          const q = new Float32Array(steps * hq * d);
          for (let t = 0; t < context; t++) {
            k.set(trace.k(t, l), t * hkv * d);
            if (t < prefix) v.set(trace.v(t, l), t * hkv * d);
            else q.set(trace.q(t, l), (t - prefix) * hq * d);
          }
          rec.k.push(k);
          rec.q.push(q);
          await engine.prefill(0, l, { k: k.subarray(0, prefix * hkv * d), v });
        }
        for (let t = prefix; t < context; t++) {
          for (let l = 0; l < L; l++) {
            await engine.step(l, { q: trace.q(t, l), k: trace.k(t, l), v: trace.v(t, l), out });
            rec.attended[l].push(await readAttendedPages(engine, l, hkv));
          }
        }
        await engine.drain();
      } finally {
        out.destroy();
      }
      const totals = eng.totals();
      const stats = attentionStats(rec, shape, rc.pageSize, false);
      const checks = totals.checksPerHead ?? [], corrections = totals.correctionsPerHead ?? [];
      const heads = { ...stats, numLayers: L, numKvHeads: hkv, checks, corrections };
      const engineOptions = engine.options as unknown as Record<string, unknown>;
      log(`${++done}/${resolved.length} ${rc.name} on the trace`);
      return buildRow({ rc, configIndex: k, context, engineOptions }, heads, {
        texts: 1,
        prefix,
        steps,
        agreement: null,
        kl: null,
        kl_p99: null,
        greedy_match_len: null,
        greedy_share: null,
        greedy_tokens: 0,
        resident_hit_rate: typeof totals.residentHitRate === "number"
          ? totals.residentHitRate
          : null,
        host_waits_per_step: typeof totals.hostWaits === "number" ? totals.hostWaits / steps : null,
        ms_per_step: 0,
        per_text: [],
      });
    }),
    options.concurrency ?? 6,
  );
  return rows;
}
