// Every op's backends and argument checks, declared once (bindings.cpp registers them beside each schema):
//   check_<op>_inputs   defined in cpu/<file>.cpp, called first by both backends
//   <op>_cpu            defined in cpu/<file>.cpp
//   <op>_cuda           defined in cuda/<file>_torch.cpp, built only with AUTOGAZE_EXT_WITH_CUDA
// <file> is the op's name, or its family (patches: multiscale_patches, gather_patches); see CMakeLists.txt.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "common/gaze_layout.h"
#include "common/resample.h"

#ifndef AUTOGAZE_EXT_WITH_CUDA
#define AUTOGAZE_EXT_WITH_CUDA 0
#endif

namespace autogaze_ext {

// ------------------------------------------------------------------------------ checks of every op

// Whether two tensors view overlapping bytes (torch strides are never negative). Meta tensors hold no memory.
inline bool shares_memory(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0 || a.device() != b.device() || a.is_meta()) {
    return false;
  }
  const auto span = [](const at::Tensor& t) {
    int64_t last = 0;
    for (int64_t i = 0; i < t.dim(); ++i) last += (t.size(i) - 1) * t.stride(i);
    const char* begin = static_cast<const char*>(t.const_data_ptr());
    return std::pair{begin, begin + (last + 1) * t.element_size()};
  };
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

using NamedTensor = std::pair<const char*, const at::Tensor*>;

// The tensors an op writes in place must not share memory with each other or with the tensors it reads: the
// result would depend on the order in which the kernel reads and writes them.
inline void check_written_apart(const char* op, std::initializer_list<NamedTensor> written,
                                std::initializer_list<NamedTensor> read) {
  for (auto w = written.begin(); w != written.end(); ++w) {
    const auto check = [&](const NamedTensor& other) {
      TORCH_CHECK(!shares_memory(*w->second, *other.second), op, ": ", w->first, " and ", other.first,
                  " share memory; ", w->first, " is written in place and needs a buffer of its own");
    };
    for (auto o = w + 1; o != written.end(); ++o) check(*o);
    for (const auto& r : read) check(r);
  }
}

// A float argument that must be finite, and > 0 when `positive` (else >= 0).
inline void check_finite_arg(const char* op, const char* name, double value, bool positive) {
  TORCH_CHECK(std::isfinite(value) && (positive ? value > 0 : value >= 0), op, ": ", name, " must be a finite float ",
              positive ? "> 0" : ">= 0", ", got ", value);
}

// Checks whose messages name the op and the argument every tensor must share a device with.
struct OpArgs {
  const char* op;
  const at::Tensor& ref;  // every argument must be on its device
  const char* ref_name;

  void typed(const at::Tensor& t, const char* name, at::ScalarType dtype) const {
    TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " on ",
                ref.device());
  }
  void scalar(const at::Tensor& t, const char* name) const {
    TORCH_CHECK(t.numel() == 1, op, ": ", name, " must hold one element, got shape ", t.sizes());
  }
  void in_place(const at::Tensor& t, const char* name) const {
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " is updated in place and must be contiguous");
  }
};

// ------------------------------------------------------------------------------ layouts

// Builds the per-frame layout from grid sides, checking what the kernels rely on.
inline ScaleLayout make_scale_layout(at::IntArrayRef grids) {
  TORCH_CHECK(!grids.empty() && grids.size() <= static_cast<size_t>(kMaxScales),
              "grids must hold 1 to ", kMaxScales, " grid sides, got ", grids.size());
  ScaleLayout L{};
  L.num_scales = static_cast<int32_t>(grids.size());
  int64_t offset = 0;
  for (size_t s = 0; s < grids.size(); ++s) {
    TORCH_CHECK(grids[s] > 0 && grids[s] <= 46340, "grids[", s, "] must be in [1, 46340], got ", grids[s]);
    L.grid[s] = static_cast<int32_t>(grids[s]);
    L.offset[s] = static_cast<int32_t>(offset);
    offset += grids[s] * grids[s];
    TORCH_CHECK(offset <= std::numeric_limits<int32_t>::max(), "too many tokens per frame");
  }
  L.offset[grids.size()] = static_cast<int32_t>(offset);
  return L;
}

