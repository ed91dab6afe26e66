/**
 * GPU timing: timestamp writes for recorded work, a timer that takes the
 * median of repeated submissions (timestamp queries or wall clock), and the
 * `encode` options every kernel plan shares.
 *
 * @module
 */

import { assertDevice, assertInteger } from "./errors.ts";
import { createTrackedBuffer } from "./tracking.ts";

/** Where a recorded piece of GPU work writes its begin and end timestamps. */
export interface GpuTimestampWrites {
  /** A `"timestamp"` query set. */
  querySet: GPUQuerySet;
  /** Query written at the beginning of the first pass. */
  beginIndex: number;
  /** Query written at the end of the last pass. */
  endIndex: number;
}

/**
 * Records the work to time into `encoder`. When `timestamps` is given the
 * work must write `beginIndex` at the beginning of its first compute pass and
 * `endIndex` at the end of its last one.
 */
export type RecordGpuWork = (encoder: GPUCommandEncoder, timestamps?: GpuTimestampWrites) => void;

/** Options of {@linkcode timeGpuWork}. */
export interface TimeGpuWorkOptions {
  /** Timed repetitions (default 5). */
  iterations?: number;
  /** Untimed repetitions first (default 1). */
  warmup?: number;
  /**
   * Wall-clock mode only: copies of the work recorded into each timed
   * command buffer (default 1); each sample is the total divided by this.
   * Waiting for the queue has a coarse granularity (about 10 ms in Deno), so
   * short work needs several copies per sample.
   */
  repeats?: number;
  /**
   * Use timestamp queries when the device has `timestamp-query` (default
   * true); otherwise wall clock from submit to `onSubmittedWorkDone`.
   */
  timestamps?: boolean;
}

/** What {@linkcode timeGpuWork} measured. */
export interface GpuTiming {
  /** Median of the samples, milliseconds. */
  medianMs: number;
  /** Every timed sample, milliseconds, in run order. */
  samplesMs: number[];
  /** How the samples were taken. */
  method: "timestamp" | "wall";
}

/**
 * Times GPU work: each repetition is recorded into its own command buffer,
 * submitted, and waited for; the result is the median.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { timeGpuWork } from "./timing.ts";
 * using gpu = await requestGpu();
 * const t = await timeGpuWork(gpu.device, (enc, ts) => {
 *   const pass = enc.beginComputePass({
 *     label: "empty",
 *     timestampWrites: ts && {
 *       querySet: ts.querySet,
 *       beginningOfPassWriteIndex: ts.beginIndex,
 *       endOfPassWriteIndex: ts.endIndex,
 *     },
 *   });
 *   pass.end();
 * }, { iterations: 2 });
 * console.log(t.medianMs >= 0);
 * ```
 */
export async function timeGpuWork(
  device: GPUDevice,
  record: RecordGpuWork,
  options: TimeGpuWorkOptions = {},
): Promise<GpuTiming> {
  assertDevice(device, "time GPU work");
  const iterations = options.iterations ?? 5;
  const warmup = options.warmup ?? 1;
  const repeats = options.repeats ?? 1;
  assertInteger("iterations", iterations, "time GPU work", 1);
  assertInteger("warmup", warmup, "time GPU work", 0);
  assertInteger("repeats", repeats, "time GPU work", 1);
  const useTimestamps = (options.timestamps ?? true) && device.features.has("timestamp-query");
  for (let i = 0; i < warmup; i++) {
    const encoder = device.createCommandEncoder({ label: "freekv timing warmup" });
    record(encoder);
    device.queue.submit([encoder.finish()]);
  }
  await device.queue.onSubmittedWorkDone();
  const samplesMs: number[] = [];
  if (!useTimestamps) {
    for (let i = 0; i < iterations; i++) {
      const encoder = device.createCommandEncoder({ label: "freekv timed work" });
      for (let r = 0; r < repeats; r++) record(encoder);
      const commands = encoder.finish();
      const t0 = performance.now();
      device.queue.submit([commands]);
      await device.queue.onSubmittedWorkDone();
      samplesMs.push((performance.now() - t0) / repeats);
    }
    return { medianMs: median(samplesMs), samplesMs, method: "wall" };
  }
  const querySet = device.createQuerySet({ label: "freekv timing", type: "timestamp", count: 2 });
  const resolve = createTrackedBuffer(device, {
    label: "freekv timing resolve",
    size: 16,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const readback = createTrackedBuffer(device, {
    label: "freekv timing readback",
    size: 16,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    for (let i = 0; i < iterations; i++) {
      const encoder = device.createCommandEncoder({ label: "freekv timed work" });
      record(encoder, { querySet, beginIndex: 0, endIndex: 1 });
      encoder.resolveQuerySet(querySet, 0, 2, resolve, 0);
      encoder.copyBufferToBuffer(resolve, 0, readback, 0, 16);
      device.queue.submit([encoder.finish()]);
      await readback.mapAsync(GPUMapMode.READ);
      const [begin, end] = new BigUint64Array(readback.getMappedRange().slice(0));
      readback.unmap();
      samplesMs.push(Number(end - begin) / 1e6);
    }
  } finally {
    querySet.destroy();
    resolve.destroy();
    readback.destroy();
  }
  return { medianMs: median(samplesMs), samplesMs, method: "timestamp" };
}

/**
 * The median of `values` (the mean of the middle two for an even count;
 * NaN for none).
 *
 * @example
 * ```ts
 * import { median } from "./timing.ts";
 * console.log(median([3, 1, 2]), median([4, 1, 2, 3])); // 2 2.5
 * ```
 */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * The compute-pass timestamp writes for one pass of work timed as a whole:
 * `begin` and `end` are the query indices this pass writes (either may be
 * left out, so that work spanning several passes or encodes is timed from
 * its first pass to its last). Returns `undefined` when nothing is written.
 *
 * @example
 * ```ts
 * import { passTimestampWrites } from "./timing.ts";
 * console.log(passTimestampWrites(undefined, 0, 1)); // undefined
 * ```
 */
export function passTimestampWrites(
  ts: TimestampWritesOption | undefined,
  begin: number | undefined,
  end: number | undefined,
): GPUComputePassTimestampWrites | undefined {
  if (!ts || (begin === undefined && end === undefined)) return undefined;
  return { querySet: ts.querySet, beginningOfPassWriteIndex: begin, endOfPassWriteIndex: end };
}

/**
 * The `timestampWrites` option of every kernel plan's `encode`: the begin
 * index is written at the beginning of the plan's first pass and the end
 * index at the end of its last; either may be left out.
 */
export type TimestampWritesOption = Partial<GpuTimestampWrites> & { querySet: GPUQuerySet };

/** The options of every kernel plan's `encode`. */
export interface KernelEncodeOptions {
  /** Timestamps around the recorded work (profiling). */
  timestampWrites?: TimestampWritesOption;
}
