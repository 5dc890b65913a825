"""Command line: ``autogaze-ext`` / ``python -m autogaze_ext``.

  autogaze-ext demo                 gaze a generated clip, write an overlay video, print statistics
  autogaze-ext run VIDEO [options]  gaze a video file: overlay video, JSON statistics, progress bar
  autogaze-ext encode VIDEO_OR_DIR... --out DIR   gazed ViT features, one safetensors file per video
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict


class _Timed:
    """Wraps an iterator and adds the time spent producing its items to timings[key]."""

    def __init__(self, it, timings, key):
        self.it, self.timings, self.key = iter(it), timings, key

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.timings[self.key] += time.perf_counter() - t0


def _load_gazer(args):
    import torch

    import autogaze_ext as ag
    from autogaze_ext.greedy import GreedyGazer

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available")
    if args.checkpoint:
        if args.max_error is not None:  # checked before a possible download
            raise ValueError("--max-error: applies to the training-free gazer; with --checkpoint use "
                             "--task-loss-requirement")
        # a local folder or a hub id (nvidia/AutoGaze): resolved once, the processor is read from the same folder
        model = ag.AutoGaze.from_pretrained(args.checkpoint, revision=getattr(args, "revision", None)).to(device)
        folder, commit = model.pretrained_info["path"], model.pretrained_info["revision"]
        has_proc = os.path.isfile(os.path.join(folder, "preprocessor_config.json"))
        proc = ag.AutoGazeImageProcessor.from_pretrained(folder) if has_proc else ag.AutoGazeImageProcessor()
        kw = {"gazing_ratio": args.gazing_ratio, "task_loss_requirement": args.task_loss_requirement,
              "precision": args.precision}
        name = f"AutoGaze ({args.checkpoint}{'@' + commit if commit else ''})"
    else:
        if args.task_loss_requirement is not None:
            raise ValueError("--task-loss-requirement: needs a trained model (--checkpoint); the training-free "
                             "gazer stops on --max-error")
        if args.precision != "fp32":
            raise ValueError("--precision: applies to a trained model (--checkpoint)")
        model = GreedyGazer(max_error=0.15 if args.max_error is None else args.max_error).to(device)
        proc = ag.AutoGazeImageProcessor()
        kw = {"gazing_ratio": args.gazing_ratio}
        name = f"training-free greedy gazer (max_error={model.max_error})"
    return model, proc, kw, name, device


def _gaze_video(frames, info: dict, args) -> dict:
    """Shared by demo and run: gaze, render, write; returns the statistics."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from autogaze_ext.reconstruct import denormalize
    from autogaze_ext.video import gaze_clips, iter_clips
    from autogaze_ext.viz import VideoWriter, overlay, side_by_side

    model, proc, kw, name, device = _load_gazer(args)
    timings: dict = defaultdict(float)
    writer = VideoWriter(args.out, info.get("fps") or 25) if args.out else None
    per_frame, total, possible = [], 0, 0
    t_start = time.perf_counter()
    bar = tqdm(total=info.get("frames"), unit="frame", desc="gazing", disable=args.quiet, dynamic_ncols=True)
    try:
        clips = iter_clips(_Timed(frames, timings, "decode_s"), 16)
        results = gaze_clips(model, clips, proc, device, args.tile_mode, args.batch_rows,
                             reconstruct=writer is not None, timings=timings, **kw)
        for res in results:
            for t in range(len(res.tokens_each_frame)):
                n = int(res.tokens_each_frame[t])
                per_frame.append({"index": res.first_frame + t, "tokens": n, "possible": res.tokens_possible,
                                  "kept_fraction": round(n / res.tokens_possible, 5)})
                total += n
                possible += res.tokens_possible
                if writer is not None:
                    t0 = time.perf_counter()
                    frame = res.frames[t]
                    left = overlay(frame, res.boxes(t))
                    rec = denormalize(res.reconstruction[t]).permute(1, 2, 0).numpy()
                    rec = _fit(rec, frame.shape[0], frame.shape[1], res.geometry.mode)
                    writer.write(side_by_side(left, rec))
                    timings["render_write_s"] += time.perf_counter() - t0
                bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - t_start
    if not per_frame:
        raise ValueError("video: no frames were decoded")
    return {
        "input": info, "gazer": name, "device": str(device),
        "settings": {k: v for k, v in kw.items()} | {"tile_mode": args.tile_mode,
                                                      "max_error": getattr(model, "max_error", None)},
        "frames": per_frame, "total_tokens": total, "kept_fraction": round(total / possible, 5),
        "timings_s": {k: round(v, 4) for k, v in timings.items()} | {"wall_s": round(wall, 3)},
        "frames_per_s": round(len(per_frame) / wall, 2), "overlay": args.out,
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
    print(f"gazer: {stats['gazer']} on {stats['device']}")
    print(f"frames: {len(frames)}; tokens per frame (all tiles): {counts[:16]}{' ...' if len(counts) > 16 else ''}")
    print(f"kept fraction: {stats['kept_fraction']:.4f} of {frames[0]['possible']} candidate tokens per frame")
    print("timings (s): " + ", ".join(f"{k}={v}" for k, v in stats["timings_s"].items())
          + f"; {stats['frames_per_s']} frames/s")
    if stats.get("overlay"):
        print(f"overlay video: {stats['overlay']} (left: gazed patches, colour = scale "
              "32/64/112/224 px in blue/green/orange/red; right: reconstruction from the gazed patches)")


def _cmd_demo(args) -> int:
    from autogaze_ext.synthetic import moving_objects_clip

    frames = moving_objects_clip(args.frames, args.size, args.size, objects=4, seed=args.seed)
    info = {"source": "generated: moving textured objects on a static background", "width": args.size,
            "height": args.size, "fps": 25.0, "frames": args.frames}
    stats = _gaze_video(iter(frames), info, args)
    _report(stats)
    if args.json:
        _write_json(args.json, stats)
    return 0


def _cmd_run(args) -> int:
    from autogaze_ext.video import iter_frames, probe

    vi = probe(args.video)
    n = vi.frames if args.max_frames is None or vi.frames is None else min(vi.frames, args.max_frames)
    if args.fps and vi.fps and n:
        n = int(n * min(1.0, args.fps / vi.fps)) or None
    info = {"source": vi.path, "width": vi.width, "height": vi.height, "fps": args.fps or vi.fps,
            "frames": n, "codec": vi.codec}
    stats = _gaze_video(iter_frames(args.video, args.max_frames, args.fps), info, args)
    _report(stats)
    if args.json:
        _write_json(args.json, stats)
    return 0


def _write_json(path: str, stats: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    print(f"statistics: {path}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="AutoGaze checkpoint: a folder (config.json + model.safetensors) or a hub "
                                        "id (e.g. nvidia/AutoGaze); default: the training-free greedy gazer")
    p.add_argument("--revision", help="hub revision of --checkpoint (branch, tag or commit)")
    p.add_argument("--gazing-ratio", type=float, default=None, help="max share of the 265 tokens per frame and tile")
    p.add_argument("--task-loss-requirement", type=float, default=None,
                   help="AutoGaze early-stop threshold (with --checkpoint)")
    p.add_argument("--max-error", type=float, default=None,
                   help="greedy gazer: stop a frame once its mean absolute reconstruction error is below this "
                        "(normalised pixels; one 8-bit level ~0.035; default 0.15)")
    p.add_argument("--json", help="write statistics to this JSON file")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "tf32"], default="fp32",
                   help="fp32: exact; tf32: cuBLAS/cuDNN on TF32 tensor cores (GPU, faster at large batch, "
                        "ids agree with fp32 only mostly)")
    p.add_argument("--tile-mode", choices=["resize", "pad"], default="resize",
                   help="frames to a multiple of 224 px: resize (default) or pad with the mean colour")
    p.add_argument("--batch-rows", type=int, default=16, help="tiles x clips gazed together")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autogaze-ext", description="AutoGaze: pick the video patches worth seeing.")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="gaze a generated clip (no downloads): overlay video + statistics")
    _common(d)
    d.add_argument("--out", default="autogaze_demo.mp4", help="overlay video to write ('' for none)")
    d.add_argument("--frames", type=int, default=32)
    d.add_argument("--size", type=int, default=448, help="side of the generated frames (px)")
    d.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="gaze a video file")
    r.add_argument("video")
    _common(r)
    r.add_argument("--out", default=None, help="overlay video to write (MP4)")
    r.add_argument("--max-frames", type=int, default=None)
    r.add_argument("--fps", type=float, default=None, help="keep about this many frames per second")
    from .pipeline.cli import add_parser as add_encode_parser

    add_encode_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *([] if argv is None else argv)])
    try:
        if args.command == "demo":
            if args.frames < 1 or args.size < 8:
                raise ValueError("--frames must be >= 1 and --size >= 8")
            return _cmd_demo(args)
        if args.command == "encode":
            from .pipeline.cli import run as run_encode

            return run_encode(args)
        return _cmd_run(args)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
