/**
 * Benchmarks of paged decode attention at Llama-3.1-8B attention shapes (32
 * query heads, 8 KV heads, head_dim 128, page 32), batch 1, next to the
 * streaming-read roofline measured in the same run.
 *
 * Each timed sample runs attention over several layers' K/V caches in one
 * command buffer (timestamp queries around the whole run when the device
 * has them, else wall clock), enough layers that the data comes from memory
 * and not from a cache one layer fits in, like the roofline's 64 MiB buffer.
 * Every layer has its own plan and its own shuffled, per-head slot tables.
 * A row reports the time per layer and the K/V bytes one layer reads.
 *
 * Used by `bench/suite_kernels.ts`; runnable alone:
 * `deno run -A bench/kernels_attention.ts [--quick]`.
 *
 * @module
 */

import { type AttentionPlan, createPagedAttention } from "../lib/kernels/attention.ts";
import type { SlotLayout } from "../lib/kernels/slot_layout.ts";
import { type Gpu, requestGpu } from "../lib/gpu/device.ts";
import { bytesPerElement, type KvDtype } from "../lib/gpu/dtype.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, type Random, randomNormalArray } from "../lib/workloads/random.ts";
import { measureReadBandwidth } from "../lib/kernels/roofline.ts";
import { timeGpuWork } from "../lib/gpu/timing.ts";

/** One benchmark result. */
export interface Row {
  /** Kernel and variant. */
  kernel: string;
  /** Problem shape, human-readable. */
  shape: string;
  /** Bytes one run reads (the GB/s numerator): K/V rows attended, or the roofline buffer. */
  bytes: number;
  /** Median milliseconds of one run (one layer). */
  median_ms: number;
  /** `bytes / median_ms`, in GB/s (1e9 bytes). */
  gbps: number;
}

/** Options of {@linkcode benchAttentionKernels}. */
export interface AttentionBenchOptions {
  /** Fewer cases, fewer repetitions (default false). */
  quick?: boolean;
}

const HQ = 32, HKV = 8, D = 128, P = 32;

