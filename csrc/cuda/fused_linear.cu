// fused_linear on the GPU: a tiled fp32 SIMT GEMM (plain FMA, no TF32) with the RMSNorm prologue and the
// SwiGLU / residual epilogue fused in.
//
// Why not cuBLAS: at the decode sizes (M = 10..2560, K = 192/384) fp32 cuBLAS launches a handful of thread
// blocks and takes ~50 us for what is ~1 us of work. Here the tile shape is picked from M at launch so that
// even M = 10 spreads over dozens of blocks, and (small tile, K <= 256) a block has all of K in flight at once.
//
// Block = BM rows x BNW weight rows. Weight tiles and x tiles stream through shared memory with a
// cp.async pipeline (STAGES deep); each thread owns a TM x TNW register micro-tile. With swiglu a block
// computing output columns [c, c+BNO) loads both the gate rows c.. and the up rows N/2+c.., and every thread
// holds the gate and the up accumulator of each of its columns, so the epilogue pairs them in registers.
#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "cuda/async_copy.cuh"
#include "cuda/fused_linear.h"
#include "cuda/rmsnorm.cuh"

namespace autogaze_ext {
namespace {

template <int BM_, int BNW_, int TM_, int TNW_, int BK_, int STAGES_, int MIN_BLOCKS_>
struct Tile {
  static constexpr int BM = BM_, BNW = BNW_, TM = TM_, TNW = TNW_, BK = BK_, STAGES = STAGES_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;  // resident blocks per SM asked of the register allocator
  static constexpr int TY = BM / TM, TX = BNW / TNW, THREADS = TX * TY;
  // Rows padded by 4 floats: rows stay 16-byte aligned for cp.async/float4, and the 8 lanes of one
  // 128-bit shared load phase, which read 8 consecutive rows, land on distinct banks.
  static constexpr int LDK = BK + 4;
  static constexpr int STAGE_FLOATS = (BM + BNW) * LDK;
  static_assert(BM % TM == 0 && BNW % TNW == 0 && BK % 4 == 0 && TNW % 2 == 0, "tile shape");
  static_assert(TX % 8 == 0, "8 consecutive lanes must share one row of x and read 8 distinct weight rows");
  static_assert(STAGES >= 2, "pipeline depth");
  static_assert((STAGES * STAGE_FLOATS + BM) * 4 <= 48 * 1024, "static shared memory limit");
};

// M <= a few dozen: tiny tiles for many blocks; 4 stages of 64 put all of K = 192 in flight at once.
using SmallTile = Tile<16, 16, 1, 2, 64, 4, 4>;   // 128 threads, 35 KB smem
// M in the hundreds (prefills at B=1, decode steps at B=64): 2x4 micro-tiles, half the rows of MediumTile
using NarrowTile = Tile<16, 64, 2, 4, 32, 4, 4>;  // 128 threads, 46 KB smem
using MediumTile = Tile<32, 64, 4, 4, 32, 3, 3>;  // 128 threads, 41 KB smem, 4x4 micro-tiles
// 8x8 micro-tiles, ~250 registers: 2 blocks (8 warps) per SM. A tighter register cap spills (ptxas hoists
// all shared loads of the unrolled tile).
using LargeTile = Tile<64, 128, 8, 8, 16, 3, 2>;

// One k-step of 4 of a thread's TM x TNW micro-tile: x rows ty + i TY (row stride ld) times weight rows
// (j / TNO) BNO + tx + (j % TNO) TX, k .. k+3. Each accumulator sums k in increasing order: a plain fp32
// dot product. Ld: int, or std::integral_constant where the stride is known at compile time.
template <int TM, int TNW, int TNO, int BNO, int TX, int TY, class Ld>
__device__ __forceinline__ void fma_k4(const float* xs, const float* ws, Ld ld, int k, int tx, int ty,
                                       float (&acc)[TM][TNW]) {
  float4 a[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) a[i] = *reinterpret_cast<const float4*>(xs + (ty + i * TY) * ld + k);
#pragma unroll
  for (int j = 0; j < TNW; ++j) {
    const int row = (j / TNO) * BNO + tx + (j % TNO) * TX;
    const float4 b = *reinterpret_cast<const float4*>(ws + row * ld + k);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      float s = acc[i][j];
      s = fmaf(a[i].x, b.x, s);
      s = fmaf(a[i].y, b.y, s);
      s = fmaf(a[i].z, b.z, s);
      s = fmaf(a[i].w, b.w, s);
      acc[i][j] = s;
    }
  }
}

// Epilogue of a micro-tile: [SwiGLU of the gate / up accumulator pair] [+ residual], rows m0 + ty + i TY,
// columns n0 + tx + j TX; consecutive threads write consecutive columns (coalesced).
template <int P, int TM, int TNW, int TX, int TY>
__device__ __forceinline__ void store_tile(const float (&acc)[TM][TNW], int64_t m0, int n0, int tx, int ty, int64_t M,
                                           int n_out, const float* __restrict__ res, float* __restrict__ out) {
  constexpr int TNO = TNW / P;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty + i * TY;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < TNO; ++j) {
      const int c = n0 + tx + j * TX;
      if (c >= n_out) continue;
      float v = acc[i][j];
      if constexpr (P == 2) {
        const float g = acc[i][j], u = acc[i][TNO + j];
        v = g / (1.0f + expf(-g)) * u;
      }
      const int64_t o = m * n_out + c;
      if (res != nullptr) v = res[o] + v;
      out[o] = v;
    }
  }
}

