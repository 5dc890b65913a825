// Resampling arithmetic shared by the CPU and CUDA kernels of multiscale_patches, gather_patches and
// preprocess (spec §2, §3.4, §6.1). Torch-free so that .cu files can include it.
//
// Two families, each written to repeat its reference's order of floating-point operations:
//  * bicubic as torch's upsample_bicubic2d (A = -0.75, align_corners=False, no antialias, border
//    clamping): per-axis taps, four interpolations along x (one per source row), then one along y;
//  * Pillow's antialiased bilinear resize for uint8 images (libImaging/Resample.c): per-axis
//    coefficients in double, normalised to sum 1, quantised to 22-bit fixed point; horizontal pass,
//    rounding to uint8, vertical pass. Float images use the same coefficients without quantisation.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/gaze_layout.h"

namespace autogaze_ext {

// ------------------------------------------------------------------------------------------ bicubic

// Source indices (already clamped to the border) and weights of one output sample along one axis.
struct CubicTaps {
  int32_t idx[4];
  float w[4];
};

// torch's cubic_convolution1/2 as its compiled kernels evaluate them (CPU builds with FMA and nvcc both
// contract a*b+c), so the fused multiply-adds are spelled out; the source position likewise. An unfused
// position moves t by up to an ulp of the position, which is ~1e-6 relative error at odd sizes.
AG_HOST_DEVICE float cubic_convolution1(float x, float A) { return fmaf(fmaf(A + 2, x, -(A + 3)) * x, x, 1.0f); }
AG_HOST_DEVICE float cubic_convolution2(float x, float A) {
  return fmaf(fmaf(fmaf(A, x, -5 * A), x, 8 * A), x, -4 * A);
}

// Output sample `dst` of an axis resized from `in` to `out` samples: torch's area_pixel_compute_scale
// (float in / out) and area_pixel_compute_source_index (cubic: negative source positions allowed), the
// guard of its CPU kernel (a no-op for finite positions), get_cubic_upsample_coefficients.
AG_HOST_DEVICE CubicTaps cubic_taps(int64_t in, int64_t out, int64_t dst) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const float real = fmaf(scale, static_cast<float>(dst) + 0.5f, -0.5f);
  int64_t i0 = static_cast<int64_t>(floorf(real));
  if (i0 > in - 1) i0 = in - 1;
  const float t = fminf(fmaxf(real - static_cast<float>(i0), 0.0f), 1.0f);
  constexpr float A = -0.75f;
  CubicTaps taps;
  taps.w[0] = cubic_convolution2(t + 1.0f, A);
  taps.w[1] = cubic_convolution1(t, A);
  taps.w[2] = cubic_convolution1(1.0f - t, A);
  taps.w[3] = cubic_convolution2((1.0f - t) + 1.0f, A);
  for (int j = 0; j < 4; ++j) {
    int64_t i = i0 - 1 + j;
    i = i < 0 ? 0 : (i > in - 1 ? in - 1 : i);
    taps.idx[j] = static_cast<int32_t>(i);
  }
  return taps;
}

