// varlen_attention on the GPU: FlashAttention-style attention over packed gazed tokens.
//
// Visibility (see cpu/varlen_attention.cpp): query i of video [s, e) sees keys [lo_i, hi_i) of its mode and
// the prefix keys [s, pend_i). Every block takes 64 consecutive query rows of one head (a tile may straddle
// frames or videos: per-row ranges keep it exact) and walks only the key tiles in the union of its rows'
// ranges, so tiles above the frame diagonal (block_causal), the causal diagonal or outside a frame
// (frame_independent) are never loaded. Online softmax (running max and sum per row, base-2 exponentials)
// keeps one pass over the keys.
//
// fp16/bf16 with an even head_dim <= 128: tensor cores (mma.sync m16n8k16, fp32 accumulation), 4 warps of
// 16 query rows; K tiles row-major and V tiles transposed in shared memory (padded rows: conflict-free
// fragment loads); the P tile goes from the score accumulators to the A operand of P.V in registers.
// Everything else (fp32, odd or large head dims, GPUs before sm_80): a warp per query row in fp32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/varlen_attention.h"

namespace autogaze_ext {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int32_t* cu_seqlens;
  const int32_t* cu_frames;
  int nv1, nf1;  // entries of the offset arrays
  int total, heads, d, mode, num_prefix;
  float scale_log2;  // scale * log2(e): scores go straight into exp2
};

// Keys j with lo <= j < hi or s <= j < pend are visible; all four lie in [0, total].
struct RowRange {
  int lo, hi, s, pend;
};

// Index of the last entry <= x (entry 0 is 0 <= x), clamped to a valid segment.
__device__ __forceinline__ int segment_of(const int32_t* a, int n, int x) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (__ldg(a + mid) <= x) lo = mid + 1; else hi = mid;
  }
  return min(max(lo - 1, 0), n - 2);
}

__device__ __forceinline__ int clamp_total(int x, int total) { return min(max(x, 0), total); }

__device__ RowRange row_range(const Params& p, int i) {
  const int b = segment_of(p.cu_seqlens, p.nv1, i);
  const int s = clamp_total(__ldg(p.cu_seqlens + b), p.total), e = clamp_total(__ldg(p.cu_seqlens + b + 1), p.total);
  const int f = segment_of(p.cu_frames, p.nf1, i);
  const int fs = max(clamp_total(__ldg(p.cu_frames + f), p.total), s);
  const int fe = min(clamp_total(__ldg(p.cu_frames + f + 1), p.total), e);
  RowRange r;
  r.s = s;
  r.pend = s + min(p.num_prefix, max(e - s, 0));
  switch (p.mode) {
    case 0: r.lo = s; r.hi = fe; break;         // block_causal
    case 1: r.lo = s; r.hi = i + 1; break;      // causal
    case 2: r.lo = s; r.hi = e; break;          // bidirectional
    default: r.lo = fs; r.hi = fe; break;       // frame_independent
  }
  r.hi = max(r.hi, r.lo);
  return r;
}

__device__ __forceinline__ bool visible(const RowRange& r, int j) {
  return (j >= r.lo && j < r.hi) || (j >= r.s && j < r.pend);
}

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// ------------------------------------------------------------------------------ generic: a warp per row

constexpr int kGenericWarps = 8;
constexpr int kMaxDimPerLane = 8;  // head_dim <= 256

template <typename T>
__global__ void __launch_bounds__(kGenericWarps * 32) varlen_attention_generic(Params p) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kGenericWarps + (threadIdx.x >> 5);
  const int h = blockIdx.y;
  if (row >= p.total) return;
  const RowRange r = row_range(p, row);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const int64_t stride = static_cast<int64_t>(p.heads) * p.d;
  float qv[kMaxDimPerLane], acc[kMaxDimPerLane];
