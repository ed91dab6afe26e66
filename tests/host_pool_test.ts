import assert from "node:assert/strict";
import { HostPagePool, type HostPoolLayout, type PageKey } from "../lib/memory/host_pool.ts";
import { createRandom } from "../lib/workloads/random.ts";

function runOf(pool: HostPagePool, key: PageKey): Float32Array | Float16Array {
  const a = pool.dtype === "f16"
    ? new Float16Array(pool.runElements)
    : new Float32Array(pool.runElements);
  for (let i = 0; i < a.length; i++) {
    a[i] = ((key.layer * 7 + key.head) * 1000 + key.page) % 2048 + i / 1024;
  }
  return a;
}

Deno.test("host pool sizes, chunk growth and contiguous HND runs", () => {
  using pool = new HostPagePool({
    layers: 3,
    kvHeads: 4,
    headDim: 8,
    pageSize: 2,
    dtype: "f16",
    chunkPages: 4,
  });
  assert.equal(pool.runElements, 2 * 2 * 8);
  assert.equal(pool.runBytes, 64);
  assert.equal(pool.chunkBytes, 4 * 3 * 4 * 64);
  assert.equal(pool.byteLength, 0);
  const first: PageKey = { layer: 2, head: 3, page: 1 };
  pool.writeRun(first, runOf(pool, first));
  assert.equal(pool.chunkCount, 1);
  const loc0 = pool.location(first);
  const keep = loc0.bytes;
  // Consecutive pages of one head inside a chunk are consecutive runs.
  const next = { ...first, page: 2 };
  pool.writeRun(next, runOf(pool, next));
  assert.equal(pool.location(next).bytes, keep);
  assert.equal(pool.location(next).byteOffset, loc0.byteOffset + pool.runBytes);
  // Growing across chunk boundaries (and far away, sparsely) keeps old data and buffers.
  const keys: PageKey[] = [];
  for (const page of [3, 4, 5, 9, 1000]) {
    for (let layer = 0; layer < 3; layer++) {
      for (let head = 0; head < 4; head++) keys.push({ layer, head, page });
    }
  }
  for (const k of keys) pool.writeRun(k, runOf(pool, k));
  assert.equal(pool.chunkCount, 4); // chunks 0, 1, 2, 250
  assert.equal(pool.byteLength, 4 * pool.chunkBytes);
  assert.equal(pool.location(first).bytes, keep);
  for (const k of [first, next, ...keys]) {
    const got = pool.readRun(k);
    assert.ok(got instanceof Float16Array);
    assert.deepEqual(got, runOf(pool, k));
  }
  assert.equal(pool.offloadedRuns, 2 + keys.length);
  assert.equal(pool.isOffloaded({ layer: 0, head: 0, page: 6 }), false);
  assert.equal(pool.isOffloaded({ layer: 0, head: 0, page: 1000 }), true);
});

Deno.test("host pool maxBytes: RangeError and nothing changed", () => {
  using pool = new HostPagePool({
    layers: 1,
    kvHeads: 2,
    headDim: 4,
    pageSize: 1,
    chunkPages: 2,
    maxBytes: 2 * 2 * 2 * 32, // two chunks of 2 pages x 2 heads x 32 bytes
  });
  const run = new Float32Array(pool.runElements).fill(3);
  pool.writeRun({ layer: 0, head: 0, page: 0 }, run);
  pool.writeRun({ layer: 0, head: 1, page: 3 }, run);
  assert.equal(pool.byteLength, 256);
  assert.throws(
    () => pool.writeRun({ layer: 0, head: 0, page: 4 }, run),
    (e: Error) => e instanceof RangeError && /'maxBytes' must not be exceeded/.test(e.message),
  );
  assert.throws(
    () => pool.reserve([1, 2, 5, 7]),
    (e: Error) => e instanceof RangeError && /need 512 bytes, maxBytes is 256/.test(e.message),
  );
  assert.equal(pool.byteLength, 256);
  assert.equal(pool.chunkCount, 2);
  assert.equal(pool.offloadedRuns, 2);
  assert.equal(pool.isOffloaded({ layer: 0, head: 0, page: 4 }), false);
  assert.deepEqual(pool.readRun({ layer: 0, head: 1, page: 3 }), run);
  pool.reserve([1, 2]); // already allocated: fine
});

