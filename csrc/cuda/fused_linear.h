// Launcher of the fused_linear CUDA kernel on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace autogaze_ext {

// out (M, N or N/2) = [swiglu]( [rmsnorm(x) * norm_weight] @ weight^T ) [+ residual], all fp32, row-major,
// contiguous. norm_weight and residual may be null. Requires 1 <= K <= kFusedLinearMaxK, N >= 1, N even when
// swiglu. Every element of out is written on `stream`; nothing is launched when M == 0.
constexpr int64_t kFusedLinearMaxK = 1024;

// Upper bound on the thread blocks a launch uses (the smallest tile is 16 rows x 8 output columns):
// callers check it against the 1-D grid limit before launching.
inline int64_t fused_linear_max_blocks(int64_t M, int64_t n_out) { return ((M + 15) / 16) * ((n_out + 7) / 8); }

cudaError_t launch_fused_linear(const float* x, const float* weight, const float* norm_weight, float eps,
                                const float* residual, bool swiglu, int64_t M, int64_t K, int64_t N, float* out,
                                cudaStream_t stream);

}  // namespace autogaze_ext
