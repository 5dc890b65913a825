"""Any video in: decoding, clips, 224-px tiles, batched gazing, and masks back in source pixels.

Frames are decoded with PyAV one at a time (memory stays bounded by one batch of clips), cut into
16-frame clips (a last partial clip repeats its final frame; the repeats are dropped from the
results), and each frame is cut into 224x224 tiles that the gaze model sees as batch rows (spec §2.3).

Edges: ``tile_mode="resize"`` (default) resizes each frame to the next multiple of 224 on both sides
(1920x1080 -> 2016x1120, 9x5 tiles; aspect changes by < 224 px); ``tile_mode="pad"`` keeps the
pixels as they are and pads right and bottom up to the next multiple with the mean colour (zero after
normalisation), so tiles at the border hold some padding. Gazed boxes are mapped back to source
pixel coordinates in both modes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .processor import AutoGazeImageProcessor

TILE = 224


# --------------------------------------------------------------------------------------- decoding
@dataclass
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    frames: int | None  # as the container reports it (may be missing or approximate)
    codec: str


def _open(path: str):
    """(container, stream): the encode pipeline's checks (missing, folder, empty, not a video, no video
    stream, no decoder), one message each."""
    from .pipeline.decode import open_video

    return open_video(path)


def probe(path: str) -> VideoInfo:
    container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(path=os.fspath(path), width=stream.codec_context.width, height=stream.codec_context.height,
                         fps=float(rate) if rate else 0.0, frames=stream.frames or None,
                         codec=stream.codec_context.name)
    finally:
        container.close()


def iter_frames(path: str, max_frames: int | None = None, fps: float | None = None) -> Iterator[np.ndarray]:
    """Decoded RGB frames (H, W, 3) uint8, one at a time. ``fps`` keeps about that many frames per
    second of video (by timestamp); ``max_frames`` stops after that many frames are yielded."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames: expected >= 1, got {max_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    container, stream = _open(path)  # first: says how to install PyAV when it is missing
    import av
    n, next_t = 0, 0.0
    try:
        for frame in container.decode(stream):
            if fps is not None:
                t = float(frame.time) if frame.time is not None else n / fps
                if t + 1e-9 < next_t:
                    continue
                next_t += 1.0 / fps
            yield frame.to_ndarray(format="rgb24")
            n += 1
            if max_frames is not None and n >= max_frames:
                return
    except av.error.FFmpegError as e:
        raise ValueError(f"video: decoding {path!r} failed after {n} frames: the file is corrupt ({e})") from None
    finally:
        container.close()
    if n == 0:
        raise ValueError(f"video: {path!r} has no decodable frames")


def iter_clips(frames: Iterable[np.ndarray], clip_len: int = 16) -> Iterator[tuple[np.ndarray, int]]:
    """Groups frames into (clip (clip_len, H, W, 3), real frame count); a short last clip repeats
    its final frame."""
    buf: list[np.ndarray] = []
    for f in frames:
        if buf and f.shape != buf[0].shape:
            raise ValueError(f"video: frame size changed from {buf[0].shape} to {f.shape} inside a clip")
        buf.append(f)
        if len(buf) == clip_len:
            yield np.stack(buf), clip_len
            buf = []
    if buf:
        n = len(buf)
        buf += [buf[-1]] * (clip_len - n)
        yield np.stack(buf), n


