// frame_end on the GPU: one block per batch row. It replaces ~20 small PyTorch kernels (a few µs each inside a
// CUDA graph) at the end of every frame of the fast decoding path; same semantics as the CPU kernel
// (csrc/cpu/frame_end.cpp), including the clamp of n to [0, W] and the skipped out-of-range slots and frames.
#include <algorithm>

#include "cuda/frame_end.h"

namespace autogaze_ext {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) frame_end_kernel(FrameEndArgs a) {
  __shared__ int64_t partial[kThreads / 32];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t W = a.width, L = a.cache_len, K = a.chunk;
  const int64_t nn = min(max(*a.n, int64_t{0}), W);
  const int64_t fed = K * (max(nn - 1, int64_t{0}) / K);
  const int64_t tt = *a.t;
  const int64_t s0 = min(max(*a.frame_start, -(int64_t{1} << 40)), int64_t{1} << 40);  // s0 + j cannot overflow
  const bool store = tt >= 0 && tt < a.frames;
  const int64_t* row = a.fids + b * W;
  const int64_t cols = b < a.batch ? W : 0;  // B = 0: one block, for the scalars alone

  int64_t real = 0;
  for (int64_t j = tid; j < cols; j += kThreads) {
    const int64_t id = row[j];
    if (store) a.out_ids[(b * a.frames + tt) * W + j] = id;
    if (j < fed) {
      const bool is_real = id != a.eos;
      real += is_real;
      if (s0 + j >= 0 && s0 + j < L) a.key_valid[b * L + s0 + j] = is_real;  // slots outside: skipped
    }
  }
  for (int64_t k = tid; k < (cols > 0 ? K : 0); k += kThreads) {
    a.pend[b * K + k] = k < nn - fed ? row[fed + k] : a.eos;  // fed + k < nn <= W
  }

#pragma unroll
  for (int o = 16; o > 0; o >>= 1) real += __shfl_xor_sync(0xffffffffu, real, o);
  if ((tid & 31) == 0) partial[tid >> 5] = real;
  __syncthreads();
  if (tid == 0) {
    int64_t sum = 0;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) sum += partial[w];
    if (b < a.batch) a.count[b] += sum;
    if (b == 0) {
      *a.pend_len = nn - fed;
      if (store) a.out_n[tt] = nn;
    }
  }
}

}  // namespace

cudaError_t launch_frame_end(const FrameEndArgs& a, cudaStream_t stream) {
  if (a.batch < 0 || a.batch > 0x7fffffff) return cudaErrorInvalidValue;
  frame_end_kernel<<<static_cast<unsigned>(std::max<int64_t>(a.batch, 1)), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace autogaze_ext
