// Copies one KV head's rows of a page from one slot of a cache to another
// slot of the same cache (a page leaving the window keeps its place on the
// GPU in a pool slot). Caches are viewed as u32 words; a head row is
// `head_words` words, tokens are `token_stride` words apart and heads
// `head_stride` (NHD slots: Hkv * head_words and head_words; HND slots:
// head_words and P * head_words). One workgroup row per job.

struct Params {
  page_size: u32,
  kv_heads: u32,
  head_words: u32,
  num_jobs: u32,
  token_stride: u32,
  head_stride: u32,
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
  let slot_words = params.page_size * params.kv_heads * params.head_words;
  let at = t * params.token_stride + job.z * params.head_stride + w;
  let src = job.x * slot_words + at;
  let dst = job.y * slot_words + at;
  k_cache[dst] = k_cache[src];
  v_cache[dst] = v_cache[src];
}