// P = 2 for swiglu (gate + up accumulators per output column), else 1. VEC = floats per cp.async: 4 needs
// K % 4 == 0 and 16-byte aligned x and weight, 1 works for anything.
template <class T, int P, int VEC>
__global__ void __launch_bounds__(T::THREADS, T::MIN_BLOCKS)
    fused_linear_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ nw,
                        float eps, const float* __restrict__ res, float* __restrict__ out, int64_t M, int K,
                        int n_out, int64_t m_tiles) {
  constexpr int BM = T::BM, BNW = T::BNW, TM = T::TM, TNW = T::TNW, BK = T::BK, STAGES = T::STAGES;
  constexpr int TX = T::TX, TY = T::TY, THREADS = T::THREADS, LDK = T::LDK;
  constexpr int BNO = BNW / P, TNO = TNW / P;  // output columns per block / per thread
  constexpr int CPR = BK / VEC;                // copies per tile row
  static_assert((BM * CPR) % THREADS == 0 && (BNW * CPR) % THREADS == 0 && (BM * BK) % THREADS == 0,
                "copies and the norm pass must split evenly over the threads");

  __shared__ __align__(16) float smem[STAGES * T::STAGE_FLOATS];
  __shared__ float s_inv[BM];

  // 1-D grid, row tiles fastest: consecutive blocks share one weight tile.
  const int64_t m0 = (static_cast<int64_t>(blockIdx.x) % m_tiles) * BM;
  const int n0 = static_cast<int>(static_cast<int64_t>(blockIdx.x) / m_tiles) * BNO;
  const int tid = static_cast<int>(threadIdx.x), tx = tid % TX, ty = tid / TX;
  const int k_tiles = (K + BK - 1) / BK;

  auto load_tile = [&](int kt, int stage) {
    float* xs = smem + stage * T::STAGE_FLOATS;
    float* ws = xs + BM * LDK;
    const int k0 = kt * BK;
#pragma unroll
    for (int i = 0; i < BM * CPR / THREADS; ++i) {
      const int c = tid + i * THREADS, r = c / CPR, k = k0 + (c % CPR) * VEC;
      // Rows past M re-read row M-1 (in bounds); their results are never stored.
      const float* row = x + (m0 + r < M ? m0 + r : M - 1) * K;
      cp_async<4 * VEC>(xs + r * LDK + (k - k0), k < K ? row + k : row, k < K);
    }
#pragma unroll
    for (int i = 0; i < BNW * CPR / THREADS; ++i) {
      const int c = tid + i * THREADS, r = c / CPR, k = k0 + (c % CPR) * VEC;
      // Local weight row r = part * BNO + column; part 1 (swiglu's up half) lives n_out rows further down.
      const int part = r / BNO, col = min(n0 + r % BNO, n_out - 1);
      const float* row = w + static_cast<int64_t>(part * n_out + col) * K;
      cp_async<4 * VEC>(ws + r * LDK + (k - k0), k < K ? row + k : row, k < K);
    }
  };

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) load_tile(s, s);
    cp_async_commit();  // one group per stage, even if empty, keeps wait_group's count uniform
  }

  if (nw != nullptr) {
    // Inverse RMS of this block's rows, one warp per row, while the first tiles are in flight.
    const int warp = tid / 32, lane = tid % 32;
    for (int r = warp; r < BM; r += THREADS / 32) {
      const float inv = warp_inv_rms(x + (m0 + r < M ? m0 + r : M - 1) * K, K, eps, lane);
      if (lane == 0) s_inv[r] = inv;
    }
  }

  float acc[TM][TNW];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TNW; ++j) acc[i][j] = 0.0f;

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 2>();  // tile kt has landed (for this thread's copies) ...
    __syncthreads();              // ... for everyone's, and stage (kt-1) % STAGES is free again
    if (kt + STAGES - 1 < k_tiles) load_tile(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
    cp_async_commit();

    float* xs = smem + (kt % STAGES) * T::STAGE_FLOATS;
    const float* ws = xs + BM * LDK;
    if (nw != nullptr) {
      // HF order: norm_weight * (x * inv_rms). Zero-filled K tail stays 0 (and nw is not read past K).
      const int k0 = kt * BK;
#pragma unroll
      for (int i = 0; i < BM * BK / THREADS; ++i) {
        const int e = tid + i * THREADS, r = e / BK, k = e % BK;
        if (k0 + k < K) xs[r * LDK + k] = rms_apply(xs[r * LDK + k], s_inv[r], __ldg(nw + k0 + k));
      }
      __syncthreads();
    }

#pragma unroll
    for (int k = 0; k < BK; k += 4)
      fma_k4<TM, TNW, TNO, BNO, TX, TY>(xs, ws, std::integral_constant<int, LDK>{}, k, tx, ty, acc);
  }
  store_tile<P, TM, TNW, TX, TY>(acc, m0, n0, tx, ty, M, n_out, res, out);
}

