"""Command line: ``autogaze-ext`` / ``python -m autogaze_ext``.

  autogaze-ext                      help for every command
  autogaze-ext demo                 gaze a generated clip, write an overlay video, print statistics
  autogaze-ext run VIDEO [options]  gaze a video file: overlay video, JSON statistics, progress bar
  autogaze-ext encode VIDEO_OR_DIR... --out DIR   gazed ViT features, one safetensors file per video

``demo`` and ``run`` check every option, output location, the device and the input file before anything is
loaded or decoded (``check_args``), and on the CPU apply the threading policy of ``configure_cpu_threads``
(README "CPU threads").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict

OVERLAY_EXTENSIONS = (".mp4",)  # the overlay writer makes MP4 (H.264, else MPEG-4)
# Batch rows (tiles x clips per gaze call) when --batch-rows is not given. On the CPU one 448x448 clip (4 tiles)
# per call was faster than 16 rows (benchmarks/RESULTS.md "CPU"), and each batch is one progress step.
BATCH_ROWS = {"cpu": 4, "cuda": 16}
DEMO_MAX_BYTES = 4 << 30  # the demo generates its whole clip in memory


# ------------------------------------------------------------------------------------ CPU threads
def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-6)))
    return max(1, n)


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as f:
            period = int(f.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def configure_cpu_threads(threads: int | None = None) -> dict:
    """The command line's CPU threading policy, chosen by measurement (README "CPU threads";
    benchmarks/RESULTS.md "CPU"); call it before the first torch op. Returns what applies.

    - Intra-op threads (``torch.set_num_threads``): ``threads``; else ``$OMP_NUM_THREADS`` when set; else the
      CPUs this process may use (affinity mask and cgroup quota, which torch's default ignores).
    - OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``): between parallel regions they sleep instead
      of spinning. On an idle 2-core machine that cost 5% (AutoGaze) or nothing measurable (greedy); with
      another busy process on the machine the default spinning was 1.5x to 6x slower. OpenMP reads the variable
      once, when torch is imported, so this function can only report it: the ``autogaze-ext`` command sets it
      before importing torch, and ``python -m autogaze_ext`` re-executes itself once with it. Library users
      set it in the environment of their process (``OMP_WAIT_POLICY=PASSIVE python app.py``).
    - Decoding keeps FFmpeg's own thread count: ``run`` decodes between gaze batches, never while gazing, and
      decoding took < 1% of the time on the example clip.
    """
    import torch

    cpus = usable_cpus()
    source = "--threads"
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) >= 1:
            threads, source = int(env), "OMP_NUM_THREADS"
        else:
            threads, source = cpus, "usable CPUs"
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return {"intra_op_threads": threads, "source": source, "usable_cpus": cpus,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP spins)")}


def _started_as_command() -> bool:
    """True when this process is ``python -m autogaze_ext`` or the ``autogaze-ext`` script (never when another
    program calls ``main``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name in ("autogaze_ext.__main__", "autogaze_ext"):
        return True
    return os.path.basename(sys.argv[0] or "").startswith("autogaze-ext")


def _reexec_with_passive_wait() -> None:
    """Start this same command again with OMP_WAIT_POLICY=PASSIVE (once: the new process has it set). Torch
    is already imported here (by the package), so only a new process can still give OpenMP the setting; this
    costs one more torch import (about 1 s). A user's own OMP_WAIT_POLICY is left alone."""
    if os.environ.get("OMP_WAIT_POLICY") or os.name != "posix" or not _started_as_command():
        return
    argv = getattr(sys, "orig_argv", None)
    if not argv or len(argv) < 2:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    except OSError:  # pragma: no cover - carry on with OpenMP's default
        pass


# ------------------------------------------------------------------------------------------ checks
def _finite(option: str, value, *, minimum=None, above=None, maximum=None, what: str = "a number") -> None:
    if value is None:
        return
    bad = isinstance(value, float) and not math.isfinite(value)
    bad = bad or (minimum is not None and value < minimum) or (above is not None and not value > above)
    bad = bad or (maximum is not None and value > maximum)
    if bad:
        raise ValueError(f"{option}: expected {what}, got {value:g}" if isinstance(value, float)
                         else f"{option}: expected {what}, got {value}")


def check_output(option: str, path: str, extensions: tuple[str, ...] | None = None) -> str:
    """An output file we are about to write: not a folder, the right extension, its folder present and
    writable. Returns the absolute path."""
    if extensions and os.path.isdir(path):
        raise ValueError(f"{option}: {path!r} is a folder; give a file name ending in {' or '.join(extensions)}")
    if os.path.isdir(path):
        raise ValueError(f"{option}: {path!r} is a folder; give a file name")
    if extensions and not path.lower().endswith(extensions):
        ext = os.path.splitext(path)[1] or "no extension"
        raise ValueError(f"{option}: {path!r} has {ext}; the overlay is written as an MP4 video, so the name must "
                         f"end in {' or '.join(extensions)}")
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if not os.path.isdir(folder):
        raise ValueError(f"{option}: the folder of {path!r} does not exist ({folder})")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise ValueError(f"{option}: {path!r} exists and is not writable")
    try:  # the real test (permissions, read-only file systems, root): create and remove a file there
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".autogaze-write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"{option}: cannot write into {folder!r} (for {path!r}): {e.strerror or e}") from None
    return full


def check_args(args) -> None:
    """Every option of ``demo`` / ``run``, the output locations and the device, before anything is loaded or
    decoded: one-line ValueErrors naming the option (and the path)."""
    from .pipeline.cli import check_device

    _finite("--gazing-ratio", args.gazing_ratio, above=0, maximum=1, what="a ratio in (0, 1]")
    _finite("--task-loss-requirement", args.task_loss_requirement, minimum=0, what="a finite value >= 0")
    _finite("--max-error", args.max_error, minimum=0, what="a finite value >= 0")
    _finite("--batch-rows", args.batch_rows, minimum=1, what="an int >= 1")
    _finite("--threads", args.threads, minimum=1, what="an int >= 1")
    if args.checkpoint:
        if args.max_error is not None:
            raise ValueError("--max-error: applies to the training-free gazer; with --checkpoint use "
                             "--task-loss-requirement")
        builtin_checkpoint(args.checkpoint, args.revision)  # fails here, before decoding, when none is shipped
    else:
        if args.task_loss_requirement is not None:
            raise ValueError("--task-loss-requirement: needs a trained model (--checkpoint); the training-free "
                             "gazer stops on --max-error")
        if args.precision != "fp32":
            raise ValueError("--precision: applies to a trained model (--checkpoint)")
        if args.revision:
            raise ValueError("--revision: applies to a hub id given with --checkpoint")
    if args.command == "demo":
        _finite("--frames", args.frames, minimum=1, what="an int >= 1")
        _finite("--size", args.size, minimum=8, what="an int >= 8 (pixels)")
        need = args.frames * args.size * args.size * 3
        if need > DEMO_MAX_BYTES:
            raise ValueError(f"--frames/--size: the generated clip would take {need / 2**30:.1f} GiB in memory "
                             f"(at most {DEMO_MAX_BYTES >> 30} GiB); use fewer or smaller frames")
    else:
        _finite("--max-frames", args.max_frames, minimum=1, what="an int >= 1")
        _finite("--fps", args.fps, above=0, what="a frame rate > 0")
    outputs = {}
    if args.out:
        outputs["--out"] = check_output("--out", args.out, OVERLAY_EXTENSIONS)
    if args.json:
        outputs["--json"] = check_output("--json", args.json)
    if len(set(outputs.values())) < len(outputs):
        raise ValueError(f"--out and --json: both name {args.out!r}; give two files")
    if args.command == "run":
        for opt, path in outputs.items():
            same = path == os.path.abspath(args.video) or (
                os.path.exists(path) and os.path.exists(args.video) and os.path.samefile(path, args.video))
            if same:
                raise ValueError(f"{opt}: {getattr(args, opt[2:])!r} is the input video; give another file")
    args.device = str(check_device(args.device))


# --------------------------------------------------------------------------------------- progress
class _Progress:
    """One bar on stderr: it counts gazed frames (so its rate is the gazing rate), its label is the stage
    running now (decode / preprocess / gaze / render) and its postfix the frames decoded so far and the tokens
    kept. It moves on each gazed batch (one clip on the CPU by default), not only at the end."""

    def __init__(self, total, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="frame", desc=f"{'decode':<10}", disable=quiet, dynamic_ncols=True,
                        mininterval=0, miniters=1, smoothing=0.3, file=sys.stderr)
        self.current, self.decoded, self.tokens, self.possible, self._shown = "decode", 0, 0, 0, 0.0

    def _postfix(self) -> str:
        kept = f"kept {100 * self.tokens / self.possible:.2f}% ({self.tokens:,} tokens)" if self.possible else ""
        return f"decoded {self.decoded}" + (f", {kept}" if kept else "")

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._shown >= 0.5:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
            self.bar.refresh()
            self._shown = now

    def stage(self, name: str, frames: int = 0) -> None:
        if name != self.current:
            self.current = name
            self.bar.set_description_str(f"{name:<10}", refresh=False)
            self._refresh(force=time.monotonic() - self._shown >= 0.1)

    def decoded_frame(self) -> None:
        self.decoded += 1
        self._refresh()

    def gazed(self, frames: int, tokens: int, possible: int) -> None:
        self.tokens += tokens
        self.possible += possible
        self.bar.set_postfix_str(self._postfix(), refresh=False)
        self.bar.update(frames)  # mininterval=0: printed at once
        self._shown = time.monotonic()

    def close(self) -> None:
        self.bar.set_description_str(f"{'done':<10}", refresh=False)
        self.bar.set_postfix_str(self._postfix(), refresh=False)
        self.bar.close()


class _Decoded:
    """Wraps the frame iterator: times decoding into timings["decode_s"] and reports each frame."""

    def __init__(self, frames, timings, progress: _Progress):
        self.it, self.timings, self.progress = iter(frames), timings, progress

    def __iter__(self):
        return self

    def __next__(self):
        self.progress.stage("decode")
        t0 = time.perf_counter()
        try:
            frame = next(self.it)
        finally:
            self.timings["decode_s"] += time.perf_counter() - t0
        self.progress.decoded_frame()
        return frame


# ------------------------------------------------------------------------------------------ gazing
BUILTIN_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "builtin")


