// Launcher of the varlen_attention CUDA kernels on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace autogaze_ext {

enum class VarlenDtype { kFloat32, kFloat16, kBFloat16 };

// q, k, v, out: (total, heads, head_dim) contiguous, one dtype; cu_seqlens (num_videos + 1) and cu_frames
// (num_frames + 1) int32 offsets on the device (their values are never read on the host; out-of-range values
// are clamped to [0, total], so bad offsets give wrong numbers, never bad memory accesses).
// mode: 0 block_causal, 1 causal, 2 bidirectional, 3 frame_independent (the VarlenMode values).
// Requires total < 2^31, 1 <= head_dim <= 256, 1 <= heads <= 65535. Writes every element of out; nothing is
// launched when total == 0.
cudaError_t launch_varlen_attention(const void* q, const void* k, const void* v, void* out, const int32_t* cu_seqlens,
                                    int64_t num_videos, const int32_t* cu_frames, int64_t num_frames, int64_t total,
                                    int64_t heads, int64_t head_dim, VarlenDtype dtype, int mode, float scale,
                                    int64_t num_prefix, cudaStream_t stream);

}  // namespace autogaze_ext
