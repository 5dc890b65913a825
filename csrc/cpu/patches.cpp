// CPU kernels of multiscale_patches and gather_patches (the oracles of the CUDA kernels), and the argument
// checks shared with the CUDA glue. Sampling arithmetic: common/resample.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <optional>
#include <vector>

#include "ops.h"

namespace autogaze_ext {

void check_patch_frames(const at::Tensor& frames, int64_t dims, const char* op) {
  TORCH_CHECK(frames.dim() == dims, op, ": frames must be ", dims == 4 ? "(N, C, H, W)" : "(B, T, C, H, W)",
              ", got ", frames.sizes());
  TORCH_CHECK(frames.scalar_type() == at::kFloat, op, ": frames must be float32, got ", frames.scalar_type());
  for (int64_t d = 0; d < dims; ++d) TORCH_CHECK(d < dims - 3 || frames.size(d) >= 1, op, ": frames has an empty dim");
  TORCH_CHECK(frames.size(-1) < (int64_t{1} << 30) && frames.size(-2) < (int64_t{1} << 30), op,
              ": frames too large");
}

// Checks the gather arguments beyond the frames; returns the output width (D with weight, else C*p*p).
int64_t check_gather_patches_inputs(const at::Tensor& frames, const at::Tensor& gazing_pos,
                                    const at::Tensor& if_padded, const PatchLayout& L,
                                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                    const std::optional<at::Tensor>& pos_table) {
  check_patch_frames(frames, 5, "gather_patches");
  TORCH_CHECK(frames.size(1) >= 1, "gather_patches: frames must hold at least one frame per video");
  TORCH_CHECK(gazing_pos.dim() == 2 && gazing_pos.scalar_type() == at::kLong,
              "gather_patches: gazing_pos must be (B, N) int64");
  TORCH_CHECK(if_padded.scalar_type() == at::kBool && if_padded.sizes() == gazing_pos.sizes(),
              "gather_patches: if_padded must be bool and shaped like gazing_pos");
  TORCH_CHECK(gazing_pos.size(0) == frames.size(0), "gather_patches: gazing_pos and frames disagree on B");
  TORCH_CHECK(gazing_pos.device() == frames.device() && if_padded.device() == frames.device(),
              "gather_patches: gazing_pos and if_padded must be on the frames' device");
  const int64_t K = frames.size(2) * L.patch * L.patch;
  const bool embed = weight.has_value();
  TORCH_CHECK(embed || (!bias.has_value() && !pos_table.has_value()),
              "gather_patches: bias and pos_table need weight");
  if (!embed) return K;
  const at::ScalarType dt = weight->scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "gather_patches: weight must be float32, bfloat16 or float16");
  TORCH_CHECK(weight->dim() == 2 && weight->size(1) == K && weight->size(0) >= 1,
              "gather_patches: weight must be (D, C*patch*patch)");
  TORCH_CHECK(weight->is_contiguous() && weight->device() == frames.device(),
              "gather_patches: weight must be contiguous and on the frames' device");
  const int64_t D = weight->size(0);
  for (const auto* t : {&bias, &pos_table}) {
    if (!t->has_value()) continue;
    const at::Tensor& x = **t;
    TORCH_CHECK(x.scalar_type() == dt && x.is_contiguous() && x.device() == frames.device(),
                "gather_patches: bias and pos_table must be contiguous, of weight's dtype, on the frames' device");
  }
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == D), "gather_patches: bias must be (D,)");
  TORCH_CHECK(!pos_table.has_value() ||
                  (pos_table->dim() == 2 && pos_table->size(0) == tokens_per_frame(L.tokens) && pos_table->size(1) == D),
              "gather_patches: pos_table must be (V, D)");
  return D;
}

namespace {

// Taps of every output row and column of every scale: taps[s] = (rows: grid*patch, cols: grid*patch).
struct ScaleTaps {
  std::vector<CubicTaps> y, x;
};

std::vector<ScaleTaps> make_taps(const PatchLayout& L, int64_t H, int64_t W) {
  std::vector<ScaleTaps> taps(L.tokens.num_scales);
  for (int s = 0; s < L.tokens.num_scales; ++s) {
    const int64_t n = static_cast<int64_t>(L.tokens.grid[s]) * L.patch;
    for (int64_t i = 0; i < n; ++i) {
      taps[s].y.push_back(cubic_taps(H, L.scale[s], i));
      taps[s].x.push_back(cubic_taps(W, L.scale[s], i));
    }
  }
  return taps;
}

// Patch `local` of one (C, H, W) frame, written as C*p*p floats (channel, row, column).
void extract_patch(const float* frame, int64_t C, int64_t H, int64_t W, const PatchLayout& L,
                   const std::vector<ScaleTaps>& taps, int32_t local, float* out) {
  int32_t s, row, col;
  patch_of_token(L, local, s, row, col);
  const int64_t p = L.patch;
  const bool identity = H == L.scale[s] && W == L.scale[s];  // bicubic at scale 1 is a copy
  const CubicTaps* ty = taps[s].y.data() + row * p;
  const CubicTaps* tx = taps[s].x.data() + col * p;
  for (int64_t c = 0; c < C; ++c) {
    const float* plane = frame + c * H * W;
    for (int64_t ky = 0; ky < p; ++ky) {
      if (identity) {
        const float* src = plane + (row * p + ky) * W + col * p;
        for (int64_t kx = 0; kx < p; ++kx) *out++ = src[kx];
      } else {
        for (int64_t kx = 0; kx < p; ++kx) *out++ = bicubic_sample(plane, W, ty[ky], tx[kx]);
      }
    }
  }
}

}  // namespace

