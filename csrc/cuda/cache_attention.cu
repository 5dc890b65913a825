// cache_attention on the GPU: flash-decoding with a split key axis.
//
// A step has only ~10 queries but thousands of cached keys, so parallelising over queries alone
// (fused SDPA kernels) starves the GPU. Here the grid is (B*H, query tiles, key splits): each block
// takes up to QT queries and one split of keys, streams the split through shared memory in 64-key
// chunks (cp.async, two stages, so the next chunk loads while this one is computed), keeps an online
// softmax (running max m, sum l, unnormalised acc) per query, and writes (m, l, acc) of its split to a
// workspace; a second kernel combines the splits of each query. When one split covers the whole cache
// the blocks write the normalised output directly and the combine is skipped. Decode steps (n <= 16) run
// 16-query tiles and small prefills 32-query tiles (cache_attention_tile.cuh); prefills whose 64-query
// tiles alone fill the GPU twice over run those, with a layout that keeps more of the issue slots on FMAs
// (cache_attention_wide.cuh: 1.15x at B=64, 206 queries; slower than 32-query tiles on small grids, where
// latency, not issue, bounds a call).
// With tf32 (an opt-in mode) prefills with d = 32 run 64-query tiles on TF32 tensor cores instead
// (cache_attention_tf32.cuh; about 2x the wide tile at B=64, outputs within ~1e-4 of fp32).
//
// `start` is read on the device (CUDA graphs replay with new values), so the grid covers every split
// of the cache and the blocks decide for themselves: a block whose first key lies beyond the last slot
// its queries can see (start + last query, clamped to L-1) exits at once, and the combine reads, for
// query i, only splits 0 .. min(start+i, L-1) / split, all of which ran. No key beyond the last query's
// slot is ever read.
//
// Exactness: fp32 throughout, scores are (q . k) * (1/sqrt(d)) with fp32 FMAs, exp is the precise expf.
// A query with no key to attend (its slot outside the cache and no valid key below it) gets 0/0 = NaN,
// like a softmax whose every score is -inf. Masked keys are absent: a NaN or Inf in a masked key's value
// never reaches an output (exact_tile_rows in cache_attention_tile.cuh).
#include <algorithm>
#include <cmath>

#include "cuda/cache_attention.h"
#include "cuda/cache_attention_tf32.cuh"
#include "cuda/cache_attention_tile.cuh"
#include "cuda/cache_attention_wide.cuh"

namespace autogaze_ext {
namespace {

using namespace attn;

template <int D, int QT>
__global__ void __launch_bounds__(kThreads) attn_tiled_kernel(Params p) {
  extern __shared__ float4 smem4[];
  attn_tile<D, QT>(p, blockIdx.x, blockIdx.y, blockIdx.z, reinterpret_cast<float*>(smem4));
}

// 4 blocks per SM for d = 32 (128 registers, 46 KB of shared memory each).
template <int D>
__global__ void __launch_bounds__(kThreads, D == 32 ? 4 : 3) attn_wide_kernel(Params p) {
  extern __shared__ float4 smem4[];
  attn_tile_wide<D>(p, blockIdx.x, blockIdx.y, blockIdx.z, reinterpret_cast<float*>(smem4));
}

// 4 blocks per SM (at most 128 registers, 52 KB of shared memory each).
__global__ void __launch_bounds__(kThreads, 4) attn_tf32_kernel(Params p) {
  extern __shared__ float4 smem4[];
  attn_tile_tf32(p, blockIdx.x, blockIdx.y, blockIdx.z, reinterpret_cast<float*>(smem4));
}

template <int D>
__global__ void __launch_bounds__(kThreads) attn_combine_kernel(Params p, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  attn_combine_row<D>(p, row, threadIdx.x & 31);
}

template <int N>
__device__ __forceinline__ float block_reduce(float x, float* red, bool is_max) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float y = __shfl_xor_sync(0xffffffffu, x, o);
    x = is_max ? fmaxf(x, y) : x + y;
  }
  __syncthreads();  // red may still be read from the previous reduction
  if (lane == 0) red[warp] = x;
  __syncthreads();
  x = red[0];
#pragma unroll
  for (int w = 1; w < N; ++w) x = is_max ? fmaxf(x, red[w]) : x + red[w];
  return x;
}

