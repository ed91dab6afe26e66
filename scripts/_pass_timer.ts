// GPU time per compute pass, by pass label, for one device: every compute
// pass recorded on the device gets timestamp writes, every dispatch is
// counted. A diagnostic for scripts/profile.ts: it patches the WebGPU
// prototypes of this process while installed (the library never does), and
// a pass that asks for timestamps itself keeps its own and is not timed.

import { median } from "../lib/gpu/timing.ts";
import { PrototypePatches } from "./_patches.ts";

/** GPU time and counts of the passes of one label. */
export interface PassTotals {
  /** Nanoseconds between the pass's begin and end timestamps, summed. */
  ns: number;
  passes: number;
  dispatches: number;
}

/** GPU wall of the command buffers whose first pass has one label. */
export interface SpanTotals {
  /** Nanoseconds from the first pass's begin to the last pass's end, summed. */
  ns: number;
  commandBuffers: number;
}

/** GPU time between two passes of a command buffer (copies, barriers), by label pair. */
export interface GapTotals {
  /** Nanoseconds from the first pass's end to the second's begin, summed. */
  ns: number;
  count: number;
}

/** Times the compute passes of one device until disposed. */
export interface PassTimer extends Disposable {
  /** Reads back every timed pass so far (one host wait). */
  collect(): Promise<void>;
  /** Totals per pass label since the last `reset`, collected passes only. */
  totals(): Map<string, PassTotals>;
  /**
   * GPU wall per command buffer, from its first pass's begin to its last
   * pass's end (passes, and the copies and barriers between them), summed
   * by the label of its first pass.
   */
  spans(): Map<string, SpanTotals>;
  /** Gaps between consecutive passes, by `"<label> -> <label>"`. */
  gaps(): Map<string, GapTotals>;
  /** Forgets the totals (passes not yet collected are dropped too). */
  reset(): Promise<void>;
}

const QUERIES = 4096; // a query set's limit: 2048 passes per encoder
// A command buffer's passes are read back after this many submits, so
// that query sets and readback buffers stay few.
const COLLECT_EVERY = 64;

interface Recorded {
  labels: string[];
  dispatches: number[];
  querySet: GPUQuerySet;
}

