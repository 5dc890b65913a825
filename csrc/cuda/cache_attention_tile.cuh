// Device-side building blocks of cache_attention (see cache_attention.cu for the algorithm): the tiled
// flash-decoding pass over one (batch*head, query tile, key split) and the warp-per-query combine of the
// splits. Shared by the cache_attention kernels and the decoder_layers kernel, which runs the same passes
// as phases of one persistent launch.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/async_copy.cuh"
#include "cuda/cache_attention.h"

namespace autogaze_ext {
namespace attn {

constexpr int kThreads = 128;
constexpr int kChunk = 64;       // keys per shared-memory stage
constexpr int kMaxSplit = 4096;  // keys per split; bounds the validity bytes a block keeps in shared memory
constexpr int kMaxHeadDim = 256;
constexpr float kNegInf = -INFINITY;

struct Params {
  const float* q;
  const float* k;
  const float* v;
  const bool* valid;
  const int64_t* start;
  float* out;
  float* ws_acc;  // (B*H*n, num_splits, d) unnormalised partial outputs
  float* ws_ml;   // (B*H*n, num_splits, 2) running max and sum (8-byte aligned)
  int H, KVH, n, d;
  int64_t L;
  int64_t split;
  int num_splits;
  float scale;
};

// start is a device value: clamp so that start + i never overflows (any start beyond the bound behaves
// the same as the bound: no key, or every key, in range).
__device__ __forceinline__ int64_t read_start(const int64_t* p) {
  constexpr int64_t kBound = int64_t{1} << 40;
  return max(min(*p, kBound), -kBound);
}

// N consecutive floats from / to 4*N-byte-aligned memory as one vector access.
template <int N>
__device__ __forceinline__ void load_vec(const float* p, float (&r)[N]) {
  if constexpr (N == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
  } else if constexpr (N == 2) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    r[0] = v.x, r[1] = v.y;
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) r[e] = p[e];
  }
}
template <int N>
__device__ __forceinline__ void store_vec(float* p, const float (&r)[N]) {
  if constexpr (N == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
  } else if constexpr (N == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(r[0], r[1]);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) p[e] = r[e];
  }
}

// A thread's scores s[a][m] (query row a, key KSTEP*m of its lane) stored transposed: ps points at the
// thread's first key row and query column of P^T, rows ld floats apart. p @ v then reads one key's
// probabilities for TQ queries in one vector load.
template <int TQ, int TK, int KSTEP>
__device__ __forceinline__ void store_p_transposed(float* ps, int ld, const float (&s)[TQ][TK]) {
#pragma unroll
  for (int m = 0; m < TK; ++m) {
    float pv[TQ];
#pragma unroll
    for (int a = 0; a < TQ; ++a) pv[a] = s[a][m];
    store_vec<TQ>(ps + KSTEP * m * ld, pv);
  }
}

