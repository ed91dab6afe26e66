/**
 * The kernel contract as types: a kernel from `createX(device, shape)` makes
 * plans; a plan owns its uniforms and job tables, is re-planned with
 * `update` and records into the caller's encoder with `encode`. Each kernel
 * module names its own interfaces on top of these.
 *
 * @module
 */

import type { KernelEncodeOptions } from "../gpu/timing.ts";

/** A kernel for one shape: validates steps into plans of its own. */
export interface GpuKernel<Options, Step, Plan> {
  /** The shape options, with defaults filled in. */
  readonly options: Readonly<Options>;
  /**
   * Validates `step` on the CPU and uploads it into a new plan; throws
   * `TypeError`/`RangeError` before any GPU work.
   */
  plan(step: Step): Plan;
  /** Marks the kernel unusable; it owns no buffers (plans do). */
  [Symbol.dispose](): void;
}

/** A planned step of a {@linkcode GpuKernel}; owns its GPU buffers. */
export interface GpuKernelPlan<Step, Buffers> {
  /**
   * Replaces the step (a failed update keeps the old one); written with
   * `queue.writeBuffer`, so submit the work encoded under the old step first.
   */
  update(step: Step): void;
  /** Checks `buffers` against the step and records the work into `encoder`. */
  encode(encoder: GPUCommandEncoder, buffers: Buffers, options?: KernelEncodeOptions): void;
  /** Destroys the plan's buffers (not the caller's). */
  [Symbol.dispose](): void;
}