// The 1-D grid of tile type T for P weight slices per output: row tiles times output tiles.
template <class T, int P>
struct TileGrid {
  int64_t m_tiles, blocks;
  TileGrid(int64_t M, int64_t n_out)
      : m_tiles((M + T::BM - 1) / T::BM), blocks(m_tiles * ((n_out + T::BNW / P - 1) / (T::BNW / P))) {}
  bool fits() const { return blocks <= INT_MAX; }
};

template <class T, int P, int VEC>
cudaError_t launch(const float* x, const float* w, const float* nw, float eps, const float* res, float* out,
                   int64_t M, int64_t K, int64_t n_out, cudaStream_t stream) {
  const TileGrid<T, P> g(M, n_out);
  if (!g.fits()) return cudaErrorInvalidConfiguration;
  fused_linear_kernel<T, P, VEC><<<static_cast<unsigned>(g.blocks), T::THREADS, 0, stream>>>(
      x, w, nw, eps, res, out, M, static_cast<int>(K), static_cast<int>(n_out), g.m_tiles);
  return cudaGetLastError();
}

// M in the tens to hundreds (prefills at B=1): a 16 x 64 tile per block gives about one block per SM and
// one warp per scheduler, and every warp waits on its own loads and FMAs (Nsight Compute on M = 206:
// 0.17 instructions issued per cycle and scheduler). Here KS warp groups share one tile: all of K is staged
// at once, group g sums its K / KS slice with the same micro-tile, and the partial tiles are added in group
// order through shared memory, so each thread's chain is KS times shorter and the scheduler has KS warps.
template <int BM_, int BNW_, int TM_, int TNW_, int KS_>
struct KSplitTile {
  static constexpr int BM = BM_, BNW = BNW_, TM = TM_, TNW = TNW_, KS = KS_;
  static constexpr int TY = BM / TM, TX = BNW / TNW, GROUP = TX * TY, THREADS = KS * GROUP;
  static_assert(TX % 8 == 0 && BM % TM == 0 && BNW % TNW == 0 && TNW % 2 == 0, "tile shape");
  static constexpr int k_align() { return 4 * KS; }  // K a multiple of it: whole float4s per group
  // Padded rows (K + 4 = 4 mod 32 for K % 32 == 0): 8 lanes reading 8 rows at one k hit distinct banks.
  static constexpr int ld(int K) { return K + 4; }
  static constexpr size_t smem_bytes(int K) {
    const size_t tiles = static_cast<size_t>(BM + BNW) * ld(K), partials = static_cast<size_t>(KS - 1) * BM * BNW;
    return sizeof(float) * ((tiles > partials ? tiles : partials) + BM);
  }
};
using KSplit4 = KSplitTile<16, 64, 2, 4, 4>;  // 512 threads: one block per SM (80 registers a thread)
using KSplit2 = KSplitTile<16, 64, 2, 4, 2>;  // 256 threads: up to 3 blocks per SM
constexpr int kKSplitMaxK = 384;              // 80 rows of K + 4 floats: 124 KB of shared memory

