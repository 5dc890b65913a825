"""Feature files: one safetensors file per video, written as the video streams through, read back lazily.

Layout (all tensors little-endian, row i of every per-token tensor describes row i of ``features``):

  features     (total, D)  bf16 / fp32  the gazed ViT features after the final norm, tile-clip after tile-clip
                                        (clip-major, tiles row-major), gaze order inside a tile-clip
  tokens       (total, 4)  int32        clip index, video frame index, tile index, token id (0 .. V-1)
  boxes        (total, 4)  float32      x0, y0, x1, y1 of the token's patch in source pixels
  cu_seqlens   (R + 1,)    int32        row offsets of the R tile-clips (R = clips x tiles)
  clips        (C, 2)      int32        first video frame and number of real frames of each clip

The metadata key ``autogaze_ext`` holds a JSON object with everything needed to reproduce the file
(source, model ids and revisions, settings, tile geometry, precision, package version).

Writing is streamed and bounded in memory: ``features`` goes straight to its final place after a reserved
header, the other columns to side files that are appended when the video is complete; the header is
written last, the file fsynced and renamed into place. Until then the data lives under a ``.partial``
name (and the header region is zeros, which no safetensors reader accepts), so an interrupted run never
leaves a file that looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._files import fsync_dir, remove_if_exists

META_KEY = "autogaze_ext"
FORMAT_VERSION = 1
HEADER_RESERVE = 1 << 16  # data starts here; the JSON header is padded with spaces up to it
PARTIAL_SUFFIX = ".partial"

_DTYPES = {  # torch dtype -> (safetensors name, numpy view dtype)
    torch.bfloat16: ("BF16", np.int16),
    torch.float16: ("F16", np.float16),
    torch.float32: ("F32", np.float32),
    torch.int32: ("I32", np.int32),
    torch.int64: ("I64", np.int64),
}


def _as_bytes(t: torch.Tensor) -> memoryview:
    """A CPU tensor's bytes without a copy (bf16 through an int16 view: numpy has no bf16)."""
    _, view = _DTYPES[t.dtype]
    t = t.contiguous()
    arr = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return memoryview(arr.view(view)).cast("B")


class _Column:
    """A growing tensor (rows x trailing shape) streamed to a file."""

    def __init__(self, name: str, dtype: torch.dtype, trailing: tuple[int, ...], path: str, offset: int = 0):
        self.name, self.dtype, self.trailing, self.path = name, dtype, tuple(trailing), path
        self.rows = 0
        self.file = open(path, "r+b" if offset else "wb")
        self.file.seek(offset)
        self.start = offset

    @property
    def nbytes(self) -> int:
        return self.rows * int(np.prod(self.trailing, dtype=np.int64)) * torch.empty((), dtype=self.dtype).element_size()

    def append(self, t: torch.Tensor) -> None:
        if t.dtype != self.dtype or tuple(t.shape[1:]) != self.trailing:
            raise ValueError(f"{self.name}: expected rows of {self.trailing} {self.dtype}, got {tuple(t.shape)} {t.dtype}")
        if t.shape[0]:
            self.file.write(_as_bytes(t.cpu()))
            self.rows += t.shape[0]

    def close(self) -> None:
        self.file.close()


