import assert from "node:assert/strict";
import { countCalls, gpuTest } from "./_gpu.ts";
import { createPagedAttention } from "../lib/kernels/attention.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import { HostPagePool, type HostPoolLayout } from "../lib/memory/host_pool.ts";
import { type KvLayoutShape, kvLayoutSizes, type NhdCacheBuffers } from "../lib/kernels/layout.ts";
import { hndToNhdReference, nhdToHndReference } from "../lib/kernels/layout_reference.ts";
import { createOffloader } from "../lib/memory/offload.ts";
import { createRecaller, type RecallerOptions, type RecallJob } from "../lib/memory/recall.ts";
import { DIRECT_RANGE_BYTES } from "../lib/memory/recall_staging.ts";
import { createRandom, type Random } from "../lib/workloads/random.ts";
import type { KvArray } from "../lib/gpu/dtype.ts";
import { assertArraysEqual } from "./_assert.ts";
import { type SlotLayout, slotOffset } from "../lib/kernels/slot_layout.ts";

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

// Random bit patterns (NaN payloads included): any non-bitwise move shows.
function randomKv(rng: Random, shape: KvLayoutShape, length: number): KvArray {
  const a = shape.dtype === "f16" ? new Float16Array(length) : new Float32Array(length);
  const u = new Uint8Array(a.buffer);
  for (let i = 0; i < u.length; i++) u[i] = rng.int(256);
  return a;
}

