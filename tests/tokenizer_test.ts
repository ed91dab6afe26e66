// Tokenizers: llama2.c's tok512.bin (against a literal re-statement of
// llama2.c's encode loop) and Hugging Face tokenizer.json files written here.
import assert from "node:assert/strict";
import { createHfTokenizer, loadHfTokenizer } from "../lib/model/hf_tokenizer.ts";
import { loadTokenizer } from "../lib/model/load.ts";
import {
  createTextStream,
  type Llama2cTokenizer,
  loadLlama2cTokenizer,
  parseLlama2cTokenizer,
  type Tokenizer,
} from "../lib/model/tokenizer.ts";
import { createRandom } from "../lib/workloads/random.ts";

const TOK = new URL("../models/stories260K/tok512.bin", import.meta.url).pathname;
const BYTES = await Deno.readFile(TOK);
const tok = await loadLlama2cTokenizer(TOK);

const TEXTS = [
  "",
  "a",
  " ",
  "Once upon a time, there was a little girl named Lily.",
  "  leading and trailing spaces  ",
  "line one\nline two\n\n\ttabbed\r\n",
  "Lets try ö & 株式会社",
  "emoji 🙂👍🏽 and 𒎗𓐍",
  "[INST]\n<<<SYS>>>test<<</SYS>>>\nhello[/INST]\n",
  "nul\u0000byte and \u007f del",
  "0123456789 !@#$%^&*()_+-=[]{};':\",./<>?",
];

/** Streams ids through decodeToken + createTextStream. */
function streamed(t: Tokenizer, ids: number[]): string {
  const s = createTextStream(t);
  return ids.map((id) => s.push(id)).join("") + s.flush();
}

