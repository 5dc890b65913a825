"""The AutoGaze image processor (spec §2.1): uint8 frames -> normalised float video.

Per frame: resize so the shortest edge is 224 (antialiased bilinear on uint8, as PIL does, so
the resized frame is uint8), ``x/127.5 - 1``, then ImageNet mean/std; no crop. Frames stay
non-square; the model squashes them to 224x224 itself (spec §2.2). For a CUDA device (frames
there, or ``device="cuda"``) the compiled ``preprocess`` op does the same on the GPU, bit for bit.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .hub import CONFIG_PATTERNS, resolve_pretrained

_DEFAULTS: dict[str, Any] = {
    "image_processor_type": "AutoGazeImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "resample": 2,
    "do_center_crop": False,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 127.5,
    "offset": True,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def output_size(h: int, w: int, size: dict) -> tuple[int, int]:
    """(H', W') after resizing an (h, w) frame with ``size`` ({shortest_edge} or {height, width})."""
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    s = int(size["shortest_edge"])
    if h <= w:
        return s, int(s * w / h)
    return int(s * h / w), s


def resize_uint8(frames: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, oh, ow, 3) uint8 with PIL's antialiased bilinear resize.

    Pillow is what the official processor uses, so it is bit-exact. Without Pillow, torch's
    uint8 antialiased bilinear is used: identical for 2x reductions, otherwise within one
    uint8 level at some pixels.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - exercised only without Pillow
        x = frames.permute(0, 3, 1, 2).cpu()
        x = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)
        return x.permute(0, 2, 3, 1)
    src = frames.cpu().numpy()
    out = np.stack([np.asarray(Image.fromarray(f).resize((ow, oh), resample=Image.BILINEAR)) for f in src])
    return torch.from_numpy(out)


class AutoGazeImageProcessor:
    """Callable on one video (list / array / tensor of (H, W, 3) uint8 frames) or a batch of
    equally sized videos ((B, T, H, W, 3)); returns a float32 tensor (B, T, 3, H', W')."""

    def __init__(self, **config: Any):
        unknown = set(config) - set(_DEFAULTS) - {"processor_class", "_processor_class"}
        self.config = {**_DEFAULTS, **{k: v for k, v in config.items() if k in _DEFAULTS}}
        self.extra = {k: config[k] for k in unknown}
        c = self.config
        if c["do_resize"] and int(c.get("resample", 2)) != 2:
            raise ValueError(f"resample: only bilinear (2) is supported, got {c['resample']}")
        if c["do_center_crop"]:
            raise ValueError("do_center_crop: center cropping is not supported (the released processor has it off)")
        if c["offset"] and not c["do_rescale"]:
            raise ValueError("offset: requires do_rescale")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, revision: str | None = None,
                        **overrides: Any) -> "AutoGazeImageProcessor":
        """Read ``preprocessor_config.json`` from a local folder (or the file itself) or a hub id at
        ``revision`` (released defaults when ``path`` is None).
        ``size=(H, W)`` overrides the shortest-edge rule with a fixed size, as upstream."""
        cfg: dict[str, Any] = {}
        if path is None and revision is not None:
            raise ValueError("revision: applies to a hub id given as path; path is None (released defaults)")
        if path is not None:
            p = resolve_pretrained(path, revision, what="AutoGaze processor (preprocessor_config.json)",
                                   allow_patterns=CONFIG_PATTERNS)
            file = os.path.join(p, "preprocessor_config.json") if os.path.isdir(p) else p
            if not os.path.isfile(file):
                raise FileNotFoundError(f"processor: no preprocessor_config.json at {file!r}")
            with open(file, encoding="utf-8") as f:
                cfg = json.load(f)
        if "size" in overrides and isinstance(overrides["size"], (tuple, list)):
            h, w = overrides["size"]
            overrides["size"] = {"height": int(h), "width": int(w)}
        return cls(**{**cfg, **overrides})

    def __repr__(self) -> str:
        """One line: what the processor does to a frame (resize, rescale, normalise), not the dict."""
        c = self.config
        parts = []
        if c["do_resize"]:
            s = c["size"]
            parts.append(f"resize={s['height']}x{s['width']}" if "height" in s and "width" in s
                         else f"shortest_edge={s.get('shortest_edge')}")
        else:
            parts.append("resize=None")
        if c["do_rescale"]:
            f = float(c["rescale_factor"])
            inv = 1 / f if f else 0.0
            scale = f"x/{inv:.6g}" if f and abs(inv - round(inv, 3)) < 1e-6 else f"x*{f:.6g}"
            parts.append(f"rescale={scale}" + (" - 1" if c["offset"] else ""))
        if c["do_normalize"]:
            fmt = lambda v: "(" + ", ".join(f"{float(x):.3g}" for x in v) + ")"  # noqa: E731
            parts.append(f"mean={fmt(c['image_mean'])}, std={fmt(c['image_std'])}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "preprocessor_config.json"), "w", encoding="utf-8") as f:
            json.dump({**self.config, **self.extra}, f, indent=2, sort_keys=True)
            f.write("\n")

    # -------------------------------------------------------------------------------------------
    @staticmethod
    def _to_uint8_tensor(frames) -> torch.Tensor:
        """Accepts a list of (H, W, 3) arrays, (T, H, W, 3) or (B, T, H, W, 3); returns (B, T, H, W, 3)."""
        if isinstance(frames, (list, tuple)):
            if len(frames) == 0:
                raise ValueError("frames: empty list")
            arrs = [f if isinstance(f, torch.Tensor) else torch.from_numpy(np.asarray(f)) for f in frames]
            shapes = {tuple(a.shape) for a in arrs}
            if len(shapes) != 1:
                raise ValueError(f"frames: all frames must have one shape, got {sorted(shapes)}")
            x = torch.stack(arrs)
        elif isinstance(frames, np.ndarray):
            x = torch.from_numpy(frames)
        elif isinstance(frames, torch.Tensor):
            x = frames
        else:
            raise TypeError(f"frames: expected a list of frames, an array or a tensor, got {type(frames).__name__}")
        if x.ndim == 4:
            x = x[None]
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"frames: expected (T, H, W, 3) or (B, T, H, W, 3) RGB frames, got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise TypeError(f"frames: expected uint8 RGB frames, got dtype {x.dtype}")
        if 0 in x.shape:
            raise ValueError(f"frames: empty dimension in shape {tuple(x.shape)}")
        return x

    def __call__(self, frames, device: str | torch.device | None = None) -> torch.Tensor:
        c = self.config
        x = self._to_uint8_tensor(frames)
        target = torch.device(device) if device is not None else x.device
        if target.type == "cuda":
            from . import _ops

            if _ops.HAS_CUDA_KERNELS:  # the fused op on the GPU: the same values, bit for bit
                from ._ops_preprocess import preprocess

                return preprocess(x.to(target), self, model_size=None)[0]
        B, T, H, W, _ = x.shape
        x = x.reshape(B * T, H, W, 3)
        if c["do_resize"]:
            oh, ow = output_size(H, W, c["size"])
            if (oh, ow) != (H, W):
                x = resize_uint8(x, oh, ow)
        x = x.permute(0, 3, 1, 2)
        x = x.to(device) if device is not None else x
        y = x.to(torch.float64)
        if c["do_rescale"]:
            y = (y * float(c["rescale_factor"])).to(torch.float32)
            if c["offset"]:
                y = y - 1
        else:
            y = y.to(torch.float32)
        if c["do_normalize"]:
            mean = torch.tensor(c["image_mean"], dtype=torch.float32, device=y.device)[None, :, None, None]
            std = torch.tensor(c["image_std"], dtype=torch.float32, device=y.device)[None, :, None, None]
            y = (y - mean) / std
        return y.contiguous().view(B, T, 3, *y.shape[-2:])


AutoGazeProcessor = AutoGazeImageProcessor
