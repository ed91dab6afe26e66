/**
 * Getting a WebGPU device for freekv: the caller owns it and passes it to
 * every other function.
 *
 * @module
 */

import { watchDevice } from "./errors.ts";

export { DeviceLostError, isDeviceLost } from "./errors.ts";

/** Options of {@linkcode requestGpu}. */
export interface RequestGpuOptions {
  /** Ask for `shader-f16` when the adapter has it (default true). */
  f16?: boolean;
  /** Ask for `timestamp-query` when the adapter has it (default true). */
  timestamps?: boolean;
  /** Adapter power preference. */
  powerPreference?: GPUPowerPreference;
  /**
   * Called when the device is lost for any reason other than `destroy()`.
   * Default: print the reason on stderr.
   */
  onLost?: (info: GPUDeviceLostInfo) => void;
}

/** What {@linkcode requestGpu} got. */
export interface Gpu {
  /** The adapter the device came from. */
  adapter: GPUAdapter;
  /** The device; destroy it (or `using` the Gpu) when done. */
  device: GPUDevice;
  /** Whether `shader-f16` is enabled on the device. */
  f16: boolean;
  /** Whether `timestamp-query` is enabled on the device. */
  timestamps: boolean;
  /** Adapter description, for reports. */
  description: string;
  /** Resolves when the device is lost (also after `destroy()`). */
  lost: Promise<GPUDeviceLostInfo>;
  /** Destroys the device. */
  [Symbol.dispose](): void;
}

/**
 * Thrown by {@linkcode requestGpu} when no WebGPU adapter exists.
 *
 * @example
 * ```ts
 * import { NoAdapterError, requestGpu } from "./device.ts";
 * try {
 *   using gpu = await requestGpu();
 *   console.log(gpu.description);
 * } catch (error) {
 *   if (!(error instanceof NoAdapterError)) throw error;
 *   console.log("no WebGPU here:", error.message);
 * }
 * ```
 */
export class NoAdapterError extends Error {
  /** Creates the error with advice on how to get an adapter. */
  constructor() {
    super(
      "No WebGPU adapter found. On Linux without a GPU install Mesa's software " +
        "drivers (`apt-get install -y mesa-vulkan-drivers`); elsewhere use a machine " +
        "whose GPU has Vulkan, Metal or D3D12 drivers.",
    );
    this.name = "NoAdapterError";
  }
}

/**
 * Requests an adapter and a device with the storage-buffer limits raised to
 * what the adapter allows, `shader-f16` and `timestamp-query` enabled where
 * present and asked for.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * using gpu = await requestGpu();
 * console.log(gpu.description, gpu.f16); // for example: llvmpipe (LLVM 15.0.6, 256 bits) true
 * ```
 */
export async function requestGpu(options: RequestGpuOptions = {}): Promise<Gpu> {
  if (typeof navigator === "undefined" || !("gpu" in navigator)) throw new NoAdapterError();
  const adapter = await navigator.gpu.requestAdapter({
    powerPreference: options.powerPreference,
  });
  if (!adapter) throw new NoAdapterError();
  const wantF16 = options.f16 ?? true;
  const wantTimestamps = options.timestamps ?? true;
  const features: GPUFeatureName[] = [];
  if (wantF16 && adapter.features.has("shader-f16")) features.push("shader-f16");
  if (wantTimestamps && adapter.features.has("timestamp-query")) features.push("timestamp-query");
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    label: "freekv device",
    requiredFeatures: features,
    requiredLimits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    },
  });
  watchDevice(device);
  const onLost = options.onLost ??
    ((info: GPUDeviceLostInfo) => console.error(`freekv: GPU device lost: ${info.message}`));
  const lost = device.lost.then((info) => {
    if (info.reason !== "destroyed") onLost(info);
    return info;
  });
  const info = adapter.info;
  return {
    adapter,
    device,
    f16: device.features.has("shader-f16"),
    timestamps: device.features.has("timestamp-query"),
    description: info.description || `${info.vendor} ${info.architecture} ${info.device}`.trim(),
    lost,
    [Symbol.dispose]: () => device.destroy(),
  };
}
