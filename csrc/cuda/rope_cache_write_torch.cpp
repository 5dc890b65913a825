// Torch glue of the rope_cache_write CUDA kernel: checks, device guard, current stream, registration.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "cuda/rope_cache_write.h"
#include "ops.h"

namespace autogaze_ext {

at::Tensor rope_cache_write_cuda(const at::Tensor& qkv_in, const at::Tensor& positions_in,
                                 const at::Tensor& inv_freq_in, at::Tensor& k_cache, at::Tensor& v_cache,
                                 const at::Tensor& start, int64_t num_heads, int64_t num_kv_heads) {
  const int64_t d = check_rope_cache_write_inputs(qkv_in, positions_in, inv_freq_in, k_cache, v_cache, start,
                                                  num_heads, num_kv_heads);
  TORCH_CHECK(qkv_in.is_cuda(), "rope_cache_write_cuda expects CUDA tensors");
  TORCH_CHECK(qkv_in.size(1) <= std::numeric_limits<int32_t>::max() &&
                  num_heads + 2 * num_kv_heads <= std::numeric_limits<int32_t>::max(),
              "rope_cache_write: too many tokens or heads");
  const c10::cuda::CUDAGuard guard(qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous(), positions = positions_in.contiguous(), inv = inv_freq_in.contiguous();
  const int64_t B = qkv.size(0), n = qkv.size(1);
  at::Tensor q_out = at::empty({B, num_heads, n, d}, qkv.options());
  C10_CUDA_CHECK(launch_rope_cache_write(qkv.const_data_ptr<float>(), positions.const_data_ptr<int64_t>(),
                                         inv.const_data_ptr<float>(), k_cache.data_ptr<float>(),
                                         v_cache.data_ptr<float>(), start.const_data_ptr<int64_t>(),
                                         q_out.data_ptr<float>(), B, n, num_heads, num_kv_heads, k_cache.size(2), d,
                                         c10::cuda::getCurrentCUDAStream().stream()));
  return q_out;
}

}  // namespace autogaze_ext
