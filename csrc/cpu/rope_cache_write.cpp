// CPU kernel of rope_cache_write (also the oracle of the CUDA kernel) and the argument checks that
// both backends share (declared in ops.h).
//
// qkv (B, n, (H + 2*KVH) * d): q | k | v, each head-major. q and k get rotate-half RoPE with angles
// float32(position) * inv_freq[i % (d/2)] (decoder.py rope_cos_sin); rotated k and plain v go to
// cache slots start + j; slots outside [0, L) are skipped (start is a device value: never trusted).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"

namespace autogaze_ext {

// Checks shared by the CPU and CUDA ops; returns the head dim d.
int64_t check_rope_cache_write_inputs(const at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& inv_freq,
                                      const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& start,
                                      int64_t num_heads, int64_t num_kv_heads) {
  TORCH_CHECK(num_heads >= 1 && num_kv_heads >= 1, "num_heads and num_kv_heads must be >= 1, got ", num_heads,
              " and ", num_kv_heads);
  TORCH_CHECK(qkv.dim() == 3, "qkv must be (B, n, (H + 2*KVH) * d), got ", qkv.sizes());
  TORCH_CHECK(qkv.scalar_type() == at::kFloat, "qkv must be float32, got ", qkv.scalar_type());
  const int64_t B = qkv.size(0), n = qkv.size(1), heads = num_heads + 2 * num_kv_heads;
  TORCH_CHECK(qkv.size(2) % heads == 0, "qkv width ", qkv.size(2),
              " is not a multiple of num_heads + 2*num_kv_heads = ", heads);
  const int64_t d = qkv.size(2) / heads;
  TORCH_CHECK(d >= 2 && d <= 256 && d % 2 == 0, "head dim must be even and in [2, 256], got ", d);
  TORCH_CHECK(positions.scalar_type() == at::kLong, "positions must be int64, got ", positions.scalar_type());
  TORCH_CHECK(positions.dim() == 2 && positions.size(0) == B && positions.size(1) == n, "positions must be (B, n) = (",
              B, ", ", n, "), got ", positions.sizes());
  TORCH_CHECK(inv_freq.scalar_type() == at::kFloat, "inv_freq must be float32, got ", inv_freq.scalar_type());
  TORCH_CHECK(inv_freq.dim() == 1 && inv_freq.size(0) == d / 2, "inv_freq must be (d/2,) = (", d / 2, ",), got ",
              inv_freq.sizes());
  for (const auto* c : {&k_cache, &v_cache}) {
    const char* name = c == &k_cache ? "k_cache" : "v_cache";
    TORCH_CHECK(c->scalar_type() == at::kFloat, name, " must be float32, got ", c->scalar_type());
    TORCH_CHECK(c->dim() == 4 && c->size(0) == B && c->size(1) == num_kv_heads && c->size(3) == d, name,
                " must be (B, KVH, L, d) = (", B, ", ", num_kv_heads, ", L, ", d, "), got ", c->sizes());
    TORCH_CHECK(c->is_contiguous(), name, " must be contiguous (it is written in place)");
  }
  TORCH_CHECK(v_cache.size(2) == k_cache.size(2), "k_cache and v_cache must have the same length L");
  TORCH_CHECK(k_cache.size(2) < (int64_t{1} << 31), "cache length must be < 2^31");
  TORCH_CHECK(start.scalar_type() == at::kLong && start.numel() == 1, "start must be a 1-element int64 tensor, got ",
              start.scalar_type(), " ", start.sizes());
  for (const auto* t : {&positions, &inv_freq, &k_cache, &v_cache, &start}) {
    TORCH_CHECK(t->device() == qkv.device(), "all rope_cache_write tensors must be on ", qkv.device(), ", got ",
                t->device());
  }
  check_written_apart("rope_cache_write", {{"k_cache", &k_cache}, {"v_cache", &v_cache}},
                      {{"qkv", &qkv}, {"positions", &positions}, {"inv_freq", &inv_freq}, {"start", &start}});
  return d;
}

at::Tensor rope_cache_write_cpu(const at::Tensor& qkv_in, const at::Tensor& positions_in, const at::Tensor& inv_freq_in,
                                at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& start,
                                int64_t num_heads, int64_t num_kv_heads) {
  const int64_t d = check_rope_cache_write_inputs(qkv_in, positions_in, inv_freq_in, k_cache, v_cache, start,
                                                  num_heads, num_kv_heads);
  TORCH_CHECK(qkv_in.device().is_cpu(), "rope_cache_write_cpu expects CPU tensors");
  const at::Tensor qkv = qkv_in.contiguous(), positions = positions_in.contiguous(), inv = inv_freq_in.contiguous();
  const int64_t B = qkv.size(0), n = qkv.size(1), H = num_heads, KVH = num_kv_heads, L = k_cache.size(2);
  const int64_t half = d / 2, width = (H + 2 * KVH) * d;
  // Any start outside [-2^40, 2^40] behaves like one at the bound (every slot skipped) and
  // start + j cannot overflow.
  const int64_t s0 = std::clamp<int64_t>(start.item<int64_t>(), -(int64_t{1} << 40), int64_t{1} << 40);

  at::Tensor q_out = at::empty({B, H, n, d}, qkv.options());
  const float* x = qkv.const_data_ptr<float>();
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  const float* f = inv.const_data_ptr<float>();
  float* qo = q_out.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();

  at::parallel_for(0, B * n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> cs(half), sn(half);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / n, j = t % n, slot = s0 + j;
      const bool in_cache = slot >= 0 && slot < L;
      // One fp32 multiply, then cos/sin of it: exactly rope_cos_sin's angles.
      const float p = static_cast<float>(pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float a = p * f[i];
        cs[i] = std::cos(a);
        sn[i] = std::sin(a);
      }
      const float* row = x + t * width;
      // rotate-half, as x * cos + rotate_half(x) * sin (two products, one sum: no fused multiply-add)
      auto rotate = [&](const float* src, float* dst) {
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = src[i], x2 = src[i + half];
          const float a1 = x1 * cs[i], b1 = x2 * sn[i];
          const float a2 = x2 * cs[i], b2 = x1 * sn[i];
          dst[i] = a1 - b1;
          dst[i + half] = a2 + b2;
        }
      };
      for (int64_t h = 0; h < H; ++h) rotate(row + h * d, qo + ((b * H + h) * n + j) * d);
      if (!in_cache) continue;
      for (int64_t h = 0; h < KVH; ++h) {
        const int64_t off = ((b * KVH + h) * L + slot) * d;
        rotate(row + (H + h) * d, kc + off);
        std::copy_n(row + (H + KVH + h) * d, d, vc + off);
      }
    }
  });
  return q_out;
}

}  // namespace autogaze_ext
