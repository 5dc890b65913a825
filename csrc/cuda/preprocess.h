// Launcher of the preprocess CUDA kernels on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace autogaze_ext {

struct PreprocessArgs {
  const void* frames;  // (N, H, W, 3) uint8, or float32 when !is_uint8
  bool is_uint8;
  int64_t N, H, W;
  int64_t out_h, out_w;  // processor output size
  int64_t model_size;    // 0: no model resize
  double rescale;
  bool offset;
  float mean[3], std[3];
  void* workspace;         // preprocess_workspace_bytes(...) bytes, 16-byte aligned
  float* processed;        // (N, 3, out_h, out_w)
  float* model_input;      // (N, 3, model_size, model_size) or null
};

// Coefficient tables, plus the horizontal pass's output when the width changes.
size_t preprocess_workspace_bytes(int64_t N, int64_t H, int64_t W, int64_t out_h, int64_t out_w, bool is_uint8);

// Every output element is written on `stream`.
cudaError_t launch_preprocess(const PreprocessArgs& args, cudaStream_t stream);

}  // namespace autogaze_ext
