import assert from "node:assert/strict";
import { gpuTest } from "./_gpu.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";
import {
  createSeqUniform,
  type KernelPlan,
  planCausalAttention,
  planEmbedding,
  planMatmul,
  planMatvec,
  planResidualAdd,
  planRmsNorm,
  planRope,
  planSampleToken,
  planSwiglu,
  recordPlans,
  ropeInvFreq,
  uploadMatrix,
  uploadVector,
  writeSeqStart,
} from "../lib/model/kernels.ts";
import {
  causalAttentionReference,
  embeddingReference,
  matmulReference,
  residualAddReference,
  rmsnormReference,
  ropeReference,
  sampleTokenReference,
  swigluReference,
} from "../lib/model/kernels_reference.ts";
import { bf16BitsFromFloat, convertTensor, tensorToFloat32 } from "../lib/model/weight_convert.ts";
import type { Tensor, WeightDtype } from "../lib/model/types.ts";
import { assertClose } from "./_assert.ts";

const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

function run(device: GPUDevice, plans: KernelPlan[]) {
  const enc = device.createCommandEncoder({ label: "test" });
  recordPlans(enc, plans, "test");
  device.queue.submit([enc.finish()]);
}

async function read(device: GPUDevice, b: GPUBuffer, n: number): Promise<Float32Array> {
  return new Float32Array(await readBuffer(device, b, n * 4));
}

function tensor(data: Float32Array, shape: number[], dtype: WeightDtype = "f32"): Tensor {
  return convertTensor({ dtype: "f32", shape, data }, dtype);
}

Deno.test("weight conversions round to nearest even and decode back", () => {
  assert.equal(bf16BitsFromFloat(1), 0x3f80);
  // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even (1).
  assert.equal(bf16BitsFromFloat(1 + 2 ** -8), 0x3f80);
  assert.equal(bf16BitsFromFloat(1 + 3 * 2 ** -8), 0x3f82);
  assert.ok(Number.isNaN(tensorToFloat32(tensor(new Float32Array([NaN]), [1], "bf16"))[0]));
  const x = new Float32Array([0.1, -2.5, 1e-3, 65504]);
  assertClose(tensorToFloat32(tensor(x, [4], "f16")), x, 1e-4 * 65504);
  assertClose(tensorToFloat32(tensor(x, [4], "bf16")).subarray(0, 3), x.subarray(0, 3), 0.01);
});

gpuTest("embedding lookup over a table split into parts, all dtypes", async ({ device }) => {
  const rng = createRandom(1);
  for (const dtype of ["f32", "f16", "bf16"] as const) {
    const vocab = 37, dim = 13; // odd dim: 16-bit rows straddle words
    const table = tensor(randomNormalArray(rng, vocab * dim), [vocab, dim], dtype);
    // Parts of 5 rows force 8 dispatches.
    using gm = uploadMatrix(device, table, { maxPartBytes: 5 * dim * 4 + 4 });
    assert.equal(gm.parts.length, dtype === "f32" ? 8 : 4);
    const ids = [0, 36, 5, 4, 17, 17, 30, 1, 9];
    const tokens = createBuffer(device, "tokens", S, new Uint32Array(ids));
    const out = createBuffer(device, "out", S, ids.length * dim * 4);
    using plan = planEmbedding(device, { table: gm, tokens, output: out, count: ids.length });
    run(device, [plan]);
    assert.deepEqual(await read(device, out, ids.length * dim), embeddingReference(table, ids));
    tokens.destroy(), out.destroy();
  }
});

gpuTest("rmsnorm matches the oracle on awkward sizes", async ({ device }) => {
  const rng = createRandom(2);
  for (const [rows, dim] of [[1, 64], [3, 13], [5, 300]]) {
    const x = randomNormalArray(rng, rows * dim, 3);
    const w = randomNormalArray(rng, dim);
    const input = createBuffer(device, "x", S, x);
    const weight = uploadVector(device, tensor(w, [dim]), "w");
    const output = createBuffer(device, "y", S, rows * dim * 4);
    using plan = planRmsNorm(device, { input, weight, output, rows, dim, eps: 1e-5 });
    run(device, [plan]);
    assertClose(
      await read(device, output, rows * dim),
      rmsnormReference(x, w, { eps: 1e-5 }),
      1e-5,
      `rmsnorm ${rows}x${dim}`,
    );
    input.destroy(), weight.destroy(), output.destroy();
  }
});

