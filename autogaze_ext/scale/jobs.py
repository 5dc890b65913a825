"""Per-video jobs: what a worker of the Ray pipeline does to one video. The pipeline is generic over them.

A job is a small picklable object holding settings only (model ids or folders, ratios, dtypes), never
weights: each worker builds its models once in ``setup()``. Its output for one video must be one file
written atomically (``run`` writes the path it is given; the pipeline gives a private staging name and
renames it into place), must not record its own file name, and must be readable back by ``completed``, so
that reruns and retries skip finished videos.
"""
from __future__ import annotations

import json
import os
from typing import Any

# what fails one video (a row of the index) rather than the run
VIDEO_ERRORS = (ValueError, TypeError, OSError, RuntimeError, ImportError)


class VideoJob:
    """The interface of a per-video job (subclass it, e.g. ``EncodeJob``).

    name: shown in progress and logs. suffix: the output file extension.
    """

    name = "job"
    suffix = ".safetensors"

    def setup(self, num_cpus: int) -> None:
        """Build the models; called once in each worker (``num_cpus``: the CPUs reserved for it)."""

    def check(self, video: str) -> dict:
        """Cheap checks on a CPU task before any accelerator time is spent (open the container, read its
        header): raise ValueError/OSError for a video that cannot be processed. Returns facts for the index."""
        return {}

    def run(self, video: str, output: str) -> dict:
        """Process one video into ``output`` (atomically). Returns {"clips", "frames", "tokens"}."""
        raise NotImplementedError

    def run_many(self, items: list[tuple[str, str]]) -> list:
        """Process several (video, output) pairs; per pair its summary (as ``run``) or the exception that failed
        it. Override it to batch the videos of one actor call on the accelerator; the default runs them in turn."""
        results = []
        for video, output in items:
            try:
                results.append(self.run(video, output))
            except VIDEO_ERRORS as e:
                results.append(e)
        return results

    def completed(self, output: str) -> dict | None:
        """{"clips", "frames", "tokens"} of a complete output file, None when it is missing or incomplete."""
        raise NotImplementedError


class EncodeJob(VideoJob):
    """``autogaze-ext encode`` on one video: an ``Encoder`` per worker, one feature file per video, the same
    bytes as a single-process run with the same ``Encoder`` arguments (the metadata's creation time and stage
    timings aside).

    encoder_kwargs: ``Encoder`` arguments as plain values (``gazer``/``vit`` as folders or hub ids, never
    modules: weights are loaded by each worker, not shipped). max_frames: as ``Encoder.encode``.
    """

    name = "encode"
    suffix = ".safetensors"

    def __init__(self, encoder_kwargs: dict[str, Any], max_frames: int | None = None):
        from torch import nn

        for key in ("gazer", "vit"):
            if isinstance(encoder_kwargs.get(key), nn.Module):
                raise TypeError(f"encoder_kwargs[{key!r}]: give a folder or hub id; a module's weights would be "
                                f"pickled to every worker")
        self.encoder_kwargs = dict(encoder_kwargs)
        self.max_frames = max_frames
        self.encoder = None

    def __getstate__(self):  # the Encoder (models) never travels
        return {**self.__dict__, "encoder": None}

    def setup(self, num_cpus: int) -> None:
        from ..pipeline.encoder import Encoder

        kw = dict(self.encoder_kwargs)
        # FFmpeg's decoder threads: the CPUs reserved for this worker (its default is every core of the node)
        kw.setdefault("decode_threads", max(1, int(num_cpus)))
        self.encoder = Encoder(**kw)

    def check(self, video: str) -> dict:
        from ..pipeline.decode import probe
        from ..video import TileGeometry

        info = probe(video)
        TileGeometry(info.height, info.width, self.encoder_kwargs.get("tile_mode", "resize"))
        return {"width": info.width, "height": info.height}

    def run(self, video: str, output: str) -> dict:
        res = self.encoder.encode(video, output, max_frames=self.max_frames)
        return {"clips": res.clips, "frames": res.frames, "tokens": res.tokens}

    def completed(self, output: str) -> dict | None:
        from ..pipeline.features import read_metadata

        meta = read_metadata(output)
        if meta is None:
            return None
        return {"clips": int(meta.get("clips", 0)), "frames": int(meta.get("frames", 0)),
                "tokens": int(meta.get("total_tokens", meta.get("tokens", 0)))}

    def settings(self) -> dict:
        return {"encoder": {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                            for k, v in self.encoder_kwargs.items()}, "max_frames": self.max_frames}


