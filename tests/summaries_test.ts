import assert from "node:assert/strict";
import { gpuTest, noGpuErrors } from "./_gpu.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { type KvDtype, toKvArray } from "../lib/gpu/dtype.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import {
  createPageSummarizer,
  type PageSummaryJob,
  summarizePages,
  summaryFloatsPerPage,
  type SummaryKind,
} from "../lib/kernels/summaries.ts";
import { pageSummariesReference } from "../lib/kernels/summaries_reference.ts";
import type { SlotLayout } from "../lib/kernels/slot_layout.ts";
import { assertArraysEqual, assertClose } from "./_assert.ts";

interface Case {
  slots: number;
  pageSize: number;
  numKvHeads: number;
  headDim: number;
  dtype: KvDtype;
  summary: SummaryKind;
  slotLayout?: SlotLayout;
}

/** Random keys, and jobs over a shuffled subset of slots with random page lengths. */
function makeCase(seed: number, c: Case) {
  const rng = createRandom(seed);
  const length = c.slots * c.pageSize * c.numKvHeads * c.headDim;
  const kCache = toKvArray(c.dtype, randomNormalArray(rng, length, 2));
  const shuffled = (n: number) => {
    const a = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  };
  const slots = shuffled(c.slots);
  const numPages = c.slots + 3;
  const pages = shuffled(numPages);
  const jobs: PageSummaryJob[] = slots.slice(0, Math.max(1, c.slots - 1)).map((srcSlot, i) => ({
    srcSlot,
    dstPage: pages[i],
    // Full pages and partial ones, including a single token.
    numTokens: i % 3 === 0 ? c.pageSize : 1 + rng.int(c.pageSize),
  }));
  return { kCache, jobs, numPages };
}

function assertCloseRel(got: Float32Array, want: Float32Array, rel: number, label: string): void {
  assertClose(got, want, { abs: rel, rel }, label);
}

const CASES: Case[] = [];
for (const dtype of ["f32", "f16"] as const) {
  for (const summary of ["minmax", "box"] as const) {
    CASES.push(
      { slots: 9, pageSize: 1, numKvHeads: 2, headDim: 8, dtype, summary },
      { slots: 6, pageSize: 8, numKvHeads: 3, headDim: 64, dtype, summary },
      { slots: 4, pageSize: 32, numKvHeads: 2, headDim: 128, dtype, summary },
      // An odd row length: f16 is read one element at a time.
      { slots: 5, pageSize: 3, numKvHeads: 1, headDim: 5, dtype, summary },
      // HND slots ([slot][Hkv][P][d]); an odd head of an even row.
      { slots: 6, pageSize: 8, numKvHeads: 3, headDim: 64, dtype, summary, slotLayout: "hnd" },
      { slots: 9, pageSize: 1, numKvHeads: 2, headDim: 8, dtype, summary, slotLayout: "hnd" },
      { slots: 5, pageSize: 3, numKvHeads: 2, headDim: 5, dtype, summary, slotLayout: "hnd" },
    );
  }
}

gpuTest(
  "summaries match the CPU oracle (page sizes, partial pages, kinds, dtypes)",
  async (gpu) => {
    for (const [i, c] of CASES.entries()) {
      const odd = c.slotLayout === "hnd"
        ? c.headDim % 2 === 1
        : (c.numKvHeads * c.headDim) % 2 === 1;
      if (c.dtype === "f16" && odd && !gpu.f16) continue;
      const inputs = makeCase(100 + i, c);
      const options = {
        numKvHeads: c.numKvHeads,
        headDim: c.headDim,
        pageSize: c.pageSize,
        summary: c.summary,
        slotLayout: c.slotLayout,
      };
      const got = await noGpuErrors(gpu.device, () => summarizePages(gpu.device, inputs, options));
      const want = pageSummariesReference(inputs, options);
      const label = JSON.stringify(c);
      if (c.summary === "minmax") {
        // min and max of the stored values are exact.
        assertArraysEqual(got, want, label);
      } else {
        assertCloseRel(got, want, 2e-6, label);
      }
      // Box bounds enclose the center; min/max bounds enclose every key.
      for (let p = 0; p < inputs.numPages; p++) {
        const base = p * summaryFloatsPerPage(options);
        for (let h = 0; h < c.numKvHeads; h++) {
          for (let ch = 0; ch < c.headDim; ch++) {
            const o = base + h * 2 * c.headDim + ch;
            assert.ok(got[o] <= got[o + c.headDim], `${label}: lower <= upper`);
          }
        }
      }
    }
  },
);

