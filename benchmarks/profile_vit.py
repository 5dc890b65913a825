"""Where the time of one accelerated ViT call goes: packing, embedding, the block stack (graphed and eager).

    python benchmarks/profile_vit.py [--batch 1] [--fractions 0.01 0.25] [--table]

SigLIP-B/16 geometry, bf16, 16-frame 224² clips, the random finest-scale gazing of bench_vit.py. Stage times
are CUDA-event medians after warm-up (a stage with a host sync includes it); --table adds a torch.profiler
table of one whole call.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vit import BASE16  # noqa: E402
from common import card_name, median, time_ms  # noqa: E402
from vit_layouts import random_finest_gaze  # noqa: E402

import autogaze_ext as ag  # noqa: E402


def main() -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.01, 0.25])
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_vit.py needs a CUDA GPU")
    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(**BASE16, attn_implementation="sdpa")).cuda().bfloat16().eval()
    vit = ag.accelerate(model)
    B, T = args.batch, 16
    video = torch.randn(B, T, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    print(f"card: {card_name()}; torch {torch.__version__}; B={B}, {T} frames, bf16 SigLIP-B/16")
    with torch.inference_mode():
        for f in args.fractions:
            gaze = random_finest_gaze(B, T, f, seed=B, device="cuda")
            packed = vit.pack(video, gaze, validate=False)
            x = vit.embed(video, packed)
            run = vit._block_stack(vit.mode, packed.num_prefix)
            stages = {
                "pack": lambda: vit.pack(video, gaze, validate=False),
                "embed": lambda: vit.embed(video, packed),
                "blocks (graph)": lambda: vit._graphs(run, x, packed.cu_seqlens, packed.cu_frames,
                                                      (vit.mode, packed.num_prefix)),
                "blocks (eager)": lambda: run(x, packed.cu_seqlens, packed.cu_frames),
                "whole call": lambda: vit(video, gaze=gaze, validate=False),
            }
            times = {k: median(time_ms(fn, warmup=3, reps=20)) for k, fn in stages.items()}
            print(f"f={f}: {x.shape[0]} tokens, {len(vit._graphs)} graph(s): " +
                  ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()))
            if args.table:
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    vit(video, gaze=gaze, validate=False)
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
