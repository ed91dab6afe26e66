/**
 * Whether a second thread can hide the recall's gather: scattered host
 * pieces moved into one GPU buffer, against `writeBuffer` of the same bytes
 * lying contiguous. The engine's recall gathers pieces into a chunk and
 * writes the chunk (two host copies where a contiguous write makes one); if
 * a worker gathered chunk i + 1 while the main thread wrote chunk i, the
 * recall could approach the contiguous write.
 *
 * Usage: deno run -A bench/gather_threads.ts [--mib N] [--piece-kib N] [--rounds N] [--submit-each] [--json]
 *
 * @module
 */
import { requestGpu } from "../lib/gpu/device.ts";
import { flagChecks } from "../scripts/_flags.ts";
import { gatherPieces } from "./gather_pieces.ts";

const USAGE =
  `Usage: deno run -A bench/gather_threads.ts [--mib N] [--piece-kib N] [--rounds N] [--submit-each] [--json]

Moves --mib MiB of pieces, picked at random from a host pool twice that size,
into one GPU buffer, and times each method until the GPU finished (two empty
submits return once the writes before them ran):
  contiguous          the same bytes lying contiguous, one writeBuffer per 4 MiB
  one-thread          gather each 4 MiB chunk with TypedArray.set, then write
                      it (the engine's recall)
  worker-shared-pool  a worker gathers chunk i + 1 into a shared ring while the
                      main thread writes chunk i; the pool is a SharedArrayBuffer
  worker-own-pool     the same, the worker reading its own (unshared) copy of
                      the pool, as if the worker owned the host pool
  write-per-piece     one writeBuffer per piece, no gather
Methods take turns within a round (the order rotates); the first round is
untimed. Reports each method's median ms, its share of the contiguous write
(median of the per-round ratios), and for the worker methods the main
thread's median wait for the worker; and, with no GPU work, the one-thread
gather alone (ms, us per piece) against copying the contiguous bytes in
4 MiB pieces, and the JavaScript time of recording one copyBufferToBuffer per
piece (the placement of runs with no neighbour; recorded, never submitted).
Progress goes to stderr.

Options:
  --mib N        bytes moved, in MiB, a multiple of 4 (default 32)
  --piece-kib N  piece size in KiB, dividing 4096 (default 16: one K or V part
                 of a 32-token page of a 128-wide f32 head)
  --rounds N     rounds, the first untimed (default 9)
  --submit-each  submit after each 4 MiB write (and each piece's write in
                 chunks of 4 MiB), which lets wgpu reuse its staging memory
  --json         print one JSON object on stdout
  --help         this text`;

