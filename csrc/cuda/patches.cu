// multiscale_patches and gather_patches on the GPU.
//
// Dense op: one thread block per (frame, band of input rows, channel). The block stages its band (plus the
// rows the bicubic taps reach beyond it) in shared memory once, then writes everything that depends on it:
// the band's patches of a scale equal to the frame size as float4 copies (each warp a contiguous run of a
// patch), and, for every resampled scale, the output rows whose centre tap row lies in the band (lanes over
// 32 consecutive output columns, taps from shared memory, the interpolation along x of a source row reused by
// the next output row when it reads that row again). So the input is read from DRAM once and the output
// written once, in one launch. Frames too wide for a band in shared memory fall back to the per-patch
// kernels below (a band-copy kernel for the frame-size scale, one block per patch for the others).
//
// Gather op (and the dense fallback): one thread block per output patch: it decodes the token (scale, row,
// col), puts the 2*p bicubic taps of the patch's rows and columns in shared memory and writes the C*p*p
// samples contiguously (coalesced). A scale equal to the frame size is a plain copy (float4 when aligned).
// The gather adds two tiny kernels that number the non-padded slots (per-row block scan, then a scan over
// rows), so the packed row of every slot is known without a host round trip.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline_primitives.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "cuda/patches.h"

namespace autogaze_ext {
namespace {

constexpr int kThreads = 256;        // >= 2 * kMaxPatch: the first 2p threads compute the taps
constexpr int kMaxPatchCuda = 64;    // kMaxPatch of ops.h
constexpr int kScanThreads = 1024;

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return __float2half_rn(v);
}

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return __half2float(v);
}

// Bicubic taps of the patch rows (y) and columns (x), structure of arrays: lanes reading consecutive
// columns hit consecutive banks.
struct PatchTaps {
  int32_t yi[4][kMaxPatchCuda], xi[4][kMaxPatchCuda];
  float yw[4][kMaxPatchCuda], xw[4][kMaxPatchCuda];
};

__device__ __forceinline__ CubicTaps taps_at(const int32_t (&i)[4][kMaxPatchCuda], const float (&w)[4][kMaxPatchCuda],
                                             int k) {
  CubicTaps t;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    t.idx[j] = i[j][k];
    t.w[j] = w[j][k];
  }
  return t;
}

// Writes patch `local` of one (C, H, W) frame as C*p*p values of `out`. Called by the whole block, for one
// patch per block (the shared taps are not re-synchronised for a second patch). P: patch side when known
// at compile time (cheap index math), else 0.
template <int P, typename OutT>
__device__ __forceinline__ void block_patch(const float* __restrict__ frame, int64_t C, int64_t H, int64_t W,
                                            const PatchLayout& L, int32_t local, OutT* __restrict__ out,
                                            bool vec_ok) {
  __shared__ PatchTaps taps;
  int32_t s, row, col;
  patch_of_token(L, local, s, row, col);
  const int p = P > 0 ? P : L.patch;
  const int pp = p * p;
  const int64_t K = C * pp, plane = H * W;
  const int scale = L.scale[s];

  if (H == scale && W == scale) {  // bicubic at scale 1 is the identity: copy the patch
    const float* base = frame + static_cast<int64_t>(row) * p * W + static_cast<int64_t>(col) * p;
    if constexpr (std::is_same_v<OutT, float> && P > 0 && P % 4 == 0) {
      if (vec_ok) {
        for (int64_t e4 = threadIdx.x; e4 < K / 4; e4 += blockDim.x) {
          const int64_t e = 4 * e4, c = e / pp;
          const int r = static_cast<int>(e - c * pp), ky = r / P, kx = r - ky * P;
          reinterpret_cast<float4*>(out)[e4] = __ldg(reinterpret_cast<const float4*>(base + c * plane + ky * W + kx));
        }
        return;
      }
    }
    for (int64_t e = threadIdx.x; e < K; e += blockDim.x) {
      const int64_t c = e / pp;
      const int r = static_cast<int>(e - c * pp), ky = r / p, kx = r - ky * p;
      out[e] = from_float<OutT>(__ldg(base + c * plane + ky * W + kx));
    }
    return;
  }

  const int t = threadIdx.x;
  if (t < 2 * p) {
    const bool is_y = t < p;
    const int k = is_y ? t : t - p;
    const CubicTaps c = is_y ? cubic_taps(H, scale, static_cast<int64_t>(row) * p + k)
                             : cubic_taps(W, scale, static_cast<int64_t>(col) * p + k);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      (is_y ? taps.yi : taps.xi)[j][k] = c.idx[j];
      (is_y ? taps.yw : taps.xw)[j][k] = c.w[j];
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < K; e += blockDim.x) {
    const int64_t c = e / pp;
    const int r = static_cast<int>(e - c * pp), ky = r / p, kx = r - ky * p;
    out[e] = from_float<OutT>(
        bicubic_sample(frame + c * plane, W, taps_at(taps.yi, taps.yw, ky), taps_at(taps.xi, taps.xw, kx)));
  }
}

