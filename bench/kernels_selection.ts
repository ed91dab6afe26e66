/**
 * Benchmarks of the selection-side kernels at Llama-3.1-8B attention shapes
 * (32 query heads, 8 KV heads, head_dim 128, page 32): page selection
 * (score + GQA pooling + top-k) over every page summary of a context, bulk
 * and single-page summaries, and the query similarity check.
 *
 * Each timed sample runs the kernel over several layers' buffers in one
 * command buffer (timestamp queries around the whole run when the device has
 * them, else wall clock) so that the data comes from memory, not from a
 * cache that one layer's buffers would fit in; a row reports the time per
 * layer and the bytes one layer reads and writes.
 *
 * Used by `bench/suite_kernels.ts`; runnable alone:
 * `deno run -A bench/kernels_selection.ts [--quick]`.
 *
 * @module
 */

import { type Gpu, requestGpu } from "../lib/gpu/device.ts";
import type { KvDtype } from "../lib/gpu/dtype.ts";
import { createBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import { measureReadBandwidth } from "../lib/kernels/roofline.ts";
import {
  type GpuTimestampWrites,
  passTimestampWrites,
  timeGpuWork,
  type TimestampWritesOption,
} from "../lib/gpu/timing.ts";
import { createPageSelector, type PoolingMode } from "../lib/kernels/selection.ts";
import { createQuerySimilarity } from "../lib/kernels/similarity.ts";
import { createPageSummarizer, type SummaryKind } from "../lib/kernels/summaries.ts";

/** One benchmark result (shared with the attention benchmarks). */
export type { Row } from "./kernels_attention.ts";
import type { Row } from "./kernels_attention.ts";

/** Options of {@linkcode benchSelectionKernels}. */
export interface SelectionBenchOptions {
  /** Fewer sizes, fewer repetitions (default false). */
  quick?: boolean;
}

const HQ = 32, HKV = 8, D = 128, P = 32, K = 32;
const STORAGE = GPUBufferUsage.STORAGE;

/** Enough copies of a `bytes`-sized working set to spill the caches, at most 64. */
function layersFor(bytes: number, quick: boolean): number {
  const target = (quick ? 48 : 96) << 20;
  return Math.max(2, Math.min(64, Math.ceil(target / bytes)));
}

/** Creates `count` buffers holding the same `data` (copied on the GPU). */
function replicate(
  device: GPUDevice,
  label: string,
  data: ArrayBufferView,
  count: number,
): GPUBuffer[] {
  const first = createBuffer(device, `${label} 0`, STORAGE | GPUBufferUsage.COPY_SRC, data);
  const buffers = [first];
  const encoder = device.createCommandEncoder({ label: `${label} replicate` });
  for (let i = 1; i < count; i++) {
    const b = createBuffer(device, `${label} ${i}`, STORAGE | GPUBufferUsage.COPY_DST, first.size);
    encoder.copyBufferToBuffer(first, 0, b, 0, first.size);
    buffers.push(b);
  }
  device.queue.submit([encoder.finish()]);
  return buffers;
}

/** Timestamp writes for layer `i` of `n`: begin on the first pass, end on the last. */
function passTimestamps(
  ts: GpuTimestampWrites | undefined,
  i: number,
  n: number,
): GPUComputePassTimestampWrites | undefined {
  return passTimestampWrites(
    ts,
    i === 0 ? ts?.beginIndex : undefined,
    i === n - 1 ? ts?.endIndex : undefined,
  );
}

/** The same timestamps in the shape of the kernel plans' `encode` option. */
function encodeTimestamps(
  ts: GPUComputePassTimestampWrites | undefined,
): TimestampWritesOption | undefined {
  return ts && {
    querySet: ts.querySet,
    beginIndex: ts.beginningOfPassWriteIndex,
    endIndex: ts.endOfPassWriteIndex,
  };
}

async function timeLayers(
  device: GPUDevice,
  layers: number,
  iterations: number,
  encodeLayer: (
    encoder: GPUCommandEncoder,
    layer: number,
    ts?: GPUComputePassTimestampWrites,
  ) => void,
): Promise<number> {
  const timing = await timeGpuWork(device, (encoder, ts) => {
    for (let l = 0; l < layers; l++) encodeLayer(encoder, l, passTimestamps(ts, l, layers));
  }, { iterations, warmup: 1 });
  return timing.medianMs / layers;
}

function row(kernel: string, shape: string, bytes: number, ms: number): Row {
  return { kernel, shape, bytes, median_ms: ms, gbps: bytes / (ms * 1e6) };
}

/** A page selection to time: Llama-3.1-8B heads over a whole context by default. */
interface SelectionCase {
  contextTokens?: number;
  /** Candidate pages (default: the context's pages). */
  pages?: number;
  pooling?: PoolingMode;
  batch?: number;
  heads?: { hq: number; hkv: number; d: number };
  k?: number;
  /** The selector's countingTopkMax (0: score and radix top-k dispatches). */
  countingTopkMax?: number;
  /** Kernel name of the row (default `page_select POOLING`). */
  label?: string;
}

async function benchSelection(
  device: GPUDevice,
  c: SelectionCase,
  iterations: number,
  quick: boolean,
): Promise<Row> {
  const { pooling = "softmax-mean", batch = 1, k = K } = c;
  const { hq, hkv, d } = c.heads ?? { hq: HQ, hkv: HKV, d: D };
  const pages = c.pages ?? (c.contextTokens ?? 0) / P;
  const rng = createRandom(pages * P + batch);
  const summaryData = randomNormalArray(rng, batch * pages * hkv * 2 * d);
  const bytes = summaryData.byteLength + batch * hq * d * 4;
  const layers = layersFor(bytes, quick);
  const summaries = replicate(device, "bench summaries", summaryData, layers);
  const q = createBuffer(device, "bench q", STORAGE, randomNormalArray(rng, batch * hq * d));
  const selected = createBuffer(device, "bench selected", STORAGE, batch * hkv * k * 4);
  using selector = createPageSelector(device, {
    numQueryHeads: hq,
    numKvHeads: hkv,
    headDim: d,
    pooling,
    ...(c.countingTopkMax === undefined ? {} : { countingTopkMax: c.countingTopkMax }),
  });
  using plan = selector.plan({
    pageOffset: Array.from({ length: batch }, (_, b) => b * pages),
    candidateStart: new Array(batch).fill(0),
    candidateEnd: new Array(batch).fill(pages),
    k,
  });
  try {
    const ms = await timeLayers(device, layers, iterations, (encoder, l, timestampWrites) => {
      plan.encode(encoder, { q, summaries: summaries[l], selected }, {
        timestampWrites: encodeTimestamps(timestampWrites),
      });
    });
    const context = c.contextTokens ? `ctx ${c.contextTokens} ` : "";
    return row(
      c.label ?? `page_select ${pooling}`,
      `B${batch} Hq${hq} Hkv${hkv} d${d} ${context}(${pages} pages) k${k}`,
      bytes,
      ms,
    );
  } finally {
    for (const b of [...summaries, q, selected]) b.destroy();
  }
}

async function benchSummaries(
  device: GPUDevice,
  numJobs: number,
  dtype: KvDtype,
  summary: SummaryKind,
  iterations: number,
  quick: boolean,
): Promise<Row> {
  const rng = createRandom(numJobs);
  const slotElements = P * HKV * D;
  const values = randomNormalArray(rng, numJobs * slotElements);
  const kData = dtype === "f16" ? Float16Array.from(values) : values;
  const summaryBytes = numJobs * HKV * 2 * D * 4;
  const bytes = kData.byteLength + summaryBytes;
  const layers = layersFor(bytes, quick);
  const kCaches = replicate(device, "bench k cache", kData, layers);
  const summaries = Array.from(
    { length: layers },
    (_, l) => createBuffer(device, `bench summaries ${l}`, STORAGE, summaryBytes),
  );
  using summarizer = createPageSummarizer(device, {
    numKvHeads: HKV,
    headDim: D,
    pageSize: P,
    dtype,
    summary,
  });
  using plan = summarizer.plan(
    Array.from({ length: numJobs }, (_, i) => ({ srcSlot: i, dstPage: i, numTokens: P })),
  );
  try {
    const ms = await timeLayers(device, layers, iterations, (encoder, l, timestampWrites) => {
      plan.encode(encoder, { kCache: kCaches[l], summaries: summaries[l] }, {
        timestampWrites: encodeTimestamps(timestampWrites),
      });
    });
    return row(
      `page_summary ${summary} ${dtype}`,
      `${numJobs} page${numJobs > 1 ? "s" : ""} Hkv${HKV} d${D} P${P}`,
      bytes,
      ms,
    );
  } finally {
    for (const b of [...kCaches, ...summaries]) b.destroy();
  }
}

async function benchSimilarity(device: GPUDevice, batch: number, iterations: number): Promise<Row> {
  const rng = createRandom(3);
  const n = batch * HQ * D;
  const qNow = createBuffer(device, "bench q now", STORAGE, randomNormalArray(rng, n));
  const qPrev = createBuffer(device, "bench q prev", STORAGE, randomNormalArray(rng, n));
  const cosine = createBuffer(device, "bench cosine", STORAGE, batch * HQ * 4);
  const groupMean = createBuffer(device, "bench group mean", STORAGE, batch * HKV * 4);
  const flags = createBuffer(device, "bench flags", STORAGE, batch * HKV * 4);
  using similarity = createQuerySimilarity(device, {
    numQueryHeads: HQ,
    numKvHeads: HKV,
    headDim: D,
  });
  using plan = similarity.plan({ batch, tau: 0.9 });
  const layers = 32;
  try {
    const ms = await timeLayers(device, layers, iterations, (encoder, _l, ts) => {
      plan.encode(encoder, { qNow, qPrev, cosine, groupMean, flags }, {
        timestampWrites: encodeTimestamps(ts),
      });
    });
    const bytes = 2 * n * 4 + batch * (HQ + 2 * HKV) * 4;
    return row("query_similarity", `B${batch} Hq${HQ} Hkv${HKV} d${D}`, bytes, ms);
  } finally {
    for (const b of [qNow, qPrev, cosine, groupMean, flags]) b.destroy();
  }
}

/**
 * Runs the selection-side kernel benchmarks on `gpu` and returns one row per
 * measurement. Progress goes to stderr.
 *
 * @example
 * ```ts ignore
 * import { requestGpu } from "../lib/gpu/device.ts";
 * import { benchSelectionKernels } from "./kernels_selection.ts";
 * using gpu = await requestGpu();
 * console.table(await benchSelectionKernels(gpu, { quick: true }));
 * ```
 */
export async function benchSelectionKernels(
  gpu: Gpu,
  options: SelectionBenchOptions = {},
): Promise<Row[]> {
  const quick = options.quick ?? false;
  const { device } = gpu;
  const iterations = quick ? 3 : 7;
  const rows: Row[] = [];
  const add = (r: Row) => {
    console.error(
      `  ${r.kernel} | ${r.shape} | ${r.median_ms.toFixed(3)} ms | ${r.gbps.toFixed(2)} GB/s`,
    );
    rows.push(r);
  };
  const contexts = quick ? [4096, 32768] : [4096, 8192, 16384, 32768];
  for (const contextTokens of contexts) {
    add(await benchSelection(device, { contextTokens }, iterations, quick));
  }
  if (!quick) {
    add(await benchSelection(device, { contextTokens: 32768, pooling: "mean" }, iterations, quick));
    add(await benchSelection(device, { contextTokens: 32768, pooling: "max" }, iterations, quick));
    add(await benchSelection(device, { contextTokens: 8192, batch: 4 }, iterations, quick));
  }
  // Few candidates: one dispatch (the default up to countingTopkMax pages)
  // against the score and radix top-k dispatches, at stories260K's heads
  // (its 512-token context, page 8, less sink and window) and at 8B's.
  const small = [
    { heads: { hq: 8, hkv: 4, d: 8 }, pages: 58, k: 6 },
    { pages: 128 },
  ];
  for (const c of small) {
    add(
      await benchSelection(device, { ...c, label: "page_select one dispatch" }, iterations, quick),
    );
    add(
      await benchSelection(
        device,
        { ...c, countingTopkMax: 0, label: "page_select score + radix top-k" },
        iterations,
        quick,
      ),
    );
  }
  const dtypes: KvDtype[] = gpu.f16 ? ["f16", "f32"] : ["f32"];
  for (const dtype of quick ? dtypes.slice(0, 1) : dtypes) {
    add(await benchSummaries(device, 512, dtype, "minmax", iterations, quick));
    if (!quick) add(await benchSummaries(device, 512, dtype, "box", iterations, quick));
  }
  add(await benchSummaries(device, 1, dtypes[0], "minmax", iterations, quick));
  add(await benchSimilarity(device, 1, iterations));
  return rows;
}

if (import.meta.main) {
  using gpu = await requestGpu();
  const quick = Deno.args.includes("--quick");
  const rows = await benchSelectionKernels(gpu, { quick });
  // The streaming-read roofline from memory (64 MiB, beyond the caches).
  const read = await measureReadBandwidth(gpu.device, { iterations: quick ? 3 : 5 });
  console.log(`${gpu.description}; streaming read ${read.gbps.toFixed(2)} GB/s (${read.method})`);
  console.table(rows.map((r) => ({ ...r, of_read: `${(100 * r.gbps / read.gbps).toFixed(0)}%` })));
}
