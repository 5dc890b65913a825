"""Background decoding into 16-frame clips of uint8 frames, with bounded, reusable (pinned) buffers.

A producer thread demuxes and decodes with PyAV (FFmpeg's own frame/slice threads inside the codec); the
RGB conversion of each frame (swscale, which releases the GIL) runs on a small pool of converter threads
and writes straight into a clip buffer. Buffers come from a fixed pool: when the consumer is slower, the
producer waits (backpressure), so host memory stays at ``buffers`` clips whatever the video length. A
buffer goes back to the pool when the consumer releases it; with an ``event`` (the CUDA copy that read
it), the producer waits for that copy before overwriting it.

Sources: a video path, or frames already in memory ((T, H, W, 3) uint8 array/tensor, or an iterable of
(H, W, 3) frames).
"""
from __future__ import annotations

import os
import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch

_END = object()


@dataclass
class Clip:
    """One clip of decoded frames. ``frames[:real]`` are the video's frames, the rest repeat the last one."""

    index: int
    first_frame: int
    real: int
    frames: torch.Tensor  # (clip_len, H, W, 3) uint8, host (pinned when asked)
    _pool: "_BufferPool" = field(repr=False, default=None)
    _slot: int = field(repr=False, default=-1)

    def release(self, event: Any = None) -> None:
        """Give the buffer back; ``event`` (a CUDA event) must complete before it is overwritten."""
        if self._pool is not None and self._slot >= 0:
            self._pool.put(self._slot, event)
            self._slot = -1


class _BufferPool:
    def __init__(self, count: int, shape: tuple, pinned: bool):
        self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=pinned) for _ in range(count)]
        self.free: queue.Queue = queue.Queue()
        for i in range(count):
            self.free.put((i, None))

    def get(self, stop: threading.Event) -> int | None:
        while not stop.is_set():
            try:
                slot, event = self.free.get(timeout=0.1)
            except queue.Empty:
                continue
            if event is not None:
                event.synchronize()
            return slot
        return None

    def put(self, slot: int, event: Any) -> None:
        self.free.put((slot, event))


@dataclass
class SourceInfo:
    path: str | None
    width: int
    height: int
    fps: float
    frames: int | None  # as the container reports it
    codec: str | None
    size_bytes: int | None = None

    def as_dict(self) -> dict:
        return {"path": self.path, "width": self.width, "height": self.height, "fps": self.fps,
                "frames_reported": self.frames, "codec": self.codec, "size_bytes": self.size_bytes}


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("decoding video files needs PyAV: pip install av") from e
    return av


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # file:, http://, s3://... (two letters at least: not a drive)


def is_uri(path) -> bool:
    """A URI for FFmpeg's protocols (``file:``, ``http(s)://``, ...) rather than a local path."""
    return isinstance(path, str) and bool(_URI.match(path))


def open_video(path: str, hwaccel: str | None = None):
    """(container, stream) of a video file or a URI FFmpeg opens, with clear errors for the usual ways a file
    is unusable. hwaccel: an FFmpeg hardware decoder type (e.g. "cuda": NVDEC), falling back to software."""
    av = _av()
    path = os.fspath(path)
    if not is_uri(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"video: no such file: {path!r}")
        if os.path.isdir(path):
            raise ValueError(f"video: {path!r} is a folder, not a video file")
        if os.path.getsize(path) == 0:
            raise ValueError(f"video: {path!r} is empty (0 bytes)")
    kw = {}
    if hwaccel:
        try:
            from av.codec.hwaccel import HWAccel
        except ImportError:
            raise ValueError(f"hwaccel: this PyAV ({av.__version__}) has no hardware decoding; use hwaccel=None") \
                from None
        kw["hwaccel"] = HWAccel(device_type=hwaccel, allow_software_fallback=True)
    try:
        container = av.open(path, **kw)
    except av.error.FFmpegError as e:
        raise ValueError(f"video: cannot read {path!r}: not a video, or corrupt/truncated ({e})") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"video: {path!r} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.name:
        container.close()
        raise ValueError(f"video: {path!r} uses a codec this build of PyAV cannot decode")
    return container, stream


