// Paged decode attention against the plain-loop CPU oracle, and bad input.
import assert from "node:assert/strict";
import {
  type AttentionShape,
  createPagedAttention,
  EMPTY_SLOT,
  pagedAttention,
  type PagedAttentionInputs,
  type PagedAttentionOptions,
  type PagedAttentionResult,
} from "../lib/kernels/attention.ts";
import { pagedAttentionReference } from "../lib/kernels/attention_reference.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, type Random, randomNormalArray } from "../lib/workloads/random.ts";
import { gpuTest, testGpu } from "./_gpu.ts";
import { assertClose } from "./_assert.ts";

// f32: the kernel works in f32, the oracle in f64. f16: both read the same
// rounded values (the kernel unpacks halves exactly), so only the f32
// arithmetic differs; the bound is looser to stay robust.
const TOL = { f32: 1e-5, f16: 1e-4 };

interface Case {
  shape: AttentionShape;
  lengths: number[];
  /** Extra slots beyond those used, so slot ids are sparse. */
  spareSlots?: number;
  qScale?: number;
  f16?: boolean;
}

/** Random inputs: every (sequence, KV head) gets its own shuffled slots. */
function makeInputs(rng: Random, c: Case): PagedAttentionInputs {
  const { numQueryHeads: hq, numKvHeads: hkv, headDim: d, pageSize: P } = c.shape;
  const numPages = c.lengths.map((n) => Math.ceil(n / P));
  const lastPageLen = c.lengths.map((n, b) => n - (numPages[b] - 1) * P);
  const maxPages = Math.max(...numPages) + 1; // one unused column of padding
  const batch = c.lengths.length;
  // Slots are shared by the heads: each head draws its own permutation.
  const numSlots = batch * Math.max(...numPages) + (c.spareSlots ?? 3);
  const pageTable = new Uint32Array(batch * hkv * maxPages).fill(0xffffffff);
  for (let h = 0; h < hkv; h++) {
    const perm = shuffled(rng, numSlots);
    let next = 0;
    for (let b = 0; b < batch; b++) {
      for (let p = 0; p < numPages[b]; p++) pageTable[(b * hkv + h) * maxPages + p] = perm[next++];
    }
  }
  const elems = numSlots * P * hkv * d;
  const k = randomNormalArray(rng, elems), v = randomNormalArray(rng, elems);
  return {
    q: randomNormalArray(rng, batch * hq * d, c.qScale ?? 1),
    kCache: c.f16 ? Float16Array.from(k) : k,
    vCache: c.f16 ? Float16Array.from(v) : v,
    pageTable,
    numPages,
    lastPageLen,
    maxPages,
  };
}

