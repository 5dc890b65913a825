// varlen_attention on the GPU: FlashAttention-style attention over packed gazed tokens.
//
// Visibility (see cpu/varlen_attention.cpp): query i of video [s, e) sees keys [lo_i, hi_i) of its mode and
// the prefix keys [s, pend_i). Every block takes up to 64 consecutive query rows of one head -- of one video
// (of one frame in frame_independent) where those average half a tile or more, else of the packed tokens; a
// tile may straddle frames or videos, per-row ranges keep it exact -- and walks only the key tiles in the
// union of its rows' ranges, so tiles above the frame diagonal (block_causal), the causal diagonal or outside
// a frame (frame_independent) are never loaded. Online softmax (running max and sum per row, base-2 exponentials)
// keeps one pass over the keys.
//
// fp16/bf16 with an even head_dim <= 128: tensor cores (mma.sync m16n8k16, fp32 accumulation), 4 warps of
// 16 query rows, 64-key tiles; the P tile goes from the score accumulators to the A operand of P.V in
// registers. Two kernels share that scheme:
// - varlen_attention_mma (head_dim % 8 == 0, 16-byte aligned q, k, v): Q, K and V tiles row-major in padded
//   shared memory, filled by 16-byte cp.async, K and V double-buffered (tile t + 1 loads while tile t is
//   computed); fragments by ldmatrix (V through ldmatrix.trans, so V is never transposed in memory); a warp
//   skips the key tiles none of its 16 rows sees.
// - varlen_attention_mma_ldg (other even head dims, 4-byte aligned rows): 32-bit loads into K row-major
//   and V transposed tiles, no overlap of loads and compute.
// Everything else (fp32, odd or large head dims, GPUs before sm_80): a warp per query row in fp32.
// Keys a row may not see are absent: a NaN or Inf in their values never reaches it (pair_nonfinite).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/async_copy.cuh"
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
  bool segment_tiles;  // query tiles aligned to segments (see segment_tile)
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

// Query row `row` of head h by one warp in fp32, visiting only the keys the row sees. Also the tensor-core
// kernels' exact fallback (see pair_nonfinite).
template <typename T>
__device__ void generic_row(const Params& p, int row, int h, int lane) {
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

template <typename T>
__global__ void __launch_bounds__(kGenericWarps * 32) varlen_attention_generic(Params p) {
  const int row = blockIdx.x * kGenericWarps + (threadIdx.x >> 5);
  if (row >= p.total) return;
  generic_row<T>(p, row, blockIdx.y, threadIdx.x & 31);
}

// ---------------------------------------------------------------------- tensor cores: fp16 / bf16, d <= 128

constexpr int kRows = 64;  // query rows per block (16 per warp)
constexpr int kKeys = 64;  // keys per tile
constexpr int kMmaThreads = 128;
constexpr int kWarps = kMmaThreads / 32;
static_assert(kRows == 16 * kWarps, "a warp owns 16 query rows");

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

// Keys a row may not see are absent, not weighted by 0: P.V multiplies whole tiles of values by probabilities
// that are 0 for masked keys, and 0 * NaN (or Inf) would poison the row. So the tensor-core kernels check every
// value they stage (two halves per 32-bit word: exponent bits all set) and a block that met a non-finite one
// recomputes its rows with generic_row, which reads only visible keys -- never on finite data.
template <typename T>
__device__ __forceinline__ bool pair_nonfinite(uint32_t w) {
  constexpr uint32_t e = std::is_same_v<T, __half> ? 0x7c00u : 0x7f80u;
  return (w & e) == e || ((w >> 16) & e) == e;
}

// Rows [row0, row_end) of head h (at most a tile) by generic_row, a warp per row.
template <typename T>
__device__ void exact_rows(const Params& p, int row0, int row_end, int h) {
  for (int row = row0 + static_cast<int>(threadIdx.x >> 5); row < min(row_end, row0 + kRows); row += kWarps) {
    generic_row<T>(p, row, h, threadIdx.x & 31);
  }
}

// 2^x in one MUFU instruction (exp2f adds a subnormal fix-up); 2^-inf = +0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// One 16 x 64 score tile of a warp, in mma accumulator layout: this thread holds rows g (s[.][0..1]) and g + 8
// (s[.][2..3]), keys kb + 8 nt + 2 tig + {0, 1}. Scales and masks the scores (keys >= seg_hi belong to the
// other key segment and are left to it), folds the tile into the running row max m and the thread's partial
// row sums l, rescales the output accumulators o, and leaves the unnormalised probabilities in s.
template <int NO>
__device__ __forceinline__ void softmax_tile(float (&s)[kKeys / 8][4], float (&o)[NO][4], float (&m)[2],
                                             float (&l)[2], const RowRange (&rr)[2], int kb, int seg_hi, int tig,
                                             float scale_log2) {
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const RowRange& r = rr[half];
    const bool all_visible = kb + kKeys <= seg_hi &&
                             ((kb >= r.lo && kb + kKeys <= r.hi) || (kb >= r.s && kb + kKeys <= r.pend));
    if (all_visible) {  // the common case: no per-key tests
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][half * 2 + e];
          x *= scale_log2;
          mx[half] = fmaxf(mx[half], x);
        }
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][half * 2 + e];
          const int j = kb + nt * 8 + tig * 2 + e;
          x = j < seg_hi && visible(r, j) ? x * scale_log2 : -INFINITY;
          mx[half] = fmaxf(mx[half], x);
        }
      }
    }
    // a row's 64 scores sit in the 4 threads of its quad
    mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], 1));
    mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], 2));
  }
  float alpha[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float m_new = fmaxf(m[half], mx[half]);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: keep zeros, no NaN
    alpha[half] = fast_exp2(m[half] - m_use);
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& x = s[nt][half * 2 + e];
        x = fast_exp2(x - m_use);
        sum += x;
      }
    }
    l[half] = l[half] * alpha[half] + sum;  // per-thread partial sums; the quad is summed at the end
    m[half] = m_new;
  }
