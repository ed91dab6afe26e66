/**
 * The host page pool: the offloaded KV cache in host memory, for every
 * (layer, KV head, page).
 *
 * Default layout `"hnd"` (head-major): one page of one head is one
 * contiguous run `[K: P x d][V: P x d]`, so recalling it is one copy. The
 * `"nhd"` layout (per (layer, page) `[token][kvHead][d]` for K, then V)
 * exists only for the baseline that shows fragmented copies.
 *
 * Pages are addressed by a global page index (the engine gives sequence `b`
 * the range starting at `b * maxPagesPerSequence`). Memory comes in chunks:
 * chunk `c` holds pages `[c * chunkPages, (c + 1) * chunkPages)` of every
 * (layer, head), laid out `[layer][head][page][run]` (HND), so a run and
 * runs of consecutive pages of one head inside a chunk are contiguous.
 * Chunks are allocated when a page in them is first reserved or written,
 * and growing never copies what exists.
 *
 * @module
 */
import {
  allocKvArray,
  bytesPerElement,
  KV_DTYPES,
  type KvArray,
  type KvDtype,
} from "../gpu/dtype.ts";
import {
  assertInteger,
  assertObject,
  assertOneOf,
  describeValue,
  disposedError,
} from "../gpu/errors.ts";

/** Host layout of a {@linkcode HostPagePool}. */
export type HostPoolLayout = "hnd" | "nhd";

/** Every {@linkcode HostPoolLayout}. */
export const HOST_POOL_LAYOUTS: readonly HostPoolLayout[] = ["hnd", "nhd"];

/** Options of {@linkcode HostPagePool}. */
export interface HostPagePoolOptions {
  /** Layers. */
  layers: number;
  /** KV heads per layer. */
  kvHeads: number;
  /** Head dimension `d`. */
  headDim: number;
  /** Tokens per page `P`. */
  pageSize: number;
  /** Element type (default `"f32"`; `"f16"` is stored as `Float16Array`). */
  dtype?: KvDtype;
  /** Host layout (default `"hnd"`). */
  layout?: HostPoolLayout;
  /** Consecutive pages per allocation chunk (default 16). */
  chunkPages?: number;
  /** Cap on the allocated bytes (default: none). Growing past it throws `RangeError`. */
  maxBytes?: number;
}

/** Address of one page of one head of one layer. */
export interface PageKey {
  /** Layer. */
  layer: number;
  /** KV head. */
  head: number;
  /** Global page index. */
  page: number;
}

/** Where a page's data lies in host memory. */
export interface PageLocation {
  /** Bytes of the chunk holding the page. */
  bytes: Uint8Array<ArrayBuffer>;
  /**
   * Byte offset in `bytes`: of the (layer, head, page) run for `"hnd"`; of
   * the (layer, page) block `[K: P x Hkv x d][V: P x Hkv x d]` for `"nhd"`.
   */
  byteOffset: number;
}

interface Chunk {
  bytes: Uint8Array<ArrayBuffer>;
  array: KvArray;
  // Offloaded flag per (layer, head, page in chunk).
  flags: Uint8Array;
  count: number;
}

const MAX_PAGE = 2 ** 32 - 1;

/**
 * Typed KV page storage in host memory, growing in chunks, with a byte cap
 * and a record of which (layer, head, page) hold offloaded data.
 *
 * @example
 * ```ts
 * import { HostPagePool } from "./host_pool.ts";
 * using pool = new HostPagePool({ layers: 2, kvHeads: 2, headDim: 4, pageSize: 2, dtype: "f16" });
 * const run = new Float16Array(pool.runElements).fill(1.5); // [K: 2 x 4][V: 2 x 4]
 * pool.writeRun({ layer: 1, head: 0, page: 40 }, run);
 * console.log(pool.isOffloaded({ layer: 1, head: 0, page: 40 }), pool.byteLength); // true 1024
 * console.log(pool.readRun({ layer: 1, head: 0, page: 40 })[0]); // 1.5
 * ```
 */
