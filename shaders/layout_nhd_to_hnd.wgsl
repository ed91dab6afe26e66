// NHD slots -> HND runs. Job j = (slot, kvHead) writes run (run_base + j):
// [K: P x d][V: P x d], read from kCache/vCache laid out [slot][token][kvHead][d].
// Data moves as opaque 32-bit words, so f32 and f16 are copied bit for bit.
// `Word` (u32, or vec4<u32> when a row of d elements is a multiple of 16
// bytes) is declared by lib/layout.ts in a line prepended to this file.
struct Params {
  num_jobs: u32,
  run_base: u32,
}

// Shape of the pipeline: constant divisors let the compiler use shifts and
// multiplies instead of integer division.
override WG: u32 = 256u;
override ROW_WORDS: u32 = 1u; // Words per row of d elements
override PAGE_SIZE: u32 = 1u;
override KV_HEADS: u32 = 1u;
// Consecutive Words per invocation, inside one row (divides ROW_WORDS).
override UNROLL: u32 = 1u;

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
  let i = ((wid.y * nwg.x + wid.x) * WG + lid) * UNROLL;
  let page_words = PAGE_SIZE * ROW_WORDS;
  let run_words = 2u * page_words;
  if (i >= p.num_jobs * run_words) {
    return;
  }
  let j = i / run_words;
  let r = i - j * run_words;
  let is_v = r >= page_words;
  let e = select(r, r - page_words, is_v);
  let t = e / ROW_WORDS;
  let w = e - t * ROW_WORDS;
  let job = jobs[j];
  let src = ((job.x * PAGE_SIZE + t) * KV_HEADS + job.y) * ROW_WORDS + w;
  let dst = (p.run_base + j) * run_words + r;
  if (is_v) {
    for (var u = 0u; u < UNROLL; u++) {
      runs[dst + u] = v_cache[src + u];
    }
  } else {
    for (var u = 0u; u < UNROLL; u++) {
      runs[dst + u] = k_cache[src + u];
    }
  }
}
