"""Shared by the gazed-ViT examples: read (or generate) a clip, gaze it with AutoGaze, make a ViT's input,
run the gazed and the dense model, report sizes and times. Public API only (``import autogaze_ext as ag``)."""
from __future__ import annotations

import time

import av
import numpy as np
import torch
import torch.nn.functional as F

import autogaze_ext as ag

DEFAULT_AUTOGAZE = "nvidia/AutoGaze"  # a hub id (downloaded once into the Hugging Face cache) or a local folder


def add_common_args(ap) -> None:
    ap.add_argument("video", nargs="?", default=None, help="a video file (default: a generated clip)")
    ap.add_argument("--frames", type=int, default=16, help="frames of the clip, 1 to 16 (the gaze model's clip)")
    ap.add_argument("--size", type=int, default=448, help="side of the generated clip's frames")
    ap.add_argument("--autogaze", default=DEFAULT_AUTOGAZE, help="AutoGaze checkpoint: folder or hub id")
    ap.add_argument("--gazing-ratio", type=float, default=0.75)
    ap.add_argument("--task-loss-requirement", type=float, default=0.7)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer ViT of width 64 with random weights (a quick run)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each model (the best is reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def check_args(ap, args) -> None:
    if not 1 <= args.frames <= 16:
        ap.error(f"--frames must be 1 to 16, got {args.frames}")
    if args.size < 16:
        ap.error(f"--size must be >= 16, got {args.size}")
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")


def moving_squares(frames: int, side: int, seed: int = 0) -> np.ndarray:
    """(frames, side, side, 3) uint8: coloured squares drifting over a smooth background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    background = (np.stack([yy, xx, 1 - yy], -1) * 160 + 40).astype(np.uint8)
    squares = [(rng.uniform(0, 0.7, 2), rng.uniform(-0.03, 0.03, 2), rng.integers(0, 256, 3)) for _ in range(4)]
    clip = np.repeat(background[None], frames, axis=0)
    w = max(2, side // 6)
    for t in range(frames):
        for pos, vel, colour in squares:
            y, x = (np.clip(pos + t * vel, 0, 0.8) * side).astype(int)
            clip[t, y:y + w, x:x + w] = colour
    return clip


def read_clip(args) -> np.ndarray:
    """(T, H, W, 3) uint8: the first --frames frames of the video (decoded with PyAV), or a generated clip."""
    if args.video is None:
        clip, source = moving_squares(args.frames, args.size), "a generated clip"
    else:
        with av.open(args.video) as container:
            frames = []
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == args.frames:
                    break
        if not frames:
            raise ValueError(f"{args.video}: no video frames decoded")
        clip, source = np.stack(frames), args.video
    print(f"clip: {clip.shape[0]} frames of {clip.shape[1]}x{clip.shape[2]} from {source}")
    return clip


def gaze(clip: np.ndarray, args) -> ag.GazeOutput:
    """Gaze the clip with AutoGaze; the model squashes frames to 224x224 itself."""
    proc = ag.AutoGazeImageProcessor.from_pretrained(args.autogaze)
    model = ag.AutoGaze.from_pretrained(args.autogaze, device=args.device)
    video = proc(list(clip), device=args.device)
    out = model.generate(video, gazing_ratio=args.gazing_ratio, task_loss_requirement=args.task_loss_requirement)
    print(f"gazer: AutoGaze {args.autogaze} (ratio {args.gazing_ratio}, requirement {args.task_loss_requirement})")
    print(f"gazed tokens per frame (of 265 multi-scale candidates): {out.real_tokens_each_frame()[0].tolist()}")
    return out


def vit_input(clip: np.ndarray, side: int, mean, std, device) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, T, 3, side, side) float: antialiased bilinear resize, (x / 255 - mean) / std."""
    x = torch.from_numpy(clip).to(device).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return ((x - m) / s)[None]


def timed(fn, reps: int) -> tuple[object, float]:
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


def compare(vit: ag.GazedViT, video: torch.Tensor, out: ag.GazeOutput, dense_fn, reps: int) -> None:
    """Run the gazed ViT and the dense stock model on the same clip and print sizes and times."""
    with torch.inference_mode():
        feats, t_gazed = timed(lambda: vit(video, gaze=out), reps)
        dense, t_dense = timed(dense_fn, reps)
    n, gazed = feats.features.shape[0], int(out.real_tokens_each_frame().sum())
    if n != gazed + feats.num_prefix:  # one feature row per gazed token (+ class/register tokens)
        raise RuntimeError(f"{n} feature rows for {gazed} gazed tokens and {feats.num_prefix} prefix tokens")
    print(f"gazed features: {tuple(feats.features.shape)} packed ({gazed} gazed tokens"
          f"{f' + {feats.num_prefix} prefix' if feats.num_prefix else ''}), per video "
          f"{[tuple(f.shape) for f in feats.per_video()]}")
    print(f"dense features: {tuple(dense.shape)} ({video.shape[1]} frames x {dense.shape[1]} tokens)")
    print(f"time: gazed {t_gazed:.1f} ms, dense {t_dense:.1f} ms on {video.device} "
          f"({dense.shape[0] * dense.shape[1] / max(n, 1):.1f}x fewer tokens)")