/** llama2.c's encode, restated literally: rescan all pairs after every merge. */
function llama2cEncode(t: Llama2cTokenizer, text: string): number[] {
  const latin = new TextDecoder("latin1");
  const strs = t.pieces.map((p) => latin.decode(p));
  const lookup = (s: string) => strs.indexOf(s);
  const ids: number[] = [];
  if (text === "") return ids;
  ids.push(lookup(" "));
  for (const ch of text) {
    const b = new TextEncoder().encode(ch);
    const id = lookup(latin.decode(b));
    if (id >= 0) ids.push(id);
    else b.forEach((x) => ids.push(x + 3));
  }
  for (;;) {
    let best = -1e10, bestId = -1, bestIdx = -1;
    for (let i = 0; i < ids.length - 1; i++) {
      const id = lookup(strs[ids[i]] + strs[ids[i + 1]]);
      if (id !== -1 && t.scores[id] > best) {
        best = t.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) return ids;
    ids.splice(bestIdx, 2, bestId);
  }
}

Deno.test("llama2.c tokenizer: tok512 header and special pieces", () => {
  assert.equal(tok.vocabSize, 512);
  assert.equal(tok.maxTokenLength, 7);
  assert.deepEqual([tok.bosId, tok.eosId], [1, 2]);
  const text = (i: number) => new TextDecoder().decode(tok.pieces[i]);
  assert.deepEqual([text(0), text(1), text(2), text(3), text(258)], [
    "<unk>",
    "\n<s>\n",
    "\n</s>\n",
    "<0x00>",
    "<0xFF>",
  ]);
  assert.equal(tok.scores[260], -1);
});

Deno.test("llama2.c tokenizer: encode matches llama2.c's loop and round-trips", () => {
  const rng = createRandom(11);
  const alphabet = "abcdefghijklmnopqrstuvwxyz   ,.!?\nÖé株🙂'\"TLS";
  const random = Array.from({ length: 40 }, () => {
    const n = rng.int(30);
    return Array.from({ length: n }, () => [...alphabet][rng.int([...alphabet].length)]).join("");
  });
  for (const text of [...TEXTS, ...random]) {
    const ids = tok.encode(text);
    assert.deepEqual(ids, llama2cEncode(tok, text), JSON.stringify(text));
    assert.equal(tok.decode(ids), text);
    assert.equal(streamed(tok, ids), text);
    const withSpecial = tok.encode(text, { bos: true, eos: true });
    assert.deepEqual(withSpecial, [1, ...ids, 2]);
    assert.equal(tok.decode(withSpecial), text);
    assert.equal(streamed(tok, withSpecial), text);
  }
  assert.deepEqual(tok.encode(""), []);
  assert.deepEqual(tok.encode("", { bos: true }), [1]);
  // Merging shortens text a lot; the first piece carries the dummy-prefix space.
  const ids = tok.encode("Once upon a time");
  assert.ok(ids.length <= 8, `${ids.length} tokens`);
  assert.equal(tok.pieces[ids[0]][0], 0x20);
});

Deno.test("llama2.c tokenizer: decodeToken strips the space after BOS, raw bytes stream", () => {
  const [once] = tok.encode("Once");
  const dec = (prev: number, id: number) => new TextDecoder().decode(tok.decodeToken(prev, id));
  assert.equal(dec(1, once), "Once");
  assert.equal(dec(-1, once), "Once");
  assert.equal(dec(300, once), " Once");
  assert.equal(dec(300, 1), "");
  assert.equal(dec(300, 2), "");
  const ids = tok.encode("株");
  // " " then three byte pieces (0xE6 0xA0 0xAA); text completes on the last one.
  assert.deepEqual(ids.slice(1), [0xe6 + 3, 0xa0 + 3, 0xaa + 3]);
  const s = createTextStream(tok);
  assert.deepEqual(ids.map((id) => s.push(id)), ["", "", "", "株"]);
  assert.throws(() => tok.decodeToken(0, 512), {
    name: "RangeError",
    message: /'token' must be an integer id in \[0, 512\): received 512/,
  });
  assert.throws(() => tok.encode(5 as unknown as string), /'text' must be a string/);
});

Deno.test("llama2.c tokenizer: truncated or corrupt files", () => {
  const fails = (bytes: Uint8Array, re: RegExp, vocabSize?: number) =>
    assert.throws(() => parseLlama2cTokenizer(bytes, { name: "t.bin", vocabSize }), {
      name: "RangeError",
      message: re,
    });
  fails(
    BYTES.subarray(0, 2),
    /"t\.bin" as the file must start with a 4-byte header: received 2 bytes/,
  );
  fails(
    BYTES.subarray(0, BYTES.length - 2),
    /token 511 must have a length between 0 and the bytes left \(\d+\): received \d+/,
  );
  fails(
    BYTES.subarray(0, BYTES.length - 8),
    /token 511 is truncated: its record starts at byte \d+ of \d+/,
  );
  fails(BYTES, /it must hold 600 tokens: received 512 \(truncated\?\)/, 600);
  const bad = BYTES.slice();
  new DataView(bad.buffer).setInt32(0, -3, true);
  fails(bad, /'max_token_length' must be between 1 and 1024: received -3/);
  assert.equal(parseLlama2cTokenizer(BYTES, { vocabSize: 300 }).vocabSize, 300);
});

// ---------------------------------------------------------------------------
// Hugging Face tokenizer.json

/** GPT-2's byte -> printable char table. */
function byteChars(): string[] {
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) ||
      (b >= 0xae && b <= 0xff);
    out.push(String.fromCodePoint(printable ? b : 256 + extra++));
  }
  return out;
}

function byteLevelJson(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, i) => vocab[c] = i);
  const merges = [["Ġ", "t"], ["l", "l"], ["e", "ll"], ["h", "ell"], ["hell", "o"], ["h", "e"], [
    "Ġt",
    "he",
  ]];
  for (const [a, b] of merges) vocab[a + b] = Object.keys(vocab).length;
  const eot = Object.keys(vocab).length;
  vocab["<|endoftext|>"] = eot;
  return {
    version: "1.0",
    added_tokens: [{ id: eot, content: "<|endoftext|>", special: true }],
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: {
      type: "ByteLevel",
      add_prefix_space: true,
      trim_offsets: false,
      use_regex: true,
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", vocab, merges: merges.map((m) => m.join(" ")), unk_token: null },
  };
}

