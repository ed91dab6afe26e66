// Streaming read: every invocation walks the buffer with a grid stride of
// vec4 loads and keeps a few running sums. Its only purpose is to time how
// fast the adapter reads memory (the roofline of memory-bound kernels).

override WORKGROUP_SIZE: u32 = 256u;

struct Params {
  num_vec4: u32, // vec4 elements to read
  stride: u32, // invocations in the whole dispatch
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4f>;
@group(0) @binding(2) var<storage, read_write> sink: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  var a = vec4f(0.0);
  var b = vec4f(0.0);
  var i = gid.x;
  // Two independent sums so the loads are not serialised on one add chain.
  loop {
    if (i + params.stride >= params.num_vec4) { break; }
    a += src[i];
    b += src[i + params.stride];
    i += 2u * params.stride;
  }
  if (i < params.num_vec4) { a += src[i]; }
  let s = dot(a + b, vec4f(1.0));
  // A store the compiler cannot prove dead, yet (almost) never taken.
  if (s == 1.2345678e-30) { sink[gid.x % 64u] = s; }
}
