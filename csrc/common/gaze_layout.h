// Multi-scale gaze-token layout (spec §3), shared by the CPU and CUDA kernels.
// Torch-free so that .cu files can include it without pulling in ATen.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define AG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define AG_HOST_DEVICE inline
#endif

namespace autogaze_ext {

// Upper bound on scales per frame; lets kernels take the layout by value (no device copy).
constexpr int kMaxScales = 8;

// Scale s owns the frame-local ids [offset[s], offset[s+1]), row-major on a grid[s] x grid[s] grid.
struct ScaleLayout {
  int32_t num_scales;
  int32_t grid[kMaxScales];
  int32_t offset[kMaxScales + 1];  // offset[num_scales] == tokens per frame (V)
};

AG_HOST_DEVICE int64_t tokens_per_frame(const ScaleLayout& L) { return L.offset[L.num_scales]; }

// Decodes a video-global id (local + V*t) into (frame, scale, row, col).
// Returns false and leaves `out` untouched when the id lies outside [0, num_frames*V).
AG_HOST_DEVICE bool decode_gaze_id(int64_t id, int64_t num_frames, const ScaleLayout& L, int32_t out[4]) {
  const int64_t V = tokens_per_frame(L);
  if (id < 0 || id >= num_frames * V) return false;
  const int64_t t = id / V;
  const int32_t local = static_cast<int32_t>(id - t * V);
  int s = 0;
  while (local >= L.offset[s + 1]) ++s;  // few scales: a linear scan beats a search
  const int32_t k = local - L.offset[s];
  out[0] = static_cast<int32_t>(t);
  out[1] = s;
  out[2] = k / L.grid[s];
  out[3] = k % L.grid[s];
  return true;
}

}  // namespace autogaze_ext
