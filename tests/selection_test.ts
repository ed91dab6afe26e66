import assert from "node:assert/strict";
import { gpuTest, noGpuErrors } from "./_gpu.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import {
  createPageSelector,
  type PageSelectionInputs,
  type PageSelectorOptions,
  POOLING_MODES,
  type PoolingMode,
  selectPages,
} from "../lib/kernels/selection.ts";
import { selectPagesReference } from "../lib/kernels/selection_reference.ts";
import { querySimilarity } from "../lib/kernels/similarity.ts";
import { createPageTableBuilder, EMPTY_PAGE } from "../lib/kernels/page_table.ts";
import { pageRegions } from "../lib/memory/page_plan.ts";
import { querySimilarityReference } from "../lib/kernels/similarity_reference.ts";
import { createKvAppend } from "../lib/kernels/kv_append.ts";
import { kvAppendReference } from "../lib/kernels/kv_append_reference.ts";
import { slotOffset } from "../lib/kernels/slot_layout.ts";
import { requestGpu } from "../lib/gpu/device.ts";
import { assertArraysEqual } from "./_assert.ts";
import type { KvDtype } from "../lib/gpu/dtype.ts";

interface Shape {
  numKvHeads: number;
  group: number;
  headDim: number;
  /** Candidate pages per sequence. */
  counts: number[];
  k: number;
}

/**
 * Random queries and summaries (lower = c - |s|, upper = c + |s|) for
 * sequences laid out one after another with gaps and a few non-candidate
 * pages before each candidate range.
 */
function randomInputs(seed: number, shape: Shape, layoutSeed = seed): PageSelectionInputs {
  const layout = createRandom(layoutSeed);
  const { numKvHeads: hkv, group, headDim: d, counts, k } = shape;
  const pageOffset: number[] = [], candidateStart: number[] = [], candidateEnd: number[] = [];
  let pages = 1;
  for (const count of counts) {
    const start = layout.int(3);
    pageOffset.push(pages);
    candidateStart.push(start);
    candidateEnd.push(start + count);
    pages += start + count + 2 + layout.int(3);
  }
  const rng = createRandom(seed + 0x51ed);
  const summaries = new Float32Array(pages * hkv * 2 * d);
  for (let p = 0; p < pages * hkv; p++) {
    for (let c = 0; c < d; c++) {
      const center = rng.normal(), spread = Math.abs(rng.normal()) * 0.5;
      summaries[p * 2 * d + c] = center - spread;
      summaries[p * 2 * d + d + c] = center + spread;
    }
  }
  const q = randomNormalArray(rng, counts.length * hkv * group * d);
  return { q, summaries, pageOffset, candidateStart, candidateEnd, k };
}

/** The first seeded inputs from `seed` on whose top k + 1 are well separated, and the oracle. */
function separatedInputs(
  seed: number,
  shape: Shape,
  options: PageSelectorOptions,
  layoutSeed?: number,
): { inputs: PageSelectionInputs; want: Uint32Array } {
  for (let s = seed; s < seed + 50; s++) {
    const inputs = randomInputs(s, shape, layoutSeed ?? s);
    const { selected, pooled } = selectPagesReference(inputs, options);
    if (wellSeparated(pooled, shape.k)) return { inputs, want: selected };
  }
  throw new Error(`no well-separated inputs found from seed ${seed}`);
}

/**
 * True when the oracle's top k + 1 pooled scores of every (sequence, KV
 * head) are apart by more than a margin far above f32 rounding, so the GPU
 * must reproduce set and order exactly.
 */
function wellSeparated(pooled: Float64Array[], k: number): boolean {
  for (const row of pooled) {
    const sorted = [...row].sort((a, b) => b - a);
    const margin = 2e-5 * Math.max(...sorted.map(Math.abs));
    for (let i = 0; i < Math.min(k, sorted.length - 1); i++) {
      if (!(sorted[i] - sorted[i + 1] > margin)) return false;
    }
  }
  return true;
}

const SHAPES: Shape[] = [
  { numKvHeads: 2, group: 1, headDim: 8, counts: [5], k: 3 },
  { numKvHeads: 1, group: 2, headDim: 64, counts: [40, 7, 300], k: 7 },
  { numKvHeads: 2, group: 4, headDim: 128, counts: [100, 33, 257], k: 16 },
  { numKvHeads: 1, group: 7, headDim: 128, counts: [20, 64, 9], k: 9 },
  { numKvHeads: 3, group: 7, headDim: 8, counts: [6, 6], k: 6 },
  { numKvHeads: 2, group: 2, headDim: 8, counts: [3000], k: 5 },
];

for (const pooling of POOLING_MODES) {
  gpuTest(`selection matches the oracle exactly (${pooling})`, async (gpu) => {
    for (const [i, shape] of SHAPES.entries()) {
      const options: PageSelectorOptions = {
        numQueryHeads: shape.numKvHeads * shape.group,
        numKvHeads: shape.numKvHeads,
        headDim: shape.headDim,
        pooling,
      };
      // Seeded inputs without near-ties around the top k.
      const { inputs, want } = separatedInputs(1000 * i, shape, options);
      const got = await noGpuErrors(gpu.device, () => selectPages(gpu.device, inputs, options));
      assert.deepEqual(got, want, JSON.stringify(shape));
    }
  });
}

gpuTest("scoring variants: lanes per page (the GPU default) and groups above 8", async (gpu) => {
  const shapes: Array<[Shape, number[]]> = [
    [{ numKvHeads: 2, group: 4, headDim: 128, counts: [200, 37], k: 8 }, [2, 8, 32]],
    [{ numKvHeads: 1, group: 7, headDim: 64, counts: [90], k: 5 }, [4, 16]],
    [{ numKvHeads: 2, group: 12, headDim: 32, counts: [70, 150], k: 6 }, [1, 8]],
    [{ numKvHeads: 1, group: 1, headDim: 8, counts: [130], k: 4 }, [2]],
  ];
  for (const [i, [shape, lanes]] of shapes.entries()) {
    for (const lanesPerPage of lanes) {
      const options = {
        numQueryHeads: shape.numKvHeads * shape.group,
        numKvHeads: shape.numKvHeads,
        headDim: shape.headDim,
        lanesPerPage,
      };
      const { inputs, want } = separatedInputs(500 + 100 * i, shape, options);
      const got = await noGpuErrors(gpu.device, () => selectPages(gpu.device, inputs, options));
      assert.deepEqual(got, want, `${JSON.stringify(shape)} lanes ${lanesPerPage}`);
    }
  }
});

