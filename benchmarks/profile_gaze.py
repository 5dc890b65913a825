"""Kernel-level profile of one fast-path frame (prefill + steps) without graphs: where time goes.

    python benchmarks/profile_gaze.py [--model DIR] [--batch 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gaze import default_model_dir  # noqa: E402

import autogaze_ext as ag  # noqa: E402
from autogaze_ext.model.fast import FastGazeRunner, _slot_budget  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = ag.AutoGaze.from_pretrained(args.model or default_model_dir()).cuda()
    B = args.batch
    caps = [198] * 16
    video = torch.randn(B, 16, 3, 224, 224, device="cuda")
    with torch.no_grad():
        vision, _ = model.gazing_model.embed_video(video)
        r = FastGazeRunner(model.gazing_model.gaze_decoder, B, 16, 196, _slot_budget(caps, 196, 10), use_graphs=False)
        r.reset()
        r.vision.copy_(vision)
        r.caps.copy_(torch.tensor(caps))
        for _ in range(2):  # warm up
            r.reset(); r.prefill(); r.step()
        torch.cuda.synchronize()
        for phase, fn in (("prefill", r.prefill), ("step", r.step)):
            r.reset(); r.prefill(); torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.steps):
                    fn()
                torch.cuda.synchronize()
            print(f"\n=== {phase} x{args.steps}, B={B}")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=70))


if __name__ == "__main__":
    main()
