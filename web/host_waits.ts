/**
 * Counting and timing host waits (GPU-to-JS answers) from outside the
 * library, in a browser or in Deno.
 *
 * A host wait is an answer from the GPU process that JavaScript awaits:
 * `GPUBuffer.mapAsync` or `GPUQueue.onSubmittedWorkDone`. The library does
 * not count them, so this module wraps both methods on their prototypes (once)
 * and attributes each answer to the tracked call that asked for it.
 *
 * @module
 */

interface Tracker {
  start: number;
  asked: number;
  /** [asked, settled] times of the answers that settled while the call ran. */
  waited: [number, number][];
  /** False once the tracked call returned. */
  open: boolean;
}

let current: Tracker | null = null;
let installed = false;

/** Wraps `mapAsync` and `onSubmittedWorkDone` so that {@linkcode trackHostWaits} sees them. */
function install(): void {
  if (installed) return;
  installed = true;
  const wrap = <T extends object>(proto: T, name: keyof T) => {
    const original = proto[name] as unknown as (...args: unknown[]) => Promise<unknown>;
    Object.defineProperty(proto, name, {
      configurable: true,
      writable: true,
      value: function (this: unknown, ...args: unknown[]) {
        const answer = original.apply(this, args);
        const askedAt = performance.now();
        if (current) current.asked++;
        // An answer that settles while a tracked call runs, whoever asked for
        // it, was waited for: the call had yielded to the event loop.
        return answer.then((x) => {
          const tracker = current;
          if (tracker?.open) {
            tracker.waited.push([Math.max(askedAt, tracker.start), performance.now()]);
          }
          return x;
        });
      },
    });
  };
  wrap(GPUBuffer.prototype, "mapAsync");
  wrap(GPUQueue.prototype, "onSubmittedWorkDone");
}

/** What {@linkcode trackHostWaits} counted. */
export interface HostWaitCount<T> {
  /** What `fn` returned. */
  result: T;
  /**
   * Host waits: GPU-to-JS answers that came back while `fn` ran, answers in
   * flight at the same time counted once (awaited together they cost one
   * wait).
   */
  waits: number;
  /** Answers that came back while `fn` ran, each counted. */
  answersWaited: number;
  /** GPU-to-JS answers that `fn` asked for, waited for or left running in the background. */
  asked: number;
}

/**
 * Runs `fn` and counts the GPU-to-JS answers that came back while it ran
 * (whoever asked for them: an answer asked for by an earlier call and
 * awaited now counts). JavaScript only sees an answer when it yields to the
 * event loop, so these are the answers `fn` waited for; an answer that `fn`
 * starts and leaves running (a speculative read) is asked, not waited.
 * Calls must not overlap, and nothing else should run meanwhile.
 *
 * @example
 * ```ts ignore
 * const { waits } = await trackHostWaits(() => engine.step(0, inputs));
 * ```
 */
export async function trackHostWaits<T>(fn: () => Promise<T>): Promise<HostWaitCount<T>> {
  install();
  if (current) throw new Error("Cannot track host waits as another tracked call is running");
  const tracker: Tracker = { start: performance.now(), waited: [], asked: 0, open: true };
  current = tracker;
  try {
    const result = await fn();
    return {
      result,
      waits: countOverlapping(tracker.waited),
      answersWaited: tracker.waited.length,
      asked: tracker.asked,
    };
  } finally {
    current = null;
    tracker.open = false;
  }
}

/** Number of groups of overlapping intervals. */
function countOverlapping(intervals: [number, number][]): number {
  const s = [...intervals].sort((a, b) => a[0] - b[0]);
  let groups = 0, end = -Infinity;
  for (const [a, b] of s) {
    if (a > end) groups++;
    end = Math.max(end, b);
  }
  return groups;
}

/** Median round trips of lone answers, in milliseconds. */
export interface HostWaitTimes {
  /** `copyBufferToBuffer` of 4 bytes, submit, `mapAsync(READ)`, read, `unmap`. */
  mapAsyncMs: number;
  /** `onSubmittedWorkDone` after an empty submit. */
  submittedWorkDoneMs: number;
  /** Round trips measured of each kind. */
  samples: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Measures the single host wait: a lone `mapAsync` round trip (copy 4 bytes
 * into a mappable buffer, submit, map, read) and a lone
 * `onSubmittedWorkDone`, each `samples` times after 3 warm-up rounds.
 */
export async function measureHostWait(device: GPUDevice, samples = 20): Promise<HostWaitTimes> {
  const src = device.createBuffer({
    label: "host-wait source",
    size: 256,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  });
  const dst = device.createBuffer({
    label: "host-wait readback",
    size: 256,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    const map: number[] = [], done: number[] = [];
    for (let i = 0; i < samples + 3; i++) {
      device.queue.writeBuffer(src, 0, new Uint32Array([i]));
      const t0 = performance.now();
      const enc = device.createCommandEncoder({ label: "host-wait copy" });
      enc.copyBufferToBuffer(src, 0, dst, 0, 4);
      device.queue.submit([enc.finish()]);
      await dst.mapAsync(GPUMapMode.READ, 0, 4);
      const got = new Uint32Array(dst.getMappedRange(0, 4))[0];
      dst.unmap();
      const t1 = performance.now();
      if (got !== i) throw new Error(`host-wait readback returned ${got}, expected ${i}`);
      device.queue.submit([]);
      await device.queue.onSubmittedWorkDone();
      const t2 = performance.now();
      if (i >= 3) {
        map.push(t1 - t0);
        done.push(t2 - t1);
      }
    }
    return { mapAsyncMs: median(map), submittedWorkDoneMs: median(done), samples };
  } finally {
    src.destroy();
    dst.destroy();
  }
}
