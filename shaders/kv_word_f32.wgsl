// 16-byte K/V words of an f32 cache for paged_attention.wgsl: one vec4f.
alias kv_word = vec4<f32>;
const WORD_VECS: u32 = 1u;
struct Word { a: vec4f, b: vec4f }
fn unpack_word(w: kv_word) -> Word { return Word(w, vec4f(0.0)); }
