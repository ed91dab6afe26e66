/**
 * The retrieval engine: owns the KV memory of one model for a batch of
 * sequences and runs a decode step per layer under one of the policies
 * `full`, `streaming`, `quest`, `sync-offload` or `freekv` — all through the
 * same kernels and memory system.
 *
 * @module
 */

import {
  type AttentionPlan,
  createPagedAttention,
  type PagedAttention,
} from "../kernels/attention.ts";
import { bytesPerElement, type KvDtype } from "../gpu/dtype.ts";
import {
  assertAllFinite,
  assertFinite,
  assertInteger,
  assertLength,
  assertOneOf,
} from "../gpu/errors.ts";
import { createBuffer, readBuffer } from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import {
  type PageBudget,
  pageRegions,
  SelectionSlots,
  type SlotLoad,
} from "../memory/page_plan.ts";
import { ReadbackRing } from "../gpu/readback.ts";
import {
  createPageSummarizer,
  type PageSummarizer,
  type SummaryKind,
} from "../kernels/summaries.ts";
import { createPageSelector, type PageSelector, type PoolingMode } from "../kernels/selection.ts";
import { createQuerySimilarity, type QuerySimilarity } from "../kernels/similarity.ts";
import { HostPagePool } from "../memory/host_pool.ts";
import { createOffloader, type Offloader } from "../memory/offload.ts";
import { createRecaller, type Recaller, type RecallJob } from "../memory/recall.ts";
import appendSource from "../../shaders/kv_append.wgsl" with { type: "text" };
import appendPackedSource from "../../shaders/kv_append_packed.wgsl" with { type: "text" };

/** Retrieval policies; see DESIGN section 4. */
export type PolicyName = "full" | "streaming" | "quest" | "sync-offload" | "freekv";

/** Every {@linkcode PolicyName}. */
export const POLICIES: readonly PolicyName[] = [
  "full",
  "streaming",
  "quest",
  "sync-offload",
  "freekv",
];

/** Options of {@linkcode createRetrievalEngine}. */
export interface EngineOptions {
  /** Decoder layers. */
  numLayers: number;
  /** Query heads. */
  numQueryHeads: number;
  /** KV heads (`numQueryHeads` must be a multiple). */
  numKvHeads: number;
  /** Per-head size. */
  headDim: number;
  /** Longest sequence, in tokens (sizes the GPU cache of resident policies and the page ids). */
  maxContext: number;
  /** Sequences decoded together (default 1). */
  batch?: number;
  /** Tokens per page (default 32). */
  pageSize?: number;
  /** KV element type (default `f32`). */
  dtype?: KvDtype;
  /** Policy (default `freekv`). */
  policy?: PolicyName;
  /** Tokens attended per step: sink + window + selected (default 2048). */
  budget?: number;
  /** Sink tokens (default 512). */
  sink?: number;
  /** Window tokens, including the partial last page (default 512). */
  window?: number;
  /** Correction threshold on the group-mean query cosine (default 0.9). */
  tau?: number;
  /** GQA pooling of page scores (default `softmax-mean`). */
  pooling?: PoolingMode;
  /** Page summary kind (default `minmax`). */
  summary?: SummaryKind;
  /** Host layout for the offload policies (default `hnd`; `nhd` is the fragmented baseline). */
  hostLayout?: "hnd" | "nhd";
  /** Keep layer 0 on full attention (default false). */
  fullFirstLayer?: boolean;
  /** Recall buffering (default `double`). */
  recallBuffering?: "double" | "single";
  /**
   * Recall staging (default `write-buffer`: no map round trip, which costs
   * ~11 ms in Deno; `mapped` has more bandwidth for big recalls).
   */
  recallStaging?: "write-buffer" | "mapped";
  /**
   * freekv: compute this step's selection together with the correction
   * check so one readback serves both (default true). False runs the
   * selection after attention, off the critical path, at the price of a
   * second readback when a head is corrected.
   */
  fuseCorrection?: boolean;
  /**
   * Wait for the GPU after each phase to time it (selection, recall,
   * attention); slower, for breakdowns. Default false: only CPU-side waits
   * are timed.
   */
  profile?: boolean;
}

/** q, k, v of one decode step of one layer, for the whole batch. */
export interface StepInputs {
  /** `[batch][Hq][d]` f32: a GPU buffer (STORAGE | COPY_SRC) or an array. */
  q: GPUBuffer | Float32Array;
  /** `[batch][Hkv][d]` f32. */
  k: GPUBuffer | Float32Array;
  /** `[batch][Hkv][d]` f32. */
  v: GPUBuffer | Float32Array;
  /** Where to write the output `[batch][Hq][d]` f32; when absent the output is read back and returned. */
  out?: GPUBuffer;
}

/** Statistics of one layer's decode step. */
export interface StepStats {
  /** Layer of the step. */
  layer: number;
  /** Pages attended, summed over sequences and KV heads. */
  pagesAttended: number;
  /** Pages chosen by selection kernels run in this step, summed over sequences and KV heads. */
  pagesSelected: number;
  /** Pages recalled from the host (critical path and speculative). */
  pagesRecalled: number;
  /** Bytes recalled from the host. */
  bytesRecalled: number;
  /** (sequence, KV head) pairs corrected (freekv). */
  headsCorrected: number;
  /** (sequence, KV head) pairs checked for correction. */
  headsChecked: number;
  /** Milliseconds waiting for selection results on the critical path. */
  selectionMs: number;
  /** Milliseconds waiting for recalls on the critical path. */
  recallWaitMs: number;
  /** GPU milliseconds of attention (only with `profile`, from timestamp queries when available; else 0). */
  attentionMs: number;
  /** Wall milliseconds of the whole call. */
  totalMs: number;
}

/** Running totals over all steps. */
export interface EngineTotals {
  /** Decode steps (layer steps / numLayers). */
  steps: number;
  /** Pages recalled. */
  pagesRecalled: number;
  /** Bytes recalled. */
  bytesRecalled: number;
  /** Pages offloaded to the host. */
  pagesOffloaded: number;
  /** Corrections per (layer, KV head), summed over sequences: `[layer * Hkv + head]`. */
  correctionsPerHead: number[];
  /** Checks per (layer, KV head), summed over sequences. */
  checksPerHead: number[];
  /** Share of checked head-steps that were corrected. */
  correctedShare: number;
}

