// Picks the next token from one row of logits on the GPU, so that a decode
// loop feeds it to the next step without a host answer.
// Greedy (temperature 0): the largest logit, the lowest index on ties.
// Otherwise: the first token whose cumulative softmax(logits / temperature)
// mass exceeds coins[step] times the total (the last token of nonzero mass
// if rounding leaves none). The step is the position (the decoder's own
// uniform, already rewritten per step) minus the run's first position.
// Writes the token to `token` (the next step's input) and to history[step].
// One workgroup; each invocation owns one contiguous chunk of the
// vocabulary, so the scan needs one serial pass over the chunk sums and one
// over a chunk.
struct Params {
  vocab: u32,
  temperature: f32,
  first: u32, // position of the run's first step
  _pad: u32,
}

struct Seq {
  start: u32,
}

const WG = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> coins: array<f32>;
@group(0) @binding(3) var<storage, read_write> token: array<u32>;
@group(0) @binding(4) var<storage, read_write> history: array<u32>;
@group(0) @binding(5) var<uniform> seq: Seq;

var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_index: array<u32, WG>;
var<workgroup> chunk_sum: array<f32, WG>;
var<workgroup> last_nonzero: array<u32, WG>;

fn emit(t: u32) {
  token[0] = t;
  history[seq.start - p.first] = t;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let chunk = (p.vocab + WG - 1u) / WG;
  let begin = min(lid * chunk, p.vocab);
  let end = min(begin + chunk, p.vocab);

  // Max and its lowest index: within a chunk in order, then across chunks.
  var value = -3.4028234663852886e38; // lowest finite f32 (Tint refuses literals beyond it)
  var index = 0xffffffffu;
  for (var i = begin; i < end; i++) {
    let l = logits[i];
    if (l > value || index == 0xffffffffu) {
      value = l;
      index = i;
    }
  }
  best_value[lid] = value;
  best_index[lid] = index;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let v = best_value[lid + s];
      let j = best_index[lid + s];
      let mine = best_index[lid];
      if (j != 0xffffffffu &&
          (mine == 0xffffffffu || v > best_value[lid] || (v == best_value[lid] && j < mine))) {
        best_value[lid] = v;
        best_index[lid] = j;
      }
    }
    workgroupBarrier();
  }
  let top = best_index[0];
  if (p.temperature == 0.0) {
    if (lid == 0u) {
      emit(top);
    }
    return;
  }

  let m = best_value[0];
  var sum = 0.0;
  var nonzero = 0xffffffffu;
  for (var i = begin; i < end; i++) {
    let e = exp((logits[i] - m) / p.temperature);
    sum += e;
    if (e > 0.0) {
      nonzero = i;
    }
  }
  chunk_sum[lid] = sum;
  last_nonzero[lid] = nonzero;
  workgroupBarrier();
  if (lid != 0u) {
    return;
  }
  var total = 0.0;
  var fallback = top;
  for (var c = 0u; c < WG; c++) {
    total += chunk_sum[c];
    if (last_nonzero[c] != 0xffffffffu) {
      fallback = last_nonzero[c];
    }
  }
  let goal = coins[seq.start - p.first] * total;
  var before = 0.0;
  for (var c = 0u; c < WG; c++) {
    let after = before + chunk_sum[c];
    if (goal < after) {
      let b = min(c * chunk, p.vocab);
      let e = min(b + chunk, p.vocab);
      var cdf = before;
      for (var i = b; i < e; i++) {
        cdf += exp((logits[i] - m) / p.temperature);
        if (goal < cdf) {
          emit(i);
          return;
        }
      }
    }
    before = after;
  }
  emit(fallback);
}
