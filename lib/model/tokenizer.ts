/**
 * Tokenizers: the small interface every tokenizer of this module implements,
 * the llama2.c tokenizer (`tokenizer.bin` / `tok512.bin`: sentencepiece BPE
 * pieces with scores) and a streaming text decoder.
 *
 * llama2.c file format: int32 `max_token_length`, then per token: f32 score,
 * int32 byte length, the bytes. A leading space is part of a piece's text;
 * pieces `<0xNN>` are raw bytes.
 *
 * @module
 */

/** Options of {@linkcode Tokenizer.encode}. */
export interface EncodeOptions {
  /** Prepend the BOS token (default false). */
  bos?: boolean;
  /** Append the EOS token (default false). */
  eos?: boolean;
}

/** What every tokenizer of this module offers. */
export interface Tokenizer {
  /** Number of token ids. */
  readonly vocabSize: number;
  /** Beginning-of-sequence id, or -1 when the vocabulary has none. */
  readonly bosId: number;
  /** End-of-sequence id, or -1 when the vocabulary has none. */
  readonly eosId: number;
  /** Token ids of `text`. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Text of a token sequence; special tokens (BOS, EOS) produce no text. */
  decode(ids: ArrayLike<number>): string;
  /**
   * The UTF-8 bytes that `token` adds to the output when it follows `prev`
   * (pass -1 for the first token). Bytes, not a string, because a raw-byte
   * token may hold part of a multi-byte character; see
   * {@linkcode createTextStream}.
   */
  decodeToken(prev: number, token: number): Uint8Array;
}

/** Options of {@linkcode parseLlama2cTokenizer}. */
export interface Llama2cTokenizerOptions {
  /** Number of tokens to read; default: as many as the file holds. */
  vocabSize?: number;
  /** BOS id (default 1). */
  bosId?: number;
  /** EOS id (default 2). */
  eosId?: number;
  /** File name used in error messages. */
  name?: string;
}

/** The llama2.c tokenizer, with its vocabulary exposed for inspection. */
export interface Llama2cTokenizer extends Tokenizer {
  /** Bytes of every piece. */
  readonly pieces: readonly Uint8Array[];
  /** Merge score of every piece. */
  readonly scores: Float32Array;
  /** Longest piece in bytes, as the file's header says. */
  readonly maxTokenLength: number;
}

const EMPTY = new Uint8Array(0);
const latin1 = new TextDecoder("latin1");
const utf8 = new TextDecoder();
const utf8Encoder = new TextEncoder();

/**
 * Parses a llama2.c tokenizer file held in memory.
 *
 * Encoding follows llama2.c's `encode`: a dummy-prefix space token first
 * (when the text is not empty), then each UTF-8 character as its piece or as
 * `<0xNN>` byte pieces, then repeated merging of the adjacent pair whose
 * concatenation is the piece with the best score (leftmost on ties).
 * Decoding strips the leading space of the first piece after BOS (or at the
 * start), as sentencepiece does, so `decode(encode(s))` gives back `s`.
 *
 * @example
 * ```ts
 * import { parseLlama2cTokenizer } from "./tokenizer.ts";
 * const tok = parseLlama2cTokenizer(await Deno.readFile("models/stories260K/tok512.bin"));
 * const ids = tok.encode("Once upon a time", { bos: true });
 * tok.decode(ids); // "Once upon a time"
 * ```
 */
