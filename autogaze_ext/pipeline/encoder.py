"""Video in, gazed ViT features out: decode -> upload -> preprocess -> tiles x clips -> gaze -> gazed ViT ->
feature file, with the stages overlapped.

Threads and streams (on a GPU):
  decode thread      PyAV decode + RGB conversion into a fixed pool of pinned clip buffers (ClipReader)
  main thread        per clip: H2D copy on a copy stream, then on the compute stream the fused
                     ``preprocess`` op twice (the gazer's and the ViT's normalisation of the same tile
                     canvas) and the cut into 224-px tiles; per batch of ``batch_size`` tile-clips:
                     ``generate`` (fast path) and the accelerated ViT on the gazed tokens only
  copy-out stream    features D2H into pinned memory
  writer thread      waits for each batch's copy, streams it into the feature file (FeatureWriter)

Memory bounds (per Encoder, whatever the video length): host = ``buffers`` + 1 decoded clips
(clip_len x H x W x 3 bytes each: 400 MB for 16 4K frames) + ``write_queue`` batches of features in
flight (batch_size x ~348 tokens x D x 2 bytes: 137 MB at 256 x 768 bf16) + per-batch token tables;
GPU = up to batch_size + tiles-per-clip tile-clips of float32 tiles (2 x 9.6 MB each) + the gaze and ViT
working memory of one batch. Only per-clip and per-tile-clip counters grow with the length (bytes each).
"""
from __future__ import annotations

import contextlib
import math
import os
import queue
import resource
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import torch

from ..ops.preprocess import preprocess
from ..video import TILE, TileGeometry, canvas_config, canvas_to_tiles, pad_canvas
from .decode import Clip, ClipReader
from .features import FeatureWriter, is_complete

PRECISIONS = ("fp32", "tf32")


