// The CPU mirror of a head's GPU pool: least-recently-used eviction, pinned
// pages, promotions, and the residency row it keeps for the GPU.
import assert from "node:assert/strict";
import { NOT_RESIDENT, SlotCache } from "../lib/memory/slot_cache.ts";

const row = (n = 32) => new Uint32Array(n).fill(NOT_RESIDENT);

Deno.test("slot cache: free slots first, then the least recently used unpinned slot", () => {
  const cache = new SlotCache(3, row());
  assert.deepEqual(cache.admit([1, 2, 3], 1), [
    { page: 1, slot: 0 },
    { page: 2, slot: 1 },
    { page: 3, slot: 2 },
  ]);
  // Page 2 used again at tick 2: page 1 (tick 1) and page 3 (tick 1) are older.
  assert.deepEqual(cache.admit([2], 2), []);
  assert.deepEqual(cache.admit([2, 4], 3), [{ page: 4, slot: 0 }]); // evicts page 1 (slot 0)
  assert.equal(cache.row[1], NOT_RESIDENT);
  assert.equal(cache.row[4], 0);
  // A resident page's last use is refreshed by admit: 3 is now the oldest.
  assert.deepEqual(cache.admit([4, 2], 4), []);
  assert.deepEqual(cache.admit([5], 5), [{ page: 5, slot: 2 }]); // page 3 leaves
  assert.deepEqual(cache.pages(), [4, 2, 5]);
});

Deno.test("slot cache: promotions never evict the pinned selection", () => {
  const cache = new SlotCache(3, row());
  cache.admit([1, 2], 1);
  assert.equal(cache.promote(7, 2), 2); // the free slot
  assert.equal(cache.promote(8, 3), 2); // page 7 is not pinned: it leaves
  assert.equal(cache.row[7], NOT_RESIDENT);
  assert.equal(cache.promote(8, 4), -1); // already resident
  cache.admit([1, 2, 8], 5); // every slot pinned now
  assert.equal(cache.promote(9, 6), -1);
  assert.deepEqual(cache.pages(), [1, 2, 8]);
});

Deno.test("slot cache: clear forgets every page and its residency", () => {
  const r = row();
  const cache = new SlotCache(2, r);
  cache.admit([3, 9], 1);
  cache.clear();
  assert.ok(r.every((x) => x === NOT_RESIDENT));
  assert.deepEqual(cache.pages(), []);
  assert.deepEqual(cache.admit([3], 2), [{ page: 3, slot: 0 }]);
});