def builtin_checkpoint(value: str, revision: str | None = None) -> str:
    """``--checkpoint builtin`` -> the folder of the small gazer packaged with the package (made by
    ``benchmarks/train_gazer.py --package``); any other value is returned unchanged."""
    if value != "builtin":
        return value
    if revision:
        raise ValueError("--revision: applies to a hub id, not to --checkpoint builtin")
    if not os.path.isfile(os.path.join(BUILTIN_CHECKPOINT, "model.safetensors")):
        raise ValueError(f"--checkpoint builtin: no built-in checkpoint is shipped in this build (expected "
                         f"{os.path.join(BUILTIN_CHECKPOINT, 'model.safetensors')}); pass a checkpoint folder or a "
                         f"hub id such as nvidia/AutoGaze, or leave --checkpoint out for the greedy gazer")
    return BUILTIN_CHECKPOINT


def _load_gazer(args, device):
    """(model, processor, generate kwargs, name, effective settings). The settings record what the gazer
    actually uses: with --checkpoint and neither --gazing-ratio nor --task-loss-requirement, the checkpoint's
    inference defaults (config.json), passed explicitly."""
    import autogaze_ext as ag
    from autogaze_ext.greedy import GreedyGazer

    if args.checkpoint:
        # a local folder or a hub id (nvidia/AutoGaze): resolved once, the processor is read from the same folder
        model = ag.AutoGaze.from_pretrained(builtin_checkpoint(args.checkpoint, args.revision),
                                            revision=args.revision).to(device)
        folder, commit = model.pretrained_info["path"], model.pretrained_info["revision"]
        has_proc = os.path.isfile(os.path.join(folder, "preprocessor_config.json"))
        proc = ag.AutoGazeImageProcessor.from_pretrained(folder) if has_proc else ag.AutoGazeImageProcessor()
        ratio, requirement = args.gazing_ratio, args.task_loss_requirement
        source = "command line"
        if ratio is None and requirement is None:
            ratio = model.config.default_gazing_ratio
            requirement = model.config.default_task_loss_requirement
            source = "checkpoint defaults (config.json)"
            if ratio is None:
                raise ValueError(f"--gazing-ratio: the checkpoint {args.checkpoint!r} has no default ratio (its "
                                 f"config samples one at random); pass --gazing-ratio")
        elif ratio is None:
            ratio = 1.0  # only the requirement stops a frame (cap 265), as model.generate does
        kw = {"gazing_ratio": ratio, "task_loss_requirement": requirement, "precision": args.precision}
        settings = {"gazing_ratio": ratio, "task_loss_requirement": requirement, "ratio_and_requirement_from": source,
                    "precision": args.precision}
        name = f"AutoGaze ({args.checkpoint}{'@' + commit if commit else ''})"
    else:
        model = GreedyGazer(max_error=0.15 if args.max_error is None else args.max_error).to(device)
        proc = ag.AutoGazeImageProcessor()
        kw = {"gazing_ratio": args.gazing_ratio}
        settings = {"gazing_ratio": 1.0 if args.gazing_ratio is None else args.gazing_ratio,
                    "max_error": model.max_error}
        name = f"training-free greedy gazer (max_error={model.max_error})"
    return model, proc, kw, name, settings