#pragma unroll
  for (int dt = 0; dt < NO; ++dt) {
    o[dt][0] *= alpha[0]; o[dt][1] *= alpha[0];
    o[dt][2] *= alpha[1]; o[dt][3] *= alpha[1];
  }
}

// The probabilities of keys [16 kk, 16 kk + 16) as the A operand of P.V: the score accumulators of key tiles
// 2kk and 2kk + 1 are exactly its fragment.
template <typename T>
__device__ __forceinline__ void p_fragment(uint32_t (&a)[4], const float (&s)[kKeys / 8][4], int kk) {
  a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
  a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
  a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// Normalises and stores this thread's outputs: rows row_g and row_g + 8, columns 8 dt + 2 tig + {0, 1} < d.
template <typename T, int DP>
__device__ __forceinline__ void store_rows(const Params& p, const float (&o)[DP / 8][4], const float (&l)[2],
                                           int row_g, int row_end, int tig, int hoff) {
  T* out = static_cast<T*>(p.out);
  const int stride = p.heads * p.d;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = l[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = row_g + half * 8;
    if (row >= row_end) continue;
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

// ------------------------------------------------------------- 16-byte rows: cp.async pipeline and ldmatrix

// Query tile x: rows [row0, row_end). With segment_tiles, tiles never straddle a segment (a video; a frame in
// frame_independent, where a frame sees only itself), since a tile spanning two segments walks the union of
// their key ranges: segment s has ceil(len_s / 64) tiles, numbered in segment order, and the block finds tile
// x with a block-wide scan over the segments' tile counts (kMmaThreads segments per round). Otherwise (many
// segments shorter than a tile, whose union is cheaper than mostly empty tiles) tile x is rows 64x.. of the
// packed tokens. Returns false when x is past the last tile (the grid is sized for the worst case, see
// tile_grid); block-uniform.
__device__ bool segment_tile(const Params& p, int x, int& row0, int& row_end) {
  if (!p.segment_tiles) {
    row0 = x * kRows;
    row_end = p.total;
    return row0 < p.total;
  }
  __shared__ int warp_sums[kWarps];
  __shared__ int found[2];
  const int32_t* cu = p.mode == 3 ? p.cu_frames : p.cu_seqlens;
  const int nseg = (p.mode == 3 ? p.nf1 : p.nv1) - 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) found[0] = found[1] = -1;
  int base = 0;  // tiles of the segments before this round
  for (int s0 = 0; s0 < nseg; s0 += kMmaThreads) {
    const int s = s0 + static_cast<int>(threadIdx.x);
    const int lo = s < nseg ? clamp_total(__ldg(cu + s), p.total) : 0;
    const int hi = s < nseg ? clamp_total(__ldg(cu + s + 1), p.total) : 0;
    const int tiles = hi > lo ? (hi - lo + kRows - 1) / kRows : 0;
    int incl = tiles;  // inclusive scan: within the warp, then over the warp totals
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    __syncthreads();  // the previous round's warp_sums have been read (and found[] initialised)
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    int round = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) incl += warp_sums[w];
      round += warp_sums[w];
    }
    const int first = base + incl - tiles;
    if (x >= first && x < first + tiles) {  // exactly one thread over all rounds
      found[0] = lo + (x - first) * kRows;
      found[1] = hi;
    }
    base += round;
  }
  __syncthreads();
  row0 = found[0];
  row_end = found[1];
  return row0 >= 0;
}