template <class T, int P>
__global__ void __launch_bounds__(T::THREADS, 1)
    ksplit_linear_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ nw,
                         float eps, const float* __restrict__ res, float* __restrict__ out, int64_t M, int K,
                         int n_out, int64_t m_tiles) {
  constexpr int BM = T::BM, BNW = T::BNW, TM = T::TM, TNW = T::TNW, TX = T::TX, TY = T::TY;
  constexpr int GROUP = T::GROUP, THREADS = T::THREADS;
  constexpr int BNO = BNW / P, TNO = TNW / P;
  extern __shared__ float4 smem4[];
  float* xs = reinterpret_cast<float*>(smem4);
  const int LD = T::ld(K);
  float* ws = xs + BM * LD;
  float* s_inv = xs + T::smem_bytes(K) / sizeof(float) - BM;

  const int64_t m0 = (static_cast<int64_t>(blockIdx.x) % m_tiles) * BM;
  const int n0 = static_cast<int>(static_cast<int64_t>(blockIdx.x) / m_tiles) * BNO;
  const int tid = static_cast<int>(threadIdx.x), grp = tid / GROUP, gt = tid % GROUP;
  const int tx = gt % TX, ty = gt / TX;

  // All of K at once: BM activation rows (rows past M re-read row M-1; never stored), BNW weight rows.
  const int K4 = K / 4;
  for (int c = tid; c < (BM + BNW) * K4; c += THREADS) {
    const int r = c / K4, k = (c - r * K4) * 4;
    const float* src;
    if (r < BM) {
      src = x + (m0 + r < M ? m0 + r : M - 1) * K + k;
    } else {
      const int wr = r - BM, part = wr / BNO, col = min(n0 + wr % BNO, n_out - 1);
      src = w + static_cast<int64_t>(part * n_out + col) * K + k;
    }
    cp_async<16>(xs + r * LD + k, src, true);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  if (nw != nullptr) {  // HF order: norm_weight * (x * inv_rms)
    const int warp = tid / 32, lane = tid % 32;
    for (int r = warp; r < BM; r += THREADS / 32) {
      const float inv = warp_inv_rms(xs + r * LD, K, eps, lane);
      if (lane == 0) s_inv[r] = inv;
    }
    __syncthreads();
    for (int e = tid; e < BM * K; e += THREADS) {
      const int r = e / K, k = e - r * K;
      xs[r * LD + k] = rms_apply(xs[r * LD + k], s_inv[r], __ldg(nw + k));
    }
    __syncthreads();
  }

  float acc[TM][TNW];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TNW; ++j) acc[i][j] = 0.0f;
  const int KQ = K / T::KS, kb = grp * KQ;
#pragma unroll 4
  for (int k = kb; k < kb + KQ; k += 4) fma_k4<TM, TNW, TNO, BNO, TX, TY>(xs, ws, LD, k, tx, ty, acc);
  // Groups 1.. park their partial tiles (over the staged tiles, now read by everyone); group 0 adds them.
  __syncthreads();
  float* part = xs;
  if (grp > 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TNW; ++j) part[(((grp - 1) * TM + i) * TNW + j) * GROUP + gt] = acc[i][j];
  }
  __syncthreads();
  if (grp > 0) return;
#pragma unroll
  for (int g = 1; g < T::KS; ++g)
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TNW; ++j) acc[i][j] += part[(((g - 1) * TM + i) * TNW + j) * GROUP + gt];
  store_tile<P, TM, TNW, TX, TY>(acc, m0, n0, tx, ty, M, n_out, res, out);
}

