// CPU kernel of fused_linear, and the argument checks shared with the CUDA glue.
// Prologue (RMSNorm) and epilogue (SwiGLU, residual) are plain loops; the product itself is at::mm.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "ops.h"

namespace autogaze_ext {

constexpr int64_t kFusedLinearMaxKCpu = 1024;  // kFusedLinearMaxK of cuda/fused_linear.h (the CUDA kernel's limit)

// Checks what both kernels rely on; returns the number of output columns.
int64_t check_fused_linear_inputs(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& norm_weight,
                                  const std::optional<at::Tensor>& residual, bool swiglu) {
  TORCH_CHECK(x.dim() == 2, "fused_linear: x must be (M, K), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, "fused_linear: weight must be (N, K), got ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "fused_linear: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "fused_linear: weight must be float32, got ", weight.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "fused_linear: x must be contiguous");
  TORCH_CHECK(weight.is_contiguous(), "fused_linear: weight must be contiguous");
  TORCH_CHECK(weight.device() == x.device(), "fused_linear: weight is on ", weight.device(), " but x on ", x.device());
  const int64_t K = x.size(1), N = weight.size(0);
  TORCH_CHECK(K >= 1 && K <= kFusedLinearMaxKCpu, "fused_linear: K = x.size(1) must be in [1, ", kFusedLinearMaxKCpu,
              "], got ", K);
  TORCH_CHECK(weight.size(1) == K, "fused_linear: weight ", weight.sizes(), " must be (N, ", K, ")");
  TORCH_CHECK(N >= 1, "fused_linear: weight must have at least one row");
  TORCH_CHECK(!swiglu || N % 2 == 0, "fused_linear: swiglu needs an even number of weight rows, got ", N);
  const int64_t n_out = swiglu ? N / 2 : N;
  if (norm_weight.has_value()) {
    const at::Tensor& nw = *norm_weight;
    TORCH_CHECK(nw.dim() == 1 && nw.size(0) == K, "fused_linear: norm_weight must be (", K, "), got ", nw.sizes());
    TORCH_CHECK(nw.scalar_type() == at::kFloat, "fused_linear: norm_weight must be float32, got ", nw.scalar_type());
    TORCH_CHECK(nw.is_contiguous(), "fused_linear: norm_weight must be contiguous");
    TORCH_CHECK(nw.device() == x.device(), "fused_linear: norm_weight is on ", nw.device(), " but x on ", x.device());
  }
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.dim() == 2 && r.size(0) == x.size(0) && r.size(1) == n_out, "fused_linear: residual must be (",
                x.size(0), ", ", n_out, "), got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == at::kFloat, "fused_linear: residual must be float32, got ", r.scalar_type());
    TORCH_CHECK(r.is_contiguous(), "fused_linear: residual must be contiguous");
    TORCH_CHECK(r.device() == x.device(), "fused_linear: residual is on ", r.device(), " but x on ", x.device());
  }
  return n_out;
}

at::Tensor fused_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& norm_weight,
                            double eps, const std::optional<at::Tensor>& residual, bool swiglu) {
  const int64_t n_out = check_fused_linear_inputs(x, weight, norm_weight, residual, swiglu);
  check_finite_arg("fused_linear", "eps", eps, norm_weight.has_value());  // > 0 where the RMSNorm reads it
  TORCH_CHECK(x.device().is_cpu(), "fused_linear_cpu expects CPU tensors");
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t grain = std::max<int64_t>(1, 32768 / (K + n_out));

  at::Tensor xn = x;
  if (norm_weight.has_value()) {
    // HF LlamaRMSNorm in fp32: norm_weight * (x * rsqrt(mean(x^2) + eps)).
    xn = at::empty_like(x);
    const float* src = x.const_data_ptr<float>();
    const float* nw = norm_weight->const_data_ptr<float>();
    float* dst = xn.data_ptr<float>();
    const float feps = static_cast<float>(eps);
    at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const float* row = src + m * K;
        float ss = 0.0f;
        for (int64_t k = 0; k < K; ++k) ss += row[k] * row[k];
        const float inv = 1.0f / std::sqrt(ss / static_cast<float>(K) + feps);
        for (int64_t k = 0; k < K; ++k) dst[m * K + k] = nw[k] * (row[k] * inv);
      }
    });
  }

  at::Tensor y = at::mm(xn, weight.t());  // (M, N), fresh
  if (!swiglu) {
    if (residual.has_value()) y.add_(*residual);  // residual + y (fp32 addition commutes exactly)
    return y;
  }

  at::Tensor out = at::empty({M, n_out}, x.options());
  const float* yp = y.const_data_ptr<float>();
  const float* rp = residual.has_value() ? residual->const_data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t N = 2 * n_out;
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t c = 0; c < n_out; ++c) {
        const float g = yp[m * N + c], u = yp[m * N + n_out + c];
        float v = g / (1.0f + std::exp(-g)) * u;
        if (rp != nullptr) v = rp[m * n_out + c] + v;
        op[m * n_out + c] = v;
      }
    }
  });
  return out;
}

}  // namespace autogaze_ext
