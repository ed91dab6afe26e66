// Appends one token's K and V rows per sequence into the slot cache (NHD:
// the row is contiguous; HND: each head's part goes head_stride apart),
// converting f32 input to the cache element type `kv_t` (aliased by the host).

struct Params {
  row_len: u32, // Hkv * d elements per token row
  batch: u32,
  row_base: u32, // first row of this dispatch (prompts may exceed one dispatch)
  head_len: u32, // elements per head of a row (the whole row when its heads are contiguous)
  head_stride: u32, // elements between heads in the cache (unused when head_len is the row)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> k_new: array<f32>;
@group(0) @binding(2) var<storage, read> v_new: array<f32>;
@group(0) @binding(3) var<storage, read> dst_offsets: array<u32>; // element offset per sequence
@group(0) @binding(4) var<storage, read_write> k_cache: array<kv_t>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<kv_t>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x;
  let b = params.row_base + id.y;
  if (i >= params.row_len || b >= params.batch) { return; }
  let dst = dst_offsets[b] + (i / params.head_len) * params.head_stride + i % params.head_len;
  let src = b * params.row_len + i;
  k_cache[dst] = kv_t(k_new[src]);
  v_cache[dst] = kv_t(v_new[src]);
}
