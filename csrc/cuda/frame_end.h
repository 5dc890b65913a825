// Launcher of the frame_end CUDA kernel on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace autogaze_ext {

// Device buffers of one frame_end call; shapes as in the op schema (all contiguous).
struct FrameEndArgs {
  const int64_t* fids;         // (B, W)
  const int64_t* n;            // (1,)
  const int64_t* frame_start;  // (1,)
  const int64_t* t;            // (1,)
  bool* key_valid;             // (B, L), updated in place
  int64_t* count;              // (B,), updated in place
  int64_t* pend;               // (B, K), written
  int64_t* pend_len;           // (1,), written
  int64_t* out_ids;            // (B, T, W), frame t written
  int64_t* out_n;              // (T,), element t written
  int64_t batch, width, cache_len, chunk, frames, eos;  // B, W, L, K, T
};

// Enqueues the update on `stream` (no host sync; capturable).
cudaError_t launch_frame_end(const FrameEndArgs& a, cudaStream_t stream);

}  // namespace autogaze_ext
