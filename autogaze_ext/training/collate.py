"""Batching of gaze labels for teacher-forced training, as the official collate (``process_gazing_info``).

A label set gives, per video, per frame, the list of gazed ids in the order they were chosen. Ids are
**video-global**: id ``i`` of frame ``t`` is ``local + 265 * t`` with ``local`` in ``[0, 265)`` (the convention
of ``GazeOutput.gazing_pos``; teacher-forced scoring subtracts ``265 * t`` again).
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

__all__ = ["collate_gazing_info"]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _as_list(value, where: str, expected: str) -> list:
    """value as a list (tensors and numpy arrays through tolist()); a TypeError naming where otherwise."""
    if isinstance(value, torch.Tensor) or hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where}: expected {expected}, got {type(value).__name__}")
    return list(value)


def _as_nested(name: str, value) -> list:
    """A list of per-video lists of per-frame sequences."""
    return _as_list(value, name, "a list (one entry per video) of lists (one per frame) of values")


def _frame_list(name: str, b: int, t: int, frame) -> list:
    return _as_list(frame, f"{name}[{b}][{t}] (video {b}, frame {t})", "a list of values")


def collate_gazing_info(labels: Sequence, task_losses: Sequence | None = None, *,
                        num_vision_tokens_each_frame: int = 265, num_frames: int | None = None) -> dict:
    """Collate per-video per-frame gaze label lists into the tensors teacher-forced scoring takes.

    labels: ``labels[b][t]`` = the video-global ids gazed in frame ``t`` of video ``b``, in gaze order
        (ints with ``265 t <= id < 265 (t + 1)``, no duplicates within a frame; a frame may be empty). Every
        video must have the same number of frames.
    task_losses: optional ``task_losses[b][t]`` = the task loss after each gaze of that frame, one value per
        label (slot ``j`` holds the loss once labels ``0..j`` are gazed); a frame without labels holds exactly
        one value (the loss with nothing gazed). It is what the task-loss head learns (NTP with
        ``optimize_task_loss_prediction=True``).
    num_vision_tokens_each_frame: ids per frame (265 for the released model).
    num_frames: if given, every video must have this many frames (e.g. the clip length).

    Returns a dict of CPU tensors, exactly as the official collate:

    * ``gazing_pos`` (B, N) int64: every frame ``t`` gets ``n_t = max_b len(labels[b][t]) + 1`` slots (the
      ``+ 1`` is an end-of-frame slot), filled with the labels then ``-1``;
    * ``if_padded_gazing`` (B, N) bool: ``gazing_pos == -1`` (so each frame's last slot is always padded);
    * ``num_gazing_each_frame`` (T,) int64: the ``n_t``; ``N = sum(n_t)``;
    * ``task_losses`` (B, N) float32 (only when ``task_losses`` is given): the values, each frame padded with
      its last value.

    The arguments are not modified (the official collate extends them in place). Bad input raises
    ``ValueError``/``TypeError`` naming the video index and frame.
    """
    V = num_vision_tokens_each_frame
    if not _is_int(V) or V < 1:
        raise ValueError(f"num_vision_tokens_each_frame: expected a positive int, got {V!r}")
    labels = _as_nested("labels", labels)
    if not labels:
        raise ValueError("labels: no videos (expected one list of per-frame id lists per video)")
    B = len(labels)
    videos = [_as_nested(f"labels[{b}]", v) for b, v in enumerate(labels)]
    T = len(videos[0]) if num_frames is None else num_frames
    if num_frames is not None and (not _is_int(num_frames) or num_frames < 1):
        raise ValueError(f"num_frames: expected a positive int, got {num_frames!r}")
    if T < 1:
        raise ValueError("labels[0] (video 0): has no frames")
    for b, v in enumerate(videos):
        if len(v) != T:
            raise ValueError(f"labels[{b}] (video {b}): has {len(v)} frames, expected {T}"
                             + ("" if num_frames is not None else " (as video 0)"))
    frames = [[_frame_list("labels", b, t, f) for t, f in enumerate(v)] for b, v in enumerate(videos)]
    for b, v in enumerate(frames):
        for t, ids in enumerate(v):
            lo, hi = V * t, V * (t + 1)
            for j, i in enumerate(ids):
                if not _is_int(i):
                    raise TypeError(f"labels[{b}][{t}][{j}] (video {b}, frame {t}): expected an int id, got {i!r}")
                if not lo <= i < hi:
                    raise ValueError(f"labels[{b}][{t}][{j}] (video {b}, frame {t}): id {i} is outside [{lo}, {hi}) "
                                     f"(ids are video-global: local id + {V} * frame)")
            if len(set(ids)) != len(ids):
                dup = next(i for i in ids if ids.count(i) > 1)
                raise ValueError(f"labels[{b}][{t}] (video {b}, frame {t}): id {dup} appears more than once")

    losses = None
    if task_losses is not None:
        tl = _as_nested("task_losses", task_losses)
        if len(tl) != B:
            raise ValueError(f"task_losses: has {len(tl)} videos, labels has {B}")
        losses = []
        for b, v in enumerate(tl):
            v = _as_nested(f"task_losses[{b}]", v)
            if len(v) != T:
                raise ValueError(f"task_losses[{b}] (video {b}): has {len(v)} frames, labels has {T}")
            row = []
            for t, f in enumerate(v):
                f = _frame_list("task_losses", b, t, f)
                want = max(len(frames[b][t]), 1)
                if len(f) != want:
                    hint = " (a frame without labels holds exactly one value, the loss with nothing gazed)"
                    raise ValueError(
                        f"task_losses[{b}][{t}] (video {b}, frame {t}): has {len(f)} values for {len(frames[b][t])} "
                        f"labels; expected one per label" + ("" if frames[b][t] else hint))
                for j, x in enumerate(f):
                    if not _is_real(x) or not math.isfinite(float(x)):
                        raise ValueError(f"task_losses[{b}][{t}][{j}] (video {b}, frame {t}): expected a finite "
                                         f"number, got {x!r}")
                row.append([float(x) for x in f])
            losses.append(row)

    # every frame: the batch's longest label list + 1 end slot; labels padded with -1, losses with their last value
    n = [max(len(frames[b][t]) for b in range(B)) + 1 for t in range(T)]
    pos = [[i for t in range(T) for i in frames[b][t] + [-1] * (n[t] - len(frames[b][t]))] for b in range(B)]
    gazing_pos = torch.tensor(pos, dtype=torch.long).view(B, sum(n))
    out = {"gazing_pos": gazing_pos, "if_padded_gazing": gazing_pos == -1,
           "num_gazing_each_frame": torch.tensor(n, dtype=torch.long)}
    if losses is not None:
        vals = [[x for t in range(T) for x in losses[b][t] + [losses[b][t][-1]] * (n[t] - len(losses[b][t]))]
                for b in range(B)]
        out["task_losses"] = torch.tensor(vals, dtype=torch.float32).view(B, sum(n))
    return out
