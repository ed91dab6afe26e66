/**
 * safetensors files: a u64 little-endian header length `n`, `n` bytes of
 * JSON (`{"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
 * "__metadata__": {..}}`, offsets relative to the end of the header), then
 * the raw little-endian tensor bytes. Reading keeps `F16`/`BF16` as raw
 * `Uint16Array` bits. Sharded checkpoints have a
 * `model.safetensors.index.json` whose `weight_map` names each tensor's file.
 *
 * Tensors are read one at a time straight into their own typed arrays, so a
 * checkpoint never needs to fit in a single `ArrayBuffer`.
 *
 * @module
 */

import type { Tensor, WeightDtype } from "./types.ts";

/** One tensor's entry in a safetensors header. */
export interface SafetensorsEntry {
  /** safetensors dtype name (`F32`, `F16`, `BF16`, or another, unreadable here). */
  dtype: string;
  /** Shape. */
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  begin: number;
  /** Absolute end offset (exclusive). */
  end: number;
}

/** A parsed safetensors header. */
export interface SafetensorsHeader {
  /** Tensors by name. */
  entries: Map<string, SafetensorsEntry>;
  /** The `__metadata__` strings (empty when absent). */
  metadata: Record<string, string>;
  /** Absolute offset where the tensor data starts (8 + header length). */
  dataOffset: number;
}

/** Progress of a load, reported after each tensor. */
export interface LoadProgress {
  /** File being read. */
  file: string;
  /** Bytes of tensor data read so far (whole load). */
  loadedBytes: number;
  /** Bytes of tensor data to read in all (whole load). */
  totalBytes: number;
}

/** Options of {@linkcode parseSafetensorsHeader}. */
export interface ParseSafetensorsOptions {
  /** File name for error messages. */
  name?: string;
  /** Size of the whole file, to check offsets (default: unchecked end). */
  fileSize?: number;
}

const DTYPE_BYTES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

const TO_WEIGHT: Record<string, WeightDtype> = { F32: "f32", F16: "f16", BF16: "bf16" };
const FROM_WEIGHT: Record<WeightDtype, string> = { f32: "F32", f16: "F16", bf16: "BF16" };

/** Largest header accepted (the reference implementation allows 100 MB). */
const MAX_HEADER = 100_000_000;

/**
 * Length of the JSON header, from the first 8 bytes of a file.
 *
 * @example
 * ```ts
 * import { safetensorsHeaderLength } from "./safetensors.ts";
 * safetensorsHeaderLength(new Uint8Array([2, 0, 0, 0, 0, 0, 0, 0])); // 2
 * ```
 */
