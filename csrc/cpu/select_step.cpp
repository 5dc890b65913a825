// CPU kernel of select_step (spec §5.4): also the oracle the CUDA kernel is tested against.
// The argument checks (declared in ops.h) live here too: the CUDA glue calls them.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "ops.h"

namespace autogaze_ext {

namespace {

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "select_step: ", name, " must have shape ", shape, ", got ", t.sizes());
}

// Order-preserving float -> uint32 with torch.argmax's order: NaN above everything, -0 == +0.
inline uint32_t score_key(float x) {
  if (std::isnan(x)) return 0xFFFFFFFFu;
  if (x == 0.0f) x = 0.0f;
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

}  // namespace

// Shared with csrc/cuda/select_step_torch.cpp. In-place arguments must be contiguous (they are written
// through raw pointers); read-only ones are made contiguous by the callers.
void check_select_step_inputs(const at::Tensor& logits, const at::Tensor& loss_pred, const at::Tensor& cap,
                              const at::Tensor& req, const at::Tensor& has_req, const at::Tensor& banned,
                              const at::Tensor& unfinished, const at::Tensor& fids, const at::Tensor& n,
                              const at::Tensor& first, const at::Tensor& active) {
  TORCH_CHECK(logits.dim() == 3, "select_step: logits must be (B, K, V), got ", logits.sizes());
  const OpArgs args{"select_step", logits, "logits"};
  args.typed(logits, "logits", at::kFloat);
  const int64_t B = logits.size(0), K = logits.size(1), V = logits.size(2);
  TORCH_CHECK(K >= 1 && K <= 128, "select_step: logits must have 1 to 128 heads (dim 1), got ", K);
  TORCH_CHECK(V >= 1 && K * V < (int64_t{1} << 30), "select_step: logits vocabulary (dim 2) must be >= 1 with "
              "K*V < 2^30, got V=", V);
  args.typed(loss_pred, "loss_pred", at::kFloat);
  check_shape(loss_pred, "loss_pred", {B, K});
  args.typed(cap, "cap", at::kLong);
  args.scalar(cap, "cap");
  args.typed(req, "req", at::kFloat);
  check_shape(req, "req", {B});
  args.typed(has_req, "has_req", at::kBool);
  args.scalar(has_req, "has_req");
  args.typed(banned, "banned", at::kBool);
  check_shape(banned, "banned", {B, V});
  args.typed(unfinished, "unfinished", at::kBool);
  check_shape(unfinished, "unfinished", {B});
  args.typed(fids, "fids", at::kLong);
  TORCH_CHECK(fids.dim() == 2 && fids.size(0) == B, "select_step: fids must be (B=", B, ", F), got ",
              fids.sizes());
  args.typed(n, "n", at::kLong);
  args.scalar(n, "n");
  args.typed(first, "first", at::kBool);
  args.scalar(first, "first");
  args.typed(active, "active", at::kBool);
  args.scalar(active, "active");
  TORCH_CHECK(banned.is_contiguous() && unfinished.is_contiguous() && fids.is_contiguous(),
              "select_step: banned, unfinished and fids are updated in place and must be contiguous");
  check_written_apart("select_step",
                      {{"banned", &banned}, {"unfinished", &unfinished}, {"fids", &fids}, {"n", &n},
                       {"first", &first}, {"active", &active}},
                      {{"logits", &logits}, {"loss_pred", &loss_pred}, {"cap", &cap}, {"req", &req},
                       {"has_req", &has_req}});
}

at::Tensor select_step_cpu(const at::Tensor& logits_in, const at::Tensor& loss_pred_in, const at::Tensor& cap,
                           const at::Tensor& req_in, const at::Tensor& has_req, at::Tensor& banned,
                           at::Tensor& unfinished, at::Tensor& fids, at::Tensor& n, at::Tensor& first,
                           at::Tensor& active) {
  check_select_step_inputs(logits_in, loss_pred_in, cap, req_in, has_req, banned, unfinished, fids, n, first,
                           active);
  TORCH_CHECK(logits_in.device().is_cpu(), "select_step_cpu expects CPU tensors");
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor loss_pred = loss_pred_in.contiguous();
  const at::Tensor req = req_in.contiguous();
  const int64_t B = logits.size(0), K = logits.size(1), V = logits.size(2), F = fids.size(1);
  at::Tensor chunk = at::empty({B, K}, logits.options().dtype(at::kLong));

  // Every row reads the old shared scalars; they are updated once, after all rows.
  const int64_t n0 = n.item<int64_t>(), cap0 = cap.item<int64_t>();
  const bool first0 = first.item<bool>(), active0 = active.item<bool>(), has_req0 = has_req.item<bool>();
  const int64_t room = wrap_add(cap0, -n0);
  const int64_t k_max = active0 ? std::clamp<int64_t>(room, 0, K) : 0;
  const bool hit_cap = wrap_add(n0, K) >= cap0;
  const int64_t eos = V - 1;

  const float* lg = logits.const_data_ptr<float>();
  const float* lp = loss_pred.const_data_ptr<float>();
  const float* rq = req.const_data_ptr<float>();
  bool* bn = banned.data_ptr<bool>();
  bool* unf = unfinished.data_ptr<bool>();
  int64_t* fi = fids.data_ptr<int64_t>();
  int64_t* out = chunk.data_ptr<int64_t>();

  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> mask(V);  // banned ids plus this chunk's earlier picks: all read as -inf
    std::vector<int64_t> picks(K);
    for (int64_t b = begin; b < end; ++b) {
      std::memcpy(mask.data(), bn + b * V, V);
      for (int64_t k = 0; k < K; ++k) {
        const float* row = lg + (b * K + k) * V;
        const uint32_t neg_inf = score_key(-std::numeric_limits<float>::infinity());
        uint32_t best = 0;
        int64_t best_idx = 0;
        for (int64_t v = 0; v < V; ++v) {
          const uint32_t key = mask[v] ? neg_inf : score_key(row[v]);
          if (key > best) {  // strict: ties keep the smallest index, as torch.argmax
            best = key;
            best_idx = v;
          }
        }
        picks[k] = best_idx;
        mask[best_idx] = 1;
      }
      const bool unf_b = unf[b];
      bool any_met = false;
      for (int64_t k = 0; k < K; ++k) {
        const bool in_chunk = k < k_max;
        const bool met = has_req0 && lp[b * K + k] <= rq[b] && in_chunk && !(first0 && k == 0);
        const int64_t c = (unf_b && in_chunk && !met) ? picks[k] : eos;
        any_met |= met;
        out[b * K + k] = c;
        const int64_t col = wrap_add(n0, k);
        if (col >= 0 && col < F) fi[b * F + col] = c;  // never past the frame's id buffer
        bn[b * V + c] = true;
      }
      unf[b] = unf_b && !any_met && !hit_cap && active0;
    }
  });

  bool any = false;
  for (int64_t b = 0; b < B; ++b) any = any || unf[b];
  n.fill_(wrap_add(n0, k_max));
  first.fill_(first0 && !active0);
  active.fill_(active0 && any);
  return chunk;
}

}  // namespace autogaze_ext
