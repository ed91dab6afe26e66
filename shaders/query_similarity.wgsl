// Query similarity for the fine-grained correction (group_similarity.wgsl,
// appended by the module). One invocation per (KV head, sequence),
// dispatched as workgroups of one: the work is a few hundred multiply-adds,
// and a tree reduction's barriers cost more than that wherever barriers are
// emulated (CPU adapters such as lavapipe switch every invocation's
// coroutine at each barrier).

override HEAD_DIM: u32; // d
override GROUP: u32; // query heads per KV head

struct Params {
  tau: f32,
  store_q: u32, // 1: q_now becomes q_prev (the next step's check needs no copy)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q_now: array<f32>; // [b][Hq][d]
// Written only with params.store_q, each element after it was read.
@group(0) @binding(2) var<storage, read_write> q_prev: array<f32>; // [b][Hq][d]
@group(0) @binding(3) var<storage, read_write> cosine: array<f32>; // [b][Hq]
@group(0) @binding(4) var<storage, read_write> group_mean: array<f32>; // [b][Hkv]
@group(0) @binding(5) var<storage, read_write> flags: array<u32>; // [b][Hkv]

fn q_now_at(g: u32, head: u32, c: u32) -> f32 {
  return q_now[head * HEAD_DIM + c];
}

@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  group_similarity(wg.y * nwg.x + wg.x);
}
