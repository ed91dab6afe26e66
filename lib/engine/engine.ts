/**
 * The retrieval engine: owns the KV memory of one model for a batch of
 * sequences and records decode steps under one of the policies `full`,
 * `streaming`, `quest`, `sync-offload` or `freekv`, all through the same
 * kernels and memory system.
 *
 * A decode step is recorded without host waits where the policy allows:
 * top-k, the correction check and the page tables run on the GPU; the
 * selections of every layer come back in one answer per step, and the CPU
 * recalls the missing pages one step behind (`beginStep` of the next step;
 * `answerLag` steps behind when set).
 *
 * @module
 */

import {
  assertBoolean,
  assertDevice,
  assertInteger,
  describeValue,
  disposedError,
  lostOr,
} from "../gpu/errors.ts";
import { readBuffer } from "../gpu/buffers.ts";
import { ReadbackRing } from "../gpu/readback.ts";
import { createPagedAttention, type PagedAttention } from "../kernels/attention.ts";
import type { PageTablePlan } from "../kernels/page_table.ts";
import type { HostPagePool } from "../memory/host_pool.ts";
import type { RecallJob } from "../memory/recall.ts";
import { OffloadMemory } from "./offload_memory.ts";
import { type PendingAnswer, StepAnswers } from "./answer.ts";
import { recordPrefill } from "./prefill.ts";
import {
  admitCorrected,
  appendPhase,
  type PhaseContext,
  selectionVariants,
  selectPhase,
  storePhase,
  tableBuffers,
} from "./phases.ts";
import { type PageBudget, type PageRegions, pageRegions } from "../memory/page_plan.ts";
import { layerMode, maxPagesOf, modeBudget, residentPageTable } from "./geometry.ts";
import { assertLayersFit, LayerState } from "./layer.ts";
import { type EngineOptions, type ResolvedEngineOptions, resolveEngineOptions } from "./options.ts";
import { type EngineTotals, StatsAccumulator, type StepStats } from "./stats.ts";
import {
  checkPrefillInputs,
  checkStepInputs,
  type EndStepOptions,
  type PrefillInputs,
  type StepInputs,
} from "./validate.ts";

export type { EngineTotals, StepStats } from "./stats.ts";
export type { EndStepOptions, PrefillInputs, StepInputs } from "./validate.ts";

const ACTION_CREATE = "create a retrieval engine";
// Microtask turns an answer that arrived with the caller's wait needs to
// settle (its map's continuations; one was enough when measured).
const ANSWER_SETTLE_TURNS = 8;

/**
 * Creates a retrieval engine on `device`.
 *
 * @throws {TypeError} when an option has the wrong type or names an unknown value.
 * @throws {RangeError} when a size is out of range or a buffer would not fit the device.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createRetrievalEngine } from "./engine.ts";
 * using gpu = await requestGpu();
 * using engine = createRetrievalEngine(gpu.device, {
 *   numLayers: 1, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 64,
 *   pageSize: 4, budget: 16, sink: 4, window: 4, policy: "freekv",
 * });
 * await engine.prefill(0, 0, { k: new Float32Array(20 * 8), v: new Float32Array(20 * 8) });
 * const out = await engine.step(0, {
 *   q: new Float32Array(16).fill(1), k: new Float32Array(8), v: new Float32Array(8).fill(2),
 * });
 * console.log(out?.length); // 16
 * ```
 */
export function createRetrievalEngine(device: GPUDevice, options: EngineOptions): RetrievalEngine {
  return new RetrievalEngine(device, options);
}