struct DenseArgs {
  const float* frames;
  int64_t C, H, W;
  PatchLayout layout;
  float* out;
  bool vec_ok;
  // Tokens [skip_first, skip_first + skip_count) of every frame are left to identity_band_kernel.
  int32_t skip_first, skip_count;
};

// One block per (frame, token), tokens of the skipped range excepted. The layout is read in place from the
// parameter struct (a by-value PatchLayout argument is copied to the stack because the scale lookup
// indexes it dynamically).
template <int P>
__global__ void __launch_bounds__(kThreads) multiscale_patches_kernel(DenseArgs a) {
  const PatchLayout& L = a.layout;
  const int64_t V = tokens_per_frame(L.tokens), Vk = V - a.skip_count;
  const int64_t i = blockIdx.x;
  const int64_t n = i / Vk, k = i - n * Vk;
  const int64_t local = k < a.skip_first ? k : k + a.skip_count;
  const int64_t K = a.C * L.patch * L.patch;
  block_patch<P, float>(a.frames + n * a.C * a.H * a.W, a.C, a.H, a.W, L, static_cast<int32_t>(local),
                        a.out + (n * V + local) * K, a.vec_ok);
}

// The scale equal to the frame size with 16-pixel patches, float4-aligned: a copy. One block per (frame,
// patch row) reads the row's 16 source lines of every channel (coalesced) and scatters them into the row's
// patches in 64-byte runs. Each thread holds kCopyBatch 16-byte loads in flight before storing, which a
// block per patch (one load per thread) cannot.
// 128 threads: a 224-px band is 2688 float4, so each thread runs several batches, and 64 frames (896 bands)
// still fill every SM in one wave.
constexpr int kCopyBatch = 4;
constexpr int kBandThreads = 128;

__global__ void __launch_bounds__(kBandThreads) identity_band_kernel(DenseArgs a, int32_t s) {
  constexpr int P = 16, P4 = P / 4;
  const PatchLayout& L = a.layout;
  const int32_t g = L.tokens.grid[s];
  const int64_t V = tokens_per_frame(L.tokens);
  const int64_t n = blockIdx.x / g, r = blockIdx.x - n * g;
  const int64_t W4 = a.W / 4, cols4 = static_cast<int64_t>(g) * P4;  // float4 per source line, per band line
  const int64_t lines = a.C * P, total = lines * cols4, plane4 = a.H * W4, K4 = a.C * P * P4;
  const float4* src = reinterpret_cast<const float4*>(a.frames + (n * a.C * a.H + r * P) * a.W);
  float4* dst = reinterpret_cast<float4*>(a.out + (n * V + L.tokens.offset[s] + r * g) * a.C * P * P);
  for (int64_t base = threadIdx.x; base < total; base += kCopyBatch * static_cast<int64_t>(blockDim.x)) {
    float4 v[kCopyBatch];
#pragma unroll
    for (int j = 0; j < kCopyBatch; ++j) {
      const int64_t q = base + j * static_cast<int64_t>(blockDim.x);
      if (q >= total) break;
      const int64_t line = q / cols4, x4 = q - line * cols4;  // line = c * P + ky
      v[j] = __ldg(src + (line / P) * plane4 + (line % P) * W4 + x4);
    }
#pragma unroll
    for (int j = 0; j < kCopyBatch; ++j) {
      const int64_t q = base + j * static_cast<int64_t>(blockDim.x);
      if (q >= total) break;
      const int64_t line = q / cols4, x4 = q - line * cols4;
      dst[(x4 / P4) * K4 + line * P4 + x4 % P4] = v[j];  // patch x4 / P4, element (c, ky, 4 * (x4 % P4))
    }
  }
}