gpuTest(
  "summarizer: one plan, two layers in one submission, bulk jobs, other pages kept",
  async (gpu) => {
    const { device } = gpu;
    const numKvHeads = 2, headDim = 8, pageSize = 4;
    const options = { numKvHeads, headDim, pageSize, summary: "box" as const };
    const rng = createRandom(7);
    const slots = 50, numPages = 64;
    const layers = [0, 1].map(() =>
      randomNormalArray(rng, slots * pageSize * numKvHeads * headDim)
    );
    const jobs = Array.from({ length: 40 }, (_, i) => ({
      srcSlot: (i * 13) % slots,
      dstPage: numPages - 1 - i,
      numTokens: 1 + (i % pageSize),
    }));
    const pageFloats = summaryFloatsPerPage(options);
    const sentinel = new Float32Array(numPages * pageFloats).fill(-123.5);
    const storage = GPUBufferUsage.STORAGE;
    const kBuffers = layers.map((k, l) => createBuffer(device, `k${l}`, storage, k));
    const sBuffers = layers.map((_, l) =>
      createBuffer(device, `s${l}`, storage | GPUBufferUsage.COPY_SRC, sentinel)
    );
    using summarizer = createPageSummarizer(device, options);
    using plan = summarizer.plan(jobs);
    assert.equal(plan.numJobs, 40);
    const encoder = device.createCommandEncoder();
    for (let l = 0; l < 2; l++) {
      plan.encode(encoder, { kCache: kBuffers[l], summaries: sBuffers[l] });
    }
    device.queue.submit([encoder.finish()]);
    for (let l = 0; l < 2; l++) {
      const got = new Float32Array(await readBuffer(device, sBuffers[l]));
      const want = pageSummariesReference({ kCache: layers[l], jobs, numPages }, options);
      const written = new Set(jobs.map((j) => j.dstPage));
      for (let p = 0; p < numPages; p++) {
        const g = got.subarray(p * pageFloats, (p + 1) * pageFloats);
        if (written.has(p)) {
          assertCloseRel(
            g,
            want.subarray(p * pageFloats, (p + 1) * pageFloats),
            2e-6,
            `layer ${l}`,
          );
        } else {
          assert.ok(g.every((v) => v === -123.5), `page ${p} untouched`);
        }
      }
    }
    // Zero jobs encode nothing.
    plan.update([]);
    const empty = device.createCommandEncoder();
    plan.encode(empty, { kCache: kBuffers[0], summaries: sBuffers[0] });
    device.queue.submit([empty.finish()]);
    for (const b of [...kBuffers, ...sBuffers]) b.destroy();
  },
);

gpuTest(
  "two plans of one summarizer recorded into one submission keep their own jobs",
  async (gpu) => {
    const { device } = gpu;
    const options = { numKvHeads: 1, headDim: 2, pageSize: 2 };
    // Slot 0: tokens (1, 4), (3, -2); slot 1: tokens (5, 0), (-1, 2).
    const keys = new Float32Array([1, 4, 3, -2, 5, 0, -1, 2]);
    const kCache = createBuffer(device, "k", GPUBufferUsage.STORAGE, keys);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
    const a = createBuffer(device, "summaries a", usage, 2 * 16);
    const b = createBuffer(device, "summaries b", usage, 2 * 16);
    using summarizer = createPageSummarizer(device, options);
    using first = summarizer.plan([{ srcSlot: 0, dstPage: 1, numTokens: 2 }]);
    using second = summarizer.plan([{ srcSlot: 1, dstPage: 0, numTokens: 2 }]);
    const encoder = device.createCommandEncoder();
    first.encode(encoder, { kCache, summaries: a });
    second.encode(encoder, { kCache, summaries: b });
    device.queue.submit([encoder.finish()]);
    const inputs = (jobs: PageSummaryJob[]) => ({ kCache: keys, jobs, numPages: 2 });
    assertArraysEqual(
      new Float32Array(await readBuffer(device, a)),
      pageSummariesReference(inputs([{ srcSlot: 0, dstPage: 1, numTokens: 2 }]), options),
      "first plan",
    );
    assertArraysEqual(
      new Float32Array(await readBuffer(device, b)),
      pageSummariesReference(inputs([{ srcSlot: 1, dstPage: 0, numTokens: 2 }]), options),
      "second plan",
    );
    for (const x of [kCache, a, b]) x.destroy();
  },
);

