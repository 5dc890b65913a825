// decoder_layers on the GPU: every layer of the gaze decoder in one persistent, cooperative launch, for
// decode steps at small batch (n <= 16 tokens per row, at most 64 rows; larger calls run the chained ops).
//
// Why: a decode step feeds ~10 tokens per row through 4 small layers. As separate kernels that is ~30
// dependent launches of about a microsecond of work each, and inside a CUDA graph each still costs ~5 us
// end to end. Here one grid (a block per SM) walks the layers as phases separated by grid-wide barriers
// (~1.1 us each on an H100), and within a phase the blocks stride over independent work units:
//   1. qkv projection of the RMS-normalised rows, RoPE, k and v written into the caches;
//   2. attention over the cache: cache_attention's tiled pass per (row*head, key split);
//   3. the splits combined (skipped when one split covers the cache);
//   4. output projection + residual;  5. gate/up projection of the normalised rows + SwiGLU;
//   6. down projection + residual.
//
// A projection unit is 16 rows x 32 weight rows (x2 for gate/up). Rows and weight slice are staged in
// shared memory with cp.async (the weights of a block's first unit of a phase are fetched ahead, during
// the previous phase's epilogue and barrier), rows are RMS-normalised in place, and the product is split
// over k between the 4 warps (4 x 4 register tiles per lane) and summed through shared memory. A qkv unit
// is one head, so the RoPE partner of column j (j ^ 16) is a lane of the same warp. Attention runs
// cache_attention's device code. Exact fp32 throughout (no TF32, precise expf/cosf/sinf); sums run in a
// different order than the chained ops, so results agree to rounding, not bit for bit.
//
// The code is kept compact (k loops not unrolled, 32-bit row arithmetic, one out-of-line cos/sin): each
// phase runs once per call on a cold instruction cache, and unrolled code measured slower.
#include <cooperative_groups.h>

#include <algorithm>

#include "cuda/async_copy.cuh"
#include "cuda/cache_attention_tile.cuh"
#include "cuda/decoder_layers.h"
#include "cuda/rmsnorm.cuh"
#include "cuda/rope.cuh"