/** A Llama-2 style tokenizer.json: ▁ pieces, byte fallback, BOS/EOS. */
function sentencepieceJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
  for (let b = 0; b < 256; b++) {
    vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
  }
  const merges = [
    ["▁", "h"],
    ["▁", "t"],
    ["l", "l"],
    ["h", "e"],
    ["▁h", "e"],
    ["▁he", "ll"],
    ["▁hell", "o"],
    ["▁", "w"],
    ["o", "r"],
    ["▁w", "or"],
    ["l", "d"],
    ["▁wor", "ld"],
  ];
  for (const p of ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "a", "é"]) {
    vocab[p] = Object.keys(vocab).length;
  }
  for (const [a, b] of merges) vocab[a + b] ??= Object.keys(vocab).length;
  return {
    added_tokens: [0, 1, 2].map((id) => ({
      id,
      content: ["<unk>", "<s>", "</s>"][id],
      special: true,
    })),
    normalizer: {
      type: "Sequence",
      normalizers: [{ type: "Prepend", prepend: "▁" }, {
        type: "Replace",
        pattern: { String: " " },
        content: "▁",
      }],
    },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      vocab,
      merges: merges.map((m) => m.join(" ")),
      unk_token: "<unk>",
      byte_fallback: true,
      fuse_unk: true,
    },
  };
}

Deno.test("HF tokenizer: byte-level BPE round-trips any text, streams bytes", async () => {
  const t = await createHfTokenizer(byteLevelJson());
  assert.equal(t.vocabSize, 264);
  assert.deepEqual([t.bosId, t.eosId], [-1, 263]);
  assert.deepEqual(t.encode("hello the"), [260, 262]);
  for (const text of TEXTS) {
    const ids = t.encode(text, { eos: true });
    assert.equal(ids.at(-1), 263);
    assert.equal(t.decode(ids), text, JSON.stringify(text));
    assert.equal(streamed(t, ids), text, JSON.stringify(text));
  }
  assert.throws(() => t.encode("x", { bos: true }), {
    name: "RangeError",
    message: /no BOS token: received bosId -1/,
  });
  // One character split over byte tokens: nothing until it is complete.
  const s = createTextStream(t);
  assert.deepEqual(t.encode("株").map((id) => s.push(id)), ["", "", "株"]);
});

Deno.test("HF tokenizer: sentencepiece style with byte fallback and BOS", async () => {
  const t = await createHfTokenizer(sentencepieceJson());
  assert.deepEqual([t.bosId, t.eosId], [1, 2]);
  const hello = t.encode("hello world", { bos: true });
  assert.equal(hello.length, 3);
  const dec = (prev: number, id: number) => new TextDecoder().decode(t.decodeToken(prev, id));
  assert.equal(dec(1, hello[1]), "hello");
  assert.equal(dec(hello[1], hello[2]), " world");
  for (const text of ["hello world", "héllo\n  wörld 株 🙂", "", "  two leading", "tail  "]) {
    const ids = t.encode(text, { bos: true, eos: true });
    assert.equal(t.decode(ids), text, JSON.stringify(text));
    assert.equal(streamed(t, ids), text, JSON.stringify(text));
  }
});

Deno.test("HF tokenizer: loads from a directory with tokenizer_config.json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "freekv_tok_" });
  try {
    await Deno.writeTextFile(
      `${dir}/tokenizer.json`,
      JSON.stringify({
        model: {
          type: "WordLevel",
          vocab: { "[UNK]": 0, "<go>": 1, "<stop>": 2, hello: 3, world: 4 },
          unk_token: "[UNK]",
        },
        pre_tokenizer: { type: "Whitespace" },
        added_tokens: [{ id: 1, content: "<go>", special: true }, {
          id: 2,
          content: "<stop>",
          special: true,
        }],
      }),
    );
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      JSON.stringify({ bos_token: "<go>", eos_token: { content: "<stop>" } }),
    );
    for (const t of [await loadHfTokenizer(dir), await loadTokenizer(`${dir}/tokenizer.json`)]) {
      assert.deepEqual([t.vocabSize, t.bosId, t.eosId], [5, 1, 2]);
      assert.deepEqual(t.encode("hello there world", { bos: true }), [1, 3, 0, 4]);
      assert.equal(t.decode([1, 3, 4, 2]), "hello world");
    }
    assert.equal((await loadHfTokenizer(dir, { bosId: 4 })).bosId, 4);
    await Deno.writeTextFile(`${dir}/tokenizer.json`, "{ not json");
    await assert.rejects(() => loadHfTokenizer(dir), {
      name: "TypeError",
      message: /tokenizer\.json" must be JSON/,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  await assert.rejects(
    () => createHfTokenizer({ version: "1.0" }),
    /field 'model' of tokenizer\.json is missing/,
  );
  const llama = await loadTokenizer(TOK);
  assert.equal(llama.decode(llama.encode("same interface")), "same interface");
});