# ----------------------------------------------------------------------------------------- tiling
@dataclass(frozen=True)
class TileGeometry:
    """How a (height, width) frame maps onto a grid of 224-px tiles."""

    height: int
    width: int
    mode: str = "resize"

    def __post_init__(self):
        if self.mode not in ("resize", "pad"):
            raise ValueError(f"tile_mode: expected 'resize' or 'pad', got {self.mode!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"video: empty frames ({self.height}x{self.width})")

    @property
    def rows(self) -> int:
        return max(1, math.ceil(self.height / TILE))

    @property
    def cols(self) -> int:
        return max(1, math.ceil(self.width / TILE))

    @property
    def tiles(self) -> int:
        return self.rows * self.cols

    def to_source(self, y: float, x: float) -> tuple[float, float]:
        """A point of the tiled canvas (rows*224 x cols*224) in source pixels."""
        if self.mode == "resize":
            return y * self.height / (self.rows * TILE), x * self.width / (self.cols * TILE)
        return y, x


def tile_clip(clip: np.ndarray, geom: TileGeometry, processor: AutoGazeImageProcessor,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (tiles, T, 3, 224, 224) normalised float, tiles in row-major order."""
    proc = AutoGazeImageProcessor(**canvas_config(processor.config, geom))
    x = pad_canvas(proc(clip, device=device)[0], geom)  # (T, 3, R*224, C*224)
    return canvas_to_tiles(x, geom.rows, geom.cols)


def canvas_config(config: dict, geom: TileGeometry) -> dict:
    """A processor config that maps frames onto the tile canvas: resized to it, or kept for padding."""
    if geom.mode == "resize":
        return {**config, "size": {"height": geom.rows * TILE, "width": geom.cols * TILE}}
    return {**config, "do_resize": False}


def pad_canvas(x: torch.Tensor, geom: TileGeometry) -> torch.Tensor:
    """Processed frames (..., H', W') up to the canvas: zero (the normalised mean colour) right and bottom."""
    dh, dw = geom.rows * TILE - x.shape[-2], geom.cols * TILE - x.shape[-1]
    return torch.nn.functional.pad(x, (0, dw, 0, dh)) if dh or dw else x


def canvas_to_tiles(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(T, C, rows*224, cols*224) -> (rows*cols, T, C, 224, 224), tiles in row-major order."""
    T, ch = x.shape[:2]
    x = x.reshape(T, ch, rows, TILE, cols, TILE).permute(2, 4, 0, 1, 3, 5)
    return x.reshape(rows * cols, T, ch, TILE, TILE).contiguous()


def stitch_masks(masks: Sequence[torch.Tensor], geom: TileGeometry, grids: Sequence[int]) -> list[torch.Tensor]:
    """Per-scale tile masks (tiles, T, g*g) -> per-scale canvas masks (T, rows*g, cols*g)."""
    R, C = geom.rows, geom.cols
    out = []
    for m, g in zip(masks, grids):
        T = m.shape[1]
        out.append(m.reshape(R, C, T, g, g).permute(2, 0, 3, 1, 4).reshape(T, R * g, C * g))
    return out


def boxes_from_masks(canvas_masks: Sequence[torch.Tensor], geom: TileGeometry, t: int) -> list[tuple]:
    """Gazed boxes of frame t as (x0, y0, x1, y1, scale_index) in source pixels, coarse first."""
    boxes = []
    for s, m in enumerate(canvas_masks):
        g_total = m.shape[1] // geom.rows  # cells per tile side
        cell = TILE / g_total
        for r, c in torch.nonzero(m[t] > 0).tolist():
            y0, x0 = geom.to_source(r * cell, c * cell)
            y1, x1 = geom.to_source((r + 1) * cell, (c + 1) * cell)
            boxes.append((x0, y0, min(x1, geom.width), min(y1, geom.height), s))
    return boxes


# ---------------------------------------------------------------------------------------- gazing
@dataclass
class ClipResult:
    """Gazing of one clip, real frames only."""

    index: int  # clip number in the video
    first_frame: int
    frames: np.ndarray  # (n, H, W, 3) uint8 source frames
    geometry: TileGeometry
    canvas_masks: list  # per scale (n, rows*g, cols*g)
    tokens_each_frame: list  # real gazed tokens per frame, summed over tiles
    tokens_possible: int  # per frame: tiles x tokens per tile
    reconstruction: torch.Tensor | None = None  # (n, 3, rows*224, cols*224) normalised, when computed
    extra: dict = field(default_factory=dict)

    def boxes(self, t: int) -> list[tuple]:
        return boxes_from_masks(self.canvas_masks, self.geometry, t)


def gaze_clips(gazer, clips: Iterable[tuple[np.ndarray, int]], processor: AutoGazeImageProcessor | None = None,
               device: str | torch.device = "cpu", tile_mode: str = "resize", batch_rows: int = 16,
               reconstruct: bool = False, timings: dict | None = None,
               progress: Callable[[str, int], None] | None = None, **gaze_kwargs) -> Iterator[ClipResult]:
    """Gaze clips in batches of about ``batch_rows`` tiles; yields one ClipResult per clip, in order, as
    soon as its batch is gazed (a clip with more tiles than ``batch_rows`` is gazed alone; on the CPU one clip
    per batch is as fast as larger batches, so small batches cost nothing and report progress sooner).
    ``timings`` (a defaultdict(float)) receives seconds spent per stage. ``progress(stage, frames)`` is
    called as each stage starts: ``"preprocess"`` for every clip and ``"gaze"`` for every batch, with the
    number of real frames concerned (clips come from ``clips`` lazily, so decoding happens between calls)."""
    import time
    from collections import defaultdict

    from .reconstruct import reconstruct_tiles

    timings = defaultdict(float) if timings is None else timings
    if batch_rows < 1:
        raise ValueError(f"batch_rows: expected >= 1, got {batch_rows}")

    processor = processor or AutoGazeImageProcessor()
    grids = _grids(gazer)
    V = sum(g * g for g in grids)
    pending: list = []
    first = 0

    def flush():
        tiles = torch.cat([p[3] for p in pending], dim=0)
        if progress is not None:
            progress("gaze", sum(p[2] for p in pending))
        t0 = time.perf_counter()
        out = gazer.generate(tiles, **gaze_kwargs)
        t1 = time.perf_counter()
        recon = reconstruct_tiles(tiles, out, gazer_scales(gazer)) if reconstruct else None
        timings["gaze_s"] += t1 - t0
        timings["reconstruct_s"] += time.perf_counter() - t1
        real = out.real_tokens_each_frame().cpu()
        masks = [m.cpu() for m in out.gazing_mask]
        row = 0
        for idx, clip, n_real, tl, geom, start in pending:
            k = tl.shape[0]
            cm = stitch_masks([m[row: row + k] for m in masks], geom, grids)
            res = ClipResult(
                index=idx, first_frame=start, frames=clip[:n_real], geometry=geom,
                canvas_masks=[m[:n_real] for m in cm],
                tokens_each_frame=real[row: row + k].sum(0)[:n_real].tolist(), tokens_possible=k * V,
            )
            if recon is not None:
                r = recon[row: row + k, :n_real].cpu()  # (k, n, 3, 224, 224)
                res.reconstruction = (r.view(geom.rows, geom.cols, n_real, 3, TILE, TILE)
                                      .permute(2, 3, 0, 4, 1, 5).reshape(n_real, 3, geom.rows * TILE, geom.cols * TILE))
            yield res
            row += k
        pending.clear()

    for idx, (clip, n_real) in enumerate(clips):
        geom = TileGeometry(clip.shape[1], clip.shape[2], tile_mode)
        if progress is not None:
            progress("preprocess", n_real)
        t0 = time.perf_counter()
        tiles = tile_clip(clip, geom, processor, device)
        timings["preprocess_s"] += time.perf_counter() - t0
        if pending and sum(p[3].shape[0] for p in pending) + tiles.shape[0] > batch_rows:
            yield from flush()
        pending.append((idx, clip, n_real, tiles, geom, first))
        first += n_real
    if pending:
        yield from flush()


def _grids(gazer) -> list[int]:
    if hasattr(gazer, "grids"):
        return list(gazer.grids)
    return list(gazer.config.grids)


def gazer_scales(gazer) -> list[int]:
    return list(gazer.scales)


class StreamGazer:
    """Frame-by-frame gazing for cameras and pipes: ``push(frame)`` returns that frame's gazing at
    once, carrying the gazer's state between frames and restarting it every ``clip_len`` frames (the
    model's trained clip length)."""

    def __init__(self, gazer, processor: AutoGazeImageProcessor | None = None, device="cpu",
                 tile_mode: str = "resize", clip_len: int = 16, **gaze_kwargs):
        if isinstance(clip_len, bool) or not isinstance(clip_len, int) or clip_len < 1:
            raise ValueError(f"clip_len: expected a positive int, got {clip_len!r}")
        limit = getattr(getattr(gazer, "config", None), "max_num_frames", None)
        if isinstance(limit, int) and clip_len > limit:
            raise ValueError(f"clip_len: the model was trained on clips of at most {limit} frames, got {clip_len}")
        self.gazer, self.processor = gazer, processor or AutoGazeImageProcessor()
        self.device, self.tile_mode, self.clip_len, self.kw = device, tile_mode, clip_len, gaze_kwargs
        self.grids = _grids(gazer)
        self.state, self.geom, self.index = None, None, 0

    def push(self, frame: np.ndarray) -> ClipResult:
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("frame: expected an (H, W, 3) uint8 RGB array")
        geom = TileGeometry(frame.shape[0], frame.shape[1], self.tile_mode)
        if self.geom is not None and geom != self.geom:
            raise ValueError(f"frame: size changed from {self.geom.height}x{self.geom.width} to "
                             f"{geom.height}x{geom.width}")
        if self.index % self.clip_len == 0:
            self.state = None
        self.geom = geom
        tiles = tile_clip(frame[None], geom, self.processor, self.device)
        out, self.state = self.gazer.generate(tiles, state=self.state, return_state=True, **self.kw)
        masks = stitch_masks([m.cpu() for m in out.gazing_mask], geom, self.grids)
        res = ClipResult(index=self.index // self.clip_len, first_frame=self.index, frames=frame[None], geometry=geom,
                         canvas_masks=masks, tokens_each_frame=out.real_tokens_each_frame().sum(0).tolist(),
                         tokens_possible=geom.tiles * sum(g * g for g in self.grids))
        self.index += 1
        return res
