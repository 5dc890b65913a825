// Launcher of the gaze_decode CUDA kernel on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/gaze_layout.h"

namespace autogaze_ext {

// mask: (B, T, V) float32, coords: (B, N, 4) int32; both fully written on `stream`.
cudaError_t launch_gaze_decode(const int64_t* gazing_pos, const bool* if_padded, int64_t batch, int64_t num_slots,
                               int64_t num_frames, const ScaleLayout& layout, float* mask, int32_t* coords,
                               cudaStream_t stream);

}  // namespace autogaze_ext
