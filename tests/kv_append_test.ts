// KV append against its CPU reference: f32, f16 (with and without
// shader-f16), rows split over several dispatches, and bad input.
import assert from "node:assert/strict";
import { createKvAppend, type KvAppendOptions } from "../lib/kernels/kv_append.ts";
import { kvAppendReference } from "../lib/kernels/kv_append_reference.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import { gpuTest } from "./_gpu.ts";
import { slotOffset } from "../lib/kernels/slot_layout.ts";
import { assertArraysEqual } from "./_assert.ts";

async function check(
  device: GPUDevice,
  options: KvAppendOptions,
  rows: number,
  slots: number,
  hndPageSize = 0, // > 0: HND slots of this many tokens, `slots` counts token places
) {
  const rng = createRandom(rows + slots);
  const row = options.numKvHeads * options.headDim;
  const f16 = options.dtype === "f16";
  // Values exact in f16, so the GPU and JS conversions cannot disagree.
  const values = (n: number) => randomNormalArray(rng, n).map((x) => Math.round(x * 64) / 64);
  const k = values(rows * row), v = values(rows * row);
  // Distinct destination rows, in shuffled order.
  const order = Array.from({ length: slots }, (_, i) => i).sort(() => rng.next() - 0.5);
  const P = hndPageSize;
  const shape = { pageSize: P, kvHeads: options.numKvHeads, headDim: options.headDim };
  const dstOffsets = Uint32Array.from(
    { length: rows },
    (_, i) =>
      P > 0 ? slotOffset("hnd", shape, Math.floor(order[i] / P), order[i] % P, 0) : order[i] * row,
  );
  const make = (n: number) => f16 ? Float16Array.from(values(n)) : values(n);
  const kCache = make(slots * row), vCache = make(slots * row);
  const want = kvAppendReference({ k, v, kCache, vCache, dstOffsets }, options);
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
  const bk = createBuffer(device, "test k", S, k), bv = createBuffer(device, "test v", S, v);
  const ck = createBuffer(device, "test kCache", S, kCache);
  const cv = createBuffer(device, "test vCache", S, vCache);
  try {
    const append = createKvAppend(device, options);
    using plan = append.plan({ dstOffsets });
    assert.equal(plan.numRows, rows);
    const encoder = device.createCommandEncoder();
    plan.encode(encoder, { k: bk, v: bv, kCache: ck, vCache: cv });
    device.queue.submit([encoder.finish()]);
    const Kind = f16 ? Float16Array : Float32Array;
    assertArraysEqual(new Kind(await readBuffer(device, ck)), want.kCache, "kCache");
    assertArraysEqual(new Kind(await readBuffer(device, cv)), want.vCache, "vCache");
  } finally {
    for (const b of [bk, bv, ck, cv]) b.destroy();
  }
}

gpuTest("kv append: f32 and f16 rows into shuffled slots", async (gpu) => {
  await check(gpu.device, { numKvHeads: 2, headDim: 8 }, 5, 9);
  await check(gpu.device, { numKvHeads: 3, headDim: 4, dtype: "f16" }, 7, 7);
  using plain = await requestGpu({ f16: false });
  const append = createKvAppend(plain.device, { numKvHeads: 1, headDim: 8, dtype: "f16" });
  assert.equal(append.packed, true);
  await check(plain.device, { numKvHeads: 1, headDim: 8, dtype: "f16" }, 4, 6);
});

gpuTest("kv append: HND slots (heads P * d apart), f32 and packed f16", async (gpu) => {
  // 3 slots of 4 tokens: 12 token places.
  await check(gpu.device, { numKvHeads: 3, headDim: 8, headStride: 4 * 8 }, 7, 12, 4);
  await check(gpu.device, { numKvHeads: 2, headDim: 4, headStride: 8, dtype: "f16" }, 5, 6, 2);
  using plain = await requestGpu({ f16: false });
  await check(
    plain.device,
    { numKvHeads: 2, headDim: 8, headStride: 3 * 8, dtype: "f16" },
    6,
    9,
    3,
  );
});

gpuTest("kv append: more rows than one dispatch holds", async (gpu) => {
  const maxY = gpu.device.limits.maxComputeWorkgroupsPerDimension;
  await check(gpu.device, { numKvHeads: 1, headDim: 4 }, maxY + 3, maxY + 5);
});

gpuTest("kv append: bad input is refused before recording", (gpu) => {
  const device = gpu.device;
  assert.throws(
    () => createKvAppend(device, { numKvHeads: 0, headDim: 4 }),
    (e: Error) => e instanceof RangeError && /'numKvHeads' must be at least 1/.test(e.message),
  );
  const append = createKvAppend(device, { numKvHeads: 1, headDim: 4 });
  assert.throws(
    () => append.plan({ dstOffsets: [0] as unknown as Uint32Array }),
    (e: Error) => e instanceof TypeError && /'dstOffsets' must be a Uint32Array/.test(e.message),
  );
  using plan = append.plan({ dstOffsets: new Uint32Array([0, 8]) });
  const S = GPUBufferUsage.STORAGE;
  const rows = createBuffer(device, "rows", S, 32), cache = createBuffer(device, "cache", S, 32);
  assert.throws(
    () =>
      plan.encode(device.createCommandEncoder(), {
        k: rows,
        v: rows,
        kCache: cache,
        vCache: cache,
      }),
    (e: Error) => e instanceof RangeError && /'kCache' must hold at least 48 bytes/.test(e.message),
  );
  rows.destroy();
  cache.destroy();
  plan[Symbol.dispose]();
  assert.throws(() => plan.update({ dstOffsets: new Uint32Array(1) }), /plan must not be disposed/);
});
