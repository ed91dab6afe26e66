/**
 * Row-wise and element-wise model kernels: RMSNorm, RoPE, SwiGLU and the
 * residual add.
 *
 * @module
 */

import rmsnormSrc from "../../shaders/rmsnorm.wgsl" with { type: "text" };
import ropeSrc from "../../shaders/rope.wgsl" with { type: "text" };
import swigluSrc from "../../shaders/swiglu.wgsl" with { type: "text" };
import residualAddSrc from "../../shaders/residual_add.wgsl" with { type: "text" };
import type { BufferSlice } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { assertFinite, assertInteger, assertOneOf } from "../gpu/errors.ts";
import type { RopeStyle } from "./types.ts";
import { bindGroup, checkFits, grid, type KernelPlan, makePlan, uniform } from "./kernels_plan.ts";

/**
 * The RoPE inverse frequencies `theta^(-2i/d)` for `i < d/2`, computed in f64.
 *
 * @example
 * ```ts
 * import { ropeInvFreq } from "./kernels.ts";
 * console.log(ropeInvFreq(4, 10000)); // Float32Array [1, 0.01]
 * ```
 */
export function ropeInvFreq(headDim: number, theta: number): Float32Array {
  assertInteger("headDim", headDim, "compute RoPE frequencies", 2);
  assertFinite("theta", theta, "compute RoPE frequencies");
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < out.length; i++) out[i] = Math.pow(theta, -(2 * i) / headDim);
  return out;
}

/** Options of {@linkcode planRmsNorm}. */
export interface RmsNormPlanOptions {
  /** f32 `[rows, dim]`. */
  input: GPUBuffer | BufferSlice;
  /** f32 `[dim]` gain. */
  weight: GPUBuffer;
  /** f32 `[rows, dim]` (a different buffer from `input`). */
  output: GPUBuffer | BufferSlice;
  /** Rows to normalise. */
  rows: number;
  /** Row length. */
  dim: number;
  /** Added to the mean square. */
  eps: number;
}

/**
 * Plans RMSNorm of each row: `out = weight * x / sqrt(mean(x^2) + eps)`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planRmsNorm, recordPlans } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const input = createBuffer(d, "x", S, new Float32Array([3, 4]));
 * const weight = createBuffer(d, "w", S, new Float32Array([1, 2]));
 * const output = createBuffer(d, "y", S | GPUBufferUsage.COPY_SRC, 8);
 * using plan = planRmsNorm(d, { input, weight, output, rows: 1, dim: 2, eps: 0 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, output))); // ≈ [0.8485, 2.2627]
 * ```
 */
export function planRmsNorm(device: GPUDevice, options: RmsNormPlanOptions): KernelPlan {
  const action = "plan an RMSNorm";
  const { rows, dim, eps } = options;
  assertInteger("rows", rows, action, 1);
  assertInteger("dim", dim, action, 1);
  assertFinite("eps", eps, action);
  checkFits("input", options.input, rows * dim, action);
  checkFits("output", options.output, rows * dim, action);
  checkFits("weight", options.weight, dim, action);
  const pipeline = cachedPipeline(device, "rmsnorm", rmsnormSrc);
  const u = uniform(device, "rmsnorm", [rows, dim, { f32: eps }]);
  return makePlan("rmsnorm", [{
    pipeline,
    bindGroup: bindGroup(device, "rmsnorm", pipeline, [
      u,
      options.input,
      options.weight,
      options.output,
    ]),
    workgroups: grid(rows, action),
  }], [u]);
}

/** Options of {@linkcode planRope}. */
export interface RopePlanOptions {
  /** f32 `[rows, heads, headDim]`, rotated in place. */
  data: GPUBuffer | BufferSlice;
  /** Rows (tokens). */
  rows: number;
  /** Heads per row. */
  heads: number;
  /** Per-head size (even). */
  headDim: number;
  /** Pairing of the rotated elements. */
  style: RopeStyle;
  /** f32 `[headDim / 2]` inverse frequencies ({@linkcode ropeInvFreq}). */
  invFreq: GPUBuffer;
  /** Uniform from {@linkcode createSeqUniform}: position of row 0. */
  seq: GPUBuffer;
}

/**
 * Plans RoPE in place; row `r` sits at position `seq.start + r`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createSeqUniform, planRope, recordPlans, ropeInvFreq } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const data = createBuffer(d, "q", S | GPUBufferUsage.COPY_SRC, new Float32Array([1, 0]));
 * const invFreq = createBuffer(d, "f", S, ropeInvFreq(2, 10000));
 * const seq = createSeqUniform(d, "seq", 1);
 * using plan = planRope(d, { data, rows: 1, heads: 1, headDim: 2, style: "adjacent", invFreq, seq });
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, data))); // ≈ [cos 1, sin 1]
 * ```
 */
