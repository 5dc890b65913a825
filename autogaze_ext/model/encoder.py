"""Vision side of the gaze model: the shallow causal video CNN and the connector (spec §4.1–4.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig


class CausalConv3dBlock(nn.Module):
    """3x3x3 conv that is causal in time: the clip is left-padded with zero frames, or, when
    streaming, prefixed with the cached last input frames. ReLU after, no residual."""

    # From this many output frames (batch x time) on, CUDA calls time the conv both ways once per shape and
    # keep the per-tap form where it is clearly faster (see _conv). Below it: always the 3D conv.
    TAPS_MIN_FRAMES = 128

    def __init__(self, dim: int, t_kernel: int, s_kernel: int):
        super().__init__()
        self.t_kernel = t_kernel
        self.conv3d = nn.Conv3d(
            dim, dim, kernel_size=(t_kernel, s_kernel, s_kernel),
            padding=(0, (s_kernel - 1) // 2, (s_kernel - 1) // 2), bias=True,
        )
        self._taps_choice: dict = {}  # (shape, device, flags) -> per-tap form faster

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None):
        # x: (B, C, T, H, W); past: (B, C, t_kernel-1, H, W) or None (start of a clip)
        if past is None:
            x = F.pad(x, (0, 0, 0, 0, self.t_kernel - 1, 0), value=0.0)
        else:
            x = torch.cat([past, x], dim=2)
        new_past = x[:, :, -(self.t_kernel - 1):]
        return torch.relu(self._conv(x)), new_past

    def _conv_taps(self, x: torch.Tensor) -> torch.Tensor:
        """The conv as one 2D conv per temporal tap over the frames, summed: (B, C, T+t-1, H, W) -> (B, C, T, H, W)."""
        conv = self.conv3d
        B, C, Tp, H, W = x.shape
        T = Tp - self.t_kernel + 1
        y = None
        for dt in range(self.t_kernel):
            xt = x[:, :, dt: dt + T].transpose(1, 2).reshape(B * T, C, H, W)
            yt = F.conv2d(xt, conv.weight[:, :, dt], conv.bias if dt == 0 else None, padding=conv.padding[1:])
            y = yt if y is None else y + yt
        return y.view(B, T, -1, H, W).transpose(1, 2)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """The 3D conv, or on CUDA for large batches the per-tap form when it measured clearly faster.

        cuDNN picks its algorithm per call shape: on an H100 at 64 clips x 16 frames of 14 x 14 x 192 it runs
        the 3D conv as an fp32 implicit GEMM (~15 ms) but the three 2D convs as FFT convolutions (~4.5 ms in
        all), while at one clip the 3D conv is the faster. So the choice is timed once per shape (a few calls
        of each) and the per-tap form kept only when it is at least 20% faster. Both are fp32 sums of the same
        products in another order (differences of a few 1e-6 of the outputs' size)."""
        B, _, Tp, _, _ = x.shape
        frames = B * (Tp - self.t_kernel + 1)
        if not x.is_cuda or frames < self.TAPS_MIN_FRAMES or torch.cuda.is_current_stream_capturing():
            return self.conv3d(x)
        key = (tuple(x.shape), x.device, torch.backends.cudnn.allow_tf32, torch.is_grad_enabled())
        use_taps = self._taps_choice.get(key)
        if use_taps is None:
            t_conv = _median_cuda_ms(lambda: self.conv3d(x))
            t_taps = _median_cuda_ms(lambda: self._conv_taps(x))
            use_taps = self._taps_choice[key] = t_taps < 0.8 * t_conv
        return self._conv_taps(x) if use_taps else self.conv3d(x)


def _median_cuda_ms(fn, reps: int = 3) -> float:
    """Median CUDA-event time of fn after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


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
