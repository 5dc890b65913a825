"""Command line: ``autogaze-ext`` / ``python -m autogaze_ext``."""
from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import torch

    import autogaze_ext as ag
    from autogaze_ext.synthetic import moving_objects_clip

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but no CUDA GPU is available", file=sys.stderr)
        return 2
    if args.checkpoint:
        model = ag.AutoGaze.from_pretrained(args.checkpoint)
        proc = ag.AutoGazeImageProcessor.from_pretrained(args.checkpoint) \
            if _has_processor_config(args.checkpoint) else ag.AutoGazeImageProcessor()
        ratio, req = args.gazing_ratio, args.task_loss_requirement
        print(f"model: {args.checkpoint}")
    else:
        torch.manual_seed(args.seed)
        model = ag.AutoGaze()
        proc = ag.AutoGazeImageProcessor()
        # random weights predict meaningless losses, so stop on the ratio only
        ratio, req = args.gazing_ratio or 0.1, None
        print("model: RANDOM WEIGHTS (no --checkpoint given): the gaze positions mean nothing; "
              "this run shows the pipeline and its speed")
    model = model.to(device)
    frames = moving_objects_clip(args.frames, 224, 224, seed=args.seed)
    video = proc(frames, device=device)
    t0 = time.perf_counter()
    out = model.generate(video, gazing_ratio=ratio, task_loss_requirement=req)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    real = out.real_tokens_each_frame()[0].tolist()
    V = out.num_vision_tokens_each_frame
    print(f"clip: {args.frames} generated frames 224x224 (moving textured objects), device {device}")
    print(f"settings: gazing_ratio={ratio} task_loss_requirement={req}")
    print(f"gazed tokens per frame (of {V}): {real}")
    print(f"kept fraction: {sum(real) / (V * len(real)):.3f}   slots incl. padding: {out.gazing_pos.shape[1]}")
    scale_names = [f"{s}px" for s in out.scales]
    per_scale = [int(m[0].sum()) for m in out.gazing_mask]
    print("tokens per scale: " + ", ".join(f"{n}={c}" for n, c in zip(scale_names, per_scale)))
    print(f"gaze time: {dt * 1000:.1f} ms for the clip")
    return 0


def _has_processor_config(path: str) -> bool:
    import os

    return os.path.isfile(os.path.join(path, "preprocessor_config.json"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autogaze-ext", description="AutoGaze: pick the video patches worth seeing.")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="gaze a generated clip and print statistics (no downloads)")
    d.add_argument("--checkpoint", help="AutoGaze checkpoint folder (config.json + model.safetensors)")
    d.add_argument("--gazing-ratio", type=float, default=None, help="max share of the 265 tokens per frame")
    d.add_argument("--task-loss-requirement", type=float, default=None, help="early-stop threshold")
    d.add_argument("--frames", type=int, default=16, help="clip length (1..16)")
    d.add_argument("--device", default="cpu", help="cpu or cuda")
    d.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "demo"):
        if args.command is None:
            args = build_parser().parse_args(["demo"])
        try:
            return _demo(args)
        except (ValueError, TypeError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