// ------------------------------------------------------------------------------- dense: band kernel

// bicubic_sample's sum a0*w0 + a1*w1 + a2*w2 + a3*w3 exactly as nvcc contracts it there (see its PTX: the
// second product rounded, then three fused multiply-adds), so the band kernel's samples equal those of the
// per-patch kernels and of gather_patches bit for bit.
__device__ __forceinline__ float cubic_dot(float a0, float a1, float a2, float a3, const float (&w)[4]) {
  return fmaf(a3, w[3], fmaf(a2, w[2], fmaf(a0, w[0], __fmul_rn(a1, w[1]))));
}

// 128 threads at <= 64 registers: 8 blocks (32 warps) per SM, so that while some blocks wait for their band
// others compute.
constexpr int kBandBlock = 128;

struct BandArgs {
  const float* frames;
  float* out;
  int64_t C;
  int32_t H, W;
  PatchLayout layout;
  int32_t band;   // input rows per block, a multiple of the patch: a frame-size patch row never straddles two
  int32_t bands;  // blocks per (frame, channel): ceil(H / band)
  int32_t pitch;  // floats per staged row: W padded up to 16 (mod 32), so rows r, r + 1 start 16 banks apart
};

// Starts copying rows [s0, s0 + rows) of one (H, W) plane into shared memory, `pitch` floats apart, with
// asynchronous copies (all of a thread's in flight at once, no registers held): 16 bytes each when VEC
// (W % 4 == 0, 16-byte aligned plane). The (row, column) of the thread's next element advances by a fixed step
// with one carry, so no division per element. The caller waits (__pipeline_wait_prior) before reading.
template <bool VEC>
__device__ __forceinline__ void stage_rows(const float* __restrict__ plane, int32_t W, int32_t s0, int32_t rows,
                                           int32_t pitch, float* stage) {
  constexpr int kWidth = VEC ? 4 : 1;
  const int32_t cols = W / kWidth, total = rows * cols;  // total < 12K: the band fits 48 KB
  const float* src = plane + static_cast<int64_t>(s0) * W;
  const int32_t step = blockDim.x, step_r = step / cols, step_c = step - step_r * cols;
  int32_t r = threadIdx.x / cols, col = threadIdx.x - r * cols;
  for (int32_t t = threadIdx.x; t < total; t += step) {
    __pipeline_memcpy_async(stage + r * pitch + col * kWidth, src + r * W + col * kWidth, sizeof(float) * kWidth);
    col += step_c;
    r += step_r;
    if (col >= cols) {
      col -= cols;
      ++r;
    }
  }
  __pipeline_commit();
}

