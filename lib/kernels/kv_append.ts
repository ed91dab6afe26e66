/**
 * KV append: copies token rows of K and V (f32 `[rows][Hkv][d]`, as the
 * model computes them) to element offsets of the NHD slot caches, converting
 * to the cache's element type. f16 caches on devices without `shader-f16`
 * are written as u32 words of two halves (`kv_append_packed.wgsl`).
 *
 * The kernel contract: {@linkcode createKvAppend} then
 * {@linkcode KvAppend.plan} (validates and uploads the destination offsets)
 * then {@linkcode KvAppendPlan.encode} (records only). The CPU reference is
 * in `kv_append_reference.ts`.
 *
 * @module
 */

import appendSource from "../../shaders/kv_append.wgsl" with { type: "text" };
import appendPackedSource from "../../shaders/kv_append_packed.wgsl" with { type: "text" };
import appendRowSource from "../../shaders/kv_append_row.wgsl" with { type: "text" };
import { bytesPerElement, KV_DTYPES, type KvDtype } from "../gpu/dtype.ts";
import {
  assertDevice,
  assertInteger,
  assertObject,
  assertOneOf,
  describeValue,
  disposedError,
} from "../gpu/errors.ts";
import {
  assertBufferSize,
  BindGroupCache,
  type BufferSlice,
  createBuffer,
  GrowableBuffer,
  writeIfChanged,
} from "../gpu/buffers.ts";
import { cachedPipeline } from "../gpu/pipelines.ts";
import { type KernelEncodeOptions, passTimestampWrites } from "../gpu/timing.ts";

/** Options of {@linkcode createKvAppend}: the row geometry and the cache type. */
export interface KvAppendOptions {
  /** KV heads `Hkv`. */
  numKvHeads: number;
  /** Head size `d`. */
  headDim: number;
  /** Element type of the caches (default `"f32"`). */
  dtype?: KvDtype;
  /**
   * Elements between the heads of one row in the caches (default `headDim`:
   * a row is contiguous, NHD slots). HND slots (`[slot][Hkv][P][d]`) use
   * `pageSize * headDim`: a token's row goes to `Hkv` separate places.
   */
  headStride?: number;
}

/** Where the rows go, the input of {@linkcode KvAppend.plan}. */
export interface KvAppendRows {
  /**
   * Element offset in the caches of each row (row `i` of `k`/`v` goes to
   * `kCache[dstOffsets[i] ..]`); for f16 each must be even when the device
   * lacks `shader-f16` and `Hkv * d` must be even too.
   */
  dstOffsets: Uint32Array;
}

/** Buffers of {@linkcode KvAppendPlan.encode}. */
export interface KvAppendBuffers {
  /** New keys `[rows][Hkv][d]` f32. */
  k: GPUBuffer | BufferSlice;
  /** New values `[rows][Hkv][d]` f32. */
  v: GPUBuffer | BufferSlice;
  /** Key cache of the dtype (whole buffer). */
  kCache: GPUBuffer;
  /** Value cache of the dtype (whole buffer). */
  vCache: GPUBuffer;
}

/** What an append binds, from {@linkcode KvAppendPlan.bindings}. */
export interface KvAppendBindings {
  /** Uniform `AppendParams` of `kv_append_row.wgsl`. */
  params: GPUBufferBinding;
  /** Element offset of each row in the caches. */
  offsets: GPUBufferBinding;
  /** New keys `[rows][Hkv][d]` f32. */
  k: Required<BufferSlice>;
  /** New values `[rows][Hkv][d]` f32. */
  v: Required<BufferSlice>;
  /** Key cache (whole buffer, bound writable). */
  kCache: GPUBufferBinding;
  /** Value cache (whole buffer, bound writable). */
  vCache: GPUBufferBinding;
  /** Rows appended. */
  numRows: number;
  /** Elements per row (`Hkv * d`). */
  rowLength: number;
  /** Element type of the caches. */
  dtype: KvDtype;
}