type LayerMode = "full" | "streaming" | "quest" | "offload";

interface LayerState {
  mode: LayerMode;
  slotsPerSeq: number;
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  summaries?: GPUBuffer;
  length: Int32Array;
  prefilled: boolean[];
  /** offload: residency of selection slots per (seq, head). */
  slots?: SelectionSlots[];
  /** freekv: previous step's q. */
  qPrev?: GPUBuffer;
  hasPrev: boolean;
  /** freekv: speculative selection for the next step per seq (null: none), and its recall. */
  speculative: (number[][] | null)[];
  speculativeDone: Promise<void>;
  plan?: AttentionPlan;
  attended: number[][];
  lastCorrections: Uint8Array;
}

const ACTION_CREATE = "create a retrieval engine";

/**
 * Creates a retrieval engine on `device`.
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

/** See {@linkcode createRetrievalEngine}. */
export class RetrievalEngine {
  /** The device. */
  readonly device: GPUDevice;
  /** Resolved options. */
  readonly options: Readonly<Required<EngineOptions>>;
  /** Page counts of the budget. */
  readonly budget: Readonly<PageBudget>;
  /** Pages per sequence in page-id space (`ceil(maxContext / pageSize)`). */
  readonly maxPages: number;
  #layers: LayerState[] = [];
  #attention: PagedAttention;
  #summarizer?: PageSummarizer;
  #selector?: PageSelector;
  #similarity?: QuerySimilarity;
  #pool?: HostPagePool;
  #offloader?: Offloader;
  #recaller?: Recaller;
  #ring: ReadbackRing;
  #nextLayer = 0;
  #scratch: Map<string, GPUBuffer> = new Map();
  #totals = { steps: 0, pagesRecalled: 0, bytesRecalled: 0, pagesOffloaded: 0 };
  #corrections: number[];
  #checks: number[];
  #disposed = false;

