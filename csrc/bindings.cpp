// The Python module autogaze_ext._C, and every op (torch.ops.autogaze_ext.*): its schema, then its CPU and
// CUDA kernels (declared in ops.h, defined in cpu/<file>.cpp and cuda/<file>_torch.cpp).
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "ops.h"

#ifndef AUTOGAZE_EXT_TORCH_VERSION
#define AUTOGAZE_EXT_TORCH_VERSION ""
#endif
#ifndef AUTOGAZE_EXT_CUDA_VERSION
#define AUTOGAZE_EXT_CUDA_VERSION ""
#endif
#ifndef AUTOGAZE_EXT_CUDA_ARCH_LIST
#define AUTOGAZE_EXT_CUDA_ARCH_LIST ""
#endif

// IMPL(op): op_cpu for CPU tensors and, in a CUDA build, op_cuda for CUDA tensors.
#if AUTOGAZE_EXT_WITH_CUDA
#define IMPL(op)                                                \
  m.impl(#op, c10::DispatchKey::CPU, &autogaze_ext::op##_cpu); \
  m.impl(#op, c10::DispatchKey::CUDA, &autogaze_ext::op##_cuda)
#else
#define IMPL(op) m.impl(#op, c10::DispatchKey::CPU, &autogaze_ext::op##_cpu)
#endif

TORCH_LIBRARY(autogaze_ext, m) {
  // Video-global gaze ids -> (B, T, V) float mask and (B, N, 4) int32 (frame, scale, row, col); spec §3.2-3.3.
  m.def("gaze_decode(Tensor gazing_pos, Tensor if_padded, int num_frames, int[] grids) -> (Tensor mask, Tensor coords)");
  IMPL(gaze_decode);

  // Decoder building blocks for the fast gaze decoding path (spec §4.3, §5). All fp32.
  // y = [silu(a) * b for a, b = halves of] (rmsnorm(x) * norm_weight) @ weight^T  [+ residual]
  m.def("fused_linear(Tensor x, Tensor weight, Tensor? norm_weight, float eps, Tensor? residual, bool swiglu) -> Tensor");
  IMPL(fused_linear);
  // RoPE (rotate-half) on q and k of a packed qkv projection, k and v written into the caches at
  // slots start..start+n-1 (start: a 1-element int64 tensor on the device); returns rotated q (B, H, n, d).
  m.def("rope_cache_write(Tensor qkv, Tensor positions, Tensor inv_freq, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor start, int num_heads, int num_kv_heads) -> Tensor");
  IMPL(rope_cache_write);
  // Softmax attention of queries at slots start+i over cached keys j <= start+i that are valid (or j == start+i);
  // tf32: on a GPU, the products of prefills with head dim 32 on TF32 tensor cores (else fp32 throughout).
  m.def("cache_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor key_valid, Tensor start, bool tf32=False) -> Tensor");
  IMPL(cache_attention);
  // All layers of the decoder over n new tokens per row (x (B, n, hidden) -> hidden states (B, n, hidden) before
  // the final norm): per layer rmsnorm -> qkv -> RoPE, k/v into the caches (layers, B, KVH, L, d) at slots
  // start.. -> cache_attention -> o_proj + residual -> rmsnorm -> SwiGLU MLP + residual. Weights stacked per
  // layer: w_qkv (layers, (H+2KVH)d, hidden) = q|k|v, w_o, w_gu (layers, 2I, hidden) = gate|up, w_down.
  // last_only: return only each row's last token (B, 1, hidden); the last layer then runs attention and MLP
  // for that token alone (every token's k and v are still cached).
  m.def("decoder_layers(Tensor x, Tensor positions, Tensor inv_freq, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor key_valid, Tensor start, Tensor w_qkv, Tensor w_o, Tensor w_gu, Tensor w_down, Tensor norm_attn, Tensor norm_mlp, float eps, int num_heads, int num_kv_heads, bool last_only=False) -> Tensor");
  IMPL(decoder_layers);
  // One decode step's token choice on the device (spec §5.4): per-head argmax with bans, pads, task-loss
  // stop, cap; updates the frame state in place and returns the chunk to feed back (B, K).
  m.def("select_step(Tensor logits, Tensor loss_pred, Tensor cap, Tensor req, Tensor has_req, Tensor(a!) banned, Tensor(b!) unfinished, Tensor(c!) fids, Tensor(d!) n, Tensor(e!) first, Tensor(f!) active) -> Tensor");
  IMPL(select_step);
  // The start of frame t (spec §5.1, §5.6): the prefill input x = [embed_weight[pend], vision[:, t]] (B, K + NV,
  // hidden) and its RoPE positions (count + running count of valid tokens - 1; valid: pending ids k < pend_len
  // that are not eos, and every vision token); writes the validity into key_valid at slots start.., adds the
  // valid tokens to count and keeps the last K positions in tail_pos. Device scalars are never read on the host.
  m.def("frame_begin(Tensor pend, Tensor pend_len, Tensor vision, Tensor t, Tensor embed_weight, Tensor start, Tensor(a!) key_valid, Tensor(b!) count, Tensor(c!) tail_pos, int eos) -> (Tensor x, Tensor positions)");
  IMPL(frame_begin);
  // The end of a frame (spec §5.6): the pads among the frame's fed chunks (its first K*floor((n-1)/K) ids, at
  // cache slots frame_start..) become invalid keys and its real ids are counted as positions; the last chunk
  // (ids fed..n-1) becomes pending, padded with eos; the frame's ids and n are stored at frame t of out_ids /
  // out_n. n, frame_start and t are 1-element int64 tensors on the device, never read on the host.
  m.def("frame_end(Tensor fids, Tensor n, Tensor frame_start, Tensor t, Tensor(a!) key_valid, Tensor(b!) count, Tensor(c!) pend, Tensor(d!) pend_len, Tensor(e!) out_ids, Tensor(f!) out_n, int eos) -> ()");
  IMPL(frame_end);

  // Sparse-token ViT attention (spec §6.4 item 5) on packed q, k, v (total, heads, head_dim), fp32/fp16/bf16,
  // fp32 softmax. Videos are cu_seqlens ranges, frames cu_frames ranges (int32 offsets; every video boundary
  // is a frame boundary, frames may be empty). A query sees the keys of its own video: frames up to its own
  // (block_causal), keys up to itself (causal), all (bidirectional) or its own frame (frame_independent),
  // and in every mode the video's first num_prefix keys (class/register tokens). Returns q's shape and dtype.
  m.def("varlen_attention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, Tensor cu_frames, str mode, float scale, int num_prefix) -> Tensor");
  IMPL(varlen_attention);

  // Multi-scale patch sequence and AutoGaze preprocessing (spec §2, §3.4, §6.1). All resampling is torch's
  // bicubic (A = -0.75, align_corners=False, no antialias, border clamping) unless stated.
  // frames (N, C, H, W) float32 -> (N, V, C*patch*patch): each frame resized to scale x scale per scale, cut
  // into patch x patch patches (row-major, channel-major flattening), scales concatenated in the given order;
  // V = sum((scale // patch)^2).
  m.def("multiscale_patches(Tensor frames, int[] scales, int patch) -> Tensor");
  IMPL(multiscale_patches);
  // Only the patches at gazing_pos (B, N) (video-global ids) of frames (B, T, C, H, W), sampled straight from
  // the frames; with weight (D, C*p*p) also embedded: patch @ weight^T + bias + pos_table[local id] (weight's
  // dtype). packed_rows < 0: output (B, N, width), padded slots hold the official dummy (token 0 of the video);
  // packed_rows >= 0: non-padded slots packed in (b, n) order into (packed_rows, width), rows past them zero.
  // Second output: cu_seqlens (B + 1) int32 of non-padded slots per row, clamped to packed_rows when packed.
  m.def("gather_patches(Tensor frames, Tensor gazing_pos, Tensor if_padded, int[] scales, int patch, Tensor? weight, Tensor? bias, Tensor? pos_table, int packed_rows) -> (Tensor, Tensor)");
  IMPL(gather_patches);
  // The AutoGaze image processor fused with the in-model resize: frames (N, H, W, 3) uint8 (or float32 on the
  // 0..255 scale) -> Pillow bilinear (antialiased; bit-exact for uint8) to (out_h, out_w), float64 rescale, -1
  // if offset, (x - mean) / std -> (N, 3, out_h, out_w) float32; and that resized to model_size x model_size
  // (bicubic, as the model does), or an empty tensor when model_size is 0.
  m.def("preprocess(Tensor frames, int out_h, int out_w, int model_size, float rescale, bool offset, float[] mean, float[] std) -> (Tensor, Tensor)");
  IMPL(preprocess);
}

#undef IMPL

PYBIND11_MODULE(_C, m) {
  m.doc() = "autogaze_ext compiled ops; call them through autogaze_ext.ops or torch.ops.autogaze_ext";
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