/** The KV append kernel for one row geometry, from {@linkcode createKvAppend}. */
export interface KvAppend {
  /** The options with defaults filled in. */
  readonly options: Readonly<Required<KvAppendOptions>>;
  /** True when f16 rows are written as packed u32 words (no `shader-f16`). */
  readonly packed: boolean;
  /**
   * Validates and uploads the destination offsets of a step. Throws
   * `TypeError`/`RangeError` before any GPU work on bad offsets.
   */
  plan(rows: KvAppendRows): KvAppendPlan;
}

/** The rows of one append on the GPU, from {@linkcode KvAppend.plan}; owns buffers. */
export interface KvAppendPlan {
  /** Rows of the current plan. */
  readonly numRows: number;
  /**
   * Replaces the offsets (a new step), reusing the buffers when large
   * enough; written through `queue.writeBuffer`, so submit the work recorded
   * under the old offsets first.
   */
  update(rows: KvAppendRows): void;
  /**
   * Checks `buffers` as `encode` does and returns what the append binds, for
   * a kernel that appends the rows in its own dispatch (the one-dispatch page
   * selection). Throws a `RangeError` for a packed f16 cache or more rows
   * than one dispatch holds.
   */
  bindings(buffers: KvAppendBuffers): KvAppendBindings;
  /**
   * Records the append (one compute pass per `maxComputeWorkgroupsPerDimension`
   * rows). Throws before recording when a buffer is too small for the rows
   * or an offset.
   */
  encode(encoder: GPUCommandEncoder, buffers: KvAppendBuffers, options?: KernelEncodeOptions): void;
  /** Destroys the plan's buffers. */
  [Symbol.dispose](): void;
}

const ACTION = "append KV rows";

/** Validates {@linkcode KvAppendOptions} and fills the defaults. */
export function checkKvAppendOptions(options: KvAppendOptions): Required<KvAppendOptions> {
  assertObject("options", options, ACTION);
  const { numKvHeads, headDim } = options;
  const dtype = options.dtype ?? "f32";
  assertInteger("numKvHeads", numKvHeads, ACTION, 1);
  assertInteger("headDim", headDim, ACTION, 1);
  assertOneOf("dtype", dtype, KV_DTYPES, ACTION);
  const headStride = options.headStride ?? headDim;
  assertInteger("headStride", headStride, ACTION, headDim);
  return { numKvHeads, headDim, dtype, headStride };
}

/** Validates offsets; returns the largest. */
export function checkKvAppendRows(rows: KvAppendRows, even: boolean): number {
  const offsets = rows?.dstOffsets;
  if (!(offsets instanceof Uint32Array)) {
    throw new TypeError(
      `Cannot ${ACTION} as 'dstOffsets' must be a Uint32Array: received ${describeValue(offsets)}`,
    );
  }
  let max = -1;
  for (let i = 0; i < offsets.length; i++) {
    if (even && offsets[i] % 2 !== 0) {
      throw new RangeError(
        `Cannot ${ACTION} as 'dstOffsets' must be even for a packed f16 cache: received ${
          offsets[i]
        } at index ${i}`,
      );
    }
    max = Math.max(max, offsets[i]);
  }
  return max;
}

class Append implements KvAppend {
  readonly options: Readonly<Required<KvAppendOptions>>;
  readonly packed: boolean;
  readonly device: GPUDevice;
  readonly pipeline: GPUComputePipeline;
  /** Words (cache elements, or u32 pairs when packed) per row. */
  readonly rowWords: number;
  /** Words per head of a row, and words between heads in the cache. */
  readonly headWords: number;
  readonly headStrideWords: number;