constexpr int64_t kMaxPatch = 64;  // patch side limit: the CUDA kernel keeps 2 * patch taps in shared memory

// Builds the multi-scale patch layout (grid side scale / patch per scale), checking what the kernels rely on.
inline PatchLayout make_patch_layout(at::IntArrayRef scales, int64_t patch) {
  TORCH_CHECK(patch >= 1 && patch <= kMaxPatch, "patch must be in [1, ", kMaxPatch, "], got ", patch);
  TORCH_CHECK(!scales.empty() && scales.size() <= static_cast<size_t>(kMaxScales), "scales must hold 1 to ",
              kMaxScales, " sizes, got ", scales.size());
  std::vector<int64_t> grids(scales.size());
  PatchLayout L{};
  for (size_t s = 0; s < scales.size(); ++s) {
    TORCH_CHECK(scales[s] >= patch && scales[s] <= (int64_t{1} << 20), "scales[", s, "] must be in [patch = ", patch,
                ", 2^20], got ", scales[s]);
    grids[s] = scales[s] / patch;
    L.scale[s] = static_cast<int32_t>(scales[s]);
  }
  L.tokens = make_scale_layout(grids);
  L.patch = static_cast<int32_t>(patch);
  return L;
}

// ------------------------------------------------------------------------------ ops, in schema order

inline void check_gaze_decode_inputs(const at::Tensor& gazing_pos, const at::Tensor& if_padded, int64_t num_frames) {
  TORCH_CHECK(gazing_pos.dim() == 2, "gazing_pos must be (B, N), got ", gazing_pos.sizes());
  TORCH_CHECK(gazing_pos.scalar_type() == at::kLong, "gazing_pos must be int64, got ", gazing_pos.scalar_type());
  TORCH_CHECK(if_padded.scalar_type() == at::kBool, "if_padded must be bool, got ", if_padded.scalar_type());
  TORCH_CHECK(if_padded.sizes() == gazing_pos.sizes(), "if_padded ", if_padded.sizes(),
              " must match gazing_pos ", gazing_pos.sizes());
  TORCH_CHECK(if_padded.device() == gazing_pos.device(), "if_padded and gazing_pos must be on one device");
  TORCH_CHECK(num_frames >= 1, "num_frames must be >= 1, got ", num_frames);
}

std::tuple<at::Tensor, at::Tensor> gaze_decode_cpu(const at::Tensor& gazing_pos, const at::Tensor& if_padded,
                                                   int64_t num_frames, at::IntArrayRef grids);
std::tuple<at::Tensor, at::Tensor> gaze_decode_cuda(const at::Tensor& gazing_pos, const at::Tensor& if_padded,
                                                    int64_t num_frames, at::IntArrayRef grids);

// Returns the number of output columns.
int64_t check_fused_linear_inputs(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& norm_weight,
                                  const std::optional<at::Tensor>& residual, bool swiglu);
at::Tensor fused_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& norm_weight,
                            double eps, const std::optional<at::Tensor>& residual, bool swiglu);
at::Tensor fused_linear_cuda(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& norm_weight, double eps,
                             const std::optional<at::Tensor>& residual, bool swiglu);

// Returns the head dim.
int64_t check_rope_cache_write_inputs(const at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& inv_freq,
                                      const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& start,
                                      int64_t num_heads, int64_t num_kv_heads);
at::Tensor rope_cache_write_cpu(const at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& inv_freq,
                                at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& start, int64_t num_heads,
                                int64_t num_kv_heads);
at::Tensor rope_cache_write_cuda(const at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& inv_freq,
                                 at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& start, int64_t num_heads,
                                 int64_t num_kv_heads);

void check_cache_attention_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& key_valid, const at::Tensor& start);
at::Tensor cache_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& key_valid, const at::Tensor& start, bool tf32);
at::Tensor cache_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& key_valid, const at::Tensor& start, bool tf32);

void check_decoder_layers_inputs(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq,
                                 const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& key_valid,
                                 const at::Tensor& start, const at::Tensor& w_qkv, const at::Tensor& w_o,
                                 const at::Tensor& w_gu, const at::Tensor& w_down, const at::Tensor& norm_attn,
                                 const at::Tensor& norm_mlp, int64_t num_heads, int64_t num_kv_heads);
