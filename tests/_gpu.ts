import assert from "node:assert/strict";
// Shared test device. Without an adapter GPU tests are skipped, unless
// FREEKV_REQUIRE_GPU=1, where a missing adapter fails the run.
import { type Gpu, requestGpu } from "../lib/gpu/device.ts";

const required = Deno.env.get("FREEKV_REQUIRE_GPU") === "1";

async function tryGpu(): Promise<Gpu | null> {
  try {
    return await requestGpu();
  } catch (error) {
    if (required) throw error;
    console.warn(`GPU tests skipped: ${(error as Error).message}`);
    return null;
  }
}

/** The shared test GPU, or null when none exists and none is required. */
export const testGpu: Gpu | null = await tryGpu();

// WebGPU validation errors are otherwise silent: the bad command buffer is
// just dropped. Every GPU test fails if one happened while it ran.
const uncaptured: string[] = [];
testGpu?.device.addEventListener("uncapturederror", (event) => {
  uncaptured.push((event as GPUUncapturedErrorEvent).error.message);
});

/** Registers a test that needs the GPU; skipped when there is none. */
export function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void> | void): void {
  Deno.test({
    name,
    ignore: testGpu === null,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      uncaptured.length = 0;
      await fn(testGpu!);
      await testGpu!.device.queue.onSubmittedWorkDone();
      if (uncaptured.length) {
        throw new Error(`WebGPU validation errors during the test:\n${uncaptured.join("\n")}`);
      }
    },
  });
}

/** Runs `fn` and fails on any GPU validation or internal error it caused. */
export async function noGpuErrors<T>(device: GPUDevice, fn: () => Promise<T>): Promise<T> {
  device.pushErrorScope("validation");
  device.pushErrorScope("internal");
  let result: T;
  try {
    result = await fn();
  } finally {
    const internal = await device.popErrorScope();
    const validation = await device.popErrorScope();
    assert.equal(internal?.message, undefined);
    assert.equal(validation?.message, undefined);
  }
  return result;
}

/** Counts calls of one method until disposed. */
export interface CallCounter extends Disposable {
  /** Calls since the counter was made. */
  readonly count: number;
}

/**
 * Counts the calls of `target[method]` from now on: the method is wrapped
 * on `target` (an instance, or a prototype to count every instance's
 * calls), and disposing the counter puts back what was there.
 */
export function countCalls<T extends object, K extends keyof T & string>(
  target: T,
  method: K,
): CallCounter {
  let count = 0;
  const own = Object.getOwnPropertyDescriptor(target, method);
  const original = target[method] as (...args: unknown[]) => unknown;
  // `this`, not `target`: a prototype's method counts the calls of every instance.
  (target as Record<string, unknown>)[method] = function (this: unknown, ...args: unknown[]) {
    count++;
    return original.apply(this, args);
  };
  return {
    get count() {
      return count;
    },
    [Symbol.dispose]() {
      if (own) Object.defineProperty(target, method, own);
      else delete (target as Record<string, unknown>)[method];
    },
  };
}

/**
 * Counts the pipelines `device` compiles from now on (pair it with
 * `forgetPipelines`, so that pipelines compiled by earlier work cannot hide
 * one that the code under test leaves to its first use).
 */
export function countCompiles(device: GPUDevice): CallCounter {
  return countCalls(device, "createComputePipeline");
}
