// The Python module autogaze_ext._C and the schema of every op (torch.ops.autogaze_ext.*).
// Kernels register themselves per backend with TORCH_LIBRARY_IMPL in cpu/ and cuda/.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef AUTOGAZE_EXT_WITH_CUDA
#define AUTOGAZE_EXT_WITH_CUDA 0
#endif
#ifndef AUTOGAZE_EXT_TORCH_VERSION
#define AUTOGAZE_EXT_TORCH_VERSION ""
#endif
#ifndef AUTOGAZE_EXT_CUDA_VERSION
#define AUTOGAZE_EXT_CUDA_VERSION ""
#endif
#ifndef AUTOGAZE_EXT_CUDA_ARCH_LIST
#define AUTOGAZE_EXT_CUDA_ARCH_LIST ""
#endif

TORCH_LIBRARY(autogaze_ext, m) {
  // Video-global gaze ids -> (B, T, V) float mask and (B, N, 4) int32 (frame, scale, row, col); spec §3.2-3.3.
  m.def("gaze_decode(Tensor gazing_pos, Tensor if_padded, int num_frames, int[] grids) -> (Tensor mask, Tensor coords)");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "autogaze_ext compiled ops; call them through autogaze_ext._ops or torch.ops.autogaze_ext";
  m.def("has_cuda", [] { return AUTOGAZE_EXT_WITH_CUDA != 0; }, "True when the CUDA kernels were compiled in");
  m.def("build_info", [] {
    pybind11::dict d;
    d["cuda"] = AUTOGAZE_EXT_WITH_CUDA != 0;
    d["torch_version"] = AUTOGAZE_EXT_TORCH_VERSION;
    d["cuda_version"] = AUTOGAZE_EXT_CUDA_VERSION;
    d["cuda_arch_list"] = AUTOGAZE_EXT_CUDA_ARCH_LIST;
    return d;
  }, "How this module was built");
}