function bytesOf(a: KvArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function shuffled(rng: Random, n: number): number[] {
  const a = [...Array(n).keys()];
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

interface Layer {
  kCache: KvArray;
  vCache: KvArray;
  buffers: NhdCacheBuffers;
}

function makeLayers(
  device: GPUDevice,
  rng: Random,
  shape: KvLayoutShape,
  layers: number,
  slots: number,
): Layer[] {
  const n = slots * kvLayoutSizes(shape).slotBytes / kvLayoutSizes(shape).elementBytes;
  return [...Array(layers)].map((_, l) => {
    const k = randomKv(rng, shape, n), v = randomKv(rng, shape, n);
    return {
      kCache: k,
      vCache: v,
      buffers: {
        kCache: createBuffer(device, `k${l}`, USAGE, k),
        vCache: createBuffer(device, `v${l}`, USAGE, v),
      },
    };
  });
}

async function assertCaches(device: GPUDevice, layers: Layer[], message: string) {
  for (const [l, layer] of layers.entries()) {
    const k = new Uint8Array(await readBuffer(device, layer.buffers.kCache));
    const v = new Uint8Array(await readBuffer(device, layer.buffers.vCache));
    assertArraysEqual(k, bytesOf(layer.kCache), `${message}: layer ${l} keys`);
    assertArraysEqual(v, bytesOf(layer.vCache), `${message}: layer ${l} values`);
  }
}

function destroyLayers(layers: Layer[]) {
  for (const l of layers) {
    l.buffers.kCache.destroy();
    l.buffers.vCache.destroy();
  }
}

interface Scenario {
  shape: KvLayoutShape;
  layout?: HostPoolLayout;
  recall?: Partial<RecallerOptions>;
  /** Layout of the GPU slots (default NHD). */
  slotLayout?: SlotLayout;
}

/** `layer` (HND slots) with its slots rewritten token-major (NHD), for the references. */
function hndAsNhd(layer: Layer, shape: KvLayoutShape): Layer {
  const { pageSize: P, kvHeads: H, headDim: d } = shape;
  const convert = (a: KvArray) => {
    const out = a.slice();
    for (let s = 0; s < a.length / (P * H * d); s++) {
      for (let t = 0; t < P; t++) {
        for (let h = 0; h < H; h++) {
          const from = slotOffset("hnd", shape, s, t, h), to = slotOffset("nhd", shape, s, t, h);
          out.set(a.subarray(from, from + d), to);
        }
      }
    }
    return out;
  };
  return { ...layer, kCache: convert(layer.kCache), vCache: convert(layer.vCache) };
}

/** Writes `pages` random runs per (layer, head) of `pool`; returns them by "layer/head/page". */
function fillRandomRuns(
  rng: Random,
  shape: KvLayoutShape,
  pool: HostPagePool,
  pages: number,
): Map<string, Float32Array> {
  const runs = new Map<string, Float32Array>();
  for (let l = 0; l < pool.layers; l++) {
    for (let h = 0; h < pool.kvHeads; h++) {
      for (let p = 0; p < pages; p++) {
        const run = randomKv(rng, shape, pool.runElements) as Float32Array;
        runs.set(`${l}/${h}/${p}`, run);
        pool.writeRun({ layer: l, head: h, page: p }, run);
      }
    }
  }
  return runs;
}

/** Applies `jobs` to the expected NHD caches `dst` with the reference scatter. */
function expectRecalled(
  runs: Map<string, Float32Array>,
  dst: Layer[],
  shape: KvLayoutShape,
  jobs: RecallJob[],
): void {
  for (const j of jobs) {
    hndToNhdReference(runs.get(`${j.layer}/${j.head}/${j.page}`)!, dst[j.layer], {
      ...shape,
      jobs: [{ run: 0, slot: j.slot, head: j.head }],
    });
  }
}

/** Writes run `run` into (slot, head) of HND slots. */
function placeHndRun(run: KvArray, layer: Layer, shape: KvLayoutShape, slot: number, head: number) {
  const n = shape.pageSize * shape.headDim;
  const at = slotOffset("hnd", shape, slot, 0, head);
  layer.kCache.set(run.subarray(0, n), at);
  layer.vCache.set(run.subarray(n, 2 * n), at);
}

// Offloads every (layer, slot) of random caches as pages of the pool (some per
// head with different pages per head), then recalls random pages into random
// slots of other caches, and checks them bit for bit against the references.
async function roundTrip(device: GPUDevice, seed: number, scenario: Scenario) {
  const { shape } = scenario;
  const rng = createRandom(seed);
  const L = 3, slots = 4;
  const src = makeLayers(device, rng, shape, L, slots);
  using pool = new HostPagePool({
    layers: L,
    kvHeads: shape.kvHeads,
    headDim: shape.headDim,
    pageSize: shape.pageSize,
    dtype: shape.dtype,
    layout: scenario.layout,
    chunkPages: 3, // pages 0..11 span four chunks
  });
  const hnd = scenario.slotLayout === "hnd";
  using offloader = createOffloader(device, pool, { slotLayout: scenario.slotLayout });
  // Page of (layer, slot, head): slots 0-1 go whole (all heads) to pages 2s + 1;
  // slots 2-3 go head by head to pages that differ per head.
  const pageOf = (l: number, s: number, h: number) =>
    s < 2 ? 2 * s + 1 : 4 + ((s - 2) * shape.kvHeads + h + l) % 8;
  const encoder = device.createCommandEncoder();
  const handles = src.map((layer, l) => {
    const jobs = [];
    for (let s = 0; s < slots; s++) {
      if (s < 2) jobs.push({ slot: s, page: pageOf(l, s, 0) });
      else {
        for (let h = 0; h < shape.kvHeads; h++) {
          jobs.push({ slot: s, head: h, page: pageOf(l, s, h) });
        }
      }
    }
    return offloader.encode(encoder, { layer: l, ...layer.buffers, jobs });
  });
  device.queue.submit([encoder.finish()]);
  offloader.flush();
  const done = await Promise.all(handles.map((h) => h.done));
  assert.equal(done[0].pages, slots * shape.kvHeads);
  assert.equal(pool.offloadedRuns, L * slots * shape.kvHeads);
  // The pool holds the HND runs of the reference conversion.
  for (let l = 0; l < L; l++) {
    for (let s = 0; s < slots; s++) {
      for (let h = 0; h < shape.kvHeads; h++) {
        const nhd = hnd ? hndAsNhd(src[l], shape) : src[l];
        const want = nhdToHndReference(nhd, [{ slot: s, head: h }], shape);
        const got = pool.readRun({ layer: l, head: h, page: pageOf(l, s, h) });
        assert.deepEqual(bytesOf(got), bytesOf(want), `pool run ${l}/${s}/${h}`);
      }
    }
  }

  // Recall into fresh caches: per (layer, head) a random subset of the
  // slots' pages into a random permutation of 5 slots.
  const dstSlots = 5;
  const dst = makeLayers(device, rng, shape, L, dstSlots);
  using recaller = createRecaller(device, pool, {
    caches: dst.map((d) => d.buffers),
    slotLayout: scenario.slotLayout,
    ...scenario.recall,
  });
  const jobs: RecallJob[] = [];
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < shape.kvHeads; h++) {
      const targets = shuffled(rng, dstSlots);
      for (let s = 0; s < slots; s++) {
        if (rng.next() < 0.8) {
          jobs.push({ layer: l, head: h, page: pageOf(l, s, h), slot: targets[s] });
        }
      }
    }
  }
  // Expected: the source slot's run scattered into the target slot.
  for (const job of jobs) {
    const s = [...Array(slots).keys()].find((s) => pageOf(job.layer, s, job.head) === job.page)!;
    const nhd = hnd ? hndAsNhd(src[job.layer], shape) : src[job.layer];
    const run = nhdToHndReference(nhd, [{ slot: s, head: job.head }], shape);
    if (hnd) {
      placeHndRun(run, dst[job.layer], shape, job.slot, job.head);
      continue;
    }
    hndToNhdReference(run, dst[job.layer], {
      ...shape,
      jobs: [{ run: 0, slot: job.slot, head: job.head }],
    });
  }
  const stats = await recaller.recall(shuffled(rng, jobs.length).map((i) => jobs[i])).done;
  assert.equal(stats.pages, jobs.length);
  assert.equal(stats.bytes, jobs.length * pool.runBytes);
  await assertCaches(device, dst, `${JSON.stringify(scenario)}`);
  destroyLayers(src);
  destroyLayers(dst);
}

const SHAPES: KvLayoutShape[] = [];
for (const dtype of ["f32", "f16"] as const) {
  for (const pageSize of [1, 32]) {
    for (const kvHeads of [1, 4]) {
      for (const headDim of [8, 128]) SHAPES.push({ pageSize, kvHeads, headDim, dtype });
    }
  }
}
// Recaller options to cycle through, given the run size (chunks of a few runs).
const RECALL_OPTIONS: Array<(runBytes: number) => Partial<RecallerOptions>> = [
  () => ({}),
  () => ({ staging: "mapped" }),
  (r) => ({ chunk: "heads", headsPerChunk: 1, maxChunkBytes: 2 * r }),
  (r) => ({ chunk: "bytes", maxChunkBytes: 5 * r, staging: "mapped" }),
  (r) => ({ buffering: "single", maxChunkBytes: 3 * r }),
  () => ({ buffering: "single", staging: "mapped", chunk: "heads" }),
  // Held copies: a third chunk refills a held staging buffer, `done` submits the rest.
  (r) => ({ deferSubmit: true, chunk: "bytes", maxChunkBytes: 3 * r }),
];

