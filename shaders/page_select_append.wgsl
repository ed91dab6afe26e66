// Appended to page_select.wgsl to store the step's new K and V rows in the
// same dispatch (kv_append.wgsl's rule, one KV head per workgroup): saves
// the append's own dispatch, whose fixed cost dominates small models. The
// selection module prepends the `kv_t` alias of the cache type.

struct AppendParams {
  row_len: u32, // Hkv * d elements per token row
  batch: u32,
  row_base: u32, // unused here (one dispatch holds every row)
  head_len: u32, // elements per head of a row (the whole row when its heads are contiguous)
  head_stride: u32, // elements between heads in the cache (unused when head_len is the row)
}

@group(0) @binding(18) var<uniform> append_params: AppendParams;
@group(0) @binding(19) var<storage, read> k_new: array<f32>;
@group(0) @binding(20) var<storage, read> v_new: array<f32>;
@group(0) @binding(21) var<storage, read> dst_offsets: array<u32>; // element offset per sequence
@group(0) @binding(22) var<storage, read_write> k_cache: array<kv_t>;
@group(0) @binding(23) var<storage, read_write> v_cache: array<kv_t>;

fn append_row(t: u32, b: u32, kvh: u32) {
  let head = append_params.row_len / params.num_kv_heads;
  let end = (kvh + 1u) * head;
  for (var i = kvh * head + t; i < end; i += WG) {
    let dst = dst_offsets[b] + (i / append_params.head_len) * append_params.head_stride +
      i % append_params.head_len;
    let src = b * append_params.row_len + i;
    k_cache[dst] = kv_t(k_new[src]);
    v_cache[dst] = kv_t(v_new[src]);
  }
}
