"""Gazed tokens for a ViT: packing a gaze output, multi-scale patches, per-scale position embeddings.

Layout (spec §3.4): per frame, for each scale s (ascending) the frame is resized to s x s (bicubic,
align_corners=False, no antialias) and cut into patch x patch patches, row-major, each flattened
channel-major (C * p * p, the order of a Conv2d weight). A gaze id is an index into the concatenation of
those V = sum((s // p)^2) patches over the scales, plus V * t for frame t.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops._common import MAX_GRID, MAX_PATCH, MAX_SCALES, has_kernel
from ..ops.patches import gather_patches, multiscale_pos_table


def check_scales(scales, patch_size: int) -> tuple[int, ...]:
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise TypeError(f"scales must be a non-empty sequence of ints (frame sides per scale), got {scales!r}")
    out = []
    for i, s in enumerate(scales):
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"scales[{i}] must be an int, got {type(s).__name__}")
        if s < patch_size:
            raise ValueError(f"scales[{i}] = {s} is smaller than the patch size {patch_size}")
        out.append(s)
    if out != sorted(set(out)):
        raise ValueError(f"scales must be strictly ascending, got {list(scales)}")
    return tuple(out)


def tokens_per_frame(scales: Sequence[int], patch_size: int) -> int:
    return sum((s // patch_size) ** 2 for s in scales)


@dataclass
class PackedGaze:
    """The non-padded gazed tokens of a batch, in gaze order, videos one after another.

    Each video's sequence is its ``num_prefix`` prefix tokens (class / register tokens, a frame of their own)
    followed by its gazed tokens frame by frame. ``flat_ids`` index the (B * T * V) multi-scale patches of the
    batch, ``local_ids`` the V patches of one frame; ``rows`` are the sequence rows of the gazed tokens.
    """

    gazing_pos: torch.Tensor  # (B, N) int64, the gaze's slots
    dropped: torch.Tensor  # (B, N) bool, the slots not kept (padded, or an unvalidated id out of range)
    flat_ids: torch.Tensor  # (n,) int64
    local_ids: torch.Tensor  # (n,) int64
    rows: torch.Tensor  # (n,) int64
    prefix_rows: torch.Tensor  # (B * num_prefix,) int64
    cu_seqlens: torch.Tensor  # (B + 1,) int32
    cu_frames: torch.Tensor  # (B * (T + [num_prefix > 0]) + 1,) int32
    lengths: list[int]  # sequence length per video (host)
    num_prefix: int
    num_frames: int

    @property
    def total(self) -> int:
        return sum(self.lengths)


def _gaze_field(gaze, name: str):
    try:
        return gaze[name]
    except (KeyError, TypeError):
        value = getattr(gaze, name, None)
    if value is None:
        raise TypeError(f"gaze must be a GazeOutput or a dict with '{name}', got {type(gaze).__name__}")
    return value


def pack_gaze(gaze, num_frames: int, tokens_per_frame: int, num_prefix: int = 0, validate: bool = True) -> PackedGaze:
    """Drop the padded slots of a gaze output (GazeOutput or the official dict: gazing_pos (B, N),
    if_padded_gazing (B, N), num_gazing_each_frame (T,)) and lay out the packed sequences.

    A slot belongs to the frame whose segment of num_gazing_each_frame holds it (as in the official attention
    mask); its id picks the patch. The layout is index bookkeeping on a few thousand slots, done on the host:
    one device->host copy of the gaze and one host->device copy of the result (on the GPU, two dozen tiny
    kernels and their syncs would cost more than the ViT on a few hundred tokens)."""
    pos, pad = _gaze_field(gaze, "gazing_pos"), _gaze_field(gaze, "if_padded_gazing")
    counts = _gaze_field(gaze, "num_gazing_each_frame")
    if not isinstance(pos, torch.Tensor) or pos.dim() != 2 or pos.dtype != torch.int64:
        raise ValueError(f"gaze gazing_pos must be a (B, N) int64 tensor, got {getattr(pos, 'shape', pos)}")
    if not isinstance(pad, torch.Tensor) or pad.shape != pos.shape:
        raise ValueError(f"gaze if_padded_gazing must be a tensor shaped like gazing_pos {tuple(pos.shape)}")
    dev, (B, N) = pos.device, pos.shape
    parts = [pos.flatten(), pad.to(dev).flatten().to(torch.int64)]
    if isinstance(counts, torch.Tensor) and counts.device == dev:
        parts.append(counts.flatten().to(torch.int64))
    host = torch.cat(parts).cpu()  # the one device->host copy
    pos_h, pad_h = host[: B * N].view(B, N), host[B * N: 2 * B * N].view(B, N).bool()
    if len(parts) == 3:
        counts = host[2 * B * N:]
    counts = [int(c) for c in (counts.tolist() if isinstance(counts, torch.Tensor) else counts)]
    if len(counts) != num_frames or sum(counts) != N or min(counts, default=0) < 0:
        raise ValueError(f"gaze num_gazing_each_frame {counts} must have one count per frame ({num_frames}) "
                         f"summing to gazing_pos's {N} slots")
    video_tokens = num_frames * tokens_per_frame
    in_range = (pos_h >= 0) & (pos_h < video_tokens)
    if validate:
        bad = ~pad_h & ~in_range
        if bool(bad.any()):
            raise ValueError(f"gazing_pos holds non-padded id {int(pos_h[bad][0])} outside [0, {video_tokens}) "
                             f"({num_frames} frames x {tokens_per_frame} tokens per frame)")
    real = ~pad_h & in_range  # unvalidated out-of-range ids count as padded, as in gather_patches
    frame_of_slot = torch.repeat_interleave(torch.arange(num_frames), torch.tensor(counts, dtype=torch.int64),
                                            output_size=N)
    per_frame = torch.zeros(B, num_frames, dtype=torch.int64)
    per_frame.index_add_(1, frame_of_slot, real.long())
    if num_prefix:
        per_frame = torch.cat([per_frame.new_full((B, 1), num_prefix), per_frame], 1)
    lengths_t = per_frame.sum(1)
    zero = per_frame.new_zeros(1)
    cu_frames = torch.cat([zero, per_frame.flatten().cumsum(0)])
    cu_seqlens = torch.cat([zero, lengths_t.cumsum(0)])
    slots = real.flatten().nonzero().squeeze(1)  # (b, n) order
    ids = pos_h.flatten()[slots]
    video_of = torch.div(slots, N, rounding_mode="floor")
    rows = torch.arange(ids.shape[0]) + num_prefix * (video_of + 1)
    prefix_rows = (cu_seqlens[:-1, None] + torch.arange(num_prefix)).flatten()
    # one copy each way: int64 bookkeeping, int32 offsets
    n, P = ids.shape[0], prefix_rows.shape[0]
    longs = torch.cat([video_of * video_tokens + ids, ids % tokens_per_frame, rows, prefix_rows,
                       (~real).flatten().long()]).to(dev)
    offsets = torch.cat([cu_seqlens, cu_frames]).to(torch.int32).to(dev)
    flat_ids, local_ids, rows_d, prefix_d, dropped = longs.split([n, n, n, P, B * N])
    return PackedGaze(gazing_pos=pos, dropped=dropped.view(B, N).bool(), flat_ids=flat_ids, local_ids=local_ids,
                      rows=rows_d, prefix_rows=prefix_d, cu_seqlens=offsets[: B + 1], cu_frames=offsets[B + 1:],
                      lengths=lengths_t.tolist(), num_prefix=num_prefix, num_frames=num_frames)


def gazed_patches(video: torch.Tensor, flat_ids: torch.Tensor, scales: Sequence[int], patch_size: int) -> torch.Tensor:
    """The multi-scale patches at flat_ids (indices into the (B * T * V) patches of the batch), as rows
    (n, C * p * p) in video's dtype. The whole PyTorch implementation of patch extraction lives here so a
    fused kernel can replace it: per scale, bicubic resize of every frame (align_corners=False, no antialias,
    as the official SigLIP), unfold, and a gather of the rows whose id falls in that scale."""
    B, T, C = video.shape[:3]
    frames = video.reshape(B * T, C, *video.shape[3:])
    V = tokens_per_frame(scales, patch_size)
    frame, local = flat_ids // V, flat_ids % V
    out = video.new_empty(flat_ids.shape[0], C * patch_size * patch_size)
    offset = 0
    for s in scales:
        n = (s // patch_size) ** 2
        resized = F.interpolate(frames, size=(s, s), mode="bicubic", align_corners=False)
        patches = F.unfold(resized, kernel_size=patch_size, stride=patch_size).transpose(1, 2).reshape(B * T * n, -1)
        in_scale = (local >= offset) & (local < offset + n)
        idx = (frame * n + (local - offset)).clamp(0, B * T * n - 1)  # rows outside the scale are discarded
        out = torch.where(in_scale[:, None], patches.index_select(0, idx), out)
        offset += n
    return out


def gather_supported(scales: Sequence[int], patch_size: int, video: torch.Tensor) -> bool:
    """Whether the compiled gather_patches op serves this layout for this video's device."""
    return (has_kernel("gather_patches", video.device) and len(scales) <= MAX_SCALES and patch_size <= MAX_PATCH
            and all(s // patch_size <= MAX_GRID for s in scales))


def packed_patches(video: torch.Tensor, packed: PackedGaze, scales: Sequence[int], patch_size: int) -> torch.Tensor:
    """The gazed patches of a packed gaze, (n, C * p * p) float32 (rows in packing order).

    With the compiled gather_patches op, only the gazed patches are sampled, straight from the frames (float32
    arithmetic whatever the video's dtype); otherwise gazed_patches builds the pyramids in PyTorch."""
    if gather_supported(scales, patch_size, video):
        n = packed.flat_ids.shape[0]
        out, _ = gather_patches(video.float().contiguous(), packed.gazing_pos, packed.dropped, scales, patch_size,
                                total=n, validate=False)
        return out
    return gazed_patches(video, packed.flat_ids, scales, patch_size)


def scale_position_table(grid: torch.Tensor, scales: Sequence[int], patch_size: int) -> torch.Tensor:
    """(V, D) position embedding of every token of a frame: the learned (gh, gw, D) grid at each scale's
    (s // p) x (s // p) patch grid, bicubically resized (align_corners=False, no antialias; the grid itself
    where it already has that size), as the official AutoGaze SigLIP does. Square grids go through
    multiscale_pos_table (the compiled op, float32); a non-square grid (timm with a non-square image size)
    is resized here."""
    gh, gw, D = grid.shape
    if gh == gw:
        return multiscale_pos_table(grid.reshape(gh * gw, D), [s // patch_size for s in scales])
    parts = []
    for s in scales:
        n = s // patch_size
        # channels as the batch: the resize kernels parallelise over output pixels and batch only
        resized = F.interpolate(grid.permute(2, 0, 1)[:, None], size=(n, n), mode="bicubic", align_corners=False)
        parts.append(resized[:, 0].permute(1, 2, 0).reshape(n * n, D))
    return torch.cat(parts, 0)
