"""``AutoGaze.generate``'s arguments, validated and normalised (spec §1.2, §5.8, §5.9).

The checks here are pure: they read the arguments and the model's geometry, never its weights. The order in which
``AutoGaze._resolve_generate`` calls them fixes which error a call with several bad arguments raises.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ..ops._common import as_list, check_bool, check_float, check_int
from .generation import DecodeState, Sampler

PRECISIONS = ("fp32", "tf32")
BACKENDS = ("auto", "reference", "fast")


@dataclass(frozen=True)
class GenerateOptions:
    """One ``generate`` call, resolved: what the chosen backend runs."""

    video: torch.Tensor  # (B, T, 3, H, W) in the model's dtype, on its device
    caps: tuple[int, ...]  # slots per frame
    requirement: torch.Tensor | None  # (rows, T) float32: rows = B, or B x tiles with target scales
    sampler: Sampler
    cached: bool
    state: DecodeState | None  # the caller's state, checked against the video; forked before decoding
    return_state: bool
    precision: str
    use_fast: bool  # backend "auto" resolved
    target_scales: tuple[int, ...] | None  # None: the model's own scales
    target_patch_size: int | None
    nonfinite: torch.Tensor | None  # 0-d device flag, read after the fast decode's sync (None: nothing left to read)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def as_float_list(name: str, value, length: int | None) -> list[float] | None:
    """A number or a sequence of numbers (Python, numpy or a 0/1-d tensor) as a list of floats."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1) if value.ndim else value.detach().cpu()
    value = as_list(value)  # tensors and numpy arrays / scalars
    if _is_number(value):
        return [float(value)] * (length or 1)
    if isinstance(value, (list, tuple)):
        if not all(_is_number(v) for v in value):
            raise TypeError(f"{name}: expected a number or a list of numbers, got {value!r}")
        return [float(v) for v in value]
    raise TypeError(f"{name}: expected a number or a list of numbers, got {type(value).__name__}")