export function safetensorsHeaderLength(
  prefix: Uint8Array,
  options: ParseSafetensorsOptions = {},
): number {
  const name = JSON.stringify(options.name ?? "<memory>");
  if (prefix.byteLength < 8) {
    throw new RangeError(
      `Cannot read safetensors ${name} as the file must start with an 8-byte header length: received ${prefix.byteLength} bytes`,
    );
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  const limit = options.fileSize !== undefined
    ? Math.min(MAX_HEADER, options.fileSize - 8)
    : MAX_HEADER;
  if (n < 2n || n > BigInt(limit)) {
    throw new RangeError(
      `Cannot read safetensors ${name} as its header length must be between 2 and ${limit} bytes: received ${n}`,
    );
  }
  return Number(n);
}

/**
 * Parses a safetensors header from the start of a file (at least the 8-byte
 * length and the JSON it announces).
 *
 * @example
 * ```ts
 * import { encodeSafetensors, parseSafetensorsHeader } from "./safetensors.ts";
 * const bytes = encodeSafetensors({ w: { dtype: "f32", shape: [2], data: new Float32Array(2) } });
 * parseSafetensorsHeader(bytes).entries.get("w")!.shape; // [2]
 * ```
 */
export function parseSafetensorsHeader(
  bytes: Uint8Array,
  options: ParseSafetensorsOptions = {},
): SafetensorsHeader {
  const name = JSON.stringify(options.name ?? "<memory>");
  const fail = (rule: string): never => {
    throw new RangeError(`Cannot read safetensors ${name} as ${rule}`);
  };
  const n = safetensorsHeaderLength(bytes, options);
  if (bytes.byteLength < 8 + n) {
    fail(`its ${n}-byte header must be complete: received ${bytes.byteLength - 8} bytes`);
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (error) {
    fail(`its header must be UTF-8 JSON: ${(error as Error).message}`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    fail(
      `its header must be a JSON object: received ${Array.isArray(json) ? "array" : typeof json}`,
    );
  }
  const dataOffset = 8 + n;
  const dataSize = options.fileSize !== undefined ? options.fileSize - dataOffset : Infinity;
  const entries = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(json as Record<string, unknown>)) {
    if (key === "__metadata__") {
      metadata = (value ?? {}) as Record<string, string>;
      continue;
    }
    const e = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (e === null || typeof e !== "object") {
      fail(`tensor '${key}' must be an object: received ${e}`);
    }
    if (typeof e.dtype !== "string" || !(e.dtype in DTYPE_BYTES)) {
      fail(`tensor '${key}' must have a known dtype: received ${JSON.stringify(e.dtype)}`);
    }
    const shape = e.shape as number[];
    if (!Array.isArray(shape) || !shape.every((v) => Number.isInteger(v) && v >= 0)) {
      fail(
        `tensor '${key}' must have a shape of non-negative integers: received ${
          JSON.stringify(shape)
        }`,
      );
    }
    const offsets = e.data_offsets as number[];
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((v) => Number.isInteger(v) && v >= 0) || offsets[1] < offsets[0]
    ) {
      fail(
        `tensor '${key}' must have data_offsets [begin, end]: received ${JSON.stringify(offsets)}`,
      );
    }
    const dtype = e.dtype as string;
    const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (offsets[1] - offsets[0] !== expected) {
      fail(
        `tensor '${key}' (${dtype} [${shape}]) must span ${expected} bytes: received data_offsets [${offsets}]`,
      );
    }
    if (offsets[1] > dataSize) {
      fail(
        `tensor '${key}' must end within the file's ${dataSize} data bytes: received end ${
          offsets[1]
        } (truncated?)`,
      );
    }
    entries.set(key, {
      dtype,
      shape: shape.slice(),
      begin: dataOffset + offsets[0],
      end: dataOffset + offsets[1],
    });
  }
  return { entries, metadata, dataOffset };
}

/** A source of named tensors (one safetensors file, or a sharded set). */
export interface TensorSource extends Disposable {
  /** Names of all tensors. */
  readonly names: readonly string[];
  /** Whether a tensor exists. */
  has(name: string): boolean;
  /** Shape and safetensors dtype of a tensor, without reading it. */
  entry(name: string): SafetensorsEntry;
  /** Reads one tensor (F32/F16/BF16). */
  read(name: string): Promise<Tensor>;
  /** Closes open files. */
  close(): void;
}

/** Options of {@linkcode openSafetensors}. */
export interface OpenSafetensorsOptions {
  /** Called after each tensor read. */
  onProgress?: (progress: LoadProgress) => void;
}

async function readExact(file: Deno.FsFile, at: number, into: Uint8Array, name: string) {
  await file.seek(at, Deno.SeekMode.Start);
  let got = 0;
  while (got < into.length) {
    const n = await file.read(into.subarray(got));
    if (n === null) {
      throw new RangeError(
        `Cannot read safetensors ${JSON.stringify(name)} as the file ends at byte ${
          at + got
        }: expected ${into.length - got} more bytes (truncated?)`,
      );
    }
    got += n;
  }
}

interface OpenFile {
  path: string;
  file: Deno.FsFile;
  header: SafetensorsHeader;
}

async function openOne(path: string): Promise<OpenFile> {
  const file = await Deno.open(path, { read: true });
  try {
    const size = (await file.stat()).size;
    const prefix = new Uint8Array(8);
    if (size < 8) safetensorsHeaderLength(new Uint8Array(size), { name: path });
    await readExact(file, 0, prefix, path);
    const n = safetensorsHeaderLength(prefix, { name: path, fileSize: size });
    const head = new Uint8Array(8 + n);
    await readExact(file, 0, head, path);
    return { path, file, header: parseSafetensorsHeader(head, { name: path, fileSize: size }) };
  } catch (error) {
    file.close();
    throw error;
  }
}

function makeSource(
  files: OpenFile[],
  where: Map<string, OpenFile>,
  options: OpenSafetensorsOptions,
): TensorSource {
  const names = [...where.keys()];
  let totalBytes = 0, loadedBytes = 0;
  for (const [n, f] of where) {
    const e = f.header.entries.get(n)!;
    totalBytes += e.end - e.begin;
  }
  const entry = (name: string) => {
    const f = where.get(name);
    if (!f) {
      throw new TypeError(
        `Cannot read tensor as '${name}' is not in the checkpoint (${names.length} tensors)`,
      );
    }
    return { f, e: f.header.entries.get(name)! };
  };
  const close = () => files.forEach((f) => f.file.close());
  return {
    names,
    has: (name) => where.has(name),
    entry: (name) => entry(name).e,
    async read(name: string): Promise<Tensor> {
      const { f, e } = entry(name);
      const dtype = TO_WEIGHT[e.dtype];
      if (!dtype) {
        throw new TypeError(
          `Cannot read tensor '${name}' as its dtype must be one of F32, F16, BF16: received ${e.dtype}`,
        );
      }
      const count = e.shape.reduce((a, b) => a * b, 1);
      const data = dtype === "f32" ? new Float32Array(count) : new Uint16Array(count);
      await readExact(f.file, e.begin, new Uint8Array(data.buffer), f.path);
      loadedBytes += e.end - e.begin;
      options.onProgress?.({ file: f.path, loadedBytes, totalBytes });
      return { dtype, shape: e.shape.slice(), data };
    },
    close,
    [Symbol.dispose]: close,
  };
}

/**
 * Opens one safetensors file for reading tensor by tensor. Close it (or
 * `using` it) when done.
 *
 * @example
 * ```ts
 * import { openSafetensors, writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, { w: { dtype: "f32", shape: [2], data: new Float32Array([1, 2]) } });
 * using file = await openSafetensors(path);
 * (await file.read("w")).data; // Float32Array [1, 2]
 * ```
 */
export async function openSafetensors(
  path: string,
  options: OpenSafetensorsOptions = {},
): Promise<TensorSource> {
  const f = await openOne(path);
  const where = new Map<string, OpenFile>();
  for (const name of f.header.entries.keys()) where.set(name, f);
  return makeSource([f], where, options);
}

/**
 * Opens a sharded checkpoint from its `model.safetensors.index.json`
 * (`{"weight_map": {tensor: file}}`, files relative to the index).
 *
 * @example
 * ```ts
 * import { openSafetensorsIndex, writeShardedSafetensors } from "./safetensors.ts";
 * const dir = await Deno.makeTempDir();
 * const t = { dtype: "f32" as const, shape: [4], data: new Float32Array(4) };
 * await writeShardedSafetensors(dir, { a: t, b: t }, { maxShardBytes: 16 });
 * using source = await openSafetensorsIndex(`${dir}/model.safetensors.index.json`);
 * source.names.length; // 2
 * ```
 */
export async function openSafetensorsIndex(
  indexPath: string,
  options: OpenSafetensorsOptions = {},
): Promise<TensorSource> {
  const text = await Deno.readTextFile(indexPath);
  let index: { weight_map?: Record<string, string> };
  try {
    index = JSON.parse(text);
  } catch (error) {
    throw new RangeError(
      `Cannot read safetensors index ${JSON.stringify(indexPath)} as it must be JSON: ${
        (error as Error).message
      }`,
    );
  }
  const map = index?.weight_map;
  if (!map || typeof map !== "object") {
    throw new TypeError(
      `Cannot read safetensors index ${JSON.stringify(indexPath)} as field 'weight_map' is missing`,
    );
  }
  const dir = indexPath.includes("/") ? indexPath.slice(0, indexPath.lastIndexOf("/")) : ".";
  const files = new Map<string, OpenFile>();
  const where = new Map<string, OpenFile>();
  try {
    for (const [name, file] of Object.entries(map)) {
      if (typeof file !== "string" || file.includes("..")) {
        throw new TypeError(
          `Cannot read safetensors index ${
            JSON.stringify(indexPath)
          } as 'weight_map' entry '${name}' must be a file name: received ${JSON.stringify(file)}`,
        );
      }
      let f = files.get(file);
      if (!f) {
        f = await openOne(`${dir}/${file}`);
        files.set(file, f);
      }
      if (!f.header.entries.has(name)) {
        throw new RangeError(
          `Cannot read safetensors index ${
            JSON.stringify(indexPath)
          } as tensor '${name}' is missing from ${file}`,
        );
      }
      where.set(name, f);
    }
  } catch (error) {
    files.forEach((f) => f.file.close());
    throw error;
  }
  return makeSource([...files.values()], where, options);
}

/** Tensors to write: a record or a map from name to tensor. */
export type NamedTensors = Record<string, Tensor> | Map<string, Tensor>;

/** Options of {@linkcode encodeSafetensors} and {@linkcode writeSafetensors}. */
export interface WriteSafetensorsOptions {
  /** `__metadata__` strings (e.g. `{ format: "pt" }`). */
  metadata?: Record<string, string>;
}

function entriesOf(tensors: NamedTensors): [string, Tensor][] {
  const list = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  for (const [name, t] of list) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (!(t.dtype in FROM_WEIGHT)) {
      throw new TypeError(
        `Cannot write safetensors as tensor '${name}' must have dtype f32, f16 or bf16: received ${
          JSON.stringify(t.dtype)
        }`,
      );
    }
    const want = t.dtype === "f32" ? Float32Array : Uint16Array;
    if (!(t.data instanceof want) || t.data.length !== count) {
      throw new RangeError(
        `Cannot write safetensors as tensor '${name}' (${t.dtype} [${t.shape}]) must hold ${count} values in a ${want.name}: received ${t.data.constructor.name} of length ${t.data.length}`,
      );
    }
  }
  return list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function headerBytes(list: [string, Tensor][], metadata?: Record<string, string>): Uint8Array {
  const json: Record<string, unknown> = {};
  if (metadata) json.__metadata__ = metadata;
  let at = 0;
  for (const [name, t] of list) {
    json[name] = {
      dtype: FROM_WEIGHT[t.dtype],
      shape: t.shape,
      data_offsets: [at, at + t.data.byteLength],
    };
    at += t.data.byteLength;
  }
  const text = new TextEncoder().encode(JSON.stringify(json));
  const padded = Math.ceil(text.length / 8) * 8; // keep tensor data 8-byte aligned
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(text, 8);
  return out;
}

const bytesOf = (t: Tensor) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);

