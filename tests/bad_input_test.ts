// Bad input everywhere: every public function refuses bad input with a
// TypeError or RangeError whose message names the argument, the rule and
// the value received (`Cannot <action> as '<arg>' must <rule>: received
// <value>`), before any GPU work, and leaves the object it was called on
// usable. One table, one test per case.
import assert from "node:assert/strict";
import { gpuTest, testGpu } from "./_gpu.ts";
import { assertArraysEqual } from "./_assert.ts";
import {
  createRetrievalEngine,
  type EngineOptions,
  type RetrievalEngine,
} from "../lib/engine/engine.ts";
import { createPagedAttention } from "../lib/kernels/attention.ts";
import { createPageSummarizer } from "../lib/kernels/summaries.ts";
import { createPageSelector } from "../lib/kernels/selection.ts";
import { createQuerySimilarity } from "../lib/kernels/similarity.ts";
import { createKvAppend } from "../lib/kernels/kv_append.ts";
import { createPageTableBuilder } from "../lib/kernels/page_table.ts";
import { measureReadBandwidth } from "../lib/kernels/roofline.ts";
import { createNhdToHnd } from "../lib/kernels/layout.ts";
import { createOffloader } from "../lib/memory/offload.ts";
import { createRecaller } from "../lib/memory/recall.ts";
import { HostPagePool } from "../lib/memory/host_pool.ts";
import { ReadbackRing } from "../lib/gpu/readback.ts";
import { timeGpuWork } from "../lib/gpu/timing.ts";
import { createEngineBackend } from "../lib/model/backends/engine.ts";
import { createDenseAttentionBackend } from "../lib/model/backends/dense.ts";
import { createGpuModel } from "../lib/model/gpu_model.ts";
import { argmax, createSampler } from "../lib/model/sampling.ts";
import { createSyntheticSource } from "../lib/workloads/synthetic.ts";
import { driveEngine } from "../lib/workloads/driver.ts";
import { parseLlama2c } from "../lib/model/llama2c.ts";
import { modelConfigFromHf } from "../lib/model/hf_config.ts";
import { liveBuffers } from "../lib/gpu/tracking.ts";

type ErrorClass = TypeErrorConstructor | RangeErrorConstructor;

interface Case {
  /** What is wrong. */
  name: string;
  /** The call; may return a promise. */
  call: (gpu: GPUDevice) => unknown;
  /** The error class. */
  error: ErrorClass;
  /** What the message must say (the argument and the value received). */
  says: RegExp;
  /** Whether the case needs a GPU device. */
  gpu?: boolean;
}

const SHAPE = { numLayers: 2, numQueryHeads: 4, numKvHeads: 2, headDim: 8 };
const BASE: EngineOptions = {
  ...SHAPE,
  maxContext: 256,
  pageSize: 8,
  budget: 48,
  sink: 8,
  window: 16,
  policy: "freekv",
};
const ROW = SHAPE.numKvHeads * SHAPE.headDim;
const QROW = SHAPE.numQueryHeads * SHAPE.headDim;

function seeded(seed: number, n: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}
const stepInputs = (t: number) => ({
  q: seeded(100 + t, QROW),
  k: seeded(200 + t, ROW),
  v: seeded(300 + t, ROW),
});

// One engine that every engine case is thrown at; afterwards it must decode
// exactly like an engine that never saw bad input.
let shared: RetrievalEngine | undefined;
async function engine(device: GPUDevice): Promise<RetrievalEngine> {
  if (!shared) {
    shared = createRetrievalEngine(device, BASE);
    await prefillAll(shared);
    await stepAll(shared, 0);
  }
  return shared;
}
async function prefillAll(e: RetrievalEngine): Promise<void> {
  for (let l = 0; l < SHAPE.numLayers; l++) {
    await e.prefill(0, l, { k: seeded(10 + l, 90 * ROW), v: seeded(20 + l, 90 * ROW) });
  }
}
async function stepAll(e: RetrievalEngine, t: number): Promise<Float32Array[]> {
  const outs = [];
  for (let l = 0; l < SHAPE.numLayers; l++) outs.push((await e.step(l, stepInputs(t * 7 + l)))!);
  return outs;
}

