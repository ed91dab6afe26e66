/**
 * The adapter's memory-read roofline: a kernel that streams a large buffer
 * once, timed, so memory-bound kernels can report their bandwidth as a share
 * of what the adapter can read.
 *
 * @module
 */

import streamReadSource from "../../shaders/stream_read.wgsl" with { type: "text" };
import { assertDevice, assertInteger } from "../gpu/errors.ts";
import { timeGpuWork } from "../gpu/timing.ts";
import { createBuffer, packUniforms } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";

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
  assertDevice(device, "measure read bandwidth");
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
  const src = createTrackedBuffer(device, {
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