// Any head dim up to 256 and any alignment: one query and one key split per block. Scores go to shared
// memory, a block-wide max and sum, then thread c accumulates column c over the split's keys.
__global__ void __launch_bounds__(kThreads) attn_generic_kernel(Params p) {
  __shared__ float qs[kMaxHeadDim];
  __shared__ float sc[kMaxSplit];
  __shared__ float red[kThreads / 32];
  const int bh = blockIdx.x, b = bh / p.H, h = bh - b * p.H;
  const int i = blockIdx.y, split_id = blockIdx.z, tid = threadIdx.x, d = p.d;
  const int64_t si = read_start(p.start) + i;
  const int64_t kend = min(si, p.L - 1);
  const int64_t kbeg = static_cast<int64_t>(split_id) * p.split;
  if (p.num_splits > 1 && kbeg > kend) return;
  const int64_t kstop = min(kbeg + p.split - 1, kend);
  const int nkeys = kstop >= kbeg ? static_cast<int>(kstop - kbeg + 1) : 0;
  const int64_t row = static_cast<int64_t>(bh) * p.n + i;
  const int64_t kv_off = (static_cast<int64_t>(b) * p.KVH + h / (p.H / p.KVH)) * p.L * d;
  const float* kb = p.k + kv_off + kbeg * d;
  const float* vb = p.v + kv_off + kbeg * d;
  const bool* vrow = p.valid + static_cast<int64_t>(b) * p.L + kbeg;

  for (int c = tid; c < d; c += kThreads) qs[c] = p.q[row * d + c];
  __syncthreads();
  float mx = kNegInf;
  for (int jl = tid; jl < nkeys; jl += kThreads) {
    const int64_t j = kbeg + jl;  // <= kend <= si
    float s = kNegInf;
    if (vrow[jl] || j == si) {
      const float* kr = kb + static_cast<int64_t>(jl) * d;
      float dot = 0.f;
      for (int c = 0; c < d; ++c) dot = fmaf(qs[c], kr[c], dot);
      s = dot * p.scale;
    }
    sc[jl] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_reduce<kThreads / 32>(mx, red, true);
  float sum = 0.f;
  for (int jl = tid; jl < nkeys; jl += kThreads) {
    const int64_t j = kbeg + jl;
    const float e = mx == kNegInf ? 0.f : expf(sc[jl] - mx);
    sc[jl] = (vrow[jl] || j == si) ? e : -1.f;  // -1: a masked key, absent (its value is never read)
    sum += e;
  }
  sum = block_reduce<kThreads / 32>(sum, red, false);  // its barriers also publish sc
  for (int c = tid; c < d; c += kThreads) {
    float acc = 0.f;
    for (int jl = 0; jl < nkeys; ++jl) {
      const float e = sc[jl];
      if (e >= 0.f) acc = fmaf(e, vb[static_cast<int64_t>(jl) * d + c], acc);
    }
    if (p.num_splits == 1) {
      p.out[row * d + c] = acc / sum;
    } else {
      p.ws_acc[(row * p.num_splits + split_id) * d + c] = acc;
    }
  }
  if (p.num_splits > 1 && tid == 0) {
    *reinterpret_cast<float2*>(p.ws_ml + (row * p.num_splits + split_id) * 2) = make_float2(mx, sum);
  }
}

// Combine for any d: one warp per query, lane c sums column c over the live splits.
__global__ void __launch_bounds__(kThreads) attn_combine_generic_kernel(Params p, int64_t rows) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int d = p.d, live = live_splits(p, static_cast<int>(row % p.n));
  const float2* ml = reinterpret_cast<const float2*>(p.ws_ml) + row * p.num_splits;
  const float* acc = p.ws_acc + row * p.num_splits * d;

  float M = kNegInf;
  for (int s = lane; s < live; s += 32) M = fmaxf(M, ml[s].x);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  float tot = 0.f;
  for (int s = lane; s < live; s += 32) {
    const float2 e = ml[s];
    if (e.x != kNegInf) tot = fmaf(expf(e.x - M), e.y, tot);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) tot += __shfl_xor_sync(0xffffffffu, tot, o);
  for (int c = lane; c < d; c += 32) {
    float a = 0.f;
#pragma unroll 8
    for (int s = 0; s < live; ++s) {
      const float ms = ml[s].x;  // split with nothing visible for this query: weight 0
      if (ms != kNegInf) a = fmaf(expf(ms - M), acc[static_cast<int64_t>(s) * d + c], a);
    }
    p.out[row * d + c] = a / tot;  // no key at all: 0/0 = NaN
  }
}