const noDevice = (name: string, call: (d: unknown) => unknown): Case[] => [
  {
    name: `${name}: undefined device`,
    call: () => call(undefined),
    error: TypeError,
    says: /'device' must be a GPUDevice: received undefined/,
  },
  {
    name: `${name}: requestGpu()'s result instead of its .device`,
    call: () => call(testGpu),
    error: TypeError,
    says: /'device' must be a GPUDevice \(pass requestGpu\(\)'s \.device/,
    gpu: true,
  },
];

// deno-lint-ignore no-explicit-any
type Any = any;
const opts = (o: Record<string, unknown>) => ({ ...BASE, ...o }) as EngineOptions;
const engineOption = (name: string, o: Record<string, unknown>, error: ErrorClass, says: RegExp) =>
  ({
    name: `createRetrievalEngine: ${name}`,
    call: (d: GPUDevice) => createRetrievalEngine(d, opts(o)),
    error,
    says,
    gpu: true,
  }) satisfies Case;

const CASES: Case[] = [
  // ---- The device, for every create* ----
  ...noDevice("createRetrievalEngine", (d) => createRetrievalEngine(d as GPUDevice, BASE)),
  ...noDevice("createPagedAttention", (d) => createPagedAttention(d as GPUDevice, SHAPE as Any)),
  ...noDevice("createPageSummarizer", (d) => createPageSummarizer(d as GPUDevice, SHAPE as Any)),
  ...noDevice("createPageSelector", (d) => createPageSelector(d as GPUDevice, SHAPE as Any)),
  ...noDevice("createQuerySimilarity", (d) => createQuerySimilarity(d as GPUDevice, SHAPE)),
  ...noDevice("createKvAppend", (d) => createKvAppend(d as GPUDevice, SHAPE)),
  ...noDevice("createPageTableBuilder", (d) => createPageTableBuilder(d as GPUDevice, {} as Any)),
  ...noDevice("createOffloader", (d) => createOffloader(d as GPUDevice, undefined as Any)),
  ...noDevice("createRecaller", (d) => createRecaller(d as GPUDevice, undefined as Any, {} as Any)),
  ...noDevice("createEngineBackend", (d) => createEngineBackend(d as GPUDevice, BASE as Any)),
  ...noDevice(
    "createDenseAttentionBackend",
    (d) => createDenseAttentionBackend(d as GPUDevice, SHAPE as Any, { maxSeqLen: 8 }),
  ),
  ...noDevice("createGpuModel", (d) => createGpuModel(d as GPUDevice, undefined as Any)),
  ...noDevice("ReadbackRing", (d) => new ReadbackRing(d as GPUDevice, "x")),
  ...noDevice("measureReadBandwidth", (d) => measureReadBandwidth(d as GPUDevice)),
  ...noDevice("timeGpuWork", (d) => timeGpuWork(d as GPUDevice, () => {})),
  ...noDevice("createNhdToHnd", (d) => createNhdToHnd(d as GPUDevice, {} as Any)),

  // ---- Engine options ----
  engineOption(
    "numLayers 0",
    { numLayers: 0 },
    RangeError,
    /'numLayers' must be at least 1: received 0/,
  ),
  engineOption(
    "numLayers 1.5",
    { numLayers: 1.5 },
    TypeError,
    /'numLayers' must be an integer: received 1.5/,
  ),
  engineOption(
    "numQueryHeads a string",
    { numQueryHeads: "4" },
    TypeError,
    /'numQueryHeads' must be an integer: received "4"/,
  ),
  engineOption(
    "numKvHeads not dividing",
    { numKvHeads: 3 },
    RangeError,
    /'numQueryHeads' must be a multiple of 'numKvHeads' \(3\): received 4/,
  ),
  engineOption("headDim 0", { headDim: 0 }, RangeError, /'headDim' must be at least 1: received 0/),
  engineOption(
    "maxContext -1",
    { maxContext: -1 },
    RangeError,
    /'maxContext' must be at least 1: received -1/,
  ),
  engineOption(
    "maxContext beyond the summary binding",
    { maxContext: 2 ** 28 },
    RangeError,
    /page summaries of one layer must fit one storage binding .*received \d+ bytes .*maxContext 268435456/,
  ),
  engineOption("batch 0", { batch: 0 }, RangeError, /'batch' must be at least 1: received 0/),
  engineOption(
    "pageSize 0",
    { pageSize: 0 },
    RangeError,
    /'pageSize' must be at least 1: received 0/,
  ),
  engineOption(
    "budget NaN",
    { budget: NaN },
    TypeError,
    /'budget' must be an integer: received NaN/,
  ),
  engineOption("sink -8", { sink: -8 }, RangeError, /'sink' must be at least 0: received -8/),
  engineOption("window 0", { window: 0 }, RangeError, /'window' must be at least 1: received 0/),
  engineOption(
    "budget not a page multiple",
    { budget: 50 },
    RangeError,
    /'budget' must be a multiple of 'pageSize' \(8\): received 50/,
  ),
  engineOption(
    "budget below sink + window + a page",
    { budget: 24 },
    RangeError,
    /'budget' must be at least sink \+ window \+ one page \(32\): received 24/,
  ),
  engineOption("tau 2", { tau: 2 }, RangeError, /'tau' must be in \[-1, 1\].*received 2/),
  engineOption("tau NaN", { tau: NaN }, TypeError, /'tau' must be a finite number: received NaN/),
  engineOption(
    "policy unknown",
    { policy: "fast" },
    TypeError,
    /'policy' must be one of .*"freekv".*: received "fast"/,
  ),
  engineOption(
    "dtype f64",
    { dtype: "f64" },
    TypeError,
    /'dtype' must be one of .*: received "f64"/,
  ),
  engineOption(
    "correction unknown",
    { correction: "later" },
    TypeError,
    /'correction' must be one of "resident", "sync": received "later"/,
  ),
  engineOption(
    "cachePages -1",
    { cachePages: -1 },
    RangeError,
    /'cachePages' must be at least 0: received -1/,
  ),
  engineOption(
    "answerLag 0",
    { answerLag: 0 },
    RangeError,
    /'answerLag' must be at least 1: received 0/,
  ),
  engineOption(
    "answerLag fractional",
    { answerLag: 1.5 },
    TypeError,
    /'answerLag' must be an integer: received 1.5/,
  ),
  engineOption(
    "slidingWindow -1",
    { slidingWindow: -1 },
    RangeError,
    /'slidingWindow' must be at least 0: received -1/,
  ),
  engineOption(
    "slidingWindow per layer, wrong length",
    { slidingWindow: [16] },
    TypeError,
    /'slidingWindow' must be a number or an array of one window per layer \(2\)/,
  ),
  engineOption(
    "slidingWindow per layer, fractional",
    { slidingWindow: [16, 1.5] },
    TypeError,
    /'slidingWindow\[1\]' must be an integer: received 1.5/,
  ),
  engineOption(
    "pooling unknown",
    { pooling: "min" },
    TypeError,
    /'pooling' must be one of .*: received "min"/,
  ),
  engineOption(
    "countingTopkMax above its limit",
    { countingTopkMax: 2048 },
    RangeError,
    /'countingTopkMax' must be between 0 and 1024: received 2048/,
  ),
  engineOption(
    "countingTopkMax fractional",
    { countingTopkMax: 1.5 },
    TypeError,
    /'countingTopkMax' must be an integer: received 1.5/,
  ),
  engineOption(
    "summary unknown",
    { summary: "avg" },
    TypeError,
    /'summary' must be one of .*: received "avg"/,
  ),
  engineOption(
    "hostLayout unknown",
    { hostLayout: "hdn" },
    TypeError,
    /'hostLayout' must be one of "hnd", "nhd": received "hdn"/,
  ),
  engineOption(
    "fullFirstLayer a string",
    { fullFirstLayer: "yes" },
    TypeError,
    /'fullFirstLayer' must be a boolean: received "yes"/,
  ),
  {
    name: "createRetrievalEngine: options null",
    call: (d) => createRetrievalEngine(d, null as Any),
    error: TypeError,
    says: /'options' must be an object: received null/,
    gpu: true,
  },

  // ---- Engine methods (all on one engine, which must stay usable) ----
  ...((): Case[] => {
    const c = (
      name: string,
      call: (e: RetrievalEngine, d: GPUDevice) => unknown,
      error: ErrorClass,
      says: RegExp,
    ): Case => ({
      name: `engine: ${name}`,
      call: async (d) => call(await engine(d), d),
      error,
      says,
      gpu: true,
    });
    const good = stepInputs(99);
    return [
      c(
        "prefill seq -1",
        (e) => e.prefill(-1, 0, { k: seeded(1, ROW), v: seeded(1, ROW) }),
        RangeError,
        /'seq' must be between 0 and 0: received -1/,
      ),
      c(
        "prefill layer 5",
        (e) => e.prefill(0, 5, { k: seeded(1, ROW), v: seeded(1, ROW) }),
        RangeError,
        /'layer' must be between 0 and 1: received 5/,
      ),
      c(
        "prefill a second time",
        (e) => e.prefill(0, 0, { k: seeded(1, ROW), v: seeded(1, ROW) }),
        RangeError,
        /must not be prefilled twice: received a second prefill/,
      ),
      c(
        "step q of the wrong length",
        (e) => e.step(0, { ...good, q: seeded(1, 31) }),
        RangeError,
        /'q' must have length 32: received length 31/,
      ),
      c(
        "step k with a NaN",
        (e) => e.step(0, { ...good, k: new Float32Array(ROW).fill(NaN) }),
        RangeError,
        /'k' must hold only finite values: received NaN at index 0/,
      ),
      c(
        "step v an array",
        (e) => e.step(0, { ...good, v: [1, 2] as Any }),
        RangeError,
        /'v' must be a Float32Array or a GPUBuffer of at least 64 bytes: received array of length 2/,
      ),
      c(
        "step inputs null",
        (e) => e.step(0, null as Any),
        TypeError,
        /'inputs' must be an object: received null/,
      ),
      c(
        "step layers out of order",
        (e) => e.step(1, good),
        RangeError,
        /'layer' must be 0 \(layers step in order\): received 1/,
      ),
      c(
        "step out a small buffer",
        (e, d) => {
          const out = d.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
          return e.step(0, { ...good, out }).finally(() => out.destroy());
        },
        RangeError,
        /'out' must be a GPUBuffer of at least 128 bytes: received a buffer of 16/,
      ),
      c(
        "recordLayer before beginStep",
        (e, d) => e.recordLayer(d.createCommandEncoder(), 0, good),
        RangeError,
        /a step must be begun first \(beginStep\): received layer 0 outside a step/,
      ),
      c(
        "endStep outside a step",
        (e, d) => e.endStep(d.createCommandEncoder()),
        RangeError,
        /every layer must be recorded first: received endStep outside a step/,
      ),
      c(
        "recordLayer with no encoder",
        async (e) => {
          await e.beginStep();
          try {
            return await e.recordLayer({} as Any, 0, good);
          } finally {
            // Close the step properly so the engine stays usable.
            let enc = e.device.createCommandEncoder();
            for (let l = 0; l < SHAPE.numLayers; l++) {
              enc = await e.recordLayer(
                enc,
                l,
                stepInputs(500 + l),
              );
            }
            e.endStep(enc);
          }
        },
        TypeError,
        /'encoder' must be a GPUCommandEncoder: received an empty object/,
      ),
      c(
        "beginStep twice",
        async (e) => {
          await e.beginStep();
          try {
            return await e.beginStep();
          } finally {
            let enc = e.device.createCommandEncoder();
            for (let l = 0; l < SHAPE.numLayers; l++) {
              enc = await e.recordLayer(
                enc,
                l,
                stepInputs(600 + l),
              );
            }
            e.endStep(enc);
          }
        },
        RangeError,
        /the previous step must be ended first \(endStep\): received a second beginStep/,
      ),
      c(
        "endStep after one of two layers",
        async (e) => {
          await e.beginStep();
          let enc = await e.recordLayer(e.device.createCommandEncoder(), 0, stepInputs(700));
          try {
            return e.endStep(enc);
          } finally {
            enc = await e.recordLayer(enc, 1, stepInputs(701));
            e.endStep(enc);
          }
        },
        RangeError,
        /every layer must be recorded first: received endStep after 1 of 2 layers/,
      ),
      c(
        "endStep waitFollows 'yes'",
        async (e) => {
          await e.beginStep();
          let enc = e.device.createCommandEncoder();
          enc = await e.recordLayer(enc, 0, stepInputs(702));
          enc = await e.recordLayer(enc, 1, stepInputs(703));
          try {
            return e.endStep(enc, { waitFollows: "yes" as unknown as boolean });
          } finally {
            e.endStep(enc);
          }
        },
        TypeError,
        /'waitFollows' must be a boolean: received "yes"/,
      ),
      c("reset seq 3", (e) => e.reset(3), RangeError, /'seq' must be between 0 and 0: received 3/),
      c(
        "attendedPages layer 9",
        (e) => e.attendedPages(9),
        RangeError,
        /'layer' must be between 0 and 1: received 9/,
      ),
      c(
        "lastCorrections layer -1",
        (e) => e.lastCorrections(-1),
        RangeError,
        /'layer' must be between 0 and 1: received -1/,
      ),
      c(
        "length seq 1.5",
        (e) => e.length(0, 1.5),
        TypeError,
        /'seq' must be an integer: received 1.5/,
      ),
    ];
  })(),
  {
    name: "engine: prefill kv null",
    call: async (d) => {
      using e = createRetrievalEngine(d, opts({ numLayers: 1 }));
      await e.prefill(0, 0, null as Any);
    },
    error: TypeError,
    says: /'kv' must be an object: received null/,
    gpu: true,
  },
  {
    name: "engine: prefill k of partial rows names k, not a derived length",
    call: async (d) => {
      using e = createRetrievalEngine(d, opts({ numLayers: 1 }));
      await e.prefill(0, 0, { k: seeded(1, 323), v: seeded(1, 323) });
    },
    error: RangeError,
    says: /'k' must hold whole rows of numKvHeads \* headDim = 16 values: received 323 values/,
    gpu: true,
  },
  {
    name: "engine: a step past maxContext",
    call: async (d) => {
      using e = createRetrievalEngine(d, opts({ maxContext: 64, numLayers: 1 }));
      await e.prefill(0, 0, { k: seeded(1, 64 * ROW), v: seeded(2, 64 * ROW) });
      await e.step(0, stepInputs(1));
    },
    error: RangeError,
    says: /sequence 0 must stay within maxContext 64: received a step at length 64/,
    gpu: true,
  },
  {
    name: "engine: a step before prefill",
    call: async (d) => {
      using e = createRetrievalEngine(d, opts({ numLayers: 1 }));
      await e.step(0, stepInputs(1));
    },
    error: RangeError,
    says: /sequence 0 must be prefilled at layer 0 first: received a step before its prefill/,
    gpu: true,
  },
  {
    name: "engine: used after dispose",
    call: async (d) => {
      const e = createRetrievalEngine(d, opts({ numLayers: 1 }));
      await e.prefill(0, 0, { k: seeded(1, 40 * ROW), v: seeded(2, 40 * ROW) });
      e[Symbol.dispose]();
      await e.step(0, stepInputs(1));
    },
    error: TypeError,
    says: /Cannot run a decode step as the engine must not be disposed: received a disposed engine/,
    gpu: true,
  },
  {
    name: "driveEngine: promptLengths of the wrong count",
    call: async (d) => {
      using e = createRetrievalEngine(d, opts({ numLayers: 1 }));
      await driveEngine(e, [createSyntheticSource({ ...SHAPE, numLayers: 1 })], {
        promptLengths: [],
        steps: 1,
      });
    },
    error: RangeError,
    says: /'sources' and 'promptLengths' must have one entry per sequence \(1\): received 1 and 0/,
    gpu: true,
  },

  ...((): Case[] => {
    const c = (name: string, variants: unknown, error: ErrorClass, says: RegExp): Case => ({
      name: `PageSelector.compile: ${name}`,
      call: (d) => {
        using selector = createPageSelector(d, SHAPE);
        selector.compile(variants as Any);
      },
      error,
      says,
      gpu: true,
    });
    return [
      c("variants not an array", {}, TypeError, /'variants' must be an array: received/),
      c("a variant null", [null], TypeError, /'variants\[0\]' must be an object: received null/),
      c(
        "maskStride 0",
        [{ residentOnly: { maskStride: 0, flagged: true } }],
        RangeError,
        /'variants\[0\]\.residentOnly\.maskStride' must be .*: received 0/,
      ),
      c(
        "flagged missing",
        [{ residentOnly: { maskStride: 8 } }],
        TypeError,
        /'variants\[0\]\.residentOnly\.flagged' must be a boolean: received undefined/,
      ),
      c(
        "table a number",
        [{}, { table: 1 }],
        TypeError,
        /'variants\[1\]\.table' must be a boolean: received 1/,
      ),
    ];
  })(),

  // ---- Host memory, workloads, model, sampling ----
  {
    name: "HostPagePool: layers 0",
    call: () => new HostPagePool({ layers: 0, kvHeads: 1, headDim: 8, pageSize: 8 }),
    error: RangeError,
    says: /'layers' must be at least 1: received 0/,
  },
  {
    name: "HostPagePool: layout unknown",
    call: () =>
      new HostPagePool({ layers: 1, kvHeads: 1, headDim: 8, pageSize: 8, layout: "x" as Any }),
    error: TypeError,
    says: /'layout' must be one of "hnd", "nhd": received "x"/,
  },
  {
    name: "createSampler: topP 2 (the CLI refuses it too)",
    call: () => createSampler({ topP: 2 }),
    error: RangeError,
    says: /'topP' must be in \(0, 1\].*received 2/,
  },
  {
    name: "createSampler: topP 0",
    call: () => createSampler({ topP: 0 }),
    error: RangeError,
    says: /'topP' must be in \(0, 1\].*received 0/,
  },
  {
    name: "createSampler: temperature -1",
    call: () => createSampler({ temperature: -1 }),
    error: RangeError,
    says: /'temperature' must be at least 0: received -1/,
  },
  {
    name: "createSampler: topK 0",
    call: () => createSampler({ topK: 0 }),
    error: RangeError,
    says: /'topK' must be at least 1: received 0/,
  },
  {
    name: "argmax: empty",
    call: () => argmax([]),
    error: RangeError,
    says: /'values' must not be empty: received length 0/,
  },
  {
    name: "createSyntheticSource: headDim 0",
    call: () => createSyntheticSource({ ...SHAPE, headDim: 0 }),
    error: RangeError,
    says: /'headDim' must be at least 1: received 0/,
  },
  {
    name: "parseLlama2c: 3 bytes",
    call: () => parseLlama2c(new Uint8Array(3)),
    error: RangeError,
    says: /received 3 bytes/,
  },
  {
    name: "modelConfigFromHf: null",
    call: () => modelConfigFromHf(null),
    error: TypeError,
    says: /'json' must be a JSON object: received null/,
  },
];

async function expectRefusal(c: Case, device: GPUDevice): Promise<void> {
  let thrown: unknown;
  try {
    await c.call(device);
  } catch (e) {
    thrown = e;
  }
  assert.ok(thrown !== undefined, `${c.name}: nothing was thrown`);
  assert.ok(
    thrown instanceof c.error,
    `${c.name}: expected ${c.error.name}, got ${(thrown as Error)?.name}: ${
      (thrown as Error)?.message
    }`,
  );
  const message = (thrown as Error).message;
  assert.match(message, /^Cannot .+ as .+/, `${c.name}: convention`);
  assert.match(message, /received/, `${c.name}: names the value received`);
  assert.match(message, c.says, `${c.name}: message`);
  assert.ok(!message.includes("\n"), `${c.name}: one line`);
}

Deno.test("bad input: the table has at least 60 distinct cases", () => {
  assert.ok(CASES.length >= 60, `${CASES.length} cases`);
  assert.equal(new Set(CASES.map((c) => c.name)).size, CASES.length);
});

for (const c of CASES) {
  if (c.gpu) gpuTest(`bad input: ${c.name}`, (gpu) => expectRefusal(c, gpu.device));
  else Deno.test(`bad input: ${c.name}`, () => expectRefusal(c, undefined as unknown as GPUDevice));
}

gpuTest("bad input: the engine every case was thrown at decodes like a fresh one", async (gpu) => {
  const e = await engine(gpu.device);
  using fresh = createRetrievalEngine(gpu.device, BASE);
  await prefillAll(fresh);
  await stepAll(fresh, 0);
  // Replay the good steps the table closed its open steps with.
  const replay = async (base: number) => {
    let enc = fresh.device.createCommandEncoder();
    await fresh.beginStep();
    for (let l = 0; l < SHAPE.numLayers; l++) {
      enc = await fresh.recordLayer(enc, l, stepInputs(base + l));
    }
    fresh.endStep(enc);
  };
  for (const base of [500, 600, 700, 702]) await replay(base);
  for (let t = 1; t < 6; t++) {
    const [a, b] = [await stepAll(e, t), await stepAll(fresh, t)];
    for (let l = 0; l < SHAPE.numLayers; l++) assertArraysEqual(a[l], b[l], `step ${t} layer ${l}`);
  }
  assert.equal(e.length(0, 0), fresh.length(0, 0));
  e[Symbol.dispose]();
  shared = undefined;
});

gpuTest("bad input: refused creations leave no GPU buffer behind", async (gpu) => {
  const before = liveBuffers(gpu.device).count;
  for (const c of CASES.filter((c) => c.name.startsWith("createRetrievalEngine"))) {
    await expectRefusal(c, gpu.device);
  }
  assert.equal(liveBuffers(gpu.device).count, before);
});
