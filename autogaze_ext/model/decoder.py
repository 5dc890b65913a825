"""LLaMA-style gaze decoder with a multi-token head and a task-loss head (spec §4.3).

Module and parameter names follow the official checkpoint (``gaze_decoder.model.layers.N...``).
Attention takes explicit position ids and a key mask so that generation can reproduce the
official position-id behaviour (spec §5.6) with or without a KV cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig


def rope_inv_freq(cfg: DecoderConfig) -> torch.Tensor:
    """Inverse RoPE frequencies in float32, with the llama3 rescaling when configured."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return inv
    if kind != "llama3":
        raise ValueError(f"config: rope_scaling type {kind!r} is not supported (default or llama3)")
    factor = rs["factor"]
    low, high = rs["low_freq_factor"], rs["high_freq_factor"]
    old_len = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """positions (B, L) -> cos, sin (B, 1, L, head_dim); angles computed in float32."""
    freqs = positions.float()[..., None] * inv_freq.to(positions.device)[None, None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.h, self.kvh, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        D = cfg.hidden_size
        self.q_proj = nn.Linear(D, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(D, self.kvh * self.d, bias=False)
        self.v_proj = nn.Linear(D, self.kvh * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, D, bias=False)

    def forward(self, x, cos, sin, allowed, cache: "KVCache | None", layer: int, sdpa: bool = False):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.kvh, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.kvh, self.d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        if self.kvh != self.h:
            k = k.repeat_interleave(self.h // self.kvh, dim=1)
            v = v.repeat_interleave(self.h // self.kvh, dim=1)
        if sdpa:  # teacher-forced training: torch's fused attention (autograd, no (L, L) score copies kept)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            return self.o_proj(out.transpose(1, 2).reshape(B, L, self.h * self.d))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d))
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = (probs @ v).transpose(1, 2).reshape(B, L, self.h * self.d)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, allowed, cache, layer, sdpa: bool = False):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed, cache, layer, sdpa)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class KVCache:
    """Growing per-layer key/value cache, (B, kv_heads, S, head_dim) per layer."""

    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def select_rows(self, rows: torch.Tensor) -> "KVCache":
        out = KVCache(len(self.k))
        out.k = [None if t is None else t[rows] for t in self.k]
        out.v = [None if t is None else t[rows] for t in self.v]
        return out


class GazeDecoder(nn.Module):
    """``LlamaForCausalLM_MultiTokenPred``: LLaMA trunk + ``lm_head`` (K x vocab) + loss head (K)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        K = cfg.num_multi_token_pred
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size * K, bias=False)
        self.task_loss_prediction_head = nn.Linear(cfg.hidden_size, K, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                cache: KVCache | None = None, sdpa: bool = False) -> torch.Tensor:
        """Run the trunk on new tokens.

        x: (B, L, D) embeddings of the tokens being fed; positions: (B, L) RoPE positions;
        key_mask: (B, S) bool over every key the new tokens may see (cached + new, S = past + L);
        a query at sequence index i sees key j when j <= i and key_mask[j].
        sdpa: attention through ``F.scaled_dot_product_attention`` (as the official decoder's default ``sdpa``;
        used by teacher-forced scoring for training) instead of the explicit softmax of generation.
        Returns the final-normed hidden states (B, L, D).
        """
        B, L, _ = x.shape
        past = 0 if cache is None else cache.length
        S = past + L
        if key_mask.shape != (B, S):
            raise ValueError(f"key_mask: expected shape {(B, S)}, got {tuple(key_mask.shape)}")
        q_idx = torch.arange(past, S, device=x.device)[:, None]
        k_idx = torch.arange(S, device=x.device)[None, :]
        allowed = (k_idx <= q_idx)[None, None] & key_mask[:, None, None, :]
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, allowed, cache, i, sdpa)
        return self.model.norm(x)

    def heads(self, h: torch.Tensor):
        """h (B, D) -> logits (B, K, vocab) float32 and predicted task losses (B, K) float32."""
        K = self.cfg.num_multi_token_pred
        logits = self.lm_head(h).float().view(h.shape[0], K, self.cfg.vocab_size)
        return logits, self.task_loss_prediction_head(h).float()
