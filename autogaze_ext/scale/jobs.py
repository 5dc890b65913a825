"""Per-video jobs: what a worker of the Ray pipeline does to one video. The pipeline is generic over them.

A job is a small picklable object holding settings only (model ids or folders, ratios, dtypes), never
weights: each worker builds its models once in ``setup()``. Its output for one video must be one file
written atomically (``run`` writes the path it is given; the pipeline gives a private staging name and
renames it into place), must not record its own file name, and must be readable back by ``completed``, so
that reruns and retries skip finished videos.
"""
from __future__ import annotations

from typing import Any


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
