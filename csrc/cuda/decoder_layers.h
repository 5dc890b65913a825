// Launcher of the decoder_layers CUDA kernel on raw pointers (torch-free).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace autogaze_ext {

// The one decoder shape the persistent kernel is compiled for (the released AutoGaze decoder); other
// shapes run the composed ops.
constexpr int64_t kDecoderHidden = 192;
constexpr int64_t kDecoderHeadDim = 32;
constexpr int64_t kDecoderIntermediate = 384;
// Calls it runs (decode steps at small batch); larger ones are faster as chains of the separate ops, whose
// kernels run many blocks per SM (measured on an H100: B=64 decode steps, 206-token prefills).
constexpr int64_t kDecoderPersistentMaxTokens = 16;  // tokens per row
constexpr int64_t kDecoderPersistentMaxRows = 64;    // batch * tokens

struct DecoderLayersArgs {
  const float* x;            // (M, hidden) input rows, M = batch * n, row b * n + i
  const int64_t* positions;  // (M) RoPE positions
  const float* inv_freq;     // (head_dim / 2)
  float* k_cache;            // (layers, batch, kv_heads, cache_len, head_dim), written at slots start + i
  float* v_cache;
  const bool* key_valid;     // (batch, cache_len)
  const int64_t* start;      // one int64 on the device: the first slot of this call's tokens
  const float* w_qkv;        // (layers, (heads + 2 kv_heads) head_dim, hidden): q | k | v
  const float* w_o;          // (layers, hidden, heads head_dim)
  const float* w_gu;         // (layers, 2 intermediate, hidden): gate | up
  const float* w_down;       // (layers, hidden, intermediate)
  const float* norm_attn;    // (layers, hidden)
  const float* norm_mlp;     // (layers, hidden)
  float eps;
  float* out;                // (M, hidden): hidden states after the last layer (before the final norm); unused
                             // (the residual stream lives in the workspace) when last_out is set
  float* last_out;           // null, or (batch, hidden): only each row's last token after the last layer
  float* workspace;          // decoder_layers_workspace_floats(...) floats
  int64_t batch, n, layers, cache_len;
  int64_t num_heads, num_kv_heads;
};

// Floats of scratch one call needs (shape-only: fixed under CUDA-graph capture).
int64_t decoder_layers_workspace_floats(int64_t batch, int64_t n, int64_t num_heads, int64_t cache_len, int num_sms);

// Every pointer 16-byte aligned, hidden/head_dim/intermediate as above, heads * head_dim == hidden,
// heads % kv_heads == 0, batch, n, layers, cache_len >= 1, n <= kDecoderPersistentMaxTokens. One cooperative launch: the layers run as
// phases separated by grid-wide barriers.
cudaError_t launch_decoder_layers(const DecoderLayersArgs& args, int num_sms, cudaStream_t stream);

}  // namespace autogaze_ext
