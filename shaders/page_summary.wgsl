// Page summaries: per KV head and channel, lower and upper bounds of the keys
// of one page per job, read from the NHD slot cache. The host prepends
// `alias kv_t = f32;` or `enable f16; alias kv_t = f16;`.
// One thread per (job, channel of the token row): consecutive threads read
// consecutive channels of a token row, so every token row is one coalesced read.

override PAGE_SIZE: u32; // P tokens per slot
override ROW_LEN: u32; // Hkv * d elements per token row
override HEAD_DIM: u32; // d
override SUMMARY: u32; // 0: Quest min/max, 1: box center -/+ mean |k - center|

struct Params {
  num_jobs: u32,
  jobs_per_z: u32, // dispatch y size, jobs fold into y and z beyond 65535
}

@group(0) @binding(0) var<uniform> params: Params;
// (srcSlot, dstPage, numTokens, unused) per job
@group(0) @binding(1) var<storage, read> jobs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> k_cache: array<kv_t>;
@group(0) @binding(3) var<storage, read_write> summaries: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let j = gid.z * params.jobs_per_z + gid.y;
  if (c >= ROW_LEN || j >= params.num_jobs) {
    return;
  }
  let job = jobs[j];
  let n = job.z;
  let base = job.x * PAGE_SIZE * ROW_LEN + c;
  var lo = f32(k_cache[base]);
  var hi = lo;
  for (var t = 1u; t < n; t++) {
    let x = f32(k_cache[base + t * ROW_LEN]);
    lo = min(lo, x);
    hi = max(hi, x);
  }
  if (SUMMARY == 1u) {
    // Halves first: exact, and cannot overflow.
    let center = 0.5 * lo + 0.5 * hi;
    var dev = 0.0;
    for (var t = 0u; t < n; t++) {
      dev += abs(f32(k_cache[base + t * ROW_LEN]) - center);
    }
    let spread = dev / f32(n);
    lo = center - spread;
    hi = center + spread;
  }
  let h = c / HEAD_DIM;
  let out = job.y * 2u * ROW_LEN + h * 2u * HEAD_DIM + c % HEAD_DIM;
  summaries[out] = lo;
  summaries[out + HEAD_DIM] = hi;
}
