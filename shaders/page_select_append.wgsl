// Appended to page_select.wgsl (with kv_append_row.wgsl) to store the
// step's new K and V rows in the same dispatch, one KV head per workgroup:
// saves the append's own dispatch, whose fixed cost dominates small models.
// The selection module prepends the `kv_t` alias of the cache type.

@group(0) @binding(18) var<uniform> append_params: AppendParams;
@group(0) @binding(19) var<storage, read> k_new: array<f32>;
@group(0) @binding(20) var<storage, read> v_new: array<f32>;
@group(0) @binding(21) var<storage, read> dst_offsets: array<u32>; // element offset per sequence
@group(0) @binding(22) var<storage, read_write> k_cache: array<kv_t>;
@group(0) @binding(23) var<storage, read_write> v_cache: array<kv_t>;

fn append_row(t: u32, b: u32, kvh: u32) {
  let head = append_params.row_len / params.num_kv_heads;
  for (var i = kvh * head + t; i < (kvh + 1u) * head; i += WG) {
    append_element(append_params, b, i);
  }
}
