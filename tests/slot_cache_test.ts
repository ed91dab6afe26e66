// The CPU mirror of a head's GPU pool: least-recently-used eviction, pinned
// pages, promotions, and the residency row it keeps for the GPU.
import assert from "node:assert/strict";
import { NOT_RESIDENT, SlotCache } from "../lib/memory/slot_cache.ts";
import { createRandom } from "../lib/workloads/random.ts";

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

Deno.test("slot cache: duplicates load once; pinned lists the latest selection; unpin frees it for promotions", () => {
  const cache = new SlotCache(3, row());
  assert.deepEqual(cache.admit([3, 3, 4], 1), [{ page: 3, slot: 0 }, { page: 4, slot: 1 }]);
  assert.deepEqual([...cache.pinned].sort(), [3, 4]);
  assert.equal(cache.promote(5, 2), 2);
  assert.equal(cache.promote(6, 3), 2); // 3 and 4 are pinned: page 5 leaves
  cache.unpin();
  assert.deepEqual([...cache.pinned], []);
  assert.equal(cache.promote(7, 4), 0); // page 3 (tick 1) is the oldest now
  assert.deepEqual(cache.pages(), [7, 4, 6]);
});

// A plain model of the rules (sets and maps) as the oracle of random runs.
class SlotCacheModel {
  slotPage: number[];
  lastUse: number[];
  pinned = new Set<number>();
  constructor(slots: number) {
    this.slotPage = new Array(slots).fill(-1);
    this.lastUse = new Array(slots).fill(-Infinity);
  }
  victim(): number {
    let best = -1;
    this.slotPage.forEach((page, s) => {
      if (page >= 0 && this.pinned.has(page)) return;
      if (best < 0 || this.lastUse[s] < this.lastUse[best]) best = s;
    });
    return best;
  }
  admit(pages: number[], tick: number): { page: number; slot: number }[] {
    const wanted = [...new Set(pages)];
    for (const page of wanted) {
      const s = this.slotPage.indexOf(page);
      if (s >= 0) this.lastUse[s] = tick;
    }
    this.pinned = new Set(wanted);
    const loads = [];
    for (const page of wanted) {
      if (this.slotPage.includes(page)) continue;
      const slot = this.victim();
      this.slotPage[slot] = page;
      this.lastUse[slot] = tick;
      loads.push({ page, slot });
    }
    return loads;
  }
  promote(page: number, tick: number): number {
    if (this.slotPage.includes(page)) return -1;
    const slot = this.victim();
    if (slot < 0) return -1;
    this.slotPage[slot] = page;
    this.lastUse[slot] = tick;
    return slot;
  }
}

Deno.test("slot cache: random admits and promotions follow the model of its rules", () => {
  const rng = createRandom(7);
  for (const slots of [1, 4, 9]) {
    const r = row(40);
    const cache = new SlotCache(slots, r);
    const model = new SlotCacheModel(slots);
    for (let tick = 1; tick <= 300; tick++) {
      if (rng.int(3) === 0) {
        const page = rng.int(40);
        assert.equal(cache.promote(page, tick), model.promote(page, tick), `tick ${tick}`);
      } else {
        const pages = Array.from({ length: 1 + rng.int(slots) }, () => rng.int(40));
        assert.deepEqual(cache.admit(pages, tick), model.admit(pages, tick), `tick ${tick}`);
      }
      assert.deepEqual([...cache.slotPage], model.slotPage, `tick ${tick}`);
      for (let p = 0; p < 40; p++) {
        const s = model.slotPage.indexOf(p);
        assert.equal(r[p], s < 0 ? NOT_RESIDENT : s, `row of page ${p}, tick ${tick}`);
      }
    }
  }
});