def _gaze_video(frames, info: dict, args, threads: dict | None = None) -> dict:
    """Shared by demo and run: gaze, render, write; returns the statistics."""
    import torch

    from autogaze_ext.reconstruct import denormalize
    from autogaze_ext.video import gaze_clips, iter_clips
    from autogaze_ext.viz import VideoWriter, draw_scale_key, overlay, side_by_side

    device = torch.device(args.device)
    model, proc, kw, name, settings = _load_gazer(args, device)
    batch_rows = args.batch_rows or BATCH_ROWS.get(device.type, 16)
    timings: dict = defaultdict(float)
    writer = VideoWriter(args.out, info.get("fps") or 25) if args.out else None
    per_frame, total, possible = [], 0, 0
    t_start = time.perf_counter()
    progress = _Progress(info.get("frames"), args.quiet)
    try:
        clips = iter_clips(_Decoded(frames, timings, progress), 16)
        results = gaze_clips(model, clips, proc, device, args.tile_mode, batch_rows,
                             reconstruct=writer is not None, timings=timings, progress=progress.stage, **kw)
        for res in results:
            counts = [int(n) for n in res.tokens_each_frame]
            progress.gazed(len(counts), sum(counts), len(counts) * res.tokens_possible)
            for t, n in enumerate(counts):
                per_frame.append({"index": res.first_frame + t, "tokens": n, "possible": res.tokens_possible,
                                  "kept_fraction": round(n / res.tokens_possible, 5)})
                total += n
                possible += res.tokens_possible
            if writer is not None:
                progress.stage("render")
                t0 = time.perf_counter()
                for t in range(len(counts)):
                    frame = res.frames[t]
                    left = draw_scale_key(overlay(frame, res.boxes(t)), model.scales)
                    rec = denormalize(res.reconstruction[t]).permute(1, 2, 0).numpy()
                    rec = _fit(rec, frame.shape[0], frame.shape[1], res.geometry.mode)
                    writer.write(side_by_side(left, rec))
                timings["render_write_s"] += time.perf_counter() - t0
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - t_start
    if not per_frame:
        raise ValueError("video: no frames were decoded")
    return {
        "input": info, "gazer": name, "device": str(device),
        "settings": settings | {"tile_mode": args.tile_mode, "batch_rows": batch_rows},
        "threads": threads,
        "frames": per_frame, "total_tokens": total, "kept_fraction": round(total / possible, 5),
        "timings_s": {k: round(v, 4) for k, v in timings.items()} | {"wall_s": round(wall, 3)},
        "frames_per_s": round(len(per_frame) / wall, 2), "overlay": args.out or None,
    }


