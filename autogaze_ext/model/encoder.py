"""Vision side of the gaze model: the shallow causal video CNN and the connector (spec §4.1–4.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig


class CausalConv3dBlock(nn.Module):
    """3x3x3 conv that is causal in time: the clip is left-padded with zero frames, or, when
    streaming, prefixed with the cached last input frames. ReLU after, no residual."""

    def __init__(self, dim: int, t_kernel: int, s_kernel: int):
        super().__init__()
        self.t_kernel = t_kernel
        self.conv3d = nn.Conv3d(
            dim, dim, kernel_size=(t_kernel, s_kernel, s_kernel),
            padding=(0, (s_kernel - 1) // 2, (s_kernel - 1) // 2), bias=True,
        )

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None):
        # x: (B, C, T, H, W); past: (B, C, t_kernel-1, H, W) or None (start of a clip)
        if past is None:
            x = F.pad(x, (0, 0, 0, 0, self.t_kernel - 1, 0), value=0.0)
        else:
            x = torch.cat([past, x], dim=2)
        new_past = x[:, :, -(self.t_kernel - 1):]
        return torch.relu(self.conv3d(x)), new_past


class ShallowVideoConvNet(nn.Module):
    """16x16 patch conv -> LayerNorm over channels -> causal 3x3x3 conv + ReLU -> 1x1 conv."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        k = cfg.kernel_size
        self.temporal_conv = nn.Conv3d(3, cfg.hidden_dim, kernel_size=(1, k, k), stride=(1, k, k), bias=True)
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.blocks = nn.ModuleList(
            CausalConv3dBlock(cfg.hidden_dim, cfg.trunk_temporal_kernel_size, cfg.trunk_spatial_kernel_size)
            for _ in range(cfg.depth)
        )
        self.out_proj = nn.Conv3d(cfg.hidden_dim, cfg.out_dim, kernel_size=1, bias=True)

    def patch_embed(self, video: torch.Tensor) -> torch.Tensor:
        """temporal_conv, a (1, k, k) conv with stride k: (B, T, 3, S, S) -> (B, T, h, w, C).

        On CUDA it runs as one GEMM over the frames' k x k patches: cuDNN's kernel for this conv reaches
        about a third of the GEMM's speed (benchmarks/RESULTS.md), with the same sums (bit-identical on an
        H100). Elsewhere the conv itself."""
        conv = self.temporal_conv
        B, T, C, H, W = video.shape
        k = conv.kernel_size[-1]
        if not video.is_cuda or H % k or W % k:
            return conv(video.permute(0, 2, 1, 3, 4)).permute(0, 2, 3, 4, 1)
        h, w = H // k, W // k
        patches = video.reshape(B, T, C, h, k, w, k).permute(0, 1, 3, 5, 2, 4, 6).reshape(B * T * h * w, C * k * k)
        y = torch.addmm(conv.bias, patches, conv.weight.view(conv.out_channels, -1).t())
        return y.view(B, T, h, w, conv.out_channels)

    def forward(self, video: torch.Tensor, past: list[torch.Tensor] | None = None):
        """video (B, T, 3, S, S) -> features (B, T, h*w, C) and the new per-block conv caches."""
        x = self.norm(self.patch_embed(video)).permute(0, 4, 1, 2, 3)  # (B, C, T, h, w)
        new_past = []
        for i, block in enumerate(self.blocks):
            x, p = block(x, None if past is None else past[i])
            new_past.append(p)
        x = self.out_proj(x)  # (B, C, T, h, w)
        return x.flatten(3).permute(0, 2, 3, 1), new_past


class Connector(nn.Module):
    """Adds the learned per-position embedding to every frame's vision tokens."""

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(num_tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_embed
