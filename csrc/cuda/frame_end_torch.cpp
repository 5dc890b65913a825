// Torch glue of the frame_end CUDA kernel: checks, device guard, current stream, registration.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/frame_end.h"
#include "ops.h"

namespace autogaze_ext {
void frame_end_cuda(const at::Tensor& fids_in, const at::Tensor& n, const at::Tensor& frame_start,
                    const at::Tensor& t, at::Tensor& key_valid, at::Tensor& count, at::Tensor& pend,
                    at::Tensor& pend_len, at::Tensor& out_ids, at::Tensor& out_n, int64_t eos) {
  check_frame_end_inputs(fids_in, n, frame_start, t, key_valid, count, pend, pend_len, out_ids, out_n);
  TORCH_CHECK(eos >= 0, "frame_end: eos must be >= 0, got ", eos);
  TORCH_CHECK(fids_in.is_cuda(), "frame_end_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(fids_in.device());
  const at::Tensor fids = fids_in.contiguous();
  FrameEndArgs a{};
  a.fids = fids.const_data_ptr<int64_t>();
  // device scalars, read by the kernel at run time (capturable)
  a.n = n.const_data_ptr<int64_t>(), a.frame_start = frame_start.const_data_ptr<int64_t>();
  a.t = t.const_data_ptr<int64_t>();
  a.key_valid = key_valid.data_ptr<bool>(), a.count = count.data_ptr<int64_t>();
  a.pend = pend.data_ptr<int64_t>(), a.pend_len = pend_len.data_ptr<int64_t>();
  a.out_ids = out_ids.data_ptr<int64_t>(), a.out_n = out_n.data_ptr<int64_t>();
  a.batch = fids.size(0), a.width = fids.size(1), a.cache_len = key_valid.size(1), a.chunk = pend.size(1);
  a.frames = out_ids.size(1), a.eos = eos;
  C10_CUDA_CHECK(launch_frame_end(a, c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace autogaze_ext
