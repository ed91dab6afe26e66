/**
 * The plan shape of the model kernels ({@linkcode KernelPlan}: planned once,
 * `record` only records dispatches into the caller's compute pass) and the
 * helpers every model kernel builds its plan with.
 *
 * @module
 */

import { type BufferSlice, createBuffer, packUniforms } from "../gpu/buffers.ts";
import { assertInteger } from "../gpu/errors.ts";

/** Recorded work of one kernel (or several), planned once, recorded many times. */
export interface KernelPlan {
  /** What the plan computes, for debugging. */
  readonly label: string;
  /** Records the plan's dispatches into `pass`. */
  record(pass: GPUComputePassEncoder): void;
  /** Destroys the uniform buffers the plan created. */
  [Symbol.dispose](): void;
}

/**
 * Creates the small uniform buffer that carries a sequence position
 * (`start`: position of the first row) to RoPE and attention; rewrite it with
 * {@linkcode writeSeqStart} between submits.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createSeqUniform } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const seq = createSeqUniform(gpu.device, "seq", 0);
 * seq.destroy();
 * ```
 */
export function createSeqUniform(device: GPUDevice, label: string, start: number): GPUBuffer {
  assertInteger("start", start, "create a sequence uniform", 0, 0xffffffff);
  return createBuffer(
    device,
    label,
    GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    new Uint32Array([start, 0, 0, 0]),
  );
}

/**
 * Queues a write of the position `start` into a buffer made by
 * {@linkcode createSeqUniform}; it takes effect for later submits.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createSeqUniform, writeSeqStart } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const seq = createSeqUniform(gpu.device, "seq", 0);
 * writeSeqStart(gpu.device, seq, 7);
 * seq.destroy();
 * ```
 */
export function writeSeqStart(device: GPUDevice, seq: GPUBuffer, start: number): void {
  assertInteger("start", start, "write a sequence position", 0, 0xffffffff);
  device.queue.writeBuffer(seq, 0, new Uint32Array([start]));
}

/**
 * Joins plans into one that records them in order and disposes them all.
 *
 * @example
 * ```ts
 * import { combinePlans } from "./kernels.ts";
 * const none = combinePlans("nothing", []);
 * console.log(none.label); // nothing
 * ```
 */
export function combinePlans(label: string, plans: KernelPlan[]): KernelPlan {
  return {
    label,
    record(pass) {
      for (const p of plans) p.record(pass);
    },
    [Symbol.dispose]() {
      for (const p of plans) p[Symbol.dispose]();
    },
  };
}

/** One dispatch of a plan. */
export interface Dispatch {
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number, number];
}

/** A plan recording `dispatches` in order, owning `owned`. */
export function makePlan(label: string, dispatches: Dispatch[], owned: GPUBuffer[]): KernelPlan {
  return {
    label,
    record(pass) {
      for (const d of dispatches) {
        pass.setPipeline(d.pipeline);
        pass.setBindGroup(0, d.bindGroup);
        pass.dispatchWorkgroups(...d.workgroups);
      }
    },
    [Symbol.dispose]() {
      for (const b of owned) b.destroy();
    },
  };
}

/** Splits `n` workgroups over x and y; shaders rebuild the index as `x + y * num_x`. */
export function grid(n: number, action: string): [number, number, number] {
  const x = Math.max(1, Math.min(n, 65535));
  const y = Math.ceil(n / x);
  if (y > 65535) {
    throw new RangeError(`Cannot ${action} as it needs ${n} workgroups, more than 65535^2`);
  }
  return [x, Math.max(1, y), 1];
}

/** A uniform buffer of packed values. */
export function uniform(
  device: GPUDevice,
  label: string,
  values: Parameters<typeof packUniforms>[0],
) {
  return createBuffer(
    device,
    `${label} params`,
    GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    new Uint8Array(packUniforms(values)),
  );
}

/** Bind group entries for buffers and buffer slices, in binding order. */
export function entries(resources: Array<GPUBuffer | BufferSlice>): GPUBindGroupEntry[] {
  return resources.map((r, binding) => ({
    binding,
    resource: r instanceof GPUBuffer ? { buffer: r } : {
      buffer: r.buffer,
      offset: r.offset ?? 0,
      size: r.size,
    },
  }));
}

/** A bind group of `resources` (binding i = resources[i]) for group 0 of `pipeline`. */
export function bindGroup(
  device: GPUDevice,
  label: string,
  pipeline: GPUComputePipeline,
  resources: Array<GPUBuffer | BufferSlice>,
): GPUBindGroup {
  return device.createBindGroup({
    label,
    layout: pipeline.getBindGroupLayout(0),
    entries: entries(resources),
  });
}

/** Bytes a buffer or slice spans. */
export function sliceBytes(s: GPUBuffer | BufferSlice): number {
  if (s instanceof GPUBuffer) return s.size;
  return s.size ?? s.buffer.size - (s.offset ?? 0);
}

/** Throws a `RangeError` unless `s` holds `floats` f32 values. */
export function checkFits(
  name: string,
  s: GPUBuffer | BufferSlice,
  floats: number,
  action: string,
) {
  const bytes = sliceBytes(s);
  if (bytes < floats * 4) {
    throw new RangeError(
      `Cannot ${action} as '${name}' must hold ${floats} f32 values (${
        floats * 4
      } bytes): received ${bytes} bytes`,
    );
  }
}

/**
 * Records `plans` into one compute pass of `encoder`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { recordPlans } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const enc = gpu.device.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [], "nothing");
 * gpu.device.queue.submit([enc.finish()]);
 * ```
 */
export function recordPlans(
  encoder: GPUCommandEncoder,
  plans: readonly KernelPlan[],
  label: string,
): void {
  const pass = encoder.beginComputePass({ label });
  for (const p of plans) p.record(pass);
  pass.end();
}
