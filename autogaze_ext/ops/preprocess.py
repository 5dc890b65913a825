"""preprocess: the AutoGaze image processor (spec §2.1) and the model's own resize (spec §2.2) in one op,
on the frames' device.

Python face of torch.ops.autogaze_ext.preprocess: argument checks, fake kernel, reference (the CPU
processor of autogaze_ext.processor, which uses Pillow, then F.interpolate bicubic).

uint8 frames give the processor's output bit for bit: the resize repeats Pillow's fixed-point bilinear
(coefficients normalised in double, 22-bit taps, horizontal pass rounded to uint8, then vertical pass)
and the value transform repeats its float64 rescale and float32 normalisation. float32 frames (values on
the 0..255 scale) are resized like a Pillow "F" image per channel (double taps and sums, no rounding).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._common import (HAS_EXTENSION, MAX_SIDE, as_list, check_float, check_int, check_no_grad, has_kernel,
                      register_inference_only)

PROCESSOR_DEFAULTS: dict[str, Any] = {
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


class FrameProcessor:
    """The AutoGaze image processor's settings and computation (spec §2.1), callable on one video (list / array /
    tensor of (H, W, 3) uint8 frames) or a batch of equally sized videos ((B, T, H, W, 3)); returns a float32
    tensor (B, T, 3, H', W'). autogaze_ext.AutoGazeImageProcessor adds reading and writing its config file."""

    def __init__(self, **config: Any):
        unknown = set(config) - set(PROCESSOR_DEFAULTS) - {"processor_class", "_processor_class"}
        self.config = {**PROCESSOR_DEFAULTS, **{k: v for k, v in config.items() if k in PROCESSOR_DEFAULTS}}
        self.extra = {k: config[k] for k in unknown}
        c = self.config
        if c["do_resize"] and int(c.get("resample", 2)) != 2:
            raise ValueError(f"resample: only bilinear (2) is supported, got {c['resample']}")
        if c["do_center_crop"]:
            raise ValueError("do_center_crop: center cropping is not supported (the released processor has it off)")
        if c["offset"] and not c["do_rescale"]:
            raise ValueError("offset: requires do_rescale")

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
        if target.type == "cuda" and has_kernel("preprocess", target):
            # the fused op on the GPU: the same values, bit for bit
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


def _processor_args(processor) -> dict:
    if processor is None:
        processor = FrameProcessor()
    elif isinstance(processor, Mapping):
        processor = FrameProcessor(**processor)
    elif not isinstance(processor, FrameProcessor):
        raise TypeError(f"processor must be an AutoGazeImageProcessor, a config dict or None, "
                        f"got {type(processor).__name__}")
    c = processor.config
    size = c["size"]
    if c["do_resize"] and not (isinstance(size, Mapping) and size and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in size.values())):
        raise ValueError(f"processor: size must map 'shortest_edge' (or 'height' and 'width') to positive ints, "
                         f"got {size!r}")
    rescale = check_float(c["rescale_factor"], "processor: rescale_factor", positive=True) if c["do_rescale"] else 1.0
    mean, std = ([0.0] * 3, [1.0] * 3)
    if c["do_normalize"]:
        mean, std = (as_list(c["image_mean"]), as_list(c["image_std"]))
        if not (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3):
            raise ValueError(f"processor: image_mean and image_std must hold 3 values each, got {mean}, {std}")
        mean = [check_float(m, f"processor: image_mean[{i}]") for i, m in enumerate(mean)]
        std = [check_float(v, f"processor: image_std[{i}]") for i, v in enumerate(std)]
        if 0.0 in std:
            raise ValueError(f"processor: image_std must be non-zero, got {std}")
    return dict(config=c, rescale=rescale, offset=bool(c["offset"] and c["do_rescale"]), mean=mean, std=std)


def _check_frames(frames) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype not in (torch.uint8, torch.float32):
        raise TypeError(f"frames must be uint8 (or float32 on the 0..255 scale), got {frames.dtype}")
    if frames.dim() == 4:
        frames = frames.unsqueeze(0)
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) or (B, T, H, W, 3) RGB, got shape {tuple(frames.shape)}")
    if 0 in frames.shape[2:4]:
        raise ValueError(f"frames has an empty spatial dim: {tuple(frames.shape)}")
    if max(frames.shape[2:4]) > MAX_SIDE:
        raise ValueError(f"frames is too large: {tuple(frames.shape)}")
    return frames


def preprocess_reference(frames: torch.Tensor, processor=None, model_size: int = 224) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """The CPU processor (Pillow) then the model's bicubic resize; uint8 frames only (no checks)."""
    proc = processor if isinstance(processor, FrameProcessor) else FrameProcessor(**(processor or {}))
    video = proc(frames.cpu()).to(frames.device)
    B, T, C, H, W = video.shape
    if not model_size or (H, W) == (model_size, model_size):
        return video, video
    x = F.interpolate(video.reshape(B * T, C, H, W), size=(model_size, model_size), mode="bicubic",
                      align_corners=False)
    return video, x.view(B, T, C, model_size, model_size)