  /** Use {@linkcode createRetrievalEngine}. */
  constructor(device: GPUDevice, options: EngineOptions) {
    const o = resolveOptions(options);
    if (o.dtype === "f16" && (o.numKvHeads * o.headDim) % 2 !== 0) {
      throw new RangeError(
        `Cannot ${ACTION_CREATE} as numKvHeads * headDim must be even for "f16": received ${
          o.numKvHeads * o.headDim
        }`,
      );
    }
    this.device = device;
    this.options = o;
    const P = o.pageSize;
    this.budget = {
      pageSize: P,
      sinkPages: o.sink / P,
      windowPages: o.window / P,
      selectPages: (o.budget - o.sink - o.window) / P,
    };
    this.maxPages = Math.ceil(o.maxContext / P);
    const { numLayers: L, numKvHeads: hkv, headDim: d, batch: B } = o;
    const rowBytes = hkv * d * bytesPerElement(o.dtype);
    const modes: LayerMode[] = Array.from({ length: L }, (_, l) => layerMode(o, l));
    // Check every buffer fits a binding before allocating anything.
    const maxBinding = device.limits.maxStorageBufferBindingSize;
    for (const mode of new Set(modes)) {
      const bytes = B * this.#slotsPerSeq(mode) * P * rowBytes;
      if (bytes > maxBinding) {
        throw new RangeError(
          `Cannot ${ACTION_CREATE} as the ${mode} KV cache of one layer must fit one storage binding (${maxBinding} bytes): received ${bytes} bytes (batch ${B}, maxContext ${o.maxContext}); lower maxContext or batch`,
        );
      }
    }
    this.#attention = createPagedAttention(device, {
      numQueryHeads: o.numQueryHeads,
      numKvHeads: hkv,
      headDim: d,
      pageSize: P,
      dtype: o.dtype,
    });
    const needSummaries = modes.some((m) => m === "quest" || m === "offload");
    if (needSummaries) {
      this.#summarizer = createPageSummarizer(device, {
        numKvHeads: hkv,
        headDim: d,
        pageSize: P,
        dtype: o.dtype,
        summary: o.summary,
      });
      this.#selector = createPageSelector(device, {
        numQueryHeads: o.numQueryHeads,
        numKvHeads: hkv,
        headDim: d,
        pooling: o.pooling,
      });
    }
    if (o.policy === "freekv") {
      this.#similarity = createQuerySimilarity(device, {
        numQueryHeads: o.numQueryHeads,
        numKvHeads: hkv,
        headDim: d,
      });
    }
    if (modes.includes("offload")) {
      this.#pool = new HostPagePool({
        layers: L,
        kvHeads: hkv,
        headDim: d,
        pageSize: P,
        dtype: o.dtype,
        layout: o.hostLayout,
      });
      this.#offloader = createOffloader(device, this.#pool);
      this.#recaller = createRecaller(device, this.#pool, {
        buffering: o.recallBuffering,
        staging: o.recallStaging,
        caches: (layer: number) => ({
          kCache: this.#layers[layer].kCache,
          vCache: this.#layers[layer].vCache,
        }),
      });
    }
    this.#ring = new ReadbackRing(device, "freekv engine");
    for (let l = 0; l < L; l++) {
      const mode = modes[l];
      const slotsPerSeq = this.#slotsPerSeq(mode);
      const cacheBytes = B * slotsPerSeq * P * rowBytes;
      const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
      const layer: LayerState = {
        mode,
        slotsPerSeq,
        kCache: createBuffer(device, `freekv layer ${l} K cache`, usage, cacheBytes),
        vCache: createBuffer(device, `freekv layer ${l} V cache`, usage, cacheBytes),
        length: new Int32Array(B),
        prefilled: new Array(B).fill(false),
        hasPrev: false,
        speculative: new Array(B).fill(null),
        speculativeDone: Promise.resolve(),
        attended: Array.from({ length: B * hkv }, () => []),
        lastCorrections: new Uint8Array(B * hkv),
      };
      if (mode === "quest" || mode === "offload") {
        layer.summaries = createBuffer(
          device,
          `freekv layer ${l} page summaries`,
          usage,
          B * this.maxPages * hkv * 2 * d * 4,
        );
      }
      if (mode === "offload") {
        layer.slots = Array.from(
          { length: B * hkv },
          () => new SelectionSlots(this.budget.selectPages),
        );
      }
      if (mode === "offload" && o.policy === "freekv") {
        layer.qPrev = createBuffer(
          device,
          `freekv layer ${l} previous q`,
          usage,
          B * o.numQueryHeads * d * 4,
        );
      }
      this.#layers.push(layer);
    }
    this.profile = o.profile;
    this.#corrections = new Array(L * hkv).fill(0);
    this.#checks = new Array(L * hkv).fill(0);
  }

  /** Streaming spends the whole budget on sink + window (same memory as the others). */
  #modeBudget(mode: LayerMode): PageBudget {
    if (mode !== "streaming") return this.budget;
    const { pageSize: P, sinkPages: S } = this.budget;
    return { pageSize: P, sinkPages: S, windowPages: this.options.budget / P - S, selectPages: 0 };
  }

  #slotsPerSeq(mode: LayerMode): number {
    const { sinkPages: S, windowPages: W, selectPages: K } = this.#modeBudget(mode);
    if (mode === "full" || mode === "quest") return this.maxPages;
    return mode === "streaming" ? S + W : S + W + K;
  }

  /** Local slot of logical page `p` in its home (sink/window ring, or identity). */
  #homeSlot(mode: LayerMode, p: number): number {
    const { sinkPages: S, windowPages: W } = this.#modeBudget(mode);
    if (mode === "full" || mode === "quest") return p;
    return p < S ? p : S + ((p - S) % W);
  }

  #selectSlot(i: number): number {
    return this.budget.sinkPages + this.budget.windowPages + i;
  }

  /** Tokens stored for `seq` at `layer`. */
  length(layer: number, seq: number): number {
    return this.#layers[layer].length[seq];
  }

  /**
   * Logical pages attended by (`seq`, KV `head`) in the latest step of
   * `layer`, ascending.
   */
  attendedPages(layer: number, seq: number, head: number): number[] {
    return [...this.#layers[layer].attended[seq * this.options.numKvHeads + head]].sort((a, b) =>
      a - b
    );
  }

  /**
   * Per (sequence, KV head), 1 where the latest step of `layer` corrected the
   * head (freekv: group-mean query cosine below `tau`), else 0.
   */
  lastCorrections(layer: number): Uint8Array {
    return this.#layers[layer].lastCorrections.slice();
  }

  /** Running totals. */
  totals(): EngineTotals {
    const checks = this.#checks.reduce((a, b) => a + b, 0);
    const corrections = this.#corrections.reduce((a, b) => a + b, 0);
    return {
      ...this.#totals,
      correctionsPerHead: [...this.#corrections],
      checksPerHead: [...this.#checks],
      correctedShare: checks ? corrections / checks : 0,
    };
  }

  /** The host page pool (offload policies only). */
  get hostPool(): HostPagePool | undefined {
    return this.#pool;
  }

  /** The layer whose step comes next. */
  get nextLayer(): number {
    return this.#nextLayer;
  }

  #scratchBuffer(name: string, bytes: number): GPUBuffer {
    let b = this.#scratch.get(name);
    if (!b || b.size < bytes) {
      b?.destroy();
      b = createBuffer(
        this.device,
        `freekv engine ${name}`,
        GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
        Math.max(bytes, 256),
      );
      this.#scratch.set(name, b);
    }
    return b;
  }

  /** Records the f32 -> cache-dtype row copy: `rows` rows of `src` go to element offsets `dst`. */
  #encodeRows(
    encoder: GPUCommandEncoder,
    k: GPUBuffer,
    v: GPUBuffer,
    kCache: GPUBuffer,
    vCache: GPUBuffer,
    dstOffsets: Uint32Array,
  ): void {
    const { numKvHeads: hkv, headDim: d, dtype } = this.options;
    // f16 without shader-f16: pack pairs of halves into u32 words.
    const packed = dtype === "f16" && !this.device.features.has("shader-f16");
    const code = packed
      ? appendPackedSource
      : (dtype === "f16" ? "enable f16;\nalias kv_t = f16;\n" : "alias kv_t = f32;\n") +
        appendSource;
    const pipeline = cachedPipeline(this.device, `kv_append_${packed ? "packed" : dtype}`, code);
    const rowLen = packed ? (hkv * d) / 2 : hkv * d;
    if (packed) dstOffsets = dstOffsets.map((x) => x / 2);
    const rows = dstOffsets.length;
    // Reused across steps: one encoder per submit records at most one append.
    const offsets = this.#scratchBuffer("append offsets", dstOffsets.byteLength);
    this.device.queue.writeBuffer(offsets, 0, dstOffsets as Uint32Array<ArrayBuffer>);
    const maxY = this.device.limits.maxComputeWorkgroupsPerDimension;
    for (let base = 0, chunk = 0; base < rows; base += maxY, chunk++) {
      this.#appendParams[chunk] ??= createBuffer(
        this.device,
        `freekv append params ${chunk}`,
        GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        16,
      );
      const params = this.#appendParams[chunk];
      this.device.queue.writeBuffer(params, 0, new Uint32Array([rowLen, rows, base]));
      const bind = this.device.createBindGroup({
        label: "freekv append",
        layout: pipeline.getBindGroupLayout(0),
        entries: [params, k, v, offsets, kCache, vCache].map((buffer, binding) => ({
          binding,
          resource: { buffer },
        })),
      });
      const pass = encoder.beginComputePass({ label: "freekv append" });
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bind);
      pass.dispatchWorkgroups(Math.ceil(rowLen / 64), Math.min(maxY, rows - base));
      pass.end();
    }
  }

  #transient: GPUBuffer[] = [];
  #appendParams: GPUBuffer[] = [];

  #releaseTransient(): void {
    // Destroying after submit is safe: WebGPU keeps them alive for submitted work.
    for (const b of this.#transient) b.destroy();
    this.#transient = [];
  }

  /**
   * Stores the prompt's K/V of sequence `seq` for `layer` (post-RoPE,
   * `[tokens][Hkv][d]` f32): pages are written, summarized and offloaded as
   * the policy requires.
   */
  async prefill(
    seq: number,
    layer: number,
    kv: { k: Float32Array | GPUBuffer; v: Float32Array | GPUBuffer; length?: number },
  ): Promise<void> {
    const action = "prefill";
    this.#checkAlive(action);
    const o = this.options;
    assertInteger("seq", seq, action, 0, o.batch - 1);
    assertInteger("layer", layer, action, 0, o.numLayers - 1);
    const state = this.#layers[layer];
    if (state.prefilled[seq]) {
      throw new RangeError(
        `Cannot prefill as sequence ${seq} of layer ${layer} must not be prefilled twice: received a second prefill`,
      );
    }
    const row = o.numKvHeads * o.headDim;
    const n = kv.length ?? (kv.k instanceof Float32Array ? kv.k.length / row : NaN);
    assertInteger("length", n, action, 1, o.maxContext);
    for (const name of ["k", "v"] as const) {
      const x = kv[name];
      if (x instanceof Float32Array) {
        assertLength(name, x, n * row, action);
        assertAllFinite(name, x, action);
      } else if (x.size < n * row * 4) {
        throw new RangeError(
          `Cannot prefill as '${name}' must hold ${
            n * row * 4
          } bytes: received a buffer of ${x.size}`,
        );
      }
    }
    const P = o.pageSize;
    const { sinkPages: S, selectPages: K } = this.budget;
    const regions = pageRegions(n, this.#modeBudget(state.mode));
    const np = regions.numPages;
    const fullPages = Math.floor(n / P);
    const device = this.device;
    const k = this.#inputBuffer("prefill k", kv.k, n * row * 4);
    const v = this.#inputBuffer("prefill v", kv.v, n * row * 4);
    const encoder = device.createCommandEncoder({ label: "freekv prefill" });
    const mode = state.mode;
    const seqBase = seq * state.slotsPerSeq;
    const slotBytes = P * row * bytesPerElement(o.dtype);
    const pageIds = (from: number, to: number) =>
      Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
    if (mode === "full" || mode === "quest") {
      const dst = new Uint32Array(n).map((_, t) => (seqBase * P + t) * row);
      this.#encodeRows(encoder, k, v, state.kCache, state.vCache, dst);
      if (mode === "quest" && fullPages > S) {
        this.#summarizer!.plan(
          pageIds(S, fullPages).map((p) => ({
            srcSlot: seqBase + p,
            dstPage: seq * this.maxPages + p,
            numTokens: P,
          })),
        );
        this.#summarizer!.encode(encoder, { kCache: state.kCache, summaries: state.summaries! });
      }
    } else {
      // Stage the whole prompt as NHD pages (slot = page), then place sink and
      // window pages in their slots and back the full pages up to the host.
      const bytes = np * slotBytes;
      const tk = createBuffer(device, "freekv prefill staging K", usageAll, bytes);
      const tv = createBuffer(device, "freekv prefill staging V", usageAll, bytes);
      this.#transient.push(tk, tv);
      const dst = new Uint32Array(n).map((_, t) => t * row);
      this.#encodeRows(encoder, k, v, tk, tv, dst);
      const place = (p: number, slot: number) => {
        const at = (seqBase + slot) * slotBytes;
        encoder.copyBufferToBuffer(tk, p * slotBytes, state.kCache, at, slotBytes);
        encoder.copyBufferToBuffer(tv, p * slotBytes, state.vCache, at, slotBytes);
      };
      for (let p = 0; p < regions.sinkCount; p++) place(p, this.#homeSlot(mode, p));
      for (let p = regions.windowStart; p < np; p++) place(p, this.#homeSlot(mode, p));
      if (mode === "offload") {
        const offloaded = pageIds(S, fullPages);
        if (offloaded.length) {
          this.#summarizer!.plan(offloaded.map((p) => ({
            srcSlot: p,
            dstPage: seq * this.maxPages + p,
            numTokens: P,
          })));
          this.#summarizer!.encode(encoder, { kCache: tk, summaries: state.summaries! });
          this.#offloader!.encode(encoder, {
            layer,
            kCache: tk,
            vCache: tv,
            jobs: offloaded.map((p) => ({ slot: p, page: seq * this.maxPages + p })),
          });
          this.#totals.pagesOffloaded += offloaded.length * o.numKvHeads;
        }
        // While all candidates fit, they stay resident: candidate i in selection slot i.
        if (regions.candidateCount <= K) {
          for (let i = 0; i < regions.candidateCount; i++) {
            place(S + i, this.#selectSlot(i));
            for (let h = 0; h < o.numKvHeads; h++) {
              state.slots![seq * o.numKvHeads + h].pages[i] = S + i;
            }
          }
        }
      }
    }
    device.queue.submit([encoder.finish()]);
    this.#offloader?.flush();
    this.#releaseTransient();
    state.length[seq] = n;
    state.prefilled[seq] = true;
    state.speculative[seq] = null;
    await Promise.resolve();
  }

  #inputBuffer(name: string, x: Float32Array | GPUBuffer, bytes: number): GPUBuffer {
    if (!(x instanceof Float32Array)) return x;
    const b = this.#scratchBuffer(name, bytes);
    this.device.queue.writeBuffer(b, 0, x as Float32Array<ArrayBuffer>);
    return b;
  }

  #checkAlive(action: string): void {
    if (this.#disposed) {
      throw new TypeError(
        `Cannot ${action} as the engine must not be disposed: received a disposed engine`,
      );
    }
  }

  /**
   * One decode step of `layer` for every sequence: appends k, v, runs the
   * policy's selection / correction / recall, and attention. Layers are
   * stepped in order 0..L-1 for each token. Returns the output as an array
   * when `inputs.out` is absent.
   */
  async step(layer: number, inputs: StepInputs): Promise<Float32Array | undefined> {
    const t0 = performance.now();
    const action = "run a decode step";
    this.#checkAlive(action);
    const o = this.options;
    const { batch: B, numQueryHeads: hq, numKvHeads: hkv, headDim: d } = o;
    assertInteger("layer", layer, action, 0, o.numLayers - 1);
    if (layer !== this.#nextLayer) {
      throw new RangeError(
        `Cannot ${action} as 'layer' must be ${this.#nextLayer} (layers step in order): received ${layer}`,
      );
    }
    const state = this.#layers[layer];
    for (let b = 0; b < B; b++) {
      if (!state.prefilled[b]) {
        throw new RangeError(
          `Cannot ${action} as sequence ${b} must be prefilled at layer ${layer} first: received a step before its prefill`,
        );
      }
      if (state.length[b] >= o.maxContext) {
        throw new RangeError(
          `Cannot ${action} as sequence ${b} must stay within maxContext ${o.maxContext}: received a step at length ${
            state.length[b]
          }`,
        );
      }
    }
    const sizes = { q: B * hq * d, k: B * hkv * d, v: B * hkv * d };
    for (const name of ["q", "k", "v"] as const) {
      const x = inputs[name];
      if (x instanceof Float32Array) {
        assertLength(name, x, sizes[name], action);
        assertAllFinite(name, x, action);
      } else if (!(x instanceof GPUBuffer) || x.size < sizes[name] * 4) {
        throw new RangeError(
          `Cannot ${action} as '${name}' must be a Float32Array or a GPUBuffer of at least ${
            sizes[name] * 4
          } bytes: received ${x instanceof GPUBuffer ? `a buffer of ${x.size}` : typeof x}`,
        );
      }
    }
    if (inputs.out && inputs.out.size < sizes.q * 4) {
      throw new RangeError(
        `Cannot ${action} as 'out' must hold ${
          sizes.q * 4
        } bytes: received a buffer of ${inputs.out.size}`,
      );
    }
    // Validation done: from here on state changes.
    this.#nextLayer = (layer + 1) % o.numLayers;
    if (this.#nextLayer === 0) this.#totals.steps++;
    const stats: StepStats = {
      layer,
      pagesAttended: 0,
      pagesSelected: 0,
      pagesRecalled: 0,
      bytesRecalled: 0,
      headsCorrected: 0,
      headsChecked: 0,
      selectionMs: 0,
      recallWaitMs: 0,
      attentionMs: 0,
      totalMs: 0,
    };
    const device = this.device;
    const q = this.#inputBuffer("q", inputs.q, sizes.q * 4);
    const k = this.#inputBuffer("k", inputs.k, sizes.k * 4);
    const v = this.#inputBuffer("v", inputs.v, sizes.v * 4);
    const mode = state.mode;
    const policy = mode === "offload" ? o.policy : mode;
    // The previous step's speculative recall of this layer must have landed.
    if (policy === "freekv") {
      const w0 = performance.now();
      await state.speculativeDone;
      stats.recallWaitMs += performance.now() - w0;
    }

    const encoder = device.createCommandEncoder({ label: `freekv step layer ${layer}` });
    this.#encodeAppend(encoder, layer, k, v);
    const budget = this.#modeBudget(mode);
    const regions = Array.from({ length: B }, (_, b) => pageRegions(state.length[b], budget));
    const K = this.budget.selectPages;
    const needsSelection = regions.map((r) => r.candidateCount > K);

    let selection: Uint32Array | null = null; // [B][hkv][K] pages selected with this step's q
    let flags: Uint32Array | null = null;
    const selectedBy = new Array<boolean>(B).fill(false);
    if ((policy === "quest" || policy === "sync-offload") && needsSelection.some(Boolean)) {
      const read = this.#encodeSelection(encoder, state, q, regions);
      device.queue.submit([encoder.finish()]);
      this.#offloader?.flush();
      const w0 = performance.now();
      selection = new Uint32Array(await read.start());
      stats.selectionMs += performance.now() - w0;
      needsSelection.forEach((n, b) => selectedBy[b] = n);
    } else if (policy === "freekv" && state.hasPrev && needsSelection.some(Boolean)) {
      // (While every candidate fits the budget there is nothing to correct.)
      const read = this.#encodeSimilarity(encoder, state, q);
      // Fused: this step's selection (the next step's speculation) rides the
      // same round trip as the flags, so a correction costs no second one.
      const fused = o.fuseCorrection ? this.#encodeSelection(encoder, state, q, regions) : null;
      device.queue.submit([encoder.finish()]);
      this.#offloader?.flush();
      const w0 = performance.now();
      const [f, sel] = await Promise.all([read.start(), fused?.start()]);
      flags = new Uint32Array(f);
      if (sel) {
        selection = new Uint32Array(sel);
        needsSelection.forEach((n, b) => selectedBy[b] = n);
      }
      stats.selectionMs += performance.now() - w0;
    } else {
      device.queue.submit([encoder.finish()]);
      this.#offloader?.flush();
    }
    this.#releaseTransient();

    // freekv: which (seq, head) attend this step's selection instead of the speculative one.
    const corrected: boolean[] = new Array(B * hkv).fill(false);
    state.lastCorrections.fill(0);
    if (policy === "freekv") {
      let needNow = false;
      for (let b = 0; b < B; b++) {
        if (!needsSelection[b]) continue;
        const spec = state.speculative[b];
        for (let h = 0; h < hkv; h++) {
          if (flags) {
            stats.headsChecked++;
            this.#checks[layer * hkv + h]++;
          }
          if (!spec) corrected[b * hkv + h] = true;
          else if (flags && flags[b * hkv + h]) {
            corrected[b * hkv + h] = true;
            state.lastCorrections[b * hkv + h] = 1;
            stats.headsCorrected++;
            this.#corrections[layer * hkv + h]++;
          }
          needNow ||= corrected[b * hkv + h];
        }
      }
      if (needNow && !selection) {
        const enc = device.createCommandEncoder({ label: `freekv correction layer ${layer}` });
        const read = this.#encodeSelection(enc, state, q, regions);
        device.queue.submit([enc.finish()]);
        const w0 = performance.now();
        selection = new Uint32Array(await read.start());
        stats.selectionMs += performance.now() - w0;
        needsSelection.forEach((n, b) => selectedBy[b] = n);
      }
    }

    // Residency: recall what the attended selection lacks (critical path).
    if (mode === "offload") {
      const jobs: RecallJob[] = [];
      for (let b = 0; b < B; b++) {
        if (!needsSelection[b]) continue;
        for (let h = 0; h < hkv; h++) {
          const i = b * hkv + h;
          let pages: ArrayLike<number> | null = null;
          if (policy === "sync-offload") pages = selection!.subarray(i * K, (i + 1) * K);
          else if (corrected[i]) pages = selection!.subarray(i * K, (i + 1) * K);
          if (pages) this.#loadsToJobs(layer, b, h, state.slots![i].assign(pages), jobs);
        }
      }
      if (selection) stats.pagesSelected += selectedBy.filter(Boolean).length * hkv * K;
      if (jobs.length) {
        const w0 = performance.now();
        const done = await this.#recall(jobs);
        stats.recallWaitMs += performance.now() - w0;
        stats.pagesRecalled += done.pages;
        stats.bytesRecalled += done.bytes;
      }
    } else if (mode === "quest" && selection) {
      stats.pagesSelected += selectedBy.filter(Boolean).length * hkv * K;
    }

    // Attention over sink + selected + window.
    const out = inputs.out ?? this.#scratchBuffer("out", sizes.q * 4);
    const attEncoder = device.createCommandEncoder({ label: `freekv attention layer ${layer}` });
    stats.pagesAttended = this.#encodeAttention(attEncoder, layer, q, out, regions, selection);
    if (state.qPrev) attEncoder.copyBufferToBuffer(q, 0, state.qPrev, 0, sizes.q * 4);
    // freekv: launch next step's selection with this q (reused when it just ran).
    let specRead: ReturnType<ReadbackRing["record"]> | null = null;
    if (policy === "freekv" && needsSelection.some(Boolean) && !selection) {
      specRead = this.#encodeSelection(attEncoder, state, q, regions);
    }
    device.queue.submit([attEncoder.finish()]);
    this.#releaseTransient();
    if (this.profile) {
      // GPU timestamps when the device has them; else wall clock, which
      // includes Deno's ~11 ms wait granularity.
      const read = this.#timestampRead;
      this.#timestampRead = null;
      const w0 = performance.now();
      if (read) {
        const [begin, end] = new BigInt64Array(await read.start());
        stats.attentionMs = Number(end - begin) / 1e6;
      } else {
        await device.queue.onSubmittedWorkDone();
        stats.attentionMs = performance.now() - w0;
      }
    }
    if (policy === "freekv") {
      state.hasPrev = true;
      if (specRead || selection) {
        const known = selection;
        const pending = specRead ? specRead.start().then((x) => new Uint32Array(x)) : null;
        state.speculativeDone = this.#launchSpeculative(layer, needsSelection, known, pending);
      }
    }
    stats.totalMs = performance.now() - t0;
    this.#lastStats = stats;
    if (inputs.out) return undefined;
    return new Float32Array(await readBuffer(device, out, sizes.q * 4));
  }

  #lastStats: StepStats | null = null;
  #timestamps?: { querySet: GPUQuerySet; resolve: GPUBuffer };
  #timestampRead: ReturnType<ReadbackRing["record"]> | null = null;

  /** Wait for the GPU after attention to time it (see {@linkcode EngineOptions.profile}). */
  profile = false;

  /** Statistics of the latest step (of any layer). */
  lastStepStats(): StepStats | null {
    return this.#lastStats;
  }

  async #launchSpeculative(
    layer: number,
    needsSelection: boolean[],
    known: Uint32Array | null,
    pending: Promise<Uint32Array> | null,
  ): Promise<void> {
    const state = this.#layers[layer];
    const { numKvHeads: hkv } = this.options;
    const K = this.budget.selectPages;
    const sel = known ?? await pending!;
    const jobs: RecallJob[] = [];
    for (let b = 0; b < needsSelection.length; b++) {
      if (!needsSelection[b]) {
        state.speculative[b] = null;
        continue;
      }
      const perHead: number[][] = [];
      for (let h = 0; h < hkv; h++) {
        const i = b * hkv + h;
        const pages = [...sel.subarray(i * K, (i + 1) * K)];
        perHead.push(pages);
        this.#loadsToJobs(layer, b, h, state.slots![i].assign(pages), jobs);
      }
      state.speculative[b] = perHead;
    }
    if (jobs.length) await this.#recall(jobs);
  }

  #loadsToJobs(layer: number, b: number, h: number, loads: SlotLoad[], jobs: RecallJob[]): void {
    const state = this.#layers[layer];
    for (const { page, slot } of loads) {
      jobs.push({
        layer,
        head: h,
        page: b * this.maxPages + page,
        slot: b * state.slotsPerSeq + this.#selectSlot(slot),
      });
    }
  }

  async #recall(jobs: RecallJob[]): Promise<{ pages: number; bytes: number }> {
    // A page's backup may still be on its way to the host.
    if (jobs.some((j) => !this.#pool!.isOffloaded(j))) {
      await this.#offloader!.drain();
    }
    const handle = this.#recaller!.recall(jobs);
    // Once its copies are submitted, queue order puts later work after it.
    await handle.submitted;
    this.#totals.pagesRecalled += handle.pages;
    this.#totals.bytesRecalled += handle.bytes;
    return { pages: handle.pages, bytes: handle.bytes };
  }

  #encodeAppend(encoder: GPUCommandEncoder, layer: number, k: GPUBuffer, v: GPUBuffer): void {
    const o = this.options;
    const state = this.#layers[layer];
    const P = o.pageSize;
    const row = o.numKvHeads * o.headDim;
    const slotBytes = P * row * bytesPerElement(o.dtype);
    const { sinkPages: S, windowPages: W, selectPages: K } = this.budget;
    const dst = new Uint32Array(o.batch);
    const fills: { b: number; p: number }[] = [];
    for (let b = 0; b < o.batch; b++) {
      const len = state.length[b];
      const p = Math.floor(len / P);
      const base = b * state.slotsPerSeq;
      if (len % P === 0 && state.mode === "offload" && p - W >= S) {
        // Page p - W leaves the window; while candidates fit the selection
        // slots it stays resident (copied before its ring slot is reused).
        const leaving = p - W;
        const candidates = leaving - S + 1;
        if (candidates <= K) {
          const from = (base + this.#homeSlot("offload", leaving)) * slotBytes;
          const to = (base + this.#selectSlot(candidates - 1)) * slotBytes;
          // A buffer cannot be both source and destination of one copy: bounce.
          const bounce = this.#scratchBuffer("promote", 2 * slotBytes);
          encoder.copyBufferToBuffer(state.kCache, from, bounce, 0, slotBytes);
          encoder.copyBufferToBuffer(state.vCache, from, bounce, slotBytes, slotBytes);
          encoder.copyBufferToBuffer(bounce, 0, state.kCache, to, slotBytes);
          encoder.copyBufferToBuffer(bounce, slotBytes, state.vCache, to, slotBytes);
          for (let h = 0; h < o.numKvHeads; h++) {
            state.slots![b * o.numKvHeads + h].pages[candidates - 1] = leaving;
          }
        }
      }
      dst[b] = ((base + this.#homeSlot(state.mode, p)) * P + (len % P)) * row;
      state.length[b] = len + 1;
      if ((len + 1) % P === 0 && p >= S) fills.push({ b, p });
    }
    this.#encodeRows(encoder, k, v, state.kCache, state.vCache, dst);
    if (fills.length && (state.mode === "quest" || state.mode === "offload")) {
      const jobs = fills.map(({ b, p }) => ({
        srcSlot: b * state.slotsPerSeq + this.#homeSlot(state.mode, p),
        dstPage: b * this.maxPages + p,
        numTokens: P,
      }));
      this.#summarizer!.plan(jobs);
      this.#summarizer!.encode(encoder, { kCache: state.kCache, summaries: state.summaries! });
      if (state.mode === "offload") {
        this.#offloader!.encode(encoder, {
          layer,
          kCache: state.kCache,
          vCache: state.vCache,
          jobs: jobs.map((j) => ({ slot: j.srcSlot, page: j.dstPage })),
        });
        this.#totals.pagesOffloaded += jobs.length * o.numKvHeads;
      }
    }
  }

  #encodeSelection(
    encoder: GPUCommandEncoder,
    state: LayerState,
    q: GPUBuffer,
    regions: ReturnType<typeof pageRegions>[],
  ): ReturnType<ReadbackRing["record"]> {
    const o = this.options;
    const K = this.budget.selectPages;
    const B = o.batch;
    const out = this.#scratchBuffer("selection", B * o.numKvHeads * K * 4);
    this.#selector!.plan({
      pageOffset: Uint32Array.from({ length: B }, (_, b) => b * this.maxPages),
      // Sequences whose candidates all fit get a dummy range; their result is ignored.
      candidateStart: Uint32Array.from(regions, (r) => r.candidateCount > K ? r.sinkCount : 0),
      candidateEnd: Uint32Array.from(regions, (r) => r.candidateCount > K ? r.windowStart : K),
      k: K,
    });
    this.#selector!.encode(encoder, { q, summaries: state.summaries!, selected: out });
    return this.#ring.record(encoder, out, 0, B * o.numKvHeads * K * 4);
  }

  #encodeSimilarity(
    encoder: GPUCommandEncoder,
    state: LayerState,
    q: GPUBuffer,
  ): ReturnType<ReadbackRing["record"]> {
    const o = this.options;
    const bytes = o.batch * o.numKvHeads * 4;
    const flags = this.#scratchBuffer("flags", bytes);
    this.#similarity!.encode(encoder, {
      batch: o.batch,
      qNow: q,
      qPrev: state.qPrev!,
      cosine: this.#scratchBuffer("cosine", o.batch * o.numQueryHeads * 4),
      groupMean: this.#scratchBuffer("group mean", bytes),
      flags,
      tau: o.tau,
    });
    return this.#ring.record(encoder, flags, 0, bytes);
  }

  /** Builds this step's page tables and records attention; returns pages attended. */
  #encodeAttention(
    encoder: GPUCommandEncoder,
    layer: number,
    q: GPUBuffer,
    out: GPUBuffer,
    regions: ReturnType<typeof pageRegions>[],
    selection: Uint32Array | null,
  ): number {
    const o = this.options;
    const state = this.#layers[layer];
    const { batch: B, numKvHeads: hkv } = o;
    const K = this.budget.selectPages;
    const mode = state.mode;
    const maxPages = mode === "full" ? this.maxPages : this.#slotsPerSeq(mode);
    const table = new Uint32Array(B * hkv * maxPages);
    const numPages = new Uint32Array(B);
    const lastPageLen = new Uint32Array(B);
    let attended = 0;
    for (let b = 0; b < B; b++) {
      const r = regions[b];
      const base = b * state.slotsPerSeq;
      lastPageLen[b] = r.lastPageLen;
      for (let h = 0; h < hkv; h++) {
        const i = b * hkv + h;
        const pages: number[] = [];
        const slots: number[] = [];
        const add = (page: number, slot: number) => {
          pages.push(page);
          slots.push(base + slot);
        };
        for (let p = 0; p < r.sinkCount; p++) add(p, this.#homeSlot(mode, p));
        if (mode === "full") {
          for (let p = r.sinkCount; p < r.windowStart; p++) add(p, p);
        } else if (mode === "quest") {
          if (r.candidateCount <= K) {
            for (let p = r.sinkCount; p < r.windowStart; p++) add(p, p);
          } else {
            for (const p of selection!.subarray(i * K, (i + 1) * K)) add(p, p);
          }
        } else if (mode === "offload") {
          const resident = state.slots![i].pages;
          for (let s = 0; s < resident.length; s++) {
            if (resident[s] >= 0) add(resident[s], this.#selectSlot(s));
          }
        }
        for (let p = r.windowStart; p < r.numPages; p++) add(p, this.#homeSlot(mode, p));
        if (h === 0) numPages[b] = pages.length;
        else if (pages.length !== numPages[b]) {
          throw new Error(
            `freekv internal error: heads of sequence ${b} attend different page counts`,
          );
        }
        table.set(slots, i * maxPages);
        state.attended[i] = pages;
        attended += pages.length;
      }
    }
    const tables = {
      batch: B,
      pageTable: table,
      numPages,
      lastPageLen,
      maxPages,
      numSlots: B * state.slotsPerSeq,
    };
    if (!state.plan) state.plan = this.#attention.plan(tables);
    else state.plan.update(tables);
    const timed = this.profile && this.device.features.has("timestamp-query");
    if (timed && !this.#timestamps) {
      this.#timestamps = {
        querySet: this.device.createQuerySet({
          label: "freekv engine attention timestamps",
          type: "timestamp",
          count: 2,
        }),
        resolve: createBuffer(
          this.device,
          "freekv engine timestamp resolve",
          GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
          16,
        ),
      };
    }
    const ts = timed ? this.#timestamps! : undefined;
    state.plan.encode(
      encoder,
      { q, kCache: state.kCache, vCache: state.vCache, out },
      ts ? { timestampWrites: { querySet: ts.querySet, beginIndex: 0, endIndex: 1 } } : undefined,
    );
    if (ts) {
      encoder.resolveQuerySet(ts.querySet, 0, 2, ts.resolve, 0);
      this.#timestampRead = this.#ring.record(encoder, ts.resolve, 0, 16);
    }
    return attended;
  }

  /**
   * Forgets sequence `seq` on every layer (its pages, selection and host
   * backups) so that it can be prefilled with a new prompt. Call it between
   * tokens (before the step of layer 0); it waits for background work first.
   */
  async reset(seq: number): Promise<void> {
    const action = "reset a sequence";
    this.#checkAlive(action);
    assertInteger("seq", seq, action, 0, this.options.batch - 1);
    if (this.#nextLayer !== 0) {
      throw new RangeError(
        `Cannot ${action} as the next step must be of layer 0 (between tokens): received a reset before layer ${this.#nextLayer}`,
      );
    }
    await this.drain();
    const hkv = this.options.numKvHeads;
    for (const state of this.#layers) {
      state.length[seq] = 0;
      state.prefilled[seq] = false;
      state.speculative[seq] = null;
      state.lastCorrections.fill(0, seq * hkv, (seq + 1) * hkv);
      for (let h = 0; h < hkv; h++) state.slots?.[seq * hkv + h].pages.fill(-1);
    }
    this.#pool?.releasePages(seq * this.maxPages, this.maxPages);
  }

  /** Waits for all background work (speculative recalls, offloads). */
  async drain(): Promise<void> {
    await Promise.all(this.#layers.map((l) => l.speculativeDone));
    await this.#offloader?.drain();
    await this.device.queue.onSubmittedWorkDone();
  }

  /** Frees every GPU buffer and the host pool. */
  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const l of this.#layers) {
      l.kCache.destroy();
      l.vCache.destroy();
      l.summaries?.destroy();
      l.qPrev?.destroy();
      l.plan?.[Symbol.dispose]();
    }
    for (const b of this.#scratch.values()) b.destroy();
    for (const b of this.#appendParams) b.destroy();
    this.#timestamps?.querySet.destroy();
    this.#timestamps?.resolve.destroy();
    this.#scratch.clear();
    this.#ring[Symbol.dispose]();
    this.#recaller?.[Symbol.dispose]();
    this.#offloader?.[Symbol.dispose]();
    this.#pool?.[Symbol.dispose]();
    this.#selector?.[Symbol.dispose]?.();
    this.#summarizer?.[Symbol.dispose]?.();
    this.#similarity?.[Symbol.dispose]?.();
    this.#attention[Symbol.dispose]();
  }
}

const usageAll = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

function layerMode(o: Required<EngineOptions>, layer: number): LayerMode {
  if (layer === 0 && o.fullFirstLayer) return "full";
  switch (o.policy) {
    case "full":
      return "full";
    case "streaming":
      return "streaming";
    case "quest":
      return "quest";
    default:
      return "offload";
  }
}

function resolveOptions(options: EngineOptions): Required<EngineOptions> {
  const a = ACTION_CREATE;
  if (options == null || typeof options !== "object") {
    throw new TypeError(`Cannot ${a} as 'options' must be an object: received ${options}`);
  }
  const o: Required<EngineOptions> = {
    batch: 1,
    pageSize: 32,
    dtype: "f32",
    policy: "freekv",
    budget: 2048,
    sink: 512,
    window: 512,
    tau: 0.9,
    pooling: "softmax-mean",
    summary: "minmax",
    hostLayout: "hnd",
    fullFirstLayer: false,
    recallBuffering: "double",
    recallStaging: "write-buffer",
    fuseCorrection: true,
    profile: false,
    ...options,
  };
  assertInteger("numLayers", o.numLayers, a, 1);
  assertInteger("numQueryHeads", o.numQueryHeads, a, 1);
  assertInteger("numKvHeads", o.numKvHeads, a, 1);
  assertInteger("headDim", o.headDim, a, 1);
  assertInteger("maxContext", o.maxContext, a, 1);
  assertInteger("batch", o.batch, a, 1);
  assertInteger("pageSize", o.pageSize, a, 1);
  assertInteger("budget", o.budget, a, 1);
  assertInteger("sink", o.sink, a, 0);
  assertInteger("window", o.window, a, 1);
  assertFinite("tau", o.tau, a);
  assertOneOf("policy", o.policy, POLICIES, a);
  assertOneOf("dtype", o.dtype, ["f32", "f16"] as const, a);
  assertOneOf("pooling", o.pooling, ["softmax-mean", "mean", "max"] as const, a);
  assertOneOf("summary", o.summary, ["minmax", "box"] as const, a);
  assertOneOf("hostLayout", o.hostLayout, ["hnd", "nhd"] as const, a);
  assertOneOf("recallBuffering", o.recallBuffering, ["double", "single"] as const, a);
  assertOneOf("recallStaging", o.recallStaging, ["write-buffer", "mapped"] as const, a);
  if (o.numQueryHeads % o.numKvHeads !== 0) {
    throw new RangeError(
      `Cannot ${a} as 'numQueryHeads' must be a multiple of 'numKvHeads' (${o.numKvHeads}): received ${o.numQueryHeads}`,
    );
  }
  for (const name of ["budget", "sink", "window"] as const) {
    if (o[name] % o.pageSize !== 0) {
      throw new RangeError(
        `Cannot ${a} as '${name}' must be a multiple of 'pageSize' (${o.pageSize}): received ${
          o[name]
        }`,
      );
    }
  }
  if (o.budget < o.sink + o.window + o.pageSize) {
    throw new RangeError(
      `Cannot ${a} as 'budget' must be at least sink + window + one page (${
        o.sink + o.window + o.pageSize
      }): received ${o.budget}`,
    );
  }
  return o;
}
