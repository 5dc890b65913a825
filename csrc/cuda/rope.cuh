// Rotate-half RoPE of one rotation pair (x1 = element i, x2 = element i + d/2) with the angle
// float32(position) * inv_freq[i], shared by every kernel that rotates q or k.
//
// Exactness: one fp32 multiply for the angle, the precise cosf/sinf (no fast-math), and two rounded
// products and one rounded sum per output (__fmul_rn/__fadd_rn keep nvcc from contracting them into an
// FMA): the same operations as decoder.py's x * cos + rotate_half(x) * sin.
#pragma once

#include <cstdint>

namespace autogaze_ext {

__device__ __forceinline__ float rope_angle(int64_t position, float inv_freq) {
  return __fmul_rn(static_cast<float>(position), inv_freq);  // int64 -> fp32 rounds like .float()
}
// Element i of the rotated pair: x1*cos + (-x2)*sin.
__device__ __forceinline__ float rope_lower(float x1, float x2, float c, float s) {
  return __fadd_rn(__fmul_rn(x1, c), -__fmul_rn(x2, s));
}
// Element i + d/2: x2*cos + x1*sin.
__device__ __forceinline__ float rope_upper(float x1, float x2, float c, float s) {
  return __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

}  // namespace autogaze_ext