function shuffled(rng: Random, n: number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

function assertResultClose(
  actual: PagedAttentionResult,
  expected: PagedAttentionResult,
  tol: number,
  label: string,
) {
  for (const key of ["out", "lse"] as const) {
    assertClose(actual[key], expected[key], { abs: tol, rel: tol }, `${label} ${key}`);
  }
}

async function checkCase(device: GPUDevice, seed: number, c: Case, tuning = {}) {
  const inputs = makeInputs(createRandom(seed), c);
  const options: PagedAttentionOptions = { ...c.shape, ...tuning };
  const got = await pagedAttention(device, inputs, options);
  const want = pagedAttentionReference(inputs, c.shape);
  assertResultClose(got, want, c.f16 ? TOL.f16 : TOL.f32, JSON.stringify({ ...c, ...tuning }));
}

gpuTest("attention: head_dim 8, page size 1, no GQA, batch 3 of different lengths", async (gpu) => {
  await checkCase(gpu.device, 1, {
    shape: { numQueryHeads: 3, numKvHeads: 3, headDim: 8, pageSize: 1 },
    lengths: [5, 17, 1],
  });
});

gpuTest("attention: group of 7, head_dim 64, page size 8, partial last page", async (gpu) => {
  await checkCase(gpu.device, 2, {
    shape: { numQueryHeads: 7, numKvHeads: 1, headDim: 64, pageSize: 8 },
    lengths: [100],
    qScale: 3, // peaky softmax: the running max moves
  });
});

gpuTest("attention: group of 2, several token lanes, odd chunking, no prefetch", async (gpu) => {
  await checkCase(gpu.device, 3, {
    shape: { numQueryHeads: 4, numKvHeads: 2, headDim: 64, pageSize: 8 },
    lengths: [61, 8, 130],
  }, { tokenLanes: 4, tokensPerLane: 3, prefetchValues: false, wordsPerLane: 2 });
});

gpuTest(
  "attention: Llama-like group of 4, head_dim 128, page 32, long sequence split",
  async (gpu) => {
    const c: Case = {
      shape: { numQueryHeads: 8, numKvHeads: 2, headDim: 128, pageSize: 32 },
      lengths: [1000, 33, 64],
    };
    const inputs = makeInputs(createRandom(4), c);
    using attention = createPagedAttention(gpu.device, c.shape);
    const { batch, numSlots, maxPages } = {
      batch: 3,
      numSlots: inputs.kCache.length / (32 * 2 * 128),
      maxPages: inputs.maxPages!,
    };
    using plan = attention.plan({ ...inputs, maxPages, numSlots, batch });
    assert.ok(plan.numSplits >= 4, `long sequence split in ${plan.numSplits}`);
    await checkCase(gpu.device, 4, c);
  },
);

gpuTest(
  "attention: f16 KV, group of 4 and head_dim 128; group of 2 and head_dim 8",
  async (gpu) => {
    await checkCase(gpu.device, 5, {
      shape: { numQueryHeads: 8, numKvHeads: 2, headDim: 128, pageSize: 32 },
      lengths: [300, 45],
      f16: true,
    });
    // f16 needs no shader-f16: the kernel converts half bit patterns itself.
    using plain = await requestGpu({ f16: false });
    assert.equal(plain.device.features.has("shader-f16"), false);
    await checkCase(plain.device, 6, {
      shape: { numQueryHeads: 2, numKvHeads: 1, headDim: 8, pageSize: 8 },
      lengths: [9, 64, 3],
      f16: true,
    });
  },
);

gpuTest("attention: every finite half converts exactly", async (gpu) => {
  // One-token sequences with q = 0 return their value row unchanged (-0
  // comes back as +0: the accumulator starts at +0).
  const halves: number[] = [];
  for (let bits = 0; bits < 0x10000; bits++) {
    if ((bits & 0x7c00) !== 0x7c00) halves.push(bits); // skip infinities and NaNs
  }
  const d = 128, batch = halves.length / d; // 63488 = 496 * 128
  const bits = new Uint16Array(halves);
  const vCache = new Float16Array(bits.buffer);
  const pageTable = new Uint32Array(batch).map((_, b) => batch - 1 - b); // reversed slots
  const { out } = await pagedAttention(gpu.device, {
    q: new Float32Array(batch * d),
    kCache: new Float16Array(vCache.length),
    vCache,
    pageTable,
    numPages: new Array(batch).fill(1),
    lastPageLen: new Array(batch).fill(1),
  }, { numQueryHeads: 1, numKvHeads: 1, headDim: d, pageSize: 1 });
  for (let b = 0; b < batch; b++) {
    const slot = batch - 1 - b;
    for (let i = 0; i < d; i++) {
      const want = vCache[slot * d + i], got = out[b * d + i];
      if (got !== want) {
        assert.fail(`half ${bits[slot * d + i]}: got ${got}, want ${want}`);
      }
    }
  }
});

gpuTest("attention: plan, encode, update, optional lse, cached bind groups", async (gpu) => {
  const device = gpu.device;
  const shape = { numQueryHeads: 3, numKvHeads: 3, headDim: 8, pageSize: 1 };
  const rng = createRandom(7);
  const first = makeInputs(rng, { shape, lengths: [5, 17, 1], spareSlots: 20 });
  const numSlots = first.kCache.length / 24;
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
  const q = createBuffer(device, "test q", S, first.q);
  const k = createBuffer(device, "test k", S, first.kCache);
  const v = createBuffer(device, "test v", S, first.vCache);
  const outA = createBuffer(device, "test out a", S, first.q.byteLength);
  const outB = createBuffer(device, "test out b", S, first.q.byteLength);
  const lse = createBuffer(device, "test lse", S, 9 * 4);
  try {
    using attention = createPagedAttention(device, shape);
    const tables = (x: PagedAttentionInputs) => ({ ...x, maxPages: x.maxPages!, numSlots });
    using plan = attention.plan(tables(first));
    let encoder = device.createCommandEncoder({ label: "test step 1" });
    plan.encode(encoder, { q, kCache: k, vCache: v, out: outA, lse });
    plan.encode(encoder, { q, kCache: k, vCache: v, out: outB }); // no lse
    device.queue.submit([encoder.finish()]);
    const want1 = pagedAttentionReference(first, shape);
    const [a, b, l] = await Promise.all([outA, outB, lse].map((x) => readBuffer(device, x)));
    assertResultClose(
      { out: new Float32Array(a), lse: new Float32Array(l) },
      want1,
      TOL.f32,
      "step 1",
    );
    assert.deepEqual(new Float32Array(b), new Float32Array(a));

    // Next step: other lengths and slots over the same caches.
    const second = makeInputs(createRandom(8), { shape, lengths: [6, 3, 2], spareSlots: 20 });
    second.kCache = first.kCache;
    second.vCache = first.vCache;
    for (let i = 0; i < second.pageTable.length; i++) {
      if (second.pageTable[i] !== 0xffffffff) second.pageTable[i] %= numSlots;
    }
    plan.update(tables(second));
    encoder = device.createCommandEncoder({ label: "test step 2" });
    plan.encode(encoder, { q, kCache: k, vCache: v, out: outA, lse });
    device.queue.submit([encoder.finish()]);
    const want2 = pagedAttentionReference({ ...second, q: first.q }, shape);
    const [a2, l2] = await Promise.all([outA, lse].map((x) => readBuffer(device, x)));
    assertResultClose(
      { out: new Float32Array(a2), lse: new Float32Array(l2) },
      want2,
      TOL.f32,
      "step 2",
    );

    // A buffer too small is refused before recording.
    const small = createBuffer(device, "test small", S, 16);
    encoder = device.createCommandEncoder({ label: "test refused" });
    assert.throws(
      () => plan.encode(encoder, { q, kCache: k, vCache: v, out: small }),
      (e: Error) => e instanceof RangeError && /'out' must hold at least 288 bytes/.test(e.message),
    );
    small.destroy();
    plan[Symbol.dispose]();
    assert.throws(() => plan.update(tables(first)), /plan must not be disposed/);
  } finally {
    for (const x of [q, k, v, outA, outB, lse]) x.destroy();
  }
});

/** Punches holes: `keep(b, h, p, pages)` says whether page p of (b, h) stays. */
function punchHoles(
  x: PagedAttentionInputs,
  hkv: number,
  keep: (b: number, h: number, p: number, pages: number) => boolean,
): PagedAttentionInputs {
  const pageTable = x.pageTable.slice();
  const maxPages = x.maxPages!;
  for (let b = 0; b < x.numPages.length; b++) {
    for (let h = 0; h < hkv; h++) {
      for (let p = 0; p < x.numPages[b] - 1; p++) { // the last page is never a hole
        if (!keep(b, h, p, x.numPages[b])) pageTable[(b * hkv + h) * maxPages + p] = EMPTY_SLOT;
      }
    }
  }
  return { ...x, pageTable };
}

Deno.test("attention reference: holes weigh like pages left out of the table", () => {
  // One KV head: a table with holes attends exactly like the compacted table.
  const shape = { numQueryHeads: 2, numKvHeads: 1, headDim: 8, pageSize: 4 };
  const x = makeInputs(createRandom(20), { shape, lengths: [37, 9, 4] });
  const holes = punchHoles(x, 1, (b, _h, p) => (p + b) % 3 !== 1);
  const maxPages = x.maxPages!;
  const compact = new Uint32Array(x.pageTable.length).fill(EMPTY_SLOT);
  const numPages = Array.from(x.numPages, (_, b) => {
    const row = holes.pageTable.subarray(b * maxPages, b * maxPages + x.numPages[b]);
    const kept = row.filter((s) => s !== EMPTY_SLOT);
    compact.set(kept, b * maxPages);
    return kept.length;
  });
  assert.ok(numPages[0] < x.numPages[0], "holes were punched");
  const got = pagedAttentionReference(holes, shape);
  const want = pagedAttentionReference({ ...x, pageTable: compact, numPages }, shape);
  assert.deepEqual(got, want);
});

gpuTest("attention: holes in the page table against the reference", async (gpu) => {
  const cases: Array<[Case, Record<string, number>]> = [
    // Small pages, several splits: some splits of head 1 are holes only.
    [{ shape: { numQueryHeads: 8, numKvHeads: 2, headDim: 64, pageSize: 4 }, lengths: [400, 37] }, {
      minSplitTokens: 16,
    }],
    // Group of 3 (padded head vec), page size 1, one split per sequence.
    [{ shape: { numQueryHeads: 9, numKvHeads: 3, headDim: 8, pageSize: 1 }, lengths: [50, 7, 1] }, {
      minSplitTokens: 1024,
    }],
    // f16.
    [{
      shape: { numQueryHeads: 4, numKvHeads: 2, headDim: 16, pageSize: 8 },
      lengths: [200, 90],
      f16: true,
    }, {}],
  ];
  for (const [index, [c, tuning]] of cases.entries()) {
    const hkv = c.shape.numKvHeads;
    const x = punchHoles(makeInputs(createRandom(30 + index), c), hkv, (b, h, p, pages) => {
      if (h === 0) return (p * 7 + b) % 4 !== 2; // holes scattered through the middle
      if (h === 1) return p < 2 || p >= pages - 2; // sink and window only
      return p % 2 === 0; // every other page
    });
    const got = await pagedAttention(gpu.device, x, { ...c.shape, ...tuning });
    const want = pagedAttentionReference(x, c.shape);
    assertResultClose(got, want, c.f16 ? TOL.f16 : TOL.f32, `holes case ${index}`);
  }
});

gpuTest("attention: page table as a GPU buffer replaces the plan's", async (gpu) => {
  const device = gpu.device;
  const shape = { numQueryHeads: 4, numKvHeads: 2, headDim: 8, pageSize: 2 };
  const c: Case = { shape, lengths: [33, 5], spareSlots: 10 };
  const x = makeInputs(createRandom(40), c);
  const y = punchHoles(makeInputs(createRandom(41), c), 2, (_b, h, p) => (p + h) % 3 !== 0);
  y.kCache = x.kCache;
  y.vCache = x.vCache;
  y.q = x.q;
  const numSlots = x.kCache.length / (2 * 2 * 8);
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
  const q = createBuffer(device, "test q", S, x.q);
  const k = createBuffer(device, "test k", S, x.kCache);
  const v = createBuffer(device, "test v", S, x.vCache);
  const table = createBuffer(device, "test table", GPUBufferUsage.STORAGE, y.pageTable);
  const outs = [0, 1, 2].map((i) => createBuffer(device, `test out ${i}`, S, x.q.byteLength));
  const lses = [0, 1, 2].map((i) => createBuffer(device, `test lse ${i}`, S, 8 * 4));
  try {
    using attention = createPagedAttention(device, { ...shape, minSplitTokens: 8 });
    const tables = { ...x, maxPages: x.maxPages!, numSlots };
    using plan = attention.plan(tables);
    using tableless = attention.plan({ ...tables, pageTable: undefined });
    const encoder = device.createCommandEncoder({ label: "test gpu table" });
    const common = { q, kCache: k, vCache: v };
    plan.encode(encoder, { ...common, out: outs[0], lse: lses[0], pageTable: table });
    plan.encode(encoder, { ...common, out: outs[1], lse: lses[1] }); // the plan's own table
    tableless.encode(encoder, { ...common, out: outs[2], lse: lses[2], pageTable: table });
    device.queue.submit([encoder.finish()]);
    const read = async (i: number) => ({
      out: new Float32Array(await readBuffer(device, outs[i])),
      lse: new Float32Array(await readBuffer(device, lses[i])),
    });
    const wantY = pagedAttentionReference(y, shape);
    const wantX = pagedAttentionReference(x, shape);
    assertResultClose(await read(0), wantY, TOL.f32, "GPU table");
    assertResultClose(await read(1), wantX, TOL.f32, "plan table after a GPU table");
    assertResultClose(await read(2), wantY, TOL.f32, "tableless plan");
    assert.throws(
      () => tableless.encode(device.createCommandEncoder(), { ...common, out: outs[0] }),
      (e: Error) =>
        e instanceof TypeError && /'pageTable' must be given as a buffer/.test(e.message),
    );
    const small = createBuffer(device, "test small table", GPUBufferUsage.STORAGE, 16);
    assert.throws(
      () =>
        plan.encode(device.createCommandEncoder(), { ...common, out: outs[0], pageTable: small }),
      (e: Error) => e instanceof RangeError && /'pageTable' must hold at least/.test(e.message),
    );
    small.destroy();
  } finally {
    for (const b of [q, k, v, table, ...outs, ...lses]) b.destroy();
  }
});

// A device that fails on any GPU call: validation must throw first.
function tripwireDevice(): GPUDevice {
  const limits = testGpu?.device.limits ?? {
    maxComputeInvocationsPerWorkgroup: 256,
    maxComputeWorkgroupSizeX: 256,
    maxComputeWorkgroupStorageSize: 16384,
  };
  // A GPUDevice to `instanceof` (the library checks that first), watched for loss.
  const target = typeof GPUDevice === "undefined" ? {} : Object.create(GPUDevice.prototype);
  return new Proxy(target, {
    get(_, key) {
      if (key === "limits") return limits;
      if (key === "adapterInfo") return undefined;
      if (key === "lost") return new Promise(() => {});
      throw new Error(`GPU work started: device.${String(key)}`);
    },
  }) as GPUDevice;
}

const SHAPE = { numQueryHeads: 4, numKvHeads: 2, headDim: 8, pageSize: 4 };

function validInputs(): PagedAttentionInputs {
  return makeInputs(createRandom(9), { shape: SHAPE, lengths: [6, 4] });
}

async function rejects(
  change: (x: PagedAttentionInputs) => void,
  kind: typeof TypeError | typeof RangeError,
  pattern: RegExp,
  options: Partial<PagedAttentionOptions> = {},
) {
  const inputs = validInputs();
  change(inputs);
  await assert.rejects(
    pagedAttention(tripwireDevice(), inputs, { ...SHAPE, ...options }),
    (e: Error) => {
      assert.ok(e instanceof kind, `${e.name}: ${e.message}`);
      assert.match(e.message, pattern);
      return true;
    },
  );
}

Deno.test("attention: bad input is refused before any GPU work", async () => {
  await rejects((x) => (x.q = new Float32Array(5)), RangeError, /'q' must have length 64/);
  await rejects((x) => (x.pageTable[0] = 999), RangeError, /slot ids must be below numSlots/);
  await rejects(
    (x) => (x.pageTable[x.numPages[0] - 1] = EMPTY_SLOT),
    RangeError,
    /'pageTable' must not have a hole at a sequence's last page/,
  );
  await rejects((x) => (x.numPages = [0, 1]), RangeError, /'numPages\[0\]' must be between 1/);
  await rejects(
    (x) => (x.lastPageLen = [0, 4]),
    RangeError,
    /'lastPageLen\[0\]' must be between 1 and 4: received 0/,
  );
  await rejects(
    (x) => (x.lastPageLen = [2, 5]),
    RangeError,
    /'lastPageLen\[1\]' must be between 1 and 4: received 5/,
  );
  await rejects(
    (x) => (x.q[3] = NaN),
    RangeError,
    /'q' must hold only finite values: received NaN at index 3/,
  );
  await rejects((x) => (x.q[0] = Infinity), RangeError, /finite values: received Infinity/);
  await rejects(
    (x) => (x.pageTable = new Uint32Array(3)),
    RangeError,
    /'pageTable' must have length/,
  );
  await rejects((x) => (x.vCache = new Float32Array(8)), RangeError, /'vCache' must have length/);
  await rejects(
    (x) => (x.kCache = Float16Array.from(x.kCache)),
    TypeError,
    /'vCache' must have the type of 'kCache'/,
  );
  await rejects(() => {}, RangeError, /'numQueryHeads' must be a multiple of 'numKvHeads'/, {
    numQueryHeads: 3,
  });
  await rejects(() => {}, RangeError, /'headDim' must be a multiple of 4/, { headDim: 6 });
  await rejects(() => {}, RangeError, /'pageSize' must be at least 1: received 0/, {
    pageSize: 0,
  });
  await rejects(
    (x) => {
      x.kCache = Float16Array.from(x.kCache);
      x.vCache = Float16Array.from(x.vCache);
    },
    RangeError,
    /'headDim' must be a multiple of 8 for f16: received 4/,
    { headDim: 4 },
  );
  // The plan step validates too, and creating the attention compiles nothing.
  using attention = createPagedAttention(tripwireDevice(), SHAPE);
  const x = validInputs();
  assert.throws(
    () => attention.plan({ ...x, maxPages: x.maxPages!, numSlots: 2 }),
    (e: Error) => e instanceof RangeError && /below numSlots \(2\)/.test(e.message),
  );
  assert.throws(
    () => createPagedAttention(tripwireDevice(), { ...SHAPE, tokensPerLane: 0 }),
    (e: Error) =>
      e instanceof RangeError && /'tokensPerLane' must be between 1 and 64/.test(e.message),
  );
  assert.throws(
    () => createPagedAttention(tripwireDevice(), { ...SHAPE, dtype: "bf16" as "f16" }),
    (e: Error) => e instanceof TypeError && /'dtype' must be one of "f32", "f16"/.test(e.message),
  );
});

Deno.test("attention reference: a hand-computed case", () => {
  // Two tokens in reversed slots: scores 2 * (1, 0) / sqrt(4) -> weights e : 1.
  const r = pagedAttentionReference({
    q: new Float32Array([2, 0, 0, 0]),
    kCache: new Float32Array([0, 0, 0, 0, 1, 0, 0, 0]),
    vCache: new Float32Array([3, 3, 3, 3, 1, 1, 1, 1]),
    pageTable: new Uint32Array([1, 0]),
    numPages: [2],
    lastPageLen: [1],
  }, { numQueryHeads: 1, numKvHeads: 1, headDim: 4, pageSize: 1 });
  const w = Math.exp(1);
  assert.ok(Math.abs(r.out[0] - (w * 1 + 3) / (w + 1)) < 1e-6);
  assert.ok(Math.abs(r.lse[0] - Math.log(w + 1)) < 1e-6);
});

/** `cache` of NHD slots rewritten as HND slots (`[slot][Hkv][P][d]`). */
function toHnd<T extends Float32Array | Float16Array>(
  cache: T,
  P: number,
  hkv: number,
  d: number,
): T {
  const out = cache.slice() as T;
  const slots = cache.length / (P * hkv * d);
  for (let s = 0; s < slots; s++) {
    for (let t = 0; t < P; t++) {
      for (let h = 0; h < hkv; h++) {
        const src = ((s * P + t) * hkv + h) * d, dst = ((s * hkv + h) * P + t) * d;
        out.set(cache.subarray(src, src + d), dst);
      }
    }
  }
  return out;
}

Deno.test("attention reference: HND slots give what NHD slots give for the same keys", () => {
  const c: Case = {
    shape: { numQueryHeads: 4, numKvHeads: 2, headDim: 8, pageSize: 4 },
    lengths: [13, 4],
  };
  const x = makeInputs(createRandom(41), c);
  const { pageSize: P, numKvHeads: hkv, headDim: d } = c.shape;
  const want = pagedAttentionReference(x, c.shape);
  const kCache = toHnd(x.kCache as Float32Array, P, hkv, d);
  const vCache = toHnd(x.vCache as Float32Array, P, hkv, d);
  const got = pagedAttentionReference({ ...x, kCache, vCache }, { ...c.shape, slotLayout: "hnd" });
  assertResultClose(got, want, 1e-7, "hnd reference");
  // And the layouts differ: reading HND data as NHD gives something else.
  const wrong = pagedAttentionReference({ ...x, kCache, vCache }, c.shape);
  assert.ok(Math.abs(wrong.out[0] - want.out[0]) > 1e-6);
});

gpuTest(
  "attention: HND slots against the reference (f32 and f16, several tunings)",
  async (gpu) => {
    const hnd = (shape: AttentionShape): AttentionShape => ({ ...shape, slotLayout: "hnd" });
    await checkCase(gpu.device, 51, {
      shape: hnd({ numQueryHeads: 3, numKvHeads: 3, headDim: 8, pageSize: 1 }),
      lengths: [5, 17, 1],
    });
    await checkCase(gpu.device, 52, {
      shape: hnd({ numQueryHeads: 4, numKvHeads: 2, headDim: 64, pageSize: 8 }),
      lengths: [61, 8, 130],
    }, { tokenLanes: 4, tokensPerLane: 3, prefetchValues: false, wordsPerLane: 2 });
    await checkCase(gpu.device, 53, {
      shape: hnd({ numQueryHeads: 8, numKvHeads: 2, headDim: 128, pageSize: 32 }),
      lengths: [1000, 33, 64],
    });
    await checkCase(gpu.device, 54, {
      shape: hnd({ numQueryHeads: 8, numKvHeads: 2, headDim: 128, pageSize: 32 }),
      lengths: [300, 45],
      f16: true,
    });
  },
);

/** Page ids for `x`'s table: entry order is a shuffle of the page order. */
function withWindow(
  rng: Random,
  x: PagedAttentionInputs,
  hkv: number,
  firstToken: number[],
  pageSize: number,
): PagedAttentionInputs {
  const maxPages = x.maxPages!;
  const pageIds = new Uint32Array(x.pageTable.length).fill(EMPTY_SLOT);
  for (let b = 0; b < x.numPages.length; b++) {
    for (let h = 0; h < hkv; h++) {
      // The last entry holds the newest page; the others any order.
      const n = x.numPages[b];
      const order = shuffled(rng, n - 1);
      order.push(n - 1);
      order.forEach((page, e) => pageIds[(b * hkv + h) * maxPages + e] = page);
    }
  }
  assert.ok(firstToken.every((f, b) => f <= (x.numPages[b] - 1) * pageSize));
  return { ...x, pageIds, firstToken };
}

Deno.test("attention reference: a window at a page boundary weighs like holes at the pages before it", () => {
  const shape = { numQueryHeads: 4, numKvHeads: 2, headDim: 8, pageSize: 4 };
  const rng = createRandom(31);
  const x = withWindow(rng, makeInputs(rng, { shape, lengths: [37, 20] }), 2, [12, 8], 4);
  const holes = x.pageTable.slice();
  for (let b = 0; b < 2; b++) {
    for (let e = 0; e < x.maxPages!; e++) {
      for (let h = 0; h < 2; h++) {
        const i = (b * 2 + h) * x.maxPages! + e;
        if (x.pageIds![i] * 4 < x.firstToken![b]) holes[i] = EMPTY_SLOT;
      }
    }
  }
  const got = pagedAttentionReference(x, shape);
  const want = pagedAttentionReference({ ...x, pageTable: holes, firstToken: undefined }, shape);
  assert.deepEqual(got, want);
  const none = pagedAttentionReference({ ...x, firstToken: [0, 0] }, shape);
  assert.notDeepEqual(got.out, none.out);
});

gpuTest(
  "attention: sliding window mid-page against the reference (CPU and GPU tables)",
  async (gpu) => {
    const device = gpu.device;
    const shape = { numQueryHeads: 8, numKvHeads: 2, headDim: 16, pageSize: 4 };
    const rng = createRandom(32);
    const base = makeInputs(rng, { shape, lengths: [150, 41, 3] });
    // Mid-page, page boundary, none.
    const x = withWindow(rng, base, 2, [37, 8, 0], 4);
    const want = pagedAttentionReference(x, shape);
    // One-shot (CPU table and ids, several splits).
    const got = await pagedAttention(device, x, { ...shape, minSplitTokens: 16 });
    assertResultClose(got, want, TOL.f32, "CPU tables");
    // GPU table and ids in one buffer, ids 256 bytes after the table.
    using attention = createPagedAttention(device, { ...shape, minSplitTokens: 16 });
    const numSlots = x.kCache.length / (4 * 2 * 16);
    using plan = attention.plan({
      numPages: x.numPages,
      lastPageLen: x.lastPageLen,
      maxPages: x.maxPages!,
      numSlots,
      firstToken: x.firstToken,
    });
    const tableBytes = x.pageTable.byteLength;
    const idsAt = Math.ceil(tableBytes / 256) * 256 + 256;
    const S = GPUBufferUsage.STORAGE;
    const both = new Uint32Array((idsAt + tableBytes) / 4);
    both.set(x.pageTable);
    both.set(x.pageIds!, idsAt / 4);
    const tables = createBuffer(device, "test table and ids", S, both);
    const q = createBuffer(device, "test q", S, x.q);
    const k = createBuffer(device, "test k", S, x.kCache as Float32Array);
    const v = createBuffer(device, "test v", S, x.vCache as Float32Array);
    const out = createBuffer(device, "test out", S | GPUBufferUsage.COPY_SRC, x.q.length * 4);
    try {
      const table = { buffer: tables, offset: 0, size: tableBytes };
      const encodeWith = (pageIds?: { buffer: GPUBuffer; offset: number; size: number }) => {
        const encoder = device.createCommandEncoder();
        plan.encode(encoder, { q, kCache: k, vCache: v, out, pageTable: table, pageIds });
        return encoder;
      };
      device.queue.submit([
        encodeWith({ buffer: tables, offset: idsAt, size: tableBytes }).finish(),
      ]);
      const o = new Float32Array(await readBuffer(device, out, x.q.length * 4));
      assertClose(o, want.out, { abs: TOL.f32, rel: TOL.f32 }, "GPU tables");
      // The ids must follow the table in its buffer, at one distance per plan.
      assert.throws(() => encodeWith(), /'pageIds' must be given/);
      assert.throws(
        () => encodeWith({ buffer: tables, offset: idsAt - 256, size: tableBytes }),
        /keep its distance/,
      );
    } finally {
      for (const b of [tables, q, k, v, out]) b.destroy();
    }
    // The last token must stay visible.
    await assert.rejects(
      () => pagedAttention(device, { ...x, firstToken: [150, 8, 0] }, shape),
      /'firstToken\[0\]' must leave a sequence's last token visible/,
    );
    await assert.rejects(
      () => pagedAttention(device, { ...x, pageIds: undefined }, shape),
      /'pageIds' must be given/,
    );
  },
);