gpuTest(
  "offload then recall restores K/V bit for bit (f32/f16, P 1/32, Hkv 1/4, d 8/128)",
  async ({ device }) => {
    for (const [i, shape] of SHAPES.entries()) {
      const recall = RECALL_OPTIONS[i % RECALL_OPTIONS.length](kvLayoutSizes(shape).runBytes);
      await roundTrip(device, 100 + i, { shape, recall });
    }
  },
);

gpuTest(
  "HND slots: offload copies runs as they are, recall (direct and staged) restores them bit for bit",
  async ({ device }) => {
    for (const [i, shape] of SHAPES.entries()) {
      const recall = RECALL_OPTIONS[i % RECALL_OPTIONS.length](kvLayoutSizes(shape).runBytes);
      for (const hndPath of ["direct", "staged"] as const) {
        await roundTrip(device, 300 + i, {
          shape,
          slotLayout: "hnd",
          recall: { ...recall, hndPath },
        });
      }
    }
    // A token-major host pool (the fragmented baseline) into HND slots.
    await roundTrip(device, 9, {
      shape: { pageSize: 4, kvHeads: 4, headDim: 8, dtype: "f16" },
      layout: "nhd",
      slotLayout: "hnd",
    });
  },
);

/** One layer of HND slots and a filled one-layer pool, for the recall tests below. */
function hndScene(
  device: GPUDevice,
  seed: number,
  shape: KvLayoutShape,
  pages: number,
  slots: number,
) {
  const rng = createRandom(seed);
  const { kvHeads, headDim, pageSize, dtype } = shape;
  const pool = new HostPagePool({ layers: 1, kvHeads, headDim, pageSize, dtype });
  const runs = fillRandomRuns(rng, shape, pool, pages);
  const dst = makeLayers(device, rng, shape, 1, slots);
  return {
    pool,
    dst,
    caches: [dst[0].buffers],
    /** Writes the runs of `jobs` into the expected caches. */
    expect(jobs: RecallJob[]) {
      for (const j of jobs) {
        placeHndRun(runs.get(`0/${j.head}/${j.page}`)!, dst[0], shape, j.slot, j.head);
      }
    },
    [Symbol.dispose]() {
      destroyLayers(dst);
      pool[Symbol.dispose]();
    },
  };
}

gpuTest(
  "HND slots, staged: runs bound for adjacent places leave in one copy per cache (both stagings)",
  async ({ device }) => {
    const shape: KvLayoutShape = { pageSize: 4, kvHeads: 2, headDim: 8, dtype: "f32" };
    // Places (slot * kvHeads + head): 0 1 | 3 4 | 7, given out of order:
    // three ranges, so six copies; one chunk, so one staging write for the
    // two gathered ranges and the run that stands alone.
    const jobs = [
      { layer: 0, slot: 3, head: 1, page: 5 },
      { layer: 0, slot: 0, head: 1, page: 0 },
      { layer: 0, slot: 1, head: 1, page: 2 },
      { layer: 0, slot: 2, head: 0, page: 4 },
      { layer: 0, slot: 0, head: 0, page: 1 },
    ];
    for (const staging of ["write-buffer", "mapped"] as const) {
      using scene = hndScene(device, staging === "mapped" ? 41 : 42, shape, 6, 4);
      using recaller = createRecaller(device, scene.pool, {
        caches: scene.caches,
        slotLayout: "hnd",
        staging,
      });
      scene.expect(jobs);
      using writes = countCalls(device.queue, "writeBuffer");
      const stats = await recaller.recall(jobs).done;
      assert.equal(stats.chunks, 1, staging);
      assert.equal(stats.copies, 6, `${staging}: placement copies`);
      assert.equal(writes.count, staging === "mapped" ? 0 : 1, `${staging}: staging writes`);
      await assertCaches(device, scene.dst, `coalesced (${staging})`);
    }
  },
);

gpuTest(
  "HND slots, staged: runs alone reach the staging gathered, a long piece of them adjacent in the pool straight from it",
  async ({ device }) => {
    // No two destinations are adjacent, so every run stands alone. In pool
    // order: head 0 page 7 (gathered), head 1 pages 0-3 (one piece of
    // DIRECT_RANGE_BYTES: written from the pool), head 3 page 2 (gathered).
    // Three staging writes (gathered, piece, gathered), two copies a run.
    const shape: KvLayoutShape = { pageSize: 32, kvHeads: 8, headDim: 128, dtype: "f32" };
    assert.equal(4 * kvLayoutSizes(shape).runBytes, DIRECT_RANGE_BYTES);
    using scene = hndScene(device, 44, shape, 8, 11);
    using recaller = createRecaller(device, scene.pool, {
      caches: scene.caches,
      slotLayout: "hnd",
    });
    const jobs = [
      { layer: 0, head: 3, page: 2, slot: 10 },
      ...[0, 1, 2, 3].map((page) => ({ layer: 0, head: 1, page, slot: 2 + 2 * page })),
      { layer: 0, head: 0, page: 7, slot: 0 },
    ];
    scene.expect(jobs);
    using writes = countCalls(device.queue, "writeBuffer");
    using copies = countCalls(GPUCommandEncoder.prototype, "copyBufferToBuffer");
    const stats = await recaller.recall(jobs).done;
    assert.equal(stats.chunks, 1);
    assert.equal(writes.count, 3, "staging writes");
    assert.equal(copies.count, 12, "placement copies");
    await assertCaches(device, scene.dst, "gathered and straight pieces");
  },
);

