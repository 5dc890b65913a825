"""Gaze ids <-> per-scale masks (spec §3.3, §5.9)."""
from __future__ import annotations

import torch

from ..ops.gaze import gaze_decode, split_gaze_mask


def gazing_masks(gazing_pos: torch.Tensor, if_padded: torch.Tensor, num_frames: int, grids: list[int]) -> list:
    """Per-scale 0/1 float masks (B, T, g_s**2) of the gazed ids; padded slots are ignored (the compiled op when built, PyTorch otherwise)."""
    mask, _ = gaze_decode(gazing_pos, if_padded, num_frames, list(grids), validate=False)
    return split_gaze_mask(mask, grids)


def positions_from_masks(mask: torch.Tensor):
    """(B, T, V) 0/1 mask -> ids in ascending order per frame, as the official recovery does.

    Frame length = the largest count over the batch; shorter rows are padded with -1 (then
    offset by V*t like every id). Returns (gazing_pos, if_padded_gazing, num_gazing_each_frame).
    """
    B, T, V = mask.shape
    m = mask > 0
    counts = m.sum(dim=-1)  # (B, T)
    lengths = counts.max(dim=0).values  # (T,)
    idx = torch.arange(V, device=mask.device).expand(B, T, V)
    key = torch.where(m, idx, idx + V)  # gazed ids first, ascending
    order = key.argsort(dim=-1, stable=True)
    ids, pads = [], []
    for t, n in enumerate(lengths.tolist()):
        sel = order[:, t, :n]
        pad = torch.arange(n, device=mask.device)[None, :] >= counts[:, t : t + 1]
        ids.append(torch.where(pad, torch.full_like(sel, -1), sel) + V * t)
        pads.append(pad)
    return torch.cat(ids, dim=1), torch.cat(pads, dim=1), lengths.to(torch.long)