// The band's patch rows of frame-size scale s: one warp per patch, writing the channel's p*p floats of it
// (contiguous in the output) in order, float4 when VEC (p even, output 16-byte aligned).
template <int P, bool VEC>
__device__ __forceinline__ void copy_band_patches(const BandArgs& a, const float* stage, int s, int32_t b0,
                                                  int32_t s0, int64_t n, int64_t c) {
  const PatchLayout& L = a.layout;
  const int32_t p = P > 0 ? P : L.patch, pp = p * p, g = L.tokens.grid[s];
  const int32_t r0 = b0 / p, r1 = min(r0 + a.band / p, g);  // patch rows of the band
  if (r0 >= r1) return;
  const int64_t K = a.C * pp;
  float* base = a.out + (n * tokens_per_frame(L.tokens) + L.tokens.offset[s] + static_cast<int64_t>(r0) * g) * K +
                c * pp;
  const int lane = threadIdx.x % 32;
  for (int32_t q = threadIdx.x / 32; q < (r1 - r0) * g; q += blockDim.x / 32) {
    const int32_t rr = q / g, col = q - rr * g;
    const float* src = stage + ((r0 + rr) * p - s0) * a.pitch + col * p;  // the patch's top-left source pixel
    float* dst = base + q * K;
    if constexpr (VEC) {
      for (int32_t e = 4 * lane; e < pp; e += 4 * 32) {
        const int32_t ky = e / p, kx = e - ky * p;
        float4 v;
        if constexpr (P > 0 && P % 4 == 0) {
          v = *reinterpret_cast<const float4*>(src + ky * a.pitch + kx);
        } else {  // p even: a pair never straddles two rows
          const int32_t ky2 = (e + 2) / p, kx2 = e + 2 - ky2 * p;
          const float2 lo = *reinterpret_cast<const float2*>(src + ky * a.pitch + kx);
          const float2 hi = *reinterpret_cast<const float2*>(src + ky2 * a.pitch + kx2);
          v = make_float4(lo.x, lo.y, hi.x, hi.y);
        }
        *reinterpret_cast<float4*>(dst + e) = v;
      }
    } else {
      for (int32_t e = lane; e < pp; e += 32) {
        const int32_t ky = e / p;
        dst[e] = src[ky * a.pitch + e - ky * p];
      }
    }
  }
}