def check_video(video, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """video (or ``{"video": ...}``): a non-empty float (B, T, 3, H, W) tensor on the model's device, cast to its
    dtype."""
    if isinstance(video, dict):
        video = video.get("video")
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video: expected a torch.Tensor (B, T, 3, H, W), got {type(video).__name__}")
    if not video.is_floating_point():
        raise TypeError(
            f"video: expected a float tensor normalised by AutoGazeImageProcessor, got dtype {video.dtype} "
            "(run the processor on uint8 frames first)"
        )
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video: expected shape (B, T, 3, H, W), got {tuple(video.shape)}")
    B, T, _, H, W = video.shape
    if B < 1 or T < 1 or H < 1 or W < 1:
        raise ValueError(f"video: every dimension must be non-empty, got {tuple(video.shape)}")
    if video.device != device:
        raise ValueError(f"video: is on {video.device} but the model is on {device}; move one of them")
    return video.to(dtype)


def check_sampling_args(*, state, return_state, cached, do_sample, temperature, top_k, generator, seed, margins,
                        check_finite):
    """Types and ranges of generate's keyword arguments; returns (temperature, top_k, generator)."""
    for name, value in (("return_state", return_state), ("cached", cached), ("check_finite", check_finite)):
        check_bool(value, name)
    if do_sample is not None:
        check_bool(do_sample, "do_sample")
    temperature = check_float(temperature, "temperature")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature: must be > 0 when sampling, got {temperature}")
    top_k = None if top_k is None else check_int(top_k, "top_k", 0)
    if state is not None and not isinstance(state, DecodeState):
        raise TypeError(f"state: expected the GazeState returned by generate(..., return_state=True), got "
                        f"{type(state).__name__}")
    if margins is not None and not isinstance(margins, list):
        raise TypeError(f"margins: expected a list to fill, got {type(margins).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        seed = check_int(seed, "seed", -(1 << 63))
        if seed >= 1 << 64:
            raise ValueError(f"seed: must be below 2**64, got {seed}")
        generator = generator or torch.Generator().manual_seed(seed)
    return temperature, top_k, generator


def frame_caps(gazing_ratio, T: int, offset: int, streaming: bool, V: int) -> list[int]:
    """Slots per frame from the gazing ratio: one value, one per frame, or (streaming) one per stream frame."""
    ratios = as_float_list("gazing_ratio", gazing_ratio, T)
    if len(ratios) != T:
        if streaming and len(ratios) >= offset + T:
            ratios = ratios[offset: offset + T]  # a whole-stream list, indexed by frame position
        else:
            raise ValueError(
                f"gazing_ratio: expected one value or a list of {T} values (one per frame), got {len(ratios)}"
                + (f" (or, when streaming, at least {offset + T} values)" if streaming else "")
            )
    for r in ratios:
        if not (0.0 < r <= 1.0) or math.isnan(r):
            raise ValueError(f"gazing_ratio: each value must be in (0, 1], got {r}")
    # the official cap: trunc(float32(ratio) * V) in float32, at least 1 (spec §5.2)
    caps = (torch.tensor(ratios, dtype=torch.float32) * V).to(torch.long).clamp(min=1)
    return caps.tolist()


def requirement_tensor(req, B: int, T: int, offset: int, streaming: bool, device) -> torch.Tensor | None:
    """task_loss_requirement as a (B, T) float32 tensor on device (None stays None)."""
    if req is None:
        return None
    if isinstance(req, torch.Tensor) and req.ndim == 2:
        if req.shape != (B, T):
            raise ValueError(f"task_loss_requirement: expected shape {(B, T)}, got {tuple(req.shape)}")
        t = req.to(device=device, dtype=torch.float32)
    else:
        vals = as_float_list("task_loss_requirement", req, T)
        if len(vals) != T:
            if streaming and len(vals) >= offset + T:
                vals = vals[offset: offset + T]
            else:
                raise ValueError(f"task_loss_requirement: expected one value or {T} values, got {len(vals)}")
        t = torch.ones(B, T, device=device) * torch.tensor(vals, dtype=torch.float32, device=device)
    if not bool((torch.isfinite(t) & (t >= 0)).all()):
        raise ValueError("task_loss_requirement: values must be finite and >= 0")
    return t


def target_geometry(target_scales, target_patch_size, scales: list[int], num_tokens_each_scale
                    ) -> tuple[tuple[int, ...], int] | None:
    """(target scales, patch size) of a ViT of another geometry, or None where they are the model's own (or
    not given)."""
    if target_scales is None or target_patch_size is None:
        if (target_scales is None) != (target_patch_size is None):
            raise ValueError("target_scales and target_patch_size: give both or neither")
        return None
    ts = as_list(target_scales)
    expected = f"target_scales: expected {len(scales)} ascending positive ints, got {target_scales!r}"
    if not isinstance(ts, (list, tuple)) or len(ts) != len(scales):
        raise ValueError(expected)
    p = check_int(target_patch_size, "target_patch_size", 1)
    ts = [check_int(s, f"target_scales[{i}]", p) for i, s in enumerate(ts)]  # >= one patch
    if ts != sorted(ts):
        raise ValueError(expected)
    if ts == scales and [(s // p) ** 2 for s in ts] == num_tokens_each_scale:
        return None
    return tuple(ts), p


def tiles_per_side(target_scales: tuple[int, ...], patch: int, native_grid: int) -> int:
    """How many model-sized tiles cover one side of the target's finest grid."""
    return math.ceil((target_scales[-1] // patch) / native_grid)


def check_state(state: DecodeState, B: int, cached: bool, device: torch.device) -> None:
    """A streaming state made for this batch size, cache mode and device."""
    if state.key_mask.shape[0] != B:
        raise ValueError(f"state: was made for batch {state.key_mask.shape[0]}, got video batch {B}")
    if state.cached != cached:
        raise ValueError("cached: must match the state's mode")
    if state.key_mask.device != device:
        raise ValueError(f"state: is on {state.key_mask.device} but the video on {device}")