#pragma unroll
  for (int c = 0; c < kMaxDimPerLane; ++c) {
    const int dim = lane + 32 * c;
    qv[c] = dim < p.d ? to_float(q[row * stride + h * p.d + dim]) * p.scale_log2 : 0.f;
    acc[c] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  // the prefix keys, then the mode's keys past the prefix (lo >= s, so the two never overlap)
  const int starts[2] = {r.s, max(r.lo, r.pend)};
  const int ends[2] = {r.pend, r.hi};
  for (int part = 0; part < 2; ++part) {
    for (int j = starts[part]; j < ends[part]; ++j) {
      const T* kj = k + j * stride + h * p.d;
      float dot = 0.f;
#pragma unroll
      for (int c = 0; c < kMaxDimPerLane; ++c) {
        const int dim = lane + 32 * c;
        if (dim < p.d) dot = fmaf(qv[c], to_float(kj[dim]), dot);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      const float m_new = fmaxf(m, dot);
      const float alpha = exp2f(m - m_new), pj = exp2f(dot - m_new);
      l = l * alpha + pj;
      const T* vj = v + j * stride + h * p.d;
#pragma unroll
      for (int c = 0; c < kMaxDimPerLane; ++c) {
        const int dim = lane + 32 * c;
        if (dim < p.d) acc[c] = fmaf(pj, to_float(vj[dim]), acc[c] * alpha);
      }
      m = m_new;
    }
  }
  T* out = static_cast<T*>(p.out);
  const float inv = 1.f / l;  // l >= 1: every row sees itself
#pragma unroll
  for (int c = 0; c < kMaxDimPerLane; ++c) {
    const int dim = lane + 32 * c;
    if (dim < p.d) out[row * stride + h * p.d + dim] = from_float<T>(acc[c] * inv);
  }
}

// ---------------------------------------------------------------------- tensor cores: fp16 / bf16, d <= 128

constexpr int kRows = 64;  // query rows per block (16 per warp)
constexpr int kKeys = 64;  // keys per tile
constexpr int kMmaThreads = 128;

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t lds32(const void* p) { return *static_cast<const uint32_t*>(p); }

// Rows [row0, row0 + kRows) of one head into a row-major [kRows][S] tile (halves), zero-padded; d is even,
// so every 32-bit load is aligned.
template <typename T, int DP, int S>
__device__ __forceinline__ void load_rows(T* tile, const T* src, int row0, int total, int stride, int hoff, int d) {
  for (int idx = threadIdx.x; idx < kRows * (DP / 2); idx += kMmaThreads) {
    const int r = idx / (DP / 2), c = 2 * (idx % (DP / 2));
    const int row = row0 + r;
    uint32_t val = 0;
    if (row >= 0 && row < total && c < d) val = __ldg(reinterpret_cast<const unsigned int*>(src + (int64_t)row * stride + hoff + c));
    *reinterpret_cast<uint32_t*>(tile + r * S + c) = val;
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kMmaThreads) varlen_attention_mma(Params p) {
  constexpr int QS = DP + 8;     // Q / K tile row stride in elements (16-byte skew per row)
  constexpr int VS = kKeys + 8;  // transposed V tile row stride
  __shared__ __align__(16) T qk_tile[kKeys * QS];  // Q first (its fragments move to registers), then K tiles
  __shared__ __align__(16) T vt_tile[DP * VS];
  __shared__ RowRange ranges[kRows];
  __shared__ int bounds[4];  // prefix keys [bounds0, bounds1), mode keys [bounds2, bounds3) over the block's rows

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tig = lane & 3;
  const int row0 = blockIdx.x * kRows, h = blockIdx.y;
  const int stride = p.heads * p.d, hoff = h * p.d;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);

  if (threadIdx.x == 0) {
    bounds[0] = INT_MAX; bounds[1] = INT_MIN; bounds[2] = INT_MAX; bounds[3] = INT_MIN;
  }
  load_rows<T, DP, QS>(qk_tile, q, row0, p.total, stride, hoff, p.d);
  __syncthreads();
  if (threadIdx.x < kRows) {
    const int row = row0 + threadIdx.x;
    RowRange r{0, 0, 0, 0};  // rows past the end see nothing
    if (row < p.total) {
      r = row_range(p, row);
      if (r.pend > r.s) { atomicMin(&bounds[0], r.s); atomicMax(&bounds[1], r.pend); }
      atomicMin(&bounds[2], r.lo);
      atomicMax(&bounds[3], r.hi);
    }
    ranges[threadIdx.x] = r;
  }
  // this thread's two rows: g and g + 8 of its warp's 16
  uint32_t qf[DP / 16][4];
#pragma unroll
  for (int kc = 0; kc < DP / 16; ++kc) {
    const T* base = qk_tile + (warp * 16 + g) * QS + kc * 16 + tig * 2;
    qf[kc][0] = lds32(base);
    qf[kc][1] = lds32(base + 8 * QS);
    qf[kc][2] = lds32(base + 8);
    qf[kc][3] = lds32(base + 8 * QS + 8);
  }
  __syncthreads();
  const RowRange rr[2] = {ranges[warp * 16 + g], ranges[warp * 16 + g + 8]};

  float o[DP / 8][4];
#pragma unroll
  for (int dt = 0; dt < DP / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  // key intervals to walk: the prefix and the mode's keys, merged when they touch
  int seg_begin[2] = {bounds[0], bounds[2]}, seg_end[2] = {bounds[1], bounds[3]};
  if (seg_begin[0] >= seg_end[0]) {
    seg_begin[0] = seg_end[0] = 0;
  } else if (seg_begin[1] <= seg_end[0]) {
    seg_begin[1] = min(seg_begin[0], seg_begin[1]);
    seg_end[1] = max(seg_end[0], seg_end[1]);
    seg_begin[0] = seg_end[0] = 0;
  }

  for (int seg = 0; seg < 2; ++seg) {
    // a key tile may run past its segment's end into the other segment: count only this segment's keys,
    // so a key is never visited twice
    const int seg_hi = seg_end[seg];
    for (int kb = seg_begin[seg]; kb < seg_hi; kb += kKeys) {
      // K tile row-major, V tile transposed ([dim][key]); keys past the end are zeros (and masked)
      load_rows<T, DP, QS>(qk_tile, k, kb, p.total, stride, hoff, p.d);
      for (int idx = threadIdx.x; idx < kKeys * (DP / 2); idx += kMmaThreads) {
        const int key = idx / (DP / 2), c = 2 * (idx % (DP / 2));
        const int j = kb + key;
        uint32_t val = 0;
        if (j < p.total && c < p.d) val = __ldg(reinterpret_cast<const unsigned int*>(v + (int64_t)j * stride + hoff + c));
        const T* pair = reinterpret_cast<const T*>(&val);
        vt_tile[c * VS + key] = pair[0];
        vt_tile[(c + 1) * VS + key] = pair[1];
      }
      __syncthreads();

      // S = Q K^T for this warp's 16 rows x 64 keys
      float s[kKeys / 8][4];
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < DP / 16; ++kc) {
          const T* base = qk_tile + (nt * 8 + g) * QS + kc * 16 + tig * 2;
          mma16816<T>(s[nt], qf[kc], lds32(base), lds32(base + 8));
        }
      }
      // scale, mask, online softmax (a row's 64 scores sit in the 4 threads of its quad)
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const RowRange& r = rr[half];
        const bool all_visible = kb + kKeys <= seg_hi &&
                                 ((kb >= r.lo && kb + kKeys <= r.hi) || (kb >= r.s && kb + kKeys <= r.pend));
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[nt][half * 2 + e];
            x *= p.scale_log2;
            const int j = kb + nt * 8 + tig * 2 + e;
            if (!all_visible && (j >= seg_hi || !visible(r, j))) x = -INFINITY;
            mx[half] = fmaxf(mx[half], x);
          }
        }
        mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], 1));
        mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], 2));
      }
      float alpha[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float m_new = fmaxf(m[half], mx[half]);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: keep zeros, no NaN
        alpha[half] = exp2f(m[half] - m_use);
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[nt][half * 2 + e];
            x = exp2f(x - m_use);
            sum += x;
          }
        }
        l[half] = l[half] * alpha[half] + sum;  // per-thread partial sums; the quad is summed at the end
        m[half] = m_new;
      }