namespace autogaze_ext {
namespace {

namespace cg = cooperative_groups;

constexpr int D = static_cast<int>(kDecoderHidden);
constexpr int HD = static_cast<int>(kDecoderHeadDim);
constexpr int I = static_cast<int>(kDecoderIntermediate);
constexpr int kThreads = attn::kThreads;  // the attention pass's block shape
constexpr int kWarps = kThreads / 32;
constexpr int RT = 16;                      // rows per projection unit
constexpr int CS = 32;                      // weight rows per slice: one per lane
constexpr int kRowsPerWarp = RT / kWarps;   // warp w owns rows w, w + kWarps, ...
static_assert(HD == CS, "a qkv unit is one head");
constexpr int kQueryTile = 16;  // cache_attention's query tile for n <= 16: one tile per row and head
static_assert(kDecoderPersistentMaxTokens == kQueryTile, "one query tile per row and head");
static_assert(D % CS == 0 && I % CS == 0 && D % 4 == 0 && I % 4 == 0, "whole slices and float4 rows");

// Shared-memory rows padded by 4 floats: 16-byte aligned, and the 8 lanes of a 128-bit load phase, which
// read 8 different weight rows at one k, land on distinct banks (K + 4 = 4 mod 32).
constexpr int padded(int K) { return K + 4; }
constexpr int cmax(int a, int b) { return a > b ? a : b; }
// Shared memory: a weight buffer and a scratch region. A projection unit's weights (inputs of the op, not
// results of earlier phases) are fetched as soon as the buffer is free -- right after the block's last unit
// of the previous projection phase has been computed -- so they arrive while that phase's epilogue and
// barrier run; the scratch region holds a unit's activation rows and partial sums, or the attention tiles.
constexpr int kWFloats = cmax(2 * CS * padded(D), CS * padded(I));
constexpr int kXFloats = RT * padded(I) + kWarps * RT * 2 * CS;  // rows + the partial sums of the k split
constexpr size_t kProjSmemBytes = sizeof(float) * (kWFloats + kXFloats);

struct Params {
  DecoderLayersArgs a;
  attn::Params att;  // layer 0's cache pointers; advanced per layer
  float* q;          // (B, H, n, HD) rotated queries
  float* o;          // (B, H, n, HD) attention output
  float* act;        // (M, I) SwiGLU output
  int M;                // rows, at most kDecoderPersistentMaxRows: 32-bit row arithmetic
  int64_t layer_cache;  // floats of one layer of one cache
  int row_tiles;
};

// The four projections of a layer. Per phase: NP weight slices of CS rows per unit (gate and up for the MLP,
// the up rows part_stride rows below the gate rows), slices per row tile, the layer's weight matrix; the
// input width K is a template argument of the phase's code.
enum Proj { kQkv = 0, kO = 1, kGateUp = 2, kDown = 3 };

struct ProjShape {
  int NP, slices, part_stride;
  const float* w;  // this layer's weight matrix
};

__device__ __forceinline__ ProjShape proj_shape(const Params& p, int phase, int layer) {
  const DecoderLayersArgs& a = p.a;
  const int64_t l = layer;
  switch (phase) {
    case kQkv: {
      const int slices = static_cast<int>(a.num_heads + 2 * a.num_kv_heads);
      return {1, slices, 0, a.w_qkv + l * slices * HD * D};
    }
    case kO: return {1, D / CS, 0, a.w_o + l * D * D};
    case kGateUp: return {2, I / CS, I, a.w_gu + l * 2 * I * D};
    default: return {1, D / CS, 0, a.w_down + l * D * I};
  }
}

// Issues the cp.async copies of unit `slice`'s weight rows (NP x CS rows of K floats) into wbuf; one commit
// group. K is a template argument so that the index arithmetic is shifts, not divisions.
template <int K>
__device__ __forceinline__ void stage_weights(float* wbuf, const ProjShape& s, int slice) {
  constexpr int K4 = K / 4, LD = padded(K);
  for (int e = static_cast<int>(threadIdx.x); e < s.NP * CS * K4; e += kThreads) {
    const int r = e / K4, k = (e - r * K4) * 4;
    const int row = slice * CS + (r / CS) * s.part_stride + r % CS;
    cp_async<16>(wbuf + r * LD + k, s.w + row * K + k, true);
  }
  cp_async_commit();
}

// Weights of the first unit this block runs in `phase` (unit index = block index), if it has one.
__device__ __forceinline__ void prefetch_weights(float* wbuf, const Params& p, int phase, int layer) {
  if (layer >= p.a.layers) return;
  const ProjShape s = proj_shape(p, phase, layer);
  const int blk = static_cast<int>(blockIdx.x);
  if (blk >= p.row_tiles * s.slices) return;
  if (phase == kDown) stage_weights<I>(wbuf, s, blk / p.row_tiles);
  else stage_weights<D>(wbuf, s, blk / p.row_tiles);
}

// Issues the copies of rows m0 .. m0+RT-1 (floats k..k+3 of row m at xrow(m, k); rows >= M zero-filled).
template <int K, class XRow>
__device__ __forceinline__ void stage_rows(float* xs, XRow xrow, int m0, int M, const float* any) {
  constexpr int LD = padded(K), K4 = K / 4;
  for (int e = static_cast<int>(threadIdx.x); e < RT * K4; e += kThreads) {
    const int r = e / K4, k = (e - r * K4) * 4;
    const bool ok = m0 + r < M;
    cp_async<16>(xs + r * LD + k, ok ? xrow(m0 + r, k) : any, ok);
  }
  cp_async_commit();
}

// Norm pass: thread t normalises elements k = t % 8 + 8 j of row t / 8 (8 threads per row, a 3-shuffle
// reduction), so every row is done at once; nwr[j] = norm weight of element t % 8 + 8 j.
constexpr int kNormThreadsPerRow = kThreads / RT;
static_assert(kNormThreadsPerRow == 8, "8 threads per row");

template <int K>
__device__ __forceinline__ void normalise_rows(float* xs, const float (&nwr)[K / 8], float eps) {
  const int tid = static_cast<int>(threadIdx.x), part = tid % 8;
  float* row = xs + (tid / 8) * padded(K);
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < K / 8; ++j) ss = fmaf(row[part + 8 * j], row[part + 8 * j], ss);
#pragma unroll
  for (int off = 4; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  const float inv = inv_rms(ss, K, eps);
#pragma unroll
  for (int j = 0; j < K / 8; ++j) row[part + 8 * j] = rms_apply(row[part + 8 * j], inv, nwr[j]);
}

// Once the unit's rows and weights have landed (the caller waited and synced): the product, split over k
// between the warps -- warp w sums k in [w K/4, (w+1) K/4) -- then the four partial sums of each output
// are added in warp order through shared memory. Within a warp, lane (g = lane / 8, c = lane % 8) keeps a
// 4 x 4 register tile: rows g + 4 i, weight rows c + 8 j (per slice q), so a 16-byte shared load feeds four
// rows or four columns (loading a row per lane column instead makes shared-memory bandwidth the bound).
// acc[r][q] = row (warp + r * kWarps) . weight row (q, lane).
template <int K, int NP>
__device__ __forceinline__ void proj_compute(const float* xs, const float* ws, float* red,
                                             float (&acc)[kRowsPerWarp][NP]) {
  constexpr int LD = padded(K), KW = K / kWarps;
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int g = lane / 8, c = lane % 8;
  float part[4][NP][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int q = 0; q < NP; ++q)
#pragma unroll
      for (int j = 0; j < 4; ++j) part[i][q][j] = 0.0f;
  const int k0 = warp * KW;
  // Not unrolled: a phase runs once per call on cold instruction caches, so code size costs more than
  // loop overhead.
#pragma unroll 1
  for (int k = k0; k < k0 + KW; k += 4) {
    float4 xv[4], wv[NP][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) xv[i] = *reinterpret_cast<const float4*>(xs + (g + 4 * i) * LD + k);
#pragma unroll
    for (int q = 0; q < NP; ++q)
#pragma unroll
      for (int j = 0; j < 4; ++j) wv[q][j] = *reinterpret_cast<const float4*>(ws + (q * CS + c + 8 * j) * LD + k);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int q = 0; q < NP; ++q)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float t = part[i][q][j];
          t = fmaf(xv[i].x, wv[q][j].x, t);
          t = fmaf(xv[i].y, wv[q][j].y, t);
          t = fmaf(xv[i].z, wv[q][j].z, t);
          t = fmaf(xv[i].w, wv[q][j].w, t);
          part[i][q][j] = t;
        }
  }
  // red[w][row][q * CS + col]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int q = 0; q < NP; ++q)
#pragma unroll
      for (int j = 0; j < 4; ++j) red[(warp * RT + g + 4 * i) * NP * CS + q * CS + c + 8 * j] = part[i][q][j];
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp + r * kWarps;
#pragma unroll
    for (int q = 0; q < NP; ++q) {
      float t = red[row * NP * CS + q * CS + lane];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) t += red[(w * RT + row) * NP * CS + q * CS + lane];
      acc[r][q] = t;
    }
  }
}

