// The cache_attention pass for many queries per row (prefills, n > 16): 64 queries per block.
//
// Same algorithm and output as attn_tile (cache_attention_tile.cuh) -- one (batch*head, query tile, key
// split), 64-key chunks staged with cp.async, online softmax, (m, l, acc) per split -- with a
// thread layout that spends more of its issue slots on FMAs, which is what bounds prefills at large batch
// (a profile of attn_tile<32, 32> at B=64, 206 queries: 70% of issue slots busy, 54% of them FFMA; the
// p @ v loop alone 37% of all instructions, at 2 shared loads and 2 address updates per 8 FMAs).
//
// 128 threads = 16 row groups of 8 lanes; warp w owns queries 16w .. 16w+15, row group g (= lane / 8 + 4w)
// queries 4g .. 4g+3 and lane c (= lane % 8) of it keys c + 8m of each chunk in the score phase and
// output columns c*CW .. c*CW+CW-1 in the p @ v phase. The per-row softmax state is the thread's own,
// replicated over its 8 lanes; p goes through shared memory transposed (one 16-byte load gives a key's
// probability for the 4 rows). The p @ v loop is unrolled over the whole chunk with zero probabilities
// (and zero-filled values) past the split's last key, so it is 2 (D=32) or 3 (D=64) shared loads per
// 16 or 32 FMAs and no address arithmetic. A warp whose queries all lie past the row's last query skips
// the arithmetic (206 queries leave 3 of the last tile's 4 warps idle) but keeps the copies and barriers.
//
// Exactness: as attn_tile -- fp32 FMAs, scores (q . k) * scale with the same dot-product order, precise
// expf, keys summed in ascending order; only the sum of a row's probabilities is reduced in another order.
#pragma once

#include <climits>
#include <type_traits>

#include "cuda/cache_attention_tile.cuh"

