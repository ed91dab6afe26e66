// WebGPU calls per key (a policy's turn, say): buffer copies, queue writes,
// submits and bind groups counted, and the host time of
// GPUCommandEncoder.finish, where wgpu turns the recorded passes and copies
// into commands. A diagnostic for scripts/profile.ts: it patches the WebGPU
// prototypes of this process while installed (the library never does), and
// counts only while `current` names a key.

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

/** Counts WebGPU calls by key until disposed. */
export interface CallCounter extends Disposable {
  /** The key calls count for now; null counts nothing. */
  current: string | null;
  /** Totals per key. */
  totals(): Map<string, CallTotals>;
}

/** Starts counting the WebGPU calls of this process. */
export function installCallCounter(): CallCounter {
  const proto = {
    copy: GPUCommandEncoder.prototype.copyBufferToBuffer,
    finish: GPUCommandEncoder.prototype.finish,
    write: GPUQueue.prototype.writeBuffer,
    submit: GPUQueue.prototype.submit,
    bindGroup: GPUDevice.prototype.createBindGroup,
  };
  const totals = new Map<string, CallTotals>();
  const counter: CallCounter = {
    current: null,
    totals: () => new Map(totals),
    [Symbol.dispose]() {
      GPUCommandEncoder.prototype.copyBufferToBuffer = proto.copy;
      GPUCommandEncoder.prototype.finish = proto.finish;
      GPUQueue.prototype.writeBuffer = proto.write;
      GPUQueue.prototype.submit = proto.submit;
      GPUDevice.prototype.createBindGroup = proto.bindGroup;
    },
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
  // Arguments pass through untouched: the overloads differ by count.
  GPUCommandEncoder.prototype.copyBufferToBuffer = function (
    this: GPUCommandEncoder,
    ...args: unknown[]
  ) {
    const t = entry();
    if (t) t.copies++;
    return (proto.copy as (...a: unknown[]) => void).apply(this, args);
  } as typeof proto.copy;
  GPUQueue.prototype.writeBuffer = function (this: GPUQueue, ...args: unknown[]) {
    const t = entry();
    if (t) t.writes++;
    return (proto.write as (...a: unknown[]) => void).apply(this, args);
  } as typeof proto.write;
  GPUQueue.prototype.submit = function (buffers) {
    const t = entry();
    if (t) t.submits++;
    return proto.submit.call(this, buffers);
  };
  GPUDevice.prototype.createBindGroup = function (descriptor) {
    const t = entry();
    if (t) t.bindGroups++;
    return proto.bindGroup.call(this, descriptor);
  };
  GPUCommandEncoder.prototype.finish = function (descriptor) {
    const t = entry();
    const t0 = performance.now();
    try {
      return proto.finish.call(this, descriptor);
    } finally {
      if (t) t.finishMs += performance.now() - t0;
    }
  };
  return counter;
}
