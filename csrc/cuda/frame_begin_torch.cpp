// Torch glue of the frame_begin CUDA kernel: checks, device guard, current stream, registration.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "cuda/frame_begin.h"
#include "ops.h"

namespace autogaze_ext {
std::tuple<at::Tensor, at::Tensor> frame_begin_cuda(const at::Tensor& pend_in, const at::Tensor& pend_len,
                                                    const at::Tensor& vision_in, const at::Tensor& t,
                                                    const at::Tensor& weight_in, const at::Tensor& start,
                                                    at::Tensor& key_valid, at::Tensor& count, at::Tensor& tail_pos,
                                                    int64_t eos) {
  check_frame_begin_inputs(pend_in, pend_len, vision_in, t, weight_in, start, key_valid, count, tail_pos);
  TORCH_CHECK(eos >= 0, "frame_begin: eos must be >= 0, got ", eos);
  TORCH_CHECK(pend_in.is_cuda(), "frame_begin_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(pend_in.device());
  const at::Tensor pend = pend_in.contiguous(), vision = vision_in.contiguous(), weight = weight_in.contiguous();
  const int64_t B = pend.size(0), K = pend.size(1), NV = vision.size(2), D = vision.size(3);
  at::Tensor x = at::empty({B, K + NV, D}, vision.options());
  at::Tensor positions = at::empty({B, K + NV}, pend.options());
  FrameBeginArgs a{};
  a.pend = pend.const_data_ptr<int64_t>(), a.vision = vision.const_data_ptr<float>();
  a.weight = weight.const_data_ptr<float>();
  // device scalars, read by the kernel at run time (capturable)
  a.pend_len = pend_len.const_data_ptr<int64_t>(), a.t = t.const_data_ptr<int64_t>();
  a.start = start.const_data_ptr<int64_t>();
  a.key_valid = key_valid.data_ptr<bool>(), a.count = count.data_ptr<int64_t>();
  a.tail_pos = tail_pos.data_ptr<int64_t>();
  a.x = x.data_ptr<float>(), a.positions = positions.data_ptr<int64_t>();
  a.batch = B, a.chunk = K, a.frames = vision.size(1), a.vision_tokens = NV, a.hidden = D;
  a.vocab = weight.size(0), a.cache_len = key_valid.size(1), a.tail = tail_pos.size(1), a.eos = eos;
  C10_CUDA_CHECK(launch_frame_begin(a, c10::cuda::getCurrentCUDAStream().stream()));
  return {x, positions};
}

}  // namespace autogaze_ext
