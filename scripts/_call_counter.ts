// WebGPU calls per key (a policy's turn, say): buffer copies, queue writes,
// submits and bind groups counted, and the host time of
// GPUCommandEncoder.finish, where wgpu turns the recorded passes and copies
// into commands. A diagnostic for scripts/profile.ts: it patches the WebGPU
// prototypes of this process while installed (the library never does), and
// counts only while `current` names a key.

import { PrototypePatches } from "./_patches.ts";

/** Calls made while one key was current. */
export interface CallTotals {
  copies: number;
  writes: number;
  submits: number;
  bindGroups: number;
  /** Host milliseconds inside `GPUCommandEncoder.finish`. */
  finishMs: number;
}

/** Totals of a key that made no call. */
export function noCalls(): CallTotals {
  return { copies: 0, writes: 0, submits: 0, bindGroups: 0, finishMs: 0 };
}

/** `t` with every figure divided by `n` (per token, say). */
export function callsPer(t: CallTotals, n: number): CallTotals {
  const out = noCalls();
  for (const k of Object.keys(out) as (keyof CallTotals)[]) out[k] = t[k] / n;
  return out;
}

/** Counts WebGPU calls by key until disposed. */
export interface CallCounter extends Disposable {
  /** The key calls count for now; null counts nothing. */
  current: string | null;
  /** Totals per key. */
  totals(): Map<string, CallTotals>;
}

/** The counted calls of {@linkcode CallTotals}. */
type CountedCall = Exclude<keyof CallTotals, "finishMs">;

/** Starts counting the WebGPU calls of this process. */
export function installCallCounter(): CallCounter {
  const patches = new PrototypePatches();
  const totals = new Map<string, CallTotals>();
  const counter: CallCounter = {
    current: null,
    totals: () => new Map(totals),
    [Symbol.dispose]: () => patches[Symbol.dispose](),
  };
  const entry = (): CallTotals | null => {
    const key = counter.current;
    if (key === null) return null;
    let t = totals.get(key);
    if (!t) {
      t = noCalls();
      totals.set(key, t);
    }
    return t;
  };
  // Arguments pass through untouched: some methods' overloads differ by count.
  const count = <T extends object, K extends keyof T>(target: T, name: K, call: CountedCall) =>
    patches.patch(target, name, (original) =>
      function (this: unknown, ...args: unknown[]) {
        const t = entry();
        if (t) t[call]++;
        return (original as (...a: unknown[]) => unknown).apply(this, args);
      } as T[K]);
  count(GPUCommandEncoder.prototype, "copyBufferToBuffer", "copies");
  count(GPUQueue.prototype, "writeBuffer", "writes");
  count(GPUQueue.prototype, "submit", "submits");
  count(GPUDevice.prototype, "createBindGroup", "bindGroups");
  patches.patch(
    GPUCommandEncoder.prototype,
    "finish",
    (original) =>
      function (this: GPUCommandEncoder, descriptor?: GPUCommandBufferDescriptor) {
        const t = entry();
        const t0 = performance.now();
        try {
          return original.call(this, descriptor);
        } finally {
          if (t) t.finishMs += performance.now() - t0;
        }
      },
  );
  return counter;
}
