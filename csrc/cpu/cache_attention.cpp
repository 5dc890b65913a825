// CPU kernel of cache_attention (also the oracle of the CUDA kernels) and the argument checks that both
// backends share (declared in ops.h).
//
// Query i of row b sits at slot s_i = start + i and attends keys j <= s_i with key_valid[b, j] or j == s_i,
// scale 1/sqrt(d), fp32 softmax. A query with no key to attend (slot outside the cache, nothing valid
// below it) gets NaN, like a softmax over all -inf scores.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"

namespace autogaze_ext {

// Checks shared by the CPU and CUDA ops.
void check_cache_attention_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& key_valid, const at::Tensor& start) {
  TORCH_CHECK(q.dim() == 4, "q must be (B, H, n, d), got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat, "q must be float32, got ", q.scalar_type());
  const int64_t B = q.size(0), H = q.size(1), d = q.size(3);
  TORCH_CHECK(d >= 1 && d <= 256, "head dim must be in [1, 256], got ", d);
  for (const auto* c : {&k_cache, &v_cache}) {
    const char* name = c == &k_cache ? "k_cache" : "v_cache";
    TORCH_CHECK(c->scalar_type() == at::kFloat, name, " must be float32, got ", c->scalar_type());
    TORCH_CHECK(c->dim() == 4 && c->size(0) == B && c->size(3) == d, name, " must be (B, KVH, L, d) with B = ", B,
                " and d = ", d, ", got ", c->sizes());
  }
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache ", v_cache.sizes(), " must match k_cache ",
              k_cache.sizes());
  const int64_t KVH = k_cache.size(1), L = k_cache.size(2);
  TORCH_CHECK(KVH >= 1 && H % KVH == 0, "num heads ", H, " must be a multiple of num kv heads ", KVH);
  TORCH_CHECK(L < (int64_t{1} << 31), "cache length must be < 2^31");
  TORCH_CHECK(key_valid.scalar_type() == at::kBool, "key_valid must be bool, got ", key_valid.scalar_type());
  TORCH_CHECK(key_valid.dim() == 2 && key_valid.size(0) == B && key_valid.size(1) == L,
              "key_valid must be (B, L) = (", B, ", ", L, "), got ", key_valid.sizes());
  TORCH_CHECK(start.scalar_type() == at::kLong && start.numel() == 1, "start must be a 1-element int64 tensor, got ",
              start.scalar_type(), " ", start.sizes());
  for (const auto* t : {&k_cache, &v_cache, &key_valid, &start}) {
    TORCH_CHECK(t->device() == q.device(), "all cache_attention tensors must be on ", q.device(), ", got ",
                t->device());
  }
}

// tf32: a GPU mode (TF32 tensor-core products); the CPU computes in fp32 either way.
at::Tensor cache_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                               const at::Tensor& valid_in, const at::Tensor& start, bool /*tf32*/) {
  check_cache_attention_inputs(q_in, k_in, v_in, valid_in, start);
  TORCH_CHECK(q_in.device().is_cpu(), "cache_attention_cpu expects CPU tensors");
  const at::Tensor q = q_in.contiguous(), kc = k_in.contiguous(), vc = v_in.contiguous();
  const at::Tensor valid = valid_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), d = q.size(3);
  const int64_t KVH = kc.size(1), L = kc.size(2), rep = H / KVH;
  const int64_t s0 = std::clamp<int64_t>(start.item<int64_t>(), -(int64_t{1} << 40), int64_t{1} << 40);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr int64_t kBlock = 64;  // p @ v summed in 64-key blocks: much smaller rounding error than one long sum

  at::Tensor out = at::empty({B, H, n, d}, q.options());
  const float* qp = q.const_data_ptr<float>();
  const float* kp = kc.const_data_ptr<float>();
  const float* vp = vc.const_data_ptr<float>();
  const bool* vb = valid.const_data_ptr<bool>();
  float* op = out.data_ptr<float>();

  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sc(static_cast<size_t>(std::max<int64_t>(L, 1))), blk(d), acc(d);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* kr = kp + (b * KVH + h / rep) * L * d;
      const float* vr = vp + (b * KVH + h / rep) * L * d;
      const bool* ok = vb + b * L;
      for (int64_t i = 0; i < n; ++i) {
        const float* qi = qp + (bh * n + i) * d;
        float* oi = op + (bh * n + i) * d;
        const int64_t si = s0 + i, kend = std::min(si, L - 1);  // keys 0..kend (none when kend < 0)
        float mx = kNegInf;
        for (int64_t j = 0; j <= kend; ++j) {
          float s = kNegInf;
          if (ok[j] || j == si) {
            float dot = 0.f;
            for (int64_t c = 0; c < d; ++c) dot += qi[c] * kr[j * d + c];
            s = dot * scale;
          }
          sc[j] = s;
          mx = std::max(mx, s);
        }
        if (mx == kNegInf) {  // nothing to attend
          std::fill_n(oi, d, std::numeric_limits<float>::quiet_NaN());
          continue;
        }
        float sum = 0.f;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t j0 = 0; j0 <= kend; j0 += kBlock) {
          float bsum = 0.f;
          std::fill(blk.begin(), blk.end(), 0.f);
          for (int64_t j = j0; j <= std::min(kend, j0 + kBlock - 1); ++j) {
            if (!(ok[j] || j == si)) continue;  // a masked key is absent: its value is never read (no 0 * NaN)
            const float p = std::exp(sc[j] - mx);
            bsum += p;
            for (int64_t c = 0; c < d; ++c) blk[c] += p * vr[j * d + c];
          }
          sum += bsum;
          for (int64_t c = 0; c < d; ++c) acc[c] += blk[c];
        }
        for (int64_t c = 0; c < d; ++c) oi[c] = acc[c] / sum;
      }
    }
  });
  return out;
}

}  // namespace autogaze_ext
