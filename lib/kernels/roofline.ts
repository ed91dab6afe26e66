/**
 * The adapter's memory-read roofline: a kernel that streams a large buffer
 * once, timed, so memory-bound kernels can report their bandwidth as a share
 * of what the adapter can read.
 *
 * The kernel contract: {@linkcode createStreamRead} then
 * {@linkcode StreamRead.plan} (validates the byte count and grid, uploads
 * them) then {@linkcode StreamReadPlan.encode} (records one pass);
 * {@linkcode measureReadBandwidth} times it.
 *
 * @module
 */

import streamReadSource from "../../shaders/stream_read.wgsl" with { type: "text" };
import { assertDevice, assertInteger, assertObject, disposedError } from "../gpu/errors.ts";
import { type KernelEncodeOptions, passTimestampWrites, timeGpuWork } from "../gpu/timing.ts";
import {
  assertBufferSize,
  BindGroupCache,
  type BufferSlice,
  createBuffer,
  packUniforms,
} from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import type { GpuKernel, GpuKernelPlan } from "./contract.ts";
import { createTrackedBuffer } from "../gpu/tracking.ts";

/** Options of {@linkcode createStreamRead}. */
export interface StreamReadOptions {
  /** Invocations per workgroup (default 256, at most the device limit). */
  workgroupSize?: number;
}

/** What one plan reads, the input of {@linkcode StreamRead.plan}. */
export interface StreamReadStep {
  /** Bytes to stream, a multiple of 16 no larger than `maxStorageBufferBindingSize`. */
  bytes: number;
  /**
   * Workgroups dispatched (default 1024, fewer for small buffers); each
   * invocation reads every `workgroups * workgroupSize`-th vec4.
   */
  workgroups?: number;
}

/** Buffers of {@linkcode StreamReadPlan.encode}. */
export interface StreamReadBuffers {
  /** What is read: at least `bytes` (STORAGE). */
  source: GPUBuffer | BufferSlice;
  /** A 256-byte STORAGE buffer the kernel (almost) never writes. */
  sink: GPUBuffer | BufferSlice;
}

/** The streaming-read kernel for one workgroup size, from {@linkcode createStreamRead}. */
export interface StreamRead
  extends GpuKernel<Required<StreamReadOptions>, StreamReadStep, StreamReadPlan> {}

/** One byte count and grid on the GPU, from {@linkcode StreamRead.plan}. */
export interface StreamReadPlan extends GpuKernelPlan<StreamReadStep, StreamReadBuffers> {
  /** Bytes read per encode. */
  readonly bytes: number;
  /** Workgroups dispatched. */
  readonly workgroups: number;
}

/** Options of {@linkcode measureReadBandwidth}. */
export interface ReadBandwidthOptions extends StreamReadOptions {
  /**
   * Bytes to stream, a multiple of 16 no larger than the device's
   * `maxStorageBufferBindingSize` (default 64 MiB, or that limit if smaller).
   */
  bytes?: number;
  /** Timed repetitions (default 5). */
  iterations?: number;
  /** See {@linkcode StreamReadStep.workgroups}. */
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

const ACTION = "measure read bandwidth";
const SINK_BYTES = 256;

function checkBytes(bytes: unknown, device: GPUDevice): asserts bytes is number {
  assertInteger("bytes", bytes, ACTION, 16, device.limits.maxStorageBufferBindingSize);
  if (bytes % 16 !== 0) {
    throw new RangeError(`Cannot ${ACTION} as 'bytes' must be a multiple of 16: received ${bytes}`);
  }
}

class Stream implements StreamRead {
  readonly options: Readonly<Required<StreamReadOptions>>;
  readonly device: GPUDevice;
  readonly pipeline: GPUComputePipeline;
  #disposed = false;

  constructor(device: GPUDevice, options: Required<StreamReadOptions>) {
    this.device = device;
    this.options = Object.freeze({ ...options });
    this.pipeline = cachedPipeline(device, "stream_read", streamReadSource, {
      WORKGROUP_SIZE: options.workgroupSize,
    });
  }

  plan(step: StreamReadStep): StreamReadPlan {
    if (this.#disposed) throw disposedError(ACTION, "stream read");
    return new StreamPlan(this, step);
  }

  [Symbol.dispose](): void {
    this.#disposed = true;
  }
}

class StreamPlan implements StreamReadPlan {
  #stream: Stream;
  #params: GPUBuffer;
  #bytes = 0;
  #workgroups = 0;
  #bindings = new BindGroupCache();
  #disposed = false;

  constructor(stream: Stream, step: StreamReadStep) {
    this.#stream = stream;
    const checked = this.#check(step);
    this.#params = createBuffer(
      stream.device,
      "freekv stream_read params",
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      16,
    );
    this.#write(checked);
  }

  get bytes(): number {
    return this.#bytes;
  }