gpuTest(
  "HND slots, staged: a long range is written straight into the caches, after copies still held, and not when the recall fails",
  async ({ device }) => {
    // A range of DIRECT_RANGE_BYTES or more goes straight to the caches:
    // slot 1 whole (8 heads of 16 KiB) is one such range. Slot 3 head 2 and
    // slot 0 head 2 stand alone, and hold pages 0 and 1 of head 2, adjacent
    // in the pool: one staging write for both. Two direct writes, four
    // copies from the staging buffer.
    const shape: KvLayoutShape = { pageSize: 32, kvHeads: 8, headDim: 128, dtype: "f32" };
    assert.equal(8 * kvLayoutSizes(shape).runBytes / 2, DIRECT_RANGE_BYTES);
    using scene = hndScene(device, 43, shape, 2, 4);
    using recaller = createRecaller(device, scene.pool, {
      caches: scene.caches,
      slotLayout: "hnd",
    });
    const jobs = [
      { layer: 0, head: 2, page: 1, slot: 0 },
      { layer: 0, head: 2, page: 0, slot: 3 },
      ...[...Array(8).keys()].map((head) => ({ layer: 0, head, page: head % 2, slot: 1 })),
    ];
    scene.expect(jobs);
    {
      using writes = countCalls(device.queue, "writeBuffer");
      using copies = countCalls(GPUCommandEncoder.prototype, "copyBufferToBuffer");
      const stats = await recaller.recall(jobs).done;
      assert.equal(writes.count, 3, "writes");
      assert.equal(copies.count, 4, "copies from staging");
      assert.equal(stats.copies, 6, "copies and direct writes");
      await assertCaches(device, scene.dst, "direct range");
    }
    // With deferSubmit, a direct range must land after the held copies of an
    // earlier recall into the same place (a writeBuffer runs before work
    // not submitted yet).
    using held = createRecaller(device, scene.pool, {
      caches: scene.caches,
      slotLayout: "hnd",
      deferSubmit: true,
    });
    const second = [...Array(8).keys()].map((head) => ({ layer: 0, head, page: 1, slot: 2 }));
    scene.expect(second);
    await held.recall([{ layer: 0, head: 5, page: 0, slot: 2 }]).submitted;
    await held.recall(second).submitted;
    device.queue.submit(held.takeCommandBuffers());
    await assertCaches(device, scene.dst, "direct range after held copies");
    // A page that leaves the pool after recall() checked it, before the
    // copies start: the recall rejects, and the caches stay as they were,
    // the direct range (gathered first) included.
    const failing = [
      ...[...Array(8).keys()].map((head) => ({ layer: 0, head, page: 0, slot: 0 })),
      { layer: 0, head: 2, page: 1, slot: 3 },
    ];
    const handle = recaller.recall(failing);
    scene.pool.releasePages(1, 1);
    await assert.rejects(handle.submitted, RangeError);
    await assertCaches(device, scene.dst, "after a failed recall");
  },
);

gpuTest(
  "HND slots, staged: runs with no neighbour among the destinations are chunked in pool order",
  async ({ device }) => {
    // Chunks of two runs: in pool order each holds pages 0 and 1 of one
    // head, adjacent in the pool, so one write each, not one per run.
    const shape: KvLayoutShape = { pageSize: 4, kvHeads: 2, headDim: 8, dtype: "f32" };
    using scene = hndScene(device, 44, shape, 2, 8);
    using recaller = createRecaller(device, scene.pool, {
      caches: scene.caches,
      slotLayout: "hnd",
      chunk: "bytes",
      maxChunkBytes: 2 * scene.pool.runBytes,
    });
    // Places (slot * 2 + head) 0, 8 for head 0 and 5, 13 for head 1.
    const jobs = [
      { layer: 0, head: 0, page: 0, slot: 0 },
      { layer: 0, head: 0, page: 1, slot: 4 },
      { layer: 0, head: 1, page: 0, slot: 2 },
      { layer: 0, head: 1, page: 1, slot: 6 },
    ];
    scene.expect(jobs);
    using writes = countCalls(device.queue, "writeBuffer");
    const stats = await recaller.recall(jobs).done;
    assert.equal(stats.chunks, 2, "chunks");
    assert.equal(writes.count, 2, "one staging write per chunk");
    await assertCaches(device, scene.dst, "apart");
  },
);

gpuTest("NHD host layout: fragmented recall restores K/V bit for bit", async ({ device }) => {
  await roundTrip(device, 7, {
    shape: { pageSize: 4, kvHeads: 4, headDim: 8, dtype: "f16" },
    layout: "nhd",
  });
  await roundTrip(device, 8, {
    shape: { pageSize: 32, kvHeads: 1, headDim: 128, dtype: "f32" },
    layout: "nhd",
  });
});