// Blocks along x for segment_tile: with segment tiles, sum over segments of ceil(len / 64) <= total / 64 +
// segments, and <= total.
inline unsigned tile_grid(const Params& p) {
  const int64_t tiles = (static_cast<int64_t>(p.total) + kRows - 1) / kRows;
  if (!p.segment_tiles) return static_cast<unsigned>(tiles);
  const int64_t segments = (p.mode == 3 ? p.nf1 : p.nv1) - 1;
  return static_cast<unsigned>(std::min<int64_t>(tiles + segments, p.total));
}

// Four 8x8 b16 matrices; lane 8i + r gives the address of row r of matrix i, and register i receives, in
// lane 4g + t, row g, columns 2t and 2t + 1 of matrix i (of its transpose with .trans).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  __trap();
#endif
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  __trap();
#endif
}

// Row stride of the shared tiles in elements: DP * 2 + 16 bytes is an odd multiple of 16 (144, 176, 272), so
// the 8 rows an ldmatrix matrix reads fall in 8 different 16-byte bank groups (no conflicts).
template <int DP>
constexpr int tile_stride() { return DP + 8; }

// Rows [row0, row0 + 64) of one head, 16-byte chunks by cp.async, into the row-major tile at shared address
// dst. Rows >= row_end and the chunks past d (the DP padding) are zero-filled, so padded dims contribute
// nothing and a masked key's zero V row keeps 0 * V finite.
template <typename T, int DP>
__device__ __forceinline__ void load_tile_async(uint32_t dst, const T* src, int row0, int row_end, int stride,
                                                int hoff, int chunks) {
  constexpr int kChunks = DP * (int)sizeof(T) / 16;  // per smem row
  constexpr int kRS = tile_stride<DP>();
  static_assert(kRows * kChunks % kMmaThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kMmaThreads; ++i) {
    const int idx = threadIdx.x + i * kMmaThreads;
    const int r = idx / kChunks, c = idx % kChunks;
    const bool copy = r < row_end - row0 && c < chunks;
    const T* from = copy ? src + (int64_t)(row0 + r) * stride + hoff + c * 8 : src;
    cp_async<16>(dst + (uint32_t)((r * kRS + c * 8) * sizeof(T)), from, copy);
  }
}

// Dynamic shared memory of varlen_attention_mma: two stages of (K tile, V tile); Q passes through stage 1's
// K tile before the first K tile lands there.
template <typename T, int DP>
constexpr int mma_smem_bytes() { return 4 * kKeys * tile_stride<DP>() * (int)sizeof(T); }