  constructor(device: GPUDevice, options: Required<KvAppendOptions>) {
    this.device = device;
    this.options = Object.freeze({ ...options });
    const { numKvHeads: hkv, headDim: d, dtype } = options;
    this.packed = dtype === "f16" && !device.features.has("shader-f16");
    if (this.packed && options.headStride !== d && (d % 2 !== 0 || options.headStride % 2 !== 0)) {
      throw new RangeError(
        `Cannot ${ACTION} as 'headDim' and 'headStride' must be even for f16 without shader-f16 when heads are apart: received ${d} and ${options.headStride}`,
      );
    }
    if (this.packed && (hkv * d) % 2 !== 0) {
      throw new RangeError(
        `Cannot ${ACTION} as 'numKvHeads * headDim' must be even for f16 without shader-f16: received ${
          hkv * d
        }`,
      );
    }
    const code = this.packed
      ? appendPackedSource
      : (dtype === "f16" ? "enable f16;\nalias kv_t = f16;\n" : "alias kv_t = f32;\n") +
        appendSource + appendRowSource;
    this.pipeline = cachedPipeline(device, `kv_append_${this.packed ? "packed" : dtype}`, code);
    this.rowWords = this.packed ? (hkv * d) / 2 : hkv * d;
    // A contiguous row is one "head" of the whole row (same addresses).
    const apart = options.headStride !== d;
    this.headWords = apart ? (this.packed ? d / 2 : d) : this.rowWords;
    this.headStrideWords = apart ? (this.packed ? options.headStride / 2 : options.headStride) : 0;
  }

  plan(rows: KvAppendRows): KvAppendPlan {
    return new AppendPlan(this, rows);
  }
}

class AppendPlan implements KvAppendPlan {
  #append: Append;
  #offsets: GrowableBuffer;
  #params: GPUBuffer[] = [];
  #numRows = 0;
  #maxOffset = -1;
  #bindings = new BindGroupCache<GPUBindGroup[]>(4);
  #disposed = false;

