// One element of an appended K/V row, shared by kv_append.wgsl and the
// one-dispatch selection's page_select_append.wgsl. The includer declares
// `kv_t` (the cache type), `k_new` and `v_new` (f32 rows), `dst_offsets`
// (element offset per row) and the caches `k_cache` and `v_cache`.

struct AppendParams {
  row_len: u32, // Hkv * d elements per token row
  batch: u32,
  row_base: u32, // first row of this dispatch (prompts may exceed one dispatch)
  head_len: u32, // elements per head of a row (the whole row when its heads are contiguous)
  head_stride: u32, // elements between heads in the cache (unused when head_len is the row)
}

// Element `i` of row `b` (NHD: the row is contiguous; HND: each head's part
// goes head_stride apart), converted from f32 to the cache type.
fn append_element(p: AppendParams, b: u32, i: u32) {
  let dst = dst_offsets[b] + (i / p.head_len) * p.head_stride + i % p.head_len;
  let src = b * p.row_len + i;
  k_cache[dst] = kv_t(k_new[src]);
  v_cache[dst] = kv_t(v_new[src]);
}
