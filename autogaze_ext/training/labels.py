"""Gaze labels for next-token-prediction training, in the official label JSON format.

The file (the official ``gazing_labels.json``) is one JSON object mapping a video path to its record::

    {"path/to/split/video.mp4": {"gazing_pos":  [[ids of frame 0], ..., [ids of frame 15]],
                                 "task_losses": [[loss after each id of frame 0], ..., [...]]}}

Ids are video-global (local id + 265 * t for frame t, as ``generate`` returns them); each frame lists its ids in
gaze order and its task losses, one per id: the reconstruction error of the frame after that token (a frame with
no ids holds one value, its error with nothing gazed, because the official collate pads a frame with its last
task loss). The official trainer matches a video to a key by the key's last three path components
(``folder/split/video.mp4``), so a key may be an absolute path; :func:`label_key` is that rule.

One clip per video, as the official data loader reads it: the first 16 frames (a shorter video repeats its last
frame), each frame through the AutoGaze processor with its shortest edge at 224 px, then resized to 224 x 224
(bicubic), which the model does to any input itself. Nothing is tiled.

Task losses come from the greedy gazer's painter (``autogaze_ext.greedy``): the mean absolute error, in
normalised pixels, of the frame repainted from the tokens gazed so far. The greedy gazer reports them itself
(``extra["reconstruction_error"]``); for any other gazer :func:`slot_errors` replays its ids through the painter.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .._files import write_atomic
from ..greedy import SCALES, GreedyGazer, scale_paints

CLIP_LEN = 16
SIZE = 224
TOKENS_PER_FRAME = 265


# ------------------------------------------------------------------------------------------ keys
def label_key(path: str) -> str:
    """The official matching rule: the last three components of a path, '/'-separated."""
    parts = os.fspath(path).replace("\\", "/").split("/")
    return "/".join(parts[-3:]) if len(parts) >= 3 else os.fspath(path).replace("\\", "/")


# ---------------------------------------------------------------------------------------- decode
def label_processor(processor=None):
    """The processor of the official training data: the given one (or the released defaults) with its shortest
    edge at 224 px."""
    from ..processor import AutoGazeImageProcessor

    cfg = dict(processor.config) if processor is not None else {}
    return AutoGazeImageProcessor(**{**cfg, "size": {"shortest_edge": SIZE}})


def read_clip(path: str, clip_len: int = CLIP_LEN, processor=None) -> tuple[torch.Tensor, int]:
    """The first ``clip_len`` frames of a video as the gaze model's input: ((clip_len, 3, 224, 224) float32
    normalised, number of real frames). A shorter video repeats its last frame (the official loader does)."""
    from ..pipeline.decode import ClipReader

    if isinstance(clip_len, bool) or not isinstance(clip_len, int) or not 1 <= clip_len <= CLIP_LEN:
        raise ValueError(f"clip_len: expected an int in [1, {CLIP_LEN}], got {clip_len!r}")
    proc = processor if processor is not None else label_processor()
    reader = ClipReader(os.fspath(path), clip_len=clip_len, max_frames=clip_len, buffers=2, converters=1)
    clip = None
    for c in reader:  # one clip: max_frames stops the decoder after it
        clip = c.frames.clone(), c.real
        c.release()
    if clip is None:  # pragma: no cover - ClipReader raises for a video without frames
        raise ValueError(f"video: {path!r} has no decodable frames")
    frames, real = clip
    x = proc(frames)[0]  # (T, 3, H', W')
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return x.contiguous(), real


# --------------------------------------------------------------------------------------- painter
@torch.no_grad()
def slot_errors(video: torch.Tensor, gazing_pos: torch.Tensor, if_padded_gazing: torch.Tensor,
                num_gazing_each_frame, scales: Sequence[int] = SCALES, patch_size: int = 16,
                return_empty: bool = False):
    """The greedy painter's reconstruction error after every slot of a gaze sequence.

    video (B, T, 3, S, S) normalised (resized to 224 when it is not); gazing_pos / if_padded_gazing (B, N)
    video-global ids as ``generate`` returns them. Returns errors (B, N) float32: after a padded slot the error
    stays what it was. With ``return_empty`` also (B, T): each frame's error before its first token. For the
    greedy gazer's own ids this is its ``extra["reconstruction_error"]``.
    """
    painter = GreedyGazer(scales, patch_size, size=SIZE)
    B, T = video.shape[:2]
    S, V = painter.size, painter.num_vision_tokens_each_frame
    counts = [int(c) for c in (num_gazing_each_frame.tolist() if isinstance(num_gazing_each_frame, torch.Tensor)
                               else num_gazing_each_frame)]
    if len(counts) != T or sum(counts) != gazing_pos.shape[1] or gazing_pos.shape != if_padded_gazing.shape:
        raise ValueError(f"gazing_pos: {tuple(gazing_pos.shape)} slots do not match num_gazing_each_frame {counts} "
                         f"over {T} frames")
    x = video.float()
    if x.shape[-2:] != (S, S):
        x = F.interpolate(x.flatten(0, 1), size=(S, S), mode="bicubic", align_corners=False).view(B, T, 3, S, S)
    dev = x.device
    ids, pads = gazing_pos.to(dev), if_padded_gazing.to(dev)
    recon = x[:, 0].mean(dim=(2, 3), keepdim=True).expand(B, 3, S, S).clone()
    offsets = [sum(g * g for g in painter.grids[:i]) for i in range(len(painter.grids))]
    errs, empty, start = [], [], 0
    for t, n in enumerate(counts):
        frame = x[:, t]
        paints = scale_paints(frame, painter.scales, S)
        err_s = (paints - frame[:, None]).abs().sum(2)
        cur = (recon - frame).abs().sum(1)
        level = torch.full((B, S, S), -1, dtype=torch.long, device=dev)
        empty.append(cur.mean(dim=(1, 2)) / 3)
        for j in range(start, start + n):
            local = ids[:, j] - V * t
            live = ~pads[:, j] & (local >= 0) & (local < V)
            painter._paint(recon, level, cur, paints, err_s, local.clamp(0, V - 1), live, offsets)
            errs.append(cur.mean(dim=(1, 2)) / 3)
        start += n
    out = torch.stack(errs, dim=1) if errs else torch.zeros(B, 0, device=dev)
    return (out, torch.stack(empty, dim=1)) if return_empty else out


@torch.no_grad()
def frame_errors(video: torch.Tensor, gazing_mask: Sequence[torch.Tensor],
                 scales: Sequence[int] = SCALES) -> torch.Tensor:
    """(B, T) the painter's error of each frame once all its gazed tokens are painted (the greedy gazer's
    stop criterion), from a gaze's per-scale masks; the rewards of GRPO training. video (B, T, 3, H, W)
    normalised, resized to 224 x 224 when it is not."""
    from ..reconstruct import reconstruct_tiles

    class _Masks:  # reconstruct_tiles reads only .gazing_mask
        pass

    m = _Masks()
    m.gazing_mask = [g.to(video.device) for g in gazing_mask]
    x = video.float()
    if x.shape[-2:] != (SIZE, SIZE):  # the frames the gaze was made on (the model resizes likewise)
        B, T = x.shape[:2]
        x = F.interpolate(x.flatten(0, 1), size=(SIZE, SIZE), mode="bicubic", align_corners=False)
        x = x.view(B, T, 3, SIZE, SIZE)
    recon = reconstruct_tiles(x, m, list(scales))
    return (recon - x).abs().mean(dim=(2, 3, 4))


# --------------------------------------------------------------------------------------- records
def records_from_output(out, errors: torch.Tensor, empty: torch.Tensor | None = None,
                        decimals: int = 6) -> list[dict]:
    """A gaze result and its per-slot errors -> one label record per batch row (official format)."""
    counts = out.num_gazing_each_frame.tolist()
    gpos = out.gazing_pos.cpu().split(counts, dim=1)
    pads = out.if_padded_gazing.cpu().split(counts, dim=1)
    errs = errors.float().cpu().split(counts, dim=1)
    empty = None if empty is None else empty.float().cpu()
    records = []
    for b in range(out.gazing_pos.shape[0]):
        ids_frames, loss_frames = [], []
        for t in range(len(counts)):
            keep = ~pads[t][b]
            ids = gpos[t][b][keep].tolist()
            losses = [round(float(v), decimals) for v in errs[t][b][keep].tolist()]
            if not ids:  # the official collate needs a last value to pad with
                if empty is None:
                    raise ValueError(f"row {b}, frame {t}: no gazed token and no empty-frame error to record")
                losses = [round(float(empty[b, t]), decimals)]
            ids_frames.append(ids)
            loss_frames.append(losses)
        records.append({"gazing_pos": ids_frames, "task_losses": loss_frames})
    return records


def label_clips(gazer, video: torch.Tensor, **gaze_kwargs) -> list[dict]:
    """Label a batch of clips (B, T, 3, 224, 224) with any gazer (``GreedyGazer`` or ``AutoGaze``); one record per
    clip. ``gaze_kwargs`` go to ``gazer.generate`` (gazing_ratio, task_loss_requirement, ...)."""
    device = getattr(gazer, "device", video.device)
    video = video.to(device)
    out = gazer.generate(video, **gaze_kwargs)
    scales = list(getattr(gazer, "scales", SCALES))
    errors, empty = slot_errors(video, out.gazing_pos, out.if_padded_gazing, out.num_gazing_each_frame, scales,
                                return_empty=True)
    own = out.extra.get("reconstruction_error") if hasattr(out, "extra") else None
    if own is not None:  # the greedy gazer's own record (the same numbers, computed while it searched)
        errors = own
    return records_from_output(out, errors, empty)


def label_video(path: str, gazer, processor=None, clip_len: int = CLIP_LEN, **gaze_kwargs) -> dict:
    """One video -> its label record (decode its first clip, gaze, record). A plain function: a Ray actor or a
    pool worker can call it with its own gazer."""
    clip, _ = read_clip(path, clip_len, processor if processor is not None else label_processor())
    return label_clips(gazer, clip[None], **gaze_kwargs)[0]


# --------------------------------------------------------------------------------------- checking
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_float(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def validate_record(video: str, record, clip_len: int = CLIP_LEN, tokens_per_frame: int = TOKENS_PER_FRAME,
                    need_task_losses: bool = False) -> None:
    """Raise ValueError naming the video (and frame) when a record is not a valid official label record."""
    V = tokens_per_frame
    where = f"labels: video {video!r}"
    if not isinstance(record, dict) or "gazing_pos" not in record:
        raise ValueError(f"{where}: expected an object with 'gazing_pos' (and 'task_losses'), got {record!r:.80}")
    unknown = set(record) - {"gazing_pos", "task_losses"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; a record holds 'gazing_pos' and "
                         f"'task_losses'")
    gpos = record["gazing_pos"]
    if not isinstance(gpos, list) or not all(isinstance(f, list) for f in gpos):
        raise ValueError(f"{where}: 'gazing_pos' must be a list with one list of ids per frame")
    if len(gpos) != clip_len:
        raise ValueError(f"{where}: 'gazing_pos' has {len(gpos)} frame(s), expected {clip_len} (one list per frame "
                         f"of the clip; a video shorter than the clip repeats its last frame)")
    losses = record.get("task_losses")
    if losses is None and need_task_losses:
        raise ValueError(f"{where}: no 'task_losses' (other videos of the file have them)")
    if losses is not None:
        if not isinstance(losses, list) or not all(isinstance(f, list) for f in losses):
            raise ValueError(f"{where}: 'task_losses' must be a list with one list of losses per frame")
        if len(losses) != len(gpos):
            raise ValueError(f"{where}: 'task_losses' has {len(losses)} frame(s) but 'gazing_pos' {len(gpos)}")
    for t, ids in enumerate(gpos):
        lo, hi = V * t, V * (t + 1)
        for i in ids:
            if not _is_int(i):
                raise ValueError(f"{where}, frame {t}: id {i!r} is not an integer")
            if not lo <= i < hi:
                local = f" (local id {i - lo} >= {V})" if i >= hi else ""
                raise ValueError(f"{where}, frame {t}: id {i} is outside frame {t}'s range [{lo}, {hi}){local}; ids "
                                 f"are video-global: local id in [0, {V}) + {V} * frame")
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"{where}, frame {t}: id {dup} is listed twice (a frame gazes each token once)")
        if losses is not None:
            fl = losses[t]
            want = max(1, len(ids))
            if len(fl) != want:
                raise ValueError(f"{where}, frame {t}: {len(fl)} task loss(es) for {len(ids)} id(s); expected "
                                 f"{want} (one per id; one for a frame without ids)")
            bad = [v for v in fl if not _is_float(v)]
            if bad:
                raise ValueError(f"{where}, frame {t}: task loss {bad[0]!r} is not a finite number")


def read_labels(path: str, clip_len: int = CLIP_LEN, tokens_per_frame: int = TOKENS_PER_FRAME,
                allow_empty: bool = False) -> dict[str, dict]:
    """Read and check a label file (every record, strictly). Errors name the file, the video and the frame."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"labels: no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"labels: {path!r} is a folder; give the label JSON file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ValueError(f"labels: {path!r} is empty; expected a JSON object mapping video paths to label records")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"labels: {path!r} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"labels: {path!r} must hold a JSON object mapping video paths to label records, got a "
                         f"{type(data).__name__}")
    if not data and not allow_empty:
        raise ValueError(f"labels: {path!r} holds no labelled videos")
    with_losses = sum(1 for r in data.values() if isinstance(r, dict) and "task_losses" in r)
    need = 0 < with_losses
    seen: dict[str, str] = {}
    for video, record in data.items():
        validate_record(video, record, clip_len, tokens_per_frame, need_task_losses=need)
        k = label_key(video)
        if k in seen:
            raise ValueError(f"labels: videos {seen[k]!r} and {video!r} share the key {k!r} (the last three path "
                             f"components, by which the official trainer matches videos)")
        seen[k] = video
    return data