const flags = flagChecks("gather_threads");
const values = flags.parse(Deno.args, {
  mib: { type: "string", default: "32" },
  "piece-kib": { type: "string", default: "16" },
  rounds: { type: "string", default: "9" },
  "submit-each": { type: "boolean", default: false },
  json: { type: "boolean", default: false },
  help: { type: "boolean", default: false },
});
if (values.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const mib = flags.multipleFlag("mib", values.mib, 4)!;
const pieceKib = flags.intFlag("piece-kib", values["piece-kib"], 1)!;
if (4096 % pieceKib !== 0) {
  flags.fail(`--piece-kib must divide 4096: received ${JSON.stringify(values["piece-kib"])}`);
}
const rounds = flags.intFlag("rounds", values.rounds, 2)!;
const submitEach = values["submit-each"];

const METHODS = [
  "contiguous",
  "one-thread",
  "worker-shared-pool",
  "worker-own-pool",
  "write-per-piece",
] as const;
type Method = (typeof METHODS)[number];
const RING_SLOTS = 3;

using gpu = await requestGpu();
const { device } = gpu;
const total = mib << 20, chunkBytes = 4 << 20, pieceBytes = pieceKib << 10;
const pieces = total / pieceBytes, perChunk = chunkBytes / pieceBytes, chunks = total / chunkBytes;

const sharedPool = new Uint8Array(new SharedArrayBuffer(2 * total));
for (let i = 0; i < sharedPool.length; i += 4096) sharedPool[i] = (i >> 12) & 255;
const ownPool = sharedPool.slice(); // unshared
const contiguous = ownPool.slice(0, total);
// Distinct pieces of the pool, in random order (a fixed-seed LCG).
const order = Array.from({ length: 2 * pieces }, (_, i) => i);
let seed = 12345;
for (let i = order.length - 1; i > 0; i--) {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  const j = seed % (i + 1);
  [order[i], order[j]] = [order[j], order[i]];
}
const jobs = new Int32Array(new SharedArrayBuffer(pieces * 4));
for (let i = 0; i < pieces; i++) jobs[i] = order[i] * pieceBytes;

const target = device.createBuffer({
  label: "gather threads target",
  size: total,
  usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.STORAGE,
});
// The source of the placement copies that `placementEncodeOnly` records,
// cleared once so that wgpu has no lazy zeroing to add to those copies.
const staging = device.createBuffer({
  label: "gather threads staging",
  size: total,
  usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
});
{
  const encoder = device.createCommandEncoder({ label: "gather threads staging clear" });
  encoder.clearBuffer(staging);
  device.queue.submit([encoder.finish()]);
}
const gathered = new Uint8Array(chunkBytes);
const ring = Array.from({ length: RING_SLOTS }, () => new SharedArrayBuffer(chunkBytes));
// writeBuffer's type wants an ArrayBuffer; Deno takes shared memory at run time.
const ringViews = ring.map((b) => new Uint8Array(b) as unknown as Uint8Array<ArrayBuffer>);
// control[0]: job number (-1 ends the worker); [1..4]: chunks, pieces per
// chunk, piece bytes, pool (0 shared, 1 own); [8 + s]: ring slot s, 0 free, 1 filled.
const control = new Int32Array(new SharedArrayBuffer(64));
const worker = new Worker(new URL("./gather_threads_worker.ts", import.meta.url), {
  type: "module",
});
worker.postMessage({
  sharedPool: sharedPool.buffer,
  ownPool: ownPool.buffer,
  ring,
  control: control.buffer,
  jobs: jobs.buffer,
});

const finish = () => {
  device.queue.submit([]);
  device.queue.submit([]);
};
let job = 0;
/** Gathers chunk `c`'s pieces into `gathered` (the engine's way). */
function gatherChunk(c: number): void {
  gatherPieces(gathered, ownPool, jobs, c * perChunk, perChunk, pieceBytes);
}
/** The one-thread gather of every chunk, with no GPU work (ms). */
function gatherOnly(): number {
  const t0 = performance.now();
  for (let c = 0; c < chunks; c++) gatherChunk(c);
  return performance.now() - t0;
}
/** The contiguous bytes copied into `gathered` in 4 MiB pieces, no GPU work (ms). */
function copyOnly(): number {
  const t0 = performance.now();
  for (let c = 0; c < chunks; c++) {
    gathered.set(contiguous.subarray(c * chunkBytes, (c + 1) * chunkBytes));
  }
  return performance.now() - t0;
}

/** After each chunk's writes, with `--submit-each`: wgpu may reuse their staging memory. */
function chunkWritten(): void {
  if (submitEach) device.queue.submit([]);
}
/**
 * The JavaScript time of recording one copy per piece from a staging buffer
 * into the target, as the recall places runs with no neighbour (ms; the
 * command buffer is finished, never submitted).
 */
function placementEncodeOnly(): number {
  const t0 = performance.now();
  const encoder = device.createCommandEncoder({ label: "gather threads placement" });
  for (let i = 0; i < pieces; i++) {
    encoder.copyBufferToBuffer(staging, i * pieceBytes, target, jobs[i] % total, pieceBytes);
  }
  encoder.finish();
  return performance.now() - t0;
}

/** Runs `method` once; returns the main thread's wait for the worker (ms). */
function run(method: Method): number {
  let waited = 0;
  if (method === "contiguous") {
    for (let c = 0; c < chunks; c++) {
      device.queue.writeBuffer(target, c * chunkBytes, contiguous, c * chunkBytes, chunkBytes);
      chunkWritten();
    }
  } else if (method === "one-thread") {
    for (let c = 0; c < chunks; c++) {
      gatherChunk(c);
      device.queue.writeBuffer(target, c * chunkBytes, gathered);
      chunkWritten();
    }
  } else if (method === "write-per-piece") {
    for (let i = 0; i < pieces; i++) {
      device.queue.writeBuffer(target, i * pieceBytes, ownPool, jobs[i], pieceBytes);
      if ((i + 1) % perChunk === 0) chunkWritten();
    }
  } else {
    control.set([chunks, perChunk, pieceBytes, method === "worker-own-pool" ? 1 : 0], 1);
    Atomics.store(control, 0, ++job);
    Atomics.notify(control, 0);
    for (let c = 0; c < chunks; c++) {
      const slot = c % RING_SLOTS;
      const t0 = performance.now();
      while (Atomics.load(control, 8 + slot) !== 1) Atomics.wait(control, 8 + slot, 0);
      waited += performance.now() - t0;
      device.queue.writeBuffer(target, c * chunkBytes, ringViews[slot]);
      chunkWritten();
      Atomics.store(control, 8 + slot, 0);
      Atomics.notify(control, 8 + slot);
    }
  }
  finish();
  return waited;
}

const times = Object.fromEntries(METHODS.map((m) => [m, [] as number[]])) as Record<
  Method,
  number[]
>;
const waits: Record<string, number[]> = { "worker-shared-pool": [], "worker-own-pool": [] };
const hostGather: number[] = [], hostCopy: number[] = [], placementEncode: number[] = [];
try {
  for (let round = 0; round < rounds; round++) {
    console.error(`gather_threads: round ${round + 1} of ${rounds}`);
    const ms = {} as Record<Method, number>;
    for (let k = 0; k < METHODS.length; k++) {
      const method = METHODS[(k + round) % METHODS.length];
      await device.queue.onSubmittedWorkDone();
      const t0 = performance.now();
      const waited = run(method);
      ms[method] = performance.now() - t0;
      if (round > 0 && method in waits) waits[method].push(waited);
    }
    const gatherMs = gatherOnly(), copyMs = copyOnly(), encodeMs = placementEncodeOnly();
    if (round === 0) continue;
    hostGather.push(gatherMs);
    hostCopy.push(copyMs);
    placementEncode.push(encodeMs);
    for (const m of METHODS) times[m].push(ms[m]);
  }
} finally {
  Atomics.store(control, 0, -1);
  Atomics.notify(control, 0);
  worker.terminate();
  target.destroy();
  staging.destroy();
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const round2 = (x: number) => Math.round(x * 100) / 100;
const rows = METHODS.map((method) => ({
  method,
  median_ms: round2(median(times[method])),
  // Paired round by round: the contiguous write and the method of one round.
  share_of_contiguous: round2(median(times[method].map((t, i) => times.contiguous[i] / t))),
  main_wait_ms: method in waits ? round2(median(waits[method])) : null,
}));
const host = {
  gather_ms: round2(median(hostGather)),
  gather_us_per_piece: round2(median(hostGather) * 1000 / pieces),
  contiguous_copy_ms: round2(median(hostCopy)),
  placement_encode_ms: round2(median(placementEncode)),
  placement_encode_us_per_copy: round2(median(placementEncode) * 1000 / pieces),
};
if (values.json) {
  console.log(JSON.stringify(
    {
      adapter: gpu.description,
      bytes: total,
      piece_bytes: pieceBytes,
      rounds,
      submit_each: submitEach,
      rows,
      host,
    },
    null,
    2,
  ));
} else {
  console.log(
    `${gpu.description}: ${mib} MiB in ${pieceKib} KiB pieces, median of ${rounds - 1} rounds` +
      (submitEach ? ", a submit after each 4 MiB" : ""),
  );
  for (const r of rows) {
    const wait = r.main_wait_ms === null ? "" : `, main thread waited ${r.main_wait_ms} ms`;
    console.log(
      `  ${r.method.padEnd(19)} ${r.median_ms.toFixed(2).padStart(7)} ms  ` +
        `${r.share_of_contiguous.toFixed(2)} of contiguous${wait}`,
    );
  }
  console.log(
    `  host only: gather ${host.gather_ms} ms (${host.gather_us_per_piece} us a piece), ` +
      `the contiguous bytes in 4 MiB copies ${host.contiguous_copy_ms} ms`,
  );
  console.log(
    `  recording one copy per piece: ${host.placement_encode_ms} ms ` +
      `(${host.placement_encode_us_per_copy} us a copy)`,
  );
}
