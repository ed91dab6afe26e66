/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/// <reference lib="esnext" />
/**
 * The second thread of `gather_threads.ts`: gathers the pieces of each chunk
 * into a slot of a shared ring while the main thread writes the chunk before.
 * Signals go through `Atomics` on a shared control array (layout in
 * `gather_threads.ts`), so no message is posted per chunk.
 *
 * @module
 */
import { gatherPieces } from "./gather_pieces.ts";

/** What the main thread posts once. */
interface Setup {
  sharedPool: SharedArrayBuffer;
  ownPool: ArrayBuffer;
  ring: SharedArrayBuffer[];
  control: SharedArrayBuffer;
  jobs: SharedArrayBuffer;
}

self.onmessage = (event: MessageEvent<Setup>) => {
  const setup = event.data;
  const pools = [new Uint8Array(setup.sharedPool), new Uint8Array(setup.ownPool)];
  const ring = setup.ring.map((b) => new Uint8Array(b));
  const control = new Int32Array(setup.control);
  const jobs = new Int32Array(setup.jobs);
  let seen = 0;
  for (;;) {
    Atomics.wait(control, 0, seen);
    seen = Atomics.load(control, 0);
    if (seen < 0) break;
    const [chunks, perChunk, pieceBytes, poolIndex] = control.subarray(1, 5);
    const pool = pools[poolIndex];
    for (let c = 0; c < chunks; c++) {
      const slot = c % ring.length;
      while (Atomics.load(control, 8 + slot) !== 0) Atomics.wait(control, 8 + slot, 1);
      gatherPieces(ring[slot], pool, jobs, c * perChunk, perChunk, pieceBytes);
      Atomics.store(control, 8 + slot, 1);
      Atomics.notify(control, 8 + slot);
    }
  }
  self.close();
};