gpuTest(
  "matvec and matmul match the oracle: dtypes, bias, parts, odd sizes",
  async ({ device }) => {
    const rng = createRandom(3);
    const cases: Array<[number, number, number, WeightDtype, boolean, number?]> = [
      // [tokens, rows, cols, dtype, bias, maxPartRows]
      [1, 70, 64, "f32", false],
      [1, 33, 17, "f16", true],
      [1, 40, 50, "bf16", false, 7],
      [1, 5, 300, "f16", false],
      [7, 70, 64, "f32", true],
      [19, 33, 17, "bf16", true, 10],
      [33, 50, 40, "f16", false, 16],
      [2, 3, 5, "f32", false],
      [70, 130, 40, "f16", true, 65],
      [129, 65, 33, "f32", false],
    ];
    for (const [tokens, rows, cols, dtype, withBias, maxRows] of cases) {
      const w = tensor(randomNormalArray(rng, rows * cols, 0.3), [rows, cols], dtype);
      const x = randomNormalArray(rng, tokens * cols);
      const b = withBias ? randomNormalArray(rng, rows) : undefined;
      const bytes = dtype === "f32" ? 4 : 2;
      using weight = uploadMatrix(device, w, {
        maxPartBytes: maxRows ? maxRows * cols * bytes + 4 : undefined,
      });
      if (maxRows) assert.equal(weight.parts.length, Math.ceil(rows / maxRows));
      const input = createBuffer(device, "x", S, x);
      const output = createBuffer(device, "y", S, tokens * rows * 4);
      const bias = b ? createBuffer(device, "b", S, b) : undefined;
      const opts = { weight, input, output, bias, tokens };
      using plan = tokens === 1 ? planMatvec(device, opts) : planMatmul(device, opts);
      run(device, [plan]);
      // The oracle uses the same (rounded) weights, so only summation order differs.
      const expected = matmulReference(w, x, { bias: b });
      assertClose(
        await read(device, output, tokens * rows),
        expected,
        2e-5 * Math.sqrt(cols) * 4,
        `${tokens}x${rows}x${cols} ${dtype}`,
      );
      if (tokens > 1) {
        // matmul over one row equals matvec
        const one = createBuffer(device, "y1", S, rows * 4);
        using mv = planMatvec(device, { weight, input, output: one, bias });
        run(device, [mv]);
        assertClose(await read(device, one, rows), expected.subarray(0, rows), 1e-4, "row 0");
        one.destroy();
      }
      input.destroy(), output.destroy(), bias?.destroy();
    }
  },
);

gpuTest("16-bit weights stay within their rounding of the f32 product", async ({ device }) => {
  const rng = createRandom(4);
  const rows = 24, cols = 96;
  const w32 = randomNormalArray(rng, rows * cols, 0.2);
  const x = randomNormalArray(rng, cols);
  const exact = matmulReference(tensor(w32, [rows, cols]), x);
  for (const [dtype, tol] of [["f16", 0.01], ["bf16", 0.08]] as const) {
    using weight = uploadMatrix(device, tensor(w32, [rows, cols]), { dtype });
    const input = createBuffer(device, "x", S, x);
    const output = createBuffer(device, "y", S, rows * 4);
    using plan = planMatvec(device, { weight, input, output });
    run(device, [plan]);
    assertClose(await read(device, output, rows), exact, tol, dtype);
    input.destroy(), output.destroy();
  }
});

