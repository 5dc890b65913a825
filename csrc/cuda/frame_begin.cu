// frame_begin on the GPU. It replaces ~15 small PyTorch kernels (embedding lookup, concatenations, cumulative
// sum, index copies) in front of every frame's prefill; same semantics as the CPU kernel
// (csrc/cpu/frame_begin.cpp), including the zero rows for ids outside the table or t outside the clip and the
// skipped slots outside the cache. Two launches: a block per (row, token) writes that token's x row, position,
// validity and tail position (one block per batch row was latency-bound at B=1: 48 µs for 206 tokens); then
// one thread per row adds its valid tokens to count, after every block has read the old value.
#include <algorithm>

#include "cuda/frame_begin.h"

namespace autogaze_ext {
namespace {

constexpr int kRowThreads = 64;
constexpr int kCountThreads = 128;

// Valid pending tokens of row b among 0..last (inclusive; last < K).
__device__ __forceinline__ int64_t valid_pending(const FrameBeginArgs& a, int64_t b, int64_t last, int64_t plen) {
  int64_t seen = 0;
  for (int64_t k = 0; k <= last; ++k) seen += k < plen && a.pend[b * a.chunk + k] != a.eos;
  return seen;
}

__global__ void __launch_bounds__(kRowThreads) frame_begin_rows_kernel(FrameBeginArgs a) {
  const int64_t K = a.chunk, NV = a.vision_tokens, D = a.hidden, P = K + NV;
  const int64_t b = blockIdx.x / P, j = blockIdx.x - b * P;
  const int64_t tt = *a.t;
  const float* src = nullptr;  // null: a zero row
  if (j < K) {
    const int64_t id = a.pend[b * K + j];
    if (id >= 0 && id < a.vocab) src = a.weight + id * D;
  } else if (tt >= 0 && tt < a.frames) {
    src = a.vision + ((b * a.frames + tt) * NV + (j - K)) * D;
  }
  float* dst = a.x + (b * P + j) * D;
  for (int64_t c = threadIdx.x; c < D; c += kRowThreads) dst[c] = src != nullptr ? src[c] : 0.0f;

  if (threadIdx.x == 0) {
    const int64_t plen = *a.pend_len;
    const int64_t s0 = min(max(*a.start, -(int64_t{1} << 40)), int64_t{1} << 40);  // s0 + j cannot overflow
    const bool valid = j >= K || (j < plen && a.pend[b * K + j] != a.eos);
    const int64_t seen = j < K ? valid_pending(a, b, j, plen) : valid_pending(a, b, K - 1, plen) + (j - K + 1);
    const int64_t pos = a.count[b] + seen - 1;  // count is updated by the second kernel only
    a.positions[b * P + j] = pos;
    if (j >= P - a.tail) a.tail_pos[b * a.tail + (j - (P - a.tail))] = pos;
    if (s0 + j >= 0 && s0 + j < a.cache_len) a.key_valid[b * a.cache_len + s0 + j] = valid;  // else skipped
  }
}

__global__ void __launch_bounds__(kCountThreads) frame_begin_count_kernel(FrameBeginArgs a) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kCountThreads + threadIdx.x;
  if (b >= a.batch) return;
  a.count[b] += valid_pending(a, b, a.chunk - 1, *a.pend_len) + a.vision_tokens;
}

}  // namespace

cudaError_t launch_frame_begin(const FrameBeginArgs& a, cudaStream_t stream) {
  const int64_t blocks = a.batch * (a.chunk + a.vision_tokens);
  if (a.batch < 0 || a.chunk < 1 || a.chunk > 1024 || blocks > 0x7fffffff) return cudaErrorInvalidValue;
  if (a.batch == 0) return cudaSuccess;
  frame_begin_rows_kernel<<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(a);
  frame_begin_count_kernel<<<static_cast<unsigned>((a.batch + kCountThreads - 1) / kCountThreads), kCountThreads,
                             0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace autogaze_ext