def _fit(img, h: int, w: int, mode: str):
    """The tiled canvas back to the source frame size."""
    import torch
    import torch.nn.functional as F

    if mode == "pad":
        return img[:h, :w]
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def _report(stats: dict) -> None:
    frames = stats["frames"]
    counts = [f["tokens"] for f in frames]
    s = stats["settings"]
    th = stats.get("threads")
    print(f"gazer: {stats['gazer']} on {stats['device']}"
          + (f" ({th['intra_op_threads']} threads)" if th else ""))
    if "task_loss_requirement" in s:
        print(f"gazing ratio {s['gazing_ratio']}, task loss requirement {s['task_loss_requirement']} "
              f"(from the {s['ratio_and_requirement_from']})")
    print(f"frames: {len(frames)}; tokens per frame (all tiles): {counts[:16]}{' ...' if len(counts) > 16 else ''}")
    print(f"kept fraction: {stats['kept_fraction']:.4f} of {frames[0]['possible']} candidate tokens per frame")
    print("timings (s): " + ", ".join(f"{k}={v}" for k, v in stats["timings_s"].items())
          + f"; {stats['frames_per_s']} frames/s")
    if stats.get("overlay"):
        print(f"overlay video: {stats['overlay']} (left: gazed patches, colour = scale "
              "32/64/112/224 px in blue/green/orange/red, key in the corner; right: reconstruction from the "
              "gazed patches)")