@dataclass
class EncodeResult:
    """What one ``encode`` did."""

    output: str | None
    source: dict
    frames: int = 0
    clips: int = 0
    tiles: int = 0
    tokens: int = 0
    possible: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)  # busy seconds per stage
    peak_gpu_mib: float | None = None
    peak_rss_mib: float = 0.0
    skipped: bool = False

    @property
    def kept_fraction(self) -> float:
        return self.tokens / self.possible if self.possible else 0.0

    def as_dict(self) -> dict:
        return {"output": self.output, "source": self.source, "frames": self.frames, "clips": self.clips,
                "tiles": self.tiles, "tokens": self.tokens, "kept_fraction": round(self.kept_fraction, 6),
                "seconds": round(self.seconds, 3), "stages_s": {k: round(v, 3) for k, v in self.stages.items()},
                "peak_gpu_mib": self.peak_gpu_mib, "peak_rss_mib": round(self.peak_rss_mib, 1),
                "skipped": self.skipped}


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StageClock:
    """Busy time per stage: CUDA events on a GPU (read once at the end), perf_counter on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.pairs: dict[str, list] = defaultdict(list)
        self.host: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str, stream=None):
        if self.cuda:
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record(stream)
            yield
            b.record(stream)
            self.pairs[name].append((a, b))
        else:
            t0 = time.perf_counter()
            yield
            self.host[name] += time.perf_counter() - t0

    def totals(self) -> dict[str, float]:
        out = dict(self.host)
        for name, evs in self.pairs.items():
            out[name] = out.get(name, 0.0) + sum(a.elapsed_time(b) for a, b in evs) / 1e3
        return out


def _pow2_at_least(n: int, cap: int) -> int:
    return min(cap, 1 << max(0, (n - 1).bit_length()))


class Encoder:
    """A reusable video -> gazed-features pipeline (models loaded once, CUDA graphs kept across videos).

    gazer: an ``AutoGaze`` (or ``GreedyGazer``), a checkpoint folder or hub id, or None for the
    training-free greedy gazer. vit: a stock transformers SigLIP / timm ViT module, an ``accelerate()``d
    one, a local folder or hub id / timm name, or None for a random-init SigLIP-B/16 (timing only; a
    warning says so). gazing_ratio / task_loss_requirement: as ``AutoGaze.generate`` (neither: the
    checkpoint's defaults); max_error: the greedy gazer's stop rule. precision: the gaze's "fp32" (exact)
    or "tf32". batch_size: tile-clips gazed and encoded together (None: from the GPU's free memory, 16 on
    the CPU). tile_mode: "resize" or "pad" (see ``autogaze_ext.video``). mode: the ViT's attention between
    tokens of a tile-clip. features_dtype: of the written features (default: the ViT's dtype, bf16 on a
    GPU). hwaccel: FFmpeg hardware decoding ("cuda": NVDEC; optional, CPU decoding is the default).
    dense: run the stock ViT on every tile-frame instead of gazing (for comparison; writes nothing).
    """

    def __init__(self, gazer=None, vit=None, *, device: str | torch.device | None = None, gazing_ratio=None,
                 task_loss_requirement=None, max_error: float | None = None, precision: str = "fp32",
                 batch_size: int | None = None, tile_mode: str = "resize", mode: str = "block_causal",
                 features_dtype: torch.dtype | None = None, vit_dtype: torch.dtype | None = None,
                 revision: str | None = None, vit_revision: str | None = None, clip_len: int = 16,
                 decode_threads: int = 0, buffers: int = 3, write_queue: int = 3, fsync: bool = True,
                 hwaccel: str | None = None, dense: bool = False):
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for but no CUDA GPU is available")
        if self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {str(self.device)!r}")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        if tile_mode not in ("resize", "pad"):
            raise ValueError(f"tile_mode: expected 'resize' or 'pad', got {tile_mode!r}")
        if not isinstance(clip_len, int) or not 1 <= clip_len <= 16:
            raise ValueError(f"clip_len: expected an int in [1, 16], got {clip_len!r}")
        self.precision, self.tile_mode, self.clip_len, self.dense = precision, tile_mode, clip_len, bool(dense)
        self.decode_threads, self.buffers, self.write_queue, self.fsync = decode_threads, buffers, write_queue, fsync
        self.hwaccel = hwaccel
        self.cuda = self.device.type == "cuda"
        self.gazer, self.gazer_info, self.processor = self._load_gazer(gazer, revision, max_error)
        self.gaze_kwargs = self._gaze_kwargs(gazing_ratio, task_loss_requirement)
        self.vit, self.vit_info = self._load_vit(vit, vit_revision, vit_dtype, mode)
        self.features_dtype = features_dtype or self.vit_info["dtype_t"]
        if self.features_dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"features_dtype: expected bf16, fp16 or fp32, got {self.features_dtype}")
        self.batch_size = batch_size or self._auto_batch()
        self.V = int(self.gazer.num_vision_tokens_each_frame) if hasattr(self.gazer, "num_vision_tokens_each_frame") \
            else sum(g * g for g in self.gazer.grids)
        self._box_table = self._token_boxes()
        self._streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)) if self.cuda else None

    # ----------------------------------------------------------------------------------- loading
    def _load_gazer(self, gazer, revision, max_error):
        from ..greedy import GreedyGazer
        from ..model import AutoGaze
        from ..processor import AutoGazeImageProcessor

        if gazer is None:
            g = GreedyGazer(max_error=0.15 if max_error is None else float(max_error))
            return g.to(self.device), {"kind": "greedy", "max_error": g.max_error}, AutoGazeImageProcessor()
        if max_error is not None:
            raise ValueError("max_error: applies to the training-free gazer; with a checkpoint use "
                             "task_loss_requirement")
        if isinstance(gazer, (str, os.PathLike)):
            model = AutoGaze.from_pretrained(os.fspath(gazer), revision=revision)  # local folder or hub id
            path = model.pretrained_info["path"]
            has_proc = os.path.isfile(os.path.join(path, "preprocessor_config.json"))
            proc = AutoGazeImageProcessor.from_pretrained(path) if has_proc else AutoGazeImageProcessor()
            info = {"kind": "autogaze", **model.pretrained_info}
        elif isinstance(gazer, (AutoGaze, GreedyGazer)):
            model, proc = gazer, AutoGazeImageProcessor()
            info = {"kind": "autogaze" if isinstance(gazer, AutoGaze) else "greedy", "id": None}
            if isinstance(gazer, GreedyGazer):
                info["max_error"] = gazer.max_error
        else:
            raise TypeError(f"gazer: expected an AutoGaze, a GreedyGazer, a checkpoint folder / hub id or None, "
                            f"got {type(gazer).__name__}")
        if isinstance(model, AutoGaze):
            model = model.to(self.device).eval()
        elif self.precision != "fp32":
            raise ValueError("precision: applies to a trained AutoGaze (the greedy gazer computes in fp32)")
        else:
            model = model.to(self.device)
        return model, info, proc

    def _gaze_kwargs(self, ratio, requirement) -> dict:
        from ..model import AutoGaze

        if isinstance(self.gazer, AutoGaze):
            if ratio is None and requirement is None:  # the checkpoint's inference defaults, recorded as used
                ratio = self.gazer.config.default_gazing_ratio
                requirement = self.gazer.config.default_task_loss_requirement
            return {"gazing_ratio": ratio, "task_loss_requirement": requirement, "precision": self.precision}
        if requirement is not None:
            raise ValueError("task_loss_requirement: needs a trained AutoGaze checkpoint; the training-free gazer "
                             "stops on max_error")
        return {"gazing_ratio": ratio}

    def _load_vit(self, vit, revision, vit_dtype, mode):
        from torch import nn

        from ..vit import GazedViT, accelerate

        dtype = vit_dtype or (torch.bfloat16 if self.cuda else torch.float32)
        if isinstance(vit, GazedViT):
            gv, info = vit, {"name": type(vit.model).__name__, "random_init": False}
        elif isinstance(vit, nn.Module):
            gv, info = accelerate(vit, mode=mode), {"name": type(vit).__name__, "random_init": False}
        elif vit is None or isinstance(vit, (str, os.PathLike, dict)):
            from ..hub import load_vit

            module, info = load_vit(os.fspath(vit) if isinstance(vit, os.PathLike) else vit, revision=revision)
            gv = accelerate(module, mode=mode)
            info = dict(info)
        else:
            raise TypeError(f"vit: expected a ViT module, a local folder / hub id / timm name, or None, "
                            f"got {type(vit).__name__}")
        if gv.patch_size != 16 or tuple(gv.scales) != tuple(self._gazer_scales()):
            raise ValueError(f"vit: the encode pipeline gazes 224-px tiles with scales {self._gazer_scales()} and "
                             f"16-px patches; the ViT uses {gv.patch_size}-px patches and scales {gv.scales}")
        # a module given by the caller keeps its dtype unless vit_dtype says otherwise
        gv.model.to(self.device).eval()
        if vit_dtype is not None or not isinstance(vit, nn.Module):
            gv.model.to(dtype)
        gv.clear_graphs()
        p = next(gv.model.parameters())
        mean, std = info.get("image_mean"), info.get("image_std")
        if mean is None or std is None:
            mean, std = _vit_normalisation(gv)
        info.update(family=gv.adapter.family, mode=gv.mode, dtype=str(p.dtype).replace("torch.", ""),
                    image_mean=[float(m) for m in mean], image_std=[float(s) for s in std], dtype_t=p.dtype,
                    feature_dim=int(gv.adapter.embed_dim))
        self._vit_processor = {**self.processor.config, "rescale_factor": info.get("rescale_factor", 1 / 255),
                               "offset": False,
                               "image_mean": info["image_mean"], "image_std": info["image_std"]}
        return gv, info

    def _gazer_scales(self) -> list[int]:
        return list(self.gazer.scales)

    def _auto_batch(self) -> int:
        if not self.cuda:
            return 16
        free, _ = torch.cuda.mem_get_info(self.device)
        # per tile-clip: two float32 tile copies (19 MB), the gaze working set (~60 MB at fp32) and the
        # ViT's activations (~5 MB); half the free memory, a power of two up to the measured 256
        rows = int(free * 0.5 // (90 * 2**20))
        return max(1, min(256, 1 << max(0, rows.bit_length() - 1)))

    def _token_boxes(self) -> np.ndarray:
        """(V, 4) x0, y0, x1, y1 of each token id inside its 224-px tile."""
        boxes = []
        for s in self._gazer_scales():
            g = s // 16
            cell = TILE / g
            r, c = np.divmod(np.arange(g * g), g)
            boxes.append(np.stack([c * cell, r * cell, (c + 1) * cell, (r + 1) * cell], 1))
        return np.concatenate(boxes).astype(np.float64)

    # ------------------------------------------------------------------------------------ encode
    def settings(self) -> dict:
        """What the files of this Encoder record (besides source and geometry)."""
        kw = {k: v for k, v in self.gaze_kwargs.items() if k != "precision"}
        vi = {k: v for k, v in self.vit_info.items() if k != "dtype_t"}
        return {"gazer": self.gazer_info, "vit": vi, "precision": self.precision, "clip_len": self.clip_len,
                "tile_mode": self.tile_mode, "batch_size": self.batch_size, "device": str(self.device),
                "features_dtype": str(self.features_dtype).replace("torch.", ""), **kw}

    def encode(self, video, out: str | os.PathLike | None = None, *, max_frames: int | None = None,
               overwrite: bool = True, progress: Callable[[dict], None] | None = None) -> EncodeResult:
        """Encode one video (a path, a (T, H, W, 3) uint8 array/tensor or an iterable of frames) into the
        feature file ``out`` (None: compute and discard, for timing). With ``overwrite=False`` a complete
        existing ``out`` is kept and reported as skipped. ``progress`` receives a dict after each batch."""
        if out is not None and self.dense:
            raise ValueError("out: the dense comparison mode writes no features (they would be ~12x larger)")
        if out is not None and not overwrite and is_complete(out):
            return EncodeResult(os.fspath(out), {"path": os.fspath(video) if isinstance(video, (str, os.PathLike))
                                                 else None}, skipped=True)
        t_start = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        reader = ClipReader(video, self.clip_len, max_frames, self.buffers, pinned=self.cuda,
                            threads=self.decode_threads, hwaccel=self.hwaccel)
        run = _Run(self, reader, out, progress)
        try:
            with torch.inference_mode():
                run.go()
        except BaseException:
            run.abort()
            raise
        res = run.result
        res.seconds = time.perf_counter() - t_start
        res.stages["decode"] = reader.stats["decode_s"]
        res.peak_gpu_mib = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None
        res.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if out is not None:
            run.commit(res)
        return res

    __call__ = encode


class _Run:
    """The state of one ``Encoder.encode`` call."""

    def __init__(self, enc: Encoder, reader: ClipReader, out, progress):
        self.enc, self.reader, self.out, self.progress = enc, reader, out, progress
        self.clock = _StageClock(enc.cuda)
        self.geom: TileGeometry | None = None
        self.pending: list[list] = []  # [gazer tiles, vit tiles, row meta (k, 4) int64] per clip, rows left
        self.pending_rows = 0
        self.clip_rows_left: dict[int, int] = {}
        self.clip_real: dict[int, int] = {}
        self.writer: FeatureWriter | None = None
        self.wq: queue.Queue | None = None
        self.wthread: threading.Thread | None = None
        self.werror: list[BaseException] = []
        self.write_s = 0.0
        self.result = EncodeResult(os.fspath(out) if out is not None else None, {})

    # --------------------------------------------------------------------------------- lifecycle
    def go(self) -> None:
        enc = self.enc
        for clip in self.reader:
            if self.geom is None:
                self._start(clip)
            g, v = self._tiles(clip)
            meta = np.empty((self.geom.tiles, 4), np.int64)  # clip, tile, first frame, real frames
            meta[:, 0], meta[:, 1], meta[:, 2], meta[:, 3] = clip.index, np.arange(self.geom.tiles), \
                clip.first_frame, clip.real
            self.pending.append([g, v, meta])
            self.pending_rows += self.geom.tiles
            self.clip_rows_left[clip.index] = self.geom.tiles
            self.clip_real[clip.index] = clip.real
            self.result.clips += 1
            if self.writer is not None:
                self.writer.append_clip(clip.first_frame, clip.real)
            while self.pending_rows >= enc.batch_size:
                self._batch(enc.batch_size)
            self._raise_writer_error()
        if self.pending_rows:
            self._batch(self.pending_rows)
        self._finish_writes()
        if enc.cuda:
            torch.cuda.current_stream(enc.device).synchronize()
        self.result.stages.update(self.clock.totals())
        self.result.stages["write"] = self.write_s
        info = self.reader.info
        self.result.source = info.as_dict() if info is not None else {}

    def _start(self, clip: Clip) -> None:
        enc = self.enc
        H, W = clip.frames.shape[1:3]
        self.geom = TileGeometry(H, W, enc.tile_mode)
        self.result.tiles = self.geom.tiles
        if self.out is not None:
            self.writer = FeatureWriter(self.out, enc.vit_info["feature_dim"], enc.features_dtype)
            self.wq = queue.Queue(maxsize=enc.write_queue)
            self.wthread = threading.Thread(target=self._write_loop, name="autogaze-write", daemon=True)
            self.wthread.start()

    def abort(self) -> None:
        self.reader.close()
        if self.wthread is not None:
            self.wq.put(None)
            self.wthread.join()
        if self.writer is not None:
            self.writer.abort()

    def commit(self, res: EncodeResult) -> None:
        enc, g = self.enc, self.geom
        meta = {
            "package": "autogaze_ext", "version": _version(), "torch": torch.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": res.source, "frames": res.frames, "clips": res.clips, "tokens": res.tokens,
            "kept_fraction": round(res.kept_fraction, 6),
            "geometry": {"tile": TILE, "mode": g.mode, "rows": g.rows, "cols": g.cols, "tiles": g.tiles,
                         "height": g.height, "width": g.width, "scales": enc._gazer_scales(), "patch_size": 16,
                         "tokens_per_tile_frame": enc.V},
            "feature_dim": enc.vit_info["feature_dim"],
            "features_dtype": str(enc.features_dtype).replace("torch.", ""),
            "settings": enc.settings(), "timings_s": {k: round(v, 3) for k, v in res.stages.items()},
        }
        self.writer.commit(_jsonable(meta), fsync=enc.fsync)

    # ----------------------------------------------------------------------------------- stages
    def _tiles(self, clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip's tiles for the gazer and for the ViT, (tiles, T, 3, 224, 224) float32 on the device."""
        enc, geom = self.enc, self.geom
        if enc.cuda:
            copy, _ = enc._streams
            with self.clock("upload", copy), torch.cuda.stream(copy):
                frames = torch.empty(clip.frames.shape, dtype=torch.uint8, device=enc.device)
                frames.copy_(clip.frames, non_blocking=True)
            done = copy.record_event()
            torch.cuda.current_stream(enc.device).wait_event(done)
            frames.record_stream(torch.cuda.current_stream(enc.device))
            clip.release(done)
        else:
            frames = clip.frames.clone()
            clip.release()
        with self.clock("preprocess"):
            tiles = []
            for cfg in (enc.processor.config, enc._vit_processor):  # same canvas, each model's normalisation
                x = preprocess(frames, canvas_config(cfg, geom), model_size=None)[0][0]
                tiles.append(canvas_to_tiles(pad_canvas(x, geom), geom.rows, geom.cols))
        return tiles[0], tiles[1]

    def _take(self, n: int):
        gs, vs, ms, left = [], [], [], n
        while left:
            g, v, m = self.pending[0]
            k = min(left, g.shape[0])
            gs.append(g[:k]), vs.append(v[:k]), ms.append(m[:k])
            if k == g.shape[0]:
                self.pending.pop(0)
            else:
                self.pending[0] = [g[k:], v[k:], m[k:]]
            left -= k
        self.pending_rows -= n
        cat = (lambda xs: xs[0] if len(xs) == 1 else torch.cat(xs))
        return cat(gs), cat(vs), np.concatenate(ms)

    def _batch(self, n: int) -> None:
        enc = self.enc
        g, v, meta = self._take(n)
        if enc.dense:
            self._dense(v)
            self._progress(meta, 0, int(meta[:, 3].sum()) * enc.V)
            return
        rows = _pow2_at_least(n, enc.batch_size) if enc.cuda else n  # a few fixed shapes: graphs are reused
        if rows > n:
            g = torch.cat([g, g[-1:].expand(rows - n, *g.shape[1:])])
        with self.clock("gaze"):
            out = enc.gazer.generate(g, **enc.gaze_kwargs)
        pos, pad, counts = out.gazing_pos[:n], out.if_padded_gazing[:n], out.num_gazing_each_frame
        host = torch.cat([pos.flatten(), pad.flatten().long(), counts.to(pos.device).long()]).cpu().numpy()
        N = pos.shape[1]
        ids_h, pad_h, counts_h = host[: n * N].reshape(n, N), host[n * N: 2 * n * N].reshape(n, N).astype(bool), \
            host[2 * n * N:]
        frame_of_slot = np.repeat(np.arange(len(counts_h)), counts_h)
        real = ~pad_h
        keep = real & (frame_of_slot[None, :] < meta[:, 3:4])  # repeats of a short last clip are dropped
        with self.clock("vit"):
            feats = enc.vit(v, gaze={"gazing_pos": pos, "if_padded_gazing": pad, "num_gazing_each_frame": counts},
                            validate=False).features
            if not keep[real].all():
                idx = torch.from_numpy(np.flatnonzero(keep[real])).to(feats.device)
                feats = feats.index_select(0, idx)
            feats = feats.to(enc.features_dtype)
        b, s = np.nonzero(keep)
        local = ids_h[b, s] % enc.V
        tile = meta[b, 1]
        tokens = np.stack([meta[b, 0], meta[b, 2] + frame_of_slot[s], tile, local], 1).astype(np.int32)
        boxes = self._boxes(local, tile)
        row_tokens = keep.sum(1)
        if self.writer is not None:
            self._send(feats, torch.from_numpy(tokens), torch.from_numpy(boxes), torch.from_numpy(row_tokens))
        real_frames = int(meta[:, 3].sum())
        self.result.tokens += int(row_tokens.sum())
        self.result.possible += real_frames * enc.V
        self._progress(meta, int(row_tokens.sum()), real_frames * enc.V)

    def _dense(self, v: torch.Tensor) -> None:
        """The stock ViT on every tile-frame (the comparison a user without gazing would run)."""
        enc = self.enc
        x = v.reshape(-1, *v.shape[2:]).to(next(enc.vit.model.parameters()).dtype)
        with self.clock("vit"):
            for chunk in x.split(1024):
                enc.vit.model(chunk)

    def _boxes(self, local: np.ndarray, tile: np.ndarray) -> np.ndarray:
        g = self.geom
        tb = self.enc._box_table[local]
        oy, ox = (tile // g.cols) * TILE, (tile % g.cols) * TILE
        x0, y0, x1, y1 = tb[:, 0] + ox, tb[:, 1] + oy, tb[:, 2] + ox, tb[:, 3] + oy
        if g.mode == "resize":
            sx, sy = g.width / (g.cols * TILE), g.height / (g.rows * TILE)
            x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
        out = np.stack([np.minimum(x0, g.width), np.minimum(y0, g.height), np.minimum(x1, g.width),
                        np.minimum(y1, g.height)], 1)
        return out.astype(np.float32)

    def _progress(self, meta: np.ndarray, tokens: int, possible: int) -> None:
        frames_done = 0
        for c, k in zip(*np.unique(meta[:, 0], return_counts=True)):
            self.clip_rows_left[int(c)] -= int(k)
            if self.clip_rows_left[int(c)] == 0:
                frames_done += self.clip_real.pop(int(c))
                del self.clip_rows_left[int(c)]
        self.result.frames += frames_done
        if self.progress is not None:
            self.progress({"frames": frames_done, "tokens": tokens, "possible": possible,
                           "total_frames": self.result.frames})

    # ----------------------------------------------------------------------------------- writing
    def _send(self, feats, tokens, boxes, row_tokens) -> None:
        enc = self.enc
        if enc.cuda:
            _, out_stream = enc._streams
            out_stream.wait_stream(torch.cuda.current_stream(enc.device))
            with torch.cuda.stream(out_stream):
                host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
                host.copy_(feats, non_blocking=True)
            feats.record_stream(out_stream)
            event = out_stream.record_event()
        else:
            host, event = feats.contiguous(), None
        while True:  # bounded: waits for the writer, but notices when it died
            self._raise_writer_error()
            try:
                self.wq.put((event, host, tokens, boxes, row_tokens), timeout=0.2)
                return
            except queue.Full:
                continue

    def _write_loop(self) -> None:
        while True:
            item = self.wq.get()
            if item is None:
                return
            if self.werror:
                continue  # keep draining so the producer never blocks
            event, host, tokens, boxes, row_tokens = item
            t0 = time.perf_counter()
            try:
                if event is not None:
                    event.synchronize()
                self.writer.append_rows(host, tokens, boxes, row_tokens)
            except BaseException as e:  # noqa: BLE001 - surfaced in the main thread
                self.werror.append(e)
            self.write_s += time.perf_counter() - t0

    def _raise_writer_error(self) -> None:
        if self.werror:
            e = self.werror[0]
            if isinstance(e, OSError):
                raise OSError(e.errno, f"writing {self.out!r} failed: {e.strerror or e}") from e
            raise e

    def _finish_writes(self) -> None:
        if self.wthread is not None:
            self.wq.put(None)
            self.wthread.join()
            self.wthread = None
            self._raise_writer_error()


def _vit_normalisation(gv) -> tuple[list[float], list[float]]:
    """Input mean/std of a stock ViT: timm's pretrained config, else SigLIP's 0.5 / 0.5."""
    cfg = getattr(gv.model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return list(cfg["mean"]), list(cfg["std"])
    return [0.5] * 3, [0.5] * 3


def _version() -> str:
    from .. import __version__

    return __version__


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.dtype):
        return str(x).replace("torch.", "")
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def encode_video(video, out: str | os.PathLike | None = None, *, gazer=None, vit=None, max_frames: int | None = None,
                 **kwargs) -> EncodeResult:
    """One-shot ``Encoder(gazer, vit, **kwargs).encode(video, out)``; keep an ``Encoder`` to encode many
    videos (models, graphs and buffers are then set up once)."""
    return Encoder(gazer, vit, **kwargs).encode(video, out, max_frames=max_frames)
