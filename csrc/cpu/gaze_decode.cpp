// CPU kernel of gaze_decode: also the oracle the CUDA kernel is tested against.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <atomic>

#include "ops.h"

namespace autogaze_ext {

std::tuple<at::Tensor, at::Tensor> gaze_decode_cpu(const at::Tensor& gazing_pos, const at::Tensor& if_padded,
                                                   int64_t num_frames, at::IntArrayRef grids) {
  check_gaze_decode_inputs(gazing_pos, if_padded, num_frames);
  TORCH_CHECK(gazing_pos.device().is_cpu(), "gaze_decode_cpu expects CPU tensors");
  const ScaleLayout L = make_scale_layout(grids);
  const at::Tensor pos = gazing_pos.contiguous();
  const at::Tensor pad = if_padded.contiguous();
  const int64_t B = pos.size(0), N = pos.size(1), V = tokens_per_frame(L);
  const int64_t video_size = num_frames * V;

  at::Tensor mask = at::zeros({B, num_frames, V}, pos.options().dtype(at::kFloat));
  at::Tensor coords = at::empty({B, N, 4}, pos.options().dtype(at::kInt));
  const int64_t* p = pos.const_data_ptr<int64_t>();
  const bool* pd = pad.const_data_ptr<bool>();
  float* m = mask.data_ptr<float>();
  int32_t* c = coords.data_ptr<int32_t>();

  at::parallel_for(0, B * N, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int32_t* out = c + 4 * i;
      if (!pd[i] && decode_gaze_id(p[i], num_frames, L, out)) {
        // Two slots may select the same id from different threads: an atomic store keeps that race defined.
        std::atomic_ref<float>(m[(i / N) * video_size + p[i]]).store(1.0f, std::memory_order_relaxed);
      } else {
        out[0] = out[1] = out[2] = out[3] = -1;  // padded, or an invalid id the wrapper did not validate
      }
    }
  });
  return {mask, coords};
}

}  // namespace autogaze_ext