gpuTest("f16 keys convert exactly: every half bit pattern", async (gpu) => {
  const { device } = gpu;
  // 32768 slots of one token holding two halves each: all 65536 patterns.
  const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const halves = new Float16Array(bits.buffer);
  const options = { numKvHeads: 1, headDim: 2, pageSize: 1, dtype: "f16" as const };
  const count = 32768;
  const jobs = new Uint32Array(count * 3);
  for (let i = 0; i < count; i++) jobs.set([i, i, 1], 3 * i);
  const kCache = createBuffer(device, "all halves", GPUBufferUsage.STORAGE, bits);
  const summaries = createBuffer(
    device,
    "all halves summaries",
    GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
    count * 4 * 4,
  );
  using summarizer = createPageSummarizer(device, options);
  using plan = summarizer.plan(jobs);
  const encoder = device.createCommandEncoder();
  plan.encode(encoder, { kCache, summaries });
  device.queue.submit([encoder.finish()]);
  const got = new Float32Array(await readBuffer(device, summaries));
  for (let i = 0; i < 65536; i++) {
    const slot = i >> 1, c = i & 1;
    const want = halves[i];
    for (const v of [got[slot * 4 + c], got[slot * 4 + 2 + c]]) {
      const same = Number.isNaN(want) ? Number.isNaN(v) : Object.is(v, want);
      if (!same) assert.fail(`half 0x${i.toString(16)}: got ${v}, want ${want}`);
    }
  }
  kCache.destroy();
  summaries.destroy();
});

gpuTest("summarizer folds more than 65535 jobs into the grid", async (gpu) => {
  const options = { numKvHeads: 1, headDim: 4, pageSize: 1 };
  const count = 70000;
  const kCache = new Float32Array(count * 4);
  for (let i = 0; i < kCache.length; i++) kCache[i] = (i * 37) % 1001;
  const jobs = new Uint32Array(count * 3);
  for (let i = 0; i < count; i++) jobs.set([i, count - 1 - i, 1], 3 * i);
  const inputs = { kCache, jobs, numPages: count };
  const got = await noGpuErrors(gpu.device, () => summarizePages(gpu.device, inputs, options));
  assertArraysEqual(got, pageSummariesReference(inputs, options), "many jobs");
});

Deno.test("summary oracle: HND slots read each head's run", () => {
  // One slot, P = 2, two heads, d = 1: HND [h0 t0, h0 t1, h1 t0, h1 t1].
  const kCache = new Float32Array([1, 5, -3, 2]);
  const jobs = [{ srcSlot: 0, dstPage: 0, numTokens: 2 }];
  const shape = { numKvHeads: 2, headDim: 1, pageSize: 2 };
  const hnd = pageSummariesReference({ kCache, jobs, numPages: 1 }, {
    ...shape,
    slotLayout: "hnd",
  });
  assert.deepEqual([...hnd], [1, 5, -3, 2]);
  const nhd = pageSummariesReference({ kCache, jobs, numPages: 1 }, shape);
  assert.deepEqual([...nhd], [-3, 1, 2, 5]);
});