export class HostPagePool {
  /** Layers. */
  readonly layers: number;
  /** KV heads per layer. */
  readonly kvHeads: number;
  /** Head dimension. */
  readonly headDim: number;
  /** Tokens per page. */
  readonly pageSize: number;
  /** Element type. */
  readonly dtype: KvDtype;
  /** Host layout. */
  readonly layout: HostPoolLayout;
  /** Pages per allocation chunk. */
  readonly chunkPages: number;
  /** Byte cap (Infinity when none). */
  readonly maxBytes: number;
  /** Elements of one (layer, head, page) run: `2 * P * d`. */
  readonly runElements: number;
  /** Bytes of one run. */
  readonly runBytes: number;
  /** Bytes of one chunk. */
  readonly chunkBytes: number;
  #chunks = new Map<number, Chunk>();
  #offloaded = 0;
  #disposed = false;

  /** Creates an empty pool; nothing is allocated until pages are written. */
  constructor(options: HostPagePoolOptions) {
    const action = "create a host page pool";
    assertObject("options", options, action);
    assertInteger("layers", options.layers, action, 1);
    assertInteger("kvHeads", options.kvHeads, action, 1);
    assertInteger("headDim", options.headDim, action, 1);
    assertInteger("pageSize", options.pageSize, action, 1);
    const dtype = options.dtype ?? "f32";
    assertOneOf("dtype", dtype, KV_DTYPES, action);
    const layout = options.layout ?? "hnd";
    assertOneOf("layout", layout, HOST_POOL_LAYOUTS, action);
    const chunkPages = options.chunkPages ?? 16;
    assertInteger("chunkPages", chunkPages, action, 1);
    const maxBytes = options.maxBytes ?? Infinity;
    if (maxBytes !== Infinity) assertInteger("maxBytes", maxBytes, action, 0);
    this.layers = options.layers;
    this.kvHeads = options.kvHeads;
    this.headDim = options.headDim;
    this.pageSize = options.pageSize;
    this.dtype = dtype;
    this.layout = layout;
    this.chunkPages = chunkPages;
    this.maxBytes = maxBytes;
    this.runElements = 2 * options.pageSize * options.headDim;
    this.runBytes = this.runElements * bytesPerElement(dtype);
    this.chunkBytes = chunkPages * options.layers * options.kvHeads * this.runBytes;
    if (!Number.isSafeInteger(this.chunkBytes)) {
      throw new RangeError(
        `Cannot ${action} as a chunk must have a safe integer size: received ${this.chunkBytes} bytes`,
      );
    }
  }

  /** Bytes allocated now. */
  get byteLength(): number {
    return this.#chunks.size * this.chunkBytes;
  }

  /** Chunks allocated now. */
  get chunkCount(): number {
    return this.#chunks.size;
  }

  /** (layer, head, page) runs holding offloaded data. */
  get offloadedRuns(): number {
    return this.#offloaded;
  }

