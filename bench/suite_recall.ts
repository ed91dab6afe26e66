// Recall benchmark: the same pages (8 KV heads, head_dim 128, page size 32,
// 32 random pages per head per layer, 4 layers: 32 MiB in f32) recalled from
// host memory into NHD slots by each method, in one run. Run through
// scripts/bench.ts --suite recall [--quick] [--json].
import { requestGpu } from "../lib/gpu/device.ts";
import type { KvDtype } from "../lib/gpu/dtype.ts";
import { createBuffer, readBuffer } from "../lib/gpu/buffers.ts";
import { median } from "../lib/gpu/timing.ts";
import { HostPagePool, type HostPoolLayout } from "../lib/memory/host_pool.ts";
import { createHndToNhd, type NhdCacheBuffers } from "../lib/kernels/layout.ts";
import { createRandom } from "../lib/workloads/random.ts";
import { createRecaller, type RecallerOptions, type RecallJob } from "../lib/memory/recall.ts";
import { type SlotLayout, slotOffset } from "../lib/kernels/slot_layout.ts";

/** One row of the recall table. */
export interface RecallRow {
  /**
   * `big-write`, `big-write+scatter`, `hnd-double`, `hnd-double-mapped`,
   * `hnd-single`, `hnd-slots-direct`, `hnd-slots-staged`,
   * `hnd-slots-staged-mapped` (HND GPU slots), `nhd-fragmented`.
   */
  method: string;
  dtype: KvDtype;
  bytes: number;
  pages: number;
  reps: number;
  median_ms: number;
  min_ms: number;
  max_ms: number;
  gbps: number;
  /** Bandwidth relative to `big-write` of the same dtype. */
  vs_big_write: number;
  /** Host-to-GPU copies per recall (writeBuffer calls or coalesced staging copies). */
  copies: number;
  chunks: number;
  /** Median per-recall time the pipeline waited for a staging buffer. */
  wait_ms: number;
  /** Median per-recall JavaScript copy time. */
  copy_ms: number;
  /** Recaller options of the row (empty: defaults). */
  options: string;
}

/** The engine's recall path's share of the big write, from rotating blocks of runs. */
export interface PairedShare {
  dtype: KvDtype;
  /**
   * The engine's default path, or `one-buffer-slots-direct`: what the same
   * runs would cost with GPU slots laid out `[slot][head][K|V]` in one buffer
   * per layer, where a host run is contiguous and goes straight in with one
   * `writeBuffer` (with this suite's jobs, which go head by head, no two runs
   * are adjacent on both sides, so both placements are one write per run).
   * No kernel binds that layout (they take K and V as two buffers); it is
   * timed to show what it would buy.
   */
  method: string;
  /**
   * `adjacent`: the suite's jobs, every slot of a layer refilled (runs for
   * neighbouring places coalesce); `scattered`: the same runs into twice
   * as many slots, run i of a head in slot 2i + head % 2, where few runs
   * have a neighbour (as in a decode step's recall).
   */
  placement: "adjacent" | "scattered";
  /** Recaller options added to the method's (the engine's). */
  options: string;
  /** Rounds of the rotation. */
  rounds: number;
  /** Timed runs of each method per round (its median is the round's figure). */
  runs_per_round: number;
  /** Median over the rounds of the big write's ms, timed until the GPU finished it. */
  big_write_median_ms: number;
  /** The same for the method. */
  method_median_ms: number;
  /** Median over the rounds of big-write ms / method ms. */
  share_of_big_write: number;
  /** The same contiguous bytes in `writeBuffer`s of 1 MiB each. */
  writes_1mib_median_ms: number;
  /** The same in `writeBuffer`s of 4 MiB each. */
  writes_4mib_median_ms: number;
  /**
   * Median over the rounds of the fastest of the three writes. One big
   * write is no upper bound everywhere: on this project's machine a 32 MiB
   * `writeBuffer` takes about three times as long as the same bytes in
   * 1 MiB writes (its staging memory is fresh each time).
   */
  best_write_median_ms: number;
  /** Median over the rounds of the fastest write's ms / method ms: the target's figure. */
  share_of_best_write: number;
}