/**
 * A retrieval engine; see {@linkcode createRetrievalEngine}. A decode step is
 * either recorded into the caller's encoder (`beginStep`, `recordLayer` per
 * layer in order, `endStep`) or run layer by layer with `step`.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createRetrievalEngine } from "./engine.ts";
 * using gpu = await requestGpu();
 * using engine = createRetrievalEngine(gpu.device, {
 *   numLayers: 2, numQueryHeads: 2, numKvHeads: 1, headDim: 8, maxContext: 64,
 *   pageSize: 4, budget: 16, sink: 4, window: 4, policy: "freekv",
 * });
 * for (let l = 0; l < 2; l++) {
 *   await engine.prefill(0, l, { k: new Float32Array(20 * 8), v: new Float32Array(20 * 8) });
 * }
 * const out = gpu.device.createBuffer({ size: 2 * 8 * 4, usage: GPUBufferUsage.STORAGE });
 * for (let t = 0; t < 3; t++) {
 *   await engine.beginStep();
 *   let encoder = gpu.device.createCommandEncoder();
 *   for (let l = 0; l < 2; l++) {
 *     const q = new Float32Array(16).fill(t + 1), k = new Float32Array(8).fill(1);
 *     encoder = await engine.recordLayer(encoder, l, { q, k, v: k, out });
 *   }
 *   engine.endStep(encoder);
 * }
 * console.log(engine.totals().steps, engine.lastStepStats()?.hostWaits); // 3 0
 * out.destroy();
 * ```
 */
export class RetrievalEngine {
  /** The device. */
  readonly device: GPUDevice;
  /** Resolved options. */
  readonly options: Readonly<ResolvedEngineOptions>;
  /** Page counts of the budget. */
  readonly budget: Readonly<PageBudget>;
  /** Pages per sequence in page-id space (`ceil(maxContext / pageSize)`). */
  readonly maxPages: number;
  #layers: LayerState[] = [];
  #attention: PagedAttention;
  #memory?: OffloadMemory;
  #ring: ReadbackRing;
  #answers?: StepAnswers;
  /** Copies of the open step recorded at its end (see `PhaseContext.atStepEnd`). */
  #atStepEnd: Array<(encoder: GPUCommandEncoder) => void> = [];
  /** Answers of ended steps not yet taken, oldest first (at most `answerLag`). */
  #pending: PendingAnswer[] = [];
  #inStep = false;
  #nextLayer = 0;
  #tick = 0;
  #stepStart = 0;
  #stats: StatsAccumulator;
  #disposed = false;

