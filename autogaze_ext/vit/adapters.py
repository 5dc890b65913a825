"""What accelerate() needs from a stock ViT, for transformers SigLIP and timm VisionTransformer.

An adapter reads the stock module's own weights and submodules (nothing is copied or forked): the patch
projection, the learned position grid, the prefix tokens, the transformer blocks run on packed tokens with
varlen_attention, and the final norm. Pooling heads are not part of the gazed features.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..ops.varlen import varlen_attention


class PackedAttention:
    """Attention over the packed tokens of one forward: the offsets and mode every layer shares."""

    def __init__(self, cu_seqlens: torch.Tensor, cu_frames: torch.Tensor, mode: str, num_prefix: int,
                 backend: str = "auto"):
        self.cu_seqlens, self.cu_frames, self.mode, self.num_prefix = cu_seqlens, cu_frames, mode, num_prefix
        self.backend = backend

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q, k, v: (total, heads, head_dim) -> (total, heads, head_dim)."""
        return varlen_attention(q.contiguous(), k.contiguous(), v.contiguous(), self.cu_seqlens, self.cu_frames,
                                self.mode, scale, self.num_prefix, validate=False, backend=self.backend)


class Adapter:
    """Interface of a stock-ViT adapter; the attributes are set by subclasses."""

    model: nn.Module
    patch_size: int
    in_chans: int
    embed_dim: int
    num_prefix: int = 0

    def patch_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(D, C * p * p) weight and (D,) bias of the patch embedding."""
        raise NotImplementedError

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        weight, bias = self.patch_projection()
        return nn.functional.linear(patches.to(weight.dtype), weight, bias)

    def position_grid(self) -> torch.Tensor | None:
        """Learned (gh, gw, D) position embedding of the patch grid, or None."""
        raise NotImplementedError

    def prefix_tokens(self) -> torch.Tensor | None:
        """(num_prefix, D) prefix tokens with their position embedding, or None."""
        return None

    def pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def run_blocks(self, x: torch.Tensor, attend: PackedAttention) -> torch.Tensor:
        raise NotImplementedError

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run_blocks_dense(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The stock blocks on padded (B, L, D) sequences with a (B, 1, L, L) additive mask (the official
        approach, for comparisons)."""
        raise NotImplementedError


