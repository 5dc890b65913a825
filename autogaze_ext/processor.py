"""The AutoGaze image processor (spec §2.1): uint8 frames -> normalised float video.

Per frame: resize so the shortest edge is 224 (antialiased bilinear on uint8, as PIL does, so
the resized frame is uint8), ``x/127.5 - 1``, then ImageNet mean/std; no crop. Frames stay
non-square; the model squashes them to 224x224 itself (spec §2.2). For a CUDA device (frames
there, or ``device="cuda"``) the compiled ``preprocess`` op does the same on the GPU, bit for bit.
"""
from __future__ import annotations

import json
import os
from typing import Any

from .hub import CONFIG_PATTERNS, resolve_pretrained
from .ops.preprocess import FrameProcessor


class AutoGazeImageProcessor(FrameProcessor):
    """Callable on one video (list / array / tensor of (H, W, 3) uint8 frames) or a batch of
    equally sized videos ((B, T, H, W, 3)); returns a float32 tensor (B, T, 3, H', W'). The computation is
    FrameProcessor's (autogaze_ext.ops.preprocess, beside the fused op); this adds the config file."""

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


AutoGazeProcessor = AutoGazeImageProcessor
