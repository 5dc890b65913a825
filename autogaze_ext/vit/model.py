"""accelerate(): run a stock ViT on the gazed tokens of a video only."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..ops._common import has_kernel
from ..ops.varlen import BACKENDS, MODES
from .adapters import Adapter, PackedAttention, make_adapter
from .graphs import BlockGraphs
from .tokens import PackedGaze, check_scales, pack_gaze, packed_patches, scale_position_table, tokens_per_frame


@dataclass
class GazedFeatures:
    """Output of an accelerated ViT: the features of every non-padded gazed token (after the final norm),
    packed video after video in gaze order, each video's prefix tokens (timm class / register tokens) first.

    ``features[cu_seqlens[b]:cu_seqlens[b + 1]]`` is video b; ``cu_frames`` are the frame offsets (with a
    leading prefix frame per video when ``num_prefix`` > 0)."""

    features: torch.Tensor  # (total, D)
    cu_seqlens: torch.Tensor  # (B + 1,) int32
    cu_frames: torch.Tensor  # int32
    lengths: list[int]
    num_prefix: int = 0

    def per_video(self) -> list[torch.Tensor]:
        """Features of each video, (L_b, D) each."""
        return list(self.features.split(self.lengths, dim=0))


class GazedViT(nn.Module):
    """A stock ViT that also runs on gazed multi-scale tokens. ``model`` is the wrapped module itself (same
    parameters); calling without ``gaze`` is the stock forward."""

    def __init__(self, model: nn.Module, scales: Sequence[int] = (32, 64, 112, 224), patch_size: int | None = None,
                 mode: str = "block_causal", attention_backend: str = "auto", cuda_graphs: bool | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.adapter: Adapter = make_adapter(model)
        if patch_size is not None and patch_size != self.adapter.patch_size:
            raise ValueError(f"patch_size={patch_size} but the model's patch embedding uses "
                             f"{self.adapter.patch_size}-px patches")
        self.patch_size = self.adapter.patch_size
        self.scales = check_scales(scales, self.patch_size)
        self.tokens_per_frame = tokens_per_frame(self.scales, self.patch_size)
        self.mode = _check_mode(mode)
        if attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {BACKENDS}, got {attention_backend!r}")
        self.attention_backend = attention_backend
        if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be None (auto), True or False, got {cuda_graphs!r}")
        self.cuda_graphs = cuda_graphs
        self._graphs = BlockGraphs()

    def clear_graphs(self) -> None:
        """Drop the captured block-stack graphs (after replacing parameter tensors or moving the model)."""
        self._graphs.clear()

    # cuda_graphs=None replays graphs only up to this many packed rows: above it the kernels are long enough
    # that launching them eagerly costs nothing measurable, while every new bucket would pay a capture
    # (benchmarks/RESULTS.md, "Encode pipeline")
    GRAPH_MAX_ROWS = 16384

    def _use_graphs(self, x: torch.Tensor) -> bool:
        """Graphs need CUDA, the compiled attention kernel (torch's varlen path reads offsets on the host)
        and no autograd; None picks them whenever that holds and the call has at most GRAPH_MAX_ROWS rows."""
        if self.cuda_graphs is False or (self.cuda_graphs is None and x.shape[0] > self.GRAPH_MAX_ROWS):
            return False
        able = (x.is_cuda and self.attention_backend in ("auto", "compiled") and has_kernel("varlen_attention", "cuda")
                and not (torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters()))
                and not torch.cuda.is_current_stream_capturing())
        if self.cuda_graphs and not able:
            raise RuntimeError("cuda_graphs=True needs CUDA tensors, the compiled varlen_attention kernel, "
                               "attention_backend 'auto' or 'compiled', and no autograd (use torch.no_grad())")
        return able

    def extra_repr(self) -> str:
        return (f"family={self.adapter.family!r}, scales={self.scales}, patch_size={self.patch_size}, "
                f"tokens_per_frame={self.tokens_per_frame}, mode={self.mode!r}")

    def pack(self, video: torch.Tensor, gaze, validate: bool = True) -> PackedGaze:
        """Check the video against the gaze and lay out the packed tokens (one device->host sync)."""
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or not video.is_floating_point():
            raise ValueError(f"video must be a float (B, T, C, H, W) tensor, got "
                             f"{getattr(video, 'shape', type(video).__name__)}")
        if video.shape[2] != self.adapter.in_chans:
            raise ValueError(f"video has {video.shape[2]} channels, the model expects {self.adapter.in_chans}")
        V = _gaze_tokens_per_frame(gaze)
        if V is not None and V != self.tokens_per_frame:
            raise ValueError(f"gaze has {V} tokens per frame but scales {self.scales} with {self.patch_size}-px "
                             f"patches make {self.tokens_per_frame}")
        packed = pack_gaze(gaze, video.shape[1], self.tokens_per_frame, self.adapter.num_prefix, validate)
        if packed.flat_ids.device != video.device:
            raise ValueError(f"gaze is on {packed.flat_ids.device} but video on {video.device}")
        if len(packed.lengths) != video.shape[0]:
            raise ValueError(f"gaze has {len(packed.lengths)} rows but video {video.shape[0]}")
        return packed

    def embed(self, video: torch.Tensor, packed: PackedGaze) -> torch.Tensor:
        """(total, D) input tokens: gazed patches x patch embedding + per-scale position embedding, and the
        prefix tokens at their rows."""
        a = self.adapter
        x = a.embed_patches(packed_patches(video, packed, self.scales, self.patch_size))
        grid = a.position_grid()
        if grid is not None:
            x = x + scale_position_table(grid, self.scales, self.patch_size).index_select(0, packed.local_ids)
        prefix = a.prefix_tokens()
        if prefix is None:
            return x
        out = x.new_empty(packed.total, x.shape[1])
        out[packed.rows] = x
        out[packed.prefix_rows] = prefix.to(x.dtype).repeat(len(packed.lengths), 1)
        return out

    def forward(self, video: torch.Tensor | None = None, *args, gaze=None, mode: str | None = None,
                as_list: bool = False, validate: bool = True, pixel_values: torch.Tensor | None = None, **kwargs):
        """Stock forward without ``gaze``. With ``gaze`` (a GazeOutput or the official dict; ids laid out for
        ``scales``): video (B, T, C, H, W) preprocessed for this ViT -> GazedFeatures (or, with as_list=True,
        a list of (L_b, D) tensors). mode overrides the attention mode given to accelerate().
        ``pixel_values=`` (the stock models' name for the input) may stand for ``video`` in both."""
        if pixel_values is not None:
            if video is not None:
                raise TypeError("pass the input once: as video (positional) or as pixel_values, not both")
            video = pixel_values
        if video is None:
            raise TypeError("missing the input: vit(video, gaze=...) or vit(pixel_values=...)")
        if gaze is None:
            return self.model(video, *args, **kwargs)  # positional: SigLIP's pixel_values, timm's x
        if args or kwargs:
            raise TypeError(f"the gazed forward takes only video, gaze, mode, as_list and validate; got extra "
                            f"{len(args)} positional and {sorted(kwargs)} keyword arguments")
        packed = self.pack(video, gaze, validate)
        mode = _check_mode(mode or self.mode)
        x = self.embed(video, packed)
        run = self._block_stack(mode, packed.num_prefix)
        if self._use_graphs(x):
            x = self._graphs(run, x, packed.cu_seqlens, packed.cu_frames, (mode, packed.num_prefix))
        else:
            x = run(x, packed.cu_seqlens, packed.cu_frames)
        out = GazedFeatures(x, packed.cu_seqlens, packed.cu_frames, packed.lengths, packed.num_prefix)
        return out.per_video() if as_list else out


    def _block_stack(self, mode: str, num_prefix: int):
        """(x, cu_seqlens, cu_frames) -> features: pre-norm, the blocks on packed tokens, final norm."""
        a = self.adapter

        def run(x, cu_seqlens, cu_frames):
            attend = PackedAttention(cu_seqlens, cu_frames, mode, num_prefix, self.attention_backend)
            return a.final_norm(a.run_blocks(a.pre_blocks(x), attend))

        return run


def _check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _gaze_tokens_per_frame(gaze) -> int | None:
    v = gaze.get("num_vision_tokens_each_frame") if isinstance(gaze, dict) else getattr(
        gaze, "num_vision_tokens_each_frame", None)
    return int(v) if v is not None else None


def accelerate(model: nn.Module, scales: Sequence[int] = (32, 64, 112, 224), patch_size: int | None = None,
               mode: str = "block_causal", attention_backend: str = "auto",
               cuda_graphs: bool | None = None) -> GazedViT:
    """Wrap a stock ViT so that ``vit(video, gaze=out)`` computes only the gazed tokens.

    model: a transformers ``SiglipVisionModel`` / ``SiglipModel`` (SigLIP or fixed-resolution SigLIP2
    checkpoints) or a timm ``VisionTransformer``; its weights are used as they are. scales: the sides the
    gaze ids were laid out for (``target_scales`` of the gaze call; ascending); patch_size: checked against
    the model's. mode: attention between tokens of one video, ``block_causal`` (the official default: a token
    of frame t sees frames 0..t), ``causal``, ``bidirectional`` or ``frame_independent``. attention_backend:
    the ``backend`` of varlen_attention (``auto``: the compiled kernel when built). cuda_graphs: run the block
    stack as a CUDA-graph replay (None: whenever possible — CUDA, the compiled attention kernel, no autograd;
    see ``autogaze_ext.vit.graphs``); one graph per bucket of token counts is captured on first use.

    Position embeddings: the model's learned grid, bicubically resized to each scale's patch grid as the
    official AutoGaze SigLIP does. timm class / register tokens are kept once per video, first in its
    sequence, with their usual position embedding; every token of the video sees them. Pooling heads
    (SigLIP's attention pooling, timm's pooling and classifier) are not applied.
    """
    return GazedViT(model, scales, patch_size, mode, attention_backend, cuda_graphs)
