/**
 * The gather that `gather_threads.ts` times on either thread: pieces of a
 * pool, at the byte offsets that `jobs` lists, copied side by side into one
 * chunk, one `TypedArray.set` each (as the engine's recall gathers runs).
 *
 * @module
 */

/** Copies the pieces `jobs[first .. first + count)` of `pool` into `chunk`, in order. */
export function gatherPieces(
  chunk: Uint8Array,
  pool: Uint8Array,
  jobs: Int32Array,
  first: number,
  count: number,
  pieceBytes: number,
): void {
  for (let i = 0; i < count; i++) {
    const from = jobs[first + i];
    chunk.set(pool.subarray(from, from + pieceBytes), i * pieceBytes);
  }
}