gpuTest("selection at 32K tokens (1024 candidate pages), Llama-3.1-8B heads", async (gpu) => {
  const shape = { numKvHeads: 8, group: 4, headDim: 128, counts: [1024], k: 32 };
  const options = { numQueryHeads: 32, numKvHeads: 8, headDim: 128 };
  const { inputs, want } = separatedInputs(77, shape, options);
  const got = await noGpuErrors(gpu.device, () => selectPages(gpu.device, inputs, options));
  assert.deepEqual(got, want);
});

/** Summaries of `pages` pages for 1 KV head, d = 4, each page's bounds all `values[p]`. */
function flatPages(values: number[]): Float32Array {
  return new Float32Array(values.flatMap((v) => Array(8).fill(v)));
}

gpuTest("ties: duplicated pages and all-equal pages select the lower page index", async (gpu) => {
  for (const pooling of POOLING_MODES) {
    const options = { numQueryHeads: 2, numKvHeads: 1, headDim: 4, pooling };
    const q = new Float32Array([1, 0.5, 0, -1, 0.25, 0, 1, 0]);
    // Logical pages 1 and 4 tie on top; 2, 6 and 8 tie across the k boundary.
    const values = [0, 1, 9, 4, 0, 9, 1, 4, 2, 4, 3, 0];
    const inputs = {
      q,
      summaries: flatPages(values),
      pageOffset: [1],
      candidateStart: [0],
      candidateEnd: [11],
      k: 4,
    };
    const want = selectPagesReference(inputs, options).selected;
    // Logical page p is global page p + 1: values[p + 1].
    assert.deepEqual([...want], [1, 4, 2, 6], pooling);
    assert.deepEqual(
      await noGpuErrors(gpu.device, () => selectPages(gpu.device, inputs, options)),
      want,
    );
    // Everything tied: a zero query scores every page 0.
    const zero = { ...inputs, q: new Float32Array(8), candidateStart: [3], k: 5 };
    assert.deepEqual([...selectPagesReference(zero, options).selected], [3, 4, 5, 6, 7]);
    assert.deepEqual([...(await selectPages(gpu.device, zero, options))], [3, 4, 5, 6, 7]);
  }
  // Many identical pages: the tie passes on the index over 600 candidates.
  const many = {
    q: new Float32Array([1, 1, 1, 1]),
    summaries: flatPages(Array.from({ length: 700 }, (_, p) => (p === 650 ? 2 : 1))),
    pageOffset: [0],
    candidateStart: [50],
    candidateEnd: [700],
    k: 40,
  };
  const options = { numQueryHeads: 1, numKvHeads: 1, headDim: 4 };
  const want = [650, ...Array.from({ length: 39 }, (_, i) => 50 + i)];
  assert.deepEqual([...selectPagesReference(many, options).selected], want);
  assert.deepEqual([...(await selectPages(gpu.device, many, options))], want);
});

gpuTest(
  "top-k by counting and by radix select agree with the oracle around the switch",
  async (gpu) => {
    // 32 query heads of d 128 per KV head: one workgroup's memory holds q
    // (16 KiB) and the scores of fewer than 256 candidates, so one dispatch
    // takes up to as many as fit (none with 16 KiB) and scoring and the
    // counting top-k run as two dispatches above that.
    const wideOptions = { numQueryHeads: 32, numKvHeads: 1, headDim: 128 };
    {
      using wideSelector = createPageSelector(gpu.device, wideOptions);
      const fit = wideSelector.oneDispatchMax;
      const memory = gpu.device.limits.maxComputeWorkgroupStorageSize;
      assert.ok(fit < 256 && 4 * 32 * 128 + fit * (4 * 32 + 8) <= memory, `fit ${fit}`);
      for (const count of [Math.max(fit, 1), fit + 1]) {
        const wide = { numKvHeads: 1, group: 32, headDim: 128, counts: [count], k: 8 };
        const split = separatedInputs(2900 + count, wide, wideOptions);
        using plan = wideSelector.plan(split.inputs);
        assert.equal(plan.fused, count <= fit, `count ${count}, fit ${fit}`);
        assert.deepEqual(
          await noGpuErrors(gpu.device, () => selectPages(gpu.device, split.inputs, wideOptions)),
          split.want,
          `count ${count}`,
        );
      }
    }
    // Small heads: countingTopkMax itself is the limit.
    for (const countingTopkMax of [undefined, 100]) {
      using small = createPageSelector(gpu.device, {
        numQueryHeads: 4,
        numKvHeads: 2,
        headDim: 8,
        ...(countingTopkMax === undefined ? {} : { countingTopkMax }),
      });
      assert.equal(small.oneDispatchMax, countingTopkMax ?? 256);
    }
    // countingTopkMax 0 always takes the radix select; 1024 counts up to 1024 candidates.
    for (const countingTopkMax of [0, 128, 1024]) {
      for (const [i, count] of [1, 7, 64, 127, 128, 129, 300].entries()) {
        const shape = {
          numKvHeads: 2,
          group: 2,
          headDim: 8,
          counts: [count, 3],
          k: Math.min(count, 3),
        };
        const options = { numQueryHeads: 4, numKvHeads: 2, headDim: 8, countingTopkMax };
        const { inputs, want } = separatedInputs(3000 + 10 * i, shape, options);
        const got = await noGpuErrors(gpu.device, () => selectPages(gpu.device, inputs, options));
        assert.deepEqual(got, want, `count ${count}, countingTopkMax ${countingTopkMax}`);
        // All tied (a zero query): the lowest candidate indices, in order.
        const tied = { ...inputs, q: new Float32Array(inputs.q.length) };
        const lowest = (b: number) =>
          Array.from({ length: shape.k }, (_, j) => inputs.candidateStart[b] + j);
        const expected = [0, 1].flatMap((b) => [...lowest(b), ...lowest(b)]);
        assert.deepEqual([...selectPagesReference(tied, options).selected], expected);
        assert.deepEqual(
          [...(await selectPages(gpu.device, tied, options))],
          expected,
          `tied, count ${count}, countingTopkMax ${countingTopkMax}`,
        );
      }
    }
  },
);

