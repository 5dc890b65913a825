// Torch glue of the cache_attention CUDA kernels: checks, device guard, current stream, workspace from
// torch's caching allocator (its size depends on shapes only), registration.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "cuda/cache_attention.h"
#include "ops.h"

namespace autogaze_ext {
namespace {

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

at::Tensor cache_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                const at::Tensor& valid_in, const at::Tensor& start, bool tf32) {
  check_cache_attention_inputs(q_in, k_in, v_in, valid_in, start);
  TORCH_CHECK(q_in.is_cuda(), "cache_attention_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), kc = k_in.contiguous(), vc = v_in.contiguous();
  const at::Tensor valid = valid_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), d = q.size(3);
  const int64_t KVH = kc.size(1), L = kc.size(2);
  at::Tensor out = at::empty({B, H, n, d}, q.options());
  if (out.numel() == 0) return out;
  if (L == 0) return out.fill_(std::numeric_limits<float>::quiet_NaN());  // no key at all

  const bool aligned = aligned16(q.const_data_ptr()) && aligned16(kc.const_data_ptr()) &&
                       aligned16(vc.const_data_ptr()) && aligned16(out.const_data_ptr());
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const CacheAttentionPlan plan = plan_cache_attention(B, H, n, L, d, aligned, sms, tf32);
  constexpr int64_t kGridYZ = 65535;
  TORCH_CHECK(B * H <= std::numeric_limits<int32_t>::max() && (n + plan.q_tile - 1) / plan.q_tile <= kGridYZ &&
                  plan.num_splits <= kGridYZ && B * H * n / 4 < std::numeric_limits<int32_t>::max(),
              "cache_attention: shapes too large for one launch (B*H=", B * H, ", n=", n, ", L=", L, ")");
  at::Tensor workspace;
  if (plan.workspace_floats > 0) workspace = at::empty({plan.workspace_floats}, q.options());
  C10_CUDA_CHECK(launch_cache_attention(plan, q.const_data_ptr<float>(), kc.const_data_ptr<float>(),
                                        vc.const_data_ptr<float>(), valid.const_data_ptr<bool>(),
                                        start.const_data_ptr<int64_t>(), out.data_ptr<float>(),
                                        workspace.defined() ? workspace.data_ptr<float>() : nullptr, B, H, KVH, n, L,
                                        d, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace autogaze_ext