  get workgroups(): number {
    return this.#workgroups;
  }

  #check(step: StreamReadStep): { bytes: number; workgroups: number } {
    assertObject("step", step, ACTION);
    const { device, options } = this.#stream;
    checkBytes(step.bytes, device);
    // Enough invocations to fill any adapter, few enough that each one loops.
    const workgroups = step.workgroups ??
      Math.max(1, Math.min(Math.ceil(step.bytes / 16 / options.workgroupSize), 1024));
    assertInteger(
      "workgroups",
      workgroups,
      ACTION,
      1,
      device.limits.maxComputeWorkgroupsPerDimension,
    );
    return { bytes: step.bytes, workgroups };
  }

  #write({ bytes, workgroups }: { bytes: number; workgroups: number }): void {
    const stride = workgroups * this.#stream.options.workgroupSize;
    this.#stream.device.queue.writeBuffer(this.#params, 0, packUniforms([bytes / 16, stride]));
    this.#bytes = bytes;
    this.#workgroups = workgroups;
  }

  update(step: StreamReadStep): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    this.#write(this.#check(step));
  }

  encode(
    encoder: GPUCommandEncoder,
    buffers: StreamReadBuffers,
    options: KernelEncodeOptions = {},
  ): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    assertObject("buffers", buffers, ACTION);
    const source = assertBufferSize("source", buffers.source, this.#bytes, ACTION);
    const sink = assertBufferSize("sink", buffers.sink, SINK_BYTES, ACTION);
    const { device, pipeline } = this.#stream;
    const key = [source, sink].flatMap((x) => [x.buffer, x.offset, x.size]);
    const bindGroup = this.#bindings.get(key, () =>
      device.createBindGroup({
        label: "freekv stream_read",
        layout: pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#params } },
          { binding: 1, resource: source },
          { binding: 2, resource: sink },
        ],
      }));
    const ts = options.timestampWrites;
    const pass = encoder.beginComputePass({
      label: "freekv stream_read",
      timestampWrites: passTimestampWrites(ts, ts?.beginIndex, ts?.endIndex),
    });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(this.#workgroups);
    pass.end();
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#params.destroy();
    this.#bindings.clear();
  }
}

/**
 * Creates the streaming-read kernel for one workgroup size.
 *
 * @throws {TypeError} When `device` is not a GPUDevice or `workgroupSize` is
 * not an integer.
 * @throws {RangeError} When `workgroupSize` exceeds the device limit.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer } from "../gpu/buffers.ts";
 * import { createStreamRead } from "./roofline.ts";
 * using gpu = await requestGpu();
 * const { device } = gpu;
 * const source = createBuffer(device, "source", GPUBufferUsage.STORAGE, 1 << 16);
 * const sink = createBuffer(device, "sink", GPUBufferUsage.STORAGE, 256);
 * using stream = createStreamRead(device, { workgroupSize: 64 });
 * using plan = stream.plan({ bytes: 1 << 16 });
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder, { source, sink });
 * device.queue.submit([encoder.finish()]);
 * console.log(plan.workgroups); // 64
 * ```
 */
export function createStreamRead(device: GPUDevice, options: StreamReadOptions = {}): StreamRead {
  assertDevice(device, ACTION);
  const max = device.limits.maxComputeInvocationsPerWorkgroup;
  const workgroupSize = options?.workgroupSize ?? Math.min(256, max);
  assertInteger("workgroupSize", workgroupSize, ACTION, 1, max);
  return new Stream(device, { workgroupSize });
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
  assertDevice(device, ACTION);
  const limit = device.limits.maxStorageBufferBindingSize;
  const bytes = options.bytes ?? Math.min(64 << 20, Math.floor(limit / 16) * 16);
  checkBytes(bytes, device);
  const iterations = options.iterations ?? 5;
  assertInteger("iterations", iterations, ACTION, 1);
  using stream = createStreamRead(device, options);
  using plan = stream.plan({ bytes, workgroups: options.workgroups });
  const source = createTrackedBuffer(device, {
    label: "freekv stream_read source",
    size: bytes,
    usage: GPUBufferUsage.STORAGE,
    mappedAtCreation: true,
  });
  new Float32Array(source.getMappedRange()).fill(1);
  source.unmap();
  const sink = createBuffer(device, "freekv stream_read sink", GPUBufferUsage.STORAGE, SINK_BYTES);
  try {
    const timing = await timeGpuWork(device, (encoder, timestampWrites) => {
      plan.encode(encoder, { source, sink }, { timestampWrites });
    }, { iterations, timestamps: options.timestamps, repeats: 8 });
    return {
      gbps: bytes / (timing.medianMs * 1e6),
      medianMs: timing.medianMs,
      bytes,
      method: timing.method,
    };
  } finally {
    source.destroy();
    sink.destroy();
  }
}