// Output rows [ylo, yhi) of resampled scale s, columns [x0, x0 + 32) (one per lane), from the staged rows.
// Row taps: lane i computes those of row y0 + i and the warp reads them with shuffles. Consecutive output
// rows often read the same source rows (every second one when halving, most of them when upsampling): the
// interpolation along x of a source row is kept for the next output row. Both depend on the row only, so
// the warp never diverges.
template <int P>
__device__ __forceinline__ void resample_columns(const BandArgs& a, const float* stage, int s, int32_t x0,
                                                 int32_t ylo, int32_t yhi, int32_t s0, int64_t n, int64_t c) {
  const PatchLayout& L = a.layout;
  const int32_t p = P > 0 ? P : L.patch, g = L.tokens.grid[s], X = g * p, scale = L.scale[s];
  const int32_t lane = threadIdx.x % 32, lane_x = x0 + lane;
  const int32_t x = min(lane_x, X - 1);  // lanes past the last column repeat it and store nothing
  const CubicTaps tx = cubic_taps(a.W, scale, x);
  int32_t tx_at[4];  // byte offsets in a staged row
#pragma unroll
  for (int k = 0; k < 4; ++k) tx_at[k] = tx.idx[k] * static_cast<int32_t>(sizeof(float));
  const int64_t K = a.C * p * p, patch_row = g * K;
  const int32_t px = x / p, py = ylo / p;
  int32_t ky = ylo - py * p;  // output pointer of row y, stepped along with y
  float* dst = a.out + (n * tokens_per_frame(L.tokens) + L.tokens.offset[s] + px) * K + c * p * p + (x - px * p) +
               py * patch_row + ky * p;
  float prev[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int32_t prev_at[4] = {-1, -1, -1, -1};  // byte offsets in `stage` of the previous output row's source rows
  for (int32_t y0 = ylo; y0 < yhi; y0 += 32) {
    const CubicTaps mine = cubic_taps(a.H, scale, min(y0 + lane, yhi - 1));
    int32_t mine_at[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) mine_at[j] = (mine.idx[j] - s0) * a.pitch * static_cast<int32_t>(sizeof(float));
#pragma unroll 1
    for (int32_t i = 0; i < min(yhi - y0, 32); ++i) {
      int32_t at[4];
      float h[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        at[j] = __shfl_sync(0xffffffffu, mine_at[j], i);
        // Tap rows never decrease (along j, and from one output row to the next), so a source row of the
        // previous output row that reappears as tap j was tap k >= j there.
        bool have = false;
#pragma unroll
        for (int k = j; k < 4; ++k)
          if (prev_at[k] == at[j]) {
            h[j] = prev[k];
            have = true;
          }
        if (!have) {
          const char* src = reinterpret_cast<const char*>(stage) + at[j];
          const auto tap = [&](int k) { return *reinterpret_cast<const float*>(src + tx_at[k]); };
          h[j] = cubic_dot(tap(0), tap(1), tap(2), tap(3), tx.w);
        }
      }
      float wy[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        prev[j] = h[j];
        prev_at[j] = at[j];
        wy[j] = __shfl_sync(0xffffffffu, mine.w[j], i);
      }
      if (lane_x < X) *dst = cubic_dot(h[0], h[1], h[2], h[3], wy);
      if (++ky < p) {
        dst += p;
      } else {  // first row of the next patch row
        ky = 0;
        dst += patch_row - (p - 1) * p;
      }
    }
  }
}

// One block per (frame n, band of input rows [b0, b1), channel c), channel fastest so that blocks sharing halo
// rows run together. The output rows of a resampled scale belong to the band holding their centre tap row
// (CubicTaps::idx[1], non-decreasing in the output row); their taps stay within [b0 - 1, b1 + 1], so the block
// stages rows [s0, s1) = [b0 - 1, b1 + 2) clipped to the frame.
template <int P, bool VEC>
__global__ void __launch_bounds__(kBandBlock, 8) dense_band_kernel(BandArgs a) {
  extern __shared__ float4 band_smem[];
  __shared__ int32_t rows_of[2 * kMaxScales];  // output rows [rows_of[2s], rows_of[2s + 1]) of scale s
  float* stage = reinterpret_cast<float*>(band_smem);
  const PatchLayout& L = a.layout;
  const int32_t p = P > 0 ? P : L.patch;
  const int S = L.tokens.num_scales;
  // 32-bit index math: plan_band keeps N * bands * C <= INT_MAX.
  const uint32_t C32 = static_cast<uint32_t>(a.C), bands = static_cast<uint32_t>(a.bands);
  const uint32_t nb = blockIdx.x / C32, n32 = nb / bands;
  const int64_t c = blockIdx.x - nb * C32, n = n32;
  const int32_t b0 = static_cast<int32_t>(nb - n32 * bands) * a.band, b1 = min(b0 + a.band, a.H);
  const int32_t s0 = max(b0 - 1, 0), s1 = min(b1 + 2, a.H);
  const auto frame_size = [&](int s) { return L.scale[s] == a.H && L.scale[s] == a.W; };

  stage_rows<VEC>(a.frames + (n * a.C + c) * a.H * a.W, a.W, s0, s1 - s0, a.pitch, stage);
  if (threadIdx.x < 2 * S) {  // binary search: first output row whose centre tap row is >= b0 (resp. b1)
    const int s = threadIdx.x / 2;
    const int32_t target = threadIdx.x % 2 ? b1 : b0;
    int32_t lo = 0, hi = L.tokens.grid[s] * p;
    while (lo < hi) {
      const int32_t mid = (lo + hi) / 2;
      if (cubic_taps(a.H, L.scale[s], mid).idx[1] < target) lo = mid + 1;
      else hi = mid;
    }
    rows_of[threadIdx.x] = lo;
  }
  __pipeline_wait_prior(0);
  __syncthreads();

  for (int s = 0; s < S; ++s)
    if (frame_size(s)) copy_band_patches<P, VEC>(a, stage, s, b0, s0, n, c);
  // Resampled scales: work items (scale, 32 output columns) over all rows of the band, dealt to warps in turn.
  int32_t next = threadIdx.x / 32, first = 0;
  for (int s = 0; s < S; ++s) {
    const int32_t ylo = rows_of[2 * s], yhi = rows_of[2 * s + 1];
    if (frame_size(s) || ylo >= yhi) continue;
    const int32_t chunks = (L.tokens.grid[s] * p + 31) / 32;
    for (; next < first + chunks; next += blockDim.x / 32)
      resample_columns<P>(a, stage, s, 32 * (next - first), ylo, yhi, s0, n, c);
    first += chunks;
  }
}

// Plan of dense_band_kernel; false when a band does not fit the default 48 KB of shared memory (less 1 KB for
// the kernel's static rows_of; frames about 600 pixels wide and more, or large patches), then the per-patch
// kernels run.
bool plan_band(int64_t N, int64_t C, int64_t H, int64_t W, const PatchLayout& L, BandArgs& a, size_t& smem) {
  const int64_t band = L.patch * std::max(1, 16 / L.patch);
  const int64_t bands = (H + band - 1) / band, pitch = W + (48 - W % 32) % 32;
  const int64_t bytes = (band + 3) * pitch * static_cast<int64_t>(sizeof(float));
  if (bytes > 47 * 1024 || N * bands * C > INT_MAX) return false;
  a.C = C;
  a.H = static_cast<int32_t>(H);
  a.W = static_cast<int32_t>(W);
  a.layout = L;
  a.band = static_cast<int32_t>(band);
  a.bands = static_cast<int32_t>(bands);
  a.pitch = static_cast<int32_t>(pitch);
  smem = static_cast<size_t>(bytes);
  return true;
}

template <int P>
void launch_band(const BandArgs& a, bool vec, unsigned grid, size_t smem, cudaStream_t stream) {
  if (vec)
    dense_band_kernel<P, true><<<grid, kBandBlock, smem, stream>>>(a);
  else
    dense_band_kernel<P, false><<<grid, kBandBlock, smem, stream>>>(a);
}

__device__ __forceinline__ bool slot_valid(const int64_t* pos, const bool* pad, int64_t i, int64_t video) {
  const int64_t id = pos[i];
  return !pad[i] && id >= 0 && id < video;
}

// Exclusive block-wide prefix sum of one int per thread; `total` gets the block's sum.
__device__ __forceinline__ int block_exclusive_scan(int v, int& total) {
  __shared__ int warp_sums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    warp_sums[lane] = w;
  }
  __syncthreads();
  const int before = warp > 0 ? warp_sums[warp - 1] : 0;
  total = warp_sums[warps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return before + incl - v;
}

// One block per batch row: rank of every non-padded slot within its row (local) and the row's count.
__global__ void __launch_bounds__(kScanThreads) count_slots_kernel(const int64_t* __restrict__ pos,
                                                                   const bool* __restrict__ pad, int64_t N,
                                                                   int64_t video, int32_t* __restrict__ local,
                                                                   int32_t* __restrict__ counts) {
  const int64_t b = blockIdx.x;
  int carry = 0;
  for (int64_t base = 0; base < N; base += blockDim.x) {
    const int64_t n = base + threadIdx.x;
    const bool v = n < N && slot_valid(pos, pad, b * N + n, video);
    int chunk;
    const int rank = block_exclusive_scan(v ? 1 : 0, chunk);
    if (n < N && local != nullptr) local[b * N + n] = carry + rank;
    carry += chunk;
  }
  if (threadIdx.x == 0) counts[b] = carry;
}

// One block: cu_seqlens = exclusive prefix of the row counts (and the total), clamped to `limit` if >= 0.
__global__ void __launch_bounds__(kScanThreads) row_offsets_kernel(const int32_t* __restrict__ counts, int64_t B,
                                                                   int64_t limit, int32_t* __restrict__ cu) {
  int64_t carry = 0;
  const auto clamp = [limit](int64_t x) { return static_cast<int32_t>(limit >= 0 && x > limit ? limit : x); };
  for (int64_t base = 0; base < B; base += blockDim.x) {
    const int64_t b = base + threadIdx.x;
    int chunk;
    const int rank = block_exclusive_scan(b < B ? counts[b] : 0, chunk);
    if (b < B) cu[b] = clamp(carry + rank);
    carry += chunk;
  }
  if (threadIdx.x == 0) cu[B] = clamp(carry);
}

template <int P, typename OutT>
__global__ void __launch_bounds__(kThreads) gather_patches_kernel(GatherPatchesArgs a, bool vec_ok) {
  const int64_t i = blockIdx.x;  // slot (b, n)
  const int64_t b = i / a.N;
  const PatchLayout& L = a.layout;
  const int64_t V = tokens_per_frame(L.tokens);
  const bool valid = slot_valid(a.gazing_pos, a.if_padded, i, a.T * V);
  int64_t dest = i;
  if (a.packed_rows >= 0) {
    if (!valid) return;
    dest = static_cast<int64_t>(a.cu_seqlens[b]) + a.workspace[i];
    if (dest >= a.packed_rows) return;  // more real tokens than rows: dropped (cu_seqlens is clamped)
  }
  // Padded (and out-of-range) slots take the official dummy, token 0 of the row's video.
  const int64_t token = valid ? a.gazing_pos[i] : 0;
  const int64_t t = token / V, local = token - t * V;
  const int64_t K = a.C * L.patch * L.patch;
  block_patch<P, OutT>(a.frames + (b * a.T + t) * a.C * a.H * a.W, a.C, a.H, a.W, L, static_cast<int32_t>(local),
                       static_cast<OutT*>(a.patches) + dest * K, vec_ok);
  if (a.embed_init == nullptr) return;
  const OutT* pe = a.pos_table ? static_cast<const OutT*>(a.pos_table) + local * a.D : nullptr;
  const OutT* bias = static_cast<const OutT*>(a.bias);
  OutT* init = static_cast<OutT*>(a.embed_init) + dest * a.D;
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x)
    init[d] = from_float<OutT>((pe ? to_float(pe[d]) : 0.0f) + (bias ? to_float(bias[d]) : 0.0f));
}