gpuTest("recalls for several layers in flight at once, awaited later", async ({ device }) => {
  const shape: KvLayoutShape = { pageSize: 8, kvHeads: 2, headDim: 16, dtype: "f32" };
  for (const staging of ["write-buffer", "mapped"] as const) {
    const rng = createRandom(staging === "mapped" ? 21 : 22);
    const L = 3;
    using pool = new HostPagePool({ layers: L, kvHeads: 2, headDim: 16, pageSize: 8 });
    const runs = fillRandomRuns(rng, shape, pool, 6);
    const dst = makeLayers(device, rng, shape, L, 6);
    using recaller = createRecaller(device, pool, {
      caches: (layer) => dst[layer].buffers,
      staging,
      maxChunkBytes: 2 * pool.runBytes,
    });
    const handles = [];
    for (let l = 0; l < L; l++) {
      const jobs: RecallJob[] = [];
      for (let h = 0; h < 2; h++) {
        const pages = shuffled(rng, 6);
        for (let s = 0; s < 6; s++) jobs.push({ layer: l, head: h, page: pages[s], slot: s });
      }
      expectRecalled(runs, dst, shape, jobs);
      handles.push(recaller.recall(jobs));
    }
    assert.equal(recaller.stats().inFlight, 3);
    await Promise.all(handles.map((h) => h.submitted));
    const all = await Promise.all(handles.map((h) => h.done));
    assert.deepEqual(all.map((s) => s.chunks), [6, 6, 6]);
    const totals = recaller.stats();
    assert.equal(totals.recalls, 3);
    assert.equal(totals.pages, 36);
    assert.equal(totals.bytes, 36 * pool.runBytes);
    assert.equal(totals.inFlight, 0);
    await assertCaches(device, dst, `in flight (${staging})`);
    destroyLayers(dst);
  }
});

gpuTest(
  "direct writes are sent to the GPU when a recall is submitted, or at done with deferSubmit (else done would not wait for them)",
  async ({ device }) => {
    const shape: KvLayoutShape = { pageSize: 4, kvHeads: 2, headDim: 8, dtype: "f32" };
    for (const [layout, slotLayout] of [["nhd", "nhd"], ["hnd", "hnd"]] as const) {
      for (const deferSubmit of [false, true]) {
        const rng = createRandom(layout === "nhd" ? 31 : 32);
        using pool = new HostPagePool({ layers: 1, kvHeads: 2, headDim: 8, pageSize: 4, layout });
        const runs = fillRandomRuns(rng, shape, pool, 4);
        const dst = makeLayers(device, rng, shape, 1, 4);
        using recaller = createRecaller(device, pool, {
          caches: () => dst[0].buffers,
          slotLayout,
          hndPath: "direct",
          deferSubmit,
        });
        const jobs: RecallJob[] = [0, 1].flatMap((head) =>
          [0, 1, 2, 3].map((s) => ({ layer: 0, head, page: 3 - s, slot: s }))
        );
        for (const j of jobs) {
          const run = runs.get(`0/${j.head}/${j.page}`)!;
          if (slotLayout === "hnd") placeHndRun(run, dst[0], shape, j.slot, j.head);
          else expectRecalled(runs, dst, shape, [j]);
        }
        const name = `${layout} pool${deferSubmit ? ", deferSubmit" : ""}`;
        {
          // Queued writes run only at the next submit.
          using submits = countCalls(device.queue, "submit");
          const handle = recaller.recall(jobs);
          await handle.submitted;
          assert.equal(submits.count > 0, !deferSubmit, `${name}: submits by submitted`);
          await handle.done;
          assert.ok(submits.count > 0, `${name}: no submit before done`);
        }
        await assertCaches(device, dst, `direct (${name})`);
        destroyLayers(dst);
      }
    }
  },
);

gpuTest(
  "deferSubmit: the copies wait for the caller's submit; a refilled staging buffer submits first",
  async ({ device }) => {
    const shape: KvLayoutShape = { pageSize: 4, kvHeads: 2, headDim: 8, dtype: "f32" };
    const rng = createRandom(31);
    using pool = new HostPagePool({ layers: 2, kvHeads: 2, headDim: 8, pageSize: 4 });
    const runs = fillRandomRuns(rng, shape, pool, 4);
    const dst = makeLayers(device, rng, shape, 2, 4);
    const before = dst.map((d) => ({ ...d, kCache: d.kCache.slice(), vCache: d.vCache.slice() }));
    using recaller = createRecaller(device, pool, {
      caches: (layer) => dst[layer].buffers,
      deferSubmit: true,
      chunk: "bytes",
      maxChunkBytes: 4 * pool.runBytes,
    });
    const jobsOf = (l: number): RecallJob[] =>
      [0, 1].flatMap((h) => [0, 1, 2, 3].map((p) => ({ layer: l, head: h, page: p, slot: 3 - p })));
    const expect = (jobs: RecallJob[]) => expectRecalled(runs, dst, shape, jobs);
    // Two chunks fit the two staging buffers: both are held.
    const first = recaller.recall(jobsOf(0));
    await first.submitted;
    await assertCaches(device, before, "held copies not submitted yet");
    const held = recaller.takeCommandBuffers();
    assert.equal(held.length, 2);
    assert.deepEqual(recaller.takeCommandBuffers(), []);
    device.queue.submit(held);
    expect(jobsOf(0));
    await assertCaches(device, dst, "after the caller's submit");
    // Four chunks: the third refills a held staging buffer, so the first two
    // go out first; the caller submits the last two.
    const both = [...jobsOf(0), ...jobsOf(1)].map((j) => ({ ...j, slot: j.page }));
    const second = recaller.recall(both);
    await second.submitted;
    const rest = recaller.takeCommandBuffers();
    assert.equal(rest.length, 2);
    device.queue.submit(rest);
    expect(both);
    await assertCaches(device, dst, "four chunks");
    assert.throws(
      () => createRecaller(device, pool, { caches: [], deferSubmit: true, staging: "mapped" }),
      /'deferSubmit' needs staging "write-buffer" and buffering "double": received staging "mapped", buffering "double"/,
    );
    assert.throws(
      () => createRecaller(device, pool, { caches: [], deferSubmit: 1 as unknown as boolean }),
      /'deferSubmit' must be a boolean: received 1/,
    );
    destroyLayers(dst);
  },
);

