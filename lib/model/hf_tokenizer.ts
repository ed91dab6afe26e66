/**
 * Hugging Face `tokenizer.json` tokenizers (BPE, byte-level BPE, WordPiece,
 * Unigram, ...) through the `@huggingface/tokenizers` npm package, behind
 * the module's {@linkcode Tokenizer} interface. The package is imported on
 * first use, so code that never loads an HF tokenizer never fetches it.
 *
 * `encode` never adds special tokens by itself (BOS/EOS come only from the
 * `bos`/`eos` options). `decodeToken` gives exact bytes for byte-level
 * (GPT-2 style) and sentencepiece-style (`▁`, `<0xNN>` byte fallback)
 * vocabularies; for other decoders it falls back to decoding text.
 *
 * @module
 */

import type { EncodeOptions, Tokenizer } from "./tokenizer.ts";

/** Options of {@linkcode createHfTokenizer}. */
export interface HfTokenizerOptions {
  /** Parsed `tokenizer_config.json` (names `bos_token`/`eos_token`). */
  tokenizerConfig?: Record<string, unknown>;
  /** BOS id; default from `tokenizerConfig`, then common names (`<s>`, `<|begin_of_text|>`, ...). */
  bosId?: number;
  /** EOS id; default from `tokenizerConfig`, then common names (`</s>`, `<|endoftext|>`, ...). */
  eosId?: number;
}

const BOS_NAMES = ["<s>", "<|begin_of_text|>", "<bos>", "[CLS]"];
const EOS_NAMES = ["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[SEP]"];

interface HfTokenizerLike {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: Record<string, unknown>): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_vocab(withAdded?: boolean): Map<string, number>;
}

interface DecoderConfig {
  type?: string;
  decoders?: DecoderConfig[];
  pattern?: { String?: string };
  content?: string;
  replacement?: string;
  start?: number;
  prepend_scheme?: string;
  add_prefix_space?: boolean;
}

/** GPT-2's printable stand-ins for bytes, reversed: char code -> byte. */
function unicodeToBytes(): Map<number, number> {
  const map = new Map<number, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) ||
      (b >= 0xae && b <= 0xff);
    map.set(printable ? b : 256 + extra++, b);
  }
  return map;
}

function flatten(d: DecoderConfig | null | undefined): DecoderConfig[] {
  if (!d) return [];
  return d.type === "Sequence" ? (d.decoders ?? []).flatMap(flatten) : [d];
}

function tokenText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (
    value && typeof value === "object" &&
    typeof (value as { content?: unknown }).content === "string"
  ) {
    return (value as { content: string }).content;
  }
  return undefined;
}

const utf8 = new TextEncoder();
const EMPTY = new Uint8Array(0);

/**
 * Builds a tokenizer from a parsed `tokenizer.json`.
 *
 * @example
 * ```ts
 * import { createHfTokenizer } from "./hf_tokenizer.ts";
 * const tok = await createHfTokenizer({
 *   model: { type: "WordLevel", vocab: { "<unk>": 0, hello: 1, world: 2 }, unk_token: "<unk>" },
 *   pre_tokenizer: { type: "Whitespace" },
 *   decoder: null,
 *   added_tokens: [],
 * });
 * tok.encode("hello world"); // [1, 2]
 * ```
 */
export async function createHfTokenizer(
  tokenizerJson: Record<string, unknown>,
  options: HfTokenizerOptions = {},
): Promise<Tokenizer> {
  if (tokenizerJson === null || typeof tokenizerJson !== "object" || !tokenizerJson.model) {
    throw new TypeError("Cannot create HF tokenizer as field 'model' of tokenizer.json is missing");
  }
  // Pinned inline until deno.json maps it; imported lazily (see module doc).
  const { Tokenizer: Impl } = await import("@huggingface/tokenizers");
  // The package insists on these keys; tokenizer.json files may omit them.
  const json = {
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    ...tokenizerJson,
  };
  let tk: HfTokenizerLike;
  try {
    tk = new Impl(json, options.tokenizerConfig ?? {}) as unknown as HfTokenizerLike;
  } catch (error) {
    throw new TypeError(`Cannot create HF tokenizer: ${(error as Error).message}`);
  }
  return new HfTokenizer(tk, json, options);
}

/**
 * Loads `tokenizer.json` (a file, or a directory holding it), with
 * `tokenizer_config.json` from the same directory when present.
 *
 * @example
 * ```ts
 * import { createHfTokenizer, loadHfTokenizer } from "./hf_tokenizer.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify({
 *   model: { type: "WordLevel", vocab: { "<unk>": 0, hi: 1 }, unk_token: "<unk>" },
 *   pre_tokenizer: { type: "Whitespace" },
 * }));
 * const tok = await loadHfTokenizer(dir);
 * tok.vocabSize; // 2
 * ```
 */
