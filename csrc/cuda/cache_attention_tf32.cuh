// The cache_attention pass on TF32 tensor cores, for the opt-in tf32 mode (prefills, d = 32): 64 queries per
// block, a warp per 16 queries, q k^T and p v as mma.sync m16n8k8 TF32 products with fp32 accumulation.
//
// Same structure and output as the fp32 tiles (cache_attention_tile.cuh): one (batch*head, query tile, key
// split), 64-key chunks staged with cp.async (double-buffered, one barrier per chunk), an online softmax in
// fp32 with the precise expf, (m, l, acc) per split. Only the two products change: their inputs are rounded
// to TF32 (10-bit mantissa, cvt.rna), so outputs differ from fp32 by ~1e-4 relative (about 2x faster at
// B=64 prefills on an H100, where the fp32 tiles are issue-bound).
//
// Fragments (PTX m16n8k8 .tf32, g = lane / 4, t = lane % 4): A (16 x 8, row) a0 (g, t), a1 (g+8, t),
// a2 (g, t+4), a3 (g+8, t+4); B (8 x 8, col) b0 (k = t, n = g), b1 (t+4, g); C (16 x 8) c0 (g, 2t),
// c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1). The scores' 8 columns of key group j are assigned keys
// 8j + {0,4,1,5,2,6,3,7}, so that c0..c3 of the scores hold keys 8j+t and 8j+t+4 -- exactly the A fragment
// of p for p @ v over the same 8 keys: the probabilities never leave their registers.
#pragma once

#include <climits>
#include <cstdint>

#include "cuda/cache_attention_tile.cuh"

namespace autogaze_ext {
namespace attn {

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// d += a (16 x 8) * b (8 x 8), fp32 accumulation.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

struct Tf32Layout {
  static constexpr int D = 32, QT = 64;
  // Padded rows, conflict-free fragment loads: q and k rows (8 rows x 4 columns per load) at stride 36 fall on
  // banks 4r + c; v rows (4 rows x 8 columns) at stride 40 on banks 8r + c.
  static constexpr int QS = D + 4, KS = D + 4, VS = D + 8;
  static constexpr int kFloats = QT * QS + 2 * kChunk * KS + 2 * kChunk * VS;
  static size_t smem_bytes(int64_t split) { return sizeof(float) * kFloats + ((split + 15) / 16) * 16; }
};

__device__ inline void attn_tile_tf32(const Params& p, int bh, int q_tile, int split_id, float* smem) {
  using Lay = Tf32Layout;
  constexpr int D = Lay::D, QT = Lay::QT, QS = Lay::QS, KS = Lay::KS, VS = Lay::VS;
  float* Qs = smem;                  // [QT][QS]
  float* Ks = Qs + QT * QS;          // [2][kChunk][KS]
  float* Vs = Ks + 2 * kChunk * KS;  // [2][kChunk][VS]
  unsigned char* Valid = reinterpret_cast<unsigned char*>(Vs + 2 * kChunk * VS);  // [split]

  const TileRange r = tile_range<D>(p, bh, q_tile, QT, split_id);
  if (!r.live) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const bool busy = 16 * warp < r.nq;                   // warp-uniform: some query of this warp exists
  const int kcol = (g & 1) ? 4 + (g >> 1) : (g >> 1);  // the key of score column g within its group of 8

  auto load_chunk = [&](int c, int stage) {  // rows past the split's last key: zero-filled (p = 0 there)
    const int64_t off = static_cast<int64_t>(c) * kChunk * D;
    const int rows = r.nkeys - c * kChunk;
    copy_rows_async<D, kChunk, KS>(Ks + stage * kChunk * KS, r.kbase + off, rows, r.kbase);
    copy_rows_async<D, kChunk, VS>(Vs + stage * kChunk * VS, r.vbase + off, rows, r.vbase);
    cp_async_commit();
  };
  if (r.nchunks > 0) {
    copy_rows_async<D, QT, QS>(Qs, p.q + (static_cast<int64_t>(bh) * p.n + r.q0) * D, r.nq, p.q);  // padding: zeros
    load_chunk(0, 0);  // same commit group as q
    const bool* vrow = p.valid + static_cast<int64_t>(r.b) * p.L + r.kbeg;
    for (int j = tid; j < r.nkeys; j += kThreads) Valid[j] = vrow[j];  // visible after the first barrier
  }

  // The thread's rows g and g + 8 of the warp's 16: running max (shared by the quad), the thread's part of
  // the running sum, the last key (within the split) each may see and its own slot, clamped to 32 bits.
  float m_run[2], l_run[2], o[4][4];
  int last[2], self[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    m_run[h] = kNegInf, l_run[h] = 0.f;
    const int64_t rel = r.s0 + r.q0 + 16 * warp + g + 8 * h - r.kbeg;
    self[h] = static_cast<int>(max(min(rel, static_cast<int64_t>(INT_MAX)), static_cast<int64_t>(-1)));
    last[h] = min(self[h], r.nkeys - 1);
  }
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
  uint32_t qa[4][4];  // q as A fragments, one per 8 columns of d

  bool nonfinite = false;
  for (int c = 0; c < r.nchunks; ++c) {
    const int stage = c & 1;
    cp_async_wait<0>();  // chunk c: the only copies in flight
    __syncthreads();     // chunk c visible to all, and every thread done with chunk c-1, whose stage is refilled now
    if (c + 1 < r.nchunks) load_chunk(c + 1, stage ^ 1);  // lands while chunk c is computed
    nonfinite = nonfinite || chunk_nonfinite<D, VS>(Vs + stage * kChunk * VS);  // see exact_tile_rows
    if (!busy) continue;
    if (c == 0) {
      const float* qr = Qs + (16 * warp + g) * QS + t;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        qa[kk][0] = to_tf32(qr[8 * kk]);
        qa[kk][1] = to_tf32(qr[8 * QS + 8 * kk]);
        qa[kk][2] = to_tf32(qr[8 * kk + 4]);
        qa[kk][3] = to_tf32(qr[8 * QS + 8 * kk + 4]);
      }
    }
    const float* Kst = Ks + stage * kChunk * KS;
    const float* Vst = Vs + stage * kChunk * VS;

    // scores of key group j: s[j] = (g, 8j+t), (g, 8j+t+4), (g+8, 8j+t), (g+8, 8j+t+4)
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
      const float* kr = Kst + (8 * j + kcol) * KS + t;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) mma_tf32(s[j], qa[kk], to_tf32(kr[8 * kk]), to_tf32(kr[8 * kk + 4]));
    }

