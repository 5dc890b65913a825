// CPU kernel of frame_begin (the prefill input of a frame of the fast decoding path, spec §5.1 and §5.6): also
// the oracle the CUDA kernel is tested against. The argument checks live here (ops.h is shared).
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "ops.h"

namespace autogaze_ext {

void check_frame_begin_inputs(const at::Tensor& pend, const at::Tensor& pend_len, const at::Tensor& vision,
                              const at::Tensor& t, const at::Tensor& embed_weight, const at::Tensor& start,
                              const at::Tensor& key_valid, const at::Tensor& count, const at::Tensor& tail_pos) {
  const OpArgs args{"frame_begin", pend, "pend"};
  args.typed(pend, "pend", at::kLong);
  TORCH_CHECK(pend.dim() == 2 && pend.size(1) >= 1 && pend.size(1) <= 1024,
              "frame_begin: pend must be (B, K) with 1 <= K <= 1024, got ", pend.sizes());
  const int64_t B = pend.size(0), K = pend.size(1);
  for (auto [x, name] : {std::pair{&pend_len, "pend_len"}, {&t, "t"}, {&start, "start"}}) {
    args.typed(*x, name, at::kLong);
    args.scalar(*x, name);
  }
  args.typed(vision, "vision", at::kFloat);
  TORCH_CHECK(vision.dim() == 4 && vision.size(0) == B && vision.size(1) >= 1,
              "frame_begin: vision must be (B=", B, ", T, NV, hidden) with T >= 1, got ", vision.sizes());
  const int64_t D = vision.size(3);
  TORCH_CHECK(B * (K + vision.size(2)) <= std::numeric_limits<int32_t>::max(),
              "frame_begin: B * (K + NV) must be below 2^31, got B=", B, ", K + NV=", K + vision.size(2));
  args.typed(embed_weight, "embed_weight", at::kFloat);
  TORCH_CHECK(embed_weight.dim() == 2 && embed_weight.size(0) >= 1 && embed_weight.size(1) == D,
              "frame_begin: embed_weight must be (vocab, hidden=", D, "), got ", embed_weight.sizes());
  args.typed(key_valid, "key_valid", at::kBool);
  TORCH_CHECK(key_valid.dim() == 2 && key_valid.size(0) == B, "frame_begin: key_valid must be (B=", B,
              ", L), got ", key_valid.sizes());
  args.typed(count, "count", at::kLong);
  TORCH_CHECK(count.dim() == 1 && count.size(0) == B, "frame_begin: count must be (B=", B, "), got ",
              count.sizes());
  args.typed(tail_pos, "tail_pos", at::kLong);
  TORCH_CHECK(tail_pos.dim() == 2 && tail_pos.size(0) == B && tail_pos.size(1) >= 1 &&
                  tail_pos.size(1) <= K + vision.size(2),
              "frame_begin: tail_pos must be (B=", B, ", n) with 1 <= n <= K + NV, got ", tail_pos.sizes());
  for (auto [x, name] : {std::pair{&key_valid, "key_valid"}, {&count, "count"}, {&tail_pos, "tail_pos"}}) {
    args.in_place(*x, name);
  }
  check_written_apart("frame_begin", {{"key_valid", &key_valid}, {"count", &count}, {"tail_pos", &tail_pos}},
                      {{"pend", &pend}, {"pend_len", &pend_len}, {"vision", &vision}, {"t", &t},
                       {"embed_weight", &embed_weight}, {"start", &start}});
}

std::tuple<at::Tensor, at::Tensor> frame_begin_cpu(const at::Tensor& pend_in, const at::Tensor& pend_len,
                                                   const at::Tensor& vision_in, const at::Tensor& t,
                                                   const at::Tensor& weight_in, const at::Tensor& start,
                                                   at::Tensor& key_valid, at::Tensor& count, at::Tensor& tail_pos,
                                                   int64_t eos) {
  check_frame_begin_inputs(pend_in, pend_len, vision_in, t, weight_in, start, key_valid, count, tail_pos);
  TORCH_CHECK(eos >= 0, "frame_begin: eos must be >= 0, got ", eos);
  TORCH_CHECK(pend_in.device().is_cpu(), "frame_begin_cpu expects CPU tensors");
  const at::Tensor pend = pend_in.contiguous(), vision = vision_in.contiguous(), weight = weight_in.contiguous();
  const int64_t B = pend.size(0), K = pend.size(1), T = vision.size(1), NV = vision.size(2), D = vision.size(3);
  const int64_t P = K + NV, V = weight.size(0), L = key_valid.size(1), NT = tail_pos.size(1);
  at::Tensor x = at::empty({B, P, D}, vision.options());
  at::Tensor positions = at::empty({B, P}, pend.options());
  const int64_t plen = pend_len.item<int64_t>(), tt = t.item<int64_t>();
  // a start beyond +-2^40 behaves like the bound (every slot outside the cache); s0 + j cannot overflow
  const int64_t s0 = std::clamp<int64_t>(start.item<int64_t>(), -(int64_t{1} << 40), int64_t{1} << 40);
  const int64_t* pd = pend.const_data_ptr<int64_t>();
  const float* vis = vision.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  float* xo = x.data_ptr<float>();
  int64_t* pos = positions.data_ptr<int64_t>();
  bool* kv = key_valid.data_ptr<bool>();
  int64_t* cnt = count.data_ptr<int64_t>();
  int64_t* tail = tail_pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t seen = 0;  // valid tokens so far in this row
    for (int64_t j = 0; j < P; ++j) {
      float* dst = xo + (b * P + j) * D;
      bool valid = true;
      const float* src = nullptr;  // null: a zero row (an id outside the table, or t outside the clip)
      if (j < K) {
        const int64_t id = pd[b * K + j];
        valid = j < plen && id != eos;
        if (id >= 0 && id < V) src = w + id * D;
      } else if (tt >= 0 && tt < T) {
        src = vis + ((b * T + tt) * NV + (j - K)) * D;
      }
      if (src != nullptr) std::copy(src, src + D, dst);
      else std::fill(dst, dst + D, 0.0f);
      seen += valid;
      pos[b * P + j] = cnt[b] + seen - 1;
      if (s0 + j >= 0 && s0 + j < L) kv[b * L + s0 + j] = valid;  // slots outside the cache: skipped
    }
    std::copy(pos + b * P + P - NT, pos + (b + 1) * P, tail + b * NT);
    cnt[b] += seen;
  }
  return {x, positions};
}

}  // namespace autogaze_ext