function shuffled(rng: Random, n: number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** Per-layer K/V caches, plans and outputs for one sequence of `tokens`. */
interface Layers {
  plans: AttentionPlan[];
  buffers: GPUBuffer[];
  record(
    encoder: GPUCommandEncoder,
    ts?: { querySet: GPUQuerySet; begin: number; end: number },
  ): void;
  dispose(): void;
}

function makeLayers(
  device: GPUDevice,
  dtype: KvDtype,
  tokens: number,
  layers: number,
  seed: number,
  slotLayout: SlotLayout,
): Layers {
  const rng = createRandom(seed);
  const numPages = Math.ceil(tokens / P);
  const numSlots = numPages + 4; // a few unused slots so ids are not a permutation of 0..n-1
  const slotElems = P * HKV * D;
  const attention = createPagedAttention(device, {
    numQueryHeads: HQ,
    numKvHeads: HKV,
    headDim: D,
    pageSize: P,
    dtype,
    slotLayout,
  });
  const init = randomNormalArray(rng, numSlots * slotElems);
  const cacheData = dtype === "f16" ? Float16Array.from(init) : init;
  const S = GPUBufferUsage.STORAGE;
  const q = createBuffer(device, "bench attention q", S, randomNormalArray(rng, HQ * D));
  const out = createBuffer(device, "bench attention out", S, HQ * D * 4);
  const buffers = [q, out];
  const plans: AttentionPlan[] = [];
  const caches: Array<[GPUBuffer, GPUBuffer]> = [];
  for (let l = 0; l < layers; l++) {
    const k = createBuffer(device, `bench attention k ${l}`, S, cacheData);
    const v = createBuffer(device, `bench attention v ${l}`, S, cacheData);
    buffers.push(k, v);
    caches.push([k, v]);
    const pageTable = new Uint32Array(HKV * numPages);
    for (let h = 0; h < HKV; h++) {
      const perm = shuffled(rng, numSlots);
      for (let p = 0; p < numPages; p++) pageTable[h * numPages + p] = perm[p];
    }
    plans.push(attention.plan({
      pageTable,
      numPages: [numPages],
      lastPageLen: [tokens - (numPages - 1) * P],
      maxPages: numPages,
      numSlots,
    }));
  }
  return {
    plans,
    buffers,
    record(encoder, ts) {
      for (let l = 0; l < layers; l++) {
        const [kCache, vCache] = caches[l];
        plans[l].encode(encoder, { q, kCache, vCache, out }, {
          timestampWrites: ts && {
            querySet: ts.querySet,
            beginIndex: l === 0 ? ts.begin : undefined,
            endIndex: l === layers - 1 ? ts.end : undefined,
          },
        });
      }
    },
    dispose() {
      for (const p of plans) p[Symbol.dispose]();
      for (const b of buffers) b.destroy();
      attention[Symbol.dispose]();
    },
  };
}

/** Times attention over one sequence of `tokens`, per layer. */
async function benchAttention(
  device: GPUDevice,
  dtype: KvDtype,
  tokens: number,
  iterations: number,
  quick: boolean,
  slotLayout: SlotLayout = "nhd",
): Promise<Row> {
  const kvBytes = 2 * tokens * HKV * D * bytesPerElement(dtype);
  // At least ~64 MiB of K/V per sample, like the roofline buffer.
  const layers = Math.max(2, Math.min(32, Math.ceil(((quick ? 48 : 64) << 20) / kvBytes)));
  const set = makeLayers(
    device,
    dtype,
    tokens,
    layers,
    tokens + (dtype === "f16" ? 1 : 0),
    slotLayout,
  );
  try {
    const timing = await timeGpuWork(device, (encoder, ts) => {
      set.record(encoder, ts && { querySet: ts.querySet, begin: ts.beginIndex, end: ts.endIndex });
    }, { iterations, warmup: 1 });
    const ms = timing.medianMs / layers;
    const plan = set.plans[0];
    return {
      kernel: `paged_attention ${dtype} ${slotLayout}`,
      shape: `Hq ${HQ}, Hkv ${HKV}, d ${D}, P ${P}; batch 1 x ${tokens} tokens; ` +
        `${plan.numSplits} splits; ${layers} layers per sample`,
      bytes: kvBytes,
      median_ms: ms,
      gbps: kvBytes / (ms * 1e6),
    };
  } finally {
    set.dispose();
  }
}

/**
 * Runs the attention benchmarks and the streaming-read roofline (first row)
 * and returns one row per case.
 *
 * @example
 * ```ts ignore
 * import { requestGpu } from "../lib/gpu/device.ts";
 * import { benchAttentionKernels } from "./kernels_attention.ts";
 * using gpu = await requestGpu();
 * console.table(await benchAttentionKernels(gpu, { quick: true }));
 * ```
 */
export async function benchAttentionKernels(
  gpu: Gpu,
  options: AttentionBenchOptions = {},
): Promise<Row[]> {
  const quick = options.quick ?? false;
  const { device } = gpu;
  const iterations = quick ? 3 : 7;
  const rows: Row[] = [];
  const add = (r: Row) => {
    rows.push(r);
    console.error(
      `  ${r.kernel} [${r.shape}]: ${r.median_ms.toFixed(3)} ms, ${r.gbps.toFixed(2)} GB/s`,
    );
  };
  const read = await measureReadBandwidth(device, { iterations });
  add({
    kernel: "stream_read (roofline)",
    shape: `${read.bytes >> 20} MiB, vec4 loads, ${read.method} clock`,
    bytes: read.bytes,
    median_ms: read.medianMs,
    gbps: read.gbps,
  });
  const dtypes: KvDtype[] = gpu.f16 ? ["f32", "f16"] : ["f32"];
  // Both slot layouts, one after the other per case (ratios within one run).
  const contexts = quick ? [2048] : [2048, 8192, 32768];
  for (const tokens of contexts) {
    for (const dtype of dtypes) {
      for (const layout of ["nhd", "hnd"] as const) {
        add(await benchAttention(device, dtype, tokens, iterations, quick, layout));
      }
    }
  }
  return rows;
}

if (import.meta.main) {
  using gpu = await requestGpu();
  const quick = Deno.args.includes("--quick");
  const rows = await benchAttentionKernels(gpu, { quick });
  const read = rows[0].gbps;
  console.log(`${gpu.description}; streaming read ${read.toFixed(2)} GB/s`);
  console.table(rows.map((r) => ({ ...r, of_read: `${(100 * r.gbps / read).toFixed(0)}%` })));
}
