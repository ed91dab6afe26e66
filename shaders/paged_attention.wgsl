// Paged decode attention: one split (a run of pages) of one (sequence, KV
// head) per workgroup, for all GROUP query heads of that KV head, so each
// K/V row is read once.
//
// The host prepends a header (these size private arrays or change types,
// which an override cannot do):
//   const GROUP: u32;            query heads per KV head
//   const GROUP_VECS: u32;       ceil(GROUP / 4): heads are packed 4 to a vec4
//   const TOKENS_PER_LANE: u32;  tokens each invocation scores per chunk
//   const WORDS_PER_LANE: u32;   16-byte value words each invocation owns
//   const WORD_VECS: u32;        vec4f per 16-byte word: 1 (f32) or 2 (f16)
//   alias kv_word = ...;         vec4<f32>, or vec4<u32> holding 8 halves
//   struct Word { a: vec4f, b: vec4f }   (b is unused when WORD_VECS is 1)
//   fn unpack_word(w: kv_word) -> Word
// K/V are read in 16-byte words whatever the dtype: on adapters that run
// invocations as SIMD lanes of a CPU (lavapipe) each load costs about the
// same whatever its width, and f16 pairs unpack exactly to f32.
//
// Tokens go in chunks of CHUNK = WORKGROUP_SIZE * TOKENS_PER_LANE:
//   1. keys: each invocation scores its tokens for all heads (whole dot
//      products in-thread; a q column read from workgroup memory serves all
//      of its tokens) and publishes its maxima. Heads are packed four to a
//      vec4, so one workgroup-memory access moves four heads. With
//      PREFETCH_V it also touches each 64-byte line of the value rows, which
//      it walks sequentially like the key rows (cheap), so that the value
//      phase, which reads a whole row at once, finds them in cache;
//   2. every invocation folds the chunk max into the running max (online
//      softmax, identical in all invocations), rescales its accumulators and
//      writes exp(s - m) of its tokens, still held in registers;
//   3. values: invocation (ty, tx) owns value words tx * WORDS_PER_LANE ...
//      of every head and accumulates p * v over tokens ty, ty + TY, ...,
//      looking up a page's slot once per page.
// Two barriers per chunk. At the end the TY partial sums are added up. A
// sequence with a single split writes out and lse directly; otherwise
// (m, l, acc) go to `partial` for attention_merge.wgsl.
//
// A page-table entry EMPTY_SLOT is a hole: its tokens get no probability
// mass (their keys are not scored, their values not read). The last page of
// a sequence is never a hole, so every split that ends a sequence has mass;
// a split of holes only leaves (m, l) = (NEG_BIG, 0), which the merge weighs
// by zero.
//
// A sliding window (seq_meta[b].w > 0) gives no mass to tokens at positions
// below it; a token's position comes from its entry's page id, read from
// `page_table` at params.ids_offset (same row layout as the slots).

override PAGE_SIZE: u32; // P
override NUM_KV_HEADS: u32; // Hkv
// Words between consecutive tokens of one head, and between consecutive
// heads of one token, in a slot: NHD slots [P][Hkv][d] have (Hkv * NUM_WORDS,
// NUM_WORDS), HND slots [Hkv][P][d] have (NUM_WORDS, P * NUM_WORDS). A slot
// is P * Hkv * NUM_WORDS words in both.
override TOKEN_STRIDE: u32;
override HEAD_STRIDE: u32;
override NUM_COLS: u32; // d / 4: vec4 columns of q and out
override NUM_WORDS: u32; // 16-byte words of a K/V row
override COL_LANES: u32; // NUM_WORDS / WORDS_PER_LANE
override TY: u32; // token lanes of the value phase
override WORKGROUP_SIZE: u32; // COL_LANES * TY
override CHUNK: u32; // WORKGROUP_SIZE * TOKENS_PER_LANE
override Q_LEN: u32; // GROUP_VECS * 4 * NUM_COLS
override P_LEN: u32; // CHUNK * GROUP_VECS
override MAX_LEN: u32; // WORKGROUP_SIZE * GROUP_VECS
override RED_LEN: u32; // COL_LANES * GROUP_VECS * (4 * COLS_PER_LANE + 1), at least 1
override PREFETCH_V: bool;

