// Launchers of the multiscale_patches and gather_patches CUDA kernels on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/resample.h"

namespace autogaze_ext {

// out: (N, V, C*p*p) float32, fully written on `stream`.
cudaError_t launch_multiscale_patches(const float* frames, int64_t N, int64_t C, int64_t H, int64_t W,
                                      const PatchLayout& layout, float* out, cudaStream_t stream);

enum class EmbedDtype { kFloat32, kBFloat16, kFloat16 };

struct GatherPatchesArgs {
  const float* frames;  // (B, T, C, H, W)
  int64_t B, T, C, H, W;
  PatchLayout layout;
  const int64_t* gazing_pos;  // (B, N)
  const bool* if_padded;      // (B, N)
  int64_t N;
  int64_t packed_rows;  // < 0: one row per slot
  int32_t* cu_seqlens;  // (B + 1)
  int32_t* workspace;   // gather_patches_workspace_ints(B, N) ints
  // Outputs: patches (rows, C*p*p) in `dtype`; with embed_init, the (rows, D) rows pos_table[local] + bias
  // that the product patches @ weight^T is added to afterwards (pos_table / bias may be null).
  EmbedDtype dtype;
  void* patches;
  void* embed_init;
  const void* pos_table;  // (V, D), `dtype`
  const void* bias;       // (D,), `dtype`
  int64_t D;
};

int64_t gather_patches_workspace_ints(int64_t B, int64_t N);

// Every output element is written (rows past the real tokens zero when packed).
cudaError_t launch_gather_patches(const GatherPatchesArgs& args, cudaStream_t stream);

}  // namespace autogaze_ext
