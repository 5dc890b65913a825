// Launcher of the cache_attention CUDA kernels on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace autogaze_ext {

// How one call is split into thread blocks; chosen on the host from shapes only (never from `start`),
// so the grid and the workspace size are fixed under CUDA-graph capture.
struct CacheAttentionPlan {
  int64_t split = 0;       // keys per split (a multiple of 64, at most 4096)
  int64_t num_splits = 0;  // ceil(L / split); 1: the blocks write the output directly, no workspace
  int q_tile = 0;          // queries per block in the tiled kernels (16, 32 or 64); 1 for the generic kernel
  bool tiled = false;      // d in {32, 64} and 16-byte aligned q/k/v/out: the shared-memory tiled kernel
  bool tf32 = false;       // the TF32 tensor-core tile (asked for, d = 32, aligned, n > 16): 64 queries per block
  int64_t workspace_floats = 0;  // partial results, about B*H*n*num_splits*(d+2); 0 when num_splits == 1
};

// aligned: q, k_cache, v_cache and out all start on 16-byte boundaries. tf32: products on TF32 tensor cores
// where a tile for them exists (prefills with d = 32); the rest stays fp32.
CacheAttentionPlan plan_cache_attention(int64_t batch, int64_t num_heads, int64_t n, int64_t cache_len,
                                        int64_t head_dim, bool aligned, int num_sms, bool tf32 = false);

// q (B, H, n, d), caches (B, KVH, L, d), key_valid (B, L) as bytes, out (B, H, n, d), all contiguous;
// start: one int64 on the device (query i sits at slot start + i). out is fully written. workspace: at least
// plan.workspace_floats floats (unused when num_splits == 1). Needs B, H, n, L >= 1.
cudaError_t launch_cache_attention(const CacheAttentionPlan& plan, const float* q, const float* k_cache,
                                   const float* v_cache, const bool* key_valid, const int64_t* start, float* out,
                                   float* workspace, int64_t batch, int64_t num_heads, int64_t num_kv_heads, int64_t n,
                                   int64_t cache_len, int64_t head_dim, cudaStream_t stream);

}  // namespace autogaze_ext