Deno.test("selection oracle: pooling modes on a hand-computed case", () => {
  // Two query heads, one KV head, d = 4; pages scored by q . upper for q >= 0.
  const inputs = {
    q: new Float32Array([1, 0, 0, 0, 0, 1, 0, 0]),
    // head 0 scores: 3, 0, 2; head 1 scores: 0, 2, 2
    summaries: new Float32Array([
      ...[3, 0, 0, 0, 3, 0, 0, 0],
      ...[0, 2, 0, 0, 0, 2, 0, 0],
      ...[2, 2, 0, 0, 2, 2, 0, 0],
    ]),
    pageOffset: [0],
    candidateStart: [0],
    candidateEnd: [3],
    k: 3,
  };
  const base = { numQueryHeads: 2, numKvHeads: 1, headDim: 4 };
  const mean = selectPagesReference(inputs, { ...base, pooling: "mean" });
  assert.deepEqual([...mean.selected], [2, 0, 1]); // means 1.5, 1, 2
  assert.deepEqual([...mean.pooled[0]], [1.5, 1, 2]);
  const max = selectPagesReference(inputs, { ...base, pooling: "max" });
  assert.deepEqual([...max.selected], [0, 1, 2]); // maxes 3, 2, 2: the tie goes to page 1
  // softmax-mean with scale 1: softmax(3, 0, 2) and softmax(0, 2, 2), averaged.
  const soft = selectPagesReference(inputs, { ...base, scale: 1 });
  const e = (xs: number[]) => xs.map((x) => Math.exp(x) / xs.reduce((s, y) => s + Math.exp(y), 0));
  const a = e([3, 0, 2]), b = e([0, 2, 2]);
  soft.pooled[0].forEach((v, n) => assert.ok(Math.abs(v - (a[n] + b[n]) / 2) < 1e-15));
  assert.deepEqual([...soft.selected], [0, 2, 1]);
  // The default scale is 1 / sqrt(d) = 0.5.
  const scaled = selectPagesReference(inputs, base);
  const a2 = e([1.5, 0, 1]), b2 = e([0, 1, 1]);
  scaled.pooled[0].forEach((v, n) => assert.ok(Math.abs(v - (a2[n] + b2[n]) / 2) < 1e-15));
});

gpuTest("selector: one plan, two layers, reused and re-planned", async (gpu) => {
  const { device } = gpu;
  const shape = { numKvHeads: 2, group: 2, headDim: 8, counts: [30, 12], k: 4 };
  const options = { numQueryHeads: 4, numKvHeads: 2, headDim: 8, pooling: "mean" as const };
  // Two layers: same batch layout, different queries and summaries.
  const layers = [11, 40].map((seed) => separatedInputs(seed, shape, options, 11));
  const storage = GPUBufferUsage.STORAGE;
  const out = storage | GPUBufferUsage.COPY_SRC;
  using selector = createPageSelector(device, options);
  assert.equal(selector.options.pooling, "mean");
  assert.equal(selector.options.scale, 1 / Math.sqrt(8));
  const buffers = layers.map(({ inputs }, l) => ({
    q: createBuffer(device, `q${l}`, storage, inputs.q),
    summaries: createBuffer(device, `s${l}`, storage, inputs.summaries),
    selected: createBuffer(device, `sel${l}`, out, 2 * 2 * 4 * 4),
  }));
  using plan = selector.plan(layers[0].inputs);
  const encoder = device.createCommandEncoder();
  for (const b of buffers) plan.encode(encoder, b);
  device.queue.submit([encoder.finish()]);
  for (const [l, { want }] of layers.entries()) {
    const got = new Uint32Array(await readBuffer(device, buffers[l].selected));
    assert.deepEqual(got, want, `layer ${l}`);
  }
  // A bigger plan (more candidates, larger k) grows the scratch buffers.
  const { inputs: bigger, want } = separatedInputs(
    13,
    { ...shape, counts: [500, 300], k: 9 },
    options,
  );
  const big = {
    q: createBuffer(device, "q big", storage, bigger.q),
    summaries: createBuffer(device, "s big", storage, bigger.summaries),
    selected: createBuffer(device, "sel big", out, 2 * 2 * 9 * 4),
  };
  plan.update(bigger);
  assert.equal(plan.k, 9);
  const encoder2 = device.createCommandEncoder();
  plan.encode(encoder2, big);
  device.queue.submit([encoder2.finish()]);
  assert.deepEqual(new Uint32Array(await readBuffer(device, big.selected)), want);
  for (const b of [...buffers, big]) for (const x of Object.values(b)) x.destroy();
});

gpuTest("NaN queries on the GPU path still give k distinct valid pages", async (gpu) => {
  const { device } = gpu;
  const inputs = randomInputs(5, { numKvHeads: 1, group: 2, headDim: 8, counts: [50], k: 10 });
  const q = inputs.q.slice();
  q[3] = NaN;
  q[9] = Infinity;
  const storage = GPUBufferUsage.STORAGE;
  const buffers = {
    q: createBuffer(device, "q nan", storage, q),
    summaries: createBuffer(device, "s", storage, inputs.summaries),
    selected: createBuffer(device, "sel", storage | GPUBufferUsage.COPY_SRC, 40),
  };
  using selector = createPageSelector(device, { numQueryHeads: 2, numKvHeads: 1, headDim: 8 });
  using plan = selector.plan(inputs);
  const encoder = device.createCommandEncoder();
  plan.encode(encoder, buffers);
  device.queue.submit([encoder.finish()]);
  const got = [...new Uint32Array(await readBuffer(device, buffers.selected))];
  const start = inputs.candidateStart[0];
  assert.equal(new Set(got).size, 10);
  assert.ok(got.every((p) => p >= start && p < start + 50), String(got));
  for (const x of Object.values(buffers)) x.destroy();
});