def write_labels(path: str, labels: dict, fsync: bool = True) -> None:
    """Write the label file atomically: a temporary file in the same folder, then a rename (a crash or Ctrl-C
    leaves the old file or the new one, never half of one)."""
    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(labels, f, separators=(",", ":"))
            f.write("\n")

    write_atomic(path, dump, fsync)


def match_videos(labels: dict, videos: Iterable[str], where: str = "--videos") -> list[tuple[str, str]]:
    """(video file, label key) for every labelled video, matched by :func:`label_key`. A labelled video that is
    not among ``videos`` is an error naming it; videos without labels are left out (as the official loader)."""
    by_key: dict[str, str] = {}
    for v in videos:
        k = label_key(v)
        if k in by_key and os.path.abspath(by_key[k]) != os.path.abspath(v):
            raise ValueError(f"{where}: {by_key[k]!r} and {v!r} share the label key {k!r} (last three path "
                             f"components); rename one")
        by_key[k] = v
    missing = [name for name in labels if label_key(name) not in by_key]
    if missing:
        raise ValueError(f"labels: {len(missing)} labelled video(s) not found in {where}, e.g. {missing[:3]} (a "
                         f"video matches a label by its last three path components)")
    return [(by_key[label_key(name)], name) for name in labels]


__all__ = ["CLIP_LEN", "frame_errors", "label_clips", "label_key", "label_processor", "label_video",
           "match_videos", "read_clip", "read_labels", "records_from_output", "slot_errors", "validate_record",
           "write_labels"]
