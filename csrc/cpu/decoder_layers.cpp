// CPU kernel of decoder_layers, the argument checks both backends share, and the composed path: the
// layers as a chain of the decoder ops (fused_linear, rope_cache_write, cache_attention), dispatched on
// the tensors' device. The composed path is the CPU kernel and the oracle of the CUDA kernel, and the
// CUDA op runs it for shapes its persistent kernel is not built for.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "ops.h"

namespace autogaze_ext {

void check_decoder_layers_inputs(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq,
                                 const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& key_valid,
                                 const at::Tensor& start, const at::Tensor& w_qkv, const at::Tensor& w_o,
                                 const at::Tensor& w_gu, const at::Tensor& w_down, const at::Tensor& norm_attn,
                                 const at::Tensor& norm_mlp, int64_t num_heads, int64_t num_kv_heads) {
  TORCH_CHECK(num_heads >= 1 && num_kv_heads >= 1 && num_heads % num_kv_heads == 0,
              "decoder_layers: num_heads must be a positive multiple of num_kv_heads, got ", num_heads, " and ",
              num_kv_heads);
  TORCH_CHECK(x.dim() == 3, "decoder_layers: x must be (B, n, hidden), got ", x.sizes());
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2);
  TORCH_CHECK(k_cache.dim() == 5, "decoder_layers: k_cache must be (layers, B, KVH, L, d), got ", k_cache.sizes());
  const int64_t layers = k_cache.size(0), d = k_cache.size(4);
  TORCH_CHECK(k_cache.size(1) == B && k_cache.size(2) == num_kv_heads, "decoder_layers: k_cache must be (layers, ",
              B, ", ", num_kv_heads, ", L, d), got ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "decoder_layers: v_cache ", v_cache.sizes(), " must match k_cache ",
              k_cache.sizes());
  TORCH_CHECK(layers >= 1, "decoder_layers: needs at least one layer");
  const int64_t qkv = (num_heads + 2 * num_kv_heads) * d;
  TORCH_CHECK(w_qkv.dim() == 3 && w_qkv.size(0) == layers && w_qkv.size(1) == qkv && w_qkv.size(2) == D,
              "decoder_layers: w_qkv must be (layers, (num_heads + 2*num_kv_heads) * d, hidden) = (", layers, ", ",
              qkv, ", ", D, "), got ", w_qkv.sizes());
  TORCH_CHECK(w_o.dim() == 3 && w_o.size(0) == layers && w_o.size(1) == D && w_o.size(2) == num_heads * d,
              "decoder_layers: w_o must be (layers, hidden, num_heads * d) = (", layers, ", ", D, ", ", num_heads * d,
              "), got ", w_o.sizes());
  TORCH_CHECK(w_gu.dim() == 3 && w_gu.size(0) == layers && w_gu.size(1) % 2 == 0 && w_gu.size(2) == D,
              "decoder_layers: w_gu must be (layers, 2 * intermediate, hidden) with hidden = ", D, ", got ",
              w_gu.sizes());
  const int64_t inter = w_gu.size(1) / 2;
  TORCH_CHECK(w_down.dim() == 3 && w_down.size(0) == layers && w_down.size(1) == D && w_down.size(2) == inter,
              "decoder_layers: w_down must be (layers, hidden, intermediate) = (", layers, ", ", D, ", ", inter,
              "), got ", w_down.sizes());
  for (const auto* nw : {&norm_attn, &norm_mlp}) {
    TORCH_CHECK(nw->dim() == 2 && nw->size(0) == layers && nw->size(1) == D, "decoder_layers: ",
                nw == &norm_attn ? "norm_attn" : "norm_mlp", " must be (layers, hidden) = (", layers, ", ", D,
                "), got ", nw->sizes());
  }
  const std::pair<const at::Tensor*, const char*> floats[] = {
      {&x, "x"},         {&inv_freq, "inv_freq"}, {&k_cache, "k_cache"},     {&v_cache, "v_cache"},
      {&w_qkv, "w_qkv"}, {&w_o, "w_o"},           {&w_gu, "w_gu"},           {&w_down, "w_down"},
      {&norm_attn, "norm_attn"}, {&norm_mlp, "norm_mlp"}};
  for (const auto& [t, name] : floats) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "decoder_layers: ", name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), "decoder_layers: ", name, " is on ", t->device(), " but x on ",
                x.device());
  }
  TORCH_CHECK(d % 2 == 0 && inv_freq.dim() == 1 && inv_freq.size(0) == d / 2,
              "decoder_layers: inv_freq must be (d/2,) = (", d / 2, ",) for an even head dim d, got ", inv_freq.sizes());
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(),
              "decoder_layers: k_cache and v_cache must be contiguous (they are written in place)");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.dim() == 2 && positions.size(0) == B &&
                  positions.size(1) == n,
              "decoder_layers: positions must be int64 (B, n) = (", B, ", ", n, "), got ", positions.scalar_type(),
              " ", positions.sizes());
  TORCH_CHECK(key_valid.scalar_type() == at::kBool && key_valid.dim() == 2 && key_valid.size(0) == B &&
                  key_valid.size(1) == k_cache.size(3),
              "decoder_layers: key_valid must be bool (B, L) = (", B, ", ", k_cache.size(3), "), got ",
              key_valid.scalar_type(), " ", key_valid.sizes());
  TORCH_CHECK(start.scalar_type() == at::kLong && start.numel() == 1,
              "decoder_layers: start must be a 1-element int64 tensor, got ", start.scalar_type(), " ", start.sizes());
  for (const auto* t : {&positions, &key_valid, &start}) {
    TORCH_CHECK(t->device() == x.device(), "decoder_layers: all tensors must be on ", x.device(), ", got ",
                t->device());
  }
  check_written_apart("decoder_layers", {{"k_cache", &k_cache}, {"v_cache", &v_cache}},
                      {{"x", &x}, {"positions", &positions}, {"inv_freq", &inv_freq}, {"key_valid", &key_valid},
                       {"start", &start}, {"w_qkv", &w_qkv}, {"w_o", &w_o}, {"w_gu", &w_gu}, {"w_down", &w_down},
                       {"norm_attn", &norm_attn}, {"norm_mlp", &norm_mlp}});
}

