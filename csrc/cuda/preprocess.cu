// preprocess on the GPU, in Pillow's and the model's order: (1) the coefficient tables of both axes are
// computed on the device (in double, unfused, so they equal Pillow's bit for bit; no host->device copy,
// so the op is graph-capturable), (2) horizontal pass into an HWC buffer of the frames' dtype, skipped
// when the width is unchanged, (3) vertical pass fused with the processor's value transform, written
// planar, (4) the model's bicubic resize. One thread per output pixel in every pass.
#include <algorithm>

#include "common/resample.h"
#include "cuda/preprocess.h"

namespace autogaze_ext {
namespace {

constexpr int kThreads = 256;

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// Byte offsets of the pieces of the workspace.
struct Workspace {
  PilAxis h, v;
  size_t bounds_h, k_h, bounds_v, k_v, tmp, total;
};

Workspace plan(int64_t N, int64_t H, int64_t W, int64_t OH, int64_t OW, bool is_uint8) {
  Workspace w{};
  w.h = pil_axis(W, OW);
  w.v = pil_axis(H, OH);
  const size_t ksz = is_uint8 ? sizeof(int32_t) : sizeof(double);
  const size_t px = is_uint8 ? 3 * sizeof(uint8_t) : 3 * sizeof(float);
  size_t at = 0;
  w.bounds_h = at;
  at += align16(2 * OW * sizeof(int32_t));
  w.k_h = at;
  at += align16(OW * w.h.ksize * ksz);
  w.bounds_v = at;
  at += align16(2 * OH * sizeof(int32_t));
  w.k_v = at;
  at += align16(OH * w.v.ksize * ksz);
  w.tmp = at;
  if (OW != W) at += align16(static_cast<size_t>(N) * H * OW * px);
  w.total = at;
  return w;
}

template <typename Kt>
__global__ void coeffs_kernel(PilAxis a, int32_t* __restrict__ bounds, Kt* __restrict__ k) {
  const int32_t xx = blockIdx.x * blockDim.x + threadIdx.x;
  if (xx >= a.out) return;
  pil_coeffs(a, xx, bounds[2 * xx], bounds[2 * xx + 1], k + static_cast<int64_t>(xx) * a.ksize);
}

// Grid: x over output columns, y over (frame, source row) with a stride loop (gridDim.y <= 65535).
template <typename T, typename Kt>
__global__ void __launch_bounds__(kThreads) horizontal_kernel(const T* __restrict__ src, int64_t rows, int64_t W,
                                                              int64_t OW, int32_t ksize,
                                                              const int32_t* __restrict__ bounds,
                                                              const Kt* __restrict__ k, T* __restrict__ dst) {
  const int64_t xx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (xx >= OW) return;
  const int32_t xmin = __ldg(bounds + 2 * xx), count = __ldg(bounds + 2 * xx + 1);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    pil_resample3(src + (r * W + xmin) * 3, 3, k + xx * ksize, count, dst + (r * OW + xx) * 3);
}

// Vertical pass and value transform; rows of `src` are OW pixels wide.
template <typename T, typename Kt>
__global__ void __launch_bounds__(kThreads) vertical_kernel(const T* __restrict__ src, int64_t N, int64_t H,
                                                            int64_t OH, int64_t OW, int32_t ksize,
                                                            const int32_t* __restrict__ bounds,
                                                            const Kt* __restrict__ k, double rescale, bool offset,
                                                            float m0, float m1, float m2, float s0, float s1,
                                                            float s2, float* __restrict__ out) {
  const int64_t xx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (xx >= OW) return;
  const float mean[3] = {m0, m1, m2}, std[3] = {s0, s1, s2};
  for (int64_t r = blockIdx.y; r < N * OH; r += gridDim.y) {
    const int64_t n = r / OH, yy = r - n * OH;
    const int32_t ymin = __ldg(bounds + 2 * yy), count = __ldg(bounds + 2 * yy + 1);
    T v[3];
    pil_resample3(src + ((n * H + ymin) * OW + xx) * 3, OW * 3, k + yy * ksize, count, v);
#pragma unroll
    for (int c = 0; c < 3; ++c)
      out[((n * 3 + c) * OH + yy) * OW + xx] = processor_value(static_cast<float>(v[c]), rescale, offset, mean[c], std[c]);
  }
}

__global__ void __launch_bounds__(kThreads) bicubic_kernel(const float* __restrict__ src, int64_t planes, int64_t H,
                                                           int64_t W, int64_t S, float* __restrict__ out) {
  const int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (x >= S) return;
  const CubicTaps tx = cubic_taps(W, S, x);
  for (int64_t r = blockIdx.y; r < planes * S; r += gridDim.y) {
    const int64_t plane = r / S, y = r - plane * S;
    out[r * S + x] = bicubic_sample(src + plane * H * W, W, cubic_taps(H, S, y), tx);
  }
}

dim3 grid_2d(int64_t cols, int64_t rows) {
  return dim3(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
              static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
}

template <typename T, typename Kt>
cudaError_t launch_typed(const PreprocessArgs& a, cudaStream_t stream) {
  const Workspace w = plan(a.N, a.H, a.W, a.out_h, a.out_w, a.is_uint8);
  char* ws = static_cast<char*>(a.workspace);
  auto* bounds_h = reinterpret_cast<int32_t*>(ws + w.bounds_h);
  auto* k_h = reinterpret_cast<Kt*>(ws + w.k_h);
  auto* bounds_v = reinterpret_cast<int32_t*>(ws + w.bounds_v);
  auto* k_v = reinterpret_cast<Kt*>(ws + w.k_v);
  const T* frames = static_cast<const T*>(a.frames);

  coeffs_kernel<Kt><<<static_cast<unsigned>((a.out_h + 127) / 128), 128, 0, stream>>>(w.v, bounds_v, k_v);
  const T* rows = frames;
  if (a.out_w != a.W) {  // Pillow skips the horizontal pass for an unchanged width
    coeffs_kernel<Kt><<<static_cast<unsigned>((a.out_w + 127) / 128), 128, 0, stream>>>(w.h, bounds_h, k_h);
    T* tmp = reinterpret_cast<T*>(ws + w.tmp);
    horizontal_kernel<T, Kt><<<grid_2d(a.out_w, a.N * a.H), kThreads, 0, stream>>>(frames, a.N * a.H, a.W, a.out_w,
                                                                                  w.h.ksize, bounds_h, k_h, tmp);
    rows = tmp;
  }
  // An unchanged height gives identity taps (one weight of 1): the same values Pillow's skipped pass keeps.
  vertical_kernel<T, Kt><<<grid_2d(a.out_w, a.N * a.out_h), kThreads, 0, stream>>>(
      rows, a.N, a.H, a.out_h, a.out_w, w.v.ksize, bounds_v, k_v, a.rescale, a.offset, a.mean[0], a.mean[1],
      a.mean[2], a.std[0], a.std[1], a.std[2], a.processed);
  if (a.model_size > 0 && a.model_input != nullptr)
    bicubic_kernel<<<grid_2d(a.model_size, a.N * 3 * a.model_size), kThreads, 0, stream>>>(
        a.processed, a.N * 3, a.out_h, a.out_w, a.model_size, a.model_input);
  return cudaGetLastError();
}

}  // namespace

size_t preprocess_workspace_bytes(int64_t N, int64_t H, int64_t W, int64_t out_h, int64_t out_w, bool is_uint8) {
  return plan(N, H, W, out_h, out_w, is_uint8).total;
}

cudaError_t launch_preprocess(const PreprocessArgs& a, cudaStream_t stream) {
  if (a.N == 0) return cudaSuccess;
  return a.is_uint8 ? launch_typed<uint8_t, int32_t>(a, stream) : launch_typed<float, double>(a, stream);
}

}  // namespace autogaze_ext
