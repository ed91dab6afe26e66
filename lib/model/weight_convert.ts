/**
 * Conversions between the weight storage types `f32`, `f16` and `bf16`
 * (16-bit types kept as raw bits in a `Uint16Array`, as in {@linkcode Tensor}).
 *
 * @module
 */

import type { Tensor, WeightDtype } from "./types.ts";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * Rounds an f32 value to bf16 bits (round to nearest, ties to even; NaN stays NaN).
 *
 * @example
 * ```ts
 * import { bf16BitsFromFloat, bf16BitsToFloat } from "./weight_convert.ts";
 * console.log(bf16BitsToFloat(bf16BitsFromFloat(1.5))); // 1.5
 * ```
 */
export function bf16BitsFromFloat(value: number): number {
  f32[0] = value;
  const bits = u32[0];
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) {
    return ((bits >>> 16) | 0x0040) & 0xffff;
  }
  const rounded = bits + 0x7fff + ((bits >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/**
 * The value of bf16 bits.
 *
 * @example
 * ```ts
 * import { bf16BitsToFloat } from "./weight_convert.ts";
 * console.log(bf16BitsToFloat(0x3fc0)); // 1.5
 * ```
 */
export function bf16BitsToFloat(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

/**
 * The values of a tensor as f32 (decoding f16/bf16 bits).
 *
 * @example
 * ```ts
 * import { tensorToFloat32 } from "./weight_convert.ts";
 * const t = { dtype: "bf16" as const, shape: [2], data: new Uint16Array([0x3f80, 0xc000]) };
 * console.log(tensorToFloat32(t)); // Float32Array [1, -2]
 * ```
 */
export function tensorToFloat32(tensor: Tensor): Float32Array {
  const { dtype, data } = tensor;
  if (dtype === "f32") return data as Float32Array;
  const bits = data as Uint16Array;
  if (dtype === "f16") {
    return Float32Array.from(new Float16Array(bits.buffer, bits.byteOffset, bits.length));
  }
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = bits[i] << 16;
  return out;
}

/**
 * Converts a tensor to another storage type (rounding to nearest when
 * narrowing); returns the tensor itself when it already has that type.
 *
 * @example
 * ```ts
 * import { convertTensor } from "./weight_convert.ts";
 * const t = convertTensor({ dtype: "f32", shape: [1], data: new Float32Array([0.1]) }, "f16");
 * console.log(t.dtype, t.data instanceof Uint16Array); // f16 true
 * ```
 */
export function convertTensor(tensor: Tensor, dtype: WeightDtype): Tensor {
  if (tensor.dtype === dtype) return tensor;
  const values = tensorToFloat32(tensor);
  let data: Float32Array | Uint16Array;
  if (dtype === "f32") data = values;
  else if (dtype === "f16") {
    const half = Float16Array.from(values);
    data = new Uint16Array(half.buffer, half.byteOffset, half.length);
  } else {
    data = new Uint16Array(values.length);
    for (let i = 0; i < values.length; i++) data[i] = bf16BitsFromFloat(values[i]);
  }
  return { dtype, shape: tensor.shape.slice(), data };
}
