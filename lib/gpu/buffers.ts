/**
 * Small WebGPU helpers: per-device pipeline cache, labelled buffers, reads.
 *
 * @module
 */

const pipelineCaches = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/**
 * Returns the compute pipeline cached under `key` for `device`, creating it
 * from `code` (entry point `main`) and `constants` on first use.
 *
 * @example
 * ```ts ignore
 * import { cachedPipeline } from "./buffers.ts";
 * const p = cachedPipeline(device, "fill", "@compute @workgroup_size(1) fn main() {}");
 * ```
 */
export function cachedPipeline(
  device: GPUDevice,
  key: string,
  code: string,
  constants: Record<string, number> = {},
): GPUComputePipeline {
  let cache = pipelineCaches.get(device);
  if (!cache) pipelineCaches.set(device, cache = new Map());
  const fullKey = `${key}|${JSON.stringify(constants)}`;
  let pipeline = cache.get(fullKey);
  if (!pipeline) {
    const module = device.createShaderModule({ label: `freekv ${key}`, code });
    pipeline = device.createComputePipeline({
      label: `freekv ${key}`,
      layout: "auto",
      compute: { module, entryPoint: "main", constants },
    });
    cache.set(fullKey, pipeline);
  }
  return pipeline;
}

/**
 * Creates a labelled buffer, optionally initialised with `data` (padded to a
 * multiple of 4 bytes).
 *
 * @example
 * ```ts ignore
 * import { createBuffer } from "./buffers.ts";
 * const b = createBuffer(device, "q", GPUBufferUsage.STORAGE, new Float32Array(8));
 * ```
 */
export function createBuffer(
  device: GPUDevice,
  label: string,
  usage: GPUBufferUsageFlags,
  data?: ArrayBufferView | number,
): GPUBuffer {
  if (typeof data === "number" || data === undefined) {
    const size = Math.max(4, Math.ceil((data ?? 4) / 4) * 4);
    return device.createBuffer({ label, size, usage });
  }
  const size = Math.max(4, Math.ceil(data.byteLength / 4) * 4);
  const buffer = device.createBuffer({ label, size, usage, mappedAtCreation: true });
  new Uint8Array(buffer.getMappedRange()).set(
    new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  );
  buffer.unmap();
  return buffer;
}

/**
 * Copies `byteLength` bytes of `source` (from `offset`) to a fresh mappable
 * buffer and returns them once the GPU is done.
 *
 * @example
 * ```ts ignore
 * import { readBuffer } from "./buffers.ts";
 * const bytes = await readBuffer(device, out, 64);
 * const values = new Float32Array(bytes);
 * ```
 */
export async function readBuffer(
  device: GPUDevice,
  source: GPUBuffer,
  byteLength: number = source.size,
  offset = 0,
): Promise<ArrayBuffer> {
  const size = Math.ceil(byteLength / 4) * 4;
  const staging = device.createBuffer({
    label: `freekv readback of ${source.label}`,
    size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    const encoder = device.createCommandEncoder({ label: "freekv readback" });
    encoder.copyBufferToBuffer(source, offset, staging, 0, size);
    device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    return staging.getMappedRange().slice(0, byteLength);
  } finally {
    staging.destroy();
  }
}

/** A uniform buffer writer: packs u32/i32/f32 fields at 4-byte slots. */
export function packUniforms(
  values: Array<number | { f32: number } | { i32: number }>,
): ArrayBuffer {
  const n = Math.max(4, Math.ceil(values.length / 4) * 4);
  const buf = new ArrayBuffer(n * 4);
  const u = new Uint32Array(buf), f = new Float32Array(buf), i = new Int32Array(buf);
  values.forEach((v, k) => {
    if (typeof v === "number") u[k] = v;
    else if ("f32" in v) f[k] = v.f32;
    else i[k] = v.i32;
  });
  return buf;
}