/** Starts timing the compute passes of `device`. */
export function installPassTimer(device: GPUDevice): PassTimer {
  const encoders = new WeakMap<GPUCommandEncoder, Recorded>();
  const passes = new WeakMap<GPUComputePassEncoder, { rec: Recorded; index: number }>();
  const ready: { rec: Recorded; resolve: GPUBuffer; read: GPUBuffer }[] = [];
  const totals = new Map<string, PassTotals>();
  const spans = new Map<string, SpanTotals>();
  const gaps = new Map<string, GapTotals>();
  const patches = new PrototypePatches();
  let submits = 0;
  let collecting: Promise<void> = Promise.resolve();

  patches.patch(
    GPUDevice.prototype,
    "createCommandEncoder",
    (original) =>
      function (this: GPUDevice, descriptor?: GPUCommandEncoderDescriptor) {
        const encoder = original.call(this, descriptor);
        if (this === device) {
          encoders.set(encoder, {
            labels: [],
            dispatches: [],
            querySet: device.createQuerySet({ type: "timestamp", count: QUERIES }),
          });
        }
        return encoder;
      },
  );
  patches.patch(
    GPUCommandEncoder.prototype,
    "beginComputePass",
    (original) =>
      function (this: GPUCommandEncoder, descriptor?: GPUComputePassDescriptor) {
        const rec = encoders.get(this);
        if (!rec || descriptor?.timestampWrites || rec.labels.length * 2 >= QUERIES) {
          return original.call(this, descriptor);
        }
        const index = rec.labels.length;
        rec.labels.push(descriptor?.label || "(unlabelled pass)");
        rec.dispatches.push(0);
        const pass = original.call(this, {
          ...descriptor,
          timestampWrites: {
            querySet: rec.querySet,
            beginningOfPassWriteIndex: 2 * index,
            endOfPassWriteIndex: 2 * index + 1,
          },
        });
        passes.set(pass, { rec, index });
        return pass;
      },
  );
  patches.patch(
    GPUComputePassEncoder.prototype,
    "dispatchWorkgroups",
    (original) =>
      function (this: GPUComputePassEncoder, x: number, y?: number, z?: number) {
        const at = passes.get(this);
        if (at) at.rec.dispatches[at.index]++;
        return original.call(this, x, y, z);
      },
  );
  patches.patch(
    GPUCommandEncoder.prototype,
    "finish",
    (original) =>
      function (this: GPUCommandEncoder, descriptor?: GPUCommandBufferDescriptor) {
        const rec = encoders.get(this);
        if (rec?.labels.length) {
          const bytes = rec.labels.length * 16;
          const resolve = device.createBuffer({
            label: "pass timer resolve",
            size: bytes,
            usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
          });
          const read = device.createBuffer({
            label: "pass timer read",
            size: bytes,
            usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
          });
          this.resolveQuerySet(rec.querySet, 0, rec.labels.length * 2, resolve, 0);
          this.copyBufferToBuffer(resolve, 0, read, 0, bytes);
          ready.push({ rec, resolve, read });
        } else rec?.querySet.destroy();
        return original.call(this, descriptor);
      },
  );
  patches.patch(
    GPUQueue.prototype,
    "submit",
    (original) =>
      function (this: GPUQueue, buffers: GPUCommandBuffer[]) {
        original.call(this, buffers);
        if (this === device.queue && ++submits % COLLECT_EVERY === 0) {
          collecting = collecting.then(() => collect(false));
        }
      },
  );

  async function collect(all: boolean): Promise<void> {
    // Encoders finished but not yet submitted stay for the next collection.
    const items = ready.splice(0, all ? ready.length : Math.max(0, ready.length - 4));
    await Promise.all(items.map((x) => x.read.mapAsync(GPUMapMode.READ)));
    for (const { rec, resolve, read } of items) {
      const t = new BigUint64Array(read.getMappedRange());
      rec.labels.forEach((label, i) => {
        const e = totals.get(label) ?? { ns: 0, passes: 0, dispatches: 0 };
        e.ns += Number(t[2 * i + 1] - t[2 * i]);
        e.passes++;
        e.dispatches += rec.dispatches[i];
        totals.set(label, e);
      });
      for (let i = 1; i < rec.labels.length; i++) {
        const key = `${rec.labels[i - 1]} -> ${rec.labels[i]}`;
        const g = gaps.get(key) ?? { ns: 0, count: 0 };
        g.ns += Number(t[2 * i] - t[2 * i - 1]);
        g.count++;
        gaps.set(key, g);
      }
      const n = rec.labels.length;
      const span = spans.get(rec.labels[0]) ?? { ns: 0, commandBuffers: 0 };
      span.ns += Number(t[2 * n - 1] - t[0]);
      span.commandBuffers++;
      spans.set(rec.labels[0], span);
      read.unmap();
      read.destroy();
      resolve.destroy();
      rec.querySet.destroy();
    }
  }

  return {
    async collect() {
      await collecting;
      await collect(true);
    },
    totals: () => new Map(totals),
    spans: () => new Map(spans),
    gaps: () => new Map(gaps),
    async reset() {
      await collecting;
      await collect(true);
      totals.clear();
      spans.clear();
      gaps.clear();
    },
    [Symbol.dispose]: () => patches[Symbol.dispose](),
  };
}

/** A one-workgroup kernel that adds 1 to 64 words, bound: the unit the floors time. */
function tinyKernel(device: GPUDevice): {
  pipeline: GPUComputePipeline;
  group: GPUBindGroup;
  buffer: GPUBuffer;
} {
  const buffer = device.createBuffer({ size: 256, usage: GPUBufferUsage.STORAGE });
  const module = device.createShaderModule({
    code: `@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) i: u32) { a[i] += 1u; }`,
  });
  const pipeline = device.createComputePipeline({
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const group = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer } }],
  });
  return { pipeline, group, buffer };
}

