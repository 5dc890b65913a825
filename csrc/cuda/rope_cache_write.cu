// rope_cache_write on the GPU: one thread per VEC consecutive rotation pairs (i, i + d/2) of one head of
// one token, so q, k and v of a token are handled by neighbouring threads and every load and store of
// a warp is contiguous. One launch: rotate q into q_out, rotate k and copy v into the caches.
// The rotation itself (and why it is exact) is in rope.cuh.
#include <algorithm>
#include <type_traits>

#include "cuda/rope.cuh"
#include "cuda/rope_cache_write.h"

namespace autogaze_ext {
namespace {

template <int VEC>
struct Vec;
template <>
struct Vec<1> {
  using T = float;
  __device__ static float get(const T& v, int) { return v; }
  __device__ static void set(T& v, int, float x) { v = x; }
};
template <>
struct Vec<4> {
  using T = float4;
  __device__ static float get(const T& v, int e) { return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w; }
  __device__ static void set(T& v, int e, float x) {
    if (e == 0) v.x = x;
    else if (e == 1) v.y = x;
    else if (e == 2) v.z = x;
    else v.w = x;
  }
};

// IdxT: 32-bit index arithmetic when the thread count allows it (64-bit division is many instructions).
template <int VEC, typename IdxT>
__global__ void rope_cache_write_kernel(const float* __restrict__ qkv, const int64_t* __restrict__ positions,
                                        const float* __restrict__ inv_freq, float* __restrict__ k_cache,
                                        float* __restrict__ v_cache, const int64_t* __restrict__ start,
                                        float* __restrict__ q_out, IdxT total, int n, int H, int KVH, int64_t L,
                                        int d) {
  using V = Vec<VEC>;
  using T = typename V::T;
  const int half = d / 2, groups = half / VEC, heads = H + 2 * KVH;
  // start comes from the device: clamp so start + j cannot overflow; out-of-range slots are skipped.
  const int64_t s0 = max(min(*start, int64_t{1} << 40), -(int64_t{1} << 40));
  for (IdxT idx = blockIdx.x * static_cast<IdxT>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<IdxT>(gridDim.x) * blockDim.x) {
    const int g = static_cast<int>(idx % groups);
    const IdxT rest = idx / groups;
    const int head = static_cast<int>(rest % heads);
    const IdxT tk = rest / heads;  // b * n + j
    const IdxT bb = tk / n;
    const int j = static_cast<int>(tk - bb * n);
    const int64_t tok = tk, b = bb;
    const int i0 = g * VEC;
    const float* src = qkv + tok * heads * d + static_cast<int64_t>(head) * d;
    const T x1 = *reinterpret_cast<const T*>(src + i0);
    const T x2 = *reinterpret_cast<const T*>(src + half + i0);

    float* dst;
    if (head < H) {
      dst = q_out + ((b * H + head) * n + j) * static_cast<int64_t>(d);
    } else {
      const int64_t slot = s0 + j;
      if (slot < 0 || slot >= L) continue;
      const bool is_k = head < H + KVH;
      const int kvh = is_k ? head - H : head - H - KVH;
      dst = (is_k ? k_cache : v_cache) + ((b * KVH + kvh) * L + slot) * static_cast<int64_t>(d);
      if (!is_k) {  // v: plain copy
        *reinterpret_cast<T*>(dst + i0) = x1;
        *reinterpret_cast<T*>(dst + half + i0) = x2;
        continue;
      }
    }
    const int64_t pos = positions[tok];
    T y1, y2;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float a = rope_angle(pos, inv_freq[i0 + e]);
      const float c = cosf(a), s = sinf(a);
      const float u = V::get(x1, e), w = V::get(x2, e);
      V::set(y1, e, rope_lower(u, w, c, s));
      V::set(y2, e, rope_upper(u, w, c, s));
    }
    *reinterpret_cast<T*>(dst + i0) = y1;
    *reinterpret_cast<T*>(dst + half + i0) = y2;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

cudaError_t launch_rope_cache_write(const float* qkv, const int64_t* positions, const float* inv_freq, float* k_cache,
                                    float* v_cache, const int64_t* start, float* q_out, int64_t batch, int64_t n,
                                    int64_t num_heads, int64_t num_kv_heads, int64_t cache_len, int64_t head_dim,
                                    cudaStream_t stream) {
  const int64_t half = head_dim / 2;
  const int64_t tokens = batch * n;
  if (tokens == 0) return cudaSuccess;
  // 16-byte vectors when every row and head offset stays 16-byte aligned (d/2 % 4 == 0, aligned bases).
  const bool vec4 = half % 4 == 0 && aligned16(qkv) && aligned16(k_cache) && aligned16(v_cache) && aligned16(q_out);
  const int vec = vec4 ? 4 : 1;
  const int64_t total = tokens * (num_heads + 2 * num_kv_heads) * (half / vec);
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20));
  const int nn = static_cast<int>(n), H = static_cast<int>(num_heads), KVH = static_cast<int>(num_kv_heads);
  const int d = static_cast<int>(head_dim);
  auto go = [&](auto vec_tag, auto idx_tag) {
    using IdxT = decltype(idx_tag);
    rope_cache_write_kernel<decltype(vec_tag)::value, IdxT><<<blocks, kThreads, 0, stream>>>(
        qkv, positions, inv_freq, k_cache, v_cache, start, q_out, static_cast<IdxT>(total), nn, H, KVH, cache_len, d);
  };
  // idx + stride must not overflow either: keep 32-bit indices well below 2^31
  const bool small = total + static_cast<int64_t>(blocks) * kThreads < (int64_t{1} << 31);
  if (vec4) {
    if (small) go(std::integral_constant<int, 4>{}, int32_t{});
    else go(std::integral_constant<int, 4>{}, int64_t{});
  } else {
    if (small) go(std::integral_constant<int, 1>{}, int32_t{});
    else go(std::integral_constant<int, 1>{}, int64_t{});
  }
  return cudaGetLastError();
}

}  // namespace autogaze_ext