// Above the default 48 KB a kernel must opt in; a host-side attribute, fine during graph capture. Always the
// size the largest split needs, so graphs captured earlier stay launchable.
template <class Kernel>
cudaError_t launch_with_smem(Kernel kernel, size_t smem, size_t most, const Params& p, dim3 grid, cudaStream_t stream) {
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <int D, int QT>
cudaError_t launch_narrow(const Params& p, dim3 grid, cudaStream_t stream) {
  using Lay = TiledLayout<D, QT>;
  return launch_with_smem(attn_tiled_kernel<D, QT>, Lay::smem_bytes(p.split), Lay::smem_bytes(kMaxSplit), p, grid,
                          stream);
}

template <int D>
cudaError_t launch_tiled(const Params& p, int q_tile, bool tf32, dim3 grid, cudaStream_t stream) {
  if constexpr (D == 32) {
    if (tf32) {
      using Lay = Tf32Layout;
      return launch_with_smem(attn_tf32_kernel, Lay::smem_bytes(p.split), Lay::smem_bytes(kMaxSplit), p, grid, stream);
    }
  }
  if (q_tile == 16) return launch_narrow<D, 16>(p, grid, stream);
  if (q_tile == 32) return launch_narrow<D, 32>(p, grid, stream);
  using Lay = WideLayout<D>;
  return launch_with_smem(attn_wide_kernel<D>, Lay::smem_bytes(p.split), Lay::smem_bytes(kMaxSplit), p, grid, stream);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

CacheAttentionPlan plan_cache_attention(int64_t batch, int64_t num_heads, int64_t n, int64_t cache_len,
                                        int64_t head_dim, bool aligned, int num_sms, bool tf32) {
  CacheAttentionPlan plan;
  plan.tiled = (head_dim == 32 || head_dim == 64) && aligned;
  plan.tf32 = tf32 && plan.tiled && head_dim == Tf32Layout::D && n > 16;
  constexpr int kWide = WideLayout<32>::QT;
  static_assert(Tf32Layout::QT == kWide, "the TF32 tile splits queries as the wide fp32 tile");
  const bool wide = batch * num_heads * ceil_div(n, kWide) >= 2 * static_cast<int64_t>(std::max(num_sms, 1));
  plan.q_tile = !plan.tiled ? 1 : n <= 16 ? 16 : (wide || plan.tf32) ? kWide : 32;
  // Blocks per key split; the live fraction of the cache is a device value, so size the splits for a
  // full cache: the largest split (fewer partials, less combine work) that still gives ~4 blocks per SM.
  const int64_t per_split = batch * num_heads * ceil_div(n, plan.q_tile);
  const int64_t target = 4 * static_cast<int64_t>(std::max(num_sms, 1));
  int64_t split = kChunk;
  while (split < kMaxSplit && split < cache_len && per_split * ceil_div(cache_len, 2 * split) >= target) split *= 2;
  plan.split = split;
  plan.num_splits = std::max<int64_t>(1, ceil_div(cache_len, split));
  const int64_t parts = batch * num_heads * n * plan.num_splits;
  plan.workspace_floats = plan.num_splits > 1 ? ml_offset(parts, head_dim) + 2 * parts : 0;
  return plan;
}

cudaError_t launch_cache_attention(const CacheAttentionPlan& plan, const float* q, const float* k_cache,
                                   const float* v_cache, const bool* key_valid, const int64_t* start, float* out,
                                   float* workspace, int64_t batch, int64_t num_heads, int64_t num_kv_heads, int64_t n,
                                   int64_t cache_len, int64_t head_dim, cudaStream_t stream) {
  const Params p = make_params(plan, q, k_cache, v_cache, key_valid, start, out, workspace, batch, num_heads,
                               num_kv_heads, n, cache_len, head_dim);
  const int64_t rows = batch * num_heads * n;

  const unsigned bhs = static_cast<unsigned>(batch * num_heads);
  const unsigned splits = static_cast<unsigned>(plan.num_splits);
  cudaError_t err;
  if (plan.tiled) {
    const dim3 grid(bhs, static_cast<unsigned>(ceil_div(n, plan.q_tile)), splits);
    err = head_dim == 32 ? launch_tiled<32>(p, plan.q_tile, plan.tf32, grid, stream)
                         : launch_tiled<64>(p, plan.q_tile, plan.tf32, grid, stream);
  } else {
    attn_generic_kernel<<<dim3(bhs, static_cast<unsigned>(n), splits), kThreads, 0, stream>>>(p);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess || plan.num_splits == 1) return err;
  const unsigned blocks = static_cast<unsigned>(ceil_div(rows, kThreads / 32));
  if (plan.tiled && head_dim == 32) {
    attn_combine_kernel<32><<<blocks, kThreads, 0, stream>>>(p, rows);
  } else if (plan.tiled && head_dim == 64) {
    attn_combine_kernel<64><<<blocks, kThreads, 0, stream>>>(p, rows);
  } else {
    attn_combine_generic_kernel<<<blocks, kThreads, 0, stream>>>(p, rows);
  }
  return cudaGetLastError();
}

}  // namespace autogaze_ext
