import assert from "node:assert/strict";
import { gpuTest } from "./_gpu.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import {
  createPageTableBuilder,
  EMPTY_PAGE,
  type PageTableShape,
} from "../lib/kernels/page_table.ts";
import { pageTableReference } from "../lib/kernels/page_table_reference.ts";
import { pageRegions } from "../lib/memory/page_plan.ts";
import { createRandom } from "../lib/workloads/random.ts";

const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

gpuTest("page tables built on the GPU equal the CPU reference", async ({ device }) => {
  const rng = createRandom(7);
  for (let trial = 0; trial < 24; trial++) {
    const hkv = 1 + Math.floor(rng.next() * 4);
    const k = 1 + Math.floor(rng.next() * 5);
    const S = Math.floor(rng.next() * 3);
    const W = 1 + Math.floor(rng.next() * 3);
    const pageSize = 1 + Math.floor(rng.next() * 8);
    const maxPages = 40;
    const identity = trial % 3 === 0;
    const cache = Math.floor(rng.next() * 3);
    const slotsPerSeq = identity ? maxPages : S + W + k + cache;
    const shape: PageTableShape = {
      numKvHeads: hkv,
      selectPages: k,
      maxPages,
      sinkPages: S,
      windowPages: W,
      slotsPerSeq,
      identity,
    };
    const B = 1 + Math.floor(rng.next() * 3);
    // Every other trial has a sliding window (sinks before it left out,
    // candidates from its first page).
    const slidingWindow = trial % 2 === 0 ? 0 : 1 + Math.floor(rng.next() * 12 * pageSize);
    const sequences = Array.from({ length: B }, () => {
      const tokens = 1 + Math.floor(rng.next() * (maxPages * pageSize - 1));
      const budget = { pageSize, sinkPages: S, windowPages: W, selectPages: k };
      return pageRegions(tokens, budget, slidingWindow);
    });
    const rows = B * hkv;
    // Selections: distinct candidate pages per head (ids past maxPages become holes too).
    const pick = () =>
      Uint32Array.from({ length: rows * k }, () => Math.floor(rng.next() * (maxPages + 2)));
    const fresh = pick();
    const spec = pick();
    const flags = Uint32Array.from({ length: rows }, () => Math.floor(rng.next() * 3));
    const residency = new Uint32Array(rows * maxPages).fill(EMPTY_PAGE);
    for (let r = 0; r < rows; r++) {
      for (let s = 0; s < k + cache; s++) {
        const p = Math.floor(rng.next() * maxPages);
        if (residency[r * maxPages + p] === EMPTY_PAGE) residency[r * maxPages + p] = s;
      }
    }
    const useFlags = trial % 2 === 1;
    const useBest = trial % 4 === 3;
    const best = pick();
    const builder = createPageTableBuilder(device, shape);
    using plan = builder.plan({ sequences, useFlags, useBest });
    const m = builder.maxEntries;
    const bufs = {
      fresh: createBuffer(device, "fresh", usage, fresh),
      spec: createBuffer(device, "spec", usage, spec),
      flags: createBuffer(device, "flags", usage, flags),
      residency: createBuffer(device, "residency", usage, residency),
      table: createBuffer(device, "table", usage, rows * m * 4),
      pages: createBuffer(device, "pages", usage, rows * m * 4),
      hits: createBuffer(device, "hits", usage, rows * 4),
      best: createBuffer(device, "best", usage, best),
    };
    const enc = device.createCommandEncoder();
    plan.encode(enc, bufs);
    device.queue.submit([enc.finish()]);
    const [table, pages, hits] = await Promise.all(
      [bufs.table, bufs.pages, bufs.hits].map(async (b) =>
        new Uint32Array(await readBuffer(device, b, b.size))
      ),
    );
    const want = pageTableReference(shape, {
      sequences,
      fresh,
      spec: useFlags ? spec : undefined,
      flags: useFlags ? flags : undefined,
      residency,
      best: useBest ? best : undefined,
    });
    assert.deepEqual(want.entries, [...plan.entries], `trial ${trial} entries`);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < hkv; h++) {
        const row = (b * hkv + h) * m;
        const n = plan.entries[b];
        assert.deepEqual(
          [...table.subarray(row, row + n)],
          [...want.table.subarray(row, row + n)],
          `trial ${trial} table b${b} h${h}`,
        );
        assert.deepEqual(
          [...pages.subarray(row, row + n)],
          [...want.pages.subarray(row, row + n)],
          `trial ${trial} pages`,
        );
        // The last entry is the partial last page, never a hole.
        assert.equal(pages[row + n - 1], sequences[b].numPages - 1);
      }
    }
    assert.deepEqual([...hits], [...want.hits]);
    Object.values(bufs).forEach((b) => b.destroy());
  }
});

gpuTest("page-table plan refuses bad regions and buffers before GPU work", ({ device }) => {
  const builder = createPageTableBuilder(device, {
    numKvHeads: 2,
    selectPages: 2,
    maxPages: 8,
    sinkPages: 1,
    windowPages: 1,
    slotsPerSeq: 8,
    identity: true,
  });
  assert.throws(() => builder.plan({ sequences: [], useFlags: false }), TypeError);
  assert.throws(
    () =>
      builder.plan({
        sequences: [{ sinkCount: 1, windowStart: 3, numPages: 9, candidateCount: 2 }],
        useFlags: false,
      }),
    /numPages' must be an integer in \[1, 8\]|numPages/,
  );
  using plan = builder.plan({
    sequences: [{ sinkCount: 1, windowStart: 3, numPages: 4, candidateCount: 2 }],
    useFlags: true,
  });
  const small = createBuffer(device, "small", usage, 4);
  assert.throws(() =>
    plan.encode(device.createCommandEncoder(), {
      fresh: small,
      table: small,
      pages: small,
      hits: small,
    }), /'fresh' must be a GPUBuffer of at least 16 bytes: received a buffer of 4/);
  // Table and page ids may share a buffer, but not overlap in it.
  const shared = createBuffer(device, "shared", usage, 512);
  const four = createBuffer(device, "four", usage, 16);
  assert.throws(() =>
    plan.encode(device.createCommandEncoder(), {
      fresh: four,
      spec: four,
      flags: four,
      table: { buffer: shared, offset: 0, size: 256 },
      pages: { buffer: shared, offset: 0, size: 256 },
      hits: four,
    }), /'pages' must not overlap 'table' in their buffer/);
  for (const b of [small, shared, four]) b.destroy();
});
