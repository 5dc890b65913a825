// Torch glue of the preprocess CUDA kernels: checks, device guard, current stream, registration.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/preprocess.h"
#include "ops.h"

namespace autogaze_ext {

std::tuple<at::Tensor, at::Tensor> preprocess_cuda(const at::Tensor& frames_in, int64_t out_h, int64_t out_w,
                                                   int64_t model_size, double rescale, bool offset,
                                                   at::ArrayRef<double> mean, at::ArrayRef<double> std) {
  check_preprocess_inputs(frames_in, out_h, out_w, model_size, mean, std);
  check_finite_arg("preprocess", "rescale", rescale, true);
  TORCH_CHECK(frames_in.is_cuda(), "preprocess_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(frames_in.device());
  const at::Tensor frames = frames_in.contiguous();
  const int64_t N = frames.size(0), H = frames.size(1), W = frames.size(2);
  const bool is_uint8 = frames.scalar_type() == at::kByte;
  TORCH_CHECK(N * H <= (int64_t{1} << 40), "preprocess: too many rows");
  const auto fopt = frames.options().dtype(at::kFloat);
  at::Tensor processed = at::empty({N, 3, out_h, out_w}, fopt);
  at::Tensor model_input = model_size > 0 ? at::empty({N, 3, model_size, model_size}, fopt) : at::empty({0}, fopt);
  const auto bytes = static_cast<int64_t>(preprocess_workspace_bytes(N, H, W, out_h, out_w, is_uint8));
  at::Tensor workspace = at::empty({bytes}, frames.options().dtype(at::kByte));

  PreprocessArgs a{};
  a.frames = frames.const_data_ptr();
  a.is_uint8 = is_uint8;
  a.N = N;
  a.H = H;
  a.W = W;
  a.out_h = out_h;
  a.out_w = out_w;
  a.model_size = model_size;
  a.rescale = rescale;
  a.offset = offset;
  for (int c = 0; c < 3; ++c) {
    a.mean[c] = static_cast<float>(mean[c]);
    a.std[c] = static_cast<float>(std[c]);
  }
  a.workspace = workspace.data_ptr();
  a.processed = processed.data_ptr<float>();
  a.model_input = model_size > 0 ? model_input.data_ptr<float>() : nullptr;
  C10_CUDA_CHECK(launch_preprocess(a, c10::cuda::getCurrentCUDAStream().stream()));
  return {processed, model_input};
}

}  // namespace autogaze_ext