// 3 blocks per SM (<= 168 registers) for DP <= 80 without spills; DP = 128 needs more than 170.
template <typename T, int DP>
__global__ void __launch_bounds__(kMmaThreads, DP <= 80 ? 3 : 2) varlen_attention_mma(Params p) {
  constexpr int kRS = tile_stride<DP>();
  constexpr uint32_t kTileBytes = kKeys * kRS * sizeof(T);
  static_assert(kRows == kKeys, "Q uses a K tile's buffer");
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ RowRange ranges[kRows];
  __shared__ int warp_bounds[kWarps][4];  // per warp: prefix keys [0, 1), mode keys [2, 3) over its rows

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tig = lane & 3;
  // last tiles first: in the causal-like modes a video's last tiles see the most keys, so short ones fill the
  // tail
  int row0, row_end;
  if (!segment_tile(p, static_cast<int>(gridDim.x - 1 - blockIdx.x), row0, row_end)) return;  // block-uniform
  const int h = blockIdx.y;
  const int stride = p.heads * p.d, hoff = h * p.d, chunks = p.d / 8;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const uint32_t smem0 = smem_u32(smem);
  const uint32_t q_tile = smem0 + 2 * kTileBytes;  // stage 1's K tile

  load_tile_async<T, DP>(q_tile, q, row0, row_end, stride, hoff, chunks);
  cp_async_commit();

  // visibility: lanes 0-15 of each warp take its 16 rows; unions over the warp's and the block's valid rows
  int w_bounds[4];
  {
    const int row = row0 + warp * 16 + lane;
    const bool valid = lane < 16 && row < row_end;
    RowRange r{0, 0, 0, 0};  // rows past the end see nothing
    if (valid) r = row_range(p, row);
    if (lane < 16) ranges[warp * 16 + lane] = r;
    const bool pre = valid && r.pend > r.s;
    int b[4] = {pre ? r.s : INT_MAX, pre ? r.pend : INT_MIN, valid ? r.lo : INT_MAX, valid ? r.hi : INT_MIN};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      b[0] = min(b[0], __shfl_xor_sync(0xffffffffu, b[0], o));
      b[1] = max(b[1], __shfl_xor_sync(0xffffffffu, b[1], o));
      b[2] = min(b[2], __shfl_xor_sync(0xffffffffu, b[2], o));
      b[3] = max(b[3], __shfl_xor_sync(0xffffffffu, b[3], o));
    }
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < 4; ++i) warp_bounds[warp][i] = b[i];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) w_bounds[i] = b[i];
  }
  __syncthreads();
  const RowRange rr[2] = {ranges[warp * 16 + g], ranges[warp * 16 + g + 8]};

  // key intervals to walk: the prefix and the mode's keys, merged when they touch
  int seg_begin[2] = {INT_MAX, INT_MAX}, seg_end[2] = {INT_MIN, INT_MIN};
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    seg_begin[0] = min(seg_begin[0], warp_bounds[w][0]);
    seg_end[0] = max(seg_end[0], warp_bounds[w][1]);
    seg_begin[1] = min(seg_begin[1], warp_bounds[w][2]);
    seg_end[1] = max(seg_end[1], warp_bounds[w][3]);
  }
  if (seg_begin[0] >= seg_end[0]) {
    seg_begin[0] = seg_end[0] = 0;
  } else if (seg_begin[1] <= seg_end[0]) {
    seg_begin[1] = min(seg_begin[0], seg_begin[1]);
    seg_end[1] = max(seg_end[0], seg_end[1]);
    seg_begin[0] = seg_end[0] = 0;
  }
  if (seg_begin[1] >= seg_end[1]) seg_begin[1] = seg_end[1] = 0;
  // key tiles: n0 of segment 0, then segment 1's; all bounds lie in [0, total]
  const int n0 = seg_end[0] > seg_begin[0] ? (seg_end[0] - seg_begin[0] - 1) / kKeys + 1 : 0;
  const int n1 = seg_end[1] > seg_begin[1] ? (seg_end[1] - seg_begin[1] - 1) / kKeys + 1 : 0;
  const int n_tiles = n0 + n1;
  auto tile_begin = [&](int t) { return t < n0 ? seg_begin[0] + t * kKeys : seg_begin[1] + (t - n0) * kKeys; };
  // a key tile may run past its segment's end into the other segment: count only this segment's keys,
  // so a key is never visited twice
  auto tile_limit = [&](int t) { return t < n0 ? seg_end[0] : seg_end[1]; };
  auto load_kv = [&](int t) {
    const int kb = tile_begin(t);
    const uint32_t stage = smem0 + (t & 1) * 2 * kTileBytes;
    load_tile_async<T, DP>(stage, k, kb, tile_limit(t), stride, hoff, chunks);
    load_tile_async<T, DP>(stage + kTileBytes, v, kb, tile_limit(t), stride, hoff, chunks);
  };

  if (n_tiles > 0) load_kv(0);
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed (tile 0 may still be in flight)
  __syncthreads();
  // this thread's Q fragments: matrices rows {0-7, 8-15} (lane bit 3) x dims {0-7, 8-15} (lane bit 4)
  uint32_t qf[DP / 16][4];
