// gaze_decode on the GPU: zero-fill the mask, then one thread per (batch, slot) writes its coords and
// scatters a 1 into the mask. Every output element is written, so outputs may come from torch.empty.
#include <algorithm>

#include "cuda/gaze_decode.h"

namespace autogaze_ext {
namespace {

__global__ void gaze_decode_kernel(const int64_t* __restrict__ pos, const bool* __restrict__ pad, int64_t total,
                                   int64_t num_slots, int64_t num_frames, ScaleLayout L, float* __restrict__ mask,
                                   int4* __restrict__ coords) {
  const int64_t video_size = num_frames * tokens_per_frame(L);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int32_t c[4] = {-1, -1, -1, -1};
    const int64_t id = pos[i];
    // Out-of-range ids are skipped, never written: the wrapper reports them when asked to validate.
    if (!pad[i] && decode_gaze_id(id, num_frames, L, c)) mask[(i / num_slots) * video_size + id] = 1.0f;
    coords[i] = make_int4(c[0], c[1], c[2], c[3]);  // one 16-byte store per slot
  }
}

}  // namespace

cudaError_t launch_gaze_decode(const int64_t* gazing_pos, const bool* if_padded, int64_t batch, int64_t num_slots,
                               int64_t num_frames, const ScaleLayout& layout, float* mask, int32_t* coords,
                               cudaStream_t stream) {
  const size_t mask_bytes = sizeof(float) * batch * num_frames * tokens_per_frame(layout);
  cudaError_t err = cudaMemsetAsync(mask, 0, mask_bytes, stream);
  if (err != cudaSuccess) return err;
  const int64_t total = batch * num_slots;
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 16));
  gaze_decode_kernel<<<blocks, kThreads, 0, stream>>>(gazing_pos, if_padded, total, num_slots, num_frames, layout,
                                                       mask, reinterpret_cast<int4*>(coords));
  return cudaGetLastError();
}

}  // namespace autogaze_ext
