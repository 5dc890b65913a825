// select_step on the GPU (spec §5.4): one decode step's token choice plus the frame-state update.
//
// Kernel 1, one block per row, one warp per head (32*min(K, 16) threads):
//   A. every warp stages its heads' scores (logits, -inf where banned: masked_fill) into shared memory
//      and, on the way, each lane's first maximum over its slots v = lane + 32*j (key, index);
//   B. warp 0 picks the heads in order: a warp argmax is two redux instructions over the cached lane
//      bests (max key, then min index among the lanes holding it); a pick is written as -inf into the
//      later heads' rows (the in-chunk ban) and only a lane whose cached best was picked rescans;
//   C. warp 0 applies cap / finished rows / task-loss stop, writes chunk, fids, banned, unfinished.
// Kernel 2, one block: any(unfinished) over the batch, then n, first, active. It runs after kernel 1 so
// that no row can read an updated n / first / active. For B == 1 kernel 1 does it itself (one launch).
// Kernel 2 is launched with programmatic dependent launch (sm_90): it is scheduled while kernel 1 runs
// and waits (griddepcontrol.wait) for kernel 1's completion and memory before touching anything.
#include <cuda_runtime.h>

#include <climits>
#include <cstdlib>

#include "cuda/select_step.h"

namespace autogaze_ext {
namespace {

constexpr int kMaxWarps = 16;  // warps per row block (one per head up to 16 heads)
constexpr int kBatch = 12;     // loads in flight per lane while staging a head (V <= 384 in one go)
constexpr size_t kDefaultSmem = 48 * 1024;

// Order-preserving float -> uint32 with torch.argmax's order: NaN (either sign) above everything and
// -0 == +0, so that equal keys are exactly argmax ties (resolved to the smallest index).
__device__ __forceinline__ uint32_t score_key(float x) {
  if (x != x) return 0xFFFFFFFFu;
  if (x == 0.0f) x = 0.0f;
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// int64 arithmetic on device-held values wraps like torch's instead of being undefined on overflow.
__device__ __forceinline__ int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Shared memory of a row block: cached lane bests (K*32 keys, K*32 indices), picks (K), loss_pred (K),
// then the K*V scores when they live in shared memory.
size_t row_smem_bytes(int K, int V, bool shared_scores) {
  return static_cast<size_t>(K) * (32 * 8 + 8) + (shared_scores ? static_cast<size_t>(K) * V * 4 : 0);
}

template <bool kSharedScores>
__global__ void __launch_bounds__(32 * kMaxWarps)
    select_rows_kernel(SelectStepArgs a, float* __restrict__ global_scores, bool fuse_scalars) {
  extern __shared__ __align__(16) unsigned char smem[];
  pdl_launch_dependents();  // let kernel 2 get scheduled; it still waits for this grid to finish

  const int K = static_cast<int>(a.heads), V = static_cast<int>(a.vocab);
  const int64_t F = a.fids_cols, b = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  uint32_t* cache_key = reinterpret_cast<uint32_t*>(smem);
  int* cache_idx = reinterpret_cast<int*>(cache_key + K * 32);
  int* picks = cache_idx + K * 32;
  float* loss = reinterpret_cast<float*>(picks + K);
  float* scores = kSharedScores ? loss + K : global_scores + b * K * V;

  // Scalars for warp 0's epilogue, loaded first so their latency hides behind the staging.
  int64_t n = 0, cap = 0;
  float req = 0.0f;
  bool unf = false, first = false, active = false, has_req = false;
  if (warp == 0) {
    n = *a.n;
    cap = *a.cap;
    req = a.req[b];
    unf = a.unfinished[b];
    first = *a.first;
    active = *a.active;
    has_req = *a.has_req;
  }
  for (int k = threadIdx.x; k < K; k += blockDim.x) loss[k] = a.loss_pred[b * K + k];

  // A. stage and cache. Banned ids become -inf exactly like masked_fill (so -inf ties keep torch's order).
  const bool* ban = a.banned + b * V;  // plain loads: this block rewrites the row at the end
  for (int k = warp; k < K; k += num_warps) {
    const float* src = a.logits + (b * K + k) * V;
    float* dst = scores + k * V;
    uint32_t best = 0;  // below every real key: a lane without slots (V < 32) never wins
    int best_idx = INT_MAX;
    for (int v0 = 0; v0 < V; v0 += 32 * kBatch) {
      float x[kBatch];
      bool banned[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int v = v0 + lane + 32 * i;
        if (v < V) {
          x[i] = __ldg(src + v);
          banned[i] = ban[v];
        }
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int v = v0 + lane + 32 * i;
        if (v < V) {
          const float s = banned[i] ? -INFINITY : x[i];
          dst[v] = s;
          const uint32_t key = score_key(s);
          if (key > best) {  // strict: the first maximum of the lane's ascending slots
            best = key;
            best_idx = v;
          }
        }
      }
    }
    cache_key[k * 32 + lane] = best;
    cache_idx[k * 32 + lane] = best_idx;
  }
  __syncthreads();
  if (warp != 0) return;

  // B. heads in order. Removing slots that are not a lane's first maximum cannot change it, so a lane
  // rescans only when its cached best was picked by an earlier head (its score now reads -inf).
  uint32_t next_key = cache_key[lane];  // the cache does not depend on picks: read one head ahead
  int next_idx = cache_idx[lane];
  for (int k = 0; k < K; ++k) {
    const float* row = scores + k * V;
    uint32_t key = next_key;
    int idx = next_idx;
    if (k + 1 < K) {
      next_key = cache_key[(k + 1) * 32 + lane];
      next_idx = cache_idx[(k + 1) * 32 + lane];
    }
    if (idx != INT_MAX && score_key(row[idx]) != key) {
      key = 0;
      idx = INT_MAX;
      for (int v = lane; v < V; v += 32) {
        const uint32_t s = score_key(row[v]);
        if (s > key) {
          key = s;
          idx = v;
        }
      }
    }
    const uint32_t top = __reduce_max_sync(0xFFFFFFFFu, key);
    const int tok = static_cast<int>(
        __reduce_min_sync(0xFFFFFFFFu, key == top ? static_cast<uint32_t>(idx) : 0xFFFFFFFFu));
    // tok < V: lane 0 always holds slot 0, whose key (>= score_key(-inf)) beats the empty lanes' 0.
    if (lane == 0) picks[k] = tok;
    for (int i = k + 1 + lane; i < K; i += 32) scores[i * V + tok] = -INFINITY;  // in-chunk ban
    __syncwarp();
  }

  // C. steps 2-8 of the spec, one head per lane. Every row reads the old n / first / active.
  const int64_t room = wrap_add(cap, -n);
  const int64_t k_max = active ? (room < 0 ? 0 : (room > K ? K : room)) : 0;
  const int64_t eos = V - 1;
  bool any_met = false;
  for (int k = lane; k < K; k += 32) {
    const bool in_chunk = k < k_max;
    const bool met = has_req && loss[k] <= req && in_chunk && !(first && k == 0);
    const int64_t c = (unf && in_chunk && !met) ? static_cast<int64_t>(picks[k]) : eos;
    any_met |= met;
    a.chunk[b * K + k] = c;
    const int64_t col = wrap_add(n, k);
    if (col >= 0 && col < F) a.fids[b * F + col] = c;  // never past the frame's id buffer
    a.banned[b * V + c] = true;
  }
  any_met = __any_sync(0xFFFFFFFFu, any_met);
  const bool hit_cap = wrap_add(n, K) >= cap;
  const bool unf_new = unf && !any_met && !hit_cap && active;
  if (lane == 0) {
    a.unfinished[b] = unf_new;
    if (fuse_scalars) {  // single row: its own any(unfinished); this block read the scalars above
      *a.n = wrap_add(n, k_max);
      *a.first = first && !active;
      *a.active = active && unf_new;
    }
  }
}

// Step 9: runs after every row (stream order), so it alone writes the scalars the rows read.
__global__ void __launch_bounds__(256)
    select_scalars_kernel(const bool* __restrict__ unfinished, int64_t batch, const int64_t* __restrict__ cap,
                          int64_t heads, int64_t* n, bool* first, bool* active) {
  pdl_wait();  // kernel 1 complete and its writes visible (a no-op without programmatic launch)
  bool any = false;
  for (int64_t i = threadIdx.x; i < batch; i += blockDim.x) any |= unfinished[i];
  any = __syncthreads_or(any);
  if (threadIdx.x == 0) {
    const int64_t n0 = *n;
    const bool act = *active;
    const int64_t room = wrap_add(*cap, -n0);
    const int64_t k_max = act ? (room < 0 ? 0 : (room > heads ? heads : room)) : 0;
    *n = wrap_add(n0, k_max);
    *first = *first && !act;
    *active = act && any;
  }
}

int device_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  return cudaDeviceGetAttribute(&value, attr, device) == cudaSuccess ? value : 0;
}

bool use_pdl(int device) {
  static const bool disabled = [] {
    const char* e = std::getenv("AUTOGAZE_EXT_NO_PDL");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
  }();
  return !disabled && device_attribute(cudaDevAttrComputeCapabilityMajor, device) >= 9;
}

bool scores_fit_in_shared(int64_t heads, int64_t vocab, int device) {
  const size_t need = row_smem_bytes(static_cast<int>(heads), static_cast<int>(vocab), true);
  return need <= kDefaultSmem ||
         need <= static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
}

template <typename Kernel>
cudaError_t launch_rows(Kernel kernel, int blocks, int threads, size_t smem, const SelectStepArgs& a,
                        float* workspace, bool fuse, cudaStream_t stream) {
  if (smem > kDefaultSmem) {  // host-side attribute, no stream work: fine during graph capture
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<blocks, threads, smem, stream>>>(a, workspace, fuse);
  return cudaGetLastError();
}

}  // namespace

int64_t select_step_workspace_floats(int64_t batch, int64_t heads, int64_t vocab, int device) {
  return scores_fit_in_shared(heads, vocab, device) ? 0 : batch * heads * vocab;
}

cudaError_t launch_select_step(const SelectStepArgs& a, float* workspace, int device, cudaStream_t stream) {
  // The torch glue checks K in [1, 128], V >= 1 and K*V < 2^30; re-check what the kernels rely on.
  if (a.heads < 1 || a.heads > 128 || a.vocab < 1 || a.heads * a.vocab >= (int64_t{1} << 30) ||
      a.batch < 0 || a.batch > INT_MAX || a.fids_cols < 0) {
    return cudaErrorInvalidValue;
  }
  const int K = static_cast<int>(a.heads), V = static_cast<int>(a.vocab);
  const bool fuse = a.batch == 1;
  if (a.batch > 0) {
    const int threads = 32 * (K < kMaxWarps ? K : kMaxWarps);
    const int blocks = static_cast<int>(a.batch);
    const cudaError_t err =
        scores_fit_in_shared(K, V, device)
            ? launch_rows(select_rows_kernel<true>, blocks, threads, row_smem_bytes(K, V, true), a, nullptr, fuse,
                          stream)
            : (workspace == nullptr ? cudaErrorInvalidValue
                                    : launch_rows(select_rows_kernel<false>, blocks, threads,
                                                  row_smem_bytes(K, V, false), a, workspace, fuse, stream));
    if (err != cudaSuccess || fuse) return err;
  }
  // B == 0 still updates the scalars (any over no rows is false), like the reference.
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(1);
  cfg.blockDim = dim3(256);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = (a.batch > 0 && use_pdl(device)) ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, select_scalars_kernel, static_cast<const bool*>(a.unfinished), a.batch, a.cap,
                            a.heads, a.n, a.first, a.active);
}

}  // namespace autogaze_ext
