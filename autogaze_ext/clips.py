"""Cutting long videos into the 16-frame clips the gaze model works on (spec §2.3)."""
from __future__ import annotations

import numbers

import torch


def split_clips(video: torch.Tensor, clip_len: int = 16, pad_last: bool = True):
    """(B, T, ...) -> ((B * n_clips, clip_len, ...), n_clips) with consecutive clips per video.

    A last partial clip is filled by repeating the final frame (as the official training data
    loader does) when ``pad_last``; otherwise it is dropped. Clips of one video are adjacent rows.
    """
    if not isinstance(video, torch.Tensor) or video.ndim < 2:
        raise TypeError("video: expected a tensor (B, T, ...)")
    if isinstance(clip_len, bool) or not isinstance(clip_len, numbers.Integral) or clip_len < 1:
        raise ValueError(f"clip_len: expected a positive int, got {clip_len!r}")
    if not isinstance(pad_last, bool):
        raise TypeError(f"pad_last: expected a bool, got {type(pad_last).__name__}")
    clip_len = int(clip_len)
    B, T = video.shape[:2]
    n = -(-T // clip_len) if pad_last else T // clip_len
    if n == 0:
        raise ValueError(f"video: {T} frames make no full clip of {clip_len} (use pad_last=True)")
    if n * clip_len > T:
        extra = video[:, -1:].expand(B, n * clip_len - T, *video.shape[2:])
        video = torch.cat([video, extra], dim=1)
    video = video[:, : n * clip_len]
    return video.reshape(B * n, clip_len, *video.shape[2:]), n
