"""decoder_layers: every layer of the gaze decoder over n new tokens per row, in one op.

Python face of torch.ops.autogaze_ext.decoder_layers: argument checks, fake kernel, pure-PyTorch reference.
On CUDA, decode steps at small batch (n <= 16 tokens per row, B * n <= 64) of the released decoder shape
(hidden 192, head dim 32, intermediate 384) run as one persistent cooperative kernel: the layers are
phases separated by grid-wide barriers, one launch instead of ~30. Everything else -- other shapes,
prefills, large batches, where the separate kernels are faster -- and the CPU kernel chain the decoder ops
(fused_linear, rope_cache_write, cache_attention), which is also what the reference does with their
references.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._common import (HAS_EXTENSION, check_bool, check_float, check_int, check_no_grad, check_same_device,
                      check_tensor, check_written_apart, has_kernel, register_inference_only)
from .attention import (_check_cache_attention_args, _check_rope_cache_write_args, cache_attention_reference,
                        rope_cache_write_reference)
from .frame import frame_begin_reference, frame_end_reference
from .linear import fused_linear_reference
from .select import select_step_reference


def _check_decoder_layers_args(x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down,
                               norm_attn, norm_mlp, eps, num_heads, num_kv_heads) -> None:
    H = check_int(num_heads, "num_heads", 1)
    KVH = check_int(num_kv_heads, "num_kv_heads", 1)
    if H % KVH:
        raise ValueError(f"num_heads ({H}) must be a multiple of num_kv_heads ({KVH})")
    check_float(eps, "eps", positive=True)  # the RMSNorms' epsilon
    for name, t in [("x", x), ("w_qkv", w_qkv), ("w_o", w_o), ("w_gu", w_gu), ("w_down", w_down),
                    ("norm_attn", norm_attn), ("norm_mlp", norm_mlp)]:
        check_tensor(t, name, torch.float32)
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x on {x.device}")
    if x.dim() != 3:
        raise ValueError(f"x must be (B, n, hidden), got shape {tuple(x.shape)}")
    check_tensor(k_cache, "k_cache", torch.float32)
    if k_cache.dim() != 5:
        raise ValueError(f"k_cache must be (layers, B, KVH, L, d), got shape {tuple(k_cache.shape)}")
    layers, D, d = k_cache.shape[0], x.shape[2], k_cache.shape[4]
    if layers < 1:
        raise ValueError("k_cache must hold at least one layer")
    want = {"w_qkv": (layers, (H + 2 * KVH) * d, D), "w_o": (layers, D, H * d), "norm_attn": (layers, D),
            "norm_mlp": (layers, D)}
    shapes = {"w_qkv": "(layers, (num_heads + 2*num_kv_heads) * d, hidden)", "w_o": "(layers, hidden, num_heads * d)",
              "norm_attn": "(layers, hidden)", "norm_mlp": "(layers, hidden)"}
    for name, t in [("w_qkv", w_qkv), ("w_o", w_o), ("norm_attn", norm_attn), ("norm_mlp", norm_mlp)]:
        if tuple(t.shape) != want[name]:
            raise ValueError(f"{name} must be {shapes[name]} = {want[name]}, got shape {tuple(t.shape)}")
    if w_gu.dim() != 3 or w_gu.shape[0] != layers or w_gu.shape[1] % 2 or w_gu.shape[2] != D:
        raise ValueError(f"w_gu must be (layers, 2 * intermediate, hidden) = ({layers}, 2I, {D}), "
                         f"got shape {tuple(w_gu.shape)}")
    if tuple(w_down.shape) != (layers, D, w_gu.shape[1] // 2):
        raise ValueError(f"w_down must be {(layers, D, w_gu.shape[1] // 2)}, got shape {tuple(w_down.shape)}")
    check_tensor(v_cache, "v_cache", torch.float32)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} must match k_cache {tuple(k_cache.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous (they are written in place)")
    weights = {"w_qkv": w_qkv, "w_o": w_o, "w_gu": w_gu, "w_down": w_down, "norm_attn": norm_attn,
               "norm_mlp": norm_mlp}
    check_written_apart("decoder_layers", {"k_cache": k_cache, "v_cache": v_cache},
                         {"x": x, "positions": positions, "inv_freq": inv_freq, "key_valid": key_valid, "start": start,
                          **weights})
    check_no_grad("decoder_layers", x=x, inv_freq=inv_freq, k_cache=k_cache, v_cache=v_cache, **weights)
    # positions, inv_freq, key_valid, start and the per-layer cache shapes: the checks of the chained ops
    B, n = x.shape[:2]
    _check_rope_cache_write_args(x.new_empty(B, n, (H + 2 * KVH) * d), positions, inv_freq, k_cache[0], v_cache[0],
                                 start, H, KVH)
    _check_cache_attention_args(x.new_empty(B, H, n, d), k_cache[0], v_cache[0], key_valid, start)


def chain_layers(x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down, norm_attn,
                 norm_mlp, eps, num_heads, num_kv_heads, last_only=False, linear=fused_linear_reference,
                 rope=rope_cache_write_reference, attention=cache_attention_reference) -> torch.Tensor:
    """decoder_layers as a chain of three building blocks with the signatures of fused_linear, rope_cache_write
    and cache_attention (no argument checks): their pure-PyTorch references by default, the compiled ops (or
    any mix) when given."""
    B, n, D = x.shape
    h = x.reshape(B * n, D)
    rows = n  # tokens per row the layer's attention and MLP run for
    layers = k_cache.shape[0]
    for layer in range(layers):
        kc, vc = k_cache[layer], v_cache[layer]
        qkv = linear(h, w_qkv[layer], norm_attn[layer], eps, None, False)
        q = rope(qkv.view(B, n, -1), positions, inv_freq, kc, vc, start, num_heads, num_kv_heads)
        q_start = start
        if last_only and layer == layers - 1 and n > 1:
            # nothing reads the other tokens' outputs of the last layer: the last token alone, at slot start + n - 1
            q, q_start, rows = q[:, :, n - 1:].contiguous(), start + (n - 1), 1
            h = h.view(B, n, D)[:, n - 1].contiguous()
        o = attention(q, kc, vc, key_valid, q_start).transpose(1, 2).reshape(B * rows, -1)
        h = linear(o, w_o[layer], None, 0.0, h, False)
        a = linear(h, w_gu[layer], norm_mlp[layer], eps, None, True)
        h = linear(a, w_down[layer], None, 0.0, h, False)
    return h.view(B, rows, D)


def decoder_layers_reference(x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down,
                             norm_attn, norm_mlp, eps, num_heads, num_kv_heads, last_only=False) -> torch.Tensor:
    """Pure-PyTorch decoder_layers (no argument checks): the chain of the ops' references."""
    return chain_layers(x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down,
                        norm_attn, norm_mlp, eps, num_heads, num_kv_heads, last_only)