/**
 * Serializes tensors into safetensors bytes in memory (names sorted).
 *
 * @example
 * ```ts
 * import { encodeSafetensors } from "./safetensors.ts";
 * const bytes = encodeSafetensors({ w: { dtype: "f16", shape: [1], data: new Uint16Array([0x3c00]) } });
 * ```
 */
export function encodeSafetensors(
  tensors: NamedTensors,
  options: WriteSafetensorsOptions = {},
): Uint8Array {
  const list = entriesOf(tensors);
  const head = headerBytes(list, options.metadata);
  const out = new Uint8Array(head.length + list.reduce((a, [, t]) => a + t.data.byteLength, 0));
  out.set(head);
  let at = head.length;
  for (const [, t] of list) {
    out.set(bytesOf(t), at);
    at += t.data.byteLength;
  }
  return out;
}

/**
 * Writes tensors to a safetensors file, streaming one tensor at a time.
 *
 * @example
 * ```ts
 * import { writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, { w: { dtype: "f32", shape: [2, 2], data: new Float32Array(4) } });
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: NamedTensors,
  options: WriteSafetensorsOptions = {},
): Promise<void> {
  const list = entriesOf(tensors);
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  const writeAll = async (bytes: Uint8Array) => {
    let done = 0;
    while (done < bytes.length) done += await file.write(bytes.subarray(done));
  };
  await writeAll(headerBytes(list, options.metadata));
  for (const [, t] of list) await writeAll(bytesOf(t));
}

/** Options of {@linkcode writeShardedSafetensors}. */
export interface WriteShardedOptions extends WriteSafetensorsOptions {
  /** Start a new shard once one would exceed this many data bytes (default 2 GiB). */
  maxShardBytes?: number;
  /** File name prefix (default `model`). */
  prefix?: string;
}