def _conv_patch_projection(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    return conv.weight.reshape(conv.weight.shape[0], -1), conv.bias


def _square_conv_patch(conv: nn.Module, what: str) -> int:
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{what} must be an nn.Conv2d, got {type(conv).__name__}")
    k, s = tuple(conv.kernel_size), tuple(conv.stride)
    if k[0] != k[1] or k != s or conv.padding not in ("valid", (0, 0)) or conv.groups != 1 or conv.dilation != (1, 1):
        raise ValueError(f"{what} must be a square patch convolution (kernel == stride, no padding), got "
                         f"kernel {k}, stride {s}, padding {conv.padding}")
    return k[0]


# -------------------------------------------------------------------------------------- transformers SigLIP

_HF_ATTENTION_NAME = "autogaze_varlen"


def _hf_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function: the layer's (1, H, N, d) projections through varlen_attention;
    the packing travels in the attention_mask argument, which the stock layers pass through untouched."""
    if not isinstance(attention_mask, PackedAttention):
        raise RuntimeError(f"attention '{_HF_ATTENTION_NAME}' runs only inside an accelerated forward")
    if query.shape[0] != 1:
        raise RuntimeError("packed attention expects a batch of one packed sequence")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (N, H, d) views of the projections
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    return attention_mask(q, k, v, scale)[None], None  # (1, N, H, d), no weights


def _register_hf_attention():
    from transformers import AttentionInterface

    AttentionInterface.register(_HF_ATTENTION_NAME, _hf_varlen_attention)


class SiglipAdapter(Adapter):
    """transformers SiglipVisionModel / SiglipModel (their vision tower), SigLIP and fixed-resolution SigLIP2
    checkpoints; transformers 4.x (``.vision_model``) and 5.x (flat) layouts."""

    family = "transformers SigLIP"

    def __init__(self, model: nn.Module):
        core = model
        for _ in range(2):  # SiglipModel -> SiglipVisionModel (-> SiglipVisionTransformer in 4.x)
            if all(hasattr(core, a) for a in ("embeddings", "encoder", "post_layernorm")):
                break
            core = getattr(core, "vision_model", None)
            if core is None:
                break
        if core is None or not all(hasattr(core, a) for a in ("embeddings", "encoder", "post_layernorm")):
            raise TypeError(f"{type(model).__name__} has no SigLIP vision tower (embeddings, encoder, post_layernorm)")
        emb = core.embeddings
        if not hasattr(emb, "patch_embedding") or not hasattr(emb, "position_embedding"):
            raise TypeError(f"{type(emb).__name__} is not a SigLIP patch embedding (Siglip2's NaFlex embeddings "
                            "are not supported; load fixed-resolution SigLIP2 checkpoints with SiglipVisionModel)")
        self.model, self.core = model, core
        self.patch_size = _square_conv_patch(emb.patch_embedding, "embeddings.patch_embedding")
        self.in_chans = emb.patch_embedding.in_channels
        self.embed_dim = emb.patch_embedding.out_channels
        n_pos = emb.position_embedding.weight.shape[0]
        side = round(n_pos ** 0.5)
        if side * side != n_pos:
            raise ValueError(f"SigLIP position embedding must be a square grid, got {n_pos} positions")
        self.grid_side = side
        self.layers = list(core.encoder.layers)
        self.configs = list({id(layer.self_attn.config): layer.self_attn.config for layer in self.layers}.values())
        _register_hf_attention()

    def patch_projection(self):
        return _conv_patch_projection(self.core.embeddings.patch_embedding)

    def position_grid(self):
        w = self.core.embeddings.position_embedding.weight
        return w.reshape(self.grid_side, self.grid_side, -1)

    @contextlib.contextmanager
    def _packed_attention(self):
        """Route the stock layers' attention to varlen_attention for the duration of one forward."""
        saved = [c._attn_implementation for c in self.configs]
        try:
            for c in self.configs:
                c._attn_implementation = _HF_ATTENTION_NAME
            yield
        finally:
            for c, s in zip(self.configs, saved):
                c._attn_implementation = s

    def run_blocks(self, x, attend):
        h = x[None]
        with self._packed_attention():
            for layer in self.layers:
                out = layer(h, attend)  # stock SiglipEncoderLayer (4.x returns a tuple)
                h = out[0] if isinstance(out, tuple) else out
        return h[0]

    def final_norm(self, x):
        return self.core.post_layernorm(x)

    def run_blocks_dense(self, x, mask):
        return self.core.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state


# ---------------------------------------------------------------------------------------------------- timm


def _timm_attention(attn: nn.Module, x: torch.Tensor, attend: PackedAttention) -> torch.Tensor:
    """timm Attention on packed tokens (n, D): its own qkv, q/k norms, output norm, gate and projection."""
    n = x.shape[0]
    H, d = attn.num_heads, attn.head_dim
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(x).view(n, 3, H, d).unbind(1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = attend(q, k, v, attn.scale).reshape(n, H * d)
    o = attn.norm(o)
    if gate is not None:
        o = o * gate
    return attn.proj_drop(attn.proj(o))


class TimmAdapter(Adapter):
    """timm VisionTransformer with standard pre-norm Blocks (ViT, DeiT-3, SigLIP/CLIP/DINOv2-style
    variants with class/register tokens, LayerScale, QK-norm). Class and register tokens are kept once per
    video, first in its sequence, with their usual position embedding (none when ``no_embed_class``)."""

    family = "timm VisionTransformer"

    def __init__(self, model: nn.Module):
        from timm.models.vision_transformer import Block

        self.model = model
        pe = model.patch_embed
        self.patch_size = _square_conv_patch(pe.proj, "patch_embed.proj")
        self.in_chans = pe.proj.in_channels
        self.embed_dim = pe.proj.out_channels
        self.grid = tuple(pe.grid_size)
        for i, blk in enumerate(model.blocks):
            if type(blk) is not Block:
                raise TypeError(f"blocks[{i}] is a {type(blk).__name__}; accelerate() supports timm's standard Block")
            a = blk.attn
            if not all(hasattr(a, n) for n in ("qkv", "num_heads", "head_dim", "q_norm", "k_norm", "norm", "proj")):
                raise TypeError(f"blocks[{i}].attn is a {type(a).__name__}; accelerate() supports timm's Attention")
        prefix = [t for t in (model.cls_token, getattr(model, "reg_token", None)) if t is not None]
        self._prefix = prefix
        self.num_prefix = sum(t.shape[1] for t in prefix)
        if self.num_prefix != model.num_prefix_tokens:
            raise TypeError(f"{type(model).__name__} has {model.num_prefix_tokens} prefix tokens but only "
                            f"{self.num_prefix} class/register tokens (distillation tokens are not supported)")

    def patch_projection(self):
        return _conv_patch_projection(self.model.patch_embed.proj)

    def embed_patches(self, patches):
        return self.model.patch_embed.norm(super().embed_patches(patches))

    def _pos(self):
        return self.model.pos_embed[0] if self.model.pos_embed is not None else None

    def position_grid(self):
        pos = self._pos()
        if pos is None:
            return None
        skip = 0 if self.model.no_embed_class else self.num_prefix
        return pos[skip:].reshape(*self.grid, -1)

    def prefix_tokens(self):
        if not self._prefix:
            return None
        tokens = torch.cat([t[0] for t in self._prefix], 0)
        pos = self._pos()
        if pos is not None and not self.model.no_embed_class:
            tokens = tokens + pos[: self.num_prefix]
        return tokens

    def pre_blocks(self, x):
        return self.model.norm_pre(x)  # patch dropout is a training-time token drop: not applied

    def run_blocks(self, x, attend):
        for blk in self.model.blocks:
            x = x + blk.drop_path1(blk.ls1(_timm_attention(blk.attn, blk.norm1(x), attend)))
            x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return x

    def final_norm(self, x):
        return self.model.norm(x)

    def run_blocks_dense(self, x, mask):
        for blk in self.model.blocks:
            x = blk(x, attn_mask=mask)
        return x


def make_adapter(model: nn.Module) -> Adapter:
    """The adapter for a stock model, or a TypeError naming what is supported."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        VisionTransformer = None
    if VisionTransformer is not None and isinstance(model, VisionTransformer):
        return TimmAdapter(model)
    if any(hasattr(m, "embeddings") and hasattr(m, "post_layernorm")
           for m in (model, getattr(model, "vision_model", None)) if m is not None):
        if "Siglip" in type(model).__name__:
            return SiglipAdapter(model)
    raise TypeError(f"accelerate() supports transformers SiglipVisionModel / SiglipModel and timm "
                    f"VisionTransformer, got {type(model).__name__}")
