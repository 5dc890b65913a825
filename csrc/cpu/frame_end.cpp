// CPU kernel of frame_end (the bookkeeping at the end of a frame of the fast decoding path, spec §5.6): also
// the oracle the CUDA kernel is tested against. The argument checks live here (ops.h is shared).
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

#include "ops.h"

namespace autogaze_ext {

void check_frame_end_inputs(const at::Tensor& fids, const at::Tensor& n, const at::Tensor& frame_start,
                            const at::Tensor& t, const at::Tensor& key_valid, const at::Tensor& count,
                            const at::Tensor& pend, const at::Tensor& pend_len, const at::Tensor& out_ids,
                            const at::Tensor& out_n) {
  const OpArgs args{"frame_end", fids, "fids"};
  args.typed(fids, "fids", at::kLong);
  TORCH_CHECK(fids.dim() == 2 && fids.size(1) >= 1, "frame_end: fids must be (B, W) with W >= 1, got ",
              fids.sizes());
  const int64_t B = fids.size(0), W = fids.size(1);
  for (auto [x, name] : {std::pair{&n, "n"}, {&frame_start, "frame_start"}, {&t, "t"}, {&pend_len, "pend_len"}}) {
    args.typed(*x, name, at::kLong);
    args.scalar(*x, name);
  }
  args.typed(key_valid, "key_valid", at::kBool);
  TORCH_CHECK(key_valid.dim() == 2 && key_valid.size(0) == B, "frame_end: key_valid must be (B=", B,
              ", L), got ", key_valid.sizes());
  args.typed(count, "count", at::kLong);
  TORCH_CHECK(count.dim() == 1 && count.size(0) == B, "frame_end: count must be (B=", B, "), got ", count.sizes());
  args.typed(pend, "pend", at::kLong);
  TORCH_CHECK(pend.dim() == 2 && pend.size(0) == B && pend.size(1) >= 1 && pend.size(1) <= W,
              "frame_end: pend must be (B=", B, ", K) with 1 <= K <= W=", W, ", got ", pend.sizes());
  args.typed(out_ids, "out_ids", at::kLong);
  TORCH_CHECK(out_ids.dim() == 3 && out_ids.size(0) == B && out_ids.size(2) == W,
              "frame_end: out_ids must be (B=", B, ", T, W=", W, "), got ", out_ids.sizes());
  args.typed(out_n, "out_n", at::kLong);
  TORCH_CHECK(out_n.dim() == 1 && out_n.size(0) == out_ids.size(1), "frame_end: out_n must be (T=",
              out_ids.size(1), "), got ", out_n.sizes());
  for (auto [x, name] : {std::pair{&key_valid, "key_valid"}, {&count, "count"}, {&pend, "pend"},
                         {&pend_len, "pend_len"}, {&out_ids, "out_ids"}, {&out_n, "out_n"}}) {
    args.in_place(*x, name);
  }
  check_written_apart("frame_end",
                      {{"key_valid", &key_valid}, {"count", &count}, {"pend", &pend}, {"pend_len", &pend_len},
                       {"out_ids", &out_ids}, {"out_n", &out_n}},
                      {{"fids", &fids}, {"n", &n}, {"frame_start", &frame_start}, {"t", &t}});
}

void frame_end_cpu(const at::Tensor& fids_in, const at::Tensor& n, const at::Tensor& frame_start,
                   const at::Tensor& t, at::Tensor& key_valid, at::Tensor& count, at::Tensor& pend,
                   at::Tensor& pend_len, at::Tensor& out_ids, at::Tensor& out_n, int64_t eos) {
  check_frame_end_inputs(fids_in, n, frame_start, t, key_valid, count, pend, pend_len, out_ids, out_n);
  TORCH_CHECK(eos >= 0, "frame_end: eos must be >= 0, got ", eos);
  TORCH_CHECK(fids_in.device().is_cpu(), "frame_end_cpu expects CPU tensors");
  const at::Tensor fids = fids_in.contiguous();
  const int64_t B = fids.size(0), W = fids.size(1), L = key_valid.size(1), K = pend.size(1);
  const int64_t T = out_ids.size(1);
  const int64_t nn = std::clamp<int64_t>(n.item<int64_t>(), 0, W);  // the documented clamp
  const int64_t fed = K * (std::max<int64_t>(nn - 1, 0) / K);
  const int64_t tt = t.item<int64_t>();
  // a start beyond +-2^40 behaves like the bound (every slot outside the cache); s0 + j cannot overflow
  const int64_t s0 = std::clamp<int64_t>(frame_start.item<int64_t>(), -(int64_t{1} << 40), int64_t{1} << 40);
  const int64_t* f = fids.const_data_ptr<int64_t>();
  bool* kv = key_valid.data_ptr<bool>();
  int64_t* cnt = count.data_ptr<int64_t>();
  int64_t* pd = pend.data_ptr<int64_t>();
  int64_t* oi = out_ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = f + b * W;
    int64_t real = 0;
    for (int64_t j = 0; j < fed; ++j) {
      const bool is_real = row[j] != eos;
      real += is_real;
      // slots outside the cache are skipped (the caller sizes the cache so that they never occur)
      if (s0 + j >= 0 && s0 + j < L) kv[b * L + s0 + j] = is_real;
    }
    cnt[b] += real;
    for (int64_t k = 0; k < K; ++k) pd[b * K + k] = k < nn - fed ? row[fed + k] : eos;
    if (tt >= 0 && tt < T) std::copy(row, row + W, oi + (b * T + tt) * W);
  }
  pend_len.data_ptr<int64_t>()[0] = nn - fed;
  if (tt >= 0 && tt < T) out_n.data_ptr<int64_t>()[tt] = nn;
}

}  // namespace autogaze_ext