#pragma unroll
      for (int dt = 0; dt < DP / 8; ++dt) {
        o[dt][0] *= alpha[0]; o[dt][1] *= alpha[0];
        o[dt][2] *= alpha[1]; o[dt][3] *= alpha[1];
      }
      // O += P V: the score accumulators of key tiles 2kk, 2kk+1 are the A fragment of keys [16kk, 16kk+16)
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                               pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dt = 0; dt < DP / 8; ++dt) {
          const T* base = vt_tile + (dt * 8 + g) * VS + kk * 16 + tig * 2;
          mma16816<T>(o[dt], a, lds32(base), lds32(base + 8));
        }
      }
      __syncthreads();  // the tiles are reloaded next
    }
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = l[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = row0 + warp * 16 + g + half * 8;
    if (row >= p.total) continue;
    const float inv = 1.f / sum;  // >= 1 term: every row sees itself
#pragma unroll
    for (int dt = 0; dt < DP / 8; ++dt) {
      const int c = dt * 8 + tig * 2;
      if (c < p.d) {
        *reinterpret_cast<uint32_t*>(out + (int64_t)row * stride + hoff + c) =
            pack2<T>(o[dt][half * 2] * inv, o[dt][half * 2 + 1] * inv);
      }
    }
  }
}

template <typename T>
cudaError_t launch_typed(const Params& p, bool tensor_cores, cudaStream_t stream) {
  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores && p.d % 2 == 0 && p.d <= 128) {
      const dim3 grid((p.total + kRows - 1) / kRows, p.heads);
      if (p.d <= 64) {
        varlen_attention_mma<T, 64><<<grid, kMmaThreads, 0, stream>>>(p);
      } else if (p.d <= 80) {
        varlen_attention_mma<T, 80><<<grid, kMmaThreads, 0, stream>>>(p);
      } else {
        varlen_attention_mma<T, 128><<<grid, kMmaThreads, 0, stream>>>(p);
      }
      return cudaGetLastError();
    }
  }
  const dim3 grid((p.total + kGenericWarps - 1) / kGenericWarps, p.heads);
  varlen_attention_generic<T><<<grid, kGenericWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