at::Tensor decoder_layers_cpu(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq,
                              at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key_valid,
                              const at::Tensor& start, const at::Tensor& w_qkv, const at::Tensor& w_o,
                              const at::Tensor& w_gu, const at::Tensor& w_down, const at::Tensor& norm_attn,
                              const at::Tensor& norm_mlp, double eps, int64_t num_heads, int64_t num_kv_heads,
                              bool last_only);
at::Tensor decoder_layers_cuda(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq,
                               at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key_valid,
                               const at::Tensor& start, const at::Tensor& w_qkv, const at::Tensor& w_o,
                               const at::Tensor& w_gu, const at::Tensor& w_down, const at::Tensor& norm_attn,
                               const at::Tensor& norm_mlp, double eps, int64_t num_heads, int64_t num_kv_heads,
                               bool last_only);
// (B, n, hidden), or (B, 1, hidden) with last_only (n = 0 stays 0).
std::vector<int64_t> decoder_layers_out_shape(const at::Tensor& x, bool last_only);
// The layers as a chain of the decoder ops on the tensors' device: the CPU kernel, and the CUDA op's path for
// shapes its persistent kernel is not built for.
at::Tensor decoder_layers_composed(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq,
                                   at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key_valid,
                                   const at::Tensor& start, const at::Tensor& w_qkv, const at::Tensor& w_o,
                                   const at::Tensor& w_gu, const at::Tensor& w_down, const at::Tensor& norm_attn,
                                   const at::Tensor& norm_mlp, double eps, int64_t num_heads, int64_t num_kv_heads,
                                   bool last_only);

// In-place arguments must be contiguous (written through raw pointers); the backends make read-only ones so.
void check_select_step_inputs(const at::Tensor& logits, const at::Tensor& loss_pred, const at::Tensor& cap,
                              const at::Tensor& req, const at::Tensor& has_req, const at::Tensor& banned,
                              const at::Tensor& unfinished, const at::Tensor& fids, const at::Tensor& n,
                              const at::Tensor& first, const at::Tensor& active);
at::Tensor select_step_cpu(const at::Tensor& logits, const at::Tensor& loss_pred, const at::Tensor& cap,
                           const at::Tensor& req, const at::Tensor& has_req, at::Tensor& banned, at::Tensor& unfinished,
                           at::Tensor& fids, at::Tensor& n, at::Tensor& first, at::Tensor& active);
at::Tensor select_step_cuda(const at::Tensor& logits, const at::Tensor& loss_pred, const at::Tensor& cap,
                            const at::Tensor& req, const at::Tensor& has_req, at::Tensor& banned,
                            at::Tensor& unfinished, at::Tensor& fids, at::Tensor& n, at::Tensor& first,
                            at::Tensor& active);

void check_frame_begin_inputs(const at::Tensor& pend, const at::Tensor& pend_len, const at::Tensor& vision,
                              const at::Tensor& t, const at::Tensor& embed_weight, const at::Tensor& start,
                              const at::Tensor& key_valid, const at::Tensor& count, const at::Tensor& tail_pos);
std::tuple<at::Tensor, at::Tensor> frame_begin_cpu(const at::Tensor& pend, const at::Tensor& pend_len,
                                                   const at::Tensor& vision, const at::Tensor& t,
                                                   const at::Tensor& embed_weight, const at::Tensor& start,
                                                   at::Tensor& key_valid, at::Tensor& count, at::Tensor& tail_pos,
                                                   int64_t eos);
std::tuple<at::Tensor, at::Tensor> frame_begin_cuda(const at::Tensor& pend, const at::Tensor& pend_len,
                                                    const at::Tensor& vision, const at::Tensor& t,
                                                    const at::Tensor& embed_weight, const at::Tensor& start,
                                                    at::Tensor& key_valid, at::Tensor& count, at::Tensor& tail_pos,
                                                    int64_t eos);