#pragma unroll
  for (int kc = 0; kc < DP / 16; ++kc) {
    ldsm_x4(qf[kc], q_tile + (uint32_t)(((warp * 16 + (lane & 15)) * kRS + kc * 16 + (lane >> 4) * 8) * sizeof(T)));
  }
  __syncthreads();  // Q is in registers: stage 1 may be overwritten

  float o[DP / 8][4];
#pragma unroll
  for (int dt = 0; dt < DP / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  bool nonfinite = false;
  for (int t = 0; t < n_tiles; ++t) {
    // stage (t + 1) & 1 was last read in iteration t - 1, which ended with a barrier
    if (t + 1 < n_tiles) load_kv(t + 1);
    cp_async_commit();   // possibly empty: keeps "all but the newest group" == tile t
    cp_async_wait<1>();
    __syncthreads();     // tile t visible to every thread
    {
      const uint32_t* vw = reinterpret_cast<const uint32_t*>(smem + (t & 1) * 2 * kTileBytes + kTileBytes);
      for (int i = threadIdx.x; i < kKeys * DP / 2; i += kMmaThreads) {  // the DP columns (the skew is never written)
        nonfinite = nonfinite || pair_nonfinite<T>(vw[i / (DP / 2) * (kRS / 2) + i % (DP / 2)]);
      }
    }

    const int kb = tile_begin(t), seg_hi = tile_limit(t);
    const int kend = min(kb + kKeys, seg_hi);
    // warp-uniform: skip a tile none of this warp's rows sees (a warp of a tile that straddles videos or
    // frames, the rows above the causal diagonal)
    const bool active = (kb < w_bounds[3] && kend > w_bounds[2]) || (kb < w_bounds[1] && kend > w_bounds[0]);
    if (active) {
      const uint32_t k_tile = smem0 + (t & 1) * 2 * kTileBytes, v_tile = k_tile + kTileBytes;
      // S = Q K^T for this warp's 16 rows x 64 keys. ldmatrix matrices: keys 16np + {0-7, 0-7, 8-15, 8-15}
      // (lane bit 4) x dims 16kc + {0-7, 8-15} (lane bit 3): registers 0, 1 are the B fragment of key
      // octet 2np, registers 2, 3 that of octet 2np + 1 (K row-major is B = K^T column-major).
      float s[kKeys / 8][4];
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kc = 0; kc < DP / 16; ++kc) {
#pragma unroll
        for (int np = 0; np < kKeys / 16; ++np) {
          uint32_t b[4];
          const int key = np * 16 + (lane & 7) + (lane >> 4) * 8, dim = kc * 16 + ((lane >> 3) & 1) * 8;
          ldsm_x4(b, k_tile + (uint32_t)((key * kRS + dim) * sizeof(T)));
          mma16816<T>(s[2 * np], qf[kc], b[0], b[1]);
          mma16816<T>(s[2 * np + 1], qf[kc], b[2], b[3]);
        }
      }
      softmax_tile<DP / 8>(s, o, m, l, rr, kb, seg_hi, tig, p.scale_log2);
      // O += P V. ldmatrix.trans matrices: keys 16kk + {0-7, 8-15} (lane bit 3) x dims 16dp + {0-7, 0-7,
      // 8-15, 8-15} (lane bit 4): transposed, registers 0, 1 are the B fragment of dim octet 2dp, registers
      // 2, 3 that of octet 2dp + 1.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t a[4];
        p_fragment<T>(a, s, kk);
#pragma unroll
        for (int dp = 0; dp < DP / 16; ++dp) {
          uint32_t b[4];
          const int key = kk * 16 + (lane & 15), dim = dp * 16 + (lane >> 4) * 8;
          ldsm_x4_trans(b, v_tile + (uint32_t)((key * kRS + dim) * sizeof(T)));
          mma16816<T>(o[2 * dp], a, b[0], b[1]);
          mma16816<T>(o[2 * dp + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with stage t & 1: iteration t + 1 refills it
  }

  if (__syncthreads_or(nonfinite)) return exact_rows<T>(p, row0, row_end, h);
  store_rows<T, DP>(p, o, l, row0 + warp * 16 + g, row_end, tig, hoff);
}

// ------------------------------------------------------------------ 4-byte rows: 32-bit loads, no pipeline

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
__global__ void __launch_bounds__(kMmaThreads) varlen_attention_mma_ldg(Params p) {
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

  bool nonfinite = false;
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
        nonfinite = nonfinite || pair_nonfinite<T>(val);
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
      softmax_tile<DP / 8>(s, o, m, l, rr, kb, seg_hi, tig, p.scale_log2);
      // O += P V
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t a[4];
        p_fragment<T>(a, s, kk);
#pragma unroll
        for (int dt = 0; dt < DP / 8; ++dt) {
          const T* base = vt_tile + (dt * 8 + g) * VS + kk * 16 + tig * 2;
          mma16816<T>(o[dt], a, lds32(base), lds32(base + 8));
        }
      }
      __syncthreads();  // the tiles are reloaded next
    }
  }

  if (__syncthreads_or(nonfinite)) return exact_rows<T>(p, row0, p.total, h);
  store_rows<T, DP>(p, o, l, row0 + warp * 16 + g, p.total, tig, hoff);
}