const HEADS: u32 = GROUP_VECS * 4u; // GROUP rounded up; the extra heads are padding
const COLS_PER_LANE: u32 = WORDS_PER_LANE * WORD_VECS; // vec4 output columns per lane
const ACC_LEN: u32 = HEADS * COLS_PER_LANE;
const NEG_BIG: f32 = -3.0e38; // "minus infinity" for running maxima
const EMPTY_SLOT: u32 = 0xffffffffu; // a hole in the page table

struct Params {
  batch: u32,
  max_pages: u32,
  pages_per_split: u32,
  max_splits: u32,
  table_offset: u32, // where the page table starts in `page_table`
  ml_offset: u32, // where the (m, l) entries start in `partial`
  scale: f32, // 1 / sqrt(d)
  ids_offset: u32, // where the page ids start in `page_table` (read only with a window)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4f>; // [b][Hq][d/4]
@group(0) @binding(2) var<storage, read> k_cache: array<kv_word>; // [slot][P][Hkv][words] or [slot][Hkv][P][words]
@group(0) @binding(3) var<storage, read> v_cache: array<kv_word>;
// [b][4] = (numPages, lastPageLen, numSplits, first visible token or 0).
@group(0) @binding(4) var<storage, read> seq_meta: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4f>; // [b][Hq][d/4]
@group(0) @binding(6) var<storage, read_write> lse: array<f32>; // [b][Hq]
// [b][Hq][maxSplits][d/4] accumulators, then from params.ml_offset
// [b][Hq][maxSplits] of (m, l, 0, 0).
@group(0) @binding(7) var<storage, read_write> partial: array<vec4f>;
// From params.table_offset: slot ids [b][Hkv][maxPages], EMPTY_SLOT for holes;
// from params.ids_offset (sliding windows only): their page ids, same layout.
@group(0) @binding(8) var<storage, read> page_table: array<u32>;

var<workgroup> q_sh: array<vec4f, Q_LEN>; // [head][col], scaled, padding heads zero
var<workgroup> p_sh: array<vec4f, P_LEN>; // [token][head vec] exp(s - m)
var<workgroup> max_sh: array<vec4f, MAX_LEN>; // [invocation][head vec]
var<workgroup> red_sh: array<vec4f, RED_LEN>; // final cross-lane sums
var<workgroup> info_sh: vec4u;
var<workgroup> sink_sh: vec4f; // keeps the prefetch loads alive

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let split = wid.x;
  let h = wid.y;
  let b = wid.z;
  let hq0 = (b * NUM_KV_HEADS + h) * GROUP; // first query head of the group
  if (lid == 0u) {
    info_sh = vec4u(
      seq_meta[b * 4u],
      seq_meta[b * 4u + 1u],
      seq_meta[b * 4u + 2u],
      seq_meta[b * 4u + 3u],
    );
  }
  for (var i = lid; i < Q_LEN; i += WORKGROUP_SIZE) {
    var value = vec4f(0.0);
    if (i / NUM_COLS < GROUP) { value = q[hq0 * NUM_COLS + i] * params.scale; }
    q_sh[i] = value;
  }
  let info = workgroupUniformLoad(&info_sh);
  let num_pages = info.x;
  let num_splits = info.z;
  let first_token = info.w;
  if (split >= num_splits) { return; }

  let p0 = split * params.pages_per_split;
  let p1 = min(num_pages, p0 + params.pages_per_split);
  let t_begin = p0 * PAGE_SIZE;
  var t_end = p1 * PAGE_SIZE;
  if (p1 == num_pages) { t_end = (p1 - 1u) * PAGE_SIZE + info.y; }
  let table = params.table_offset + (b * NUM_KV_HEADS + h) * params.max_pages;
  let ids = params.ids_offset + (b * NUM_KV_HEADS + h) * params.max_pages;
  let slot_words = PAGE_SIZE * NUM_KV_HEADS * NUM_WORDS;
  let head_base = h * HEAD_STRIDE;

  let tx = lid % COL_LANES;
  let ty = lid / COL_LANES;
  var m_run: array<vec4f, GROUP_VECS>;
  var l_run: array<vec4f, GROUP_VECS>;
  var acc: array<vec4f, ACC_LEN>; // [head][col]
  for (var gv = 0u; gv < GROUP_VECS; gv++) {
    m_run[gv] = vec4f(NEG_BIG);
    l_run[gv] = vec4f(0.0);
  }
  for (var a = 0u; a < ACC_LEN; a++) { acc[a] = vec4f(0.0); }
  var touch = vec4f(0.0);