Deno.test("summary oracle: hand-computed min/max and box", () => {
  // 1 slot of 4 tokens, 1 head, d = 1: keys 0, 2, 3, 7.
  const inputs = {
    kCache: new Float32Array([0, 2, 3, 7]),
    jobs: [{ srcSlot: 0, dstPage: 1, numTokens: 3 }],
    numPages: 2,
  };
  const options = { numKvHeads: 1, headDim: 1, pageSize: 4 };
  assert.deepEqual([...pageSummariesReference(inputs, options)], [0, 0, 0, 3]);
  // Box over 0, 2, 3: center 1.5, spread (1.5 + 0.5 + 1.5) / 3.
  const box = pageSummariesReference(inputs, { ...options, summary: "box" });
  assert.equal(box[2], Math.fround(1.5 - 3.5 / 3));
  assert.equal(box[3], Math.fround(1.5 + 3.5 / 3));
});

gpuTest("summaries: bad input throws before GPU work", async (gpu) => {
  const { device } = gpu;
  const options = { numKvHeads: 1, headDim: 2, pageSize: 2 };
  const kCache = new Float32Array(8); // 2 slots
  const ok = { kCache, jobs: [{ srcSlot: 1, dstPage: 0, numTokens: 2 }], numPages: 1 };
  const cases: Array<[string, () => unknown, ErrorConstructor, RegExp]> = [
    [
      "unknown summary",
      // deno-lint-ignore no-explicit-any
      () => pageSummariesReference(ok, { ...options, summary: "mean" as any }),
      TypeError,
      /'summary' must be one of "minmax", "box": received "mean"/,
    ],
    [
      "page size 0",
      () => pageSummariesReference(ok, { ...options, pageSize: 0 }),
      RangeError,
      /'pageSize' must be at least 1: received 0/,
    ],
    [
      "kCache length",
      () => pageSummariesReference({ ...ok, kCache: new Float32Array(7) }, options),
      RangeError,
      /'kCache' must have a length that is a positive multiple of the slot length 4: received length 7/,
    ],
    [
      "kCache dtype",
      () => pageSummariesReference(ok, { ...options, dtype: "f16" }),
      TypeError,
      /'kCache' must be a Float16Array for dtype "f16"/,
    ],
    [
      "numTokens 0",
      () =>
        pageSummariesReference(
          { ...ok, jobs: [{ srcSlot: 0, dstPage: 0, numTokens: 0 }] },
          options,
        ),
      RangeError,
      /'jobs\[0\].numTokens' must be between 1 and 2: received 0/,
    ],
    [
      "numTokens > P",
      () =>
        pageSummariesReference(
          { ...ok, jobs: [{ srcSlot: 0, dstPage: 0, numTokens: 3 }] },
          options,
        ),
      RangeError,
      /'jobs\[0\].numTokens' must be between 1 and 2: received 3/,
    ],
    [
      "slot out of range",
      () =>
        pageSummariesReference(
          { ...ok, jobs: [{ srcSlot: 2, dstPage: 0, numTokens: 1 }] },
          options,
        ),
      RangeError,
      /'srcSlot' must be below the 2 slots of 'kCache': received 2/,
    ],
    [
      "page out of range",
      () =>
        pageSummariesReference(
          { ...ok, jobs: [{ srcSlot: 0, dstPage: 1, numTokens: 1 }] },
          options,
        ),
      RangeError,
      /'dstPage' must be below 'numPages' 1: received 1/,
    ],
    [
      "duplicate page",
      () =>
        pageSummariesReference({
          ...ok,
          numPages: 3,
          jobs: [{ srcSlot: 0, dstPage: 2, numTokens: 1 }, {
            srcSlot: 1,
            dstPage: 2,
            numTokens: 1,
          }],
        }, options),
      RangeError,
      /'dstPage' must be unique: received page 2 twice/,
    ],
    [
      "flat jobs length",
      () => pageSummariesReference({ ...ok, jobs: new Uint32Array(4) }, options),
      RangeError,
      /triples: received length 4/,
    ],
    [
      "negative slot",
      () =>
        pageSummariesReference(
          { ...ok, jobs: [{ srcSlot: -1, dstPage: 0, numTokens: 1 }] },
          options,
        ),
      RangeError,
      /'jobs\[0\].srcSlot' must be between 0 and 4294967295: received -1/,
    ],
  ];
  for (const [name, fn, type, message] of cases) {
    assert.throws(
      fn,
      (e: unknown) => e instanceof type && message.test((e as Error).message),
      name,
    );
  }
  await assert.rejects(
    () =>
      summarizePages(
        device,
        { ...ok, kCache: new Float32Array([0, 1, NaN, 0, 0, 0, 0, 0]) },
        options,
      ),
    (e: unknown) =>
      e instanceof RangeError &&
      /'kCache' must hold only finite values: received NaN at index 2/.test((e as Error).message),
  );
  await assert.rejects(
    () => summarizePages(device, { ...ok, numPages: 0 }, options),
    RangeError,
  );

  // Encode checks the buffers; a failed plan keeps the previous one.
  using summarizer = createPageSummarizer(device, options);
  const plan = summarizer.plan(ok.jobs);
  assert.throws(() => plan.update([{ srcSlot: 0, dstPage: 0, numTokens: 9 }]), RangeError);
  assert.throws(() => summarizer.plan([{ srcSlot: 0, dstPage: 0, numTokens: 9 }]), RangeError);
  assert.equal(plan.numJobs, 1);
  const storage = GPUBufferUsage.STORAGE;
  const oneSlot = createBuffer(device, "k one slot", storage, 16);
  const twoSlots = createBuffer(device, "k two slots", storage, 32);
  const noPages = createBuffer(device, "s small", storage, 8);
  const onePage = createBuffer(device, "s one page", storage, 16);
  const notStorage = createBuffer(device, "s copy", GPUBufferUsage.COPY_DST, 16);
  const encoder = device.createCommandEncoder();
  assert.throws(
    () => plan.encode(encoder, { kCache: oneSlot, summaries: onePage }),
    /'srcSlot' must be below the 1 slots of 'kCache': received 1/,
  );
  assert.throws(
    () => plan.encode(encoder, { kCache: twoSlots, summaries: noPages }),
    /'dstPage' must be below the 0 pages of 'summaries': received 0/,
  );
  assert.throws(
    () => plan.encode(encoder, { kCache: twoSlots, summaries: notStorage }),
    (e: unknown) => e instanceof TypeError && /'summaries' must have usage 128/.test(String(e)),
  );
  // A slice of the key cache: its slots count from the slice's start.
  assert.throws(
    () => plan.encode(encoder, { kCache: { buffer: twoSlots, offset: 16 }, summaries: onePage }),
    /'srcSlot' must be below the 1 slots of 'kCache': received 1/,
  );
  plan[Symbol.dispose]();
  assert.throws(
    () => plan.encode(encoder, { kCache: twoSlots, summaries: onePage }),
    (e: unknown) => e instanceof TypeError && /the plan must not be disposed/.test(String(e)),
  );
  summarizer[Symbol.dispose]();
  assert.throws(
    () => summarizer.plan(ok.jobs),
    (e: unknown) =>
      e instanceof TypeError && /the page summarizer must not be disposed/.test(String(e)),
  );
  device.queue.submit([encoder.finish()]);
  for (const b of [oneSlot, twoSlots, noPages, onePage, notStorage]) b.destroy();
});

gpuTest("f16 summaries need shader-f16 only for odd row lengths", async () => {
  using plain = await requestGpu({ f16: false });
  const options = { numKvHeads: 1, headDim: 3, pageSize: 2, dtype: "f16" as const };
  assert.throws(
    () => createPageSummarizer(plain.device, options),
    (e: unknown) =>
      e instanceof TypeError && /needs the device feature 'shader-f16'/.test(String(e)),
  );
  // Even rows are read as u32 pairs.
  const inputs = {
    kCache: Float16Array.from([1, -2, 0.5, 3, 7, -1, 2, 2]),
    jobs: [{ srcSlot: 0, dstPage: 0, numTokens: 2 }],
    numPages: 1,
  };
  const even = { ...options, headDim: 4 };
  const got = await noGpuErrors(plain.device, () => summarizePages(plain.device, inputs, even));
  assert.deepEqual([...got], [1, -2, 0.5, 2, 7, -1, 2, 3]);
  assert.deepEqual(got, pageSummariesReference(inputs, even));
});