export async function loadHfTokenizer(
  path: string,
  options: HfTokenizerOptions = {},
): Promise<Tokenizer> {
  let file = path;
  if ((await Deno.stat(path)).isDirectory) file = `${path.replace(/\/$/, "")}/tokenizer.json`;
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
  const parse = (text: string, name: string) => {
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new TypeError(
        `Cannot load HF tokenizer as ${JSON.stringify(name)} must be JSON: ${
          (error as Error).message
        }`,
      );
    }
  };
  const json = parse(await Deno.readTextFile(file), file);
  let tokenizerConfig = options.tokenizerConfig;
  if (!tokenizerConfig) {
    const configPath = `${dir}/tokenizer_config.json`;
    try {
      tokenizerConfig = parse(await Deno.readTextFile(configPath), configPath);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  return await createHfTokenizer(json, { ...options, tokenizerConfig });
}

class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  #tk: HfTokenizerLike;
  #special = new Set<number>();
  #added = new Map<number, string>();
  #mode: "bytelevel" | "sentencepiece" | "generic";
  #byteMap = unicodeToBytes();
  #space = "▁";
  #byteFallback = false;
  #stripFirst = false;
  #unkId = -1;

  constructor(tk: HfTokenizerLike, json: Record<string, unknown>, options: HfTokenizerOptions) {
    this.#tk = tk;
    let max = -1;
    for (const id of tk.get_vocab(true).values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
    for (
      const t of (json.added_tokens ?? []) as { id: number; content: string; special?: boolean }[]
    ) {
      this.#added.set(t.id, t.content);
      if (t.special) this.#special.add(t.id);
    }
    const unk = (json.model as { unk_token?: unknown }).unk_token;
    if (typeof unk === "string") this.#unkId = tk.token_to_id(unk) ?? -1;
    const cfg = options.tokenizerConfig ?? {};
    const find = (explicit: number | undefined, named: unknown, names: string[]) => {
      if (explicit !== undefined) return explicit;
      const n = tokenText(named);
      const id = n !== undefined ? tk.token_to_id(n) : undefined;
      if (id !== undefined) return id;
      for (const name of names) {
        const i = tk.token_to_id(name);
        if (i !== undefined) return i;
      }
      return -1;
    };
    this.bosId = find(options.bosId, cfg.bos_token, BOS_NAMES);
    this.eosId = find(options.eosId, cfg.eos_token, EOS_NAMES);
    const decoders = flatten(json.decoder as DecoderConfig | null);
    const types = new Set(decoders.map((d) => d.type));
    if (types.has("ByteLevel")) this.#mode = "bytelevel";
    else if (types.has("ByteFallback") || types.has("Metaspace") || types.has("Replace")) {
      this.#mode = "sentencepiece";
      this.#byteFallback = types.has("ByteFallback");
      for (const d of decoders) {
        if (d.type === "Metaspace") {
          this.#space = d.replacement ?? "▁";
          this.#stripFirst ||= d.prepend_scheme !== "never" && d.add_prefix_space !== false;
        }
        if (d.type === "Replace" && d.pattern?.String && d.content === " ") {
          this.#space = d.pattern.String;
        }
        if (d.type === "Strip" && (d.start ?? 0) > 0 && (d.content ?? " ") === " ") {
          this.#stripFirst = true;
        }
      }
    } else this.#mode = "generic";
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== "string") {
      throw new TypeError(`Cannot encode text as 'text' must be a string: received ${typeof text}`);
    }
    const ids = text.length > 0 ? this.#tk.encode(text, { add_special_tokens: false }).ids : [];
    for (let i = 0; i < ids.length; i++) {
      // Models without an unknown-token id in the package (WordLevel) leave holes.
      if (ids[i] === undefined) {
        if (this.#unkId < 0) {
          throw new RangeError(
            `Cannot encode text as a piece is not in the vocabulary and there is no unknown token: received ${
              JSON.stringify(text)
            }`,
          );
        }
        ids[i] = this.#unkId;
      }
    }
    const special = (kind: "bos" | "eos", id: number) => {
      if (id < 0) {
        throw new RangeError(
          `Cannot encode text with ${kind} as the tokenizer has no ${kind.toUpperCase()} token: received ${kind}Id ${id}`,
        );
      }
      return id;
    };
    if (options.bos) ids.unshift(special("bos", this.bosId));
    if (options.eos) ids.push(special("eos", this.eosId));
    return ids;
  }

  decode(ids: ArrayLike<number>): string {
    const list = Array.from(ids).filter((id) => {
      this.#check(id);
      return !this.#special.has(id) && id !== this.bosId && id !== this.eosId;
    });
    if (list.length === 0) return "";
    return this.#tk.decode(list, {
      skip_special_tokens: true,
      clean_up_tokenization_spaces: false,
    });
  }

  decodeToken(prev: number, token: number): Uint8Array {
    this.#check(token);
    if (this.#special.has(token) || token === this.bosId || token === this.eosId) return EMPTY;
    const added = this.#added.get(token);
    if (added !== undefined) return utf8.encode(added);
    const piece = this.#tk.id_to_token(token) ?? "";
    const first = prev < 0 || prev === this.bosId;
    if (this.#mode === "bytelevel") {
      const out: number[] = [];
      for (const ch of piece) {
        const b = this.#byteMap.get(ch.codePointAt(0)!);
        if (b === undefined) return utf8.encode(this.#tk.decode([token]));
        out.push(b);
      }
      return Uint8Array.from(out);
    }
    if (this.#mode === "sentencepiece") {
      const m = this.#byteFallback ? /^<0x([0-9A-Fa-f]{2})>$/.exec(piece) : null;
      if (m) return Uint8Array.of(parseInt(m[1], 16));
      let text = piece.replaceAll(this.#space, " ");
      if (first && this.#stripFirst && text.startsWith(" ")) text = text.slice(1);
      return utf8.encode(text);
    }
    if (first) return utf8.encode(this.decode([token]));
    const both = this.decode([prev, token]), before = this.decode([prev]);
    return utf8.encode(both.startsWith(before) ? both.slice(before.length) : this.decode([token]));
  }

  #check(token: number): void {
    if (!Number.isInteger(token) || token < 0 || token >= this.vocabSize) {
      throw new RangeError(
        `Cannot decode token as 'token' must be an integer id in [0, ${this.vocabSize}): received ${token}`,
      );
    }
  }
}
