/**
 * The adapter's memory-read roofline: a kernel that streams a large buffer
 * once, timed, so memory-bound kernels can report their bandwidth as a share
 * of what the adapter can read. Also the small GPU timing helper the
 * benchmarks share.
 *
 * @module
 */

import streamReadSource from "../../shaders/stream_read.wgsl" with { type: "text" };
import { assertInteger } from "../gpu/errors.ts";
import { cachedPipeline, createBuffer, packUniforms } from "../gpu/buffers.ts";

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
 * import { requestGpu } from "../gpu/device.ts";
 * import { timeGpuWork } from "./roofline.ts";
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
  const resolve = device.createBuffer({
    label: "freekv timing resolve",
    size: 16,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const readback = device.createBuffer({
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

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Options of {@linkcode measureReadBandwidth}. */
export interface ReadBandwidthOptions {
  /**
   * Bytes to stream, a multiple of 16 no larger than the device's
   * `maxStorageBufferBindingSize` (default 64 MiB, or that limit if smaller).
   */
  bytes?: number;
  /** Timed repetitions (default 5). */
  iterations?: number;
  /** Invocations per workgroup (default 256, at most the device limit). */
  workgroupSize?: number;
  /**
   * Workgroups dispatched (default 1024, fewer for small buffers); each
   * invocation reads every `workgroups * workgroupSize`-th vec4.
   */
  workgroups?: number;
  /** Timestamp queries when available (default true), else wall clock. */
  timestamps?: boolean;
}

/** What {@linkcode measureReadBandwidth} measured. */
export interface ReadBandwidth {
  /** Bytes read per repetition / median time, in GB/s (1e9 bytes). */
  gbps: number;
  /** Median time of one full read, milliseconds. */
  medianMs: number;
  /** Bytes read per repetition. */
  bytes: number;
  /** How the time was taken. */
  method: "timestamp" | "wall";
}

/**
 * Measures the adapter's streaming read bandwidth: a buffer of `bytes` is
 * read once per repetition with vec4 loads. The buffers are destroyed before
 * the promise resolves.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { measureReadBandwidth } from "./roofline.ts";
 * using gpu = await requestGpu();
 * const r = await measureReadBandwidth(gpu.device, { bytes: 1 << 16, iterations: 2 });
 * console.log(r.gbps > 0);
 * ```
 */
export async function measureReadBandwidth(
  device: GPUDevice,
  options: ReadBandwidthOptions = {},
): Promise<ReadBandwidth> {
  const action = "measure read bandwidth";
  const limit = device.limits.maxStorageBufferBindingSize;
  const bytes = options.bytes ?? Math.min(64 << 20, Math.floor(limit / 16) * 16);
  assertInteger("bytes", bytes, action, 16, limit);
  if (bytes % 16 !== 0) {
    throw new RangeError(
      `Cannot ${action} as 'bytes' must be a multiple of 16: received ${bytes}`,
    );
  }
  const iterations = options.iterations ?? 5;
  assertInteger("iterations", iterations, action, 1);
  const workgroupSize = options.workgroupSize ??
    Math.min(256, device.limits.maxComputeInvocationsPerWorkgroup);
  assertInteger(
    "workgroupSize",
    workgroupSize,
    action,
    1,
    device.limits.maxComputeInvocationsPerWorkgroup,
  );

  const numVec4 = bytes / 16;
  const pipeline = cachedPipeline(device, "stream_read", streamReadSource, {
    WORKGROUP_SIZE: workgroupSize,
  });
  // Enough invocations to fill any adapter, few enough that each one loops.
  const workgroups = options.workgroups ??
    Math.max(1, Math.min(Math.ceil(numVec4 / workgroupSize), 1024));
  assertInteger(
    "workgroups",
    workgroups,
    action,
    1,
    device.limits.maxComputeWorkgroupsPerDimension,
  );
  const stride = workgroups * workgroupSize;
  const src = device.createBuffer({
    label: "freekv stream_read source",
    size: bytes,
    usage: GPUBufferUsage.STORAGE,
    mappedAtCreation: true,
  });
  new Float32Array(src.getMappedRange()).fill(1);
  src.unmap();
  const params = createBuffer(
    device,
    "freekv stream_read params",
    GPUBufferUsage.UNIFORM,
    new Uint32Array(packUniforms([numVec4, stride])),
  );
  const sink = createBuffer(device, "freekv stream_read sink", GPUBufferUsage.STORAGE, 256);
  try {
    const bindGroup = device.createBindGroup({
      label: "freekv stream_read",
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: params } },
        { binding: 1, resource: { buffer: src } },
        { binding: 2, resource: { buffer: sink } },
      ],
    });
    const timing = await timeGpuWork(device, (encoder, ts) => {
      const pass = encoder.beginComputePass({
        label: "freekv stream_read",
        timestampWrites: ts && {
          querySet: ts.querySet,
          beginningOfPassWriteIndex: ts.beginIndex,
          endOfPassWriteIndex: ts.endIndex,
        },
      });
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup);
      pass.dispatchWorkgroups(workgroups);
      pass.end();
    }, { iterations, timestamps: options.timestamps, repeats: 8 });
    return {
      gbps: bytes / (timing.medianMs * 1e6),
      medianMs: timing.medianMs,
      bytes,
      method: timing.method,
    };
  } finally {
    src.destroy();
    params.destroy();
    sink.destroy();
  }
}
