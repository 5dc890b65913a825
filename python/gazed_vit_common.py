"""Shared by the gazed-ViT examples: read a clip, gaze it, make the ViT's input, time and report."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

import autogaze_ext as ag
from autogaze_ext.processor import resize_uint8
from autogaze_ext.greedy import GreedyGazer
from autogaze_ext.video import iter_frames

REPO = Path(__file__).resolve().parents[1]


def default_video() -> str | None:
    """The example clip: $AUTOGAZE_DATA, .fixtures/data or ../shared/data (example_input.mp4), if any."""
    for c in [os.environ.get("AUTOGAZE_DATA"), REPO / ".fixtures" / "data", REPO.parent / "shared" / "data"]:
        if c and (Path(c) / "example_input.mp4").is_file():
            return str(Path(c) / "example_input.mp4")
    return None


def add_common_args(ap) -> None:
    ap.add_argument("video", nargs="?", default=default_video(),
                    help="a video file (default: the example clip when present, else a generated one)")
    ap.add_argument("--generated", action="store_true", help="use a generated clip of moving objects")
    ap.add_argument("--frames", type=int, default=16, help="frames of the clip (at most 16, the gaze model's clip)")
    ap.add_argument("--autogaze", default=None, help="AutoGaze checkpoint dir (default: the training-free GreedyGazer)")
    ap.add_argument("--gazing-ratio", type=float, default=0.75)
    ap.add_argument("--task-loss-requirement", type=float, default=0.7)
    ap.add_argument("--max-error", type=float, default=0.15, help="GreedyGazer stop rule (normalised mean abs error)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def read_clip(args) -> np.ndarray:
    """(T, H, W, 3) uint8: the first frames of the video, or a generated clip of moving objects."""
    path, frames = args.video, min(args.frames, 16)
    if path is None or args.generated:
        from autogaze_ext.synthetic import moving_objects_clip

        clip, source = moving_objects_clip(frames=frames, height=448, width=448), "a generated clip"
    else:
        clip, source = np.stack(list(iter_frames(path, max_frames=frames))), path
    print(f"clip: {clip.shape[0]} frames of {clip.shape[1]}x{clip.shape[2]} from {source}")
    return clip


def square(clip: np.ndarray, side: int = 224) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, side, side, 3) uint8 (antialiased bilinear, as the processors do)."""
    return resize_uint8(torch.from_numpy(clip), side, side)


def gaze(clip: np.ndarray, args) -> ag.GazeOutput:
    """Gaze the clip squashed to 224x224 with AutoGaze (when a checkpoint is given) or the GreedyGazer."""
    proc = ag.AutoGazeImageProcessor(**{**ag.AutoGazeImageProcessor().config, "size": {"height": 224, "width": 224}})
    video = proc(clip, device=args.device)
    if args.autogaze:
        model = ag.AutoGaze.from_pretrained(args.autogaze, device=args.device)
        out = model.generate(video, gazing_ratio=args.gazing_ratio, task_loss_requirement=args.task_loss_requirement)
        print(f"gazer: AutoGaze from {args.autogaze} (ratio {args.gazing_ratio}, "
              f"requirement {args.task_loss_requirement})")
    else:
        out = GreedyGazer(max_error=args.max_error).to(args.device).generate(
            video, gazing_ratio=args.gazing_ratio)
        print(f"gazer: GreedyGazer (no AutoGaze checkpoint given; max_error {args.max_error}, "
              f"ratio cap {args.gazing_ratio})")
    real = out.real_tokens_each_frame()[0].tolist()
    print(f"gazed tokens per frame (of 265 multi-scale candidates): {real}")
    return out


def normalise(frames: torch.Tensor, mean, std, device) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, T, 3, H, W) float, (x / 255 - mean) / std."""
    x = frames.to(device).permute(0, 3, 1, 2).float() / 255
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return ((x - m) / s)[None]


def timed(fn, reps: int = 3) -> tuple[object, float]:
    """Result and best wall time in ms (synchronised on CUDA)."""
    best, out = float("inf"), None
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return out, best


def compare(vit: ag.GazedViT, video: torch.Tensor, out: ag.GazeOutput, dense_fn) -> None:
    """Run the gazed ViT and the dense stock model on the same clip and print sizes and times."""
    with torch.inference_mode():
        feats, t_gazed = timed(lambda: vit(video, gaze=out))
        dense, t_dense = timed(dense_fn)
    T = video.shape[1]
    n = feats.features.shape[0]
    print(f"gazed features: {tuple(feats.features.shape)} packed ({n - feats.num_prefix} gazed tokens"
          f"{f' + {feats.num_prefix} prefix' if feats.num_prefix else ''}), per video "
          f"{[tuple(f.shape) for f in feats.per_video()]}")
    print(f"dense features: {tuple(dense.shape)} ({T} frames x {dense.shape[1]} tokens)")
    print(f"time: gazed {t_gazed:.1f} ms, dense {t_dense:.1f} ms on {video.device} "
          f"({dense.shape[0] * dense.shape[1] / max(n, 1):.1f}x fewer tokens)")