// Timed runs per method per round of the rotation (after one untimed).
const BLOCK = 4;
const SHAPE = { layers: 4, kvHeads: 8, headDim: 128, pageSize: 32, pagesPerHead: 32 };
// Pages each (layer, head) holds in the pool; a recall takes a random half.
const POOL_PAGES = 64;

function log(message: string): void {
  console.error(`bench recall: ${message}`);
}

interface Timed {
  ms: number;
  copies?: number;
  chunks?: number;
  waitMs?: number;
  copyMs?: number;
}

async function measure(
  reps: number,
  warmup: number,
  run: () => Promise<Omit<Timed, "ms"> | void>,
): Promise<Timed[]> {
  for (let i = 0; i < warmup; i++) await run();
  const out: Timed[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const extra = await run();
    out.push({ ms: performance.now() - t0, ...(extra ?? {}) });
  }
  return out;
}

function fillPool(layout: HostPoolLayout, dtype: KvDtype): HostPagePool {
  const pool = new HostPagePool({
    layers: SHAPE.layers,
    kvHeads: SHAPE.kvHeads,
    headDim: SHAPE.headDim,
    pageSize: SHAPE.pageSize,
    dtype,
    layout,
    chunkPages: POOL_PAGES,
  });
  const rng = createRandom(1);
  const run = dtype === "f16"
    ? new Float16Array(pool.runElements)
    : new Float32Array(pool.runElements);
  for (let layer = 0; layer < SHAPE.layers; layer++) {
    for (let head = 0; head < SHAPE.kvHeads; head++) {
      for (let page = 0; page < POOL_PAGES; page++) {
        for (let i = 0; i < run.length; i++) run[i] = rng.normal();
        pool.writeRun({ layer, head, page }, run);
      }
    }
  }
  return pool;
}

// Checks a few recalled runs against the pool, so that a fast no-op shows.
async function verify(
  device: GPUDevice,
  pool: HostPagePool,
  caches: NhdCacheBuffers[],
  jobs: RecallJob[],
  slotLayout: SlotLayout = "nhd",
): Promise<void> {
  const { pageSize: P, kvHeads: H, headDim: d } = SHAPE;
  const e = pool.dtype === "f16" ? 2 : 4;
  for (const job of [jobs[0], jobs[jobs.length >> 1], jobs[jobs.length - 1]]) {
    const run = pool.readRun(job);
    const want8 = new Uint8Array(run.buffer, run.byteOffset, run.byteLength);
    const k = new Uint8Array(await readBuffer(device, caches[job.layer].kCache));
    for (let t = 0; t < P; t++) {
      const at =
        slotOffset(slotLayout, { pageSize: P, kvHeads: H, headDim: d }, job.slot, t, job.head) *
        e;
      const got = k.subarray(at, at + d * e);
      const exp = want8.subarray(t * d * e, (t + 1) * d * e);
      if (got.some((b, i) => b !== exp[i])) {
        throw new Error(`recall benchmark: wrong data in layer ${job.layer} slot ${job.slot}`);
      }
    }
  }
}

/** Checks every run written to a one-buffer layout (byte `at(job)`) against the pool. */
async function verifyOneBuffer(
  device: GPUDevice,
  pool: HostPagePool,
  buffer: GPUBuffer,
  at: (job: RecallJob) => number,
  jobs: RecallJob[],
): Promise<void> {
  const all = new Uint8Array(await readBuffer(device, buffer));
  for (const job of jobs) {
    const run = pool.readRun(job);
    const want = new Uint8Array(run.buffer, run.byteOffset, run.byteLength);
    const from = at(job);
    for (let i = 0; i < want.length; i++) {
      if (all[from + i] !== want[i]) {
        throw new Error(
          `recall benchmark: wrong one-buffer data in layer ${job.layer} slot ${job.slot}`,
        );
      }
    }
  }
}

/** The row of the engine's default recall (`slotLayout` hnd, `hndPath` staged). */
const DEFAULT_PATH = "hnd-slots-staged";
/** The paired method timing GPU slots `[slot][head][K|V]` in one buffer (not built). */
const ONE_BUFFER = "one-buffer-slots-direct";
/** What the engine adds to that row's recaller options (lib/engine/offload_memory.ts). */
const ENGINE_RECALL = { chunk: "bytes", deferSubmit: true } as const;