/** Records the read-back of `count` timestamps of `querySet` into `encoder`, submits it, reads them. */
async function readTimestamps(
  device: GPUDevice,
  encoder: GPUCommandEncoder,
  querySet: GPUQuerySet,
  count: number,
): Promise<BigUint64Array> {
  const bytes = 8 * count;
  const resolve = device.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const read = device.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  encoder.resolveQuerySet(querySet, 0, count, resolve, 0);
  encoder.copyBufferToBuffer(resolve, 0, read, 0, bytes);
  device.queue.submit([encoder.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const t = new BigUint64Array(read.getMappedRange().slice(0));
  read.unmap();
  for (const b of [read, resolve]) b.destroy();
  return t;
}

/**
 * This adapter's floors: the GPU time of a compute pass holding one tiny
 * dispatch, and of one more tiny dispatch inside a pass, in nanoseconds
 * (medians of `repeats` runs of `count` passes or dispatches each).
 * Measure them before installing a timer.
 */
export async function measureFloors(
  device: GPUDevice,
  count = 200,
  repeats = 5,
): Promise<{ passNs: number; dispatchNs: number }> {
  const { pipeline, group, buffer } = tinyKernel(device);
  const querySet = device.createQuerySet({ type: "timestamp", count: 2 });
  // Wall of `passes` passes of `perPass` dispatches, from the first pass's
  // begin to the last one's end.
  const time = async (passes: number, perPass: number): Promise<number> => {
    const encoder = device.createCommandEncoder({ label: "floor" });
    for (let p = 0; p < passes; p++) {
      // Only the first and last passes write (a pass naming no index
      // records nothing on wgpu, and spoils the others' writes).
      const writes: GPUComputePassTimestampWrites = { querySet };
      if (p === 0) writes.beginningOfPassWriteIndex = 0;
      if (p === passes - 1) writes.endOfPassWriteIndex = 1;
      const pass = encoder.beginComputePass(
        p === 0 || p === passes - 1 ? { timestampWrites: writes } : {},
      );
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      for (let d = 0; d < perPass; d++) pass.dispatchWorkgroups(1);
      pass.end();
    }
    const t = await readTimestamps(device, encoder, querySet, 2);
    return Number(t[1] - t[0]);
  };
  const one: number[] = [];
  const manyPasses: number[] = [];
  const manyDispatches: number[] = [];
  await time(count, 1); // warm-up
  for (let r = 0; r < repeats; r++) {
    one.push(await time(1, 1));
    manyPasses.push(await time(count, 1));
    manyDispatches.push(await time(1, count + 1));
  }
  buffer.destroy();
  querySet.destroy();
  return {
    passNs: median(manyPasses) / count,
    dispatchNs: (median(manyDispatches) - median(one)) / count,
  };
}

/**
 * The GPU gap between two one-dispatch passes with `copies` small
 * `copyBufferToBuffer` between them, in microseconds, for each count of
 * `counts`: the median of `pairs` pairs in one command buffer, then the
 * median of `rounds` such runs.
 */
export async function measureCopyGroups(
  device: GPUDevice,
  counts: readonly number[],
  pairs = 200,
  rounds = 3,
): Promise<number[]> {
  const { pipeline, group, buffer } = tinyKernel(device);
  const usage = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const buffers = Array.from({ length: 15 }, () => device.createBuffer({ size: 1024, usage }));
  const gap = async (copies: number): Promise<number> => {
    const querySet = device.createQuerySet({ type: "timestamp", count: 4 * pairs });
    const encoder = device.createCommandEncoder({ label: "copy groups" });
    for (let p = 0; p < pairs; p++) {
      for (let j = 0; j < 2; j++) {
        const pass = encoder.beginComputePass({
          timestampWrites: {
            querySet,
            beginningOfPassWriteIndex: 4 * p + 2 * j,
            endOfPassWriteIndex: 4 * p + 2 * j + 1,
          },
        });
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, group);
        pass.dispatchWorkgroups(1);
        pass.end();
        if (j > 0) continue;
        for (let c = 0; c < copies; c++) {
          encoder.copyBufferToBuffer(buffers[c % 7], 0, buffers[7 + (c % 8)], 0, 256);
        }
      }
    }
    const t = await readTimestamps(device, encoder, querySet, 4 * pairs);
    querySet.destroy();
    return median(Array.from({ length: pairs }, (_, p) => Number(t[4 * p + 2] - t[4 * p + 1]))) /
      1e3;
  };
  const runs: number[][] = counts.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < counts.length; i++) runs[i].push(await gap(counts[i]));
  }
  for (const b of [buffer, ...buffers]) b.destroy();
  return runs.map(median);
}
