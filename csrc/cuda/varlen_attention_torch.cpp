// Torch glue of the varlen_attention CUDA kernels: checks, device guard, current stream, registration.
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string_view>

#include "cuda/varlen_attention.h"
#include "ops.h"

namespace autogaze_ext {
at::Tensor varlen_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& cu_seqlens, const at::Tensor& cu_frames, c10::string_view mode_str,
                                 double scale, int64_t num_prefix) {
  // Offset values are not checked here (that would need a device->host copy): the Python wrapper validates
  // them, and the kernels clamp whatever they read to [0, total].
  const VarlenMode mode = check_varlen_attention_inputs(q, k, v, cu_seqlens, cu_frames,
                                                        std::string_view(mode_str.data(), mode_str.size()), num_prefix);
  check_finite_arg("varlen_attention", "scale", scale, true);
  TORCH_CHECK(q.is_cuda(), "varlen_attention_cuda expects CUDA tensors");
  TORCH_CHECK(q.size(1) <= 65535, "varlen_attention: at most 65535 heads");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  const auto dt = q.scalar_type();
  const VarlenDtype dtype = dt == at::kHalf ? VarlenDtype::kFloat16
                            : dt == at::kBFloat16 ? VarlenDtype::kBFloat16 : VarlenDtype::kFloat32;
  C10_CUDA_CHECK(launch_varlen_attention(q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(), out.data_ptr(),
                                         cu_seqlens.const_data_ptr<int32_t>(), cu_seqlens.size(0) - 1,
                                         cu_frames.const_data_ptr<int32_t>(), cu_frames.size(0) - 1, q.size(0),
                                         q.size(1), q.size(2), dtype, static_cast<int>(mode), static_cast<float>(scale),
                                         num_prefix, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace autogaze_ext