def probe(path: str) -> SourceInfo:
    container, stream = open_video(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
        local = not is_uri(path)
        return SourceInfo(os.path.abspath(path) if local else path, stream.codec_context.width,
                          stream.codec_context.height, float(rate) if rate else 0.0, stream.frames or None,
                          stream.codec_context.name, os.path.getsize(path) if local else None)
    finally:
        container.close()


class ClipReader:
    """Iterates the clips of a source, decoded ahead in background threads.

    clip_len: frames per clip (a last partial clip repeats its final frame; ``Clip.real`` says how many
    are real). max_frames: stop after that many frames. buffers: clips in flight (host memory bound:
    buffers x clip_len x H x W x 3 bytes). pinned: page-locked buffers for asynchronous GPU copies.
    threads: FFmpeg decoder threads (0: FFmpeg's choice); converters: RGB-conversion threads; hwaccel: an
    FFmpeg hardware decoder ("cuda" for NVDEC) where PyAV and the platform have one (optional).
    ``stats`` holds busy seconds of the decoder (``decode_s``) and frames decoded.
    """

    def __init__(self, source, clip_len: int = 16, max_frames: int | None = None, buffers: int = 3,
                 pinned: bool = False, threads: int = 0, converters: int | None = None, hwaccel: str | None = None):
        if not isinstance(clip_len, int) or clip_len < 1:
            raise ValueError(f"clip_len: expected a positive int, got {clip_len!r}")
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
            raise ValueError(f"max_frames: expected a positive int or None, got {max_frames!r}")
        if buffers < 2:
            raise ValueError(f"buffers: expected >= 2, got {buffers}")
        self.source, self.clip_len, self.max_frames = source, clip_len, max_frames
        self.buffers, self.pinned, self.threads, self.hwaccel = buffers, pinned, threads, hwaccel
        self.converters = converters or max(1, min(4, (os.cpu_count() or 2) - 1))
        self.stats = {"decode_s": 0.0, "frames": 0}
        self.info: SourceInfo | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=buffers)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: _BufferPool | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        if isinstance(source, (str, os.PathLike)):
            self.info = probe(os.fspath(source))
        else:
            self._frames = self._memory_frames(source)

    # ---------------------------------------------------------------------------------- sources
    @staticmethod
    def _memory_frames(source) -> Iterator[np.ndarray | torch.Tensor]:
        if isinstance(source, (np.ndarray, torch.Tensor)):
            if source.ndim != 4 or source.shape[-1] != 3 or source.dtype not in (np.uint8, torch.uint8):
                raise ValueError(f"frames: expected (T, H, W, 3) uint8, got shape {tuple(source.shape)} "
                                 f"dtype {source.dtype}")
            if source.shape[0] == 0:
                raise ValueError("frames: no frames")
            return iter(source)
        if isinstance(source, Iterable):
            return iter(source)
        raise TypeError(f"video: expected a path, a (T, H, W, 3) uint8 array/tensor or an iterable of frames, "
                        f"got {type(source).__name__}")

    def _file_frames(self) -> Iterator:
        """Decoded av.VideoFrame objects (converted to RGB later, on the converter threads)."""
        av = _av()
        path = self.info.path
        container, stream = open_video(path, self.hwaccel)
        stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
        if self.threads:
            stream.codec_context.thread_count = self.threads
        n = 0
        try:
            for frame in container.decode(stream):
                yield frame
                n += 1
        except av.error.FFmpegError as e:
            raise ValueError(f"video: decoding {path!r} failed after {n} frames: the file is corrupt or "
                             f"truncated ({e})") from None
        finally:
            container.close()
        reported = self.info.frames
        if reported and n + 1 < reported and (self.max_frames is None or n < self.max_frames):
            raise ValueError(f"video: {path!r} ended after {n} of the {reported} frames its container "
                             f"announces: the file is truncated or corrupt")

    # --------------------------------------------------------------------------------- producer
    def _produce(self) -> None:
        frames = self._file_frames() if self.info is not None and not hasattr(self, "_frames") else self._frames
        pool_exec = ThreadPoolExecutor(self.converters, thread_name_prefix="autogaze-convert")
        clip_idx, first, n_total = 0, 0, 0
        slot, futures, filled, shape = None, [], 0, None
        busy = 0.0
        try:
            t0 = time.perf_counter()
            for fr in frames:
                if self._stop.is_set():
                    return
                h, w = (fr.height, fr.width) if hasattr(fr, "height") else tuple(fr.shape[:2])
                if shape is None:
                    shape = (h, w)
                    self._pool = _BufferPool(self.buffers + 1, (self.clip_len, h, w, 3), self.pinned)
                    if self.info is None:
                        self.info = SourceInfo(None, w, h, 0.0, None, None)
                    self._ready.set()
                elif (h, w) != shape:
                    raise ValueError(f"video: frame size changed from {shape[1]}x{shape[0]} to {w}x{h} at frame "
                                     f"{n_total}; split the video where it changes")
                if slot is None:
                    busy += time.perf_counter() - t0
                    slot = self._pool.get(self._stop)
                    t0 = time.perf_counter()
                    if slot is None:
                        return
                buf = self._pool.buffers[slot]
                futures.append(pool_exec.submit(_convert_into, fr, buf, filled))
                filled += 1
                n_total += 1
                if filled == self.clip_len or (self.max_frames is not None and n_total >= self.max_frames):
                    busy += time.perf_counter() - t0
                    self._emit(clip_idx, first, filled, slot, futures)
                    t0 = time.perf_counter()
                    clip_idx, first, slot, futures, filled = clip_idx + 1, first + filled, None, [], 0
                    if self.max_frames is not None and n_total >= self.max_frames:
                        break
            busy += time.perf_counter() - t0
            if filled:
                self._emit(clip_idx, first, filled, slot, futures)
            if n_total == 0:
                raise ValueError(f"video: {self.info.path if self.info and self.info.path else 'source'!r} has "
                                 f"no decodable frames")
        except BaseException as e:  # handed to the consumer, which raises it
            self._error = e
        finally:
            self.stats["decode_s"] += busy
            pool_exec.shutdown(wait=True)
            self._ready.set()
            self._put(_END)

    def _emit(self, idx: int, first: int, real: int, slot: int, futures: list) -> None:
        for f in futures:  # conversion errors surface here, in order
            f.result()
        buf = self._pool.buffers[slot]
        if real < self.clip_len:
            buf[real:] = buf[real - 1]
        self.stats["frames"] += real
        self._put(Clip(idx, first, real, buf, self._pool, slot))

    def _put(self, item) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    # --------------------------------------------------------------------------------- consumer
    def __iter__(self) -> Iterator[Clip]:
        if self._thread is not None:
            raise RuntimeError("ClipReader: can be iterated once")
        self._thread = threading.Thread(target=self._produce, name="autogaze-decode", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    break
                yield item
            if self._error is not None:
                raise self._error
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            while self._thread.is_alive():  # drain so a blocked producer can finish
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()


def _convert_into(frame, buf: torch.Tensor, i: int) -> None:
    """One decoded frame into row i of a clip buffer (RGB uint8)."""
    if hasattr(frame, "to_ndarray"):
        arr = frame.to_ndarray(format="rgb24")
    else:
        arr = frame
    src = arr if isinstance(arr, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(arr))
    if src.dtype != torch.uint8 or src.ndim != 3 or src.shape[2] != 3:
        raise ValueError(f"frames: expected (H, W, 3) uint8 frames, got {tuple(src.shape)} {src.dtype}")
    buf[i].copy_(src)
