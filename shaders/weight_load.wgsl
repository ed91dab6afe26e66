// Shared by kernels that read model weights. A weight buffer is bound as
// words `w: array<u32>`: f32 weights take one word each; f16 and bf16 weights
// take half a word each, element 2k in the low half and 2k+1 in the high half.
// WDTYPE: 0 = f32, 1 = f16, 2 = bf16.
override WDTYPE: u32 = 0u;

fn load_pair(word_index: u32) -> vec2<f32> {
  let word = w[word_index];
  if (WDTYPE == 1u) {
    return unpack2x16float(word);
  }
  // bf16 is the high half of an f32.
  return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

fn load_weight(i: u32) -> f32 {
  if (WDTYPE == 0u) {
    return bitcast<f32>(w[i]);
  }
  let pair = load_pair(i >> 1u);
  return select(pair.x, pair.y, (i & 1u) == 1u);
}