export function parseLlama2cTokenizer(
  bytes: Uint8Array,
  options: Llama2cTokenizerOptions = {},
): Llama2cTokenizer {
  const name = JSON.stringify(options.name ?? "<memory>");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (rule: string): never => {
    throw new RangeError(`Cannot load llama2.c tokenizer ${name} as ${rule}`);
  };
  if (bytes.byteLength < 4) {
    fail(`the file must start with a 4-byte header: received ${bytes.byteLength} bytes`);
  }
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength < 1 || maxTokenLength > 1024) {
    fail(`'max_token_length' must be between 1 and 1024: received ${maxTokenLength}`);
  }
  const pieces: Uint8Array[] = [];
  const scoreList: number[] = [];
  let at = 4;
  const limit = options.vocabSize ?? Infinity;
  while (pieces.length < limit && at < bytes.byteLength) {
    if (at + 8 > bytes.byteLength) {
      fail(
        `token ${pieces.length} is truncated: its record starts at byte ${at} of ${bytes.byteLength}`,
      );
    }
    const score = view.getFloat32(at, true);
    const len = view.getInt32(at + 4, true);
    if (len < 0 || len > maxTokenLength * 4 + 16 || at + 8 + len > bytes.byteLength) {
      fail(
        `token ${pieces.length} must have a length between 0 and the bytes left (${
          bytes.byteLength - at - 8
        }): received ${len}`,
      );
    }
    scoreList.push(score);
    pieces.push(bytes.slice(at + 8, at + 8 + len));
    at += 8 + len;
  }
  if (options.vocabSize !== undefined && pieces.length < options.vocabSize) {
    fail(`it must hold ${options.vocabSize} tokens: received ${pieces.length} (truncated?)`);
  }
  if (pieces.length === 0) fail("it must hold at least one token: received 0");
  return new Llama2cTokenizerImpl(
    pieces,
    Float32Array.from(scoreList),
    maxTokenLength,
    options.bosId ?? 1,
    options.eosId ?? 2,
  );
}

/**
 * Reads a llama2.c tokenizer file (see {@linkcode parseLlama2cTokenizer}).
 *
 * @example
 * ```ts
 * import { loadLlama2cTokenizer } from "./tokenizer.ts";
 * const tok = await loadLlama2cTokenizer("models/stories260K/tok512.bin");
 * tok.vocabSize; // 512
 * ```
 */
export async function loadLlama2cTokenizer(
  path: string | URL,
  options: Llama2cTokenizerOptions = {},
): Promise<Llama2cTokenizer> {
  return parseLlama2cTokenizer(await Deno.readFile(path), { name: String(path), ...options });
}

class Llama2cTokenizerImpl implements Llama2cTokenizer {
  readonly vocabSize: number;
  /** piece text (bytes as latin1 chars) -> id; first id wins on duplicates */
  #lookup = new Map<string, number>();
  #keys: string[];
  #byteIds: Int32Array;
  /** decoded bytes per id (raw-byte pieces resolved) */
  #out: Uint8Array[];