/** Runs the suite; prints a table unless `json`. */
export async function runSuite(
  { quick, json }: { quick: boolean; json: boolean },
): Promise<object> {
  using gpu = await requestGpu();
  const { device } = gpu;
  const dtypes: KvDtype[] = quick ? ["f32"] : ["f32", "f16"];
  const reps = quick ? 5 : 11;
  // Rounds of the engine's recall against the big write (see below).
  const rounds = quick ? 3 : 9;
  const warmup = 2;
  const { layers: L, kvHeads: H, headDim: d, pageSize: P, pagesPerHead } = SHAPE;
  log(`${gpu.description}; ${L} layers x ${H} KV heads x ${pagesPerHead} pages, d=${d}, P=${P}`);
  const rows: RecallRow[] = [];
  const paired: PairedShare[] = [];
  for (const dtype of dtypes) {
    const e = dtype === "f16" ? 2 : 4;
    const slotBytes = P * H * d * e;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    // K and V caches of every layer, `slots` slots each.
    const cachesOf = (slots: number): NhdCacheBuffers[] =>
      Array.from({ length: L }, (_, l) => ({
        kCache: device.createBuffer({ label: `bench k${l}`, size: slots * slotBytes, usage }),
        vCache: device.createBuffer({ label: `bench v${l}`, size: slots * slotBytes, usage }),
      }));
    const caches = cachesOf(pagesPerHead);
    const rng = createRandom(7);
    const jobs: RecallJob[] = [];
    for (let layer = 0; layer < L; layer++) {
      for (let head = 0; head < H; head++) {
        const pages = [...Array(POOL_PAGES).keys()];
        for (let i = pages.length - 1; i > 0; i--) {
          const j = rng.int(i + 1);
          [pages[i], pages[j]] = [pages[j], pages[i]];
        }
        for (let slot = 0; slot < pagesPerHead; slot++) {
          jobs.push({ layer, head, page: pages[slot], slot });
        }
      }
    }
    const runBytes = 2 * P * d * e;
    const bytes = jobs.length * runBytes;
    log(`${dtype}: filling the pools (${(2 * L * H * POOL_PAGES * runBytes) >> 20} MiB)`);
    using hnd = fillPool("hnd", dtype);
    using nhd = fillPool("nhd", dtype);
    const results = new Map<string, Timed[]>();
    const rowOptions = new Map<string, string>();

    // (a) One big writeBuffer of the same bytes: the upper bound.
    log(`${dtype}: big-write`);
    const big = new Uint8Array(bytes);
    for (let i = 0; i < big.length; i += 4096) big[i] = i & 255;
    const target = createBuffer(device, "bench big-write target", usage, bytes);
    const bigWrite = async () => {
      device.queue.writeBuffer(target, 0, big);
      device.queue.submit([]);
      await device.queue.onSubmittedWorkDone();
    };
    results.set("big-write", await measure(reps, warmup, bigWrite));
    // The floor of any HND recall here: the same big write plus the scatter.
    log(`${dtype}: big-write+scatter`);
    using scatter = createHndToNhd(device, {
      pageSize: P,
      kvHeads: H,
      headDim: d,
      dtype,
      label: "bench scatter",
    });
    const perLayer = jobs.length / L;
    const scatterPlans = Array.from({ length: L }, (_, l) => {
      const layerJobs = jobs.slice(l * perLayer, (l + 1) * perLayer);
      return {
        plan: scatter.plan(
          layerJobs.map((j, i) => ({ run: l * perLayer + i, slot: j.slot, head: j.head })),
        ),
        buffers: { ...caches[l], runs: target },
      };
    });
    results.set(
      "big-write+scatter",
      await measure(reps, warmup, async () => {
        device.queue.writeBuffer(target, 0, big);
        const encoder = device.createCommandEncoder({ label: "bench scatter" });
        for (const { plan, buffers } of scatterPlans) plan.encode(encoder, buffers);
        device.queue.submit([encoder.finish()]);
        await device.queue.onSubmittedWorkDone();
      }),
    );
    for (const { plan } of scatterPlans) plan[Symbol.dispose]();

    // (b), (c) and the mapped-staging variant of (b).
    const variants: Array<[string, Partial<RecallerOptions>]> = [
      ["hnd-double", {}],
      // Mapped staging waits ~10 ms (Deno's map latency) per chunk beyond
      // the second, so it gets its best chunking: two 16 MiB chunks.
      ["hnd-double-mapped", { staging: "mapped", chunk: "bytes", maxChunkBytes: 16 << 20 }],
      ["hnd-single", { buffering: "single" }],
      // HND GPU slots: no scatter pass. Direct: two writeBuffer per run from
      // the pool; staged: the same staging as hnd-double, then two
      // copyBufferToBuffer per run.
      ["hnd-slots-direct", { slotLayout: "hnd", hndPath: "direct" }],
      ["hnd-slots-staged", { slotLayout: "hnd", hndPath: "staged" }],
      [
        "hnd-slots-staged-mapped",
        {
          slotLayout: "hnd",
          hndPath: "staged",
          staging: "mapped",
          chunk: "bytes",
          maxChunkBytes: 16 << 20,
        },
      ],
    ];
    for (const [name, options] of variants) {
      log(`${dtype}: ${name}`);
      rowOptions.set(name, JSON.stringify(options));
      using recaller = createRecaller(device, hnd, { caches, ...options });
      await recaller.recall(jobs).done;
      await verify(device, hnd, caches, jobs, options.slotLayout);
      results.set(
        name,
        await measure(reps, warmup, async () => {
          const s = await recaller.recall(jobs).done;
          return { copies: s.copies, chunks: s.chunks, waitMs: s.waitMs, copyMs: s.copyMs };
        }),
      );
    }
    // The engine's recall (its recaller options) and the big write again,
    // in blocks that rotate, so that the machine's drift falls on all alike:
    // into the suite's slots (every slot of a layer refilled, as a bulk
    // recall does), and into slots where few runs have a neighbour (as a
    // decode step's recall into freed slots). Each run is timed until the
    // GPU finished it without a GPU-to-JS answer, whose ~11 ms floor would
    // add the same constant to both sides of a ratio: in Deno 2.9 a submit
    // blocks until the queue's previous submission finished, so two empty
    // submits return once everything before them ran. An untimed answer
    // before each run lets wgpu free the staging memory of the writes
    // before it, as the engine's one answer per step does. Each block's
    // first run, which follows another method's work, is dropped: every
    // method is timed in its own steady state. The same bytes in
    // writes of 1 MiB and 4 MiB are timed too (see `best_write_median_ms`),
    // and the same runs written into a one-buffer layout that no kernel
    // binds (see `PairedShare.method`).
    log(`${dtype}: the engine's recall rotating with big-write`);
    {
      const untilIdle = () => {
        device.queue.submit([]);
        device.queue.submit([]);
      };
      const options = { ...variants.find(([name]) => name === DEFAULT_PATH)![1], ...ENGINE_RECALL };
      // Twice the slots; run i of (layer, head) goes to slot 2i + head % 2,
      // so that only the last head of a slot meets the first of the next.
      const spread = cachesOf(2 * pagesPerHead);
      const scattered = jobs.map((j) => ({ ...j, slot: 2 * j.slot + (j.head % 2) }));
      // The one-buffer layout: a layer's slots, each `[head][K|V]`. One
      // write per run (the suite's jobs go head by head, so no two runs lie
      // next to each other on both sides), found before the timing, which
      // favours it: the engine's recall plans inside its timed runs.
      const oneBufferOf = (slots: number, list: RecallJob[]) => {
        const buffer = createBuffer(
          device,
          "bench one-buffer slots",
          usage,
          L * slots * H * runBytes,
        );
        const at = (j: RecallJob) => ((j.layer * slots + j.slot) * H + j.head) * runBytes;
        const pieces = list.map((job) => ({ at: at(job), ...hnd.location(job) }));
        return {
          buffer,
          write: () => {
            for (const p of pieces) {
              device.queue.writeBuffer(buffer, p.at, p.bytes, p.byteOffset, runBytes);
            }
            untilIdle();
          },
          verify: () => verifyOneBuffer(device, hnd, buffer, at, list),
        };
      };
      const oneBuffer = {
        adjacent: oneBufferOf(pagesPerHead, jobs),
        scattered: oneBufferOf(2 * pagesPerHead, scattered),
      };
      using adjacentRecaller = createRecaller(device, hnd, { caches, ...options });
      using scatteredRecaller = createRecaller(device, hnd, { caches: spread, ...options });
      const recallOf = (recaller: typeof adjacentRecaller, recallJobs: RecallJob[]) => async () => {
        await recaller.recall(recallJobs).submitted;
        device.queue.submit(recaller.takeCommandBuffers());
        untilIdle();
      };
      const writeInPieces = (piece: number) => {
        for (let at = 0; at < bytes; at += piece) {
          device.queue.writeBuffer(target, at, big, at, Math.min(piece, bytes - at));
        }
        untilIdle();
      };
      const runs = {
        big: () => {
          device.queue.writeBuffer(target, 0, big);
          untilIdle();
        },
        // The same contiguous bytes in writes of 1 MiB and of 4 MiB.
        writes1: () => writeInPieces(1 << 20),
        writes4: () => writeInPieces(4 << 20),
        adjacent: recallOf(adjacentRecaller, jobs),
        scattered: recallOf(scatteredRecaller, scattered),
        oneBufferAdjacent: oneBuffer.adjacent.write,
        oneBufferScattered: oneBuffer.scattered.write,
      };
      const names = Object.keys(runs) as Array<keyof typeof runs>;
      // Per round, each method's median over its block.
      const ms: Record<keyof typeof runs, number[]> = {
        big: [],
        writes1: [],
        writes4: [],
        adjacent: [],
        scattered: [],
        oneBufferAdjacent: [],
        oneBufferScattered: [],
      };
      for (let round = 0; round < rounds; round++) {
        for (let k = 0; k < names.length; k++) {
          const name = names[(round + k) % names.length];
          const block: number[] = [];
          for (let i = 0; i <= BLOCK; i++) {
            await device.queue.onSubmittedWorkDone();
            const t0 = performance.now();
            await runs[name]();
            if (i > 0) block.push(performance.now() - t0);
          }
          ms[name].push(median(block));
        }
      }
      await verify(device, hnd, caches, jobs, options.slotLayout);
      await verify(device, hnd, spread, scattered, options.slotLayout);
      await oneBuffer.adjacent.verify();
      await oneBuffer.scattered.verify();
      // Per round, the fastest way to write the same contiguous bytes.
      const best = ms.big.map((b, i) => Math.min(b, ms.writes1[i], ms.writes4[i]));
      const methods = [
        {
          method: DEFAULT_PATH,
          options: JSON.stringify(ENGINE_RECALL),
          adjacent: "adjacent",
          scattered: "scattered",
        },
        {
          method: ONE_BUFFER,
          options: "",
          adjacent: "oneBufferAdjacent",
          scattered: "oneBufferScattered",
        },
      ] as const;
      for (const m of methods) {
        for (const placement of ["adjacent", "scattered"] as const) {
          const name = m[placement];
          paired.push({
            dtype,
            method: m.method,
            placement,
            options: m.options,
            rounds,
            runs_per_round: BLOCK,
            big_write_median_ms: round(median(ms.big)),
            method_median_ms: round(median(ms[name])),
            share_of_big_write: round(median(ms.big.map((b, i) => b / ms[name][i]))),
            writes_1mib_median_ms: round(median(ms.writes1)),
            writes_4mib_median_ms: round(median(ms.writes4)),
            best_write_median_ms: round(median(best)),
            share_of_best_write: round(median(best.map((b, i) => b / ms[name][i]))),
          });
        }
      }
      for (const c of spread) {
        c.kCache.destroy();
        c.vCache.destroy();
      }
      oneBuffer.adjacent.buffer.destroy();
      oneBuffer.scattered.buffer.destroy();
    }

    // (d) Token-fragmented recall from the NHD pool.
    log(`${dtype}: nhd-fragmented`);
    {
      using recaller = createRecaller(device, nhd, { caches });
      await recaller.recall(jobs).done;
      await verify(device, nhd, caches, jobs);
      results.set(
        "nhd-fragmented",
        await measure(Math.max(3, reps >> 1), 1, async () => {
          const s = await recaller.recall(jobs).done;
          return { copies: s.copies, chunks: s.chunks, waitMs: s.waitMs, copyMs: s.copyMs };
        }),
      );
    }
    target.destroy();
    for (const c of caches) {
      c.kCache.destroy();
      c.vCache.destroy();
    }

    const bigMs = median(results.get("big-write")!.map((t) => t.ms));
    for (const [method, times] of results) {
      const ms = times.map((t) => t.ms);
      const m = median(ms);
      rows.push({
        method,
        dtype,
        bytes,
        pages: jobs.length,
        reps: times.length,
        median_ms: round(m),
        min_ms: round(Math.min(...ms)),
        max_ms: round(Math.max(...ms)),
        gbps: round(bytes / m / 1e6),
        vs_big_write: round(bigMs / m),
        copies: times[0].copies ?? (method.startsWith("big-write") ? 1 : 0),
        chunks: times[0].chunks ?? 0,
        wait_ms: round(median(times.map((t) => t.waitMs ?? 0))),
        copy_ms: round(median(times.map((t) => t.copyMs ?? 0))),
        options: rowOptions.get(method) ?? "",
      });
    }
  }

  const summary = dtypes.map((dtype) => {
    const get = (m: string) => rows.find((r) => r.dtype === dtype && r.method === m)!;
    const b = get("hnd-double"), dd = get("nhd-fragmented");
    const entry = (placement: string, method = DEFAULT_PATH) =>
      paired.find((p) => p.dtype === dtype && p.placement === placement && p.method === method)!;
    // The target's figure: the share of the fastest contiguous write.
    const strict = entry("adjacent").share_of_best_write;
    return {
      dtype,
      hnd_double_share_of_big_write: b.vs_big_write,
      hnd_double_share_of_big_write_scatter: round(
        get("big-write+scatter").median_ms / b.median_ms,
      ),
      hnd_double_speedup_vs_nhd_fragmented: round(dd.median_ms / b.median_ms),
      hnd_double_speedup_vs_single: round(get("hnd-single").median_ms / b.median_ms),
      hnd_slots_direct_share_of_big_write: get("hnd-slots-direct").vs_big_write,
      hnd_slots_staged_share_of_big_write: get("hnd-slots-staged").vs_big_write,
      hnd_slots_staged_mapped_share_of_big_write: get("hnd-slots-staged-mapped").vs_big_write,
      // The engine's default recall path: HND pool, HND slots, staged copies.
      default_path: DEFAULT_PATH,
      default_path_share_of_big_write: get(DEFAULT_PATH).vs_big_write,
      // The engine's recall against one big write, both timed until the GPU
      // finished them (median of the rounds' ratios; reported, see
      // `best_write_median_ms` for why it is not the target's figure).
      default_path_paired_share_of_big_write: entry("adjacent").share_of_big_write,
      default_path_paired_share_scattered: entry("scattered").share_of_big_write,
      default_path_share_of_best_write: strict,
      default_path_share_of_best_write_scattered: entry("scattered").share_of_best_write,
      // A layout no kernel binds (see `PairedShare.method`), for comparison.
      one_buffer_slots_share_of_best_write: entry("adjacent", ONE_BUFFER).share_of_best_write,
      one_buffer_slots_share_of_best_write_scattered:
        entry("scattered", ONE_BUFFER).share_of_best_write,
      target_85pct_of_big_write: strict >= 0.85,
      target_5x_vs_nhd: dd.median_ms >= 5 * b.median_ms,
    };
  });
  const result = {
    suite: "recall",
    adapter: gpu.description,
    deno: Deno.version.deno,
    quick,
    shape: { ...SHAPE, poolPagesPerHead: POOL_PAGES },
    rows,
    paired,
    summary,
  };
  if (!json) printTable(rows, summary);
  return result;
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

function printTable(rows: RecallRow[], summary: object[]): void {
  const head = [
    "method",
    "dtype",
    "MiB",
    "median ms",
    "min ms",
    "GB/s",
    "vs big",
    "copies",
    "chunks",
  ];
  const body = rows.map((r) => [
    r.method,
    r.dtype,
    (r.bytes / 2 ** 20).toFixed(0),
    r.median_ms.toFixed(1),
    r.min_ms.toFixed(1),
    r.gbps.toFixed(2),
    r.vs_big_write.toFixed(2),
    String(r.copies),
    String(r.chunks),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  console.log(line(head));
  for (const b of body) console.log(line(b));
  for (const s of summary) console.log(JSON.stringify(s));
}
