"""The attention ops and the gaze call they bound, for comparing two builds of the extension on one card.

    python benchmarks/bench_attention_ops.py [--model DIR] [--reps 50] [--json FILE]

Run it once per build (e.g. PYTHONPATH=<other build> for the second) in the same session, on the same card.
  cache_attention  a decode step (B=1 and B=64: 10 queries over a 3,392-slot cache, 6 heads, d=32), a
                   prefill (B=64: 206 queries; fp32 and tf32)
  decoder_layers   not timed alone: generate (a) at B=1 runs it every step
  varlen_attention bf16, 32 clips x 16 frames, 10% of 196 tokens per frame, 12 heads, d=64, block_causal
  generate (a)     B=1 latency and B=256 throughput, exact fp32 (bench_gaze's configuration (a))
CUDA-event medians after warm-up.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gaze import CONFIGS, default_model_dir, videos  # noqa: E402
from common import card_name, median, time_ms  # noqa: E402

import autogaze_ext as ag  # noqa: E402


def cache_case(B, n, L=3392, H=6, d=32, start=None):
    g = torch.Generator().manual_seed(B * 1000 + n)
    q = torch.randn(B, H, n, d, generator=g).cuda()
    k = torch.randn(B, H, L, d, generator=g).cuda()
    v = torch.randn(B, H, L, d, generator=g).cuda()
    valid = (torch.rand(B, L, generator=g) < 0.8).cuda()
    st = torch.tensor([L // 2 if start is None else start], device="cuda")
    return q, k, v, valid, st


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    op = torch.ops.autogaze_ext
    res = {"card": card_name(), "build": ag.__file__}
    with torch.no_grad():
        for name, B, n, tf32 in [("step B=1", 1, 10, False), ("step B=64", 64, 10, False),
                                 ("prefill B=64", 64, 206, False), ("prefill B=64 tf32", 64, 206, True)]:
            q, k, v, valid, st = cache_case(B, n, start=0 if n > 16 else None)
            res[f"cache_attention {name} us"] = 1e3 * median(
                time_ms(lambda: op.cache_attention(q, k, v, valid, st, tf32), warmup=5, reps=args.reps))
        counts = [[20] * 16 for _ in range(32)]
        lens = torch.tensor(counts).flatten()
        cf = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)]).to(torch.int32).cuda()
        cs = cf[::16].contiguous()
        total = int(lens.sum())
        q, k, v = (torch.randn(total, 12, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        res["varlen_attention 32 clips bf16 us"] = 1e3 * median(
            time_ms(lambda: op.varlen_attention(q, k, v, cs, cf, "block_causal", 0.125, 0), warmup=5, reps=args.reps))
        model = ag.AutoGaze.from_pretrained(args.model or default_model_dir()).cuda()
        vid1 = videos(1, 1, "cuda")[0]
        res["generate (a) B=1 ms"] = median(time_ms(lambda: model.generate(vid1, **CONFIGS["a"]), warmup=3,
                                                    reps=args.reps // 2))
        vid256 = videos(256, 1, "cuda")[0]
        t = median(time_ms(lambda: model.generate(vid256, **CONFIGS["a"]), warmup=2, reps=8))
        res["generate (a) B=256 clips/s"] = 256e3 / t
    for key, val in res.items():
        print(f"{key:<40} {val:.2f}" if isinstance(val, float) else f"{key:<40} {val}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
