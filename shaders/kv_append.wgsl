// Appends one token's K and V rows per sequence into the slot cache (NHD:
// the row is contiguous; HND: each head's part goes head_stride apart),
// converting f32 input to the cache element type `kv_t` (aliased by the host).
// The host appends kv_append_row.wgsl (AppendParams, append_element).

@group(0) @binding(0) var<uniform> params: AppendParams;
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
  append_element(params, b, i);
}