gpuTest("rope in both layouts at large positions", async ({ device }) => {
  const rng = createRandom(5);
  for (const style of ["adjacent", "half"] as const) {
    for (const [rows, heads, headDim, start] of [[3, 7, 8, 0], [2, 4, 128, 5000], [1, 2, 6, 511]]) {
      const x = randomNormalArray(rng, rows * heads * headDim);
      const data = createBuffer(device, "x", S, x);
      const invFreq = createBuffer(device, "f", S, ropeInvFreq(headDim, 10000));
      const seq = createSeqUniform(device, "seq", start);
      using plan = planRope(device, { data, rows, heads, headDim, style, invFreq, seq });
      run(device, [plan]);
      const expected = ropeReference(x, { heads, headDim, start, theta: 10000, style });
      // f32 angles: error grows with the position (ulp of pos * freq).
      const tol = 2e-5 + 4e-7 * (start + rows) * 4;
      assertClose(
        await read(device, data, x.length),
        expected,
        tol,
        `${style} d${headDim}@${start}`,
      );
      data.destroy(), invFreq.destroy(), seq.destroy();
    }
  }
});

gpuTest("swiglu and residual add", async ({ device }) => {
  const rng = createRandom(6);
  const n = 131;
  const g = randomNormalArray(rng, n, 4), u = randomNormalArray(rng, n);
  g[0] = -200; // exp overflow must give 0, not NaN
  const gate = createBuffer(device, "g", S, g), up = createBuffer(device, "u", S, u);
  using sw = planSwiglu(device, { gate, up, n });
  using add = planResidualAdd(device, { target: up, addend: gate, n });
  run(device, [sw, add]);
  const swOut = swigluReference(g, u);
  assertClose(await read(device, gate, n), swOut, 1e-5, "swiglu");
  assertClose(await read(device, up, n), residualAddReference(u, swOut), 1e-5, "residual");
  gate.destroy(), up.destroy();
});

gpuTest("causal attention: GQA 1, 2, 4, 7, head_dim 8..256, offsets", async ({ device }) => {
  const rng = createRandom(7);
  const cases = [
    // [rows, start, Hq, Hkv, d]
    [5, 0, 2, 2, 8],
    [70, 0, 4, 2, 8],
    [3, 130, 8, 2, 16],
    [1, 200, 7, 1, 8],
    [9, 0, 14, 2, 12],
    [1, 64, 2, 1, 128],
    [2, 3, 1, 1, 256],
  ];
  for (const [rows, start, hq, hkv, d] of cases) {
    const positions = start + rows;
    const q = randomNormalArray(rng, rows * hq * d);
    const k = randomNormalArray(rng, positions * hkv * d);
    const v = randomNormalArray(rng, positions * hkv * d);
    const qb = createBuffer(device, "q", S, q);
    const kb = createBuffer(device, "k", S, k);
    const vb = createBuffer(device, "v", S, v);
    const out = createBuffer(device, "o", S, q.byteLength);
    const seq = createSeqUniform(device, "seq", start);
    using plan = planCausalAttention(device, {
      q: qb,
      k: kb,
      v: vb,
      output: out,
      rows,
      numQueryHeads: hq,
      numKvHeads: hkv,
      headDim: d,
      seq,
    });
    run(device, [plan]);
    const expected = causalAttentionReference(q, k, v, {
      numQueryHeads: hq,
      numKvHeads: hkv,
      headDim: d,
      start,
    });
    assertClose(
      await read(device, out, q.length),
      expected,
      2e-5,
      `${rows}@${start} ${hq}/${hkv} d${d}`,
    );
    qb.destroy(), kb.destroy(), vb.destroy(), out.destroy(), seq.destroy();
  }
});

/** Inverse-CDF bounds (f64) of `token` at `temperature`: [mass before it, mass through it). */
function cdfBounds(logits: Float32Array, temperature: number, token: number): [number, number] {
  let max = -Infinity;
  for (const l of logits) max = Math.max(max, l);
  let total = 0, before = 0;
  for (let i = 0; i < logits.length; i++) {
    const e = Math.exp((logits[i] - max) / temperature);
    if (i < token) before += e;
    total += e;
  }
  const own = Math.exp((logits[token] - max) / temperature);
  return [before / total, (before + own) / total];
}