gpuTest("selection: bad input throws before GPU work", async (gpu) => {
  const { device } = gpu;
  const options = { numQueryHeads: 2, numKvHeads: 1, headDim: 4 };
  const ok = {
    q: new Float32Array(8),
    summaries: flatPages([1, 2, 3, 4, 5]),
    pageOffset: [1],
    candidateStart: [0],
    candidateEnd: [4],
    k: 2,
  };
  selectPagesReference(ok, options);
  type Override = [Partial<PageSelectionInputs>, Partial<PageSelectorOptions>?];
  const cases: Array<[string, Override, ErrorConstructor, RegExp]> = [
    [
      "unknown pooling",
      [{}, { pooling: "sum" as PoolingMode }],
      TypeError,
      /'pooling' must be one of "softmax-mean", "mean", "max": received "sum"/,
    ],
    ["group", [{}, { numKvHeads: 3 }], RangeError, /multiple of 'numKvHeads' \(3\): received 2/],
    ["head dim", [{}, { headDim: 6 }], RangeError, /'headDim' must be a multiple of 4: received 6/],
    ["scale", [{}, { scale: -1 }], RangeError, /'scale' must be positive: received -1/],
    [
      "lanes",
      [{}, { lanesPerPage: 2 }],
      RangeError,
      /'lanesPerPage' must be a power of two dividing headDim \/ 4 = 1: received 2/,
    ],
    [
      "counting top-k limit",
      [{}, { countingTopkMax: 2000 }],
      RangeError,
      /'countingTopkMax' must be between 0 and 1024: received 2000/,
    ],
    ["k = 0", [{ k: 0 }], RangeError, /'k' must be at least 1: received 0/],
    [
      "k > candidates",
      [{ k: 5 }],
      RangeError,
      /'k' must be at most the 4 candidate pages of sequence 0: received 5/,
    ],
    [
      "empty range",
      [{ candidateStart: [2], candidateEnd: [2] }],
      RangeError,
      /candidate range of sequence 0 must not be empty: received \[2, 2\)/,
    ],
    [
      "inverted range",
      [{ candidateStart: [3], candidateEnd: [1] }],
      RangeError,
      /must not be empty: received \[3, 1\)/,
    ],
    [
      "lengths",
      [{ candidateEnd: [4, 4] }],
      RangeError,
      /'candidateEnd' must have length 1: received length 2/,
    ],
    ["batch", [{ batch: 2 }], RangeError, /'pageOffset' must have length 2: received length 1/],
    [
      "q length",
      [{ q: new Float32Array(7) }],
      RangeError,
      /'q' must have length 8: received length 7/,
    ],
    [
      "summaries length",
      [{ summaries: new Float32Array(9) }],
      RangeError,
      /multiple of numKvHeads \* 2 \* headDim = 8: received length 9/,
    ],
    [
      "page out of range",
      [{ pageOffset: [2] }],
      RangeError,
      /must be below the 5 pages of 'summaries': received page 5/,
    ],
    [
      "non-integer",
      [{ pageOffset: [0.5] }],
      TypeError,
      /'pageOffset\[0\]' must be an integer: received 0.5/,
    ],
    [
      "NaN q",
      [{ q: new Float32Array([0, 0, NaN, 0, 0, 0, 0, 0]) }],
      RangeError,
      /'q' must hold only finite values: received NaN at index 2/,
    ],
    [
      "infinite q",
      [{ q: new Float32Array([0, 0, 0, 0, 0, 0, 0, -Infinity]) }],
      RangeError,
      /'q' must hold only finite values: received -Infinity at index 7/,
    ],
    [
      "infinite summaries",
      [{ summaries: flatPages([1, 2, 3, Infinity, 5]) }],
      RangeError,
      /'summaries' must hold only finite values: received Infinity at index 24/,
    ],
    [
      "q type",
      [{ q: [0, 0, 0, 0, 0, 0, 0, 0] as unknown as Float32Array }],
      TypeError,
      /'q' must be a Float32Array: received array of length 8/,
    ],
  ];
  const matches = (type: ErrorConstructor, message: RegExp) => (e: unknown) =>
    e instanceof type && message.test((e as Error).message);
  for (const [name, [inputs, opts], type, message] of cases) {
    const args = [{ ...ok, ...inputs }, { ...options, ...opts }] as const;
    assert.throws(() => selectPagesReference(...args), matches(type, message), name);
    // The GPU convenience validates the same way, before any GPU work.
    await assert.rejects(() => selectPages(device, ...args), matches(type, message), name);
  }

  // The plan: buffer checks, a failed update keeps the old step, disposal.
  using selector = createPageSelector(device, options);
  const storage = GPUBufferUsage.STORAGE;
  const q = createBuffer(device, "q", storage, ok.q);
  const summaries = createBuffer(device, "s", storage, ok.summaries);
  const small = createBuffer(device, "s small", storage, 4 * 8 * 4);
  const tiny = createBuffer(device, "sel tiny", storage, 4);
  const selected = createBuffer(device, "sel", storage | GPUBufferUsage.COPY_SRC, 8);
  const noStorage = createBuffer(device, "sel copy", GPUBufferUsage.COPY_SRC, 8);
  const encoder = device.createCommandEncoder();
  // Candidate counts beyond the scratch binding limit: a RangeError naming it.
  const huge = device.limits.maxStorageBufferBindingSize / (2 * 4) + 1;
  assert.throws(
    () => selector.plan({ pageOffset: [0], candidateStart: [0], candidateEnd: [huge], k: 1 }),
    matches(RangeError, /must fit the device's maxStorageBufferBindingSize/),
  );
  const plan = selector.plan(ok);
  assert.throws(() => plan.update({ ...ok, k: 9 }), RangeError);
  assert.equal(plan.k, 2);
  assert.throws(
    () => plan.encode(encoder, { q, summaries: small, selected }),
    matches(RangeError, /below the 4 pages of 'summaries': received page 4/),
  );
  assert.throws(
    () => plan.encode(encoder, { q, summaries, selected: tiny }),
    matches(RangeError, /'selected' must hold batch \* numKvHeads \* k u32 \(8 bytes\)/),
  );
  assert.throws(
    () => plan.encode(encoder, { q, summaries, selected: noStorage }),
    matches(TypeError, /'selected' must have usage 128/),
  );
  plan.encode(encoder, { q, summaries, selected });
  device.queue.submit([encoder.finish()]);
  assert.deepEqual([...new Uint32Array(await readBuffer(device, selected))], [0, 1]);
  plan[Symbol.dispose]();
  assert.throws(
    () => plan.encode(device.createCommandEncoder(), { q, summaries, selected }),
    matches(TypeError, /the plan must not be disposed/),
  );
  selector[Symbol.dispose]();
  assert.throws(
    () => selector.plan(ok),
    matches(TypeError, /the page selector must not be disposed/),
  );
  for (const b of [q, summaries, small, tiny, selected, noStorage]) b.destroy();
});

// countingTopkMax 0: score, radix top-k and resident-only top-k as three
// dispatches (the resident-only pass always by radix select); 4: the same
// three, the resident-only pass by counting where at most 4 candidates are
// resident and by radix select elsewhere; the default: one dispatch
// (page_select.wgsl) for these counts.
for (const countingTopkMax of [0, 4, undefined]) {
  gpuTest(
    `resident-only top-k: the best k among resident pages, the rest by index; flagged heads only (countingTopkMax ${
      countingTopkMax ?? "default"
    })`,
    ({ device }) => residentOnlyCase(device, countingTopkMax),
  );
}

async function residentOnlyCase(device: GPUDevice, countingTopkMax?: number): Promise<void> {
  const shape: Shape = { numKvHeads: 2, group: 3, headDim: 16, counts: [20, 13], k: 4 };
  const options: PageSelectorOptions = {
    numQueryHeads: 6,
    numKvHeads: 2,
    headDim: 16,
    ...(countingTopkMax === undefined ? {} : { countingTopkMax }),
  };
  const { inputs } = separatedInputs(40, shape, options);
  const { pooled } = selectPagesReference(inputs, options);
  const rng = createRandom(9);
  const stride = 32;
  const B = shape.counts.length;
  const mask = new Uint32Array(B * 2 * stride).fill(0xffffffff);
  for (let i = 0; i < mask.length; i++) if (rng.next() < 0.4) mask[i] = 0;
  // Fewer resident candidates than k: the rest of the top-k by index. One
  // resident page in row (1, 0), none in row (1, 1).
  const start1 = inputs.candidateStart[1];
  mask.fill(0xffffffff, 2 * stride, 4 * stride);
  mask[2 * stride + start1 + 5] = 0;
  if (countingTopkMax === 4) {
    // Both ways of the resident-only pass occur.
    const residents = Array.from({ length: B * 2 }, (_, bh) => {
      const b = bh >> 1, start = inputs.candidateStart[b];
      return Array.from({ length: shape.counts[b] }, (_, n) => mask[bh * stride + start + n])
        .filter((m) => m !== 0xffffffff).length;
    });
    assert.ok(residents.some((r) => r > 4) && residents.some((r) => r <= 4), `${residents}`);
  }
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const bufs = {
    q: createBuffer(device, "q", usage, inputs.q),
    summaries: createBuffer(device, "s", usage, inputs.summaries),
    selected: createBuffer(device, "sel", usage, B * 2 * shape.k * 4),
    mask: createBuffer(device, "mask", usage, mask),
    best: createBuffer(device, "best", usage, B * 2 * shape.k * 4),
  };
  using selector = createPageSelector(device, options);
  using plan = selector.plan(inputs);
  const enc = device.createCommandEncoder();
  plan.encode(enc, {
    q: bufs.q,
    summaries: bufs.summaries,
    selected: bufs.selected,
    residentOnly: { mask: bufs.mask, maskStride: stride, selected: bufs.best },
  });
  device.queue.submit([enc.finish()]);
  const got = new Uint32Array(await readBuffer(device, bufs.best, bufs.best.size));
  const wanted: number[][] = [];
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < 2; h++) {
      const row = pooled[b * 2 + h];
      const start = inputs.candidateStart[b];
      const resident = (n: number) => mask[(b * 2 + h) * stride + start + n] !== 0xffffffff;
      const order = [...row.keys()].sort((x, y) =>
        Number(resident(y)) - Number(resident(x)) ||
        (resident(x) ? row[y] - row[x] : 0) || x - y
      );
      const want = order.slice(0, shape.k).map((n) => start + n);
      const at = (b * 2 + h) * shape.k;
      assert.deepEqual([...got.subarray(at, at + shape.k)], want, `sequence ${b} head ${h}`);
      wanted.push(want);
    }
  }
  // With flags, only heads flagged 1 (corrected) are selected; the other
  // rows keep what was there.
  const flags = Uint32Array.from([1, 0, 2, 1]);
  const sentinel = 0xdeadbeef;
  const flagBuf = createBuffer(device, "flags", usage, flags);
  device.queue.writeBuffer(bufs.best, 0, new Uint32Array(B * 2 * shape.k).fill(sentinel));
  const enc2 = device.createCommandEncoder();
  plan.encode(enc2, {
    q: bufs.q,
    summaries: bufs.summaries,
    selected: bufs.selected,
    residentOnly: { mask: bufs.mask, maskStride: stride, selected: bufs.best, flags: flagBuf },
  });
  device.queue.submit([enc2.finish()]);
  const flagged = new Uint32Array(await readBuffer(device, bufs.best, bufs.best.size));
  for (let bh = 0; bh < B * 2; bh++) {
    const row = [...flagged.subarray(bh * shape.k, (bh + 1) * shape.k)];
    const want = flags[bh] === 1 ? wanted[bh] : new Array(shape.k).fill(sentinel);
    assert.deepEqual(row, want, `flagged pass, row ${bh} (flag ${flags[bh]})`);
  }
  // The plain top-k of the same dispatch is the oracle's.
  assert.deepEqual(
    new Uint32Array(await readBuffer(device, bufs.selected, bufs.selected.size)),
    selectPagesReference(inputs, options).selected,
  );
  flagBuf.destroy();
  Object.values(bufs).forEach((x) => x.destroy());
}

