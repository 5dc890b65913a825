// CPU kernel of varlen_attention (also the oracle of a CUDA kernel) and the argument checks that both
// backends share (declared in ops.h).
//
// Packed q, k, v (total, H, d); videos are cu_seqlens ranges, frames are cu_frames ranges (every video
// boundary is a frame boundary; frames may be empty). Query i of video [s, e), frame [fs, fe) sees keys
//   block_causal: [s, fe)   causal: [s, i]   bidirectional: [s, e)   frame_independent: [fs, fe)
// plus, in every mode, the video's first num_prefix keys [s, s + P). Scores, softmax and the weighted sum
// are fp32 whatever the input dtype (fp16/bf16 are widened once up front); every query sees at least itself.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/softmax.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "ops.h"

namespace autogaze_ext {

namespace {

VarlenMode parse_varlen_mode(std::string_view mode) {
  if (mode == "block_causal") return VarlenMode::kBlockCausal;
  if (mode == "causal") return VarlenMode::kCausal;
  if (mode == "bidirectional") return VarlenMode::kBidirectional;
  if (mode == "frame_independent") return VarlenMode::kFrameIndependent;
  TORCH_CHECK(false, "varlen_attention: mode must be block_causal, causal, bidirectional or frame_independent, got '",
              std::string(mode), "'");
}

}  // namespace

// Checks shared by the CPU and CUDA ops (shapes, dtypes, devices; offset values are checked by the CPU op and
// by the Python wrapper).
VarlenMode check_varlen_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& cu_seqlens, const at::Tensor& cu_frames,
                                         std::string_view mode, int64_t num_prefix) {
  TORCH_CHECK(q.dim() == 3, "varlen_attention: q must be (total, heads, head_dim), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "varlen_attention: k ", k.sizes(), " and v ",
              v.sizes(), " must match q ", q.sizes());
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "varlen_attention: q must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(k.scalar_type() == dt && v.scalar_type() == dt, "varlen_attention: q, k and v must share a dtype");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(),
              "varlen_attention: q, k and v must be contiguous");
  TORCH_CHECK(q.size(2) >= 1 && q.size(2) <= 256, "varlen_attention: head_dim must be in [1, 256], got ", q.size(2));
  TORCH_CHECK(q.size(1) >= 1, "varlen_attention: heads must be >= 1");
  TORCH_CHECK(q.size(0) < std::numeric_limits<int32_t>::max(), "varlen_attention: total tokens must be < 2^31");
  for (const auto* t : {&cu_seqlens, &cu_frames}) {
    const char* name = t == &cu_seqlens ? "cu_seqlens" : "cu_frames";
    TORCH_CHECK(t->dim() == 1 && t->size(0) >= 2, "varlen_attention: ", name, " must be (n + 1,) with n >= 1, got ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == at::kInt, "varlen_attention: ", name, " must be int32, got ", t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), "varlen_attention: ", name, " must be contiguous");
  }
  for (const auto* t : {&k, &v, &cu_seqlens, &cu_frames}) {
    TORCH_CHECK(t->device() == q.device(), "varlen_attention: all tensors must be on ", q.device(), ", got ",
                t->device());
  }
  TORCH_CHECK(num_prefix >= 0, "varlen_attention: num_prefix must be >= 0, got ", num_prefix);
  return parse_varlen_mode(mode);
}

namespace {

// Offsets must start at 0, end at total and never decrease.
void check_offsets_cpu(const int32_t* o, int64_t n, int64_t total, const char* name) {
  TORCH_CHECK(o[0] == 0 && o[n - 1] == total, "varlen_attention: ", name, " must start at 0 and end at total = ",
              total, ", got ", o[0], " and ", o[n - 1]);
  for (int64_t i = 1; i < n; ++i) {
    TORCH_CHECK(o[i] >= o[i - 1], "varlen_attention: ", name, " must be non-decreasing, got ", o[i - 1], " then ",
                o[i], " at index ", i);
  }
}

// A run of queries [a, c) of one frame [fs, fe) of one video [s, e): the unit of work.
struct QueryBlock {
  int64_t a, c, s, e, fs, fe;
};

// Query rows per block: blocks of one frame share their keys, so big blocks make big matrix products;
// causal rows differ in their last key, so smaller blocks waste fewer masked scores.
constexpr int64_t kRowsShared = 256;
constexpr int64_t kRowsCausal = 64;

}  // namespace

