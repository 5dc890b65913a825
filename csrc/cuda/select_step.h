// Launcher of the select_step CUDA kernels on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace autogaze_ext {

// Device buffers of one select_step call; shapes as in the op schema (all contiguous).
struct SelectStepArgs {
  const float* logits;     // (B, K, V)
  const float* loss_pred;  // (B, K)
  const int64_t* cap;      // (1,)
  const float* req;        // (B,)
  const bool* has_req;     // (1,)
  bool* banned;            // (B, V), updated in place
  bool* unfinished;        // (B,), updated in place
  int64_t* fids;           // (B, F), updated in place
  int64_t* n;              // (1,), updated in place
  bool* first;             // (1,), updated in place
  bool* active;            // (1,), updated in place
  int64_t* chunk;          // (B, K) output, fully written
  int64_t batch, heads, vocab, fids_cols;  // B, K, V, F
};

// Floats of global scratch the launcher needs for these sizes on `device`: 0 when a row's scores fit in
// shared memory (always for the model's K=10, V<=1061), else B*K*V.
int64_t select_step_workspace_floats(int64_t batch, int64_t heads, int64_t vocab, int device);

// Enqueues the step on `stream` (no host sync; capturable). `workspace` must hold
// select_step_workspace_floats(...) floats (may be null when that is 0).
cudaError_t launch_select_step(const SelectStepArgs& a, float* workspace, int device, cudaStream_t stream);

}  // namespace autogaze_ext
