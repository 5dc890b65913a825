// Torch glue of the decoder_layers CUDA kernel: checks, device guard, current stream, workspace from torch's
// caching allocator (its size depends on shapes only), registration. Shapes the persistent kernel is not
// built for, and calls too large for it to win, run the composed ops instead.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "cuda/decoder_layers.h"
#include "ops.h"

namespace autogaze_ext {
namespace {

bool aligned16(const at::Tensor& t) { return (reinterpret_cast<uintptr_t>(t.const_data_ptr()) & 15) == 0; }

}  // namespace

at::Tensor decoder_layers_cuda(const at::Tensor& x_in, const at::Tensor& positions_in, const at::Tensor& inv_freq,
                               at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key_valid_in,
                               const at::Tensor& start, const at::Tensor& w_qkv_in, const at::Tensor& w_o_in,
                               const at::Tensor& w_gu_in, const at::Tensor& w_down_in, const at::Tensor& norm_attn_in,
                               const at::Tensor& norm_mlp_in, double eps, int64_t num_heads, int64_t num_kv_heads,
                               bool last_only) {
  check_decoder_layers_inputs(x_in, positions_in, inv_freq, k_cache, v_cache, key_valid_in, start, w_qkv_in, w_o_in,
                              w_gu_in, w_down_in, norm_attn_in, norm_mlp_in, num_heads, num_kv_heads);
  check_finite_arg("decoder_layers", "eps", eps, true);
  TORCH_CHECK(x_in.is_cuda(), "decoder_layers_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(x_in.device());
  if (x_in.numel() == 0) return at::empty(decoder_layers_out_shape(x_in, last_only), x_in.options());
  const at::Tensor x = x_in.contiguous(), positions = positions_in.contiguous(), key_valid = key_valid_in.contiguous();
  const at::Tensor w_qkv = w_qkv_in.contiguous(), w_o = w_o_in.contiguous(), w_gu = w_gu_in.contiguous();
  const at::Tensor w_down = w_down_in.contiguous(), norm_attn = norm_attn_in.contiguous();
  const at::Tensor norm_mlp = norm_mlp_in.contiguous(), freq = inv_freq.contiguous();
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2), L = k_cache.size(3), d = k_cache.size(4);
  const bool built_for = D == kDecoderHidden && d == kDecoderHeadDim && w_gu.size(1) == 2 * kDecoderIntermediate &&
                         num_heads * d == D && L >= 1 && n <= kDecoderPersistentMaxTokens &&
                         B * n <= kDecoderPersistentMaxRows;
  const bool aligned = aligned16(x) && aligned16(k_cache) && aligned16(v_cache) && aligned16(w_qkv) &&
                       aligned16(w_o) && aligned16(w_gu) && aligned16(w_down);
  if (!built_for || !aligned) {
    return decoder_layers_composed(x, positions, freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down,
                                   norm_attn, norm_mlp, eps, num_heads, num_kv_heads, last_only);
  }
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  at::Tensor out = at::empty(decoder_layers_out_shape(x, last_only), x.options());
  at::Tensor workspace = at::empty({decoder_layers_workspace_floats(B, n, num_heads, L, sms)}, x.options());
  DecoderLayersArgs a;
  a.x = x.const_data_ptr<float>();
  a.positions = positions.const_data_ptr<int64_t>();
  a.inv_freq = freq.const_data_ptr<float>();
  a.k_cache = k_cache.data_ptr<float>();
  a.v_cache = v_cache.data_ptr<float>();
  a.key_valid = key_valid.const_data_ptr<bool>();
  a.start = start.const_data_ptr<int64_t>();
  a.w_qkv = w_qkv.const_data_ptr<float>();
  a.w_o = w_o.const_data_ptr<float>();
  a.w_gu = w_gu.const_data_ptr<float>();
  a.w_down = w_down.const_data_ptr<float>();
  a.norm_attn = norm_attn.const_data_ptr<float>();
  a.norm_mlp = norm_mlp.const_data_ptr<float>();
  a.eps = static_cast<float>(eps);
  a.out = last_only ? nullptr : out.data_ptr<float>();
  a.last_out = last_only ? out.data_ptr<float>() : nullptr;
  a.workspace = workspace.data_ptr<float>();
  a.batch = B, a.n = n, a.layers = k_cache.size(0), a.cache_len = L;
  a.num_heads = num_heads, a.num_kv_heads = num_kv_heads;
  C10_CUDA_CHECK(launch_decoder_layers(a, sms, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace autogaze_ext