template <typename T, int DP>
cudaError_t launch_mma(const Params& p, bool vec16, cudaStream_t stream) {
  if (!vec16) {
    const dim3 grid((p.total + kRows - 1) / kRows, p.heads);
    varlen_attention_mma_ldg<T, DP><<<grid, kMmaThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  const dim3 grid(tile_grid(p), p.heads);
  constexpr int smem = mma_smem_bytes<T, DP>();
  if constexpr (smem > 48 * 1024) {  // above the default limit: opt in (per launch, as it is per device)
    const cudaError_t err =
        cudaFuncSetAttribute(varlen_attention_mma<T, DP>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  varlen_attention_mma<T, DP><<<grid, kMmaThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

// tensor_cores: sm_80+ with 4-byte aligned rows; vec16: also 16-byte aligned rows (head_dim % 8 == 0).
template <typename T>
cudaError_t launch_typed(const Params& p, bool tensor_cores, bool vec16, cudaStream_t stream) {
  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores && p.d % 2 == 0 && p.d <= 128) {
      if (p.d <= 64) return launch_mma<T, 64>(p, vec16, stream);
      if (p.d <= 80) return launch_mma<T, 80>(p, vec16, stream);
      return launch_mma<T, 128>(p, vec16, stream);
    }
  }
  const dim3 grid((p.total + kGenericWarps - 1) / kGenericWarps, p.heads);
  varlen_attention_generic<T><<<grid, kGenericWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

bool aligned(const void* ptr, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(ptr) & (bytes - 1)) == 0; }

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
           static_cast<int>(num_prefix < total ? num_prefix : total), scale * kLog2e, false};
  // Segment-aligned query tiles once segments average half a tile or more (below that, tiles spanning a few
  // whole segments waste less than tiles of one mostly empty segment)
  p.segment_tiles = total >= static_cast<int64_t>(kRows / 2) * (mode == 3 ? num_frames : num_videos);
  int device = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  // tensor cores from sm_80; their 32-bit loads and stores need 4-byte aligned rows, the cp.async pipeline
  // 16-byte aligned rows of q, k, v (and tile indices that cannot overflow int)
  const bool tensor_cores = major >= 8 && aligned(q, 4) && aligned(k, 4) && aligned(v, 4) && aligned(out, 4);
  const bool vec16 = head_dim % 8 == 0 && aligned(q, 16) && aligned(k, 16) && aligned(v, 16) &&
                     total < INT_MAX - 2 * kKeys;
  switch (dtype) {
    case VarlenDtype::kFloat16: return launch_typed<__half>(p, tensor_cores, vec16, stream);
    case VarlenDtype::kBFloat16: return launch_typed<__nv_bfloat16>(p, tensor_cores, vec16, stream);
    default: return launch_typed<float>(p, false, false, stream);
  }
}

}  // namespace autogaze_ext
