// 16-byte K/V words of an f16 cache for paged_attention.wgsl: 8 halves read
// as vec4<u32> and converted exactly in integer arithmetic (unpack2x16float
// is slow on some CPU adapters).
alias kv_word = vec4<u32>;
const WORD_VECS: u32 = 2u;
// IEEE half bit patterns (low 16 bits of each lane) to f32, exactly.
fn half_bits_to_f32(h: vec4u) -> vec4f {
  let sign = (h & vec4u(0x8000u)) << vec4u(16u);
  let em = h & vec4u(0x7fffu);
  let e = em >> vec4u(10u);
  // Rebias the exponent by 127 - 15; infinities and NaNs need it twice.
  var bits = (em << vec4u(13u)) + vec4u(112u << 23u);
  bits = select(bits, bits + vec4u(112u << 23u), e == vec4u(31u));
  // Zeros and subnormals: mantissa * 2^-24, exact in f32.
  let magnitude = select(bitcast<vec4f>(bits), vec4f(em) * 5.9604644775390625e-8, e == vec4u(0u));
  return bitcast<vec4f>(bitcast<vec4u>(magnitude) | sign);
}
struct Word { a: vec4f, b: vec4f }
fn unpack_word(w: kv_word) -> Word {
  let lo = half_bits_to_f32(w & vec4u(0xffffu));
  let hi = half_bits_to_f32(w >> vec4u(16u));
  return Word(vec4f(lo.x, hi.x, lo.y, hi.y), vec4f(lo.z, hi.z, lo.w, hi.w));
}
