// Faults: the device lost mid-decode, dispose at any point, long runs,
// engines and sequences that share a device or a batch.
import assert from "node:assert/strict";
import { gpuTest, testGpu } from "./_gpu.ts";
import { assertArraysEqual, assertClose } from "./_assert.ts";
import { type Gpu, requestGpu } from "../lib/gpu/device.ts";
import { DeviceLostError } from "../lib/gpu/errors.ts";
import { liveBuffers } from "../lib/gpu/tracking.ts";
import {
  createRetrievalEngine,
  type EngineOptions,
  type RetrievalEngine,
} from "../lib/engine/engine.ts";
import { soak } from "../scripts/soak.ts";

const SHAPE = { numLayers: 2, numQueryHeads: 4, numKvHeads: 2, headDim: 8 };
const ROW = SHAPE.numKvHeads * SHAPE.headDim;
const QROW = SHAPE.numQueryHeads * SHAPE.headDim;
const BASE: EngineOptions = {
  ...SHAPE,
  maxContext: 512,
  pageSize: 8,
  budget: 48,
  sink: 8,
  window: 16,
  policy: "freekv",
};

function seeded(seed: number, n: number): Float32Array {
  let s = (seed * 2654435761) >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}
const token = (seed: number, batch = 1) => ({
  q: seeded(seed, batch * QROW),
  k: seeded(seed + 0.5e6, batch * ROW),
  v: seeded(seed + 1e6, batch * ROW),
});

async function prefill(e: RetrievalEngine, seq: number, tokens: number, seed: number) {
  for (let l = 0; l < e.options.numLayers; l++) {
    await e.prefill(seq, l, {
      k: seeded(seed + l, tokens * ROW),
      v: seeded(seed + 100 + l, tokens * ROW),
    });
  }
}
async function decode(e: RetrievalEngine, t: number, batch = 1): Promise<Float32Array[]> {
  const outs: Float32Array[] = [];
  for (let l = 0; l < e.options.numLayers; l++) {
    outs.push((await e.step(l, token(1000 * t + l, batch)))!);
  }
  return outs;
}

/** Settles `p` within `ms`; the rejection reason, or undefined when it resolved. */
async function settleWithin(p: Promise<unknown>, ms: number, what: string): Promise<unknown> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    await Promise.race([p, timeout]);
    return undefined;
  } catch (error) {
    if ((error as Error).message.endsWith(`within ${ms} ms`)) throw error;
    return error;
  } finally {
    clearTimeout(timer);
  }
}

// ---- Device loss ----

for (
  const variant of [
    { policy: "freekv", correction: "resident" },
    { policy: "freekv", correction: "sync" },
    { policy: "sync-offload" },
    { policy: "quest" },
  ] as const
) {
  const name = Object.values(variant).join("/");
  gpuTest(
    `device loss mid-decode (${name}): every pending promise settles saying the device was lost; a new device works`,
    async () => {
      const gpu = await requestGpu();
      const e = createRetrievalEngine(gpu.device, { ...BASE, ...variant, tau: 1 });
      await prefill(e, 0, 120, 1);
      for (let t = 0; t < 4; t++) await decode(e, t);
      // In flight: a step (its recall and readback), then more work queued behind it.
      const pending: Promise<unknown>[] = [e.step(0, token(77))];
      pending.push(pending[0].then(() => e.step(1, token(78))));
      pending.push(pending[1].then(() => e.drain()));
      gpu.device.destroy();
      const t0 = performance.now();
      const errors = await Promise.all(
        pending.map((p, i) => settleWithin(p, 5000, `promise ${i}`)),
      );
      assert.ok(performance.now() - t0 < 5000);
      for (const [i, error] of errors.entries()) {
        assert.ok(error instanceof DeviceLostError, `promise ${i}: ${error}`);
        assert.match((error as Error).message, /device was lost/);
      }
      // Later calls say so at once.
      await assert.rejects(e.step(0, token(79)), /GPU device was lost/);
      assert.throws(() => createRetrievalEngine(gpu.device, BASE), DeviceLostError);
      e[Symbol.dispose]();
      assert.equal(liveBuffers(gpu.device).count, 0);
      // A new engine on a new device works.
      using gpu2 = await requestGpu();
      using e2 = createRetrievalEngine(gpu2.device, { ...BASE, ...variant, tau: 1 });
      await prefill(e2, 0, 120, 1);
      const out = await decode(e2, 0);
      assert.equal(out[1].length, QROW);
      assert.ok(out[1].every(Number.isFinite));
    },
  );
}