  for (var c0 = t_begin; c0 < t_end; c0 += CHUNK) {
    let n = min(CHUNK, t_end - c0);
    // 1. Keys. Lanes past the end score the chunk's last token (a valid
    // address, no branch around the loads) and drop it; tokens of a hole
    // score slot 0 and are dropped the same way.
    var s: array<vec4f, TOKENS_PER_LANE * GROUP_VECS>; // [token][head vec]
    var rows: array<u32, TOKENS_PER_LANE>;
    var live: array<bool, TOKENS_PER_LANE>; // in range and not a hole
    for (var u = 0u; u < TOKENS_PER_LANE; u++) {
      let t = c0 + min(lid + u * WORKGROUP_SIZE, n - 1u);
      let entry = page_table[table + t / PAGE_SIZE];
      let hole = entry == EMPTY_SLOT;
      let slot = select(entry, 0u, hole);
      live[u] = lid + u * WORKGROUP_SIZE < n && !hole;
      if (first_token > 0u && live[u]) {
        live[u] = page_table[ids + t / PAGE_SIZE] * PAGE_SIZE + t % PAGE_SIZE >= first_token;
      }
      rows[u] = slot * slot_words + (t % PAGE_SIZE) * TOKEN_STRIDE + head_base;
      for (var gv = 0u; gv < GROUP_VECS; gv++) { s[u * GROUP_VECS + gv] = vec4f(0.0); }
    }
    // The second vec4 of a word (f16 only) is spelled out rather than indexed
    // by a loop: private arrays must only ever see constant indices.
    for (var i = 0u; i < NUM_WORDS; i++) {
      var qa: array<vec4f, HEADS>; // q columns of the word's first vec4
      var qb: array<vec4f, HEADS>; // and of its second (f16)
      for (var g = 0u; g < HEADS; g++) {
        qa[g] = q_sh[g * NUM_COLS + i * WORD_VECS];
        if (WORD_VECS == 2u) { qb[g] = q_sh[g * NUM_COLS + i * WORD_VECS + 1u]; }
      }
      for (var u = 0u; u < TOKENS_PER_LANE; u++) {
        let kw = unpack_word(k_cache[rows[u] + i]);
        for (var gv = 0u; gv < GROUP_VECS; gv++) {
          let o = gv * 4u;
          var d4 = vec4f(
            dot(qa[o], kw.a),
            dot(qa[o + 1u], kw.a),
            dot(qa[o + 2u], kw.a),
            dot(qa[o + 3u], kw.a),
          );
          if (WORD_VECS == 2u) {
            d4 += vec4f(
              dot(qb[o], kw.b),
              dot(qb[o + 1u], kw.b),
              dot(qb[o + 2u], kw.b),
              dot(qb[o + 3u], kw.b),
            );
          }
          s[u * GROUP_VECS + gv] += d4;
        }
      }
    }
    if (PREFETCH_V) {
      for (var i = 0u; i < NUM_WORDS; i += 4u) {
        for (var u = 0u; u < TOKENS_PER_LANE; u++) {
          touch += unpack_word(v_cache[rows[u] + i]).a;
        }
      }
    }
    for (var gv = 0u; gv < GROUP_VECS; gv++) {
      var m = vec4f(NEG_BIG);
      for (var u = 0u; u < TOKENS_PER_LANE; u++) {
        if (live[u]) { m = max(m, s[u * GROUP_VECS + gv]); }
      }
      max_sh[lid * GROUP_VECS + gv] = m;
    }
    workgroupBarrier();
    // 2. Running max, rescale, probabilities of this invocation's tokens.
    for (var gv = 0u; gv < GROUP_VECS; gv++) {
      var m = m_run[gv];
      for (var w = 0u; w < WORKGROUP_SIZE; w++) { m = max(m, max_sh[w * GROUP_VECS + gv]); }
      let alpha = exp(m_run[gv] - m);
      l_run[gv] *= alpha;
      m_run[gv] = m;
      for (var c = 0u; c < COLS_PER_LANE; c++) {
        acc[(gv * 4u) * COLS_PER_LANE + c] *= alpha.x;
        acc[(gv * 4u + 1u) * COLS_PER_LANE + c] *= alpha.y;
        acc[(gv * 4u + 2u) * COLS_PER_LANE + c] *= alpha.z;
        acc[(gv * 4u + 3u) * COLS_PER_LANE + c] *= alpha.w;
      }
      for (var u = 0u; u < TOKENS_PER_LANE; u++) {
        let j = lid + u * WORKGROUP_SIZE;
        if (j < n) {
          p_sh[j * GROUP_VECS + gv] = select(vec4f(0.0), exp(s[u * GROUP_VECS + gv] - m), live[u]);
        }
      }
    }
    workgroupBarrier();
    // 3. Values; the slot is looked up again only when the page changes,
    // and the tokens of a hole are skipped.
    var page = 0xffffffffu;
    var page_row = 0u;
    var page_hole = false;
    for (var j = ty; j < n; j += TY) {
      let t = c0 + j;
      if (t / PAGE_SIZE != page) {
        page = t / PAGE_SIZE;
        let slot = page_table[table + page];
        page_hole = slot == EMPTY_SLOT;
        page_row = slot * slot_words + head_base + tx * WORDS_PER_LANE;
      }
      if (page_hole) { continue; }
      let row = page_row + (t % PAGE_SIZE) * TOKEN_STRIDE;
      var v: array<vec4f, COLS_PER_LANE>;
      for (var w = 0u; w < WORDS_PER_LANE; w++) {
        let vw = unpack_word(v_cache[row + w]);
        v[w * WORD_VECS] = vw.a;
        if (WORD_VECS == 2u) { v[w * WORD_VECS + 1u] = vw.b; }
      }
      for (var gv = 0u; gv < GROUP_VECS; gv++) {
        let p = p_sh[j * GROUP_VECS + gv];
        l_run[gv] += p;
        for (var c = 0u; c < COLS_PER_LANE; c++) {
          acc[(gv * 4u) * COLS_PER_LANE + c] += p.x * v[c];
          acc[(gv * 4u + 1u) * COLS_PER_LANE + c] += p.y * v[c];
          acc[(gv * 4u + 2u) * COLS_PER_LANE + c] += p.z * v[c];
          acc[(gv * 4u + 3u) * COLS_PER_LANE + c] += p.w * v[c];
        }
      }
    }
  }
  // A store that is (almost) never taken keeps the prefetch loads.
  if (touch.x == 1.2345e-30) { sink_sh = touch; }