std::vector<int64_t> decoder_layers_out_shape(const at::Tensor& x, bool last_only) {
  const int64_t n = x.size(1);
  return {x.size(0), last_only ? std::min<int64_t>(n, 1) : n, x.size(2)};
}

at::Tensor decoder_layers_composed(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq,
                                   at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key_valid,
                                   const at::Tensor& start, const at::Tensor& w_qkv, const at::Tensor& w_o,
                                   const at::Tensor& w_gu, const at::Tensor& w_down, const at::Tensor& norm_attn,
                                   const at::Tensor& norm_mlp, double eps, int64_t num_heads, int64_t num_kv_heads,
                                   bool last_only) {
  using Opt = std::optional<at::Tensor>;
  static auto linear = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("autogaze_ext::fused_linear", "")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const Opt&, double, const Opt&,
                                             bool)>();
  static auto rope = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("autogaze_ext::rope_cache_write", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&,
                                           at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  static auto attention = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("autogaze_ext::cache_attention", "")
                              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, bool)>();
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2), layers = k_cache.size(0);
  at::Tensor h = x.reshape({B * n, D}).contiguous();
  int64_t rows = n;  // tokens per row the layer's attention and MLP run for
  for (int64_t l = 0; l < layers; ++l) {
    at::Tensor kc = k_cache.select(0, l), vc = v_cache.select(0, l);  // contiguous views, written in place
    const at::Tensor qkv = linear.call(h, w_qkv[l].contiguous(), norm_attn[l].contiguous(), eps, std::nullopt, false);
    at::Tensor q = rope.call(qkv.view({B, n, -1}), positions, inv_freq, kc, vc, start, num_heads, num_kv_heads);
    at::Tensor q_start = start;
    if (last_only && l == layers - 1 && n > 1) {
      // Nothing reads the other tokens' outputs of the last layer: attention and MLP for the last one only,
      // its query at slot start + n - 1.
      q = q.narrow(2, n - 1, 1).contiguous();
      q_start = at::add(start, n - 1);
      h = h.view({B, n, D}).select(1, n - 1).contiguous();
      rows = 1;
    }
    const at::Tensor o = attention.call(q, kc, vc, key_valid, q_start, false).transpose(1, 2).reshape({B * rows, -1});
    h = linear.call(o, w_o[l].contiguous(), std::nullopt, 0.0, h, false);
    const at::Tensor a = linear.call(h, w_gu[l].contiguous(), norm_mlp[l].contiguous(), eps, std::nullopt, true);
    h = linear.call(a, w_down[l].contiguous(), std::nullopt, 0.0, h, false);
  }
  return h.view({B, rows, D});
}

at::Tensor decoder_layers_cpu(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& inv_freq,
                              at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key_valid,
                              const at::Tensor& start, const at::Tensor& w_qkv, const at::Tensor& w_o,
                              const at::Tensor& w_gu, const at::Tensor& w_down, const at::Tensor& norm_attn,
                              const at::Tensor& norm_mlp, double eps, int64_t num_heads, int64_t num_kv_heads,
                              bool last_only) {
  check_decoder_layers_inputs(x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down,
                              norm_attn, norm_mlp, num_heads, num_kv_heads);
  check_finite_arg("decoder_layers", "eps", eps, true);
  TORCH_CHECK(x.device().is_cpu(), "decoder_layers_cpu expects CPU tensors");
  if (x.numel() == 0) return at::empty(decoder_layers_out_shape(x, last_only), x.options());
  return decoder_layers_composed(x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down,
                                 norm_attn, norm_mlp, eps, num_heads, num_kv_heads, last_only);
}

}  // namespace autogaze_ext