/**
 * Writes tensors as `model-0000i-of-0000n.safetensors` shards plus
 * `model.safetensors.index.json` in `dir`; returns the shard file names.
 *
 * @example
 * ```ts
 * import { writeShardedSafetensors } from "./safetensors.ts";
 * const dir = await Deno.makeTempDir();
 * const t = { dtype: "f32" as const, shape: [4], data: new Float32Array(4) };
 * await writeShardedSafetensors(dir, { a: t, b: t }, { maxShardBytes: 16 }); // two shards
 * ```
 */
export async function writeShardedSafetensors(
  dir: string,
  tensors: NamedTensors,
  options: WriteShardedOptions = {},
): Promise<string[]> {
  const max = options.maxShardBytes ?? 2 ** 31;
  if (!(max > 0)) {
    throw new RangeError(
      `Cannot write sharded safetensors as 'maxShardBytes' must be positive: received ${max}`,
    );
  }
  const prefix = options.prefix ?? "model";
  const list = entriesOf(tensors);
  const shards: [string, Tensor][][] = [[]];
  let bytes = 0, total = 0;
  for (const item of list) {
    const size = item[1].data.byteLength;
    if (bytes > 0 && bytes + size > max) {
      shards.push([]);
      bytes = 0;
    }
    shards[shards.length - 1].push(item);
    bytes += size;
    total += size;
  }
  const pad = (i: number) => String(i).padStart(5, "0");
  const names = shards.map((_, i) =>
    `${prefix}-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`
  );
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < shards.length; i++) {
    await writeSafetensors(`${dir}/${names[i]}`, new Map(shards[i]), options);
    for (const [name] of shards[i]) weightMap[name] = names[i];
  }
  const index = { metadata: { total_size: total }, weight_map: weightMap };
  await Deno.writeTextFile(
    `${dir}/${prefix}.safetensors.index.json`,
    JSON.stringify(index, null, 2) + "\n",
  );
  return names;
}