// Reductions over the 16 lanes of a half-warp (xor partners never leave it). A butterfly leaves the
// bitwise-same result in every lane.
__device__ __forceinline__ float half_warp_max(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float half_warp_sum(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Issues the cp.async copies of ROWS rows of D floats (row r at src + r * D) into dst, row stride LD; rows
// >= valid are zero-filled (their source address `any` is never read). No commit.
template <int D, int ROWS, int LD>
__device__ __forceinline__ void copy_rows_async(float* dst, const float* src, int valid, const float* any) {
  static_assert(ROWS * D / 4 % kThreads == 0, "whole float4s per thread");
#pragma unroll
  for (int u = 0; u < ROWS * D / 4 / kThreads; ++u) {
    const int e = static_cast<int>(threadIdx.x) + u * kThreads, r = e / (D / 4), c4 = (e % (D / 4)) * 4;
    cp_async<16>(dst + r * LD + c4, r < valid ? src + r * D + c4 : any, r < valid);
  }
}

// Scores of a thread's TQ x TK register tile: s[a][m] = q row a . k row m, with query row a at q + a * QLD
// and key m at k + m * KSTEP * KLD (fp32 FMAs in column order; one 16-byte shared load feeds 4 columns).
template <int D, int TQ, int TK, int QLD, int KLD, int KSTEP>
__device__ __forceinline__ void tile_scores(const float* q, const float* k, float (&s)[TQ][TK]) {
#pragma unroll
  for (int a = 0; a < TQ; ++a)
#pragma unroll
    for (int m = 0; m < TK; ++m) s[a][m] = 0.f;
#pragma unroll
  for (int cc = 0; cc < D; cc += 4) {
    float kf[TK][4];
#pragma unroll
    for (int m = 0; m < TK; ++m) load_vec<4>(k + m * KSTEP * KLD + cc, kf[m]);
#pragma unroll
    for (int a = 0; a < TQ; ++a) {
      float qf[4];
      load_vec<4>(q + a * QLD + cc, qf);  // the same row for every lane of a row group: a broadcast
#pragma unroll
      for (int m = 0; m < TK; ++m)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[a][m] = fmaf(qf[e], kf[m][e], s[a][m]);
    }
  }
}

// Online softmax update of one query row whose chunk of scores (masked: -inf) is spread over LANES
// consecutive lanes, TK per lane: s becomes the probabilities (relative to the new running max), and the
// running max, sum and the thread's output columns are rescaled. Every lane of the group ends with the
// same state (butterfly reductions).
template <int LANES, int TK, int CW>
__device__ __forceinline__ void softmax_update(float (&s)[TK], float& m_run, float& l_run, float (&o)[CW]) {
  float mx = kNegInf;
#pragma unroll
  for (int m = 0; m < TK; ++m) mx = fmaxf(mx, s[m]);
#pragma unroll
  for (int off = LANES / 2; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  const float m_new = fmaxf(m_run, mx);
  float alpha = 1.f, psum = 0.f;
  if (m_new != kNegInf) {  // uniform over the group
    alpha = expf(m_run - m_new);  // 0 while the row had nothing yet (m_run = -inf)
#pragma unroll
    for (int m = 0; m < TK; ++m) {
      s[m] = expf(s[m] - m_new);  // masked: exp(-inf) = 0
      psum += s[m];
    }
  } else {
#pragma unroll
    for (int m = 0; m < TK; ++m) s[m] = 0.f;
  }
#pragma unroll
  for (int off = LANES / 2; off > 0; off >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
  l_run = l_run * alpha + psum;
  m_run = m_new;
#pragma unroll
  for (int cw = 0; cw < CW; ++cw) o[cw] *= alpha;
}

// A thread's TQ query rows (i0 + a) of CW output columns from col0: normalised into out when one split covers
// the cache, else the unnormalised partial into the workspace, with (m, l) written by the thread with
// writes_ml. Rows past the last query are skipped.
template <int D, int TQ, int CW>
__device__ __forceinline__ void store_rows(const Params& p, int bh, int i0, int col0, bool writes_ml, int split_id,
                                           const float (&o)[TQ][CW], const float (&m_run)[TQ],
                                           const float (&l_run)[TQ]) {
  constexpr int VW = CW < 4 ? CW : 4;  // floats per vector store
  static_assert(CW % VW == 0, "whole vector stores");
#pragma unroll
  for (int a = 0; a < TQ; ++a) {
    const int i = i0 + a;
    if (i >= p.n) continue;
    const int64_t row = static_cast<int64_t>(bh) * p.n + i;
    const bool whole = p.num_splits == 1;
    float* dst = whole ? p.out + row * D : p.ws_acc + (row * p.num_splits + split_id) * D;
#pragma unroll
    for (int cw = 0; cw < CW; cw += VW) {
      float r[VW];
#pragma unroll
      for (int e = 0; e < VW; ++e) r[e] = whole ? o[a][cw + e] / l_run[a] : o[a][cw + e];  // no key: 0/0 = NaN
      store_vec<VW>(dst + col0 + cw, r);
    }
    if (!whole && writes_ml) {
      *reinterpret_cast<float2*>(p.ws_ml + (row * p.num_splits + split_id) * 2) = make_float2(m_run[a], l_run[a]);
    }
  }
}

// The keys one (batch*head, query tile, key split) block covers: split keys kbeg .. kbeg + nkeys - 1 of its
// row's cache, cut at the last slot any of the tile's nq queries may see. live == false: the split lies past
// that slot, which only happens with several splits (the combine never reads it for these queries).
struct TileRange {
  int b, h, q0, nq, nkeys, nchunks;
  int64_t s0, kbeg;
  const float* kbase;  // the split's first key and value rows
  const float* vbase;
  bool live;
};

template <int D>
__device__ __forceinline__ TileRange tile_range(const Params& p, int bh, int q_tile, int QT, int split_id) {
  TileRange r;
  r.b = bh / p.H, r.h = bh - r.b * p.H;
  r.q0 = q_tile * QT;
  r.s0 = read_start(p.start);
  r.nq = min(QT, p.n - r.q0);
  const int64_t kend = min(r.s0 + r.q0 + r.nq - 1, p.L - 1);  // last key any query of this tile may see
  r.kbeg = static_cast<int64_t>(split_id) * p.split;
  r.live = p.num_splits == 1 || r.kbeg <= kend;
  const int64_t kstop = min(r.kbeg + p.split - 1, kend);
  r.nkeys = kstop >= r.kbeg ? static_cast<int>(kstop - r.kbeg + 1) : 0;
  r.nchunks = (r.nkeys + kChunk - 1) / kChunk;
  const int64_t kv_off = (static_cast<int64_t>(r.b) * p.KVH + r.h / (p.H / p.KVH)) * p.L * D;
  r.kbase = p.k + kv_off + r.kbeg * D;
  r.vbase = p.v + kv_off + r.kbeg * D;
  return r;
}

// Masked keys are absent, not weighted by 0: 0 * NaN (or Inf) in a masked key's value would poison the
// output. The tiles multiply whole chunks of values by probabilities that are 0 for masked keys, so each
// block checks the values it stages (one pass over shared memory per chunk, a few % of the p @ v loads) and,
// when any is not finite -- never on data that went through the entry points' checks -- recomputes its queries
// with exact_tile_rows, which reads only the keys each query sees.
template <int D, int LD>
__device__ __forceinline__ bool chunk_nonfinite(const float* vs) {
  static_assert(kChunk * D / 4 % kThreads == 0, "whole float4s per thread");
  float z = 0.f;  // x * 0 is 0 for finite x, NaN for NaN and +-Inf
#pragma unroll
  for (int u = 0; u < kChunk * D / 4 / kThreads; ++u) {
    const int e = static_cast<int>(threadIdx.x) + u * kThreads, r = e / (D / 4), c4 = (e % (D / 4)) * 4;
    const float4 v = *reinterpret_cast<const float4*>(vs + r * LD + c4);
    z = fmaf(v.x, 0.f, z), z = fmaf(v.y, 0.f, z), z = fmaf(v.z, 0.f, z), z = fmaf(v.w, 0.f, z);
  }
  return z != z;
}

// The block's queries q0 .. q0+nq-1 over the split's keys, one warp per query, reading only visible keys: the
// max, then exp / sum / p @ v with the keys taken 32 at a time (lane l scores key base + l, the warp then
// adds the visible ones in ascending order). Writes what store_rows writes. Called by every thread; not inlined,
// so that the tiles' register allocation is the same as without it.
template <int D>
__device__ __noinline__ void exact_tile_rows(const Params& p, const TileRange& r, int bh, int split_id) {
  constexpr int CPL = D / 32;  // columns per lane
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float* kb = r.kbase;
  const float* vb = r.vbase;
  const bool* vrow = p.valid + static_cast<int64_t>(r.b) * p.L + r.kbeg;
  for (int qi = warp; qi < r.nq; qi += kThreads / 32) {
    const int i = r.q0 + qi;
    const int64_t row = static_cast<int64_t>(bh) * p.n + i;
    const int64_t si = r.s0 + i;
    float q[D];
#pragma unroll
    for (int c = 0; c < D; ++c) q[c] = p.q[row * D + c];
    auto score = [&](int jl, bool& vis) {  // key jl of the split, -inf when this query does not see it
      const int64_t j = r.kbeg + jl;
      vis = jl < r.nkeys && j <= si && (vrow[jl] || j == si);
      if (!vis) return kNegInf;
      const float* kr = kb + static_cast<int64_t>(jl) * D;
      float dot = 0.f;
#pragma unroll
      for (int c = 0; c < D; ++c) dot = fmaf(q[c], kr[c], dot);
      return dot * p.scale;
    };
    float mx = kNegInf;
    for (int jl = lane; jl < r.nkeys; jl += 32) {
      bool vis;
      mx = fmaxf(mx, score(jl, vis));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f, acc[CPL];
#pragma unroll
    for (int e = 0; e < CPL; ++e) acc[e] = 0.f;
    for (int base = 0; base < r.nkeys; base += 32) {
      bool vis;
      const float s = score(base + lane, vis);
      const float w = mx == kNegInf ? 0.f : expf(s - mx);
      const unsigned visible = __ballot_sync(0xffffffffu, vis);
      sum += w;
      for (int jj = 0; jj < 32; ++jj) {
        const float wj = __shfl_sync(0xffffffffu, w, jj);
        if (!(visible >> jj & 1u)) continue;  // warp-uniform
        const float* vr = vb + static_cast<int64_t>(base + jj) * D;
#pragma unroll
        for (int e = 0; e < CPL; ++e) acc[e] = fmaf(wj, vr[lane + 32 * e], acc[e]);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const bool whole = p.num_splits == 1;
    float* dst = whole ? p.out + row * D : p.ws_acc + (row * p.num_splits + split_id) * D;
#pragma unroll
    for (int e = 0; e < CPL; ++e) dst[lane + 32 * e] = whole ? acc[e] / sum : acc[e];  // no key: 0/0 = NaN
    if (!whole && lane == 0) {
      *reinterpret_cast<float2*>(p.ws_ml + (row * p.num_splits + split_id) * 2) = make_float2(mx, sum);
    }
  }
}

template <int D, int QT>
struct TiledLayout {
  static constexpr int TQ = QT / 8;       // query rows per thread (8 row groups)
  static constexpr int TK = kChunk / 16;  // keys per thread in the score phase (16 key groups)
  static constexpr int CW = D / 16;       // output columns per thread in the p @ v phase
  static constexpr int KStride = D + 4;   // padded K rows: the 8 rows a quarter-warp reads hit distinct banks
  static constexpr int PStride = QT + TQ; // padded P^T rows: conflict-free vector stores of TQ probabilities
  static constexpr int kFloats = QT * D + 2 * kChunk * KStride + 2 * kChunk * D + kChunk * PStride;
  static size_t smem_bytes(int64_t split) { return sizeof(float) * kFloats + ((split + 15) / 16) * 16; }
};

// Thread (qg, kg), qg = row group 0..7, kg = key group 0..15; the 16 lanes of a half-warp share qg.
// Scores: rows qg*TQ + a, keys kg + 16*m of the chunk. p @ v: the same rows, columns kg*CW .. +CW, so
// the per-row softmax state (m, l, the rescale factor) is the thread's own, replicated across its half-warp.
// SkipIdle: warps with no query of the tile skip the arithmetic (decode steps have 10 queries, 1 in the
// last layer's call, in a 16-query tile); off in the persistent decoder_layers kernel, whose phases run on
// a cold instruction cache, where the extra code measured slower than the idle warps' work.
template <int D, int QT, bool SkipIdle = true>
__device__ inline void attn_tile(const Params& p, int bh, int q_tile, int split_id, float* smem) {
  using Lay = TiledLayout<D, QT>;
  constexpr int TQ = Lay::TQ, TK = Lay::TK, CW = Lay::CW, KS = Lay::KStride, PS = Lay::PStride;
  float* Qs = smem;                             // [QT][D]
  float* Ks = Qs + QT * D;                      // [2][kChunk][KS]
  float* Vs = Ks + 2 * kChunk * KS;             // [2][kChunk][D]
  float* Ps = Vs + 2 * kChunk * D;              // [kChunk][PS]: P transposed
  unsigned char* Valid = reinterpret_cast<unsigned char*>(Ps + kChunk * PS);  // [split]

  const TileRange r = tile_range<D>(p, bh, q_tile, QT, split_id);
  if (!r.live) return;
  const int b = r.b, q0 = r.q0, nq = r.nq, nkeys = r.nkeys, nchunks = r.nchunks;
  const int64_t s0 = r.s0, kbeg = r.kbeg;
  const float *kbase = r.kbase, *vbase = r.vbase;
  const int tid = threadIdx.x, lane = tid & 31;
  const int kg = lane & 15, qg = (tid >> 5) * 2 + (lane >> 4);
  // Warp-uniform: some query of this warp's two row groups exists (else it keeps the copies and barriers only).
  const bool busy = !SkipIdle || (tid >> 5) * 2 * TQ < nq;

  auto load_chunk = [&](int c, int stage) {
    const int rows = min(kChunk, nkeys - c * kChunk);
    const float* kc = kbase + static_cast<int64_t>(c) * kChunk * D;
    const float* vc = vbase + static_cast<int64_t>(c) * kChunk * D;
    static_assert(kChunk * D / 4 % kThreads == 0, "whole float4s per thread");
#pragma unroll
    for (int u = 0; u < kChunk * D / 4 / kThreads; ++u) {
      const int e = tid + u * kThreads, r = e / (D / 4), c4 = (e % (D / 4)) * 4;
      const bool ok = r < rows;  // rows past the split / the last visible key: zero-filled, never read
      cp_async<16>(Ks + (stage * kChunk + r) * KS + c4, ok ? kc + r * D + c4 : kbase, ok);
      cp_async<16>(Vs + (stage * kChunk + r) * D + c4, ok ? vc + r * D + c4 : vbase, ok);
    }
    cp_async_commit();
  };

  if (nchunks > 0) {
    copy_rows_async<D, QT, D>(Qs, p.q + (static_cast<int64_t>(bh) * p.n + q0) * D, nq, p.q);  // padding rows: zeros
    load_chunk(0, 0);  // same commit group as q
    const bool* vrow = p.valid + static_cast<int64_t>(b) * p.L + kbeg;
    for (int j = tid; j < nkeys; j += kThreads) Valid[j] = vrow[j];  // visible after the first barrier
  }

  float m_run[TQ], l_run[TQ], o[TQ][CW];
  int64_t slot[TQ];
#pragma unroll
  for (int a = 0; a < TQ; ++a) {
    m_run[a] = kNegInf, l_run[a] = 0.f;
    slot[a] = s0 + q0 + qg * TQ + a;
#pragma unroll
    for (int c = 0; c < CW; ++c) o[a][c] = 0.f;
  }

  bool nonfinite = false;
  for (int c = 0; c < nchunks; ++c) {
    const int stage = c & 1;
    if (c + 1 < nchunks) {
      load_chunk(c + 1, stage ^ 1);  // that stage was released by the barrier that ended chunk c-1
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float* Kst = Ks + stage * kChunk * KS;
    const float* Vst = Vs + stage * kChunk * D;
    nonfinite = nonfinite || chunk_nonfinite<D, D>(Vst);

    if (busy) {
      // scores s[a][m] = q[row a] . k[key m]
      float s[TQ][TK];
      tile_scores<D, TQ, TK, D, KS, 16>(Qs + qg * TQ * D, Kst + kg * KS, s);

      // mask, then the online softmax update of each row
#pragma unroll
      for (int a = 0; a < TQ; ++a) {
#pragma unroll
        for (int m = 0; m < TK; ++m) {
          const int jl = c * kChunk + kg + 16 * m;  // key index within the split
          const int64_t j = kbeg + jl;
          const bool ok = jl < nkeys && j <= slot[a] && (Valid[jl] != 0 || j == slot[a]);
          s[a][m] = ok ? s[a][m] * p.scale : kNegInf;
        }
        softmax_update<16>(s[a], m_run[a], l_run[a], o[a]);
      }
      store_p_transposed<TQ, TK, 16>(Ps + kg * PS + qg * TQ, PS, s);
    }
    __syncthreads();

    // o[rows][cols] += P[rows][k] * V[k][cols]
    const int kn = busy ? min(kChunk, nkeys - c * kChunk) : 0;
#pragma unroll 4
    for (int k = 0; k < kn; ++k) {
      float pr[TQ], vr[CW];
      load_vec<TQ>(Ps + k * PS + qg * TQ, pr);
      load_vec<CW>(Vst + k * D + kg * CW, vr);
#pragma unroll
      for (int a = 0; a < TQ; ++a)
#pragma unroll
        for (int cw = 0; cw < CW; ++cw) o[a][cw] = fmaf(pr[a], vr[cw], o[a][cw]);
    }
    __syncthreads();  // this stage and Ps are free for the next chunk's load
  }

  if (__syncthreads_or(nonfinite)) return exact_tile_rows<D>(p, r, bh, split_id);
  store_rows<D>(p, bh, q0 + qg * TQ, kg * CW, kg == 0, split_id, o, m_run, l_run);
}

// Which splits ran for query i: 0 .. min(start+i, L-1) / split (none when start+i < 0).
__device__ __forceinline__ int live_splits(const Params& p, int i) {
  const int64_t si = read_start(p.start) + i;
  return si < 0 ? 0 : static_cast<int>(min(static_cast<int64_t>(p.num_splits), min(si, p.L - 1) / p.split + 1));
}

// One halving exchange of the transpose-butterfly: of the O columns (per 32) a lane still holds, it keeps
// the upper half if bit O of its lane is set, else the lower half, and adds its partner's copy of them.
template <int O, int D>
__device__ __forceinline__ void butterfly_level(float (&a)[D], int lane) {
  const bool upper = (lane & O) != 0;
#pragma unroll
  for (int hh = 0; hh < D; hh += 32) {
#pragma unroll
    for (int c = 0; c < O; ++c) {
      const float lo = a[hh + c], hi = a[hh + c + O];
      a[hh + c] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, O);
    }
  }
}

// Combine for d = 32/64, one warp per (b, h, query). Lane s takes split s (and s + 32, ...): all its loads
// are issued at once (one L2 round trip for <= 32 splits, where a loop over splits per column would
// serialise them). Each lane folds its splits into (m, l, acc[D]) like the online softmax, rescales to
// the warp's max, then a transpose-butterfly sums acc over lanes: after 5 halving exchanges (31 shuffles
// for 32 columns) lane c holds column c (and c + 32 for d = 64).
template <int D>
__device__ inline void attn_combine_row(const Params& p, int64_t row, int lane) {
  const int live = live_splits(p, static_cast<int>(row % p.n));
  const float2* ml = reinterpret_cast<const float2*>(p.ws_ml) + row * p.num_splits;
  const float* acc = p.ws_acc + row * p.num_splits * D;

  float m = kNegInf, l = 0.f, a[D];
#pragma unroll
  for (int c = 0; c < D; ++c) a[c] = 0.f;
  for (int s = lane; s < live; s += 32) {
    const float2 e = ml[s];
    if (e.x == kNegInf) continue;  // nothing visible in this split
    const float mn = fmaxf(m, e.x);
    const float f_old = expf(m - mn), f_new = expf(e.x - mn);  // f_old = 0 on the lane's first split
    l = l * f_old + f_new * e.y;
#pragma unroll
    for (int c = 0; c < D; c += 4) {
      float r[4];
      load_vec<4>(acc + static_cast<int64_t>(s) * D + c, r);
#pragma unroll
      for (int e4 = 0; e4 < 4; ++e4) a[c + e4] = a[c + e4] * f_old + f_new * r[e4];
    }
    m = mn;
  }
  float M = m;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  const float f = m == kNegInf ? 0.f : expf(m - M);  // this lane's splits, rescaled to the warp's max
  l *= f;
#pragma unroll
  for (int c = 0; c < D; ++c) a[c] *= f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
  butterfly_level<16, D>(a, lane);
  butterfly_level<8, D>(a, lane);
  butterfly_level<4, D>(a, lane);
  butterfly_level<2, D>(a, lane);
  butterfly_level<1, D>(a, lane);
#pragma unroll
  for (int hh = 0; hh < D; hh += 32) p.out[row * D + hh + lane] = a[hh] / l;  // no key at all: 0/0 = NaN
}

// Workspace: acc (parts, d) first (16-byte aligned rows for d = 32/64), then (m, l) pairs from a
// 16-byte boundary, so their float2 stores stay aligned for any d.
inline int64_t ml_offset(int64_t parts, int64_t d) { return (parts * d + 3) / 4 * 4; }

// Kernel parameters of one call (host side); workspace laid out as ml_offset says.
inline Params make_params(const CacheAttentionPlan& plan, const float* q, const float* k_cache, const float* v_cache,
                          const bool* key_valid, const int64_t* start, float* out, float* workspace, int64_t batch,
                          int64_t num_heads, int64_t num_kv_heads, int64_t n, int64_t cache_len, int64_t head_dim) {
  Params p;
  p.q = q, p.k = k_cache, p.v = v_cache, p.valid = key_valid, p.start = start, p.out = out;
  const int64_t rows = batch * num_heads * n;
  p.ws_acc = workspace;
  p.ws_ml = plan.num_splits > 1 ? workspace + ml_offset(rows * plan.num_splits, head_dim) : nullptr;
  p.H = static_cast<int>(num_heads), p.KVH = static_cast<int>(num_kv_heads), p.n = static_cast<int>(n);
  p.d = static_cast<int>(head_dim);
  p.L = cache_len, p.split = plan.split, p.num_splits = static_cast<int>(plan.num_splits);
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  return p;
}

}  // namespace attn
}  // namespace autogaze_ext
