/**
 * The per-device compute pipeline cache: every kernel compiles its shader
 * once per device and set of override constants.
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
 * import { cachedPipeline } from "./pipelines.ts";
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
 * Forgets the pipelines cached for `device`, so that the next use of each
 * compiles it again: for measuring or testing what compiles when.
 *
 * @example
 * ```ts ignore
 * import { forgetPipelines } from "./pipelines.ts";
 * forgetPipelines(device);
 * ```
 */
export function forgetPipelines(device: GPUDevice): void {
  pipelineCaches.delete(device);
}