gpuTest(
  "token sampling: greedy ties, temperatures, vocab sizes, one step per submit",
  async ({ device }) => {
    const rng = createRandom(12);
    for (const vocab of [1, 3, 255, 256, 257, 512, 5003, 32000]) {
      const steps = 12;
      const rows = Array.from({ length: steps }, (_, j) => {
        const x = randomNormalArray(rng, vocab, 3);
        // Plant a tie for the maximum in every other row: the lower index wins.
        if (j % 2 === 0 && vocab > 2) {
          const a = 1 + Math.floor(rng.next() * (vocab - 1)), b = Math.floor(rng.next() * a);
          x[a] = x[b] = 50;
        }
        return x;
      });
      const temperatures = rows.map((_, j) => [0, 0.5, 1, 2, 0.01, 0][j % 6]);
      const coins = Float32Array.from(rows, () => rng.next());
      const logits = createBuffer(device, "logits", S, vocab * 4);
      const coinBuf = createBuffer(device, "coins", S, coins);
      const token = createBuffer(device, "token", S, 4);
      const history = createBuffer(device, "history", S, steps * 4);
      // Steps at positions 100.. (the step index is the position minus the run's first).
      const seq = createSeqUniform(device, "position", 100);
      using plan = planSampleToken(device, {
        logits,
        coins: coinBuf,
        token,
        history,
        seq,
        vocab,
      });
      for (let j = 0; j < steps; j++) {
        device.queue.writeBuffer(logits, 0, rows[j] as Float32Array<ArrayBuffer>);
        writeSeqStart(device, seq, 100 + j);
        plan.setRun(100, temperatures[j]);
        run(device, [plan]);
      }
      assert.throws(() => plan.setRun(-1, 0), /'first' must be between 0 and \d+: received -1/);
      assert.throws(() => plan.setRun(0, -1), /'temperature' must be at least 0: received -1/);
      const got = new Uint32Array(await readBuffer(device, history));
      assert.equal(new Uint32Array(await readBuffer(device, token))[0], got[steps - 1]);
      for (let j = 0; j < steps; j++) {
        const want = sampleTokenReference(rows[j], temperatures[j], coins[j]);
        const where = `vocab ${vocab} step ${j} T ${temperatures[j]}`;
        if (temperatures[j] === 0 || got[j] === want) {
          assert.equal(got[j], want, where);
          continue;
        }
        // f32 sums may move a coin within rounding of a boundary to a neighbour.
        const [lo, hi] = cdfBounds(rows[j], temperatures[j], got[j]);
        assert.ok(coins[j] >= lo - 1e-5 && coins[j] < hi + 1e-5, `${where}: ${got[j]} vs ${want}`);
      }
      for (const b of [logits, coinBuf, token, history, seq]) b.destroy();
    }
  },
);

gpuTest("kernel plans reject bad sizes before any GPU work", ({ device }) => {
  const b = createBuffer(device, "b", S, 64);
  const seq = createSeqUniform(device, "seq", 0);
  assert.throws(
    () =>
      planCausalAttention(device, {
        q: b,
        k: b,
        v: b,
        output: b,
        rows: 1,
        numQueryHeads: 3,
        numKvHeads: 2,
        headDim: 2,
        seq,
      }),
    (e) => e instanceof RangeError && /'numQueryHeads' must be a multiple/.test(e.message),
  );
  assert.throws(
    () =>
      planRope(device, {
        data: b,
        rows: 1,
        heads: 1,
        headDim: 3,
        style: "half",
        invFreq: b,
        seq,
      }),
    (e) => e instanceof RangeError && /'headDim' must be even/.test(e.message),
  );
  assert.throws(
    () => planRmsNorm(device, { input: b, weight: b, output: b, rows: 4, dim: 8, eps: 0 }),
    (e) => e instanceof RangeError && /'input' must hold 32 f32 values/.test(e.message),
  );
  assert.throws(
    () => uploadMatrix(device, { dtype: "f32", shape: [2, 3], data: new Float32Array(5) }),
    (e) => e instanceof RangeError && /'tensor.data' must hold 6/.test(e.message),
  );
  b.destroy(), seq.destroy();
});