gpuTest(
  "device loss: a device destroyed before any call is refused at creation with DeviceLostError",
  async () => {
    const gpu = await requestGpu();
    gpu.device.destroy();
    await gpu.lost;
    assert.throws(() => createRetrievalEngine(gpu.device, BASE), /GPU device was lost \(destroyed/);
  },
);

// ---- Dispose at any point (own device, sanitizers on: nothing leaks) ----

async function withDevice(fn: (gpu: Gpu) => Promise<void>): Promise<void> {
  const gpu = await requestGpu();
  try {
    await fn(gpu);
    assert.deepEqual(liveBuffers(gpu.device).labels, [], "live GPU buffers after dispose");
  } finally {
    gpu.device.destroy();
    await gpu.lost;
  }
}

const disposeCases: [string, (gpu: Gpu) => Promise<void>][] = [
  ["right after prefill, then continuing", async (gpu) => {
    const e = createRetrievalEngine(gpu.device, BASE);
    await prefill(e, 0, 100, 1);
    e[Symbol.dispose]();
    await assert.rejects(e.step(0, token(1)), /the engine must not be disposed/);
    await new Promise((r) => setTimeout(r, 50)); // offload maps settle after dispose
  }],
  ["mid-offload (prefill not awaited)", async (gpu) => {
    const e = createRetrievalEngine(gpu.device, BASE);
    const p = e.prefill(0, 0, { k: seeded(1, 200 * ROW), v: seeded(2, 200 * ROW) });
    e[Symbol.dispose]();
    await settleWithin(p, 5000, "prefill");
    await new Promise((r) => setTimeout(r, 50));
  }],
  ["mid-recall (step not awaited)", async (gpu) => {
    const e = createRetrievalEngine(gpu.device, { ...BASE, tau: 1, correction: "sync" });
    await prefill(e, 0, 150, 1);
    for (let t = 0; t < 3; t++) await decode(e, t);
    const p = e.step(0, token(5));
    e[Symbol.dispose]();
    await settleWithin(p, 5000, "step");
    await new Promise((r) => setTimeout(r, 50));
  }],
  ["with a step answer pending (recording API)", async (gpu) => {
    const e = createRetrievalEngine(gpu.device, BASE);
    await prefill(e, 0, 150, 1);
    for (let t = 0; t < 3; t++) {
      await e.beginStep();
      let enc = gpu.device.createCommandEncoder();
      for (let l = 0; l < 2; l++) enc = await e.recordLayer(enc, l, token(t * 10 + l));
      e.endStep(enc);
    }
    e[Symbol.dispose]();
    await new Promise((r) => setTimeout(r, 50));
  }],
  ["twice", async (gpu) => {
    const e = createRetrievalEngine(gpu.device, { ...BASE, policy: "sync-offload" });
    await prefill(e, 0, 100, 1);
    await decode(e, 0);
    e[Symbol.dispose]();
    e[Symbol.dispose]();
  }],
  ["every policy, after decoding", async (gpu) => {
    for (const policy of ["full", "streaming", "quest", "sync-offload", "freekv"] as const) {
      using e = createRetrievalEngine(gpu.device, { ...BASE, policy });
      await prefill(e, 0, 100, 1);
      await decode(e, 0);
      await decode(e, 1);
    }
  }],
];
for (const [name, fn] of disposeCases) {
  Deno.test({
    name: `dispose ${name}: no unhandled rejection, every library buffer destroyed`,
    ignore: testGpu === null,
    fn: () => withDevice(fn),
  });
}

// ---- Long runs (CI-sized; scripts/soak.ts runs 20,000 steps) ----

gpuTest("long run: memory flat after warm-up, statistics add up, nothing leaks", async (gpu) => {
  const r = await soak(gpu.device, { steps: 600, maxContext: 160, warmupEpisodes: 2 });
  assert.equal(r.steps, 600);
  assert.ok(r.episodes >= 6);
  assert.ok(r.pagesRecalled > 0);
  assert.equal(r.bytesRecalled, r.pagesRecalled * r.pageBytes);
  assert.equal(r.gpuBytesGrowth, 0);
  // Flat after warm-up (scratch buffers grow by powers of two until the
  // largest recall of the run was seen).
  for (const s of r.samples.slice(1)) assert.equal(s.gpuBytes, r.samples[1].gpuBytes);
  assert.ok(r.heapGrowth < 8 * 2 ** 20, `heap grew ${r.heapGrowth} bytes`);
  assert.equal(r.leakedBuffers, 0);
});

// ---- Concurrency ----

gpuTest("two engines on one device stepping alternately decode as each alone", async (gpu) => {
  const optsA = { ...BASE, tau: 0.95 };
  const optsB = {
    ...BASE,
    correction: "sync" as const,
    pageSize: 4,
    budget: 32,
    sink: 4,
    window: 8,
  };
  const alone = async (o: EngineOptions, seed: number) => {
    using e = createRetrievalEngine(gpu.device, o);
    await prefill(e, 0, 130, seed);
    const outs = [];
    for (let t = 0; t < 8; t++) outs.push(await decode(e, t + seed));
    return outs;
  };
  const wantA = await alone(optsA, 1), wantB = await alone(optsB, 2);
  using a = createRetrievalEngine(gpu.device, optsA);
  using b = createRetrievalEngine(gpu.device, optsB);
  await prefill(a, 0, 130, 1);
  await prefill(b, 0, 130, 2);
  for (let t = 0; t < 8; t++) {
    // Interleave at layer granularity too.
    for (let l = 0; l < 2; l++) {
      const [oa, ob] = await Promise.all([
        a.step(l, token(1000 * (t + 1) + l)),
        b.step(l, token(1000 * (t + 2) + l)),
      ]);
      assertArraysEqual(oa!, wantA[t][l], `A step ${t} layer ${l}`);
      assertArraysEqual(ob!, wantB[t][l], `B step ${t} layer ${l}`);
    }
  }
});

for (const correction of ["resident", "sync"] as const) {
  gpuTest(
    `a batch whose sequences finish at different times (${correction}): reset one, refill it, the other decodes as if alone`,
    async (gpu) => {
      const opts = { ...BASE, batch: 2, tau: 0.9, correction };
      const single = { ...BASE, tau: 0.9, correction };
      const seqOut = (out: Float32Array, b: number) => out.subarray(b * QROW, (b + 1) * QROW);
      const two = (t: number, seeds: [number, number]) => {
        const a = token(seeds[0] + t), c = token(seeds[1] + t);
        const cat = (x: Float32Array, y: Float32Array) => {
          const r = new Float32Array(x.length * 2);
          r.set(x), r.set(y, x.length);
          return r;
        };
        return { q: cat(a.q, c.q), k: cat(a.k, c.k), v: cat(a.v, c.v) };
      };
      // Reference: each sequence alone in a batch-1 engine.
      const run = async (prompt: number, pseed: number, tseed: number, steps: number) => {
        using e = createRetrievalEngine(gpu.device, single);
        await prefill(e, 0, prompt, pseed);
        const outs = [];
        for (let t = 0; t < steps; t++) {
          const row = [];
          for (let l = 0; l < 2; l++) row.push((await e.step(l, token(tseed + t * 10 + l)))!);
          outs.push(row);
        }
        return outs;
      };
      const long = await run(140, 1, 5000, 14);
      const first = await run(90, 2, 7000, 6);
      const second = await run(110, 3, 9000, 8);
      using e = createRetrievalEngine(gpu.device, opts);
      await prefill(e, 0, 140, 1);
      await prefill(e, 1, 90, 2);
      let seed1 = 7000, t1 = 0;
      let expect1 = first;
      for (let t = 0; t < 14; t++) {
        if (t === 6) {
          // Sequence 1 finished: the next prompt takes its place while 0 goes on.
          await e.reset(1);
          assert.equal(e.length(0, 1), 0);
          await prefill(e, 1, 110, 3);
          seed1 = 9000, t1 = 0, expect1 = second;
        }
        for (let l = 0; l < 2; l++) {
          const inputs = two(0, [5000 + t * 10 + l, seed1 + t1 * 10 + l]);
          const out = (await e.step(l, inputs))!;
          assertClose(seqOut(out, 0), long[t][l], 1e-6, `seq 0 step ${t} layer ${l}`);
          assertClose(seqOut(out, 1), expect1[t1][l], 1e-6, `seq 1 step ${t1} layer ${l}`);
        }
        t1++;
      }
    },
  );
}

gpuTest(
  "a sequence reset while its recall is in flight comes back like a fresh one",
  async (gpu) => {
    const opts = { ...BASE, batch: 2, tau: 1 };
    const cat = (x: Float32Array, y: Float32Array) => {
      const r = new Float32Array(x.length * 2);
      r.set(x), r.set(y, x.length);
      return r;
    };
    const both = (s: number) => {
      const a = token(s), b = token(s + 3);
      return { q: cat(a.q, b.q), k: cat(a.k, b.k), v: cat(a.v, b.v) };
    };
    using e = createRetrievalEngine(gpu.device, opts);
    using ref = createRetrievalEngine(gpu.device, opts);
    for (const x of [e, ref]) {
      await prefill(x, 0, 160, 1);
      await prefill(x, 1, 160, 2);
    }
    // Both engines take the same steps; then `e` resets sequence 1 while the
    // step's answer (and the recall it drives) is still on its way, `ref`
    // resets after everything settled.
    for (let t = 0; t < 4; t++) {
      for (const x of [e, ref]) {
        await x.beginStep();
        let enc = gpu.device.createCommandEncoder();
        for (let l = 0; l < 2; l++) enc = await x.recordLayer(enc, l, both(t * 10 + l));
        x.endStep(enc);
      }
    }
    const inFlight = e.reset(1);
    await ref.drain();
    await ref.reset(1);
    await inFlight;
    for (const x of [e, ref]) await prefill(x, 1, 100, 9);
    for (let t = 4; t < 9; t++) {
      for (let l = 0; l < 2; l++) {
        const [a, b] = [await e.step(l, both(t * 10 + l)), await ref.step(l, both(t * 10 + l))];
        assertArraysEqual(a!, b!, `step ${t} layer ${l}`);
      }
    }
  },
);