def _cmd_demo(args, threads: dict) -> int:
    from autogaze_ext.synthetic import moving_objects_clip

    if args.out is None:  # never the current folder unasked: a fresh temporary folder, printed below
        args.out = os.path.join(tempfile.mkdtemp(prefix="autogaze-demo-"), "autogaze_demo.mp4")
    frames = moving_objects_clip(args.frames, args.size, args.size, objects=4, seed=args.seed)
    info = {"source": "generated: moving textured objects on a static background", "width": args.size,
            "height": args.size, "fps": 25.0, "frames": args.frames}
    stats = _gaze_video(iter(frames), info, args, threads)
    _report(stats)
    if args.json:
        _write_json(args.json, stats)
    return 0


def _cmd_run(args, vi, threads: dict) -> int:
    from autogaze_ext.video import iter_frames

    n = vi.frames if args.max_frames is None or vi.frames is None else min(vi.frames, args.max_frames)
    if args.fps and vi.fps and n:
        n = int(n * min(1.0, args.fps / vi.fps)) or None
    info = {"source": vi.path, "width": vi.width, "height": vi.height, "fps": args.fps or vi.fps,
            "frames": n, "codec": vi.codec}
    stats = _gaze_video(iter_frames(args.video, args.max_frames, args.fps), info, args, threads)
    _report(stats)
    if args.json:
        _write_json(args.json, stats)
    return 0