    // mask (skipped when the thread's 16 keys are all valid and visible to both rows), scale
    const int j0 = c * kChunk + t;  // the thread's first key of the chunk, within the split
    bool clean = j0 + kChunk - 4 <= last[0];  // its last key, 8*7 + 4 past j0; row g sees the fewest keys
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int u = 0; u < 2; ++u) clean = clean && Valid[min(j0 + 8 * j + 4 * u, r.nkeys - 1)] != 0;
    if (clean) {
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] *= p.scale;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e >> 1, jl = j0 + 8 * j + 4 * (e & 1);
          const bool ok = jl <= last[h] && (Valid[min(jl, r.nkeys - 1)] != 0 || jl == self[h]);
          s[j][e] = ok ? s[j][e] * p.scale : kNegInf;
        }
    }

    // online softmax per row: the max over the quad (its 4 threads hold the row's 64 scores), the sum per thread
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = m_run[h];
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      if (mx == kNegInf) {  // nothing visible to this row yet
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j][2 * h] = s[j][2 * h + 1] = 0.f;
        continue;
      }
      if (mx != m_run[h]) {  // the max moved: rescale (0 on the first visible key, m_run = -inf)
        const float alpha = expf(m_run[h] - mx);
        l_run[h] *= alpha;
#pragma unroll
        for (int n = 0; n < 4; ++n) o[n][2 * h] *= alpha, o[n][2 * h + 1] *= alpha;
        m_run[h] = mx;
      }
      float ps = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        s[j][2 * h] = expf(s[j][2 * h] - mx);  // masked: exp(-inf) = 0
        s[j][2 * h + 1] = expf(s[j][2 * h + 1] - mx);
        ps += s[j][2 * h] + s[j][2 * h + 1];
      }
      l_run[h] += ps;
    }

    // o += p v over key group j: A = p (rows g, g+8; keys 8j+t, 8j+t+4), B = v rows 8j+t, 8j+t+4, columns 8n+g
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t pa[4] = {to_tf32(s[j][0]), to_tf32(s[j][2]), to_tf32(s[j][1]), to_tf32(s[j][3])};
      const float* vr = Vst + (8 * j + t) * VS + g;
#pragma unroll
      for (int n = 0; n < 4; ++n) mma_tf32(o[n], pa, to_tf32(vr[8 * n]), to_tf32(vr[4 * VS + 8 * n]));
    }
  }
  if (__syncthreads_or(nonfinite)) return exact_tile_rows<D>(p, r, bh, split_id);  // fp32, as the reference
  if (!busy) return;

  // Rows g and g+8, columns 8n + 2t, 8n + 2t + 1: normalised when one split covers the cache (a row with no
  // key: 0/0 = NaN), else the unnormalised partial and (m, l) into the workspace.
  const bool whole = p.num_splits == 1;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = l_run[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int i = r.q0 + 16 * warp + g + 8 * h;
    if (i >= p.n) continue;
    const int64_t row = static_cast<int64_t>(bh) * p.n + i;
    float* dst = whole ? p.out + row * D : p.ws_acc + (row * p.num_splits + split_id) * D;
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const float x = o[n][2 * h], y = o[n][2 * h + 1];
      *reinterpret_cast<float2*>(dst + 8 * n + 2 * t) = whole ? make_float2(x / l, y / l) : make_float2(x, y);
    }
    if (!whole && t == 0) {
      *reinterpret_cast<float2*>(p.ws_ml + (row * p.num_splits + split_id) * 2) = make_float2(m_run[h], l);
    }
  }
}

}  // namespace attn
}  // namespace autogaze_ext
