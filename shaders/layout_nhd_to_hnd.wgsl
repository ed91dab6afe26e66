// NHD slots -> HND runs. Job j = (slot, kvHead) writes run (run_base + j):
// [K: P x d][V: P x d], read from kCache/vCache laid out [slot][token][kvHead][d].
// Data moves as opaque 32-bit words, so f32 and f16 are copied bit for bit.
// `Word` (u32, or vec4<u32> when a row of d elements is a multiple of 16
// bytes) is declared by lib/layout.ts in a line prepended to this file.
struct Params {
  num_jobs: u32,
  row_words: u32, // Words per row of d elements
  page_size: u32,
  kv_heads: u32,
  run_base: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k_cache: array<Word>;
@group(0) @binding(2) var<storage, read> v_cache: array<Word>;
@group(0) @binding(3) var<storage, read> jobs: array<vec2<u32>>; // (slot, kvHead)
@group(0) @binding(4) var<storage, read_write> runs: array<Word>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let i = (wid.y * nwg.x + wid.x) * WG + lid;
  let page_words = p.page_size * p.row_words;
  let run_words = 2u * page_words;
  if (i >= p.num_jobs * run_words) {
    return;
  }
  let j = i / run_words;
  let r = i - j * run_words;
  let is_v = r >= page_words;
  let e = select(r, r - page_words, is_v);
  let t = e / p.row_words;
  let w = e - t * p.row_words;
  let job = jobs[j];
  let src = ((job.x * p.page_size + t) * p.kv_heads + job.y) * p.row_words + w;
  var value: Word;
  if (is_v) {
    value = v_cache[src];
  } else {
    value = k_cache[src];
  }
  runs[(p.run_base + j) * run_words + r] = value;
}