gpuTest(
  "offloader flush(count) maps only the oldest offloads, the ones already submitted",
  async ({ device }) => {
    const shape: KvLayoutShape = { pageSize: 2, kvHeads: 2, headDim: 4, dtype: "f32" };
    const rng = createRandom(32);
    const [layer] = makeLayers(device, rng, shape, 1, 2);
    using pool = new HostPagePool({ layers: 1, kvHeads: 2, headDim: 4, pageSize: 2 });
    using offloader = createOffloader(device, pool);
    const a = device.createCommandEncoder(), b = device.createCommandEncoder();
    const first = offloader.encode(a, { layer: 0, ...layer.buffers, jobs: [{ slot: 0, page: 0 }] });
    const second = offloader.encode(b, {
      layer: 0,
      ...layer.buffers,
      jobs: [{ slot: 1, page: 1 }],
    });
    assert.equal(offloader.unflushed, 2);
    device.queue.submit([a.finish()]);
    assert.throws(() => offloader.flush(3), /'count' must be between 0 and 2: received 3/);
    offloader.flush(1); // the second's encoder is not submitted: mapping its buffer would break it
    assert.equal(offloader.unflushed, 1);
    assert.equal((await first.done).pages, 2);
    assert.equal(pool.isOffloaded({ layer: 0, head: 0, page: 1 }), false);
    device.queue.submit([b.finish()]);
    offloader.flush();
    assert.equal((await second.done).pages, 2);
    for (let h = 0; h < 2; h++) {
      const want = nhdToHndReference(layer, [{ slot: 1, head: h }], shape);
      assert.deepEqual(bytesOf(pool.readRun({ layer: 0, head: h, page: 1 })), bytesOf(want));
    }
    destroyLayers([layer]);
  },
);

gpuTest(
  "offloader ring: reuse after maps, growth when busy, maxBytes rejects with nothing changed",
  async ({ device }) => {
    const shape: KvLayoutShape = { pageSize: 2, kvHeads: 2, headDim: 4, dtype: "f32" };
    const rng = createRandom(5);
    const [layer] = makeLayers(device, rng, shape, 1, 3);
    using pool = new HostPagePool({
      layers: 1,
      kvHeads: 2,
      headDim: 4,
      pageSize: 2,
      chunkPages: 2,
      maxBytes: 2 * 2 * 2 * 64, // two chunks: pages 0..3
    });
    using offloader = createOffloader(device, pool);
    // Three offloads encoded before any flush: all ring buffers busy, so it grows.
    const encoder = device.createCommandEncoder();
    const hs = [0, 1, 2].map((s) =>
      offloader.encode(encoder, { layer: 0, ...layer.buffers, jobs: [{ slot: s, page: s }] })
    );
    assert.equal(offloader.stats().ringBuffers, 3);
    assert.equal(offloader.stats().inFlight, 3);
    device.queue.submit([encoder.finish()]);
    await offloader.drain();
    assert.deepEqual((await Promise.all(hs.map((h) => h.done))).map((s) => s.pages), [2, 2, 2]);
    // Sequential offloads reuse the free ring buffers.
    for (let i = 0; i < 3; i++) {
      await offloader.offloadNow({ layer: 0, ...layer.buffers, jobs: [{ slot: 2, page: 3 }] });
    }
    assert.equal(offloader.stats().ringBuffers, 3);
    assert.equal(offloader.stats().offloads, 6);
    assert.equal(offloader.stats().pages, 12);
    assert.equal(offloader.stats().inFlight, 0);
    const before = { bytes: pool.byteLength, runs: pool.offloadedRuns };
    const keys = [0, 1, 2, 3].flatMap((page) => [0, 1].map((head) => ({ layer: 0, head, page })));
    const contents = keys.map((k) => pool.readRun(k).slice());
    const bad: Array<[() => unknown, ErrorConstructor, RegExp]> = [
      [
        () =>
          offloader.encode(device.createCommandEncoder(), {
            layer: 0,
            ...layer.buffers,
            jobs: [{ slot: 0, page: 4 }],
          }),
        RangeError,
        /'maxBytes' must not be exceeded/,
      ],
      [
        () =>
          offloader.encode(device.createCommandEncoder(), {
            layer: 0,
            ...layer.buffers,
            jobs: [{ slot: 3, page: 0 }],
          }),
        RangeError,
        /'jobs\[0\]\.slot' must be between 0 and 2: received 3/,
      ],
      [
        () =>
          offloader.encode(device.createCommandEncoder(), {
            layer: 1,
            ...layer.buffers,
            jobs: [{ slot: 0, page: 0 }],
          }),
        RangeError,
        /'layer' must be between 0 and 0: received 1/,
      ],
      [
        () =>
          offloader.encode(device.createCommandEncoder(), {
            layer: 0,
            ...layer.buffers,
            jobs: [{ slot: 0, page: 0 }, { slot: 1, page: 0, head: 1 }],
          }),
        RangeError,
        /head 1 page 0 twice/,
      ],
    ];
    for (const [fn, cls, re] of bad) {
      assert.throws(fn, (e: Error) => e instanceof cls && re.test(e.message), re.source);
    }
    assert.deepEqual({ bytes: pool.byteLength, runs: pool.offloadedRuns }, before);
    assert.deepEqual(keys.map((k) => pool.readRun(k)), contents);
    assert.equal(offloader.stats().inFlight, 0);
    // Offloads bigger than one ring buffer are split over several.
    using small = new HostPagePool({ layers: 1, kvHeads: 2, headDim: 4, pageSize: 2 });
    using splitter = createOffloader(device, small, { maxBufferBytes: 2 * small.runBytes });
    const split = await splitter.offloadNow({
      layer: 0,
      ...layer.buffers,
      jobs: [{ slot: 0, page: 5 }, { slot: 1, page: 6 }, { slot: 2, page: 7, head: 1 }],
    });
    assert.equal(split.pages, 5);
    assert.equal(splitter.stats().ringBuffers, 3);
    for (const [slot, page, head] of [[0, 5, 0], [0, 5, 1], [1, 6, 0], [1, 6, 1], [2, 7, 1]]) {
      const want = nhdToHndReference(layer, [{ slot, head }], shape);
      assert.deepEqual(small.readRun({ layer: 0, head, page }), want);
    }
    assert.equal(small.isOffloaded({ layer: 0, head: 0, page: 7 }), false);
    destroyLayers([layer]);
  },
);

