/**
 * Recorded attention traces: the per-layer q, k, v of every token of a real
 * model run, so benchmarks and the accuracy harness can replay real attention
 * without the model.
 *
 * File format (little-endian):
 * - 8 bytes magic `FKVTRACE`, u32 version (1), u32 header byte length `n`;
 * - `n` bytes of UTF-8 JSON: {@linkcode TraceHeader};
 * - then, token-major, for every token t (prompt first, then generated) and
 *   every layer l: q `[Hq][d]`, k `[Hkv][d]`, v `[Hkv][d]` as f32 (post-RoPE).
 *
 * The token count follows from the file size.
 *
 * @module
 */

import { assertHeadsDivide, assertInteger, assertLength } from "../gpu/errors.ts";

const MAGIC = "FKVTRACE";
const VERSION = 1;

/** The JSON header of a trace file. */
export interface TraceHeader {
  /** Decoder layers recorded. */
  numLayers: number;
  /** Query heads. */
  numQueryHeads: number;
  /** Key/value heads. */
  numKvHeads: number;
  /** Per-head size. */
  headDim: number;
  /** Tokens that belong to the prompt (the rest were generated). */
  promptLength: number;
  /** Free-form description of the model. */
  model?: string;
  /** The token ids, when known. */
  tokens?: number[];
}

/** A whole trace in memory. */
export interface Trace {
  /** The header. */
  header: TraceHeader;
  /** Tokens recorded. */
  numTokens: number;
  /** q of token `t` at `layer`: `[Hq * d]` view. */
  q(t: number, layer: number): Float32Array;
  /** k of token `t` at `layer`: `[Hkv * d]` view. */
  k(t: number, layer: number): Float32Array;
  /** v of token `t` at `layer`: `[Hkv * d]` view. */
  v(t: number, layer: number): Float32Array;
}

/** Streams a trace to a file. */
export interface TraceWriter {
  /** Appends one layer of one token; calls come token-major, layers 0..L-1. */
  append(layer: number, q: Float32Array, k: Float32Array, v: Float32Array): void;
  /** Flushes and closes the file. */
  close(): Promise<void>;
}

function recordFloats(h: TraceHeader): number {
  return h.numQueryHeads * h.headDim + 2 * h.numKvHeads * h.headDim;
}

function checkHeader(h: TraceHeader, action: string): void {
  assertInteger("numLayers", h.numLayers, action, 1);
  assertHeadsDivide(h.numQueryHeads, h.numKvHeads, action);
  assertInteger("headDim", h.headDim, action, 1);
  assertInteger("promptLength", h.promptLength, action, 0);
}

/**
 * Encodes a header into the bytes that start a trace file.
 *
 * @example
 * ```ts
 * import { encodeTraceHeader } from "./trace.ts";
 * const bytes = encodeTraceHeader({ numLayers: 1, numQueryHeads: 2, numKvHeads: 1, headDim: 4, promptLength: 0 });
 * console.log(new TextDecoder().decode(bytes.subarray(0, 8))); // FKVTRACE
 * ```
 */
export function encodeTraceHeader(header: TraceHeader): Uint8Array {
  checkHeader(header, "write a trace");
  const json = new TextEncoder().encode(JSON.stringify(header));
  // Pad so the f32 records start 4-byte aligned.
  const padded = Math.ceil(json.length / 4) * 4;
  const out = new Uint8Array(16 + padded).fill(0x20);
  out.set(new TextEncoder().encode(MAGIC), 0);
  const view = new DataView(out.buffer);
  view.setUint32(8, VERSION, true);
  view.setUint32(12, padded, true);
  out.set(json, 16);
  return out;
}

/**
 * Opens `path` for writing a trace; records are buffered and written in
 * large blocks.
 *
 * @example
 * ```ts
 * import { createTraceWriter, readTrace } from "./trace.ts";
 * const path = await Deno.makeTempFile();
 * const w = await createTraceWriter(path, { numLayers: 1, numQueryHeads: 2, numKvHeads: 1, headDim: 2, promptLength: 1 });
 * w.append(0, new Float32Array(4), new Float32Array(2), new Float32Array(2));
 * await w.close();
 * console.log((await readTrace(path)).numTokens); // 1
 * ```
 */