template <class T, int P>
cudaError_t launch_ksplit(const float* x, const float* w, const float* nw, float eps, const float* res, float* out,
                          int64_t M, int64_t K, int64_t n_out, cudaStream_t stream) {
  const TileGrid<T, P> g(M, n_out);
  if (!g.fits()) return cudaErrorInvalidConfiguration;
  // Above 48 KB a kernel must opt in (a host-side attribute, fine during graph capture); always the
  // largest size, so graphs captured earlier stay launchable.
  cudaError_t err = cudaFuncSetAttribute(ksplit_linear_kernel<T, P>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(T::smem_bytes(kKSplitMaxK)));
  if (err != cudaSuccess) return err;
  ksplit_linear_kernel<T, P><<<static_cast<unsigned>(g.blocks), T::THREADS, T::smem_bytes(static_cast<int>(K)),
                               stream>>>(x, w, nw, eps, res, out, M, static_cast<int>(K), static_cast<int>(n_out),
                                         g.m_tiles);
  return cudaGetLastError();
}

template <int P>
cudaError_t dispatch(const float* x, const float* w, const float* nw, float eps, const float* res, float* out,
                     int64_t M, int64_t K, int64_t n_out, int num_sms, cudaStream_t stream) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (K % 4 != 0 || !aligned(x) || !aligned(w))  // rows not 16-byte aligned: 4-byte copies, correctness only
    return launch<SmallTile, P, 1>(x, w, nw, eps, res, out, M, K, n_out, stream);
  const int64_t sms = num_sms;
  // Wide outputs (qkv, gate/up) on up to two 16 x 64 tiles per SM: the k-split tiles. Measured on an H100
  // (CUDA graphs of 20 calls): M = 206, qkv 11.6 -> 7.6 us (4 groups), gate/up 14.5 -> 11.7 us (2 groups);
  // M = 17..150 qkv and gate/up 10-14 -> 7-9 us. The 192-wide outputs (o, down) are as fast or faster on
  // the small tile, whose 16 x 16 blocks spread over more SMs.
  const int64_t ks_blocks = TileGrid<KSplit4, P>(M, n_out).blocks;
  if (K % KSplit4::k_align() == 0 && K <= kKSplitMaxK && n_out >= 256 && ks_blocks <= 2 * sms) {
    if (ks_blocks <= sms) return launch_ksplit<KSplit4, P>(x, w, nw, eps, res, out, M, K, n_out, stream);
    return launch_ksplit<KSplit2, P>(x, w, nw, eps, res, out, M, K, n_out, stream);
  }
  // Biggest tile that still gives every SM work: 8x8 micro-tiles, then 4x4, once there are >= 2 blocks
  // per SM; 2x4 from 3/4 of a block per SM; else the 16x16 tile for as many blocks as possible. Measured
  // on an H100 (K = 192/384, N = 192..768): M = 206 and 640 are fastest with the 2x4 tile where it gives
  // that many blocks, the 16x16 tile below (M = 206, N = 192), and the 4x4 tile at M = 2060.
  if (TileGrid<LargeTile, P>(M, n_out).blocks >= 2 * sms)
    return launch<LargeTile, P, 4>(x, w, nw, eps, res, out, M, K, n_out, stream);
  if (TileGrid<MediumTile, P>(M, n_out).blocks >= 2 * sms)
    return launch<MediumTile, P, 4>(x, w, nw, eps, res, out, M, K, n_out, stream);
  if (4 * TileGrid<NarrowTile, P>(M, n_out).blocks >= 3 * sms)
    return launch<NarrowTile, P, 4>(x, w, nw, eps, res, out, M, K, n_out, stream);
  return launch<SmallTile, P, 4>(x, w, nw, eps, res, out, M, K, n_out, stream);
}


// Decode steps have M ~ 10 rows: a tiled GEMM leaves most SMs idle and runs a long dependent chain
// per block. Here one warp owns one output column for all rows: the block stages the (normalised)
// rows in shared memory once, each lane strides over K reading the weight row coalesced, and a warp
// shuffle reduces the M partial sums. Used for M <= kSkinnyMaxM when M x K fits in 48 KB.
constexpr int kSkinnyMaxM = 16;
constexpr int kSkinnyWarps = 8;

