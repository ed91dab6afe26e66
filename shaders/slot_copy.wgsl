// Copies one KV head's rows of a page from one slot of an NHD cache to
// another slot of the same cache (a page leaving the window keeps its place
// on the GPU in a pool slot). Caches are viewed as u32 words; a head row is
// `head_words` words. One workgroup row per job.

struct Params {
  page_size: u32,
  kv_heads: u32,
  head_words: u32,
  num_jobs: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> jobs: array<vec4u>; // (src slot, dst slot, head, 0)
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let j = id.y;
  let i = id.x;
  if (j >= params.num_jobs || i >= params.page_size * params.head_words) { return; }
  let job = jobs[j];
  let t = i / params.head_words;
  let w = i % params.head_words;
  let row_words = params.kv_heads * params.head_words;
  let src = (job.x * params.page_size + t) * row_words + job.z * params.head_words + w;
  let dst = (job.y * params.page_size + t) * row_words + job.z * params.head_words + w;
  k_cache[dst] = k_cache[src];
  v_cache[dst] = v_cache[src];
}