// Runs every unit of projection `phase` of `layer`. Per unit: copy the activation rows (and, except for the
// block's first unit, whose weights were prefetched, the weights), let `pre(m0, slice)` issue the unit's
// other global loads while the copies fly, wait, compute, then `epi(m0, slice, acc, pre's result)`. Once the
// block's last unit is computed, the weight buffer is free: the next projection phase's weights start.
template <int K, int NP, class XRow, class Pre, class Epi>
__device__ __forceinline__ void proj_phase(float* smem, const Params& p, int phase, int layer, XRow xrow,
                                           const float* nw, Pre pre, Epi epi) {
  const ProjShape s = proj_shape(p, phase, layer);
  float* wbuf = smem;
  float* xs = smem + kWFloats;
  float* red = xs + RT * padded(K);
  float nwr[K / 8];
  if (nw != nullptr) {
#pragma unroll
    for (int j = 0; j < K / 8; ++j) nwr[j] = nw[static_cast<int>(threadIdx.x) % 8 + 8 * j];
  }
  auto prefetch_next = [&] {
    if (phase == kDown) prefetch_weights(wbuf, p, kQkv, layer + 1);
    else prefetch_weights(wbuf, p, phase + 1, layer);
  };
  const int blk = static_cast<int>(blockIdx.x), nblk = static_cast<int>(gridDim.x);
  const int units = p.row_tiles * s.slices;
  if (blk >= units) prefetch_next();  // no unit here: the buffer is free already
  for (int u = blk; u < units; u += nblk) {
    const int slice = u / p.row_tiles;
    const int m0 = (u % p.row_tiles) * RT;
    __syncthreads();  // the previous unit is done with shared memory
    if (u != blk) stage_weights<K>(wbuf, s, slice);
    stage_rows<K>(xs, xrow, m0, p.M, s.w);
    auto ctx = pre(m0, slice);
    cp_async_wait<0>();
    __syncthreads();
    if (nw != nullptr) {
      normalise_rows<K>(xs, nwr, p.a.eps);
      __syncthreads();
    }
    float acc[kRowsPerWarp][NP];
    proj_compute<K, NP>(xs, wbuf, red, acc);  // ends with a barrier after the last read of wbuf
    if (u + nblk >= units) prefetch_next();
    epi(m0, slice, acc, ctx);
  }
}

