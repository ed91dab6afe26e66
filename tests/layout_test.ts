import assert from "node:assert/strict";
import { gpuTest } from "./_gpu.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import {
  createHndToNhd,
  createNhdToHnd,
  type KvLayoutShape,
  kvLayoutSizes,
  type RunSlotHeadJob,
  type SlotHeadJob,
} from "../lib/kernels/layout.ts";
import { hndToNhdReference, nhdToHndReference } from "../lib/kernels/layout_reference.ts";
import { createRandom, type Random } from "../lib/workloads/random.ts";
import type { KvArray } from "../lib/gpu/dtype.ts";
import { assertArraysEqual } from "./_assert.ts";

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

// Random bit patterns (NaN payloads included) so that any non-bitwise move shows.
function randomKv(rng: Random, shape: KvLayoutShape, length: number): KvArray {
  const a = shape.dtype === "f16" ? new Float16Array(length) : new Float32Array(length);
  const u = new Uint8Array(a.buffer);
  for (let i = 0; i < u.length; i++) u[i] = rng.int(256);
  return a;
}

function bytesOf(a: KvArray | ArrayBuffer): Uint8Array {
  return a instanceof ArrayBuffer
    ? new Uint8Array(a)
    : new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function shuffled(rng: Random, n: number): number[] {
  const a = [...Array(n).keys()];
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

Deno.test("kvLayoutSizes computes sizes and rejects odd f16 head_dim", () => {
  const s = kvLayoutSizes({ pageSize: 32, kvHeads: 8, headDim: 128, dtype: "f32" });
  assert.equal(s.runBytes, 2 * 32 * 128 * 4);
  assert.equal(s.slotBytes, 32 * 8 * 128 * 4);
  assert.equal(kvLayoutSizes({ pageSize: 1, kvHeads: 1, headDim: 3, dtype: "f32" }).rowBytes, 12);
  assert.throws(
    () => kvLayoutSizes({ pageSize: 4, kvHeads: 1, headDim: 7, dtype: "f16" }),
    (e: Error) =>
      e instanceof RangeError && /'headDim' must be even for f16.*received 7/.test(e.message),
  );
  assert.throws(
    () => kvLayoutSizes({ pageSize: 0, kvHeads: 1, headDim: 8, dtype: "f16" }),
    (e: Error) => e instanceof RangeError && /'pageSize' must be/.test(e.message),
  );
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => kvLayoutSizes({ pageSize: 1, kvHeads: 1, headDim: 8, dtype: "bf16" as any }),
    (e: Error) => e instanceof TypeError && /'dtype' must be one of/.test(e.message),
  );
});

Deno.test("CPU references: NHD -> HND -> NHD round trip into permuted slots", () => {
  const rng = createRandom(1);
  const shape: KvLayoutShape = { pageSize: 3, kvHeads: 2, headDim: 4, dtype: "f16" };
  const slots = 3, n = slots * shape.pageSize * shape.kvHeads * shape.headDim;
  const kCache = randomKv(rng, shape, n), vCache = randomKv(rng, shape, n);
  const gather: Array<{ slot: number; head: number }> = [];
  for (let s = 0; s < slots; s++) for (let h = 0; h < 2; h++) gather.push({ slot: s, head: h });
  const runs = nhdToHndReference({ kCache, vCache }, gather, shape);
  // A job without head gives the runs of every head of the slot.
  assert.deepEqual(
    bytesOf(nhdToHndReference({ kCache, vCache }, [{ slot: 1 }], shape)),
    bytesOf(runs.subarray(2 * 24, 4 * 24)),
  );
  // Run of (slot 1, head 0) starts with slot 1's token 0 head 0 row.
  assert.deepEqual(bytesOf(runs.subarray(2 * 24, 2 * 24 + 4)), bytesOf(kCache.subarray(24, 28)));
  const perm = [2, 0, 1];
  const k2 = new Float16Array(n), v2 = new Float16Array(n);
  const scatter = gather.map((g, run) => ({ run, slot: perm[g.slot], head: g.head }));
  hndToNhdReference(runs, { kCache: k2, vCache: v2 }, { ...shape, jobs: scatter });
  const rowLen = shape.pageSize * shape.kvHeads * shape.headDim;
  for (let s = 0; s < slots; s++) {
    const a = kCache.subarray(s * rowLen, (s + 1) * rowLen);
    const b = k2.subarray(perm[s] * rowLen, (perm[s] + 1) * rowLen);
    assert.deepEqual(bytesOf(b), bytesOf(a));
  }
});

const CONFIGS: KvLayoutShape[] = [];
for (const dtype of ["f32", "f16"] as const) {
  for (const pageSize of [1, 32]) {
    for (const kvHeads of [1, 4]) {
      for (const headDim of [8, 128]) CONFIGS.push({ pageSize, kvHeads, headDim, dtype });
    }
  }
}
// Awkward rows: 12 bytes (f32 d=3), 4 bytes (f16 d=2), 12 bytes (f16 d=6) take the u32 path.
CONFIGS.push({ pageSize: 5, kvHeads: 3, headDim: 3, dtype: "f32" });
CONFIGS.push({ pageSize: 7, kvHeads: 2, headDim: 2, dtype: "f16" });
CONFIGS.push({ pageSize: 3, kvHeads: 5, headDim: 6, dtype: "f16" });
// u32 words, two per invocation (8-byte rows); vec4 words, three per row.
CONFIGS.push({ pageSize: 3, kvHeads: 2, headDim: 4, dtype: "f16" });
CONFIGS.push({ pageSize: 2, kvHeads: 3, headDim: 12, dtype: "f32" });

gpuTest(
  "NHD -> HND and HND -> NHD kernels are bit exact against the CPU references",
  async ({ device }) => {
    let seed = 10;
    for (const shape of CONFIGS) {
      const rng = createRandom(seed++);
      const sizes = kvLayoutSizes(shape);
      const slots = 5;
      const n = slots * sizes.slotBytes / sizes.elementBytes;
      const kCache = randomKv(rng, shape, n), vCache = randomKv(rng, shape, n);
      const kBuf = createBuffer(device, "k", USAGE, kCache);
      const vBuf = createBuffer(device, "v", USAGE, vCache);
      // Gather a random subset of (slot, head) in random order, at runBase 2.
      const all: SlotHeadJob[] = [];
      for (const s of shuffled(rng, slots)) {
        for (let h = 0; h < shape.kvHeads; h++) {
          if (rng.next() < 0.7) {
            all.push({ slot: s, head: h });
          }
        }
      }
      all.push({ slot: rng.int(slots) }); // every head of a slot: kvHeads runs
      const count = all.length - 1 + shape.kvHeads;
      const runBase = 2;
      const runsBuf = createBuffer(device, "runs", USAGE, (runBase + count + 1) * sizes.runBytes);
      using gather = createNhdToHnd(device, shape).plan(all, { runBase });
      assert.equal(gather.numJobs, count);
      let enc = device.createCommandEncoder();
      gather.encode(enc, { kCache: kBuf, vCache: vBuf, runs: runsBuf });
      device.queue.submit([enc.finish()]);
      const got = new Uint8Array(
        await readBuffer(device, runsBuf, count * sizes.runBytes, runBase * sizes.runBytes),
      );
      const want = nhdToHndReference({ kCache, vCache }, all, shape);
      assertArraysEqual(got, bytesOf(want), `gather ${JSON.stringify(shape)}`);

      // Scatter the runs into a permutation of (slot, head) of fresh caches.
      const k2 = randomKv(rng, shape, n), v2 = randomKv(rng, shape, n);
      const k2Buf = createBuffer(device, "k2", USAGE, k2);
      const v2Buf = createBuffer(device, "v2", USAGE, v2);
      const targets = shuffled(rng, slots * shape.kvHeads).slice(0, count);
      const scatter: RunSlotHeadJob[] = targets.map((_, j) => ({
        run: runBase + j,
        slot: Math.floor(targets[j] / shape.kvHeads),
        head: targets[j] % shape.kvHeads,
      }));
      using plan = createHndToNhd(device, shape).plan(scatter);
      enc = device.createCommandEncoder();
      plan.encode(enc, { kCache: k2Buf, vCache: v2Buf, runs: runsBuf });
      device.queue.submit([enc.finish()]);
      const runsAll = shape.dtype === "f16"
        ? new Float16Array(await readBuffer(device, runsBuf))
        : new Float32Array(await readBuffer(device, runsBuf));
      hndToNhdReference(runsAll, { kCache: k2, vCache: v2 }, { ...shape, jobs: scatter });
      assertArraysEqual(new Uint8Array(await readBuffer(device, k2Buf)), bytesOf(k2), "keys");
      assertArraysEqual(new Uint8Array(await readBuffer(device, v2Buf)), bytesOf(v2), "values");
      for (const b of [kBuf, vBuf, runsBuf, k2Buf, v2Buf]) b.destroy();
    }
  },
);

gpuTest("layout plans reject bad jobs and buffers before any GPU work", async ({ device }) => {
  const shape: KvLayoutShape = { pageSize: 2, kvHeads: 2, headDim: 4, dtype: "f32" };
  const sizes = kvLayoutSizes(shape);
  const k = createBuffer(device, "k", USAGE, new Float32Array(3 * sizes.slotBytes / 4).fill(1));
  const v = createBuffer(device, "v", USAGE, 3 * sizes.slotBytes);
  const runs = createBuffer(device, "runs", USAGE, 2 * sizes.runBytes);
  using scatter = createHndToNhd(device, shape);
  const buffers = { kCache: k, vCache: v, runs };
  const plan = scatter.plan([{ run: 0, slot: 1, head: 0 }]);
  // Plan checks the jobs on their own.
  const badJobs: Array<[RunSlotHeadJob[], RegExp, ErrorConstructor]> = [
    [
      [{ run: 0, slot: 0, head: 2 }],
      /'jobs\[0\]\.head' must be between 0 and 1: received 2/,
      RangeError,
    ],
    [
      [{ run: 0, slot: 0, head: 1 }, { run: 1, slot: 0, head: 1 }],
      /slot 0 head 1 twice/,
      RangeError,
    ],
    [[{ run: 0, slot: 0.5, head: 1 }], /'jobs\[0\]\.slot' must be an integer/, TypeError],
  ];
  for (const [jobs, message, cls] of badJobs) {
    const matches = (e: Error) => e instanceof cls && message.test(e.message);
    assert.throws(() => scatter.plan(jobs), matches);
    assert.throws(() => plan.update(jobs), matches);
  }
  // Encode checks the jobs against the buffers before recording.
  const badBuffers: Array<[RunSlotHeadJob[], RegExp]> = [
    [
      [{ run: 0, slot: 3, head: 0 }],
      /'slot' must be below the 3 slots of 'kCache' and 'vCache': received 3/,
    ],
    [[{ run: 2, slot: 0, head: 0 }], /'runs' must hold runs up to 2/],
  ];
  for (const [jobs, message] of badBuffers) {
    using bad = scatter.plan(jobs);
    assert.throws(
      () => bad.encode(device.createCommandEncoder(), buffers),
      (e: Error) => e instanceof RangeError && message.test(e.message),
    );
  }
  const mapOnly = device.createBuffer({
    size: 64,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  assert.throws(
    () => plan.encode(device.createCommandEncoder(), { ...buffers, runs: mapOnly }),
    (e: Error) => e instanceof TypeError && /'runs' must have STORAGE usage/.test(e.message),
  );
  using gather = createNhdToHnd(device, shape).plan([{ slot: 0, head: 0 }], { runBase: 2 });
  assert.throws(
    () => gather.encode(device.createCommandEncoder(), buffers),
    (e: Error) => e instanceof RangeError && /'runs' must hold runs up to 2/.test(e.message),
  );
  // The failed updates changed nothing: the first job list still runs.
  const enc = device.createCommandEncoder();
  plan.encode(enc, buffers);
  device.queue.submit([enc.finish()]);
  const got = new Float32Array(await readBuffer(device, k));
  assert.equal(got[sizes.slotBytes / 4], 0); // slot 1 head 0 token 0 overwritten by zero run
  assert.equal(got[0], 1);
  plan[Symbol.dispose]();
  assert.throws(
    () => plan.encode(device.createCommandEncoder(), buffers),
    (e: Error) => e instanceof TypeError && /the plan must not be disposed/.test(e.message),
  );
  scatter[Symbol.dispose]();
  assert.throws(
    () => scatter.plan([]),
    (e: Error) =>
      e instanceof TypeError && /the layout kernel must not be disposed/.test(e.message),
  );
  for (const b of [k, v, runs, mapOnly]) b.destroy();
});
