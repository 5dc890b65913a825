// Asynchronous global -> shared copies (cp.async, sm_80+), shared by the kernels that pipeline their tiles.
//
// A copy with valid == false reads nothing and zero-fills its destination bytes (src-size 0), so tails
// of a tile read as zeros; the source pointer must still be a valid address.
#pragma once

#include <cstdint>

namespace autogaze_ext {

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// BYTES (4, 8 or 16) from global memory into shared address dst; 16-byte copies bypass L1 (.cg).
template <int BYTES = 16>
__device__ __forceinline__ void cp_async(uint32_t dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int src_bytes = valid ? BYTES : 0;
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(BYTES),
                 "r"(src_bytes)
                 : "memory");
  }
#else
  __trap();
#endif
}

template <int BYTES = 16>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
  cp_async<BYTES>(smem_u32(dst), src, valid);
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
#endif
}

}  // namespace autogaze_ext