def _write_json(path: str, stats: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    print(f"statistics: {path}")


# ------------------------------------------------------------------------------------------ parser
def _version() -> str:
    import torch

    from . import __version__
    from .ops import HAS_CUDA_KERNELS, HAS_EXTENSION

    ops = "CPU + CUDA kernels" if HAS_CUDA_KERNELS else "CPU kernels" if HAS_EXTENSION else \
        "not built: PyTorch reference ops"
    return f"autogaze-ext {__version__} (torch {torch.__version__}; compiled ops: {ops})"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="DIR_OR_ID",
                   help="AutoGaze checkpoint: a folder (config.json + model.safetensors), a hub id (e.g. "
                        "nvidia/AutoGaze) or 'builtin' (a small packaged gazer, where this build ships one); "
                        "default: the training-free greedy gazer")
    p.add_argument("--revision", help="hub revision of --checkpoint (branch, tag or commit)")
    p.add_argument("--gazing-ratio", type=float, default=None, metavar="R",
                   help="max share of the 265 tokens per frame and tile, in (0, 1]; with --checkpoint and no "
                        "--task-loss-requirement either, the checkpoint's default (released: 0.75)")
    p.add_argument("--task-loss-requirement", type=float, default=None, metavar="L",
                   help="AutoGaze early stop (with --checkpoint): a frame stops once its predicted reconstruction "
                        "loss is <= L (released default: 0.7)")
    p.add_argument("--max-error", type=float, default=None, metavar="E",
                   help="greedy gazer: stop a frame once its mean absolute reconstruction error is below this "
                        "(normalised pixels; one 8-bit level ~0.035; default 0.15)")
    p.add_argument("--json", metavar="FILE", help="write statistics (per-frame tokens, settings used, timings) to "
                                                  "this JSON file")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (cuda:N)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the gazer (torch intra-op); default: $OMP_NUM_THREADS, else the CPUs "
                        "this process may use (README \"CPU threads\")")
    p.add_argument("--precision", choices=["fp32", "tf32"], default="fp32",
                   help="fp32: exact; tf32: cuBLAS/cuDNN on TF32 tensor cores (GPU, faster at large batch, "
                        "ids agree with fp32 only mostly)")
    p.add_argument("--tile-mode", choices=["resize", "pad"], default="resize",
                   help="frames to a multiple of 224 px: resize (default) or pad with the mean colour")
    p.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="tiles x clips gazed per call (default: 4 on the CPU, i.e. one 448x448 clip, measured "
                        "fastest there; 16 on a GPU); the progress bar moves once per call")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autogaze-ext", description="AutoGaze: pick the video patches worth seeing.",
        epilog="examples:\n  autogaze-ext demo\n  autogaze-ext run VIDEO --out overlay.mp4 --json stats.json\n"
               "  autogaze-ext run VIDEO --checkpoint nvidia/AutoGaze --device cuda\n"
               "  autogaze-ext encode VIDEO_OR_DIR... --out DIR\n"
               "  autogaze-ext label VIDEO_OR_DIR... --out labels.json\n"
               "  autogaze-ext train --videos DIR --labels labels.json --out CKPT\n"
               "'autogaze-ext COMMAND --help' lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    d = sub.add_parser("demo", help="gaze a generated clip (nothing is downloaded): overlay video + statistics",
                       description="Gaze a generated clip (moving textured objects on a static background), write "
                                   "an overlay video and print what was gazed.")
    _common(d)
    d.add_argument("--out", default=None, metavar="FILE.mp4",
                   help="overlay video to write (default: autogaze_demo.mp4 in a new temporary folder, printed at "
                        "the end; '' for none)")
    d.add_argument("--frames", type=int, default=32, metavar="N", help="frames to generate (default 32)")
    d.add_argument("--size", type=int, default=448, metavar="PX",
                   help="side of the generated square frames in pixels (default 448: 2x2 tiles)")
    d.add_argument("--seed", type=int, default=0, help="seed of the generated clip (default 0)")
    r = sub.add_parser("run", help="gaze a video file: overlay video, JSON statistics, progress",
                       description="Gaze a video file of any size and length (224-px tiles, 16-frame clips).")
    r.add_argument("video", help="the video file to gaze (anything FFmpeg/PyAV decodes)")
    _common(r)
    r.add_argument("--out", default=None, metavar="FILE.mp4",
                   help="overlay video to write: gazed patches | reconstruction (default: none)")
    r.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="gaze at most the first N frames (after --fps)")
    r.add_argument("--fps", type=float, default=None, metavar="F",
                   help="keep about F frames per second of video (default: every frame)")
    from .pipeline.cli import add_parser as add_encode_parser

    add_encode_parser(sub)
    from .training.cli import add_label_parser, add_train_parser

    add_label_parser(sub)
    add_train_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args_list = sys.argv[1:] if argv is None else list(argv)
    if not args_list:
        parser.print_help()
        return 0
    args = parser.parse_args(args_list)
    try:
        if args.command == "encode":
            from .pipeline.cli import run as run_encode

            return run_encode(args)
        if args.command in ("label", "train"):
            from .training.cli import run_label, run_train

            return run_label(args) if args.command == "label" else run_train(args)
        check_args(args)
        vi = None
        if args.command == "run":
            from autogaze_ext.video import probe

            vi = probe(args.video)  # opens the file (missing, empty, not a video: one line), decodes nothing
        if argv is None and args.device.startswith("cpu"):
            _reexec_with_passive_wait()  # returns only when nothing is to be done
        threads = configure_cpu_threads(args.threads)
        if args.command == "demo":
            return _cmd_demo(args, threads)
        return _cmd_run(args, vi, threads)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
