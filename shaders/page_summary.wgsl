// Page summaries: per KV head and channel, lower and upper bounds of the keys
// of one page per job, read from the slot cache (NHD or HND slots).
// The host prepends the cache element access, `PER` channels per word:
//   f32:        alias kv_word = f32;  fn load_word(i) = (k_cache[i], 0)
//   f16 pairs:  alias kv_word = u32;  fn load_word(i) = halves_to_f32(k_cache[i])
//   f16 single: enable f16; alias kv_word = f16 (odd row lengths only)
// One thread per (job, word of the token row): consecutive threads read
// consecutive words of a token row, so every token row is one coalesced read.

override PAGE_SIZE: u32; // P tokens per slot
override ROW_WORDS: u32; // Hkv * d / PER words per token row
override HEAD_DIM: u32; // d
override PER: u32; // channels per word, 1 or 2
override SUMMARY: u32; // 0: Quest min/max, 1: box center -/+ mean |k - center|
// Slot layout, in words. NHD [P][Hkv][d]: HEAD_WORDS = TOKEN_STRIDE =
// ROW_WORDS, HEAD_STRIDE = 0 (the whole row is one contiguous "head").
// HND [Hkv][P][d]: HEAD_WORDS = TOKEN_STRIDE = d / PER, HEAD_STRIDE = P * d / PER.
override HEAD_WORDS: u32;
override HEAD_STRIDE: u32;
override TOKEN_STRIDE: u32;

struct Params {
  num_jobs: u32,
  jobs_per_z: u32, // dispatch y size, jobs fold into y and z beyond 65535
}

@group(0) @binding(0) var<uniform> params: Params;
// (srcSlot, dstPage, numTokens, unused) per job
@group(0) @binding(1) var<storage, read> jobs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> k_cache: array<kv_word>;
@group(0) @binding(3) var<storage, read_write> summaries: array<f32>;

// The two IEEE halves of `w` (low half first) as f32, exactly: the same as
// unpack2x16float, in integer arithmetic that vectorises everywhere.
fn halves_to_f32(w: u32) -> vec2<f32> {
  let h = vec2<u32>(w & 0xffffu, w >> 16u);
  let sign = (h & vec2<u32>(0x8000u)) << vec2<u32>(16u);
  let e = (h >> vec2<u32>(10u)) & vec2<u32>(0x1fu);
  let m = h & vec2<u32>(0x3ffu);
  let normal = bitcast<vec2<f32>>(sign | ((e + 112u) << vec2<u32>(23u)) | (m << vec2<u32>(13u)));
  let special = bitcast<vec2<f32>>(sign | vec2<u32>(0x7f800000u) | (m << vec2<u32>(13u)));
  // Subnormal halves (and zeros): m * 2^-24 with the sign.
  let tiny = vec2<f32>(m) * 5.9604644775390625e-8;
  let small = select(tiny, -tiny, sign != vec2<u32>(0u));
  return select(select(normal, special, e == vec2<u32>(31u)), small, e == vec2<u32>(0u));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let w = gid.x;
  let j = gid.z * params.jobs_per_z + gid.y;
  if (w >= ROW_WORDS || j >= params.num_jobs) {
    return;
  }
  let job = jobs[j];
  let n = job.z;
  let base = job.x * PAGE_SIZE * ROW_WORDS + (w / HEAD_WORDS) * HEAD_STRIDE + w % HEAD_WORDS;
  var lo = load_word(base);
  var hi = lo;
  for (var t = 1u; t < n; t++) {
    let x = load_word(base + t * TOKEN_STRIDE);
    lo = min(lo, x);
    hi = max(hi, x);
  }
  if (SUMMARY == 1u) {
    // Halves first: exact, and cannot overflow.
    let center = 0.5 * lo + 0.5 * hi;
    var dev = vec2<f32>(0.0);
    for (var t = 0u; t < n; t++) {
      dev += abs(load_word(base + t * TOKEN_STRIDE) - center);
    }
    let spread = dev / f32(n);
    lo = center - spread;
    hi = center + spread;
  }
  for (var i = 0u; i < PER; i++) {
    let c = w * PER + i; // channel of the row
    let out = job.y * 2u * ROW_WORDS * PER + (c / HEAD_DIM) * 2u * HEAD_DIM + c % HEAD_DIM;
    summaries[out] = lo[i];
    summaries[out + HEAD_DIM] = hi[i];
  }
}
