// Torch glue of the select_step CUDA kernels: checks, device guard, current stream, registration.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/select_step.h"
#include "ops.h"

namespace autogaze_ext {

at::Tensor select_step_cuda(const at::Tensor& logits_in, const at::Tensor& loss_pred_in, const at::Tensor& cap,
                            const at::Tensor& req_in, const at::Tensor& has_req, at::Tensor& banned,
                            at::Tensor& unfinished, at::Tensor& fids, at::Tensor& n, at::Tensor& first,
                            at::Tensor& active) {
  check_select_step_inputs(logits_in, loss_pred_in, cap, req_in, has_req, banned, unfinished, fids, n, first,
                           active);
  TORCH_CHECK(logits_in.is_cuda(), "select_step_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor loss_pred = loss_pred_in.contiguous();
  const at::Tensor req = req_in.contiguous();
  const int64_t B = logits.size(0), K = logits.size(1), V = logits.size(2);
  const int device = logits.get_device();

  // Output and scratch sizes come from shapes only (capturable); every chunk element is written.
  at::Tensor chunk = at::empty({B, K}, logits.options().dtype(at::kLong));
  const int64_t ws = select_step_workspace_floats(B, K, V, device);
  at::Tensor workspace;
  if (ws > 0) workspace = at::empty({ws}, logits.options());

  SelectStepArgs a{};
  a.logits = logits.const_data_ptr<float>(), a.loss_pred = loss_pred.const_data_ptr<float>();
  a.req = req.const_data_ptr<float>();
  a.cap = cap.const_data_ptr<int64_t>(), a.has_req = has_req.const_data_ptr<bool>();
  // frame state, updated in place
  a.banned = banned.data_ptr<bool>(), a.unfinished = unfinished.data_ptr<bool>();
  a.fids = fids.data_ptr<int64_t>(), a.n = n.data_ptr<int64_t>();
  a.first = first.data_ptr<bool>(), a.active = active.data_ptr<bool>();
  a.chunk = chunk.data_ptr<int64_t>();
  a.batch = B, a.heads = K, a.vocab = V, a.fids_cols = fids.size(1);
  C10_CUDA_CHECK(launch_select_step(a, ws > 0 ? workspace.data_ptr<float>() : nullptr, device,
                                    c10::cuda::getCurrentCUDAStream().stream()));
  return chunk;
}

}  // namespace autogaze_ext