def decoder_layers(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, key_valid: torch.Tensor, start: torch.Tensor, w_qkv: torch.Tensor,
                   w_o: torch.Tensor, w_gu: torch.Tensor, w_down: torch.Tensor, norm_attn: torch.Tensor,
                   norm_mlp: torch.Tensor, eps: float, num_heads: int, num_kv_heads: int,
                   last_only: bool = False) -> torch.Tensor:
    """All decoder layers over n new tokens per row; returns the hidden states before the final norm.

    x: (B, n, hidden) float32 token embeddings; positions: (B, n) int64 RoPE positions; inv_freq: (d/2,);
    k_cache, v_cache: (layers, B, KVH, L, d) float32, contiguous, written in place at slots start..start+n-1
    (start: 1-element int64 tensor on the device, never read on the host); key_valid: (B, L) bool. Weights
    stacked per layer: w_qkv (layers, (H + 2*KVH) * d, hidden) = q | k | v projections, w_o (layers, hidden,
    H * d), w_gu (layers, 2 * intermediate, hidden) = gate | up, w_down (layers, hidden, intermediate),
    norm_attn / norm_mlp (layers, hidden) RMSNorm weights with eps. Per layer, as in the LLaMA decoder:
    rmsnorm -> qkv -> RoPE -> attention over the cache (cache_attention's masking) -> o_proj + residual ->
    rmsnorm -> SwiGLU MLP + residual. Returns (B, n, hidden) float32; with last_only, (B, 1, hidden): each
    row's last token only (what decoding reads), the last layer's attention and MLP then run for that token
    alone while every token's k and v are still written.
    """
    _check_decoder_layers_args(x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down,
                               norm_attn, norm_mlp, eps, num_heads, num_kv_heads)
    args = (x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down, norm_attn, norm_mlp,
            float(eps), num_heads, num_kv_heads, check_bool(last_only, "last_only"))
    if has_kernel("decoder_layers", x.device):
        return torch.ops.autogaze_ext.decoder_layers(*args)
    return decoder_layers_reference(*args)


# The ops FastGazeRunner (model/fast.py) runs, in DecoderOps' field order.
DECODER_OPS = ("fused_linear", "rope_cache_write", "cache_attention", "decoder_layers", "frame_begin", "frame_end",
               "select_step")


@dataclass(frozen=True)
class DecoderOps:
    """The fast decoder's building blocks, all compiled (torch.ops.autogaze_ext.*) or all their PyTorch
    references; neither checks arguments. Chosen once per FastGazeRunner instead of op or reference per call."""

    compiled: bool
    fused_linear: Callable
    rope_cache_write: Callable
    cache_attention: Callable
    decoder_layers: Callable
    frame_begin: Callable
    frame_end: Callable
    select_step: Callable

    @staticmethod
    def available(device: torch.device | str) -> bool:
        """Whether every decoder op has a compiled kernel for this device."""
        return all(has_kernel(op, device) for op in DECODER_OPS)

    @classmethod
    def choose(cls, device: torch.device | str, compiled: bool | None = None) -> "DecoderOps":
        """The compiled ops when ``compiled`` (default: when available for the device), else the references."""
        if compiled is None:
            compiled = cls.available(device)
        if compiled:
            return cls(True, *(getattr(torch.ops.autogaze_ext, op) for op in DECODER_OPS))
        return cls(False, fused_linear_reference, rope_cache_write_reference, cache_attention_reference,
                   decoder_layers_reference, frame_begin_reference, frame_end_reference, select_step_reference)


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::decoder_layers")
    def _decoder_layers_fake(x, positions, inv_freq, k_cache, v_cache, key_valid, start, w_qkv, w_o, w_gu, w_down,
                             norm_attn, norm_mlp, eps, num_heads, num_kv_heads, last_only=False):
        check_same_device("x", x, positions=positions, inv_freq=inv_freq, k_cache=k_cache, v_cache=v_cache,
                           key_valid=key_valid, start=start, w_qkv=w_qkv, w_o=w_o, w_gu=w_gu, w_down=w_down,
                           norm_attn=norm_attn, norm_mlp=norm_mlp)  # a meta argument among real ones
        B, n, D = x.shape
        return x.new_empty((B, torch.sym_min(n, 1), D) if last_only else (B, n, D))

    # An inference op (it writes the KV caches in place); training runs the decoder modules (model/decoder.py).
    register_inference_only("decoder_layers")
