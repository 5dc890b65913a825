"""gaze_decode: video-global gaze ids -> per-frame mask and (frame, scale, row, col) coordinates.

Python face of torch.ops.autogaze_ext.gaze_decode: argument checks, fake kernel, pure-PyTorch reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import HAS_EXTENSION, check_gaze_ids, check_grids, check_int, check_same_device, has_kernel


def _check_gaze_decode_args(gazing_pos, if_padded, num_frames, grids) -> tuple[int, tuple[int, ...]]:
    check_gaze_ids(gazing_pos, if_padded)
    if if_padded.device != gazing_pos.device:
        raise ValueError(f"if_padded is on {if_padded.device} but gazing_pos on {gazing_pos.device}")
    return check_int(num_frames, "num_frames", 1), check_grids(grids)


def gaze_decode_reference(gazing_pos: torch.Tensor, if_padded: torch.Tensor, num_frames: int,
                          grids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch gaze_decode (no argument checks); same outputs as the kernels, invalid ids included."""
    dev = gazing_pos.device
    B, N = gazing_pos.shape
    sizes = [g * g for g in grids]
    V = sum(sizes)
    video = num_frames * V
    valid = ~if_padded & (gazing_pos >= 0) & (gazing_pos < video)
    ids = torch.where(valid, gazing_pos, 0)
    t, local = ids // V, ids % V
    ends = torch.tensor(sizes, device=dev).cumsum(0)
    s = torch.searchsorted(ends, local, right=True)
    k = local - (ends - torch.tensor(sizes, device=dev))[s]
    side = torch.tensor(list(grids), device=dev)[s]
    coords = torch.stack([t, s, k // side, k % side], dim=-1).to(torch.int32)
    coords = torch.where(valid.unsqueeze(-1), coords, -1)
    # Spec §3.3: scatter into one extra column that swallows padded (and invalid) slots, then drop it.
    flat = torch.zeros(B * video + 1, dtype=torch.float32, device=dev)
    rows = torch.arange(B, device=dev).unsqueeze(1) * video
    flat[torch.where(valid, ids + rows, B * video).reshape(-1)] = 1.0
    return flat[:-1].view(B, num_frames, V), coords


def gaze_decode(gazing_pos: torch.Tensor, if_padded: torch.Tensor, num_frames: int, grids: Sequence[int],
                validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode video-global gaze ids (spec §3.2-3.3).

    gazing_pos: (B, N) int64, ids `local + V*t` with V = sum(g*g for g in grids); if_padded: (B, N) bool
    (padded slots may hold anything); grids: grid side per scale, ascending (native AutoGaze [2, 4, 7, 14]).
    Returns mask (B, T, V) float32 with 1.0 at every non-padded id, and coords (B, N, 4) int32 =
    (frame, scale, row, col) per slot, -1 for padded slots.

    validate=True checks that non-padded ids lie in [0, T*V) and raises ValueError otherwise; that costs
    one device->host sync, so fast paths pass validate=False (invalid ids are then skipped: no mask
    entry, coords -1). Validation is skipped while torch.compile traces.
    """
    num_frames, grids = _check_gaze_decode_args(gazing_pos, if_padded, num_frames, grids)
    if validate and gazing_pos.device.type != "meta" and not torch.compiler.is_compiling():
        video = num_frames * sum(g * g for g in grids)
        bad = ~if_padded & ((gazing_pos < 0) | (gazing_pos >= video))
        if bool(bad.any()):
            first = int(gazing_pos[bad][0])
            raise ValueError(f"gazing_pos holds non-padded id {first} outside [0, {video}) "
                             f"(num_frames={num_frames} x {video // num_frames} tokens per frame)")
    if has_kernel("gaze_decode", gazing_pos.device):
        mask, coords = torch.ops.autogaze_ext.gaze_decode(gazing_pos, if_padded, num_frames, list(grids))
        return mask, coords
    return gaze_decode_reference(gazing_pos, if_padded, num_frames, grids)


def split_gaze_mask(mask: torch.Tensor, grids: Sequence[int]) -> list[torch.Tensor]:
    """(B, T, V) mask -> list of per-scale (B, T, g*g) views, the official `gazing_mask` layout."""
    return list(mask.split([g * g for g in check_grids(grids)], dim=-1))


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::gaze_decode")
    def _gaze_decode_fake(gazing_pos, if_padded, num_frames, grids):
        check_same_device("gazing_pos", gazing_pos, if_padded=if_padded)  # a meta argument among real ones
        B, N = gazing_pos.shape
        V = sum(g * g for g in grids)
        return (gazing_pos.new_empty((B, num_frames, V), dtype=torch.float32),
                gazing_pos.new_empty((B, N, 4), dtype=torch.int32))