export function planRope(device: GPUDevice, options: RopePlanOptions): KernelPlan {
  const action = "plan RoPE";
  const { rows, heads, headDim } = options;
  assertInteger("rows", rows, action, 1);
  assertInteger("heads", heads, action, 1);
  assertInteger("headDim", headDim, action, 2);
  if (headDim % 2 !== 0) {
    throw new RangeError(`Cannot ${action} as 'headDim' must be even: received ${headDim}`);
  }
  assertOneOf("style", options.style, ["adjacent", "half"] as const, action);
  checkFits("data", options.data, rows * heads * headDim, action);
  checkFits("invFreq", options.invFreq, headDim / 2, action);
  const pipeline = cachedPipeline(device, "rope", ropeSrc, {
    ADJACENT: options.style === "adjacent" ? 1 : 0,
  });
  const u = uniform(device, "rope", [rows, heads, headDim]);
  return makePlan("rope", [{
    pipeline,
    bindGroup: bindGroup(device, "rope", pipeline, [u, options.seq, options.invFreq, options.data]),
    workgroups: grid(Math.ceil(rows * heads * headDim / 2 / 64), action),
  }], [u]);
}

/** Options of {@linkcode planSwiglu}. */
export interface SwigluPlanOptions {
  /** f32 gate projections; overwritten with the result. */
  gate: GPUBuffer | BufferSlice;
  /** f32 up projections. */
  up: GPUBuffer | BufferSlice;
  /** Elements. */
  n: number;
}

/**
 * Plans the SwiGLU gate in place: `gate = silu(gate) * up`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planSwiglu, recordPlans } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const gate = createBuffer(d, "g", S | GPUBufferUsage.COPY_SRC, new Float32Array([0, 1]));
 * const up = createBuffer(d, "u", S, new Float32Array([5, 2]));
 * using plan = planSwiglu(d, { gate, up, n: 2 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, gate))); // ≈ [0, 1.4621]
 * ```
 */
export function planSwiglu(device: GPUDevice, options: SwigluPlanOptions): KernelPlan {
  return planInPlace(device, "swiglu", swigluSrc, ["gate", options.gate], ["up", options.up], {
    n: options.n,
    action: "plan SwiGLU",
  });
}

/** An element-wise kernel `a = f(a, b)` over `n` f32 values (SwiGLU, residual add). */
function planInPlace(
  device: GPUDevice,
  name: string,
  source: string,
  [aName, a]: [string, GPUBuffer | BufferSlice],
  [bName, b]: [string, GPUBuffer | BufferSlice],
  { n, action }: { n: number; action: string },
): KernelPlan {
  assertInteger("n", n, action, 1);
  checkFits(aName, a, n, action);
  checkFits(bName, b, n, action);
  const pipeline = cachedPipeline(device, name, source);
  const u = uniform(device, name, [n]);
  return makePlan(name, [{
    pipeline,
    bindGroup: bindGroup(device, name, pipeline, [u, a, b]),
    workgroups: grid(Math.ceil(n / 64), action),
  }], [u]);
}

/** Options of {@linkcode planResidualAdd}. */
export interface ResidualAddPlanOptions {
  /** f32 residual stream; `target += addend`. */
  target: GPUBuffer | BufferSlice;
  /** f32 values to add. */
  addend: GPUBuffer | BufferSlice;
  /** Elements. */
  n: number;
}

/**
 * Plans the residual connection `target += addend`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { planResidualAdd, recordPlans } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const d = gpu.device, S = GPUBufferUsage.STORAGE;
 * const target = createBuffer(d, "x", S | GPUBufferUsage.COPY_SRC, new Float32Array([1, 2]));
 * const addend = createBuffer(d, "y", S, new Float32Array([10, 20]));
 * using plan = planResidualAdd(d, { target, addend, n: 2 });
 * const enc = d.createCommandEncoder({ label: "example" });
 * recordPlans(enc, [plan], "example");
 * d.queue.submit([enc.finish()]);
 * console.log(new Float32Array(await readBuffer(d, target))); // Float32Array [11, 22]
 * ```
 */
export function planResidualAdd(device: GPUDevice, options: ResidualAddPlanOptions): KernelPlan {
  return planInPlace(
    device,
    "residual_add",
    residualAddSrc,
    ["target", options.target],
    ["addend", options.addend],
    { n: options.n, action: "plan a residual add" },
  );
}