class LabelJob(VideoJob):
    """``autogaze-ext label`` on each video: one record file per video (JSON: the video, the labelling settings
    and its official label record), merged by the driver into the one label file. The first clips of the
    videos of one actor call are gazed in one batch (``videos_per_call``), as ``label --batch-rows`` does.

    A record file counts as complete only when it holds a valid record made with the same settings, so a
    records folder left by a run with other settings is relabelled, not merged.
    """

    name = "label"
    suffix = ".json"

    def __init__(self, checkpoint: str | None = None, revision: str | None = None, max_error: float | None = None,
                 gazing_ratio: float | None = None, task_loss_requirement: float | None = None,
                 precision: str = "fp32", clip_len: int = 16, device: str = "cpu"):
        self.gazer_args = dict(checkpoint=checkpoint, revision=revision, max_error=max_error,
                               gazing_ratio=gazing_ratio, task_loss_requirement=task_loss_requirement,
                               precision=precision)
        self.clip_len, self.device = clip_len, device
        self.gazer = self.processor = None
        self.gaze_kwargs: dict = {}
        self.threads = 1

    def __getstate__(self):  # the gazer (weights) never travels
        return {**self.__dict__, "gazer": None, "processor": None}

    def settings(self) -> dict:
        return {"gazer": dict(self.gazer_args), "clip_len": self.clip_len}

    @staticmethod
    def record_path(folder: str, video: str) -> str:
        """The record file of a video: named by its label key (last three path components, unique among the
        videos of a label file), so it stays the same however the inputs are spelled. Each component is
        percent-quoted (no '..', no separators, injective)."""
        from urllib.parse import quote

        from ..training.labels import label_key

        parts = []
        for c in label_key(video).split("/"):
            q = quote(c, safe=" ,+=@-_.~")
            parts.append(q.replace(".", "%2E") if q in (".", "..") else (q or "%00"))
        return os.path.join(folder, *parts) + LabelJob.suffix

    def setup(self, num_cpus: int) -> None:
        import torch
        from types import SimpleNamespace

        from ..cli import _load_gazer
        from ..training.labels import label_processor

        self.gazer, proc, self.gaze_kwargs, _, _ = _load_gazer(SimpleNamespace(**self.gazer_args),
                                                                torch.device(self.device))
        self.processor = label_processor(proc)
        self.threads = max(1, int(num_cpus))

    def check(self, video: str) -> dict:
        from ..pipeline.decode import probe

        info = probe(video)
        return {"width": info.width, "height": info.height}

    def run(self, video: str, output: str) -> dict:
        res = self.run_many([(video, output)])[0]
        if isinstance(res, BaseException):
            raise res
        return res

    def run_many(self, items: list[tuple[str, str]]) -> list:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from ..training.labels import label_clips, read_clip

        def decode(video):
            try:
                return read_clip(video, self.clip_len, self.processor)[0]
            except (ValueError, OSError, RuntimeError) as e:
                return e

        # decode the clips side by side on the worker's CPUs (PyAV releases the GIL)
        with ThreadPoolExecutor(max(1, min(len(items), self.threads))) as pool:
            results = list(pool.map(decode, [v for v, _ in items]))
        ok = [i for i, c in enumerate(results) if not isinstance(c, BaseException)]
        if not ok:
            return results
        try:
            records = label_clips(self.gazer, torch.stack([results[i] for i in ok]), **self.gaze_kwargs)
        except (ValueError, RuntimeError) as e:  # the batch failed: each of its videos, with that error
            for i in ok:
                results[i] = e
            return results
        for i, rec in zip(ok, records):
            video, output = items[i]
            with open(output, "w", encoding="utf-8") as f:
                json.dump({"video": video, "settings": self.settings(), "record": rec}, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            results[i] = self._summary(rec)
        return results

    def _summary(self, record: dict) -> dict:
        return {"clips": 1, "frames": len(record["gazing_pos"]), "tokens": sum(map(len, record["gazing_pos"]))}

    def read(self, output: str) -> dict | None:
        """The label record of a complete record file; None when it is missing, malformed, or made with other
        settings."""
        from ..training.labels import validate_record

        try:
            with open(output, "rb") as f:
                data = json.loads(f.read())
            if not isinstance(data, dict) or data.get("settings") != self.settings():
                return None
            validate_record(str(data.get("video")), data.get("record"), self.clip_len, need_task_losses=True)
        except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return None
        return data["record"]

    def completed(self, output: str) -> dict | None:
        rec = self.read(output)
        return None if rec is None else self._summary(rec)