  /** Use {@linkcode createRetrievalEngine}. */
  constructor(device: GPUDevice, options: EngineOptions) {
    assertDevice(device, ACTION_CREATE);
    const o = resolveEngineOptions(options);
    if (o.dtype === "f16" && o.headDim % 2 !== 0) {
      throw new RangeError(
        `Cannot ${ACTION_CREATE} as 'headDim' must be even for "f16": received ${o.headDim}`,
      );
    }
    this.device = device;
    this.options = Object.freeze(o);
    this.budget = Object.freeze(modeBudget(o, "offload"));
    this.maxPages = maxPagesOf(o);
    const L = o.numLayers;
    const modes = Array.from({ length: L }, (_, l) => layerMode(o, l));
    assertLayersFit(device, o, modes, ACTION_CREATE);
    this.#attention = createPagedAttention(device, {
      numQueryHeads: o.numQueryHeads,
      numKvHeads: o.numKvHeads,
      headDim: o.headDim,
      pageSize: o.pageSize,
      dtype: o.dtype,
      slotLayout: o.slotLayout,
    });
    this.#ring = new ReadbackRing(device, "freekv engine");
    for (let l = 0; l < L; l++) this.#layers.push(new LayerState(device, o, l, modes[l]));
    this.#stats = new StatsAccumulator(L * o.numKvHeads);
    if (modes.includes("offload")) {
      this.#memory = new OffloadMemory(device, o, this.#layers, this.#stats, this.maxPages);
    }
    if (o.policy === "freekv" && modes.includes("offload")) {
      this.#answers = new StepAnswers(device, o, this.budget.selectPages);
    }
  }

  /**
   * Compiles now every pipeline that this engine's decode steps can use.
   * Otherwise each compiles at its first use, in the middle of a
   * generation: on lavapipe the paged attention takes about 100 ms at the
   * first step, and each selection variant 15-50 ms at the step where the
   * candidates first outgrow the budget. The model backend calls it.
   */
  compile(): void {
    this.#checkAlive("compile the engine's pipelines");
    this.#attention.compile();
    for (const state of this.#layers) {
      state.compile(selectionVariants(this.options, state, this.maxPages));
    }
  }

  /** Tokens stored for `seq` at `layer`. */
  length(layer: number, seq: number): number {
    assertInteger("layer", layer, "read a sequence length", 0, this.options.numLayers - 1);
    assertInteger("seq", seq, "read a sequence length", 0, this.options.batch - 1);
    return this.#layers[layer].length[seq];
  }

  /**
   * Logical pages attended in the latest recorded step of `layer`, per
   * (sequence, KV head) (`[seq * Hkv + head]`), ascending. Pages decided on
   * the GPU are read back: call it after the step's work was submitted and
   * before the next step of that layer.
   */
  attendedPages(layer: number): Promise<number[][]> {
    return this.#guard("read attended pages", () => this.#attendedPages(layer));
  }

  async #attendedPages(layer: number): Promise<number[][]> {
    this.#checkAlive("read attended pages");
    assertInteger("layer", layer, "read attended pages", 0, this.options.numLayers - 1);
    return await this.#layers[layer].readAttendedPages();
  }

  /**
   * Per (sequence, KV head), 1 where the latest known correction check of
   * `layer` corrected the head (freekv: group-mean query cosine below `tau`).
   * Under `correction: "resident"` the outcome of a step is known one step
   * later (it travels back with the step's answer).
   */
  lastCorrections(layer: number): Uint8Array {
    assertInteger("layer", layer, "read corrections", 0, this.options.numLayers - 1);
    return this.#layers[layer].lastCorrections.slice();
  }

  /** Running totals. */
  totals(): EngineTotals {
    return this.#stats.totals();
  }

  /** Statistics of the latest ended step, or null before the first. */
  lastStepStats(): StepStats | null {
    return this.#stats.last;
  }

  /** The host page pool (offload policies only). */
  get hostPool(): HostPagePool | undefined {
    return this.#memory?.pool;
  }

  /** The layer whose step comes next. */
  get nextLayer(): number {
    return this.#nextLayer;
  }

  /** True between {@linkcode beginStep} and {@linkcode endStep}. */
  get inStep(): boolean {
    return this.#inStep;
  }

  /** Runs `fn`; an error raised because the device was lost becomes a {@linkcode DeviceLostError}. */
  async #guard<T>(action: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (error) {
      throw await lostOr(this.device, action, error);
    }
  }

  #checkAlive(action: string): void {
    if (this.#disposed) throw disposedError(action, "engine");
    assertDevice(this.device, action);
  }

  /**
   * Stores the prompt's K/V of sequence `seq` for `layer` (post-RoPE,
   * `[tokens][Hkv][d]` f32): pages are written, summarized and offloaded as
   * the policy requires.
   */
  prefill(
    seq: number,
    layer: number,
    kv: PrefillInputs,
  ): Promise<void> {
    return this.#guard("prefill", () => this.#prefill(seq, layer, kv));
  }

  async #prefill(
    seq: number,
    layer: number,
    kv: PrefillInputs,
  ): Promise<void> {
    const action = "prefill";
    this.#checkAlive(action);
    const o = this.options;
    assertInteger("seq", seq, action, 0, o.batch - 1);
    assertInteger("layer", layer, action, 0, o.numLayers - 1);
    if (this.#inStep) {
      throw new RangeError(
        `Cannot ${action} as no decode step may be open: received a prefill between beginStep and endStep`,
      );
    }
    const state = this.#layers[layer];
    if (state.prefilled[seq]) {
      throw new RangeError(
        `Cannot ${action} as sequence ${seq} of layer ${layer} must not be prefilled twice: received a second prefill`,
      );
    }
    const n = checkPrefillInputs(o, action, kv);
    recordPrefill(
      {
        device: this.device,
        options: o,
        maxPages: this.maxPages,
        memory: this.#memory,
        tick: this.#tick,
      },
      state,
      seq,
      n,
      kv.k,
      kv.v,
    );
    await Promise.resolve();
  }

  /**
   * Begins a decode step: takes the answer of the step `answerLag` steps
   * back (the previous one by default; awaiting it only if it has not
   * arrived), recalls the pages its selections miss and
   * updates the residency maps, in queue order before this step's work.
   */
  beginStep(): Promise<void> {
    return this.#guard("begin a decode step", () => this.#beginStep());
  }

  async #beginStep(): Promise<void> {
    const action = "begin a decode step";
    this.#checkAlive(action);
    if (this.#inStep) {
      throw new RangeError(
        `Cannot ${action} as the previous step must be ended first (endStep): received a second beginStep`,
      );
    }
    for (let b = 0; b < this.options.batch; b++) {
      for (const state of this.#layers) {
        if (!state.prefilled[b]) {
          throw new RangeError(
            `Cannot ${action} as sequence ${b} must be prefilled at layer ${state.index} first: received a step before its prefill`,
          );
        }
        if (state.length[b] >= this.options.maxContext) {
          throw new RangeError(
            `Cannot ${action} as sequence ${b} must stay within maxContext ${this.options.maxContext}: received a step at length ${
              state.length[b]
            }`,
          );
        }
      }
    }
    this.#inStep = true;
    this.#nextLayer = 0;
    this.#answers?.discard();
    this.#atStepEnd = [];
    this.#stepStart = performance.now();
    const stepStats = this.#stats.begin(this.#stats.steps);
    this.#tick++;
    try {
      // The answer of step t is taken when step t + answerLag begins.
      while (this.#pending.length >= this.options.answerLag) await this.#takeAnswer();
    } catch (error) {
      this.#inStep = false;
      throw error;
    }
    stepStats.beginMs = performance.now() - this.#stepStart;
  }

  /** Admits the oldest pending answer's selections and recalls what they miss. */
  async #takeAnswer(tick = this.#tick): Promise<void> {
    const pending = this.#pending.shift();
    if (!pending) return;
    pending.start();
    // Let callbacks of an answer that already arrived run (the decoder's own
    // wait for its logits usually brings it): only a real wait counts. Such
    // an answer settles within a few microtask turns; a macrotask (setTimeout)
    // costs 1-2 ms in Deno, so it is the fallback.
    for (let turn = 0; turn < ANSWER_SETTLE_TURNS && !pending.settled; turn++) await null;
    if (!pending.settled) await new Promise((resolve) => setTimeout(resolve, 0));
    const t0 = performance.now();
    const wasReady = pending.settled;
    const layers = await pending.layers;
    if (!wasReady) this.#stats.wait(performance.now() - t0);
    if (this.#disposed) return; // disposed while the answer travelled: nothing to recall into
    const o = this.options;
    const hkv = o.numKvHeads;
    const K = this.budget.selectPages;
    const jobs: RecallJob[] = [];
    for (const { layer, selects, checked, fresh, flags, hits } of layers) {
      const state = this.#layers[layer];
      for (let b = 0; b < o.batch; b++) {
        if (!selects[b] || !state.prefilled[b]) continue;
        for (let h = 0; h < hkv; h++) {
          const bh = b * hkv + h;
          if (checked[b]) {
            const corrected = flags[bh] !== 0;
            state.lastCorrections[bh] = corrected ? 1 : 0;
            this.#stats.checked(layer * hkv + h, corrected, K, hits[bh]);
          }
          this.#memory!.admit(state, b, h, fresh.subarray(bh * K, (bh + 1) * K), tick, jobs);
        }
      }
    }
    for (const state of this.#layers) state.flushResidency();
    await this.#memory?.recall(jobs);
  }

  /** Starts the maps of the submitted answers and backups (each blocks until the queue is idle). */
  #startMaps(): void {
    for (const p of this.#pending) p.start();
    this.#memory?.startBackupMaps();
  }

  /** Submits `encoder` behind the recall copies held for it. */
  #submit(encoder: GPUCommandEncoder): void {
    this.#submitCommands(encoder.finish());
  }

  #submitCommands(commands: GPUCommandBuffer): void {
    if (this.#memory) this.#memory.submit(commands);
    else this.device.queue.submit([commands]);
    // Answer read-backs recorded into `commands` may start now.
    this.#answers?.submitted();
  }

  #context(): PhaseContext {
    return {
      options: this.options,
      maxPages: this.maxPages,
      memory: this.#memory,
      tick: this.#tick,
      stats: this.#stats,
      atStepEnd: (record) => this.#atStepEnd.push(record),
    };
  }

  /**
   * Records the decode step of `layer` for every sequence into `encoder`:
   * append k, v; select; correct; build the page tables; attend; launch the
   * speculation. Returns the encoder to keep recording into: the same one,
   * at once, unless the policy must wait for the GPU inside the step
   * (`sync-offload`, freekv `correction: "sync"`, a first step after
   * prefill), in which case it submits `encoder`, waits, and returns a new
   * one. Layers are recorded in order between `beginStep` and `endStep`.
   */
  recordLayer(
    encoder: GPUCommandEncoder,
    layer: number,
    inputs: StepInputs,
  ): Promise<GPUCommandEncoder> {
    return this.#guard("record a decode step", () => this.#recordLayer(encoder, layer, inputs));
  }

  async #recordLayer(
    encoder: GPUCommandEncoder,
    layer: number,
    inputs: StepInputs,
  ): Promise<GPUCommandEncoder> {
    const action = "record a decode step";
    this.#validateLayer(action, layer, inputs);
    if (!this.#inStep) {
      throw new RangeError(
        `Cannot ${action} as a step must be begun first (beginStep): received layer ${layer} outside a step`,
      );
    }
    if (!(encoder instanceof GPUCommandEncoder)) {
      throw new TypeError(
        `Cannot ${action} as 'encoder' must be a GPUCommandEncoder: received ${
          describeValue(encoder)
        }`,
      );
    }
    this.#nextLayer = layer + 1;
    const o = this.options;
    const { batch: B, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = o;
    const state = this.#layers[layer];
    const q = state.input("q", inputs.q, B * hq * d * 4);
    const k = state.input("k", inputs.k, B * hkv * d * 4);
    const v = state.input("v", inputs.v, B * hkv * d * 4);
    const out = inputs.out ?? state.scratch("out", B * hq * d * 4);
    const rows = appendPhase(this.#context(), encoder, state, k, v);
    const regions = Array.from(
      { length: B },
      (_, b) => pageRegions(state.length[b], state.budget, state.slidingWindow),
    );
    if (state.mode === "full" || state.mode === "streaming") {
      storePhase(this.#context(), encoder, state, rows, false);
      this.#attendPhase(encoder, state, q, out, regions, false);
      return encoder;
    }
    const plan = selectPhase(this.#context(), encoder, state, q, regions, rows);
    if (plan.sync) {
      encoder = await this.#correctPhase(encoder, state, plan);
      this.#checkAlive(action);
    }
    this.#attendPhase(encoder, state, q, out, regions, plan.useFlags, plan.useBest, plan.table);
    if (state.qPrev) this.#speculatePhase(encoder, state, q, plan);
    return encoder;
  }

  #validateLayer(action: string, layer: number, inputs: StepInputs): void {
    this.#checkAlive(action);
    const o = this.options;
    assertInteger("layer", layer, action, 0, o.numLayers - 1);
    const expected = this.#inStep ? this.#nextLayer : 0;
    if (layer !== expected) {
      throw new RangeError(
        `Cannot ${action} as 'layer' must be ${expected} (layers step in order): received ${layer}`,
      );
    }
    checkStepInputs(o, action, inputs);
  }

  /**
   * Correct phase (waits): submits what was recorded, reads the selection
   * (and flags) back, recalls what the attended selection lacks, then
   * returns a fresh encoder.
   */
  async #correctPhase(
    encoder: GPUCommandEncoder,
    state: LayerState,
    plan: { needs: boolean[]; checked: boolean[]; useFlags: boolean },
  ): Promise<GPUCommandEncoder> {
    const o = this.options;
    const hkv = o.numKvHeads;
    const K = state.budget.selectPages;
    const rows = o.batch * hkv;
    const selRead = this.#ring.record(encoder, state.fresh!, 0, rows * K * 4);
    const flagRead = plan.useFlags ? this.#ring.record(encoder, state.flags!, 0, rows * 4) : null;
    this.#submit(encoder);
    this.#memory?.flush();
    const t0 = performance.now();
    const [selBytes, flagBytes] = await Promise.all([selRead.start(), flagRead?.start()]);
    this.#stats.wait(performance.now() - t0);
    const fresh = new Uint32Array(selBytes);
    const flags = flagBytes ? new Uint32Array(flagBytes) : null;
    const jobs = admitCorrected(this.#context(), state, plan, fresh, flags);
    // Already counted: the step's answer must not count these checks again.
    plan.checked.fill(false);
    state.flushResidency();
    await this.#memory?.recall(jobs);
    return this.device.createCommandEncoder({ label: `freekv step layer ${state.index}` });
  }

  /** Attend phase: page tables (built on the GPU where selection decides them) and attention. */
  #attendPhase(
    encoder: GPUCommandEncoder,
    state: LayerState,
    q: GPUBuffer,
    out: GPUBuffer,
    regions: PageRegions[],
    useFlags: boolean,
    useBest = false,
    builtTable?: PageTablePlan,
  ): void {
    const o = this.options;
    const B = o.batch;
    const hkv = o.numKvHeads;
    const lastPageLen = regions.map((r) => r.lastPageLen);
    let numPages: number[];
    let maxPages: number;
    let pageTable: Uint32Array | undefined;
    let pageIds: Uint32Array | undefined;
    if (state.mode === "full" || state.mode === "streaming") {
      maxPages = state.mode === "full" ? this.maxPages : state.slotsPerSeq;
      const built = residentPageTable(o, state.mode, regions, state.slotsPerSeq, maxPages);
      pageTable = built.pageTable;
      pageIds = built.pageIds;
      numPages = built.numPages;
      built.pages.forEach((pages, b) => state.cpuPages.fill(pages, b * hkv, (b + 1) * hkv));
    } else {
      // Page regions carry every field a page-table sequence has.
      state.flushResidency();
      if (builtTable) {
        // The selection's dispatch built the tables.
        numPages = [...builtTable.entries];
      } else if (regions.every((r) => r.candidateCount <= state.budget.selectPages)) {
        // Every candidate is attended: the tables follow from the regions
        // and the residency alone, and two writes replace a dispatch.
        numPages = state.writeAllCandidateTables(regions);
      } else {
        const tablePlan = state.planTable({ sequences: regions, useFlags, useBest });
        tablePlan.encode(encoder, tableBuffers(state, useFlags, useBest));
        numPages = [...tablePlan.entries];
      }
      state.tableEntries = numPages;
      maxPages = state.tableBuilder!.maxEntries;
    }
    const windowed = state.slidingWindow > 0;
    this.#stats.current!.pagesAttended += numPages.reduce((a, n) => a + n, 0) * hkv;
    const tables = {
      batch: B,
      pageTable,
      numPages,
      lastPageLen,
      maxPages,
      numSlots: B * state.slotsPerSeq,
      ...(windowed ? { firstToken: regions.map((r) => r.firstToken), pageIds } : {}),
    };
    const gpuTable = pageTable
      ? {}
      : { pageTable: state.table!, ...(windowed ? { pageIds: state.pages! } : {}) };
    state.planAttention(this.#attention, tables).encode(encoder, {
      q,
      kCache: state.kCache,
      vCache: state.vCache,
      out,
      ...gpuTable,
    });
  }

  /**
   * Speculate phase (freekv): keep q for the next correction check, make
   * this step's selection the next step's speculation, and add it (with the
   * flags and resident hits) to the step's answer.
   */
  #speculatePhase(
    encoder: GPUCommandEncoder,
    state: LayerState,
    q: GPUBuffer,
    plan: { selects: boolean[]; checked: boolean[]; speculation?: GPUBuffer; queryKept: boolean },
  ): void {
    const o = this.options;
    // The correction check, when it ran, stored q already.
    if (!plan.queryKept) {
      encoder.copyBufferToBuffer(q, 0, state.qPrev!, 0, o.batch * o.numQueryHeads * o.headDim * 4);
    }
    state.hasPrev.fill(true);
    // Known when recorded: the GPU holds the speculation from here on, even
    // while its answer is still on its way (answerLag > 1).
    plan.selects.forEach((s, b) => state.hasSpec[b] = s);
    if (!plan.selects.some(Boolean)) return;
    const bytes = o.batch * o.numKvHeads * state.budget.selectPages * 4;
    const speculation = plan.speculation ?? state.fresh!;
    // Nothing later in the step reads or writes these buffers of this layer.
    this.#atStepEnd.push((e) => {
      e.copyBufferToBuffer(speculation, 0, state.spec!, 0, bytes);
      this.#answers!.record(e, state, speculation, plan.selects, plan.checked);
    });
  }

  /**
   * Ends the step: records the read-back of the step's answer into
   * `encoder` and submits it. The answer of step t is taken when step
   * t + `answerLag` begins.
   *
   * When its read starts: in Deno 2.9 starting a map blocks the thread until
   * the queue is idle. So with `options.waitFollows` (the default at
   * `answerLag` 1) it starts right after this submit and rides the wait the
   * caller makes next (reading its logits); otherwise it starts just before
   * the next step's submit, which would block as long, so that the caller
   * records step t + 1 while the GPU runs step t.
   */
  endStep(encoder: GPUCommandEncoder, options: EndStepOptions = {}): void {
    const action = "end a decode step";
    this.#checkAlive(action);
    if (options === null || typeof options !== "object") {
      throw new TypeError(
        `Cannot ${action} as 'options' must be an object: received ${describeValue(options)}`,
      );
    }
    const waitFollows = options.waitFollows ?? this.options.answerLag === 1;
    assertBoolean("waitFollows", waitFollows, action);
    if (!this.#inStep || this.#nextLayer !== this.options.numLayers) {
      throw new RangeError(
        `Cannot ${action} as every layer must be recorded first: received endStep ${
          this.#inStep
            ? `after ${this.#nextLayer} of ${this.options.numLayers} layers`
            : "outside a step"
        }`,
      );
    }
    if (!(encoder instanceof GPUCommandEncoder)) {
      throw new TypeError(
        `Cannot ${action} as 'encoder' must be a GPUCommandEncoder: received ${
          describeValue(encoder)
        }`,
      );
    }
    for (const record of this.#atStepEnd) record(encoder);
    this.#atStepEnd = [];
    const answer = this.#answers?.end(encoder, this.#ring) ?? null;
    // Finished while the GPU still runs the previous step; then the maps of
    // earlier steps' answers and backups start, where the submit would
    // block as long anyway (see PendingAnswer).
    const commands = encoder.finish();
    this.#startMaps();
    this.#submitCommands(commands);
    if (answer) this.#pending.push(answer);
    if (waitFollows) this.#startMaps();
    this.#inStep = false;
    this.#nextLayer = 0;
    const stats = this.#stats.current!;
    stats.totalMs = performance.now() - this.#stepStart;
    this.#stats.last = stats;
    this.#stats.current = null;
    this.#stats.steps++;
  }

  /**
   * One decode step of `layer` as a convenience over `beginStep`,
   * `recordLayer` and `endStep`: layer 0 begins the step, the last layer
   * ends it, each layer is submitted on its own. Returns the output as an
   * array when `inputs.out` is absent (which reads it back: a host wait).
   */
  step(layer: number, inputs: StepInputs): Promise<Float32Array | undefined> {
    return this.#guard("run a decode step", () => this.#step(layer, inputs));
  }

  async #step(layer: number, inputs: StepInputs): Promise<Float32Array | undefined> {
    this.#validateLayer("run a decode step", layer, inputs);
    if (layer === 0) {
      await this.beginStep();
      this.#checkAlive("run a decode step");
    }
    const o = this.options;
    const out = inputs.out ??
      this.#layers[layer].scratch("out", o.batch * o.numQueryHeads * o.headDim * 4);
    let encoder = this.device.createCommandEncoder({ label: `freekv step layer ${layer}` });
    encoder = await this.recordLayer(encoder, layer, { ...inputs, out });
    if (layer === o.numLayers - 1) this.endStep(encoder, { waitFollows: !inputs.out || undefined });
    else this.#submit(encoder);
    if (inputs.out) return undefined;
    return new Float32Array(
      await readBuffer(this.device, out, o.batch * o.numQueryHeads * o.headDim * 4),
    );
  }

  /**
   * Forgets sequence `seq` on every layer (its pages, selection and host
   * backups) so that it can be prefilled with a new prompt. Call it between
   * steps; it waits for background work first.
   */
  reset(seq: number): Promise<void> {
    return this.#guard("reset a sequence", () => this.#reset(seq));
  }

  async #reset(seq: number): Promise<void> {
    const action = "reset a sequence";
    this.#checkAlive(action);
    assertInteger("seq", seq, action, 0, this.options.batch - 1);
    if (this.#inStep) {
      throw new RangeError(
        `Cannot ${action} as no decode step may be open: received a reset between beginStep and endStep`,
      );
    }
    await this.drain();
    for (const state of this.#layers) {
      state.reset(seq);
      state.flushResidency();
    }
    this.#memory?.release(seq);
  }

  /** Waits for all background work (the pending answer and its recalls, offloads). */
  drain(): Promise<void> {
    return this.#guard("drain the engine", () => this.#drain());
  }

  async #drain(): Promise<void> {
    this.#checkAlive("drain the engine");
    // The answer serves the next step: admit its pages with that step's tick,
    // as beginStep would, so that draining leaves the LRU order unchanged.
    if (!this.#inStep) {
      if (this.#answers?.unread) {
        const encoder = this.device.createCommandEncoder({ label: "freekv answer read-back" });
        this.#answers.flush(encoder, this.#ring);
        this.#submit(encoder);
      }
      while (this.#pending.length) await this.#takeAnswer(this.#tick + 1);
    }
    await this.#memory?.drain();
    await this.device.queue.onSubmittedWorkDone();
  }

  /** Frees every GPU buffer and the host pool. */
  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    // Nobody will take the pending answer: keep its failure from going unhandled.
    for (const p of this.#pending) if (p.started) p.layers.catch(() => {});
    this.#pending = [];
    for (const l of this.#layers) l[Symbol.dispose]();
    this.#answers?.[Symbol.dispose]();
    this.#ring[Symbol.dispose]();
    this.#memory?.[Symbol.dispose]();
    this.#attention[Symbol.dispose]();
  }
}
export * from "./options.ts";
