/**
 * Weights on the GPU: matrices in row blocks that each fit one binding
 * (f32, f16 or bf16 words), vectors, and the pipelines that read them.
 *
 * @module
 */

import weightLoadSrc from "../../shaders/weight_load.wgsl" with { type: "text" };
import { createBuffer } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { assertInteger, assertOneOf } from "../gpu/errors.ts";
import type { Tensor, WeightDtype } from "./types.ts";
import { convertTensor } from "./weight_convert.ts";

export interface GpuMatrixPart {
  /** Rows `rowStart .. rowStart + rows` of the matrix, row-major, packed words. */
  buffer: GPUBuffer;
  /** First row of the matrix held by this part. */
  rowStart: number;
  /** Rows held. */
  rows: number;
}

/** A `[rows, cols]` weight matrix on the GPU, split into row blocks that each fit one binding. */
export interface GpuMatrix {
  /** Storage type on the GPU (16-bit types two per 32-bit word, low half first). */
  readonly dtype: WeightDtype;
  /** Output features. */
  readonly rows: number;
  /** Input features. */
  readonly cols: number;
  /** Row blocks, in order. */
  readonly parts: readonly GpuMatrixPart[];
  /** Bytes on the GPU. */
  readonly byteLength: number;
  /** Destroys the part buffers. */
  [Symbol.dispose](): void;
}

/** Options of {@linkcode uploadMatrix}. */
export interface UploadMatrixOptions {
  /** Store as this type (converting on the host); default: the tensor's own type. */
  dtype?: WeightDtype;
  /** Label prefix of the buffers. */
  label?: string;
  /** Largest part in bytes; default: the device's `maxStorageBufferBindingSize` (and `maxBufferSize`). */
  maxPartBytes?: number;
}

const WEIGHT_DTYPES: readonly WeightDtype[] = ["f32", "f16", "bf16"];
const DTYPE_CODE: Record<WeightDtype, number> = { f32: 0, f16: 1, bf16: 2 };

/**
 * Uploads a `[rows, cols]` tensor as a {@linkcode GpuMatrix}, split into
 * row blocks no larger than one storage binding.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { uploadMatrix } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const t = { dtype: "f32" as const, shape: [3, 2], data: new Float32Array(6) };
 * using m = uploadMatrix(gpu.device, t, { dtype: "bf16" });
 * console.log(m.parts.length, m.byteLength); // 1 12
 * ```
 */
export function uploadMatrix(
  device: GPUDevice,
  tensor: Tensor,
  options: UploadMatrixOptions = {},
): GpuMatrix {
  const action = "upload a weight matrix";
  const dtype = options.dtype ?? tensor.dtype;
  assertOneOf("dtype", dtype, WEIGHT_DTYPES, action);
  if (tensor.shape.length !== 2) {
    throw new RangeError(
      `Cannot ${action} as 'tensor.shape' must have 2 dimensions: received [${tensor.shape}]`,
    );
  }
  const [rows, cols] = tensor.shape;
  assertInteger("rows", rows, action, 1);
  assertInteger("cols", cols, action, 1);
  if (tensor.data.length !== rows * cols) {
    throw new RangeError(
      `Cannot ${action} as 'tensor.data' must hold ${
        rows * cols
      } elements: received ${tensor.data.length}`,
    );
  }
  const limit = Math.min(
    options.maxPartBytes ?? Infinity,
    device.limits.maxStorageBufferBindingSize,
    device.limits.maxBufferSize,
  );
  const bytesPer = dtype === "f32" ? 4 : 2;
  // Each part is its own buffer, so 16-bit parts always start on a word.
  const rowBytes = cols * bytesPer;
  const partRows = Math.floor((limit - 4) / rowBytes);
  if (partRows < 1) {
    throw new RangeError(
      `Cannot ${action} as one row (${rowBytes} bytes) must fit a storage binding of ${limit} bytes: received cols ${cols}`,
    );
  }
  const data = convertTensor(tensor, dtype).data;
  const label = options.label ?? "weight";
  const parts: GpuMatrixPart[] = [];
  let byteLength = 0;
  for (let rowStart = 0; rowStart < rows; rowStart += partRows) {
    const n = Math.min(partRows, rows - rowStart);
    const view = data.subarray(rowStart * cols, (rowStart + n) * cols);
    const buffer = createBuffer(
      device,
      parts.length === 0 && n === rows ? label : `${label} rows ${rowStart}..${rowStart + n}`,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      view,
    );
    byteLength += buffer.size;
    parts.push({ buffer, rowStart, rows: n });
  }
  return {
    dtype,
    rows,
    cols,
    parts,
    byteLength,
    [Symbol.dispose]() {
      for (const p of parts) p.buffer.destroy();
    },
  };
}

/**
 * Uploads a vector (a norm weight or a bias) as an f32 storage buffer.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { uploadVector } from "./kernels.ts";
 * using gpu = await requestGpu();
 * const b = uploadVector(gpu.device, { dtype: "f32", shape: [4], data: new Float32Array(4) }, "norm");
 * console.log(b.size); // 16
 * b.destroy();
 * ```
 */
export function uploadVector(device: GPUDevice, tensor: Tensor, label: string): GPUBuffer {
  return createBuffer(
    device,
    label,
    GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    convertTensor(tensor, "f32").data,
  );
}

const dummyBias = new WeakMap<GPUDevice, GPUBuffer>();
/** A 16-byte placeholder bound where a projection has no bias. */
export function noBias(device: GPUDevice): GPUBuffer {
  let b = dummyBias.get(device);
  if (!b) {
    b = createBuffer(device, "freekv no-bias placeholder", GPUBufferUsage.STORAGE, 16);
    dummyBias.set(device, b);
  }
  return b;
}

/** The pipeline of a kernel that reads weights of `dtype` (through weight_load.wgsl). */
export function weightPipeline(
  device: GPUDevice,
  name: string,
  src: string,
  dtype: WeightDtype,
  hasBias?: boolean,
  extra: Record<string, number> = {},
): GPUComputePipeline {
  const constants: Record<string, number> = { WDTYPE: DTYPE_CODE[dtype], ...extra };
  if (hasBias !== undefined) constants.HAS_BIAS = hasBias ? 1 : 0;
  return cachedPipeline(device, name, weightLoadSrc + "\n" + src, constants);
}
