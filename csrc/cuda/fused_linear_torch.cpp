// Torch glue of the fused_linear CUDA kernel: checks, device guard, current stream, registration.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <optional>

#include "cuda/fused_linear.h"
#include "ops.h"

namespace autogaze_ext {

at::Tensor fused_linear_cuda(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& norm_weight, double eps,
                             const std::optional<at::Tensor>& residual, bool swiglu) {
  const int64_t n_out = check_fused_linear_inputs(x, weight, norm_weight, residual, swiglu);
  check_finite_arg("fused_linear", "eps", eps, norm_weight.has_value());  // > 0 where the RMSNorm reads it
  TORCH_CHECK(x.is_cuda(), "fused_linear_cuda expects CUDA tensors");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  TORCH_CHECK(K <= kFusedLinearMaxK, "fused_linear: K must be <= ", kFusedLinearMaxK, ", got ", K);
  TORCH_CHECK(N <= INT_MAX / 2 && fused_linear_max_blocks(M, n_out) <= INT_MAX,
              "fused_linear: (M, N) = (", M, ", ", N, ") is too large for one launch");
  const c10::cuda::CUDAGuard guard(x.device());

  at::Tensor out = at::empty({M, n_out}, x.options());
  if (M == 0) return out;
  C10_CUDA_CHECK(launch_fused_linear(
      x.const_data_ptr<float>(), weight.const_data_ptr<float>(),
      norm_weight.has_value() ? norm_weight->const_data_ptr<float>() : nullptr, static_cast<float>(eps),
      residual.has_value() ? residual->const_data_ptr<float>() : nullptr, swiglu, M, K, N, out.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace autogaze_ext
