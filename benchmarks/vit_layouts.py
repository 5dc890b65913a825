"""Gaze layouts shared by bench_vit.py and bench_attention.py.

Kept fraction f: per frame, max(1, round(f * 196)) of the 196 finest-scale (224-px) tokens, chosen at random
independently per video and frame. The mixed-scale case is the official fixture's SigLIP gazing (spec: an
AutoGaze model's output on 8 real frames, all four scales, padded slots included).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FINEST_OFFSET, FINEST, V = 69, 196, 265  # native layout: 4 + 16 + 49 coarser tokens, then 14x14


def kept_per_frame(f: float) -> int:
    return max(1, round(f * FINEST))


def random_finest_gaze(B: int, T: int, f: float, seed: int = 0, device="cpu") -> dict:
    """Official-style gaze dict (no padding) keeping a fraction f of the finest-scale tokens per frame."""
    g = torch.Generator().manual_seed(seed)
    k = kept_per_frame(f)
    local = torch.stack([torch.stack([torch.randperm(FINEST, generator=g)[:k] for _ in range(T)]) for _ in range(B)])
    pos = (local + FINEST_OFFSET + V * torch.arange(T)[None, :, None]).flatten(1)
    return dict(gazing_pos=pos.to(device), if_padded_gazing=torch.zeros_like(pos, dtype=torch.bool, device=device),
                num_gazing_each_frame=torch.full((T,), k, device=device), num_vision_tokens_each_frame=V)


def fixture_gaze(device="cpu") -> dict | None:
    """The official SigLIP fixture's gazing (B=1, 8 frames), or None when the fixtures are absent."""
    for c in [os.environ.get("AUTOGAZE_FIXTURES"), REPO / ".fixtures/official", REPO.parent / "shared/fixtures/official"]:
        f = Path(c) / "siglip" / "fixture.safetensors" if c else None
        if f is not None and f.is_file():
            from safetensors.torch import load_file

            fx = load_file(str(f))
            return dict(gazing_pos=fx["gazing_pos"].to(device), if_padded_gazing=fx["if_padded_gazing"].bool().to(device),
                        num_gazing_each_frame=fx["num_gazing_each_frame"].to(device), num_vision_tokens_each_frame=V)
    return None


def real_counts(gaze: dict) -> list[list[int]]:
    """Non-padded tokens per (video, frame)."""
    parts = (~gaze["if_padded_gazing"]).split(gaze["num_gazing_each_frame"].tolist(), dim=1)
    return torch.stack([p.sum(1) for p in parts], 1).tolist()