Deno.test("host pool rejects bad keys, runs and options", () => {
  using pool = new HostPagePool({ layers: 2, kvHeads: 2, headDim: 4, pageSize: 2 });
  const run = new Float32Array(pool.runElements);
  const cases: Array<[() => unknown, ErrorConstructor, RegExp]> = [
    [
      () => pool.writeRun({ layer: 2, head: 0, page: 0 }, run),
      RangeError,
      /'layer' must be between 0 and 1: received 2/,
    ],
    [
      () => pool.writeRun({ layer: 0, head: -1, page: 0 }, run),
      RangeError,
      /'head' must be between 0 and 1: received -1/,
    ],
    [
      () => pool.writeRun({ layer: 0, head: 0, page: 1.5 }, run),
      TypeError,
      /'page' must be an integer/,
    ],
    [
      () => pool.writeRun({ layer: 0, head: 0, page: 0 }, new Float32Array(3)),
      RangeError,
      /'run' must have 64 bytes: received 12/,
    ],
    [() => pool.readRun({ layer: 0, head: 0, page: 0 }), RangeError, /must have been offloaded/],
    [
      () => new HostPagePool({ layers: 1, kvHeads: 1, headDim: 4, pageSize: 0 }),
      RangeError,
      /'pageSize' must be at least 1/,
    ],
    [
      () =>
        new HostPagePool({
          layers: 1,
          kvHeads: 1,
          headDim: 4,
          pageSize: 1,
          layout: "thd" as unknown as HostPoolLayout,
        }),
      TypeError,
      /'layout' must be one of/,
    ],
  ];
  for (const [fn, cls, re] of cases) {
    assert.throws(fn, (e: Error) => e instanceof cls && re.test(e.message), re.source);
  }
  assert.equal(pool.byteLength, 0);
  assert.equal(pool.offloadedRuns, 0);
});

Deno.test("NHD host layout stores [token][kvHead][d] per (layer, page) and reads runs back", () => {
  const rng = createRandom(3);
  using pool = new HostPagePool({
    layers: 2,
    kvHeads: 3,
    headDim: 2,
    pageSize: 2,
    layout: "nhd",
    chunkPages: 2,
  });
  const runs = new Map<string, Float32Array>();
  for (let head = 0; head < 3; head++) {
    const run = Float32Array.from({ length: pool.runElements }, () => rng.int(1000));
    runs.set(`${head}`, run);
    pool.writeRun({ layer: 1, head, page: 3 }, run);
  }
  const { bytes, byteOffset } = pool.location({ layer: 1, head: 0, page: 3 });
  // (layer 1, page 3) is block (1 * chunkPages + 1) of chunk 1.
  assert.equal(byteOffset, (1 * 2 + 1) * 3 * pool.runBytes);
  const block = new Float32Array(bytes.buffer, byteOffset, pool.runElements * 3);
  // K token 1 head 2 is at (1 * 3 + 2) * d; V starts after P * Hkv * d.
  assert.deepEqual([...block.subarray(10, 12)], [...runs.get("2")!.subarray(2, 4)]);
  assert.deepEqual([...block.subarray(12 + 10, 12 + 12)], [...runs.get("2")!.subarray(6, 8)]);
  for (let head = 0; head < 3; head++) {
    assert.deepEqual(pool.readRun({ layer: 1, head, page: 3 }), runs.get(`${head}`));
  }
});

Deno.test("host pool releasePages frees empty chunks; dispose drops memory", () => {
  const pool = new HostPagePool({ layers: 1, kvHeads: 2, headDim: 2, pageSize: 1, chunkPages: 2 });
  const run = new Float32Array(pool.runElements);
  for (const page of [0, 1, 2, 5]) pool.writeRun({ layer: 0, head: 1, page }, run);
  assert.equal(pool.chunkCount, 3);
  pool.releasePages(0, 2);
  assert.equal(pool.chunkCount, 2);
  assert.equal(pool.offloadedRuns, 2);
  pool.releasePages(2, 1);
  assert.equal(pool.chunkCount, 1);
  pool[Symbol.dispose]();
  assert.equal(pool.byteLength, 0);
  assert.throws(
    () => pool.writeRun({ layer: 0, head: 0, page: 0 }, run),
    (e: Error) => e instanceof TypeError && /disposed/.test(e.message),
  );
});
