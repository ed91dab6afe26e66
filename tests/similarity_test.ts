import assert from "node:assert/strict";
import { gpuTest, noGpuErrors } from "./_gpu.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import {
  createQuerySimilarity,
  querySimilarity,
  type QuerySimilarityInputs,
  type QuerySimilarityOptions,
} from "../lib/kernels/similarity.ts";
import { querySimilarityReference } from "../lib/kernels/similarity_reference.ts";
import { assertClose } from "./_assert.ts";

/** q_prev = q_now + noise of random size per head, so cosines spread over (-1, 1]. */
function randomPair(seed: number, length: number, headDim: number): [Float32Array, Float32Array] {
  const rng = createRandom(seed);
  const now = randomNormalArray(rng, length);
  const prev = new Float32Array(length);
  for (let h = 0; h < length / headDim; h++) {
    const noise = 3 * rng.next() ** 2;
    for (let c = 0; c < headDim; c++) {
      prev[h * headDim + c] = now[h * headDim + c] + noise * rng.normal();
    }
  }
  return [now, prev];
}

const SHAPES = [
  { numQueryHeads: 3, numKvHeads: 3, headDim: 8, batch: 1 },
  { numQueryHeads: 4, numKvHeads: 2, headDim: 64, batch: 3 },
  { numQueryHeads: 32, numKvHeads: 8, headDim: 128, batch: 3 },
  { numQueryHeads: 14, numKvHeads: 2, headDim: 128, batch: 1 },
];

gpuTest("query similarity matches the oracle (group sizes 1, 2, 4, 7)", async (gpu) => {
  for (const [i, { batch, ...options }] of SHAPES.entries()) {
    const [qNow, qPrev] = randomPair(
      i + 1,
      batch * options.numQueryHeads * options.headDim,
      options.headDim,
    );
    // A zero query head: cosine 0 by definition.
    qNow.fill(0, options.headDim, 2 * options.headDim);
    const inputs = { qNow, qPrev, tau: 0.6 };
    const got = await noGpuErrors(gpu.device, () => querySimilarity(gpu.device, inputs, options));
    const want = querySimilarityReference(inputs, options);
    const label = JSON.stringify(options);
    assertClose(got.cosine, want.cosine, 2e-6, label);
    assertClose(got.groupMean, want.groupMean, 2e-6, label);
    assert.equal(got.cosine[1], 0);
    for (let j = 0; j < want.flags.length; j++) {
      // Flags agree wherever the mean is not within rounding of tau.
      if (Math.abs(want.groupMean[j] - 0.6) > 1e-5) {
        assert.equal(got.flags[j], want.flags[j], label);
      }
    }
    assert.ok(want.flags.some((f) => f === 1) || want.flags.length < 4, `${label}: some flagged`);
  }
});

gpuTest("query similarity: exact cases, tau per call, zero vectors", async (gpu) => {
  const { device } = gpu;
  const options = { numQueryHeads: 4, numKvHeads: 2, headDim: 2 };
  // KV head 0: parallel (1) and opposite (-1) -> mean 0; KV head 1: parallel and zero -> 0.5.
  const qNow = new Float32Array([3, 4, 3, 0, 1, 0, 0, 0]);
  const qPrev = new Float32Array([6, 8, -3, 0, 2, 0, 1, 1]);
  const storage = GPUBufferUsage.STORAGE;
  const out = storage | GPUBufferUsage.COPY_SRC;
  const buffers = {
    qNow: createBuffer(device, "now", storage, qNow),
    qPrev: createBuffer(device, "prev", storage, qPrev),
    cosine: createBuffer(device, "cos", out, 16),
    groupMean: createBuffer(device, "mean", out, 8),
    flags: createBuffer(device, "flags", out, 8),
  };
  const flags2 = createBuffer(device, "flags2", out, 8);
  using similarity = createQuerySimilarity(device, options);
  using low = similarity.plan({ batch: 1, tau: 0.499 });
  using high = similarity.plan({ batch: 1, tau: 0.501 });
  const encoder = device.createCommandEncoder();
  low.encode(encoder, buffers);
  high.encode(encoder, { ...buffers, flags: flags2 });
  device.queue.submit([encoder.finish()]);
  const close = (got: ArrayBuffer, want: number[]) =>
    assertClose(new Float32Array(got), new Float32Array(want), 1e-6, "exact case");
  close(await readBuffer(device, buffers.cosine), [1, -1, 1, 0]);
  close(await readBuffer(device, buffers.groupMean), [0, 0.5]);
  // Two values of tau in one submission: mean 0.5 is flagged only under 0.501.
  assert.deepEqual([...new Uint32Array(await readBuffer(device, buffers.flags))], [1, 0]);
  assert.deepEqual([...new Uint32Array(await readBuffer(device, flags2))], [1, 1]);
  const ref = querySimilarityReference({ qNow, qPrev, tau: 0.5 }, options);
  assert.deepEqual([...ref.cosine], [1, -1, 1, 0]);
  assert.deepEqual([...ref.flags], [1, 0]);
  for (const b of [...Object.values(buffers), flags2]) if (b instanceof GPUBuffer) b.destroy();
});