  #checkAlive(action: string) {
    if (this.#disposed) {
      throw disposedError(action, "host page pool");
    }
  }

  #checkKey(key: PageKey, action: string) {
    assertObject("key", key, action);
    assertInteger("layer", key.layer, action, 0, this.layers - 1);
    assertInteger("head", key.head, action, 0, this.kvHeads - 1);
    assertInteger("page", key.page, action, 0, MAX_PAGE);
  }

  // Index of (layer, head, page-in-chunk) in a chunk's flags.
  #flagIndex(key: PageKey): number {
    return (key.layer * this.kvHeads + key.head) * this.chunkPages + key.page % this.chunkPages;
  }

  /**
   * Allocates the chunks holding `pages` (global indices) that are not
   * allocated yet. All or nothing: throws `RangeError` and allocates nothing
   * when the pool would exceed `maxBytes`.
   *
   * @example
   * ```ts
   * import { HostPagePool } from "./host_pool.ts";
   * using pool = new HostPagePool({ layers: 1, kvHeads: 1, headDim: 2, pageSize: 1, chunkPages: 4 });
   * pool.reserve([0, 5, 6]);
   * console.log(pool.chunkCount); // 2
   * ```
   */
  reserve(pages: Iterable<number>): void {
    const action = "grow the host page pool";
    this.#checkAlive(action);
    const missing = new Set<number>();
    for (const page of pages) {
      assertInteger("page", page, action, 0, MAX_PAGE);
      const c = Math.floor(page / this.chunkPages);
      if (!this.#chunks.has(c)) missing.add(c);
    }
    const needed = this.byteLength + missing.size * this.chunkBytes;
    if (needed > this.maxBytes) {
      throw new RangeError(
        `Cannot ${action} as 'maxBytes' must not be exceeded: ${missing.size} more chunk(s) of ${this.chunkBytes} bytes need ${needed} bytes, maxBytes is ${this.maxBytes}`,
      );
    }
    const fresh: Array<[number, Chunk]> = [];
    for (const c of missing) {
      const array = allocKvArray(this.dtype, this.chunkBytes / bytesPerElement(this.dtype));
      fresh.push([c, {
        array,
        bytes: new Uint8Array(array.buffer as ArrayBuffer),
        flags: new Uint8Array(this.layers * this.kvHeads * this.chunkPages),
        count: 0,
      }]);
    }
    for (const [c, chunk] of fresh) this.#chunks.set(c, chunk);
  }

  /**
   * Where the data of `key` lies (allocating its chunk if needed, which may
   * throw `RangeError` for `maxBytes`). Does not check that it was offloaded.
   */
  location(key: PageKey): PageLocation {
    const action = "locate a page in the host page pool";
    this.#checkAlive(action);
    this.#checkKey(key, action);
    return this.#location(key);
  }

  #location(key: PageKey): PageLocation {
    const c = Math.floor(key.page / this.chunkPages);
    let chunk = this.#chunks.get(c);
    if (!chunk) {
      this.reserve([key.page]);
      chunk = this.#chunks.get(c)!;
    }
    const pc = key.page % this.chunkPages;
    const byteOffset = this.layout === "hnd"
      ? ((key.layer * this.kvHeads + key.head) * this.chunkPages + pc) * this.runBytes
      : (key.layer * this.chunkPages + pc) * this.kvHeads * this.runBytes;
    return { bytes: chunk.bytes, byteOffset };
  }

  /**
   * Stores the HND run `[K: P x d][V: P x d]` of `key` (any typed array or
   * view with exactly `runBytes` bytes of the pool's dtype) and marks it
   * offloaded. An `"nhd"` pool scatters it into its token-major layout.
   */
  writeRun(key: PageKey, run: ArrayBufferView): void {
    const action = "write a run to the host page pool";
    this.#checkAlive(action);
    this.#checkKey(key, action);
    if (!ArrayBuffer.isView(run)) {
      throw new TypeError(
        `Cannot ${action} as 'run' must be a typed array: received ${describeValue(run)}`,
      );
    }
    if (run.byteLength !== this.runBytes) {
      throw new RangeError(
        `Cannot ${action} as 'run' must have ${this.runBytes} bytes: received ${run.byteLength}`,
      );
    }
    const src = new Uint8Array(run.buffer, run.byteOffset, run.byteLength);
    const { bytes, byteOffset } = this.#location(key);
    if (this.layout === "hnd") {
      bytes.set(src, byteOffset);
    } else {
      const rowBytes = this.headDim * bytesPerElement(this.dtype);
      const half = this.runBytes / 2;
      const headBytes = this.kvHeads * rowBytes;
      for (let part = 0; part < 2; part++) {
        for (let t = 0; t < this.pageSize; t++) {
          const from = part * half + t * rowBytes;
          const to = byteOffset + part * this.pageSize * headBytes + t * headBytes +
            key.head * rowBytes;
          bytes.set(src.subarray(from, from + rowBytes), to);
        }
      }
    }
    const chunk = this.#chunks.get(Math.floor(key.page / this.chunkPages))!;
    const f = this.#flagIndex(key);
    if (!chunk.flags[f]) {
      chunk.flags[f] = 1;
      chunk.count++;
      this.#offloaded++;
    }
  }

  /** Whether `key` holds offloaded data. */
  isOffloaded(key: PageKey): boolean {
    const action = "query the host page pool";
    this.#checkAlive(action);
    this.#checkKey(key, action);
    const chunk = this.#chunks.get(Math.floor(key.page / this.chunkPages));
    return chunk !== undefined && chunk.flags[this.#flagIndex(key)] === 1;
  }

  /**
   * The HND run of an offloaded `key`: a view into the pool for `"hnd"`
   * (no copy; do not keep it past `releasePages`), a new array for `"nhd"`.
   * Throws `RangeError` when `key` was never offloaded.
   */
  readRun(key: PageKey): KvArray {
    const action = "read a run from the host page pool";
    if (!this.isOffloaded(key)) {
      throw new RangeError(
        `Cannot ${action} as the page must have been offloaded: received layer ${key.layer} head ${key.head} page ${key.page}`,
      );
    }
    const { bytes, byteOffset } = this.#location(key);
    const e = bytesPerElement(this.dtype);
    const array = this.#chunks.get(Math.floor(key.page / this.chunkPages))!.array;
    if (this.layout === "hnd") {
      return array.subarray(byteOffset / e, byteOffset / e + this.runElements);
    }
    const out = allocKvArray(this.dtype, this.runElements);
    const outBytes = new Uint8Array(out.buffer);
    const rowBytes = this.headDim * e;
    const headBytes = this.kvHeads * rowBytes;
    for (let part = 0; part < 2; part++) {
      for (let t = 0; t < this.pageSize; t++) {
        const from = byteOffset + part * this.pageSize * headBytes + t * headBytes +
          key.head * rowBytes;
        outBytes.set(bytes.subarray(from, from + rowBytes), (part * this.pageSize + t) * rowBytes);
      }
    }
    return out;
  }

  /**
   * Forgets pages `[first, first + count)` of every layer and head (for
   * example when a sequence ends) and frees chunks left with no offloaded
   * page.
   *
   * @example
   * ```ts
   * import { HostPagePool } from "./host_pool.ts";
   * using pool = new HostPagePool({ layers: 1, kvHeads: 1, headDim: 2, pageSize: 1, chunkPages: 4 });
   * pool.writeRun({ layer: 0, head: 0, page: 1 }, new Float32Array(4));
   * pool.releasePages(0, 4);
   * console.log(pool.byteLength, pool.offloadedRuns); // 0 0
   * ```
   */
  releasePages(first: number, count: number): void {
    const action = "release pages of the host page pool";
    this.#checkAlive(action);
    assertInteger("first", first, action, 0, MAX_PAGE);
    assertInteger("count", count, action, 0, MAX_PAGE);
    for (const [c, chunk] of [...this.#chunks]) {
      const lo = Math.max(first, c * this.chunkPages);
      const hi = Math.min(first + count, (c + 1) * this.chunkPages);
      for (let page = lo; page < hi; page++) {
        for (let layer = 0; layer < this.layers; layer++) {
          for (let head = 0; head < this.kvHeads; head++) {
            const f = this.#flagIndex({ layer, head, page });
            if (chunk.flags[f]) {
              chunk.flags[f] = 0;
              chunk.count--;
              this.#offloaded--;
            }
          }
        }
      }
      if (chunk.count === 0 && lo < hi) this.#chunks.delete(c);
    }
  }

  /** Drops all host memory; the pool cannot be used afterwards. */
  [Symbol.dispose](): void {
    this.#disposed = true;
    this.#chunks.clear();
    this.#offloaded = 0;
  }
}
