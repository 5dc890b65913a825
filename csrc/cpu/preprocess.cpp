// CPU kernel of preprocess (the oracle of the CUDA kernels), and the argument checks shared with the CUDA
// glue. Three passes, as Pillow and the model run them: horizontal resample (HWC, the frames' dtype),
// vertical resample fused with the processor's value transform (planar float32), bicubic to the model size.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <vector>

#include "ops.h"

namespace autogaze_ext {

void check_preprocess_inputs(const at::Tensor& frames, int64_t out_h, int64_t out_w, int64_t model_size,
                             at::ArrayRef<double> mean, at::ArrayRef<double> std) {
  TORCH_CHECK(frames.dim() == 4 && frames.size(3) == 3, "preprocess: frames must be (N, H, W, 3), got ",
              frames.sizes());
  TORCH_CHECK(frames.scalar_type() == at::kByte || frames.scalar_type() == at::kFloat,
              "preprocess: frames must be uint8 or float32, got ", frames.scalar_type());
  TORCH_CHECK(frames.size(1) >= 1 && frames.size(2) >= 1, "preprocess: frames must not be empty");
  constexpr int64_t kMaxSide = int64_t{1} << 20;
  TORCH_CHECK(frames.size(1) <= kMaxSide && frames.size(2) <= kMaxSide, "preprocess: frames too large");
  TORCH_CHECK(out_h >= 1 && out_w >= 1 && out_h <= kMaxSide && out_w <= kMaxSide,
              "preprocess: out_h and out_w must be in [1, 2^20]");
  TORCH_CHECK(model_size >= 0 && model_size <= kMaxSide, "preprocess: model_size must be in [0, 2^20]");
  TORCH_CHECK(mean.size() == 3 && std.size() == 3, "preprocess: mean and std must hold 3 values");
  for (double m : mean) TORCH_CHECK(std::isfinite(m), "preprocess: mean must be finite, got ", m);
  for (double s : std) {
    TORCH_CHECK(std::isfinite(s) && s != 0.0, "preprocess: std must be finite and non-zero, got ", s);
  }
}

namespace {

// Pillow's coefficients of one axis: (xmin, count) per output sample and ksize taps each.
template <typename Kt>
struct PilTable {
  PilAxis axis;
  std::vector<int32_t> bounds;
  std::vector<Kt> k;
  PilTable(int64_t in, int64_t out) : axis(pil_axis(in, out)), bounds(2 * out), k(out * axis.ksize) {
    for (int32_t xx = 0; xx < axis.out; ++xx)
      pil_coeffs(axis, xx, bounds[2 * xx], bounds[2 * xx + 1], k.data() + static_cast<int64_t>(xx) * axis.ksize);
  }
};

// T: uint8_t with int32_t taps, or float with double taps (see pil_resample3).
template <typename T, typename Kt>
void preprocess_impl(const at::Tensor& frames, const at::Tensor& processed, const at::Tensor& model_input,
                     double rescale, bool offset, const float mean[3], const float std[3]) {
  const int64_t N = frames.size(0), H = frames.size(1), W = frames.size(2);
  const int64_t OH = processed.size(2), OW = processed.size(3);
  const T* src = frames.const_data_ptr<T>();

  // Horizontal pass, skipped like Pillow when the width is unchanged.
  at::Tensor tmp;
  const T* rows = src;
  if (OW != W) {
    tmp = at::empty({N, H, OW, 3}, frames.options());
    const PilTable<Kt> tab(W, OW);
    T* dst = tmp.data_ptr<T>();
    at::parallel_for(0, N * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t xx = 0; xx < OW; ++xx) {
          const int32_t xmin = tab.bounds[2 * xx], count = tab.bounds[2 * xx + 1];
          pil_resample3(src + (r * W + xmin) * 3, 3, tab.k.data() + xx * tab.axis.ksize, count,
                        dst + (r * OW + xx) * 3);
        }
      }
    });
    rows = tmp.const_data_ptr<T>();
  }

  // Vertical pass (identity taps when the height is unchanged) and the value transform.
  const PilTable<Kt> tab(H, OH);
  float* out = processed.data_ptr<float>();
  at::parallel_for(0, N * OH, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / OH, yy = r - n * OH;
      const int32_t ymin = tab.bounds[2 * yy], count = tab.bounds[2 * yy + 1];
      const Kt* k = tab.k.data() + yy * tab.axis.ksize;
      for (int64_t xx = 0; xx < OW; ++xx) {
        T v[3];
        pil_resample3(rows + ((n * H + ymin) * OW + xx) * 3, OW * 3, k, count, v);
        for (int c = 0; c < 3; ++c)
          out[((n * 3 + c) * OH + yy) * OW + xx] =
              processor_value(static_cast<float>(v[c]), rescale, offset, mean[c], std[c]);
      }
    }
  });

  if (!model_input.defined() || model_input.numel() == 0) return;
  const int64_t S = model_input.size(2);
  std::vector<CubicTaps> ty(S), tx(S);
  for (int64_t i = 0; i < S; ++i) {
    ty[i] = cubic_taps(OH, S, i);
    tx[i] = cubic_taps(OW, S, i);
  }
  float* m = model_input.data_ptr<float>();
  at::parallel_for(0, N * 3 * S, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / S, y = r - plane * S;
      for (int64_t x = 0; x < S; ++x) m[r * S + x] = bicubic_sample(out + plane * OH * OW, OW, ty[y], tx[x]);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> preprocess_cpu(const at::Tensor& frames_in, int64_t out_h, int64_t out_w,
                                                  int64_t model_size, double rescale, bool offset,
                                                  at::ArrayRef<double> mean, at::ArrayRef<double> std) {
  check_preprocess_inputs(frames_in, out_h, out_w, model_size, mean, std);
  check_finite_arg("preprocess", "rescale", rescale, true);
  TORCH_CHECK(frames_in.device().is_cpu(), "preprocess_cpu expects CPU tensors");
  const at::Tensor frames = frames_in.contiguous();
  const int64_t N = frames.size(0);
  const auto fopt = frames.options().dtype(at::kFloat);
  at::Tensor processed = at::empty({N, 3, out_h, out_w}, fopt);
  at::Tensor model_input = model_size > 0 ? at::empty({N, 3, model_size, model_size}, fopt) : at::empty({0}, fopt);
  const float m[3] = {static_cast<float>(mean[0]), static_cast<float>(mean[1]), static_cast<float>(mean[2])};
  const float s[3] = {static_cast<float>(std[0]), static_cast<float>(std[1]), static_cast<float>(std[2])};
  if (frames.scalar_type() == at::kByte)
    preprocess_impl<uint8_t, int32_t>(frames, processed, model_input, rescale, offset, m, s);
  else
    preprocess_impl<float, double>(frames, processed, model_input, rescale, offset, m, s);
  return {processed, model_input};
}

}  // namespace autogaze_ext
