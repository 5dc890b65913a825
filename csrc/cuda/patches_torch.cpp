// Torch glue of the multiscale_patches and gather_patches CUDA kernels: checks, device guard, current
// stream, registration. With a weight, the embedding product runs as one cuBLAS addmm onto the rows the
// gather kernel initialised with pos_table + bias (a custom fp32 GEMM would not beat cuBLAS, and the
// patch rows it reads are small next to the product).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <optional>

#include "cuda/patches.h"
#include "ops.h"

namespace autogaze_ext {

at::Tensor multiscale_patches_cuda(const at::Tensor& frames_in, at::IntArrayRef scales, int64_t patch) {
  check_patch_frames(frames_in, 4, "multiscale_patches");
  TORCH_CHECK(frames_in.is_cuda(), "multiscale_patches_cuda expects CUDA tensors");
  const PatchLayout L = make_patch_layout(scales, patch);
  const c10::cuda::CUDAGuard guard(frames_in.device());
  const at::Tensor frames = frames_in.contiguous();
  const int64_t N = frames.size(0), C = frames.size(1), H = frames.size(2), W = frames.size(3);
  const int64_t V = tokens_per_frame(L.tokens);
  TORCH_CHECK(N * V <= INT_MAX, "multiscale_patches: too many patches for one launch");
  at::Tensor out = at::empty({N, V, C * patch * patch}, frames.options());
  C10_CUDA_CHECK(launch_multiscale_patches(frames.const_data_ptr<float>(), N, C, H, W, L, out.data_ptr<float>(),
                                           c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> gather_patches_cuda(const at::Tensor& frames_in, const at::Tensor& gazing_pos,
                                                       const at::Tensor& if_padded, at::IntArrayRef scales,
                                                       int64_t patch, const std::optional<at::Tensor>& weight,
                                                       const std::optional<at::Tensor>& bias,
                                                       const std::optional<at::Tensor>& pos_table,
                                                       int64_t packed_rows) {
  const PatchLayout L = make_patch_layout(scales, patch);
  const int64_t width = check_gather_patches_inputs(frames_in, gazing_pos, if_padded, L, weight, bias, pos_table);
  TORCH_CHECK(frames_in.is_cuda(), "gather_patches_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(frames_in.device());
  const at::Tensor frames = frames_in.contiguous();
  const at::Tensor pos = gazing_pos.contiguous(), pad = if_padded.contiguous();
  const int64_t B = frames.size(0), N = pos.size(1), K = frames.size(2) * patch * patch;
  const bool packed = packed_rows >= 0;
  const int64_t rows = packed ? packed_rows : B * N;
  TORCH_CHECK(B * N <= INT_MAX && rows <= INT_MAX, "gather_patches: too many slots for one launch");

  const bool embed = weight.has_value();
  const auto opts = embed ? frames.options().dtype(weight->scalar_type()) : frames.options();
  at::Tensor patches = at::empty({rows, K}, opts);
  at::Tensor out = embed ? at::empty({rows, width}, opts) : patches;
  at::Tensor cu = at::empty({B + 1}, pos.options().dtype(at::kInt));
  at::Tensor workspace = at::empty({gather_patches_workspace_ints(B, N)}, pos.options().dtype(at::kInt));

  GatherPatchesArgs a{};
  a.frames = frames.const_data_ptr<float>();
  a.B = B;
  a.T = frames.size(1);
  a.C = frames.size(2);
  a.H = frames.size(3);
  a.W = frames.size(4);
  a.layout = L;
  a.gazing_pos = pos.const_data_ptr<int64_t>();
  a.if_padded = pad.const_data_ptr<bool>();
  a.N = N;
  a.packed_rows = packed_rows;
  a.cu_seqlens = cu.data_ptr<int32_t>();
  a.workspace = workspace.data_ptr<int32_t>();
  const at::ScalarType dt = embed ? weight->scalar_type() : at::kFloat;
  a.dtype = dt == at::kBFloat16 ? EmbedDtype::kBFloat16 : dt == at::kHalf ? EmbedDtype::kFloat16 : EmbedDtype::kFloat32;
  a.patches = patches.data_ptr();
  a.embed_init = embed ? out.data_ptr() : nullptr;
  a.pos_table = pos_table.has_value() ? pos_table->const_data_ptr() : nullptr;
  a.bias = bias.has_value() ? bias->const_data_ptr() : nullptr;
  a.D = embed ? width : 0;
  C10_CUDA_CHECK(launch_gather_patches(a, c10::cuda::getCurrentCUDAStream().stream()));
  if (embed && rows > 0) out.addmm_(patches, weight->t());
  if (!packed) out = out.view({B, N, width});
  return {out, cu};
}

}  // namespace autogaze_ext