gpuTest("recall rejects bad jobs with RangeError before anything moves", async ({ device }) => {
  const shape: KvLayoutShape = { pageSize: 4, kvHeads: 2, headDim: 8, dtype: "f16" };
  const rng = createRandom(9);
  using pool = new HostPagePool({ layers: 2, kvHeads: 2, headDim: 8, pageSize: 4, dtype: "f16" });
  for (let p = 0; p < 3; p++) {
    for (let h = 0; h < 2; h++) {
      pool.writeRun({ layer: 0, head: h, page: p }, randomKv(rng, shape, pool.runElements));
    }
  }
  const dst = makeLayers(device, rng, shape, 2, 3);
  using recaller = createRecaller(device, pool, { caches: dst.map((d) => d.buffers) });
  const ok = { layer: 0, head: 0, page: 1, slot: 0 };
  const bad: Array<[RecallJob[], RegExp]> = [
    [[ok, { layer: 0, head: 1, page: 7, slot: 1 }], /head 1 page 7 \(jobs\[1\]\), never offloaded/],
    [
      [ok, { layer: 1, head: 0, page: 1, slot: 1 }],
      /layer 1 head 0 page 1 \(jobs\[1\]\), never offloaded/,
    ],
    [
      [ok, { layer: 0, head: 1, page: 1, slot: 3 }],
      /'jobs\[1\]\.slot' must be between 0 and 2: received 3/,
    ],
    [[ok, { layer: 0, head: 0, page: 2, slot: 0 }], /layer 0 head 0 slot 0 twice/],
    [
      [ok, { layer: 2, head: 0, page: 1, slot: 0 }],
      /'jobs\[1\]\.layer' must be between 0 and 1: received 2/,
    ],
    [[{ ...ok, head: 2 }], /'jobs\[0\]\.head' must be between 0 and 1: received 2/],
  ];
  for (const [jobs, re] of bad) {
    assert.throws(
      () => recaller.recall(jobs),
      (e: Error) => e instanceof RangeError && re.test(e.message),
      re.source,
    );
  }
  const stats = recaller.stats();
  assert.equal(stats.recalls, 0);
  assert.equal(stats.inFlight, 0);
  await assertCaches(device, dst, "after rejected recalls");
  // The same (head, slot) in different layers, and different heads of one slot, are fine.
  pool.writeRun({ layer: 1, head: 0, page: 1 }, randomKv(rng, shape, pool.runElements));
  const h = recaller.recall([ok, { ...ok, layer: 1 }, { ...ok, head: 1 }]);
  assert.equal((await h.done).pages, 3);
  destroyLayers(dst);
});