  constructor(
    readonly pieces: readonly Uint8Array[],
    readonly scores: Float32Array,
    readonly maxTokenLength: number,
    readonly bosId: number,
    readonly eosId: number,
  ) {
    this.vocabSize = pieces.length;
    this.#keys = pieces.map((p) => latin1.decode(p));
    this.#keys.forEach((k, i) => {
      if (!this.#lookup.has(k)) this.#lookup.set(k, i);
    });
    this.#byteIds = new Int32Array(256).fill(-1);
    this.#out = pieces.map((p, i) => {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(this.#keys[i]);
      if (m) {
        const b = parseInt(m[1], 16);
        if (this.#byteIds[b] < 0) this.#byteIds[b] = i;
        return Uint8Array.of(b);
      }
      return p;
    });
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== "string") {
      throw new TypeError(`Cannot encode text as 'text' must be a string: received ${typeof text}`);
    }
    const ids: number[] = [];
    if (text.length > 0) {
      const space = this.#lookup.get(" ");
      if (space !== undefined) ids.push(space);
      for (const ch of text) {
        const bytes = utf8Encoder.encode(ch);
        const id = this.#lookup.get(latin1.decode(bytes));
        if (id !== undefined) {
          ids.push(id);
          continue;
        }
        for (const b of bytes) {
          const bid = this.#byteIds[b];
          if (bid < 0) {
            throw new RangeError(
              `Cannot encode text as the vocabulary has neither ${
                JSON.stringify(ch)
              } nor the byte piece <0x${b.toString(16).toUpperCase().padStart(2, "0")}>`,
            );
          }
          ids.push(bid);
        }
      }
      this.#merge(ids);
    }
    if (options.bos) ids.unshift(this.#special("bos", this.bosId));
    if (options.eos) ids.push(this.#special("eos", this.eosId));
    return ids;
  }

  #special(kind: string, id: number): number {
    if (id < 0 || id >= this.vocabSize) {
      throw new RangeError(
        `Cannot encode text with ${kind} as the tokenizer's '${kind}Id' must be a token id: received ${id}`,
      );
    }
    return id;
  }

  /** Merges best-scoring adjacent pairs in place until none is in the vocabulary. */
  #merge(ids: number[]): void {
    const keys = this.#keys, lookup = this.#lookup, scores = this.scores;
    // pair[i]: merged id of (ids[i], ids[i+1]) or -1.
    const pairOf = (i: number) => lookup.get(keys[ids[i]] + keys[ids[i + 1]]) ?? -1;
    const pair: number[] = [];
    for (let i = 0; i + 1 < ids.length; i++) pair.push(pairOf(i));
    for (;;) {
      let best = -1, bestScore = -Infinity;
      for (let i = 0; i < pair.length; i++) {
        const id = pair[i];
        if (id >= 0 && scores[id] > bestScore) {
          bestScore = scores[id];
          best = i;
        }
      }
      if (best < 0) return;
      ids[best] = pair[best];
      ids.splice(best + 1, 1);
      pair.splice(best, 1);
      if (best > 0) pair[best - 1] = pairOf(best - 1);
      if (best < pair.length) pair[best] = pairOf(best);
    }
  }

  decodeToken(prev: number, token: number): Uint8Array {
    this.#checkId(token);
    if (token === this.bosId || token === this.eosId) return EMPTY;
    const out = this.#out[token];
    // sentencepiece drops the dummy-prefix space at the start of the text
    if ((prev < 0 || prev === this.bosId) && out.length > 0 && out[0] === 0x20) {
      return out.subarray(1);
    }
    return out;
  }

  decode(ids: ArrayLike<number>): string {
    const parts: Uint8Array[] = [];
    let total = 0, prev = -1;
    for (let i = 0; i < ids.length; i++) {
      const bytes = this.decodeToken(prev, ids[i]);
      parts.push(bytes);
      total += bytes.length;
      prev = ids[i];
    }
    const all = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return utf8.decode(all);
  }

  #checkId(token: number): void {
    if (!Number.isInteger(token) || token < 0 || token >= this.vocabSize) {
      throw new RangeError(
        `Cannot decode token as 'token' must be an integer id in [0, ${this.vocabSize}): received ${token}`,
      );
    }
  }
}

/** Incremental text output of a token stream. */
export interface TextStream {
  /** Text completed by `token` (may be empty while a character is split across tokens). */
  push(token: number): string;
  /** Text still held back (an incomplete character at the end), and a reset. */
  flush(): string;
}

/**
 * Turns generated tokens into text one token at a time, holding back bytes of
 * characters split across tokens.
 *
 * @example
 * ```ts
 * import { createTextStream, parseLlama2cTokenizer } from "./tokenizer.ts";
 * const tok = parseLlama2cTokenizer(await Deno.readFile("models/stories260K/tok512.bin"));
 * const stream = createTextStream(tok);
 * let text = "";
 * for (const id of tok.encode("héllo", { bos: true })) text += stream.push(id);
 * text += stream.flush(); // text === "héllo"
 * ```
 */
export function createTextStream(tokenizer: Tokenizer): TextStream {
  let prev = -1;
  let decoder = new TextDecoder();
  return {
    push(token: number): string {
      const bytes = tokenizer.decodeToken(prev, token);
      prev = token;
      return decoder.decode(bytes, { stream: true });
    },
    flush(): string {
      const rest = decoder.decode();
      decoder = new TextDecoder();
      prev = -1;
      return rest;
    },
  };
}