template <int P>
__global__ void __launch_bounds__(kSkinnyWarps * 32)
skinny_linear_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ nw,
                     float eps, const float* __restrict__ res, float* __restrict__ out, int M, int K, int n_out) {
  extern __shared__ float xs[];  // M x K rows, normalised
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int m = warp; m < M; m += kSkinnyWarps) {
    const float* row = x + static_cast<int64_t>(m) * K;
    float inv = 1.0f;
    if (nw != nullptr) {
      float ss = 0.0f;
      for (int k = lane; k < K; k += 32) ss = fmaf(row[k], row[k], ss);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      inv = rsqrtf(ss / static_cast<float>(K) + eps);
    }
    for (int k = lane; k < K; k += 32) xs[m * K + k] = nw != nullptr ? nw[k] * (row[k] * inv) : row[k];
  }
  __syncthreads();
  const int col = blockIdx.x * kSkinnyWarps + warp;
  if (col >= n_out) return;  // whole warps leave together
  const float* wg = w + static_cast<int64_t>(col) * K;
  const float* wu = w + static_cast<int64_t>(col + (P == 2 ? n_out : 0)) * K;
  float ag[kSkinnyMaxM], au[kSkinnyMaxM];
#pragma unroll
  for (int m = 0; m < kSkinnyMaxM; ++m) ag[m] = au[m] = 0.0f;
  for (int k = lane; k < K; k += 32) {
    const float g = wg[k];
    const float u = P == 2 ? wu[k] : 0.0f;
#pragma unroll
    for (int m = 0; m < kSkinnyMaxM; ++m) {
      if (m < M) {
        const float xv = xs[m * K + k];
        ag[m] = fmaf(xv, g, ag[m]);
        if (P == 2) au[m] = fmaf(xv, u, au[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kSkinnyMaxM; ++m) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      ag[m] += __shfl_xor_sync(0xffffffffu, ag[m], o);
      if (P == 2) au[m] += __shfl_xor_sync(0xffffffffu, au[m], o);
    }
  }
#pragma unroll
  for (int m = 0; m < kSkinnyMaxM; ++m) {
    if (m < M && lane == m) {
      float v = ag[m];
      if (P == 2) v = v / (1.0f + expf(-v)) * au[m];
      const int64_t o = static_cast<int64_t>(m) * n_out + col;
      if (res != nullptr) v += res[o];
      out[o] = v;
    }
  }
}

template <int P>
cudaError_t launch_skinny(const float* x, const float* w, const float* nw, float eps, const float* res, float* out,
                          int64_t M, int64_t K, int64_t n_out, cudaStream_t stream) {
  const int64_t blocks = (n_out + kSkinnyWarps - 1) / kSkinnyWarps;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  skinny_linear_kernel<P><<<static_cast<unsigned>(blocks), kSkinnyWarps * 32, M * K * sizeof(float), stream>>>(
      x, w, nw, eps, res, out, static_cast<int>(M), static_cast<int>(K), static_cast<int>(n_out));
  return cudaGetLastError();
}

// SM count of the current device, looked up once per device (cudaDeviceGetAttribute is capture-safe,
// but there is no need to ask on every call).
int current_sm_count() {
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (dev >= 0 && dev < 64) {
    const int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0) v = 132;
  if (dev >= 0 && dev < 64) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

}  // namespace

cudaError_t launch_fused_linear(const float* x, const float* weight, const float* norm_weight, float eps,
                                const float* residual, bool swiglu, int64_t M, int64_t K, int64_t N, float* out,
                                cudaStream_t stream) {
  if (M <= 0) return cudaSuccess;
  if (K < 1 || K > kFusedLinearMaxK || N < 1 || N > INT_MAX / 2 || (swiglu && N % 2 != 0))
    return cudaErrorInvalidValue;
  if (M <= kSkinnyMaxM && M * K * static_cast<int64_t>(sizeof(float)) <= 48 * 1024) {
    if (swiglu) return launch_skinny<2>(x, weight, norm_weight, eps, residual, out, M, K, N / 2, stream);
    return launch_skinny<1>(x, weight, norm_weight, eps, residual, out, M, K, N, stream);
  }
  const int sms = current_sm_count();
  if (swiglu) return dispatch<2>(x, weight, norm_weight, eps, residual, out, M, K, N / 2, sms, stream);
  return dispatch<1>(x, weight, norm_weight, eps, residual, out, M, K, N, sms, stream);
}

}  // namespace autogaze_ext
