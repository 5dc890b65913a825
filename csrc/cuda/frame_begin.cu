// frame_begin on the GPU: one block per batch row. It replaces ~15 small PyTorch kernels (embedding lookup,
// concatenations, cumulative sum, index copies) in front of every frame's prefill; same semantics as the CPU
// kernel (csrc/cpu/frame_begin.cpp), including the zero rows for ids outside the table or t outside the clip
// and the skipped slots outside the cache.
#include <algorithm>

#include "cuda/frame_begin.h"

namespace autogaze_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxChunk = 1024;

__global__ void __launch_bounds__(kThreads) frame_begin_kernel(FrameBeginArgs a) {
  __shared__ int seen_pend[kMaxChunk];  // valid pending tokens among 0..k (inclusive)
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t K = a.chunk, NV = a.vision_tokens, D = a.hidden, P = K + NV;
  const int64_t plen = *a.pend_len, s0 = *a.start, tt = *a.t;
  const bool has_frame = tt >= 0 && tt < a.frames;
  const int64_t* pend = a.pend + b * K;
  const int64_t count0 = a.count[b];  // read before the barrier that precedes its update

  if (tid == 0) {
    int seen = 0;
    for (int64_t k = 0; k < K; ++k) {
      seen += k < plen && pend[k] != a.eos;
      seen_pend[k] = seen;
    }
  }
  // x: the pending ids' embeddings, then the frame's vision tokens
  float* x = a.x + b * P * D;
  for (int64_t e = tid; e < P * D; e += kThreads) {
    const int64_t j = e / D, c = e - j * D;
    float v = 0.0f;
    if (j < K) {
      const int64_t id = pend[j];
      if (id >= 0 && id < a.vocab) v = a.weight[id * D + c];
    } else if (has_frame) {
      v = a.vision[((b * a.frames + tt) * NV + (j - K)) * D + c];
    }
    x[e] = v;
  }
  __syncthreads();  // seen_pend written
  const int total = K > 0 ? seen_pend[K - 1] : 0;
  for (int64_t j = tid; j < P; j += kThreads) {
    const bool valid = j < K ? (j < plen && pend[j] != a.eos) : true;
    const int64_t seen = j < K ? seen_pend[j] : total + (j - K + 1);
    const int64_t pos = count0 + seen - 1;
    a.positions[b * P + j] = pos;
    if (j >= P - a.tail) a.tail_pos[b * a.tail + (j - (P - a.tail))] = pos;
    if (s0 >= 0 && s0 < a.cache_len && j < a.cache_len - s0) a.key_valid[b * a.cache_len + s0 + j] = valid;
  }
  __syncthreads();  // every thread has read count[b]
  if (tid == 0) a.count[b] = count0 + total + NV;
}

}  // namespace

cudaError_t launch_frame_begin(const FrameBeginArgs& a, cudaStream_t stream) {
  if (a.batch < 0 || a.batch > 0x7fffffff || a.chunk < 1 || a.chunk > kMaxChunk) return cudaErrorInvalidValue;
  if (a.batch == 0) return cudaSuccess;
  frame_begin_kernel<<<static_cast<unsigned>(a.batch), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace autogaze_ext