gpuTest(
  "correction check in the selection's dispatch: the similarity kernel's cosines and flags, flagged heads' resident-only top-k",
  async ({ device }) => {
    const shape: Shape = { numKvHeads: 2, group: 3, headDim: 16, counts: [20, 13], k: 4 };
    const options: PageSelectorOptions = { numQueryHeads: 6, numKvHeads: 2, headDim: 16 };
    const { inputs } = separatedInputs(41, shape, options);
    const B = shape.counts.length, hq = 6, d = 16;
    const rng = createRandom(12);
    // Head rows: (b 0, KV head 0) keeps its queries (cosine 1, not flagged),
    // one query head is zero (cosine 0), the rest move at random.
    const qPrev = randomNormalArray(rng, B * hq * d);
    qPrev.set(inputs.q.subarray(0, 3 * d), 0);
    qPrev.fill(0, 4 * d, 5 * d);
    const tau = 0.5;
    const want = querySimilarityReference({ qNow: inputs.q, qPrev, tau }, options);
    const kernel = await querySimilarity(device, { qNow: inputs.q, qPrev, tau }, options);
    assert.deepEqual([...want.flags], [0, 1, 1, 1]);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const stride = 32;
    const mask = new Uint32Array(B * 2 * stride);
    const sentinel = 0xdeadbeef;
    const bufs = {
      q: createBuffer(device, "q", usage, inputs.q),
      qPrev: createBuffer(device, "q prev", usage, qPrev),
      summaries: createBuffer(device, "s", usage, inputs.summaries),
      selected: createBuffer(device, "sel", usage, B * 2 * shape.k * 4),
      mask: createBuffer(device, "mask", usage, mask),
      best: createBuffer(device, "best", usage, new Uint32Array(B * 2 * shape.k).fill(sentinel)),
      cosine: createBuffer(device, "cosine", usage, B * hq * 4),
      groupMean: createBuffer(device, "mean", usage, B * 2 * 4),
      flags: createBuffer(device, "flags", usage, new Uint32Array(B * 2).fill(7)),
    };
    using selector = createPageSelector(device, options);
    using plan = selector.plan({ ...inputs, tau });
    assert.equal(plan.fused, true);
    assert.equal(plan.fusesSimilarity, device.limits.maxStorageBuffersPerShaderStage >= 10);
    if (!plan.fusesSimilarity) {
      // The engine runs the similarity kernel on such devices.
      Object.values(bufs).forEach((x) => x.destroy());
      return;
    }
    const similarity = {
      qPrev: bufs.qPrev,
      cosine: bufs.cosine,
      groupMean: bufs.groupMean,
      flags: bufs.flags,
    };
    const enc = device.createCommandEncoder();
    plan.encode(enc, {
      q: bufs.q,
      summaries: bufs.summaries,
      selected: bufs.selected,
      residentOnly: { mask: bufs.mask, maskStride: stride, selected: bufs.best, flags: bufs.flags },
      similarity,
    });
    device.queue.submit([enc.finish()]);
    const read = async (b: GPUBuffer) => await readBuffer(device, b, b.size);
    // Bit for bit the similarity kernel's figures (same sums, same order).
    assert.deepEqual(new Float32Array(await read(bufs.cosine)), kernel.cosine);
    assert.deepEqual(new Float32Array(await read(bufs.groupMean)), kernel.groupMean);
    assert.deepEqual(new Uint32Array(await read(bufs.flags)), want.flags);
    for (let i = 0; i < want.cosine.length; i++) {
      assert.ok(Math.abs(kernel.cosine[i] - want.cosine[i]) < 1e-6, `cosine ${i}`);
    }
    // Every page resident: a flagged head's resident-only top-k is its top-k;
    // the unflagged head's row keeps what was there.
    const selected = new Uint32Array(await read(bufs.selected));
    assert.deepEqual(selected, selectPagesReference(inputs, options).selected);
    const best = new Uint32Array(await read(bufs.best));
    for (let bh = 0; bh < B * 2; bh++) {
      const row = [...best.subarray(bh * shape.k, (bh + 1) * shape.k)];
      const wantRow = want.flags[bh] === 1
        ? [...selected.subarray(bh * shape.k, (bh + 1) * shape.k)]
        : new Array(shape.k).fill(sentinel);
      assert.deepEqual(row, wantRow, `row ${bh}`);
    }
    // Without storeQuery the previous q stays; with it the same check runs
    // on it, then leaves this step's q there for the next check.
    assert.deepEqual(new Float32Array(await read(bufs.qPrev)), qPrev);
    using storing = selector.plan({ ...inputs, tau, storeQuery: true });
    const enc2 = device.createCommandEncoder();
    storing.encode(enc2, {
      q: bufs.q,
      summaries: bufs.summaries,
      selected: bufs.selected,
      similarity: { ...similarity, flags: bufs.flags },
    });
    device.queue.submit([enc2.finish()]);
    assert.deepEqual(new Float32Array(await read(bufs.cosine)), kernel.cosine);
    assert.deepEqual(new Uint32Array(await read(bufs.flags)), want.flags);
    assert.deepEqual(new Float32Array(await read(bufs.qPrev)), inputs.q);
    // Refusals, before any GPU work.
    const other = createBuffer(device, "other flags", usage, B * 2 * 4);
    const base = { q: bufs.q, summaries: bufs.summaries, selected: bufs.selected };
    assert.throws(
      () =>
        plan.encode(device.createCommandEncoder(), {
          ...base,
          similarity: { ...similarity, qPrev: { buffer: bufs.q, offset: 0, size: bufs.q.size } },
        }),
      /'similarity.qPrev' is bound writable and must not share a buffer with 'q'/,
    );
    assert.throws(
      () =>
        plan.encode(device.createCommandEncoder(), {
          ...base,
          residentOnly: {
            mask: bufs.qPrev,
            maskStride: stride,
            selected: bufs.best,
            flags: bufs.flags,
          },
          similarity,
        }),
      /'similarity.qPrev' is bound writable and must not share a buffer with 'residentOnly.mask'/,
    );
    assert.throws(
      () => selector.plan({ ...inputs, storeQuery: "yes" as unknown as boolean }),
      /'storeQuery' must be a boolean: received "yes"/,
    );
    assert.throws(
      () =>
        plan.encode(device.createCommandEncoder(), {
          ...base,
          residentOnly: { mask: bufs.mask, maskStride: stride, selected: bufs.best, flags: other },
          similarity,
        }),
      /'residentOnly.flags' must be 'similarity.flags' when both are given/,
    );
    assert.throws(
      () =>
        plan.encode(device.createCommandEncoder(), {
          ...base,
          similarity: { ...similarity, cosine: other },
        }),
      /'similarity.cosine' must hold batch \* numQueryHeads f32 \(48 bytes\): received 16 bytes/,
    );
    using radix = createPageSelector(device, { ...options, countingTopkMax: 0 });
    using radixPlan = radix.plan({ ...inputs, tau });
    assert.equal(radixPlan.fused, false);
    assert.equal(radixPlan.fusesSimilarity, false);
    assert.throws(
      () =>
        radixPlan.encode(device.createCommandEncoder(), {
          ...base,
          similarity,
        }),
      /'similarity' needs the one-dispatch selection \(at most 0 candidates\): received 20 candidates/,
    );
    assert.throws(() => selector.plan({ ...inputs, tau: NaN }), /'tau' must be a finite number/);
    other.destroy();
    Object.values(bufs).forEach((x) => x.destroy());
  },
);