struct Empty {};

// Precise cosf/sinf (with their slow paths) are large: one out-of-line copy instead of one per unrolled row.
__device__ __noinline__ float2 cos_sin(float angle) { return make_float2(cosf(angle), sinf(angle)); }

__global__ void __launch_bounds__(kThreads, 1) decoder_layers_kernel(Params p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* scratch = smem + kWFloats;
  cg::grid_group grid = cg::this_grid();
  const DecoderLayersArgs& a = p.a;
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int M = p.M, n = static_cast<int>(a.n);
  const int64_t L = a.cache_len;
  const int H = static_cast<int>(a.num_heads), KVH = static_cast<int>(a.num_kv_heads);
  const int64_t s0 = attn::read_start(a.start);
  const int nblk = static_cast<int>(gridDim.x), blk = static_cast<int>(blockIdx.x);
  const float inv_freq = a.inv_freq[lane % (HD / 2)];

  prefetch_weights(smem, p, kQkv, 0);
  for (int l = 0; l < a.layers; ++l) {
    const float* hin = l == 0 ? a.x : a.out;  // the residual stream entering this layer
    float* kc = a.k_cache + l * p.layer_cache;
    float* vc = a.v_cache + l * p.layer_cache;

    // 1. q | k | v = rmsnorm(h) @ w_qkv^T; RoPE on q and k; k and v into the caches
    proj_phase<D, 1>(
        smem, p, kQkv, l, [&](int m, int k) { return hin + m * D + k; }, a.norm_attn + static_cast<int64_t>(l) * D,
        [&](int m0, int slice) {  // RoPE factors of this lane's rows, computed while the copies fly
          struct { float c[kRowsPerWarp], s[kRowsPerWarp]; } cs;
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) {
            const int m = m0 + warp + r * kWarps;
            const float ang = rope_angle(slice < H + KVH && m < M ? a.positions[m] : 0, inv_freq);
            const float2 v = cos_sin(ang);
            cs.c[r] = v.x;
            cs.s[r] = v.y;
          }
          return cs;
        },
        [&](int m0, int slice, const float(&acc)[kRowsPerWarp][1], const auto& cs) {
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) {
            const int m = m0 + warp + r * kWarps;
            const float v = acc[r][0];
            const float partner = __shfl_xor_sync(0xffffffffu, v, HD / 2);  // element lane ^ 16 of the head
            if (m >= M) continue;
            const int b = m / n, i = m - b * n;
            float y = v;
            if (slice < H + KVH) {  // q or k: rotate
              y = lane < HD / 2 ? rope_lower(v, partner, cs.c[r], cs.s[r]) : rope_upper(partner, v, cs.c[r], cs.s[r]);
            }
            if (slice < H) {
              p.q[((b * H + slice) * n + i) * HD + lane] = y;
            } else {
              const int64_t slot = s0 + i;
              if (slot < 0 || slot >= L) continue;  // outside the cache: not written (like rope_cache_write)
              const bool is_k = slice < H + KVH;
              const int kh = is_k ? slice - H : slice - H - KVH;
              (is_k ? kc : vc)[((static_cast<int64_t>(b) * KVH + kh) * L + slot) * HD + lane] = y;
            }
          }
        });
    grid.sync();

    // 2. attention of each query over the cache, per key split
    attn::Params att = p.att;
    att.k = kc;
    att.v = vc;
    {
      const int64_t units = a.batch * H * att.num_splits;  // one query tile per row and head
      for (int64_t u = blk; u < units; u += nblk) {
        const int split = static_cast<int>(u % att.num_splits);
        const int bh = static_cast<int>(u / att.num_splits);
        __syncthreads();  // the previous unit is done reading shared memory
        attn::attn_tile<HD, kQueryTile, false>(att, bh, 0, split, scratch);
      }
    }
    grid.sync();

    // 3. combine the splits of every query
    if (att.num_splits > 1) {
      const int64_t rows = a.batch * H * n;
      for (int64_t row = static_cast<int64_t>(blk) * kWarps + warp; row < rows;
           row += static_cast<int64_t>(nblk) * kWarps) {
        attn::attn_combine_row<HD>(att, row, lane);
      }
      grid.sync();
    }

    // Residual epilogue of the o and down projections: out = residual + acc, the residual loaded while the
    // unit's copies fly.
    auto load_residual = [&](const float* res) {
      return [&, res](int m0, int slice) {
        struct { float v[kRowsPerWarp]; } rv;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          const int m = m0 + warp + r * kWarps;
          rv.v[r] = m < M ? res[m * D + slice * CS + lane] : 0.0f;
        }
        return rv;
      };
    };
    // The last layer's down projection with last_out set stores only each row's last token (into last_out).
    bool last_rows_only = false;
    auto add_residual = [&](int m0, int slice, const float(&acc)[kRowsPerWarp][1], const auto& rv) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int m = m0 + warp + r * kWarps;
        if (m >= M) continue;
        const float y = rv.v[r] + acc[r][0];
        if (!last_rows_only) {
          a.out[m * D + slice * CS + lane] = y;
        } else if (m % n == n - 1) {
          a.last_out[(m / n) * D + slice * CS + lane] = y;
        }
      }
    };

    // 4. h = h + o @ w_o^T (o gathered from its (B, H, n, HD) layout)
    const float* o = p.o;
    proj_phase<D, 1>(
        smem, p, kO, l,
        [&](int m, int k) {  // row m = (b, i), column k = h * HD + c: o[b, h, i, c]
          const int b = m / n, i = m - b * n;
          return o + ((b * H + k / HD) * n + i) * HD + k % HD;
        },
        nullptr, load_residual(hin), add_residual);
    grid.sync();

    // 5. act = silu(gate) * up of rmsnorm(h) @ w_gu^T
    proj_phase<D, 2>(
        smem, p, kGateUp, l, [&](int m, int k) { return a.out + m * D + k; },
        a.norm_mlp + static_cast<int64_t>(l) * D, [](int, int) { return Empty{}; },
        [&](int m0, int slice, const float(&acc)[kRowsPerWarp][2], const Empty&) {
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) {
            const int m = m0 + warp + r * kWarps;
            const float g = acc[r][0], up = acc[r][1];
            if (m < M) p.act[m * I + slice * CS + lane] = g / (1.0f + expf(-g)) * up;
          }
        });
    grid.sync();

    // 6. h = h + act @ w_down^T
    last_rows_only = a.last_out != nullptr && l + 1 == a.layers;
    proj_phase<I, 1>(
        smem, p, kDown, l, [&](int m, int k) { return p.act + m * I + k; }, nullptr, load_residual(a.out),
        add_residual);
    if (l + 1 < a.layers) grid.sync();
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int64_t decoder_layers_workspace_floats(int64_t batch, int64_t n, int64_t num_heads, int64_t cache_len, int num_sms) {
  const CacheAttentionPlan plan = plan_cache_attention(batch, num_heads, n, cache_len, HD, true, num_sms);
  return batch * n * (3 * D + I) + plan.workspace_floats;
}