// Read-only load: through the non-coherent cache on the GPU.
template <typename T>
AG_HOST_DEVICE T ag_load(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// One bicubic sample of a row-major plane: x first for each of the 4 source rows, then y; sums left to
// right as torch's cubic_interp1d does.
AG_HOST_DEVICE float bicubic_sample(const float* plane, int64_t row_stride, const CubicTaps& ty, const CubicTaps& tx) {
  float rows[4];
  for (int j = 0; j < 4; ++j) {
    const float* r = plane + static_cast<int64_t>(ty.idx[j]) * row_stride;
    rows[j] = ag_load(r + tx.idx[0]) * tx.w[0] + ag_load(r + tx.idx[1]) * tx.w[1] + ag_load(r + tx.idx[2]) * tx.w[2] +
              ag_load(r + tx.idx[3]) * tx.w[3];
  }
  return rows[0] * ty.w[0] + rows[1] * ty.w[1] + rows[2] * ty.w[2] + rows[3] * ty.w[3];
}

// ----------------------------------------------------------------------------------- patch layout

// Multi-scale patch sequence of one frame (spec §3.4): scale s resizes the frame to scale[s] x scale[s]
// and cuts patch x patch patches row-major (a remainder narrower than a patch is dropped, as F.unfold
// does); tokens.grid[s] = scale[s] / patch, tokens.offset[s] = first token of scale s.
struct PatchLayout {
  ScaleLayout tokens;
  int32_t scale[kMaxScales];
  int32_t patch;
};

// Where token `local` (0 <= local < V) of a frame sits: scale, patch row and column.
AG_HOST_DEVICE void patch_of_token(const PatchLayout& L, int32_t local, int32_t& s, int32_t& row, int32_t& col) {
  s = 0;
  while (local >= L.tokens.offset[s + 1]) ++s;
  const int32_t k = local - L.tokens.offset[s];
  row = k / L.tokens.grid[s];
  col = k - row * L.tokens.grid[s];
}

// ------------------------------------------------------------------------------------ Pillow bilinear

constexpr int kPilPrecisionBits = 32 - 8 - 2;  // Resample.c PRECISION_BITS for 8-bit images

// Double arithmetic of Resample.c, kept unfused on the GPU (nvcc would contract a*b+c into an fma).
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ double pil_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double pil_add(double a, double b) { return __dadd_rn(a, b); }
#else
inline double pil_mul(double a, double b) { return a * b; }
inline double pil_add(double a, double b) { return a + b; }
#endif

// Per-axis constants of precompute_coeffs for the bilinear filter (support 1).
struct PilAxis {
  int32_t in, out, ksize;
  double scale, filterscale, support;
};

AG_HOST_DEVICE PilAxis pil_axis(int64_t in, int64_t out) {
  PilAxis a;
  a.in = static_cast<int32_t>(in);
  a.out = static_cast<int32_t>(out);
  a.scale = static_cast<double>(static_cast<float>(in)) / static_cast<double>(out);  // (in1 - in0) / outSize
  a.filterscale = a.scale < 1.0 ? 1.0 : a.scale;
  a.support = 1.0 * a.filterscale;
  a.ksize = static_cast<int32_t>(ceil(a.support)) * 2 + 1;
  return a;
}

AG_HOST_DEVICE double pil_bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Unnormalised filter weight of source sample xmin + x for output sample `center`.
AG_HOST_DEVICE double pil_weight(int32_t x, int32_t xmin, double center, double ss) {
  return pil_bilinear_filter(pil_mul(pil_add(pil_add(static_cast<double>(x + xmin), -center), 0.5), ss));
}

// Coefficients of output sample xx: first source index, number of taps, and the taps normalised to sum 1
// (as fixed-point integers when `fixed`, else as float). `k` holds a.ksize entries; unused ones are 0.
// Two sweeps over the taps (sum, then divide) instead of a scratch array; same arithmetic.
template <typename K>
AG_HOST_DEVICE void pil_coeffs(const PilAxis& a, int32_t xx, int32_t& xmin_out, int32_t& count_out, K* k) {
  const double center = pil_add(0.0, pil_mul(static_cast<double>(xx) + 0.5, a.scale));  // in0 + (xx + .5) * scale
  const double ss = 1.0 / a.filterscale;
  int32_t xmin = static_cast<int32_t>(pil_add(pil_add(center, -a.support), 0.5));
  if (xmin < 0) xmin = 0;
  int32_t xmax = static_cast<int32_t>(pil_add(pil_add(center, a.support), 0.5));
  if (xmax > a.in) xmax = a.in;
  xmax -= xmin;
  double ww = 0.0;
  for (int32_t x = 0; x < xmax; ++x) ww = pil_add(ww, pil_weight(x, xmin, center, ss));
  for (int32_t x = 0; x < a.ksize; ++x) {
    double w = 0.0;
    if (x < xmax) {
      w = pil_weight(x, xmin, center, ss);
      if (ww != 0.0) w = w / ww;
    }
    if constexpr (std::is_integral_v<K>) {  // fixed-point taps: normalize_coeffs_8bpc
      const double f = pil_mul(w, static_cast<double>(1 << kPilPrecisionBits));
      k[x] = static_cast<K>(w < 0 ? pil_add(-0.5, f) : pil_add(0.5, f));
    } else {
      k[x] = static_cast<K>(w);
    }
  }
  xmin_out = xmin;
  count_out = xmax;
}

// Fixed-point accumulator start (rounds the final shift) and the clip8 of Resample.c.
constexpr int32_t kPilRound = 1 << (kPilPrecisionBits - 1);
AG_HOST_DEVICE uint8_t pil_clip8(int32_t acc) {
  const int32_t v = acc >> kPilPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// One output pixel (3 interleaved channels) of a Pillow pass: taps k[0..count) over source pixels src,
// src + step, ... 8-bit images accumulate in 22-bit fixed point and round to uint8 (ImagingResample*_8bpc);
// float images accumulate in double and store float (the "F" mode of ImagingResample*_32bpc).
AG_HOST_DEVICE void pil_resample3(const uint8_t* src, int64_t step, const int32_t* k, int32_t count, uint8_t out[3]) {
  int32_t a0 = kPilRound, a1 = kPilRound, a2 = kPilRound;
  for (int32_t i = 0; i < count; ++i) {
    const uint8_t* p = src + i * step;
    const int32_t w = ag_load(k + i);
    a0 += static_cast<int32_t>(ag_load(p)) * w;
    a1 += static_cast<int32_t>(ag_load(p + 1)) * w;
    a2 += static_cast<int32_t>(ag_load(p + 2)) * w;
  }
  out[0] = pil_clip8(a0);
  out[1] = pil_clip8(a1);
  out[2] = pil_clip8(a2);
}

AG_HOST_DEVICE void pil_resample3(const float* src, int64_t step, const double* k, int32_t count, float out[3]) {
  double a0 = 0.0, a1 = 0.0, a2 = 0.0;
  for (int32_t i = 0; i < count; ++i) {
    const float* p = src + i * step;
    const double w = ag_load(k + i);
    a0 = pil_add(a0, pil_mul(static_cast<double>(ag_load(p)), w));
    a1 = pil_add(a1, pil_mul(static_cast<double>(ag_load(p + 1)), w));
    a2 = pil_add(a2, pil_mul(static_cast<double>(ag_load(p + 2)), w));
  }
  out[0] = static_cast<float>(a0);
  out[1] = static_cast<float>(a1);
  out[2] = static_cast<float>(a2);
}

// ---------------------------------------------------------------------------------- normalisation

// The AutoGaze processor's value transform of one resized sample u (0..255): float64 rescale, cast to
// float32, optional "offset" (-1), then (x - mean) / std in float32 (mean 0, std 1 when not normalising).
AG_HOST_DEVICE float processor_value(float u, double rescale, bool offset, float mean, float std) {
  float y = static_cast<float>(static_cast<double>(u) * rescale);
  if (offset) y = y - 1.0f;
  return (y - mean) / std;
}

}  // namespace autogaze_ext