export async function createTraceWriter(path: string, header: TraceHeader): Promise<TraceWriter> {
  const head = encodeTraceHeader(header);
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  let pending: Uint8Array[] = [head];
  let pendingBytes = head.length;
  let nextLayer = 0;
  const flush = async () => {
    const block = new Uint8Array(pendingBytes);
    let at = 0;
    for (const p of pending) block.set(p, at), at += p.length;
    pending = [];
    pendingBytes = 0;
    for (let off = 0; off < block.length;) off += await file.write(block.subarray(off));
  };
  let writing: Promise<void> = Promise.resolve();
  const qLen = header.numQueryHeads * header.headDim;
  const kvLen = header.numKvHeads * header.headDim;
  return {
    append(layer, q, k, v) {
      if (layer !== nextLayer) {
        throw new RangeError(
          `Cannot append to a trace as 'layer' must be ${nextLayer} (token-major order): received ${layer}`,
        );
      }
      assertLength("q", q, qLen, "append to a trace");
      assertLength("k", k, kvLen, "append to a trace");
      assertLength("v", v, kvLen, "append to a trace");
      const rec = new Float32Array(qLen + 2 * kvLen);
      rec.set(q, 0);
      rec.set(k, qLen);
      rec.set(v, qLen + kvLen);
      pending.push(new Uint8Array(rec.buffer));
      pendingBytes += rec.byteLength;
      nextLayer = (nextLayer + 1) % header.numLayers;
      if (pendingBytes > 1 << 22) writing = writing.then(flush);
    },
    async close() {
      await writing;
      await flush();
      file.close();
    },
  };
}

/**
 * Parses a trace from bytes.
 *
 * @example
 * ```ts
 * import { encodeTraceHeader, parseTrace } from "./trace.ts";
 * const h = { numLayers: 1, numQueryHeads: 1, numKvHeads: 1, headDim: 1, promptLength: 1 };
 * const head = encodeTraceHeader(h);
 * const bytes = new Uint8Array(head.length + 12);
 * bytes.set(head);
 * console.log(parseTrace(bytes).numTokens); // 1
 * ```
 */
export function parseTrace(bytes: Uint8Array): Trace {
  if (bytes.length < 16 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    throw new TypeError(`Cannot read a trace as the file must start with "${MAGIC}"`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (version !== VERSION) {
    throw new RangeError(
      `Cannot read a trace as 'version' must be ${VERSION}: received ${version}`,
    );
  }
  const headerBytes = view.getUint32(12, true);
  if (16 + headerBytes > bytes.length) {
    throw new RangeError(
      `Cannot read a trace as the header length must fit in the file (${bytes.length} bytes): received ${headerBytes}`,
    );
  }
  let header: TraceHeader;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(16, 16 + headerBytes)));
  } catch (error) {
    throw new TypeError(
      `Cannot read a trace as its header is not valid JSON: ${(error as Error).message}`,
    );
  }
  checkHeader(header, "read a trace");
  const perToken = recordFloats(header) * header.numLayers * 4;
  const body = bytes.length - 16 - headerBytes;
  if (body % perToken !== 0) {
    throw new RangeError(
      `Cannot read a trace as its body must be a whole number of ${perToken}-byte tokens: received ${body} bytes`,
    );
  }
  const numTokens = body / perToken;
  const aligned = (bytes.byteOffset + 16 + headerBytes) % 4 === 0 ? bytes : bytes.slice();
  const base = aligned === bytes ? bytes.byteOffset + 16 + headerBytes : 16 + headerBytes;
  const floats = new Float32Array(aligned.buffer, base, body / 4);
  const qLen = header.numQueryHeads * header.headDim;
  const kvLen = header.numKvHeads * header.headDim;
  const rec = recordFloats(header);
  const at = (t: number, layer: number) => {
    assertInteger("t", t, "read a trace record", 0, numTokens - 1);
    assertInteger("layer", layer, "read a trace record", 0, header.numLayers - 1);
    return (t * header.numLayers + layer) * rec;
  };
  return {
    header,
    numTokens,
    q: (t, l) => floats.subarray(at(t, l), at(t, l) + qLen),
    k: (t, l) => floats.subarray(at(t, l) + qLen, at(t, l) + qLen + kvLen),
    v: (t, l) => floats.subarray(at(t, l) + qLen + kvLen, at(t, l) + rec),
  };
}

/**
 * Reads a trace file written by {@linkcode createTraceWriter}.
 *
 * @example
 * ```ts
 * import { encodeTraceHeader, readTrace } from "./trace.ts";
 * // A one-token trace of one layer (q, k, v of one value each) written by hand.
 * const head = encodeTraceHeader({ numLayers: 1, numQueryHeads: 1, numKvHeads: 1, headDim: 1, promptLength: 1 });
 * const path = await Deno.makeTempFile({ suffix: ".fkvtrace" });
 * await Deno.writeFile(path, new Uint8Array([...head, ...new Uint8Array(12)]));
 * const trace = await readTrace(path);
 * console.log(trace.header.numLayers, trace.numTokens); // 1 1
 * await Deno.remove(path);
 * ```
 */
export async function readTrace(path: string): Promise<Trace> {
  return parseTrace(await Deno.readFile(path));
}
