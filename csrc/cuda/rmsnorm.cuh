// HF LlamaRMSNorm pieces in fp32, shared by the kernels that normalise rows in their prologue:
// out = norm_weight * (x * inv_rms), inv_rms = 1 / sqrt(mean(x^2) + eps).
#pragma once

namespace autogaze_ext {

// Inverse RMS from the sum of squares ss of a row of K floats.
__device__ __forceinline__ float inv_rms(float ss, int K, float eps) {
  return 1.0f / sqrtf(ss / static_cast<float>(K) + eps);
}

// Inverse RMS of one row of K floats (global or shared memory), computed by one warp; every lane gets
// the same value. Lane l sums k = l, l + 32, ... with FMAs, then a butterfly over the lanes.
__device__ __forceinline__ float warp_inv_rms(const float* row, int K, float eps, int lane) {
  float ss = 0.0f;
  for (int k = lane; k < K; k += 32) {
    const float v = row[k];
    ss = fmaf(v, v, ss);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  return inv_rms(ss, K, eps);
}

// One normalised element, in HF's order of operations.
__device__ __forceinline__ float rms_apply(float x, float inv_rms, float norm_weight) {
  return norm_weight * (x * inv_rms);
}

}  // namespace autogaze_ext
