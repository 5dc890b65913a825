// Launcher of the frame_begin CUDA kernel on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace autogaze_ext {

// Device buffers of one frame_begin call; shapes as in the op schema (all contiguous).
struct FrameBeginArgs {
  const int64_t* pend;      // (B, K)
  const int64_t* pend_len;  // (1,)
  const float* vision;      // (B, T, NV, D)
  const int64_t* t;         // (1,)
  const float* weight;      // (V, D)
  const int64_t* start;     // (1,)
  bool* key_valid;          // (B, L), slots start .. start+K+NV-1 written
  int64_t* count;           // (B,), updated in place
  int64_t* tail_pos;        // (B, NT), written
  float* x;                 // (B, K + NV, D) output
  int64_t* positions;       // (B, K + NV) output
  int64_t batch, chunk, frames, vision_tokens, hidden, vocab, cache_len, tail, eos;  // B, K, T, NV, D, V, L, NT
};

// Enqueues the kernels on `stream` (no host sync; capturable). chunk <= 1024, batch * (chunk + NV) < 2^31.
cudaError_t launch_frame_begin(const FrameBeginArgs& a, cudaStream_t stream);

}  // namespace autogaze_ext