gpuTest(
  "disposal destroys every GPU buffer the offloader and recaller created",
  async ({ device }) => {
    const created: GPUBuffer[] = [];
    const destroyed = new Set<GPUBuffer>();
    // A device whose createBuffer records buffers and their destruction.
    const spy = new Proxy(device, {
      get(target, key) {
        if (key === "createBuffer") {
          return (desc: GPUBufferDescriptor) => {
            const b = target.createBuffer(desc);
            const destroy = b.destroy.bind(b);
            b.destroy = () => {
              destroyed.add(b);
              destroy();
            };
            created.push(b);
            return b;
          };
        }
        const value = Reflect.get(target, key, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const shape: KvLayoutShape = { pageSize: 2, kvHeads: 2, headDim: 4, dtype: "f32" };
    const [layer] = makeLayers(device, createRandom(3), shape, 1, 2);
    const pool = new HostPagePool({ layers: 1, kvHeads: 2, headDim: 4, pageSize: 2 });
    for (const staging of ["write-buffer", "mapped"] as const) {
      const offloader = createOffloader(spy, pool);
      const recaller = createRecaller(spy, pool, { caches: [layer.buffers], staging });
      await offloader.offloadNow({ layer: 0, ...layer.buffers, jobs: [{ slot: 0, page: 0 }] });
      await recaller.recall([{ layer: 0, head: 1, page: 0, slot: 1 }]).done;
      offloader[Symbol.dispose]();
      recaller[Symbol.dispose]();
      assert.ok(created.length >= 4);
      assert.deepEqual(created.filter((b) => !destroyed.has(b)).map((b) => b.label), []);
      assert.throws(
        () => recaller.recall([{ layer: 0, head: 1, page: 0, slot: 1 }]),
        (e: Error) => e instanceof TypeError && /disposed/.test(e.message),
      );
    }
    pool[Symbol.dispose]();
    assert.equal(pool.byteLength, 0);
    destroyLayers([layer]);
  },
);

gpuTest(
  "a recall while attention runs on other slots gives the resident attention result",
  async ({ device }) => {
    for (const dtype of ["f32", "f16"] as const) {
      const shape: KvLayoutShape = { pageSize: 8, kvHeads: 2, headDim: 16, dtype };
      const { slotBytes, elementBytes } = kvLayoutSizes(shape);
      const rng = createRandom(dtype === "f16" ? 31 : 32);
      const slots = 10, n = slots * slotBytes / elementBytes;
      // Finite values this time: attention reads them.
      const alloc = (len: number) =>
        dtype === "f16" ? new Float16Array(len) : new Float32Array(len);
      const kAll = alloc(n), vAll = alloc(n);
      for (let i = 0; i < n; i++) {
        kAll[i] = rng.normal();
        vAll[i] = rng.normal();
      }
      // Slots 6..9 of head h hold pages that also live in the pool; the caches
      // under test start with garbage there and get them by recall.
      using pool = new HostPagePool({ layers: 1, kvHeads: 2, headDim: 16, pageSize: 8, dtype });
      const recallJobs: RecallJob[] = [];
      for (let h = 0; h < 2; h++) {
        for (let s = 6; s < slots; s++) {
          const page = 100 + h * 10 + s;
          pool.writeRun(
            { layer: 0, head: h, page },
            nhdToHndReference({ kCache: kAll, vCache: vAll }, [{ slot: s, head: h }], shape),
          );
          recallJobs.push({ layer: 0, head: h, page, slot: s });
        }
      }
      const kTest = kAll.slice(), vTest = vAll.slice();
      const garbage = n * 6 / slots;
      for (let i = garbage; i < n; i++) kTest[i] = vTest[i] = 7;
      const resident = {
        kCache: createBuffer(device, "k resident", USAGE, kAll),
        vCache: createBuffer(device, "v resident", USAGE, vAll),
      };
      const test = {
        kCache: createBuffer(device, "k test", USAGE, kTest),
        vCache: createBuffer(device, "v test", USAGE, vTest),
      };
      using attention = createPagedAttention(device, {
        numQueryHeads: 4,
        numKvHeads: 2,
        headDim: 16,
        pageSize: 8,
        dtype,
      });
      const tables = (ids: number[][]) => ({
        pageTable: new Uint32Array(ids.flat()),
        numPages: [ids[0].length],
        lastPageLen: [5],
        maxPages: ids[0].length,
        numSlots: slots,
      });
      // Attention over slots 0..5 only (per-head order differs), then over all.
      using early = attention.plan(tables([[0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4]]));
      using late = attention.plan(
        tables([[9, 0, 6, 1, 7, 2, 8, 3, 4, 5], [5, 6, 3, 7, 1, 8, 0, 9, 2, 4]]),
      );
      const q = createBuffer(
        device,
        "q",
        USAGE,
        Float32Array.from({ length: 4 * 16 }, () => rng.normal()),
      );
      const run = (plan: typeof early, caches: NhdCacheBuffers) => {
        const out = createBuffer(device, "out", USAGE, 4 * 16 * 4);
        const encoder = device.createCommandEncoder();
        plan.encode(encoder, { q, ...caches, out });
        device.queue.submit([encoder.finish()]);
        return () => readBuffer(device, out).finally(() => out.destroy());
      };
      const wantEarly = new Uint8Array(await run(early, resident)());
      const wantLate = new Uint8Array(await run(late, resident)());
      for (const staging of ["mapped", "write-buffer"] as const) {
        using recaller = createRecaller(device, pool, {
          caches: [test],
          staging,
          maxChunkBytes: 2 * pool.runBytes,
        });
        const handle = recaller.recall(recallJobs);
        const reads = [run(early, test)]; // before the first chunk
        await new Promise((r) => setTimeout(r, 3));
        reads.push(run(early, test)); // between chunks
        await handle.submitted;
        reads.push(run(early, test));
        reads.push(run(late, test)); // queue order puts it after the recall
        await handle.done;
        const got = await Promise.all(reads.map((r) => r()));
        for (const g of got.slice(0, 3)) {
          assert.deepEqual(
            new Uint8Array(g),
            wantEarly,
            `early ${dtype} ${staging}`,
          );
        }
        assert.deepEqual(new Uint8Array(got[3]), wantLate, `late ${dtype} ${staging}`);
        // Reset the recall targets for the next staging mode.
        device.queue.writeBuffer(test.kCache, 0, kTest);
        device.queue.writeBuffer(test.vCache, 0, vTest);
      }
      for (const b of [resident.kCache, resident.vCache, test.kCache, test.vCache, q]) b.destroy();
    }
  },
);
