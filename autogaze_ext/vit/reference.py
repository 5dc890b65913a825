"""The official AutoGaze SigLIP approach on any adapted ViT, as an oracle and a benchmark baseline.

Every slot is kept (padded slots gather token 0 as a dummy), and the stock attention gets a dense
(B, 1, L, L) additive mask: block-causal (or the chosen mode) over frames, padded keys hidden, each token
sees itself (spec §6.1). Only the non-padded rows mean anything; they are what accelerate() computes.
"""
from __future__ import annotations

import torch

from .model import GazedViT
from .tokens import _gaze_field, gazed_patches, scale_position_table


def dense_mask(frame_ids: torch.Tensor, key_padded: torch.Tensor, mode: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) additive mask from per-token frame ids (L,) (-1 for prefix tokens, seen by every token)
    and (B, L) padded-key flags."""
    fi, fj = frame_ids[:, None], frame_ids[None, :]
    idx = torch.arange(frame_ids.shape[0], device=frame_ids.device)
    allowed = {"block_causal": fj <= fi, "causal": idx[None, :] <= idx[:, None],
               "bidirectional": torch.ones_like(fi == fj), "frame_independent": fi == fj}[mode]
    allowed = (allowed | (fj < 0))[None] & ~key_padded[:, None, :]
    allowed = allowed | torch.eye(frame_ids.shape[0], dtype=torch.bool, device=frame_ids.device)
    zero = torch.zeros((), dtype=dtype, device=frame_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def dense_forward(vit: GazedViT, video: torch.Tensor, gaze, mode: str | None = None,
                  return_padded: bool = False):
    """Features of the non-padded tokens per video (a list, prefix tokens first), computed the official way.
    return_padded=True returns the whole (B, P + N, D) output instead (dummy rows included)."""
    a = vit.adapter
    pos, pad = _gaze_field(gaze, "gazing_pos"), _gaze_field(gaze, "if_padded_gazing").bool()
    counts = torch.as_tensor(_gaze_field(gaze, "num_gazing_each_frame"), device=pos.device)
    B, N = pos.shape
    T, V, P = video.shape[1], vit.tokens_per_frame, a.num_prefix
    ids = torch.where(pad, 0, pos)
    flat = (torch.arange(B, device=pos.device)[:, None] * (T * V) + ids).flatten()
    x = a.embed_patches(gazed_patches(video, flat, vit.scales, vit.patch_size))
    grid = a.position_grid()
    if grid is not None:
        x = x + scale_position_table(grid, vit.scales, vit.patch_size).index_select(0, ids.flatten() % V)
    x = x.view(B, N, -1)
    frame_ids = torch.repeat_interleave(torch.arange(T, device=pos.device), counts, output_size=N)
    if P:
        x = torch.cat([a.prefix_tokens().to(x.dtype).expand(B, P, -1), x], 1)
        frame_ids = torch.cat([frame_ids.new_full((P,), -1), frame_ids])
        pad = torch.cat([pad.new_zeros(B, P), pad], 1)
    mask = dense_mask(frame_ids, pad, mode or vit.mode, x.dtype)
    out = a.final_norm(a.run_blocks_dense(a.pre_blocks(x), mask))
    return out if return_padded else [out[b][~pad[b]] for b in range(B)]