void check_frame_end_inputs(const at::Tensor& fids, const at::Tensor& n, const at::Tensor& frame_start,
                            const at::Tensor& t, const at::Tensor& key_valid, const at::Tensor& count,
                            const at::Tensor& pend, const at::Tensor& pend_len, const at::Tensor& out_ids,
                            const at::Tensor& out_n);
void frame_end_cpu(const at::Tensor& fids, const at::Tensor& n, const at::Tensor& frame_start, const at::Tensor& t,
                   at::Tensor& key_valid, at::Tensor& count, at::Tensor& pend, at::Tensor& pend_len,
                   at::Tensor& out_ids, at::Tensor& out_n, int64_t eos);
void frame_end_cuda(const at::Tensor& fids, const at::Tensor& n, const at::Tensor& frame_start, const at::Tensor& t,
                    at::Tensor& key_valid, at::Tensor& count, at::Tensor& pend, at::Tensor& pend_len,
                    at::Tensor& out_ids, at::Tensor& out_n, int64_t eos);

// varlen_attention modes (the values the CUDA launcher takes). The checks cover shapes, dtypes and devices and
// return the parsed mode; offset values are checked by the CPU op and the Python wrapper (on a GPU that would
// need a device->host copy), and the CUDA kernels clamp what they read to [0, total].
enum class VarlenMode { kBlockCausal = 0, kCausal = 1, kBidirectional = 2, kFrameIndependent = 3 };
VarlenMode check_varlen_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& cu_seqlens, const at::Tensor& cu_frames,
                                         std::string_view mode, int64_t num_prefix);
at::Tensor varlen_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens, const at::Tensor& cu_frames, c10::string_view mode,
                                double scale, int64_t num_prefix);
at::Tensor varlen_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& cu_seqlens, const at::Tensor& cu_frames, c10::string_view mode,
                                 double scale, int64_t num_prefix);

// patches family. check_patch_frames: frames of `dims` dims (4: multiscale_patches, 5: gather_patches).
void check_patch_frames(const at::Tensor& frames, int64_t dims, const char* op);
at::Tensor multiscale_patches_cpu(const at::Tensor& frames, at::IntArrayRef scales, int64_t patch);
at::Tensor multiscale_patches_cuda(const at::Tensor& frames, at::IntArrayRef scales, int64_t patch);
// The gather arguments beyond the frames; returns the output width (D with weight, else C*p*p).
int64_t check_gather_patches_inputs(const at::Tensor& frames, const at::Tensor& gazing_pos, const at::Tensor& if_padded,
                                    const PatchLayout& L, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_table);
std::tuple<at::Tensor, at::Tensor> gather_patches_cpu(const at::Tensor& frames, const at::Tensor& gazing_pos,
                                                      const at::Tensor& if_padded, at::IntArrayRef scales,
                                                      int64_t patch, const std::optional<at::Tensor>& weight,
                                                      const std::optional<at::Tensor>& bias,
                                                      const std::optional<at::Tensor>& pos_table, int64_t packed_rows);
std::tuple<at::Tensor, at::Tensor> gather_patches_cuda(const at::Tensor& frames, const at::Tensor& gazing_pos,
                                                       const at::Tensor& if_padded, at::IntArrayRef scales,
                                                       int64_t patch, const std::optional<at::Tensor>& weight,
                                                       const std::optional<at::Tensor>& bias,
                                                       const std::optional<at::Tensor>& pos_table, int64_t packed_rows);

void check_preprocess_inputs(const at::Tensor& frames, int64_t out_h, int64_t out_w, int64_t model_size,
                             at::ArrayRef<double> mean, at::ArrayRef<double> std);
std::tuple<at::Tensor, at::Tensor> preprocess_cpu(const at::Tensor& frames, int64_t out_h, int64_t out_w,
                                                  int64_t model_size, double rescale, bool offset,
                                                  at::ArrayRef<double> mean, at::ArrayRef<double> std);
std::tuple<at::Tensor, at::Tensor> preprocess_cuda(const at::Tensor& frames, int64_t out_h, int64_t out_w,
                                                   int64_t model_size, double rescale, bool offset,
                                                   at::ArrayRef<double> mean, at::ArrayRef<double> std);

}  // namespace autogaze_ext