gpuTest(
  "query similarity with storeQuery: the check reads the old q_prev, then q_prev holds q_now",
  async (gpu) => {
    const { device } = gpu;
    const options = { numQueryHeads: 4, numKvHeads: 2, headDim: 8 };
    const batch = 2;
    const [qNow, qPrev] = randomPair(7, batch * 4 * 8, 8);
    const [qNext] = randomPair(8, batch * 4 * 8, 8);
    const storage = GPUBufferUsage.STORAGE;
    const out = storage | GPUBufferUsage.COPY_SRC;
    const buffers = {
      qNow: createBuffer(device, "now", storage, qNow),
      qPrev: createBuffer(device, "prev", out, qPrev),
      cosine: createBuffer(device, "cos", out, batch * 4 * 4),
      groupMean: createBuffer(device, "mean", out, batch * 2 * 4),
      flags: createBuffer(device, "flags", out, batch * 2 * 4),
    };
    const next = createBuffer(device, "next", storage, qNext);
    using similarity = createQuerySimilarity(device, options);
    using plan = similarity.plan({ batch, tau: 0.5, storeQuery: true });
    assert.equal(plan.storeQuery, true);
    // Step 2 compares with the q that step 1 stored.
    const steps = [
      { qNow: buffers.qNow, now: qNow, prev: qPrev },
      { qNow: next, now: qNext, prev: qNow },
    ];
    for (const [i, step] of steps.entries()) {
      const encoder = device.createCommandEncoder();
      plan.encode(encoder, { ...buffers, qNow: step.qNow });
      device.queue.submit([encoder.finish()]);
      const want = querySimilarityReference(
        { qNow: step.now, qPrev: step.prev, tau: 0.5 },
        options,
      );
      const cosine = new Float32Array(await readBuffer(device, buffers.cosine));
      assertClose(cosine, want.cosine, 2e-6, `step ${i + 1}`);
      assert.deepEqual(new Float32Array(await readBuffer(device, buffers.qPrev)), step.now);
    }
    for (const b of [...Object.values(buffers), next]) b.destroy();
  },
);

gpuTest("query similarity: bad input throws before GPU work", async (gpu) => {
  const { device } = gpu;
  const options = { numQueryHeads: 2, numKvHeads: 1, headDim: 2 };
  const ok = { qNow: new Float32Array(4), qPrev: new Float32Array(4), tau: 0.9 };
  type Override = [Partial<QuerySimilarityInputs>, Partial<QuerySimilarityOptions>?];
  const cases: Array<[string, Override, ErrorConstructor, RegExp]> = [
    ["group", [{}, { numKvHeads: 3 }], RangeError, /multiple of 'numKvHeads' \(3\): received 2/],
    ["head dim", [{}, { headDim: 0 }], RangeError, /'headDim' must be at least 1: received 0/],
    [
      "length",
      [{ qNow: new Float32Array(6), qPrev: new Float32Array(6) }],
      RangeError,
      /'qNow' must have a length that is a positive multiple of numQueryHeads \* headDim = 4: received length 6/,
    ],
    [
      "prev length",
      [{ qPrev: new Float32Array(8) }],
      RangeError,
      /'qPrev' must have the length of 'qNow' 4: received length 8/,
    ],
    ["tau", [{ tau: NaN }], TypeError, /'tau' must be a finite number: received NaN/],
    [
      "NaN q",
      [{ qPrev: new Float32Array([0, NaN, 0, 0]) }],
      RangeError,
      /'qPrev' must hold only finite values: received NaN at index 1/,
    ],
    [
      "type",
      [{ qNow: new Float64Array(4) as unknown as Float32Array }],
      TypeError,
      /'qNow' must be a Float32Array: received Float64Array of length 4/,
    ],
  ];
  const matches = (type: ErrorConstructor, message: RegExp) => (e: unknown) =>
    e instanceof type && message.test((e as Error).message);
  for (const [name, [inputs, opts], type, message] of cases) {
    const args = [{ ...ok, ...inputs }, { ...options, ...opts }] as const;
    assert.throws(() => querySimilarityReference(...args), matches(type, message), name);
    await assert.rejects(() => querySimilarity(device, ...args), matches(type, message), name);
  }
  using similarity = createQuerySimilarity(device, options);
  const storage = GPUBufferUsage.STORAGE;
  const q = createBuffer(device, "q", storage, 16);
  const small = createBuffer(device, "small", storage, 4);
  const copy = createBuffer(device, "copy", GPUBufferUsage.COPY_SRC, 16);
  const prev = createBuffer(device, "prev", storage, 16);
  const buffers = { qNow: q, qPrev: prev, cosine: q, groupMean: q, flags: q };
  using plan = similarity.plan({ batch: 1, tau: 0.5 });
  using plan2 = similarity.plan({ batch: 2, tau: 0.5 });
  const encoder = device.createCommandEncoder();
  assert.throws(
    () => plan2.encode(encoder, buffers),
    matches(RangeError, /'qNow' must hold at least 32 bytes: received 16 bytes/),
  );
  assert.throws(
    () => plan.encode(encoder, { ...buffers, cosine: small }),
    matches(RangeError, /'cosine' must hold at least 8 bytes: received 4 bytes/),
  );
  assert.throws(
    () => plan.encode(encoder, { ...buffers, flags: copy }),
    matches(TypeError, /'flags' must have usage 128/),
  );
  // qPrev is bound writable: one buffer may not also be read in the dispatch.
  assert.throws(
    () => plan.encode(encoder, { ...buffers, qPrev: { buffer: q, offset: 0, size: 16 } }),
    matches(RangeError, /'qPrev' is bound writable and must not share a buffer with 'qNow'/),
  );
  assert.throws(
    () => similarity.plan({ batch: 1, tau: 0.5, storeQuery: 1 as unknown as boolean }),
    matches(TypeError, /'storeQuery' must be a boolean: received 1/),
  );
  assert.throws(
    () => similarity.plan({ batch: 1, tau: Infinity }),
    matches(TypeError, /'tau' must be a finite number: received Infinity/),
  );
  assert.throws(
    () => plan.update({ batch: 0, tau: 0.5 }),
    matches(RangeError, /'batch' must be between 1 and 65535: received 0/),
  );
  device.queue.submit([encoder.finish()]);
  for (const b of [q, small, copy, prev]) b.destroy();
});
