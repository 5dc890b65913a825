// Torch glue of the gaze_decode CUDA kernel: checks, device guard, current stream, registration.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/gaze_decode.h"
#include "ops.h"

namespace autogaze_ext {
std::tuple<at::Tensor, at::Tensor> gaze_decode_cuda(const at::Tensor& gazing_pos, const at::Tensor& if_padded,
                                                    int64_t num_frames, at::IntArrayRef grids) {
  check_gaze_decode_inputs(gazing_pos, if_padded, num_frames);
  TORCH_CHECK(gazing_pos.is_cuda(), "gaze_decode_cuda expects CUDA tensors");
  const ScaleLayout L = make_scale_layout(grids);
  const c10::cuda::CUDAGuard guard(gazing_pos.device());
  const at::Tensor pos = gazing_pos.contiguous();
  const at::Tensor pad = if_padded.contiguous();
  const int64_t B = pos.size(0), N = pos.size(1);

  at::Tensor mask = at::empty({B, num_frames, tokens_per_frame(L)}, pos.options().dtype(at::kFloat));
  at::Tensor coords = at::empty({B, N, 4}, pos.options().dtype(at::kInt));
  C10_CUDA_CHECK(launch_gaze_decode(pos.const_data_ptr<int64_t>(), pad.const_data_ptr<bool>(), B, N, num_frames, L,
                                    mask.data_ptr<float>(), coords.data_ptr<int32_t>(),
                                    c10::cuda::getCurrentCUDAStream().stream()));
  return {mask, coords};
}

}  // namespace autogaze_ext