// Packed output: zero the rows from cu_seqlens[B] (the real tokens' end) to the end of both buffers.
template <typename OutT>
__global__ void zero_tail_kernel(const int32_t* __restrict__ end_row, int64_t rows, OutT* __restrict__ patches,
                                 int64_t K, OutT* __restrict__ init, int64_t D) {
  const int64_t first = *end_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t e = first * K + start; e < rows * K; e += stride) patches[e] = from_float<OutT>(0.0f);
  if (init == nullptr) return;
  for (int64_t e = first * D + start; e < rows * D; e += stride) init[e] = from_float<OutT>(0.0f);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename OutT>
cudaError_t launch_gather_typed(const GatherPatchesArgs& a, cudaStream_t stream) {
  const int64_t V = tokens_per_frame(a.layout.tokens);
  const bool packed = a.packed_rows >= 0;
  int32_t* counts = a.workspace + a.B * a.N;
  if (a.B > 0)
    count_slots_kernel<<<static_cast<unsigned>(a.B), kScanThreads, 0, stream>>>(
        a.gazing_pos, a.if_padded, a.N, a.T * V, packed ? a.workspace : nullptr, counts);
  row_offsets_kernel<<<1, kScanThreads, 0, stream>>>(counts, a.B, a.packed_rows, a.cu_seqlens);
  const int64_t K = a.C * a.layout.patch * a.layout.patch;
  if (packed && a.packed_rows > 0) {
    // The tail is usually empty (total == packed_rows): a small grid-stride launch.
    const int64_t work = a.packed_rows * std::max<int64_t>(K, a.D);
    const int blocks = static_cast<int>(std::min<int64_t>((work + 255) / 256, 264));
    zero_tail_kernel<OutT><<<blocks, 256, 0, stream>>>(a.cu_seqlens + a.B, a.packed_rows,
                                                       static_cast<OutT*>(a.patches), K,
                                                       static_cast<OutT*>(a.embed_init), a.D);
  }
  const int64_t slots = a.B * a.N;
  if (slots > 0) {
    const bool vec_ok = aligned16(a.frames) && aligned16(a.patches) && a.W % 4 == 0;
    const unsigned grid = static_cast<unsigned>(slots);
    if (a.layout.patch == 16)
      gather_patches_kernel<16, OutT><<<grid, kThreads, 0, stream>>>(a, vec_ok);
    else if (a.layout.patch == 14)
      gather_patches_kernel<14, OutT><<<grid, kThreads, 0, stream>>>(a, vec_ok);
    else
      gather_patches_kernel<0, OutT><<<grid, kThreads, 0, stream>>>(a, vec_ok);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_multiscale_patches(const float* frames, int64_t N, int64_t C, int64_t H, int64_t W,
                                      const PatchLayout& L, float* out, cudaStream_t stream) {
  const int64_t V = tokens_per_frame(L.tokens);
  if (N * V == 0) return cudaSuccess;
  BandArgs b{};
  size_t smem = 0;
  if (plan_band(N, C, H, W, L, b, smem)) {
    b.frames = frames;
    b.out = out;
    const bool vec = aligned16(frames) && aligned16(out) && W % 4 == 0 && L.patch % 2 == 0;
    const unsigned grid = static_cast<unsigned>(N * b.bands * C);
    if (L.patch == 16)
      launch_band<16>(b, vec, grid, smem, stream);
    else if (L.patch == 14)
      launch_band<14>(b, vec, grid, smem, stream);
    else
      launch_band<0>(b, vec, grid, smem, stream);
    return cudaGetLastError();
  }
  // A band does not fit shared memory: the per-patch kernels.
  DenseArgs a{frames, C, H, W, L, out, aligned16(frames) && aligned16(out) && W % 4 == 0, 0, 0};
  int identity = -1;  // first scale equal to the frame size, copied by identity_band_kernel
  for (int s = 0; s < L.tokens.num_scales && identity < 0; ++s)
    if (L.patch == 16 && a.vec_ok && H == L.scale[s] && W == L.scale[s]) identity = s;
  if (identity >= 0) {
    a.skip_first = L.tokens.offset[identity];
    a.skip_count = L.tokens.grid[identity] * L.tokens.grid[identity];
    identity_band_kernel<<<static_cast<unsigned>(N * L.tokens.grid[identity]), kBandThreads, 0, stream>>>(a,
                                                                                                           identity);
  }
  const int64_t blocks = N * (V - a.skip_count);
  if (blocks > 0) {
    const unsigned grid = static_cast<unsigned>(blocks);
    if (L.patch == 16)
      multiscale_patches_kernel<16><<<grid, kThreads, 0, stream>>>(a);
    else if (L.patch == 14)
      multiscale_patches_kernel<14><<<grid, kThreads, 0, stream>>>(a);
    else
      multiscale_patches_kernel<0><<<grid, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

int64_t gather_patches_workspace_ints(int64_t B, int64_t N) { return B * N + B; }

cudaError_t launch_gather_patches(const GatherPatchesArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case EmbedDtype::kBFloat16: return launch_gather_typed<__nv_bfloat16>(a, stream);
    case EmbedDtype::kFloat16: return launch_gather_typed<__half>(a, stream);
    default: return launch_gather_typed<float>(a, stream);
  }
}

}  // namespace autogaze_ext