  // Add up the TY token lanes, one lane row at a time into lane row 0.
  let stride = 4u * COLS_PER_LANE + 1u; // vec4s per (lane, head vec)
  for (var y = 1u; y < TY; y++) {
    workgroupBarrier();
    if (ty == y) {
      for (var gv = 0u; gv < GROUP_VECS; gv++) {
        let base = (tx * GROUP_VECS + gv) * stride;
        for (var a = 0u; a < 4u * COLS_PER_LANE; a++) {
          red_sh[base + a] = acc[gv * 4u * COLS_PER_LANE + a];
        }
        red_sh[base + 4u * COLS_PER_LANE] = l_run[gv];
      }
    }
    workgroupBarrier();
    if (ty == 0u) {
      for (var gv = 0u; gv < GROUP_VECS; gv++) {
        let base = (tx * GROUP_VECS + gv) * stride;
        for (var a = 0u; a < 4u * COLS_PER_LANE; a++) {
          acc[gv * 4u * COLS_PER_LANE + a] += red_sh[base + a];
        }
        l_run[gv] += red_sh[base + 4u * COLS_PER_LANE];
      }
    }
  }
  if (ty != 0u) { return; }

  for (var g = 0u; g < GROUP; g++) {
    let hq = hq0 + g;
    let m = m_run[g / 4u][g % 4u];
    let l = l_run[g / 4u][g % 4u];
    let col0 = tx * COLS_PER_LANE;
    if (num_splits == 1u) {
      for (var c = 0u; c < COLS_PER_LANE; c++) {
        out[hq * NUM_COLS + col0 + c] = acc[g * COLS_PER_LANE + c] / l;
      }
      if (tx == 0u) { lse[hq] = m + log(l); }
    } else {
      let e = hq * params.max_splits + split;
      for (var c = 0u; c < COLS_PER_LANE; c++) {
        partial[e * NUM_COLS + col0 + c] = acc[g * COLS_PER_LANE + c];
      }
      if (tx == 0u) { partial[params.ml_offset + e] = vec4f(m, l, 0.0, 0.0); }
    }
  }
}