at::Tensor multiscale_patches_cpu(const at::Tensor& frames_in, at::IntArrayRef scales, int64_t patch) {
  check_patch_frames(frames_in, 4, "multiscale_patches");
  TORCH_CHECK(frames_in.device().is_cpu(), "multiscale_patches_cpu expects CPU tensors");
  const PatchLayout L = make_patch_layout(scales, patch);
  const at::Tensor frames = frames_in.contiguous();
  const int64_t N = frames.size(0), C = frames.size(1), H = frames.size(2), W = frames.size(3);
  const int64_t V = tokens_per_frame(L.tokens), K = C * patch * patch;
  at::Tensor out = at::empty({N, V, K}, frames.options());
  const auto taps = make_taps(L, H, W);
  const float* src = frames.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, N * V, std::max<int64_t>(1, 16384 / K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / V;
      extract_patch(src + n * C * H * W, C, H, W, L, taps, static_cast<int32_t>(i - n * V), dst + i * K);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gather_patches_cpu(const at::Tensor& frames_in, const at::Tensor& gazing_pos,
                                                      const at::Tensor& if_padded, at::IntArrayRef scales,
                                                      int64_t patch, const std::optional<at::Tensor>& weight,
                                                      const std::optional<at::Tensor>& bias,
                                                      const std::optional<at::Tensor>& pos_table,
                                                      int64_t packed_rows) {
  const PatchLayout L = make_patch_layout(scales, patch);
  const int64_t width = check_gather_patches_inputs(frames_in, gazing_pos, if_padded, L, weight, bias, pos_table);
  TORCH_CHECK(frames_in.device().is_cpu(), "gather_patches_cpu expects CPU tensors");
  const at::Tensor frames = frames_in.contiguous();
  const at::Tensor pos = gazing_pos.contiguous(), pad = if_padded.contiguous();
  const int64_t B = frames.size(0), T = frames.size(1), C = frames.size(2), H = frames.size(3), W = frames.size(4);
  const int64_t N = pos.size(1), V = tokens_per_frame(L.tokens), K = C * patch * patch;
  const bool packed = packed_rows >= 0;
  const int64_t rows = packed ? packed_rows : B * N;

  // Destination row of every slot (-1: not written). Padded slots, and ids outside [0, T*V) which the
  // wrapper reports when validating, count as padded: in the per-slot layout they take the official
  // dummy (token 0 of the row's video); packed, they are dropped. Rows past the real total stay zero.
  const int64_t* ids = pos.const_data_ptr<int64_t>();
  const bool* padded = pad.const_data_ptr<bool>();
  at::Tensor cu = at::empty({B + 1}, pos.options().dtype(at::kInt));
  int32_t* cu_p = cu.data_ptr<int32_t>();
  std::vector<int64_t> dest(B * N), token(B * N);
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    cu_p[b] = static_cast<int32_t>(packed ? std::min(total, rows) : total);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = b * N + n;
      const bool valid = !padded[i] && ids[i] >= 0 && ids[i] < T * V;
      token[i] = valid ? ids[i] : 0;
      dest[i] = packed ? (valid && total < rows ? total : -1) : i;
      total += valid;
    }
  }
  cu_p[B] = static_cast<int32_t>(packed ? std::min(total, rows) : total);

  at::Tensor patches = at::zeros({rows, K}, frames.options());
  at::Tensor out;  // with weight: pos + bias rows, then the product is added
  if (weight.has_value()) out = at::zeros({rows, width}, frames.options());
  const auto taps = make_taps(L, H, W);
  const float* src = frames.const_data_ptr<float>();
  float* pp = patches.data_ptr<float>();
  const at::Tensor pos_f = pos_table.has_value() ? pos_table->to(at::kFloat) : at::Tensor();
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat) : at::Tensor();
  at::parallel_for(0, B * N, std::max<int64_t>(1, 16384 / K), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (dest[i] < 0) continue;
      const int64_t b = i / N, t = token[i] / V, local = token[i] - t * V;
      extract_patch(src + (b * T + t) * C * H * W, C, H, W, L, taps, static_cast<int32_t>(local), pp + dest[i] * K);
      if (!out.defined()) continue;
      float* o = out.data_ptr<float>() + dest[i] * width;
      const float* pe = pos_f.defined() ? pos_f.const_data_ptr<float>() + local * width : nullptr;
      const float* bi = bias_f.defined() ? bias_f.const_data_ptr<float>() : nullptr;
      for (int64_t d = 0; d < width; ++d) o[d] = (pe ? pe[d] : 0.0f) + (bi ? bi[d] : 0.0f);
    }
  });
  at::Tensor result = patches;
  if (out.defined()) {
    const at::ScalarType dt = weight->scalar_type();
    result = out.to(dt);
    result.addmm_(patches.to(dt), weight->t());
  }
  if (!packed) result = result.view({B, N, width});
  return {result, cu};
}

}  // namespace autogaze_ext