at::Tensor varlen_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens, const at::Tensor& cu_frames, c10::string_view mode_str,
                                double scale, int64_t num_prefix) {
  const VarlenMode mode = check_varlen_attention_inputs(q, k, v, cu_seqlens, cu_frames,
                                                        std::string_view(mode_str.data(), mode_str.size()), num_prefix);
  check_finite_arg("varlen_attention", "scale", scale, true);
  TORCH_CHECK(q.device().is_cpu(), "varlen_attention_cpu expects CPU tensors");
  const int64_t total = q.size(0), H = q.size(1);
  const int32_t* cs = cu_seqlens.const_data_ptr<int32_t>();
  const int32_t* cf = cu_frames.const_data_ptr<int32_t>();
  const int64_t nv = cu_seqlens.size(0), nf = cu_frames.size(0);
  check_offsets_cpu(cs, nv, total, "cu_seqlens");
  check_offsets_cpu(cf, nf, total, "cu_frames");
  for (int64_t b = 0, f = 0; b < nv; ++b) {  // both sorted: one merge pass
    while (f < nf && cf[f] < cs[b]) ++f;
    TORCH_CHECK(f < nf && cf[f] == cs[b], "varlen_attention: every cu_seqlens value must appear in cu_frames "
                "(a frame may not span two videos); missing ", cs[b]);
  }

  const bool causal = mode == VarlenMode::kCausal;
  const int64_t rows = causal ? kRowsCausal : kRowsShared;
  std::vector<QueryBlock> blocks;
  for (int64_t f = 0, b = 0; f + 1 < nf; ++f) {
    const int64_t fs = cf[f], fe = cf[f + 1];
    if (fe == fs) continue;
    while (cs[b + 1] <= fs) ++b;  // the video holding this frame (zero-length videos are skipped)
    for (int64_t a = fs; a < fe; a += rows) blocks.push_back({a, std::min(fe, a + rows), cs[b], cs[b + 1], fs, fe});
  }

  // fp32 math: widen half inputs once; view as (H, total, d) for batched products over heads.
  const at::Tensor qf = q.to(at::kFloat).transpose(0, 1), kf = k.to(at::kFloat).transpose(0, 1),
                   vf = v.to(at::kFloat).transpose(0, 1);
  at::Tensor out = at::empty({total, H, q.size(2)}, q.options().dtype(at::kFloat));
  const float fscale = static_cast<float>(scale);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  // Worker threads run ATen ops: give them the caller's thread-local state (inference mode, grad mode).
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t i = begin; i < end; ++i) {
      const QueryBlock& blk = blocks[i];
      const int64_t pend = blk.s + std::min(num_prefix, blk.e - blk.s);  // end of the video's prefix keys
      int64_t lo = blk.s, hi = blk.fe;
      if (mode == VarlenMode::kCausal) hi = blk.c;
      if (mode == VarlenMode::kBidirectional) hi = blk.e;
      if (mode == VarlenMode::kFrameIndependent) lo = blk.fs;
      at::Tensor keys, vals;
      if (lo <= pend) {  // prefix and range touch: one contiguous run of keys [lo, max(hi, pend))
        lo = std::min(lo, blk.s);
        hi = std::max(hi, pend);
        keys = kf.narrow(1, lo, hi - lo);
        vals = vf.narrow(1, lo, hi - lo);
      } else {  // frame_independent away from the prefix: prefix keys, then the frame's
        keys = at::cat({kf.narrow(1, blk.s, pend - blk.s), kf.narrow(1, lo, hi - lo)}, 1);
        vals = at::cat({vf.narrow(1, blk.s, pend - blk.s), vf.narrow(1, lo, hi - lo)}, 1);
      }
      const int64_t n = blk.c - blk.a;
      at::Tensor scores = at::bmm(qf.narrow(1, blk.a, n), keys.transpose(1, 2));  // (H, n, m)
      scores.mul_(fscale);
      if (causal) {  // contiguous keys from lo = s: row r (query a + r) drops keys j > a + r beyond the prefix
        const int64_t m = scores.size(2);
        float* sp = scores.data_ptr<float>();
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t r = 0; r < n; ++r) {
            const int64_t first_hidden = std::max(blk.a + r + 1, pend) - lo;
            float* row = sp + (h * n + r) * m;
            for (int64_t j = first_hidden; j < m; ++j) row[j] = neg_inf;
          }
        }
      }
      const at::Tensor probs = at::softmax(scores, -1);
      if (causal && !vals.isfinite().all().item<bool>()) {
        // hidden keys are absent, not weighted by 0 (0 * NaN): a non-finite value reaches only the rows that
        // see it, each row's product over its visible keys alone
        for (int64_t r = 0; r < n; ++r) {
          const int64_t vis = std::max(blk.a + r + 1, pend) - lo;
          out.narrow(0, blk.a + r, 1).copy_(
              at::bmm(probs.narrow(1, r, 1).narrow(2, 0, vis), vals.narrow(1, 0, vis)).transpose(0, 1));
        }
        continue;
      }
      out.narrow(0, blk.a, n).copy_(at::bmm(probs, vals).transpose(0, 1));
    }
  });
  return q.scalar_type() == at::kFloat ? out : out.to(q.scalar_type());
}

}  // namespace autogaze_ext