cudaError_t launch_decoder_layers(const DecoderLayersArgs& a, int num_sms, cudaStream_t stream) {
  const int64_t M = a.batch * a.n;
  if (M <= 0 || a.layers <= 0) return cudaSuccess;
  if (a.num_heads * HD != D || a.num_kv_heads < 1 || a.num_heads % a.num_kv_heads != 0 || a.cache_len < 1)
    return cudaErrorInvalidValue;
  const CacheAttentionPlan plan = plan_cache_attention(a.batch, a.num_heads, a.n, a.cache_len, HD, true, num_sms);
  if (!plan.tiled || plan.q_tile != kQueryTile || a.n > kDecoderPersistentMaxTokens) return cudaErrorInvalidValue;

  Params p;
  p.a = a;
  p.M = static_cast<int>(M);
  p.q = a.workspace;
  p.o = p.q + M * D;
  p.act = p.o + M * D;
  if (a.last_out != nullptr) p.a.out = p.act + M * I;  // the residual stream stays internal
  p.att = attn::make_params(plan, p.q, a.k_cache, a.v_cache, a.key_valid, a.start, p.o, p.act + M * I + M * D, a.batch,
                            a.num_heads, a.num_kv_heads, a.n, a.cache_len, HD);
  p.layer_cache = a.batch * a.num_kv_heads * a.cache_len * HD;
  p.row_tiles = static_cast<int>(ceil_div(M, RT));

  // The attention pass's tiles live in the scratch region after the weight buffer.
  const size_t attn_smem = attn::TiledLayout<HD, kQueryTile>::smem_bytes(plan.split);
  const size_t smem = std::max(kProjSmemBytes, sizeof(float) * kWFloats + attn_smem);
  // Above 48 KB a kernel must opt in, per device: a host-side attribute, fine during graph capture. Always
  // the largest size any call needs, so graphs captured earlier stay launchable.
  const size_t most = std::max(kProjSmemBytes, sizeof(float) * kWFloats +
                                                   attn::TiledLayout<HD, kQueryTile>::smem_bytes(attn::kMaxSplit));
  cudaError_t err = cudaFuncSetAttribute(decoder_layers_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(most));
  if (err != cudaSuccess) return err;
  int occ = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, decoder_layers_kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  if (occ < 1) return cudaErrorCooperativeLaunchTooLarge;
  // One block per SM: every phase of a decode step has fewer units than SMs, and each extra block is one
  // more participant in every barrier.
  const int blocks = num_sms;

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;  // all blocks resident at once: grid.sync() is legal
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  err = cudaLaunchKernelEx(&cfg, decoder_layers_kernel, p);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

}  // namespace autogaze_ext