gpuTest(
  "page tables in the selection's dispatch equal the page-table kernel's (quest-like, and freekv with computed flags)",
  async ({ device }) => {
    const hkv = 2, hq = 6, d = 16, k = 4, B = 2, maxPages = 32, S = 1, W = 2;
    const options: PageSelectorOptions = { numQueryHeads: hq, numKvHeads: hkv, headDim: d };
    const budget = { pageSize: 4, sinkPages: S, windowPages: W, selectPages: k };
    const regions = [pageRegions(95, budget), pageRegions(70, budget)];
    const rng = createRandom(33);
    const inputs = {
      pageOffset: [0, maxPages],
      candidateStart: regions.map((r) => r.candidateStart),
      candidateEnd: regions.map((r) => r.windowStart),
      k,
      tau: 0.5,
    };
    const q = randomNormalArray(rng, B * hq * d);
    const qPrev = randomNormalArray(rng, B * hq * d);
    qPrev.set(q.subarray(0, 3 * d), 0); // (b 0, KV head 0) keeps its query
    const summaries = randomNormalArray(rng, 2 * maxPages * hkv * 2 * d);
    const residency = new Uint32Array(B * hkv * maxPages).fill(EMPTY_PAGE);
    for (let i = 0; i < residency.length; i++) if (rng.next() < 0.5) residency[i] = i % 5;
    const spec = Uint32Array.from({ length: B * hkv * k }, () => rng.int(maxPages));
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const make = (label: string, data: ArrayBufferView | number) =>
      createBuffer(device, label, usage, data as Float32Array);
    using selector = createPageSelector(device, options);
    using plan = selector.plan(inputs);
    if (!plan.fusesTable) return; // the engine builds tables with their own kernel there
    for (const freekv of [false, true]) {
      const builder = createPageTableBuilder(device, {
        numKvHeads: hkv,
        selectPages: k,
        maxPages,
        sinkPages: S,
        windowPages: W,
        slotsPerSeq: freekv ? S + W + 5 : maxPages,
        identity: !freekv,
      });
      const step = { sequences: regions, useFlags: freekv, useBest: freekv };
      using fusedPlan = builder.plan(step);
      using alonePlan = builder.plan(step);
      const m = builder.maxEntries;
      const b = {
        q: make("q", q),
        qPrev: make("q prev", qPrev),
        summaries: make("summaries", summaries),
        selected: make("selected", B * hkv * k * 4),
        best: make("best", B * hkv * k * 4),
        mask: make("residency", residency),
        spec: make("spec", spec),
        cosine: make("cosine", B * hq * 4),
        groupMean: make("mean", B * hkv * 4),
        flags: make("flags", B * hkv * 4),
        hits: [make("hits fused", B * hkv * 4), make("hits alone", B * hkv * 4)],
        table: [make("table fused", B * hkv * m * 4), make("table alone", B * hkv * m * 4)],
        pages: [make("pages fused", B * hkv * m * 4), make("pages alone", B * hkv * m * 4)],
      };
      const tableBuffers = (i: number) => ({
        fresh: b.selected,
        spec: freekv ? b.spec : undefined,
        flags: freekv ? b.flags : undefined,
        best: freekv ? b.best : undefined,
        residency: freekv ? b.mask : undefined,
        table: b.table[i],
        pages: b.pages[i],
        hits: b.hits[i],
      });
      const base = { q: b.q, summaries: b.summaries, selected: b.selected };
      const enc = device.createCommandEncoder();
      plan.encode(enc, {
        ...base,
        ...(freekv
          ? {
            residentOnly: { mask: b.mask, maskStride: maxPages, selected: b.best, flags: b.flags },
            similarity: {
              qPrev: b.qPrev,
              cosine: b.cosine,
              groupMean: b.groupMean,
              flags: b.flags,
            },
          }
          : {}),
        pageTable: { plan: fusedPlan, buffers: tableBuffers(0) },
      });
      // The page-table kernel over the same selections, after the fused dispatch.
      alonePlan.encode(enc, tableBuffers(1));
      device.queue.submit([enc.finish()]);
      const read = async (x: GPUBuffer) => new Uint32Array(await readBuffer(device, x, x.size));
      for (const name of ["table", "pages", "hits"] as const) {
        assert.deepEqual(
          await read(b[name][0]),
          await read(b[name][1]),
          `${name} (freekv ${freekv})`,
        );
      }
      const flags = await read(b.flags);
      if (freekv) assert.ok(flags.includes(0) && flags.includes(1), `flags ${flags}`);
      // A table that does not build from this selection's buffers is refused.
      assert.throws(
        () =>
          plan.encode(device.createCommandEncoder(), {
            ...base,
            pageTable: { plan: fusedPlan, buffers: { ...tableBuffers(0), fresh: b.spec } },
          }),
        /'pageTable' must build from this selection's buffers: received 'fresh' other than 'selected'/,
      );
      for (const x of Object.values(b).flat()) x.destroy();
    }
  },
);

