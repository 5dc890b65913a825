// Launcher of the rope_cache_write CUDA kernel on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace autogaze_ext {

// qkv (B, n, (H + 2*KVH) * d), positions (B, n), inv_freq (d/2,), caches (B, KVH, L, d), q_out (B, H, n, d),
// all contiguous; start: one int64 on the device, read by the kernel. q_out is fully written; the caches only
// at slots start + j in [0, L). d even, <= 256.
cudaError_t launch_rope_cache_write(const float* qkv, const int64_t* positions, const float* inv_freq, float* k_cache,
                                    float* v_cache, const int64_t* start, float* q_out, int64_t batch, int64_t n,
                                    int64_t num_heads, int64_t num_kv_heads, int64_t cache_len, int64_t head_dim,
                                    cudaStream_t stream);

}  // namespace autogaze_ext