  constructor(append: Append, rows: KvAppendRows) {
    this.#append = append;
    this.#offsets = new GrowableBuffer(
      append.device,
      "freekv append offsets",
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    );
    this.update(rows);
  }

  get numRows(): number {
    return this.#numRows;
  }

  update(rows: KvAppendRows): void {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    const a = this.#append;
    const max = checkKvAppendRows(rows, a.packed);
    let offsets = rows.dstOffsets;
    if (a.packed) offsets = offsets.map((x) => x / 2);
    const device = a.device;
    if (this.#offsets.ensure(offsets.byteLength)) this.#bindings.clear();
    if (offsets.length) {
      writeIfChanged(device.queue, this.#offsets.buffer, offsets);
    }
    const maxY = device.limits.maxComputeWorkgroupsPerDimension;
    const n = offsets.length;
    for (let base = 0, chunk = 0; base < n; base += maxY, chunk++) {
      if (!this.#params[chunk]) {
        this.#params[chunk] = createBuffer(
          device,
          `freekv append params ${chunk}`,
          GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
          32,
        );
        this.#bindings.clear();
      }
      writeIfChanged(
        device.queue,
        this.#params[chunk],
        new Uint32Array([a.rowWords, n, base, a.headWords, a.headStrideWords]),
      );
    }
    this.#numRows = n;
    this.#maxOffset = max;
  }

  #checkBuffers(buffers: KvAppendBuffers) {
    if (this.#disposed) throw disposedError(ACTION, "plan");
    const { numKvHeads: hkv, headDim: d, dtype, headStride } = this.#append.options;
    const rowBytes = this.#numRows * hkv * d * 4;
    const k = assertBufferSize("k", buffers?.k, rowBytes, ACTION);
    const v = assertBufferSize("v", buffers?.v, rowBytes, ACTION);
    const cacheBytes = (this.#maxOffset + (hkv - 1) * headStride + d) * bytesPerElement(dtype);
    const kCache = assertBufferSize("kCache", buffers.kCache, cacheBytes, ACTION).buffer;
    const vCache = assertBufferSize("vCache", buffers.vCache, cacheBytes, ACTION).buffer;
    return { k, v, kCache, vCache };
  }

  bindings(buffers: KvAppendBuffers): KvAppendBindings {
    const { k, v, kCache, vCache } = this.#checkBuffers(buffers);
    const a = this.#append;
    const n = this.#numRows;
    if (a.packed) {
      throw new RangeError(
        `Cannot ${ACTION} as rows appended by another kernel need a cache type the device writes directly: received f16 without shader-f16 (packed words)`,
      );
    }
    if (n < 1 || n > a.device.limits.maxComputeWorkgroupsPerDimension) {
      throw new RangeError(
        `Cannot ${ACTION} as rows appended by another kernel must fit one dispatch (1 to ${a.device.limits.maxComputeWorkgroupsPerDimension}): received ${n} rows`,
      );
    }
    return {
      params: { buffer: this.#params[0] },
      offsets: { buffer: this.#offsets.buffer },
      k,
      v,
      kCache: { buffer: kCache },
      vCache: { buffer: vCache },
      numRows: n,
      rowLength: a.options.numKvHeads * a.options.headDim,
      dtype: a.options.dtype,
    };
  }

  encode(
    encoder: GPUCommandEncoder,
    buffers: KvAppendBuffers,
    options: KernelEncodeOptions = {},
  ): void {
    const { k, v, kCache, vCache } = this.#checkBuffers(buffers);
    const a = this.#append;
    const n = this.#numRows;
    if (n === 0) return;
    const maxY = a.device.limits.maxComputeWorkgroupsPerDimension;
    const chunks = Math.ceil(n / maxY);
    const key = [k.buffer, k.offset, k.size, v.buffer, v.offset, v.size, kCache, vCache, chunks];
    const groups = this.#bindings.get(
      key,
      () =>
        Array.from({ length: chunks }, (_, chunk) =>
          a.device.createBindGroup({
            label: "freekv append",
            layout: a.pipeline.getBindGroupLayout(0),
            entries: [
              { binding: 0, resource: { buffer: this.#params[chunk] } },
              { binding: 1, resource: k },
              { binding: 2, resource: v },
              { binding: 3, resource: { buffer: this.#offsets.buffer } },
              { binding: 4, resource: { buffer: kCache } },
              { binding: 5, resource: { buffer: vCache } },
            ],
          })),
    );
    const ts = options.timestampWrites;
    for (let chunk = 0; chunk < chunks; chunk++) {
      const first = chunk === 0, last = chunk === chunks - 1;
      const pass = encoder.beginComputePass({
        label: "freekv append",
        timestampWrites: passTimestampWrites(
          ts,
          first ? ts?.beginIndex : undefined,
          last ? ts?.endIndex : undefined,
        ),
      });
      pass.setPipeline(a.pipeline);
      pass.setBindGroup(0, groups[chunk]);
      pass.dispatchWorkgroups(Math.ceil(a.rowWords / 64), Math.min(maxY, n - chunk * maxY));
      pass.end();
    }
  }

  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#offsets[Symbol.dispose]();
    for (const b of this.#params) b.destroy();
    this.#bindings.clear();
  }
}

/**
 * Creates the {@linkcode KvAppend} kernel for one row geometry and dtype.
 *
 * @throws {TypeError} When an option is not an integer or `dtype` is unknown.
 * @throws {RangeError} When a size is out of range, or f16 rows without
 * `shader-f16` have an odd length.
 *
 * @example
 * ```ts
 * import { requestGpu } from "../gpu/device.ts";
 * import { createBuffer, readBuffer } from "../gpu/buffers.ts";
 * import { createKvAppend } from "./kv_append.ts";
 * using gpu = await requestGpu();
 * const device = gpu.device;
 * const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
 * const k = createBuffer(device, "k", S, new Float32Array([1, 2]));
 * const v = createBuffer(device, "v", S, new Float32Array([3, 4]));
 * const kCache = createBuffer(device, "kCache", S, 16);
 * const vCache = createBuffer(device, "vCache", S, 16);
 * const append = createKvAppend(device, { numKvHeads: 1, headDim: 2 });
 * using plan = append.plan({ dstOffsets: new Uint32Array([2]) }); // the second row
 * const encoder = device.createCommandEncoder();
 * plan.encode(encoder, { k, v, kCache, vCache });
 * device.queue.submit([encoder.finish()]);
 * console.log(new Float32Array(await readBuffer(device, kCache))); // [0, 0, 1, 2]
 * ```
 */
export function createKvAppend(device: GPUDevice, options: KvAppendOptions): KvAppend {
  assertDevice(device, ACTION);
  return new Append(device, checkKvAppendOptions(options));
}