gpuTest(
  "one-dispatch selection appends the step's K and V rows (f32 NHD, f16 HND)",
  async (gpu) => {
    const { device } = gpu;
    const shape = { numKvHeads: 2, group: 2, headDim: 8, counts: [30, 12], k: 4 };
    const options = { numQueryHeads: 4, numKvHeads: 2, headDim: 8, pooling: "mean" as const };
    const { inputs, want } = separatedInputs(21, shape, options);
    const row = shape.numKvHeads * shape.headDim;
    const storage = GPUBufferUsage.STORAGE;
    const out = storage | GPUBufferUsage.COPY_SRC;
    using selector = createPageSelector(device, options);
    using plan = selector.plan(inputs);
    // A device binding fewer storage buffers than the append needs fuses nothing.
    if (device.limits.maxStorageBuffersPerShaderStage < 21) return;
    assert.equal(plan.fusesAppend, true);
    const cases: { dtype: KvDtype; P: number }[] = [{ dtype: "f32", P: 0 }];
    if (device.features.has("shader-f16")) cases.push({ dtype: "f16", P: 4 });
    for (const { dtype, P } of cases) {
      const rng = createRandom(5);
      // Values exact in f16, so that the GPU and JS conversions agree.
      const values = (n: number) => randomNormalArray(rng, n).map((x) => Math.round(x * 64) / 64);
      const k = values(2 * row), v = values(2 * row);
      const slots = 12;
      const dstOffsets = new Uint32Array(
        P > 0
          ? [slotOffset("hnd", { pageSize: P, kvHeads: 2, headDim: 8 }, 2, 1, 0), 5 * P * row / P]
          : [7 * row, 2 * row],
      );
      const appendOptions = { numKvHeads: 2, headDim: 8, dtype, headStride: P > 0 ? P * 8 : 8 };
      const Kind = dtype === "f16" ? Float16Array : Float32Array;
      const kCache = new Kind(values(slots * row)), vCache = new Kind(values(slots * row));
      const expected = kvAppendReference({ k, v, kCache, vCache, dstOffsets }, appendOptions);
      const append = createKvAppend(device, appendOptions);
      using rows = append.plan({ dstOffsets });
      const b = {
        q: createBuffer(device, "q", storage, inputs.q),
        summaries: createBuffer(device, "s", storage, inputs.summaries),
        selected: createBuffer(device, "sel", out, 2 * 2 * 4 * 4),
        k: createBuffer(device, "k", storage, k),
        v: createBuffer(device, "v", storage, v),
        kCache: createBuffer(device, "kCache", out, kCache),
        vCache: createBuffer(device, "vCache", out, vCache),
      };
      const appendBuffers = { k: b.k, v: b.v, kCache: b.kCache, vCache: b.vCache };
      await noGpuErrors(device, async () => {
        const encoder = device.createCommandEncoder();
        plan.encode(encoder, {
          q: b.q,
          summaries: b.summaries,
          selected: b.selected,
          append: { plan: rows, buffers: appendBuffers },
        });
        device.queue.submit([encoder.finish()]);
        assert.deepEqual(new Uint32Array(await readBuffer(device, b.selected)), want, dtype);
        assertArraysEqual(new Kind(await readBuffer(device, b.kCache)), expected.kCache, "kCache");
        assertArraysEqual(new Kind(await readBuffer(device, b.vCache)), expected.vCache, "vCache");
      });
      // Bad input: refused before anything is recorded, caches as they were.
      const base = { q: b.q, summaries: b.summaries, selected: b.selected };
      const refused = (buffers: object, pattern: RegExp) => {
        const encoder = device.createCommandEncoder();
        assert.throws(
          () => plan.encode(encoder, { ...base, ...buffers }),
          (e: Error) => e instanceof RangeError && pattern.test(e.message),
        );
        encoder.finish();
      };
      using oneRow = append.plan({ dstOffsets: dstOffsets.subarray(0, 1) });
      refused(
        { append: { plan: oneRow, buffers: appendBuffers } },
        /'append' must store one row of numKvHeads \* headDim elements per sequence: received a plan of 1 rows for a selection of 2 sequences/,
      );
      refused(
        { append: { plan: rows, buffers: { ...appendBuffers, kCache: b.summaries } } },
        /'append.buffers.kCache' is bound writable and must not share a buffer with 'summaries'/,
      );
      using wide = createKvAppend(device, { numKvHeads: 1, headDim: 12, dtype }).plan({
        dstOffsets: new Uint32Array([0, 16]),
      });
      refused(
        { append: { plan: wide, buffers: appendBuffers } },
        /received rows of 12 elements for 2 KV heads of 8/,
      );
      assertArraysEqual(new Kind(await readBuffer(device, b.kCache)), expected.kCache, "kept");
      for (const x of Object.values(b)) x.destroy();
    }
    assert.throws(
      () => selector.compile([{ append: "f64" as KvDtype }]),
      (e: Error) =>
        e instanceof TypeError &&
        /'variants\[0\]\.append' must be one of "f32", "f16": received "f64"/.test(e.message),
    );
    // A step too long for one dispatch cannot take the append.
    const { inputs: long } = separatedInputs(23, { ...shape, counts: [300, 12] }, options);
    using longPlan = selector.plan(long);
    assert.equal(longPlan.fusesAppend, false);
    using plain = await requestGpu({ f16: false });
    const packed = createKvAppend(plain.device, { numKvHeads: 2, headDim: 8, dtype: "f16" });
    using packedRows = packed.plan({ dstOffsets: new Uint32Array([0, 16]) });
    const scratch = createBuffer(plain.device, "scratch", storage, 4096);
    assert.throws(
      () => packedRows.bindings({ k: scratch, v: scratch, kCache: scratch, vCache: scratch }),
      (e: Error) => e instanceof RangeError && /not packed|packed words/.test(e.message),
    );
    scratch.destroy();
  },
);
