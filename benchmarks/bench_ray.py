"""Dataset scale: single-process encode vs the Ray Data path on the same generated videos, in one run.

    python benchmarks/bench_ray.py [--videos 16] [--frames 256] [--width 1920 --height 1080] [--precision tf32]
                                   [--cpus-per-gpu 2 4 8] [--model DIR] [--batch-size N] [--device cuda|cpu]

Videos: one H.264 clip made as in bench_e2e.py (moving textured objects over a textured background), copied
--videos times. Gaze model: the official fixture checkpoint (seeded random weights) at bench_e2e's slot
pattern (198 then 10 tokens per frame and tile); ViT: a random-init SigLIP-B/16 (bf16 on a GPU).
  (s) single process   one Encoder, a warm-up encode of 32 frames, then every video in turn (what
                       `autogaze-ext encode DIR` does)
  (r) Ray              a local Ray, one actor per GPU (EncodeJob; its set-up includes the same warm-up),
                       for each --cpus-per-gpu value
Throughput is frames (and tokens) per second from the first video's start to the last video's end
("steady", set-up excluded on both sides), and over the whole call ("with set-up": Encoder construction and
warm-up; for Ray also starting the actor). The ratio compares the steady figures; the target is >= 0.9 on
one GPU. CPU decode cores per GPU: the smallest --cpus-per-gpu within 5% of the best Ray throughput, and
decode alone (ClipReader) per FFmpeg thread count, frames/s against the GPU's frames/s.
Also measured (CPU, no GPU needed): the object store's put + get of one 16-frame clip of decoded frames,
the cost the design avoids by decoding inside the actor (README "Dataset scale (Ray)").
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import RATIO, make_video  # noqa: E402
from bench_gaze import default_model_dir  # noqa: E402
from common import card_name, save_json  # noqa: E402

import autogaze_ext as ag  # noqa: E402
from autogaze_ext.pipeline.decode import ClipReader  # noqa: E402
from autogaze_ext.scale import EncodeJob, runner  # noqa: E402


class TimedEncodeJob(EncodeJob):
    """EncodeJob with the single-process run's warm-up in its set-up and per-video start/end times appended to
    a JSON-lines file (one node: the benchmark's)."""

    def __init__(self, encoder_kwargs, warm_video: str, log: str, **kw):
        super().__init__(encoder_kwargs, **kw)
        self.warm_video, self.log = warm_video, log

    def setup(self, num_cpus):
        super().setup(num_cpus)
        tmp = tempfile.mkdtemp(prefix="bench_ray_warm_")
        self.encoder.encode(self.warm_video, os.path.join(tmp, "warm.safetensors"), max_frames=32)
        shutil.rmtree(tmp, ignore_errors=True)

    def run(self, video, output):
        t0 = time.time()
        out = super().run(video, output)
        with open(self.log, "a") as f:
            f.write(json.dumps({"video": video, "t0": t0, "t1": time.time(), **out}) + "\n")
        return out


def throughput(events: list[dict], wall: float) -> dict:
    frames, tokens = sum(e["frames"] for e in events), sum(e["tokens"] for e in events)
    span = max(e["t1"] for e in events) - min(e["t0"] for e in events)
    return {"frames": frames, "tokens": tokens, "steady_s": span, "wall_s": wall,
            "frames_per_s": frames / span, "tokens_per_s": tokens / span, "frames_per_s_with_setup": frames / wall}


def single_process(kwargs: dict, pairs, warm: str) -> dict:
    t_all = time.perf_counter()
    enc = ag.Encoder(**kwargs)
    tmp = tempfile.mkdtemp(prefix="bench_ray_warm_")
    enc.encode(warm, os.path.join(tmp, "warm.safetensors"), max_frames=32)
    events = []
    for video, out in pairs:
        t0 = time.time()
        r = enc.encode(video, out)
        events.append({"t0": t0, "t1": time.time(), "frames": r.frames, "tokens": r.tokens})
    shutil.rmtree(tmp, ignore_errors=True)
    return {**throughput(events, time.perf_counter() - t_all), "batch_size": enc.batch_size}


def ray_run(kwargs: dict, pairs, warm: str, cpus: float, gpus: int, log: str) -> dict:
    if os.path.exists(log):
        os.unlink(log)
    job = TimedEncodeJob(kwargs, warm, log)
    t0 = time.perf_counter()
    res = runner.run(pairs, job, workers=gpus, cpus_per_worker=cpus, gpus_per_worker=1.0 if gpus_cuda() else 0.0,
                     overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    if res.failed:
        raise RuntimeError(f"Ray run failed videos: {res.failed[:3]}")
    events = [json.loads(line) for line in open(log)]
    return throughput(events, wall)


def gpus_cuda() -> bool:
    return torch.cuda.is_available()


def decode_per_threads(video: str, threads: list[int]) -> dict:
    out = {}
    for t in threads:
        t0 = time.perf_counter()
        n = 0
        for clip in ClipReader(video, 16, buffers=3, threads=t):
            n += clip.real
            clip.release()
        out[t] = n / (time.perf_counter() - t0)
    return out


def object_store_clip(ray, height: int, width: int, reps: int = 3) -> dict:
    """ray.put + ray.get (in another worker) of one 16-frame clip of uint8 RGB frames: GB/s."""
    clip = np.random.default_rng(0).integers(0, 255, (16, height, width, 3), dtype=np.uint8)

    @ray.remote(num_cpus=0)
    def touch(x):
        return int(x[:, ::64, ::64].sum())  # reads the frames from the store (zero-copy view + a sparse read)

    ray.get(touch.remote(ray.put(clip)))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ray.get(touch.remote(ray.put(clip)))
        ts.append(time.perf_counter() - t0)
    t = float(np.median(ts))
    return {"clip_mib": clip.nbytes / 2**20, "put_get_s": t, "gb_per_s": clip.nbytes / t / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--model", type=Path, default=None, help="AutoGaze folder (default: the fixture model)")
    ap.add_argument("--vit", default=None, help="ViT folder / hub id (default: random-init SigLIP-B/16)")
    ap.add_argument("--precision", default="tf32", choices=["fp32", "tf32"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--cpus-per-gpu", type=float, nargs="*", default=None,
                    help="values to sweep (default: 2, 4, 8 ... up to the machine's CPUs less one)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--greedy", action="store_true", help="the training-free gazer instead of --model")
    args = ap.parse_args()
    import ray

    cuda = args.device == "cuda"
    card = card_name()
    ncpu = len(os.sched_getaffinity(0))
    print(f"card: {card}; torch {torch.__version__}; ray {ray.__version__}; cpus {ncpu}")
    tmp = tempfile.mkdtemp(prefix="bench_ray_")
    src = os.path.join(tmp, "videos")
    os.makedirs(src)
    t0 = time.perf_counter()
    first = os.path.join(src, "v000.mp4")
    make_video(first, args.frames, args.width, args.height)
    for i in range(1, args.videos):
        shutil.copyfile(first, os.path.join(src, f"v{i:03d}.mp4"))
    print(f"made {args.videos} x {args.frames} frames {args.width}x{args.height} "
          f"({os.path.getsize(first) / 2**20:.1f} MiB each) in {time.perf_counter() - t0:.1f} s")
    warm = first
    if args.greedy:
        gaze = dict(gazer=None, max_error=0.15)
    else:
        gaze = dict(gazer=str(args.model or default_model_dir()), gazing_ratio=RATIO,
                    precision=args.precision if cuda else "fp32")
    kwargs = dict(**gaze, vit=args.vit, device=args.device, batch_size=args.batch_size, fsync=True)
    res: dict = {"card": card, "torch": torch.__version__, "ray": ray.__version__, "cpus": ncpu,
                 "videos": args.videos, "frames": args.frames, "size": [args.width, args.height],
                 "precision": args.precision, "device": args.device}

    pairs_s = [(os.path.join(src, f"v{i:03d}.mp4"), os.path.join(tmp, "out_s", f"v{i:03d}.safetensors"))
               for i in range(args.videos)]
    res["single"] = single_process(kwargs, pairs_s, warm)
    print(f"(s) single process: {res['single']}")
    for _, out in pairs_s:
        os.unlink(out)

    ray.init(include_dashboard=False, logging_level="WARNING")
    gpus = int(ray.cluster_resources().get("GPU", 0)) if cuda else 1
    gpus = min(gpus, 1)  # the comparison is on one GPU
    sweep = args.cpus_per_gpu or [c for c in (2, 4, 8, 16) if c <= ncpu - 1] or [1]
    res["ray"] = {}
    pairs_r = [(v, os.path.join(tmp, "out_r", os.path.basename(o))) for v, o in pairs_s]
    for c in sweep:
        r = ray_run(kwargs, pairs_r, warm, c, gpus, os.path.join(tmp, "events.jsonl"))
        r["ratio_steady"] = r["frames_per_s"] / res["single"]["frames_per_s"]
        r["ratio_with_setup"] = r["frames_per_s_with_setup"] / res["single"]["frames_per_s_with_setup"]
        res["ray"][str(c)] = r
        print(f"(r) Ray, {c:g} CPUs per GPU: {r}")
    best = max(v["frames_per_s"] for v in res["ray"].values())
    enough = min(float(c) for c, v in res["ray"].items() if v["frames_per_s"] >= 0.95 * best)
    res["cpus_per_gpu_needed"] = enough
    res["decode_frames_per_s_by_threads"] = decode_per_threads(first, sorted({1, 2, 4, min(8, ncpu)}))
    res["object_store_clip"] = object_store_clip(ray, args.height, args.width)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)

    s = res["single"]
    print(f"\ncard: {card}; {args.videos} videos x {args.frames} frames {args.width}x{args.height}, "
          f"{args.precision}, batch {s['batch_size']}")
    print(f"{'run':<22} {'frames/s':>9} {'tokens/s':>12} {'ratio':>6} {'w/ setup':>9} {'ratio':>6}")
    print(f"{'single process':<22} {s['frames_per_s']:9.1f} {s['tokens_per_s']:12,.0f} {'':>6} "
          f"{s['frames_per_s_with_setup']:9.1f}")
    for c, r in res["ray"].items():
        print(f"{'Ray, ' + c + ' CPUs/GPU':<22} {r['frames_per_s']:9.1f} {r['tokens_per_s']:12,.0f} "
              f"{r['ratio_steady']:6.2f} {r['frames_per_s_with_setup']:9.1f} {r['ratio_with_setup']:6.2f}")
    print(f"CPU decode cores per GPU (smallest within 5% of the best): {enough:g}")
    print("decode alone (ClipReader, frames/s by FFmpeg threads): "
          + ", ".join(f"{t}: {v:.1f}" for t, v in res["decode_frames_per_s_by_threads"].items()))
    o = res["object_store_clip"]
    print(f"object store, one clip of decoded frames ({o['clip_mib']:.0f} MiB): put + get {o['put_get_s'] * 1e3:.0f} ms "
          f"({o['gb_per_s']:.2f} GB/s)")
    save_json("bench_ray.json", res)


if __name__ == "__main__":
    main()