bool aligned4(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 3) == 0; }

}  // namespace

cudaError_t launch_varlen_attention(const void* q, const void* k, const void* v, void* out, const int32_t* cu_seqlens,
                                    int64_t num_videos, const int32_t* cu_frames, int64_t num_frames, int64_t total,
                                    int64_t heads, int64_t head_dim, VarlenDtype dtype, int mode, float scale,
                                    int64_t num_prefix, cudaStream_t stream) {
  if (total <= 0) return cudaSuccess;
  if (total >= INT_MAX || heads < 1 || heads > 65535 || head_dim < 1 || head_dim > 256 || num_videos < 1 ||
      num_frames < 1 || num_videos >= INT_MAX || num_frames >= INT_MAX) {
    return cudaErrorInvalidValue;
  }
  Params p{q, k, v, out, cu_seqlens, cu_frames, static_cast<int>(num_videos + 1), static_cast<int>(num_frames + 1),
           static_cast<int>(total), static_cast<int>(heads), static_cast<int>(head_dim), mode,
           static_cast<int>(num_prefix < total ? num_prefix : total), scale * kLog2e};
  int device = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  // tensor cores from sm_80; their 32-bit loads and stores need 4-byte aligned rows
  const bool tensor_cores = major >= 8 && aligned4(q) && aligned4(k) && aligned4(v) && aligned4(out);
  switch (dtype) {
    case VarlenDtype::kFloat16: return launch_typed<__half>(p, tensor_cores, stream);
    case VarlenDtype::kBFloat16: return launch_typed<__nv_bfloat16>(p, tensor_cores, stream);
    default: return launch_typed<float>(p, false, stream);
  }
}

}  // namespace autogaze_ext