namespace autogaze_ext {
namespace attn {

template <int D>
struct WideLayout {
  static constexpr int QT = 64;         // queries per block
  static constexpr int TQ = 4;          // rows per thread
  static constexpr int TK = kChunk / 8;  // keys per thread in the score phase
  static constexpr int CW = D / 8;      // output columns per thread
  static constexpr int QS = D + 4;      // padded Q and K rows: the row groups / lanes of a warp hit distinct banks
  static constexpr int KS = D + 4;
  static constexpr int PS = QT + 4;     // padded P^T rows: the 8 lanes of a store phase hit distinct banks
  static constexpr int kFloats = QT * QS + kChunk * KS + kChunk * D + kChunk * PS;
  static size_t smem_bytes(int64_t split) { return sizeof(float) * kFloats + ((split + 15) / 16) * 16; }
};

template <int D>
__device__ inline void attn_tile_wide(const Params& p, int bh, int q_tile, int split_id, float* smem) {
  using Lay = WideLayout<D>;
  constexpr int QT = Lay::QT, TQ = Lay::TQ, TK = Lay::TK, CW = Lay::CW, QS = Lay::QS, KS = Lay::KS, PS = Lay::PS;
  static_assert(kThreads == 128 && QT == 16 * TQ && D % 32 == 0, "16 row groups of 8 lanes; float4 columns");
  float* Qs = smem;                  // [QT][QS]
  float* Ks = Qs + QT * QS;       // [kChunk][KS]
  float* Vs = Ks + kChunk * KS;   // [kChunk][D]
  float* Ps = Vs + kChunk * D;    // [kChunk][PS]: P transposed
  unsigned char* Valid = reinterpret_cast<unsigned char*>(Ps + kChunk * PS);  // [split]

  const TileRange r = tile_range<D>(p, bh, q_tile, QT, split_id);
  if (!r.live) return;
  const int b = r.b, q0 = r.q0, nq = r.nq, nkeys = r.nkeys, nchunks = r.nchunks;
  const int64_t s0 = r.s0, kbeg = r.kbeg;
  const float *kbase = r.kbase, *vbase = r.vbase;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kl = lane & 7, rg = warp * 4 + (lane >> 3);
  const bool busy = 16 * warp < nq;  // warp-uniform: some query of this warp exists

  // K and V are single-buffered and staged at different points of the chunk loop: the keys of chunk c+1
  // load while chunk c's p @ v runs, its values while chunk c+1's scores run (half a chunk of latency hiding
  // each, ~microseconds) -- half the shared memory of double buffering, so 4 blocks fit on an SM.
  auto load_rows = [&](auto ld, float* dst, const float* base, int c) {
    // rows past the split's last key: zero-filled (p @ v multiplies them by 0)
    copy_rows_async<D, kChunk, decltype(ld)::value>(dst, base + static_cast<int64_t>(c) * kChunk * D,
                                                     nkeys - c * kChunk, base);
    cp_async_commit();
  };
  using KLd = std::integral_constant<int, KS>;
  using VLd = std::integral_constant<int, D>;

  if (nchunks > 0) {
    copy_rows_async<D, QT, QS>(Qs, p.q + (static_cast<int64_t>(bh) * p.n + q0) * D, nq, p.q);  // padding rows: zeros
    load_rows(KLd{}, Ks, kbase, 0);  // same commit group as q
    load_rows(VLd{}, Vs, vbase, 0);
    const bool* vrow = p.valid + static_cast<int64_t>(b) * p.L + kbeg;
    for (int j = tid; j < nkeys; j += kThreads) Valid[j] = vrow[j];
    cp_async_wait<1>();  // q and the first keys
    __syncthreads();
  }

  // Per row: the last key index (within the split) it may see, and its own slot's index, in 32 bits
  // (both clamped: a slot more than INT_MAX keys past the split's start sees the whole split).
  float m_run[TQ], l_run[TQ], o[TQ][CW];
  int last[TQ], self[TQ];
#pragma unroll
  for (int a = 0; a < TQ; ++a) {
    m_run[a] = kNegInf, l_run[a] = 0.f;
    const int64_t rel = s0 + q0 + rg * TQ + a - kbeg;
    self[a] = static_cast<int>(max(min(rel, static_cast<int64_t>(INT_MAX)), static_cast<int64_t>(-1)));
    last[a] = min(self[a], nkeys - 1);
#pragma unroll
    for (int c = 0; c < CW; ++c) o[a][c] = 0.f;
  }

  // Per chunk c, on entry: q and the keys of c visible, the values of c in flight.
  bool nonfinite = false;
  for (int c = 0; c < nchunks; ++c) {
    if (busy) {
      // scores s[a][m] = q[row a] . k[key kl + 8m]
      float s[TQ][TK];
      tile_scores<D, TQ, TK, QS, KS, 8>(Qs + rg * TQ * QS, Ks + kl * KS, s);

      // mask, then the online softmax update of each row
      bool vk[TK];
#pragma unroll
      for (int m = 0; m < TK; ++m) vk[m] = Valid[min(c * kChunk + kl + 8 * m, nkeys - 1)] != 0;
#pragma unroll
      for (int a = 0; a < TQ; ++a) {
#pragma unroll
        for (int m = 0; m < TK; ++m) {
          const int jl = c * kChunk + kl + 8 * m;  // key index within the split
          const bool ok = jl <= last[a] && (vk[m] || jl == self[a]);
          s[a][m] = ok ? s[a][m] * p.scale : kNegInf;
        }
        softmax_update<8>(s[a], m_run[a], l_run[a], o[a]);
      }
      store_p_transposed<TQ, TK, 8>(Ps + kl * PS + rg * TQ, PS, s);
    }
    cp_async_wait<0>();  // the values of c
    __syncthreads();     // p and the values visible; the keys' buffer free
    if (c + 1 < nchunks) load_rows(KLd{}, Ks, kbase, c + 1);
    nonfinite = nonfinite || chunk_nonfinite<D, D>(Vs);  // masked keys' values: see exact_tile_rows

    if (busy) {
      // o[rows][cols] += P[rows][k] * V[k][cols] over the whole chunk (past the last key: 0 * 0)
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        float pr[TQ], vr[CW];
        load_vec<TQ>(Ps + k * PS + rg * TQ, pr);
#pragma unroll
        for (int cw = 0; cw < CW; cw += 4) {
          float v4[4];
          load_vec<4>(Vs + k * D + kl * CW + cw, v4);
#pragma unroll
          for (int e = 0; e < 4; ++e) vr[cw + e] = v4[e];
        }
#pragma unroll
        for (int a = 0; a < TQ; ++a)
#pragma unroll
          for (int cw = 0; cw < CW; ++cw) o[a][cw] = fmaf(pr[a], vr[cw], o[a][cw]);
      }
    }
    cp_async_wait<0>();  // the keys of c + 1
    __syncthreads();     // those keys visible; p and the values' buffer free
    if (c + 1 < nchunks) load_rows(VLd{}, Vs, vbase, c + 1);
  }

  if (__syncthreads_or(nonfinite)) return exact_tile_rows<D>(p, r, bh, split_id);
  store_rows<D>(p, bh, q0 + rg * TQ, kl * CW, kl == 0, split_id, o, m_run, l_run);
}

}  // namespace attn
}  // namespace autogaze_ext
