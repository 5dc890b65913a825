"""Multi-scale patches (spec §3.4, §6.1): dense extraction, the per-scale position-embedding table, and the
gathering of only the gazed patches, optionally fused with the patch embedding.

Python face of torch.ops.autogaze_ext.multiscale_patches and gather_patches: argument checks, fake kernels,
pure-PyTorch references (the official computation: F.interpolate bicubic + unfold + cat, then index).

gather_patches has a data-dependent number of real tokens. The op therefore takes the row count of its packed
output as an argument (``total``): shapes depend only on arguments, so the op traces under torch.compile and
replays in CUDA graphs. ``total=None`` counts the real tokens first (one device->host sync); graph and
compile users pass it (e.g. an upper bound: rows past the real tokens are zero, ``cu_seqlens`` tells where
they end). Alternatively ``packed=False`` returns one row per slot (B, N, width), the official layout, where
padded slots hold the official dummy (token 0 of the video).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._common import (HAS_EXTENSION, MAX_GRID, MAX_PATCH, MAX_SCALES, MAX_SIDE, as_list, check_bool, check_gaze_ids,
                      check_grids, check_int, check_same_device, check_tensor, has_kernel, register_reference_autograd)

NATIVE_SCALES = (32, 64, 112, 224)
NATIVE_PATCH = 16


def patch_grids(scales: Sequence[int], patch: int) -> tuple[int, ...]:
    """Grid side per scale (patches per row): scale // patch, as F.unfold cuts it."""
    return tuple(int(s) // int(patch) for s in scales)


def _check_layout(scales, patch) -> tuple[tuple[int, ...], int]:
    patch = check_int(patch, "patch", 1)
    if patch > MAX_PATCH:
        raise ValueError(f"patch must be <= {MAX_PATCH}, got {patch}")
    scales = as_list(scales)
    if not isinstance(scales, Sequence) or isinstance(scales, str):
        raise TypeError(f"scales must be a sequence of ints (side per scale), got {type(scales).__name__}")
    if not 1 <= len(scales) <= MAX_SCALES:
        raise ValueError(f"scales must hold 1 to {MAX_SCALES} sizes, got {len(scales)}")
    out = tuple(check_int(s, f"scales[{i}]", patch) for i, s in enumerate(scales))
    if any(s > MAX_SIDE for s in out):
        raise ValueError(f"scales must be <= {MAX_SIDE}, got {list(out)}")
    if any(s // patch > MAX_GRID for s in out):
        raise ValueError(f"scales: at most {MAX_GRID} patches per side, got {[s // patch for s in out]}")
    if any(b < a for a, b in zip(out, out[1:])):
        raise ValueError(f"scales must be ascending (the official token order), got {list(out)}")
    return out, patch


def _check_frames(frames, name: str, dims: int | None) -> None:
    check_tensor(frames, name, torch.float32)
    if dims is not None and frames.dim() != dims:
        want = "(B, T, C, H, W)" if dims == 5 else f"{dims}-d"
        raise ValueError(f"{name} must be {want}, got shape {tuple(frames.shape)}")
    if frames.dim() < 3:
        raise ValueError(f"{name} must be (..., C, H, W), got shape {tuple(frames.shape)}")
    if 0 in frames.shape[-3:]:
        raise ValueError(f"{name} has an empty channel or spatial dim: {tuple(frames.shape)}")
    if max(frames.shape[-2:]) >= 1 << 30:
        raise ValueError(f"{name} is too large: {tuple(frames.shape)}")


# ------------------------------------------------------------------------------------------ dense patches


def multiscale_patches_reference(frames: torch.Tensor, scales: Sequence[int], patch: int) -> torch.Tensor:
    """The official computation (no checks): per scale bicubic resize, unfold, then cat. (N, C, H, W) in."""
    out = []
    for s in scales:
        x = F.interpolate(frames, size=(s, s), mode="bicubic", align_corners=False)
        out.append(F.unfold(x, kernel_size=patch, stride=patch).transpose(1, 2))
    return torch.cat(out, dim=1)


def multiscale_patches(frames: torch.Tensor, scales: Sequence[int] = NATIVE_SCALES,
                       patch: int = NATIVE_PATCH) -> torch.Tensor:
    """All multi-scale patches of every frame: (..., C, H, W) float32 -> (..., V, C*patch*patch).

    Per scale (ascending) the frame is resized to scale x scale with F.interpolate(bicubic,
    align_corners=False) arithmetic, cut into patch x patch patches (row-major, channel-major flattening,
    a remainder narrower than a patch dropped), and the scales are concatenated; V = sum((s // patch)^2)
    (265 for the native 32/64/112/224 @ 16, 1060 for 56/112/196/392 @ 14). Frames may be non-square.
    Differentiable (the backward differentiates the reference: exact, not fast).
    """
    _check_frames(frames, "frames", None)
    scales, patch = _check_layout(scales, patch)
    lead, (C, H, W) = frames.shape[:-3], frames.shape[-3:]
    x = frames.reshape(-1, C, H, W)
    if x.shape[0] == 0:
        V = sum(g * g for g in patch_grids(scales, patch))
        return frames.new_empty((*lead, V, C * patch * patch))
    if has_kernel("multiscale_patches", x.device):
        out = torch.ops.autogaze_ext.multiscale_patches(x, list(scales), patch)
    else:
        out = multiscale_patches_reference(x, scales, patch)
    return out.view(*lead, *out.shape[1:])


def multiscale_pos_table_reference(pos_embed: torch.Tensor, grids: Sequence[int]) -> torch.Tensor:
    """The official SigLIP interpolate_pos_encoding per grid (no checks), concatenated: (G*G, D) -> (V, D)."""
    G = int(round(pos_embed.shape[0] ** 0.5))
    D = pos_embed.shape[1]
    out = []
    for g in grids:
        if g == G:
            out.append(pos_embed)
            continue
        grid = pos_embed.reshape(1, G, G, D).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False)
        out.append(grid.permute(0, 2, 3, 1).reshape(g * g, D))
    return torch.cat(out, dim=0)


def multiscale_pos_table(pos_embed: torch.Tensor, grids: Sequence[int]) -> torch.Tensor:
    """Position embedding of every token of the multi-scale sequence (spec §6.1): (G*G, D) -> (V, D).

    pos_embed is the learned square grid (e.g. SigLIP's position_embedding.weight, 14 x 14 rows); grid g
    gets it bicubically interpolated to g x g (align_corners=False, no antialias; unchanged when g == G),
    rows row-major, grids concatenated. Floating dtypes other than float32 are computed in float32 and
    cast back. Differentiable.
    """
    if not isinstance(pos_embed, torch.Tensor):
        raise TypeError(f"pos_embed must be a torch.Tensor, got {type(pos_embed).__name__}")
    if not pos_embed.is_floating_point():
        raise TypeError(f"pos_embed must be floating point, got {pos_embed.dtype}")
    if pos_embed.dim() != 2 or pos_embed.shape[0] < 1 or pos_embed.shape[1] < 1:
        raise ValueError(f"pos_embed must be (G*G, D), got shape {tuple(pos_embed.shape)}")
    G = int(round(pos_embed.shape[0] ** 0.5))
    if G * G != pos_embed.shape[0]:
        raise ValueError(f"pos_embed must have a square number of rows (G*G), got {pos_embed.shape[0]}")
    grids = check_grids(grids)
    D = pos_embed.shape[1]
    x = pos_embed.to(torch.float32).reshape(1, G, G, D).permute(0, 3, 1, 2).contiguous()
    # The table is the patch sequence of a D-channel G x G "image" with 1-pixel patches (differentiable).
    if has_kernel("multiscale_patches", x.device) and max(grids) <= MAX_GRID:
        table = torch.ops.autogaze_ext.multiscale_patches(x, list(grids), 1)[0]
    else:
        table = multiscale_pos_table_reference(pos_embed.to(torch.float32), grids)
    return table.to(pos_embed.dtype)


# ------------------------------------------------------------------------------------------ gather


def _check_gather_args(frames, gazing_pos, if_padded, scales, patch, weight, bias, pos_table):
    _check_frames(frames, "frames", 5)
    if frames.shape[1] == 0:
        raise ValueError(f"frames must hold at least one frame per video, got shape {tuple(frames.shape)}")
    scales, patch = _check_layout(scales, patch)
    check_gaze_ids(gazing_pos, if_padded)
    if gazing_pos.shape[0] != frames.shape[0]:
        raise ValueError(f"gazing_pos has {gazing_pos.shape[0]} rows but frames a batch of {frames.shape[0]}")
    for name, t in (("gazing_pos", gazing_pos), ("if_padded", if_padded)):
        if t.device != frames.device:
            raise ValueError(f"{name} is on {t.device} but frames on {frames.device}")
    K = frames.shape[2] * patch * patch
    V = sum(g * g for g in patch_grids(scales, patch))
    if weight is None:
        if bias is not None or pos_table is not None:
            raise ValueError("bias and pos_table need weight (the patch-embedding matrix)")
        return scales, patch, None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"weight must be float32, bfloat16 or float16, got {weight.dtype}")
    if weight.dim() == 4 and weight.shape[1:] == (frames.shape[2], patch, patch):
        weight = weight.reshape(weight.shape[0], K)  # a Conv2d patch-embedding weight (D, C, p, p)
    if weight.dim() != 2 or weight.shape[1] != K or weight.shape[0] < 1:
        raise ValueError(f"weight must be (D, {K}) or (D, {frames.shape[2]}, {patch}, {patch}), "
                         f"got shape {tuple(weight.shape)}")
    D = weight.shape[0]
    for name, t, shape in (("bias", bias, (D,)), ("pos_table", pos_table, (V, D))):
        if t is None:
            continue
        check_tensor(t, name, weight.dtype)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got shape {tuple(t.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("pos_table", pos_table)):
        if t is not None and t.device != frames.device:
            raise ValueError(f"{name} is on {t.device} but frames on {frames.device}")
    return scales, patch, weight


def gather_patches_reference(frames: torch.Tensor, gazing_pos: torch.Tensor, if_padded: torch.Tensor,
                             scales: Sequence[int], patch: int, weight: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None, pos_table: torch.Tensor | None = None,
                             packed_rows: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense-then-index, as the official SigLIP does (no checks; weight already (D, K)). Same outputs as the op."""
    B, T, C, H, W = frames.shape
    V = sum(g * g for g in patch_grids(scales, patch))
    dense = multiscale_patches_reference(frames.reshape(B * T, C, H, W), scales, patch).reshape(B, T * V, -1)
    valid = ~if_padded & (gazing_pos >= 0) & (gazing_pos < T * V)
    ids = torch.where(valid, gazing_pos, 0)
    out = dense[torch.arange(B, device=frames.device)[:, None], ids]
    if weight is not None:
        out = F.linear(out.to(weight.dtype), weight, bias)
        if pos_table is not None:
            out = out + pos_table[ids % V]
    counts = valid.sum(1)
    cu = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    if packed_rows >= 0:
        real = out[valid][:packed_rows]
        out = torch.cat([real, real.new_zeros(packed_rows - real.shape[0], real.shape[1])])
        cu = cu.clamp(max=packed_rows)
    return out, cu.to(torch.int32)


def gather_patches(frames: torch.Tensor, gazing_pos: torch.Tensor, if_padded: torch.Tensor,
                   scales: Sequence[int] = NATIVE_SCALES, patch: int = NATIVE_PATCH, *,
                   weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                   pos_table: torch.Tensor | None = None, packed: bool = True, total: int | None = None,
                   validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the gazed multi-scale patches, sampled straight from the frames (no pyramids, no 265-row table).

    frames: (B, T, C, H, W) float32 (e.g. the ViT's pixel values); gazing_pos: (B, N) int64 video-global ids
    ``local + V*t`` into the sequence of multiscale_patches; if_padded: (B, N) bool.
    weight: patch-embedding matrix (D, C*p*p) or Conv2d weight (D, C, p, p), float32/bfloat16/float16: the
    result is then ``patch @ weight^T + bias + pos_table[local id]`` in weight's dtype (pos_table (V, D)
    from multiscale_pos_table; bias (D,)); without weight the raw float32 patches (C*p*p wide).

    packed=True (default): the non-padded slots in (b, n) order as (total, width) rows, plus cu_seqlens
    (B + 1,) int32 (row b owns rows cu_seqlens[b]:cu_seqlens[b+1]). total=None counts them (a host sync);
    a given total fixes the row count (rows beyond the real tokens are zero, tokens beyond it dropped,
    cu_seqlens clamped). packed=False: (B, N, width) in slot order, padded slots holding the official dummy
    (token 0 of the video), plus cu_seqlens of the non-padded slots.

    validate=True raises ValueError for a non-padded id outside [0, T*V) (one host sync; skipped while
    torch.compile traces); without validation such ids count as padded. Differentiable in frames, weight, bias
    and pos_table (the backward differentiates the dense reference: exact, but it builds the pyramids).
    """
    scales, patch, weight = _check_gather_args(frames, gazing_pos, if_padded, scales, patch, weight, bias,
                                               pos_table)
    check_bool(packed, "packed")
    B, T = frames.shape[:2]
    V = sum(g * g for g in patch_grids(scales, patch))
    eager = gazing_pos.device.type != "meta" and not torch.compiler.is_compiling()
    if validate and eager:
        bad = ~if_padded & ((gazing_pos < 0) | (gazing_pos >= T * V))
        if bool(bad.any()):
            first = int(gazing_pos[bad][0])
            raise ValueError(f"gazing_pos holds non-padded id {first} outside [0, {T * V}) "
                             f"(T={T} frames x {V} tokens per frame)")
    if not packed:
        if total is not None:
            raise ValueError("total is only meaningful with packed=True")
        packed_rows = -1
    elif total is None:
        if not eager:
            raise ValueError("total must be given under torch.compile (the packed row count fixes the shape)")
        valid = ~if_padded & (gazing_pos >= 0) & (gazing_pos < T * V)
        packed_rows = int(valid.sum())
    else:
        packed_rows = check_int(total, "total", 0)
    if has_kernel("gather_patches", frames.device):
        return torch.ops.autogaze_ext.gather_patches(frames, gazing_pos, if_padded, list(scales), patch, weight,
                                                     bias, pos_table, packed_rows)
    return gather_patches_reference(frames, gazing_pos, if_padded, scales, patch, weight, bias, pos_table,
                                    packed_rows)


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::multiscale_patches")
    def _multiscale_patches_fake(frames, scales, patch):
        torch._check(frames.dim() == 4, lambda: "multiscale_patches: frames must be (N, C, H, W)")
        N, C = frames.shape[:2]
        V = sum((s // patch) ** 2 for s in scales)
        return frames.new_empty((N, V, C * patch * patch))

    @torch.library.register_fake("autogaze_ext::gather_patches")
    def _gather_patches_fake(frames, gazing_pos, if_padded, scales, patch, weight, bias, pos_table, packed_rows):
        check_same_device("frames", frames, gazing_pos=gazing_pos, if_padded=if_padded, weight=weight, bias=bias,
                           pos_table=pos_table)  # a meta argument among real ones
        torch._check(frames.dim() == 5 and gazing_pos.dim() == 2, lambda: "gather_patches: bad ranks")
        B, N = gazing_pos.shape
        width = weight.shape[0] if weight is not None else frames.shape[2] * patch * patch
        dtype = weight.dtype if weight is not None else frames.dtype
        shape = (B, N, width) if packed_rows < 0 else (packed_rows, width)
        return frames.new_empty(shape, dtype=dtype), gazing_pos.new_empty((B + 1,), dtype=torch.int32)

    # Differentiable: the ViT these feed may be fine-tuned (frames, the patch embedding and the position table).
    register_reference_autograd("multiscale_patches", multiscale_patches_reference, ["frames"])
    register_reference_autograd("gather_patches", gather_patches_reference,
                                      ["frames", "weight", "bias", "pos_table"])