def preprocess(frames: torch.Tensor, processor=None, model_size: int | None = 224) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
    """Video frames -> (processed, model_input), on the frames' device.

    frames: (T, H, W, 3) or (B, T, H, W, 3) RGB, uint8 (or float32 on the 0..255 scale).
    processor: an AutoGazeImageProcessor, its config dict, or None for the released settings (shortest
    edge 224, Pillow bilinear, x/127.5 - 1, ImageNet mean/std).
    Returns processed (B, T, 3, H', W') float32 -- what AutoGazeImageProcessor returns -- and model_input
    (B, T, 3, S, S), S = model_size: processed resized as the model does it (bicubic, align_corners=False);
    the same tensor as processed when it already is S x S or model_size is None/0.
    """
    frames = _check_frames(frames)
    check_no_grad("preprocess", frames=frames)
    args = _processor_args(processor)
    size = 0 if model_size is None else check_int(model_size, "model_size", 0)
    if size > MAX_SIDE:
        raise ValueError(f"model_size must be <= {MAX_SIDE}, got {size}")
    B, T, H, W, _ = frames.shape
    c = args["config"]
    oh, ow = output_size(H, W, c["size"]) if c["do_resize"] else (H, W)
    if not (1 <= oh <= MAX_SIDE and 1 <= ow <= MAX_SIDE):
        raise ValueError(f"processor: size {c['size']} gives an output size {(oh, ow)} outside [1, {MAX_SIDE}] for "
                         f"frames {(H, W)}")
    if (oh, ow) == (size, size):
        size = 0
    x = frames.reshape(B * T, H, W, 3)
    if B * T == 0:
        processed = frames.new_empty((B, T, 3, oh, ow), dtype=torch.float32)
        return processed, (processed if not size else processed.new_empty((B, T, 3, size, size)))
    if has_kernel("preprocess", x.device):
        processed, model_input = torch.ops.autogaze_ext.preprocess(x, oh, ow, size, args["rescale"], args["offset"],
                                                                   args["mean"], args["std"])
    else:
        if x.dtype != torch.uint8:
            raise ValueError("float32 frames need the compiled extension (the reference path is the uint8 "
                             "processor)")
        proc = FrameProcessor(**{**c, "size": {"height": oh, "width": ow}})
        processed, model_input = preprocess_reference(x[None], proc, size)
        processed = processed.reshape(B * T, 3, oh, ow)
        model_input = model_input.reshape(B * T, 3, *model_input.shape[-2:])
    processed = processed.view(B, T, 3, oh, ow)
    if not size:
        return processed, processed
    return processed, model_input.view(B, T, 3, size, size)


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::preprocess")
    def _preprocess_fake(frames, out_h, out_w, model_size, rescale, offset, mean, std):
        torch._check(frames.dim() == 4 and frames.shape[3] == 3, lambda: "preprocess: frames must be (N, H, W, 3)")
        N = frames.shape[0]
        processed = frames.new_empty((N, 3, out_h, out_w), dtype=torch.float32)
        shape = (N, 3, model_size, model_size) if model_size > 0 else (0,)
        return processed, frames.new_empty(shape, dtype=torch.float32)

    # An inference op (Pillow's fixed-point resize has no useful gradient).
    register_inference_only("preprocess")