class FeatureWriter:
    """Streams one video's feature file: ``append_rows`` per batch of tile-clips, ``append_clip`` per
    clip, then ``commit(metadata)``; ``abort()`` (or an exception inside ``with``) removes everything."""

    def __init__(self, path: str | os.PathLike, dim: int, dtype: torch.dtype = torch.bfloat16):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"dtype: features are bf16, fp16 or fp32, got {dtype}")
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self.tmp = self.path + PARTIAL_SUFFIX
        with open(self.tmp, "wb") as f:  # header region stays zero until commit
            f.truncate(HEADER_RESERVE)
        self.dim, self.dtype = int(dim), dtype
        side = lambda name: f"{self.tmp}.{name}"  # noqa: E731
        self.features = _Column("features", dtype, (self.dim,), self.tmp, HEADER_RESERVE)
        self.side = [_Column("tokens", torch.int32, (4,), side("tokens")),
                     _Column("boxes", torch.float32, (4,), side("boxes"))]
        self.row_tokens: list[np.ndarray] = []  # per tile-clip token counts, int64 chunks
        self.clips: list[tuple[int, int]] = []
        self.total = 0
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.abort()
            raise RuntimeError("FeatureWriter: left without commit(); the partial file was removed")

    def append_rows(self, features: torch.Tensor, tokens: torch.Tensor, boxes: torch.Tensor,
                    row_tokens: torch.Tensor) -> None:
        """Tokens of consecutive tile-clips: features (n, D), tokens (n, 4) int32, boxes (n, 4) float32,
        row_tokens (r,) tokens per tile-clip, summing to n."""
        n = features.shape[0]
        if tokens.shape[0] != n or boxes.shape[0] != n or int(row_tokens.sum()) != n:
            raise ValueError(f"append_rows: {n} feature rows, {tokens.shape[0]} token rows, {boxes.shape[0]} boxes, "
                             f"row counts summing to {int(row_tokens.sum())}")
        if self.total + n >= 2 ** 31:
            raise ValueError("features: more than 2^31 tokens in one video; encode it in parts (--max-frames)")
        self.features.append(features)
        self.side[0].append(tokens)
        self.side[1].append(boxes)
        self.row_tokens.append(row_tokens.to(torch.int64).numpy().copy())
        self.total += n

    def append_clip(self, first_frame: int, real_frames: int) -> None:
        self.clips.append((int(first_frame), int(real_frames)))

    def _small_tensors(self) -> dict[str, torch.Tensor]:
        counts = np.concatenate(self.row_tokens) if self.row_tokens else np.zeros(0, np.int64)
        cu = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        clips = np.asarray(self.clips, np.int32).reshape(-1, 2)
        return {"cu_seqlens": torch.from_numpy(cu), "clips": torch.from_numpy(clips)}

    def commit(self, metadata: dict[str, Any], fsync: bool = True) -> str:
        """Finish the file: side columns and small tensors after the features, header in front, rename."""
        if self.closed:
            raise RuntimeError("FeatureWriter: already closed")
        try:
            small = self._small_tensors()
            entries, offset = [], 0

            def entry(name, dtype, shape, nbytes):
                nonlocal offset
                entries.append((name, {"dtype": _DTYPES[dtype][0], "shape": list(shape),
                                       "data_offsets": [offset, offset + nbytes]}))
                offset += nbytes

            f = self.features.file
            entry("features", self.dtype, (self.features.rows, self.dim), self.features.nbytes)
            for col in self.side:
                col.close()
                entry(col.name, col.dtype, (col.rows, *col.trailing), col.nbytes)
                with open(col.path, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 22)
            for name, t in small.items():
                entry(name, t.dtype, tuple(t.shape), t.numel() * t.element_size())
                f.write(_as_bytes(t))
            meta = {"format": "pt", META_KEY: json.dumps({**metadata, "format_version": FORMAT_VERSION,
                                                            "total_tokens": self.total})}
            header = json.dumps({"__metadata__": meta, **dict(entries)}, separators=(",", ":")).encode()
            if len(header) > HEADER_RESERVE - 8:
                raise ValueError(f"features: metadata too large ({len(header)} bytes of header)")
            f.flush()
            f.seek(0)
            f.write(struct.pack("<Q", HEADER_RESERVE - 8) + header.ljust(HEADER_RESERVE - 8, b" "))
            f.flush()
            if fsync:
                os.fsync(f.fileno())
            self.features.close()
            os.replace(self.tmp, self.path)
            if fsync:
                fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except BaseException:
            self.abort()
            raise
        self._remove_side_files()
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Close and remove the partial file and its side files (nothing that looks complete remains)."""
        for col in (self.features, *self.side):
            try:
                col.close()
            except OSError:
                pass
        for p in (self.tmp,):
            remove_if_exists(p)
        self._remove_side_files()
        self.closed = True

    def _remove_side_files(self) -> None:
        for col in self.side:
            remove_if_exists(col.path)


# ------------------------------------------------------------------------------------------ reading
def read_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata of a complete feature file, or None when the file is missing, partial or not ours."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            n = struct.unpack("<Q", head)[0]
            if n == 0 or n > 1 << 26:
                return None
            header = json.loads(f.read(n))
            f.seek(0, os.SEEK_END)
            size = f.tell()
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    meta = (header.get("__metadata__") or {}).get(META_KEY)
    if meta is None:
        return None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:  # truncated or appended to
        return None
    try:
        return json.loads(meta)
    except ValueError:
        return None


def is_complete(path: str | os.PathLike) -> bool:
    return read_metadata(path) is not None


@dataclass
class TileClip:
    """The features of one tile of one clip."""

    clip: int
    tile: int
    features: torch.Tensor  # (L, D)
    token_ids: torch.Tensor  # (L,) int32, ids in the tile's multi-scale vocabulary
    frames: torch.Tensor  # (L,) int32, video frame of each token
    boxes: torch.Tensor  # (L, 4) float32, source pixels


class VideoFeatures:
    """A feature file written by the encode pipeline (``load_features``). Tensors are read on access;
    ``tile_clip`` / ``clip`` read only their rows."""

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"features: no such file: {self.path!r}")
        meta = read_metadata(self.path)
        if meta is None:
            raise ValueError(f"features: {self.path!r} is not a complete autogaze_ext feature file "
                             f"(interrupted write, or another kind of safetensors file)")
        self.meta = meta
        self._file = safe_open(self.path, framework="pt", device="cpu")
        self.cu_seqlens = self._file.get_tensor("cu_seqlens").to(torch.int64)
        self.clips = self._file.get_tensor("clips")
        self.tiles = int(meta["geometry"]["tiles"])

    def __repr__(self) -> str:
        g = self.meta["geometry"]
        return (f"VideoFeatures({os.path.basename(self.path)!r}: {self.num_clips} clips x {self.tiles} tiles "
                f"({g['rows']}x{g['cols']}), {self.total_tokens} tokens x {self.dim} {self.meta['features_dtype']})")

    @property
    def num_clips(self) -> int:
        return int(self.clips.shape[0])

    @property
    def total_tokens(self) -> int:
        return int(self.cu_seqlens[-1])

    @property
    def dim(self) -> int:
        return int(self.meta["feature_dim"])

    @property
    def features(self) -> torch.Tensor:
        """(total, D): every token of the video (loads the whole tensor)."""
        return self._file.get_tensor("features")

    @property
    def tokens(self) -> torch.Tensor:
        return self._file.get_tensor("tokens")

    @property
    def boxes(self) -> torch.Tensor:
        return self._file.get_tensor("boxes")

    def _rows(self, name: str, a: int, b: int) -> torch.Tensor:
        return self._file.get_slice(name)[a:b]

    def tile_clip(self, clip: int, tile: int) -> TileClip:
        if not (0 <= clip < self.num_clips and 0 <= tile < self.tiles):
            raise IndexError(f"tile_clip: clip {clip} of {self.num_clips}, tile {tile} of {self.tiles}")
        r = clip * self.tiles + tile
        a, b = int(self.cu_seqlens[r]), int(self.cu_seqlens[r + 1])
        tok = self._rows("tokens", a, b)
        return TileClip(clip, tile, self._rows("features", a, b), tok[:, 3].clone(), tok[:, 1].clone(),
                        self._rows("boxes", a, b))

    def clip(self, clip: int) -> list[TileClip]:
        """The tiles of one clip, row-major."""
        return [self.tile_clip(clip, k) for k in range(self.tiles)]

    def clip_sequence(self, clip: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip as one token sequence for a language model: (L, D) features of its tiles concatenated
        row-major, and (L,) the video frame of each token."""
        r0, r1 = clip * self.tiles, (clip + 1) * self.tiles
        a, b = int(self.cu_seqlens[r0]), int(self.cu_seqlens[r1])
        return self._rows("features", a, b), self._rows("tokens", a, b)[:, 1].clone()

    def __iter__(self):
        """Every tile-clip in file order."""
        for c in range(self.num_clips):
            yield from self.clip(c)


def load_features(path: str | os.PathLike) -> VideoFeatures:
    """Open a feature file written by ``encode_video`` / ``autogaze-ext encode``."""
    return VideoFeatures(path)
