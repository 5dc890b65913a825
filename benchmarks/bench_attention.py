"""Attention over packed gazed tokens: varlen_attention vs torch's varlen FlashAttention (the modes it
expresses directly) and vs padded SDPA with a dense additive mask (the official approach) in block_causal.

    python benchmarks/bench_attention.py [--quick] [--batches 1 32] [--heads 12] [--head-dim 64] [--reps 20]

Layouts: 16-frame clips keeping a fraction f of the 196 finest-scale tokens per frame (random), plus the
mixed-scale gazing of the official SigLIP fixture (8 frames, padded slots dropped; repeated over the batch).
TFLOP/s counts useful work only: 4 * heads * head_dim per visible (query, key) pair, for every method.
bf16 on a GPU, fp32 on the CPU. --quick: tiny sizes that run on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import card_name, graph_ms, median, peak_mib, save_json, time_ms  # noqa: E402
from vit_layouts import fixture_gaze, kept_per_frame, real_counts  # noqa: E402

from autogaze_ext.ops import has_kernel  # noqa: E402
from autogaze_ext.ops.varlen import (MODES, _torch_varlen, token_key_ranges,  # noqa: E402
                                   varlen_attention)
from autogaze_ext.vit.reference import dense_mask  # noqa: E402


def offsets(counts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.tensor(counts, dtype=torch.int64)
    zero = torch.zeros(1, dtype=torch.int64)
    cu_frames = torch.cat([zero, flat.flatten().cumsum(0)]).to(torch.int32)
    cu_seqlens = torch.cat([zero, flat.sum(1).cumsum(0)]).to(torch.int32)
    return cu_seqlens.to(device), cu_frames.to(device)


def useful_flops(cu_seqlens, cu_frames, mode, H, d) -> float:
    s, lo, hi, pend = token_key_ranges(cu_seqlens.cpu(), cu_frames.cpu(), mode, 0, int(cu_seqlens[-1]))
    return 4.0 * H * d * float((hi - lo).sum())


def padded_dense(q, k, v, counts, mode):
    """(B, H, L, d) padded copies and the official (B, H, L, L) additive mask (built once, outside timing)."""
    B, L = len(counts), max(sum(c) for c in counts)
    H, d = q.shape[1:]
    qp, kp, vp = (torch.zeros(B, H, L, d, dtype=q.dtype, device=q.device) for _ in range(3))
    pad = torch.ones(B, L, dtype=torch.bool, device=q.device)
    frame_ids = torch.full((B, L), 10**6, dtype=torch.int64)  # padded slots: a frame after all others
    start = 0
    for b, c in enumerate(counts):
        n = sum(c)
        for src, dst in ((q, qp), (k, kp), (v, vp)):
            dst[b, :, :n] = src[start:start + n].transpose(0, 1)
        pad[b, :n] = False
        frame_ids[b, :n] = torch.repeat_interleave(torch.arange(len(c)), torch.tensor(c))
        start += n
    masks = [dense_mask(frame_ids[b].to(q.device), pad[b:b + 1], mode, q.dtype) for b in range(B)]
    return qp, kp, vp, torch.cat(masks).expand(B, H, L, L).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run)")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.1, 0.05, 0.01])
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if args.quick:
        args.batches, args.fractions, args.heads, args.frames, args.reps = [1, 2], [0.25], 2, 4, 2
    H, d = args.heads, args.head_dim
    backend = ("compiled CUDA kernel" if dev.type == "cuda" and has_kernel("varlen_attention", "cuda") else
               "torch varlen FlashAttention / SDPA per video" if dev.type == "cuda" else "CPU kernel")
    card = card_name()
    print(f"card: {card}; torch {torch.__version__}; {dtype}; heads {H} x head_dim {d}; varlen_attention: {backend}")

    layouts = [(f"f={f}", lambda B, f=f: [[kept_per_frame(f)] * args.frames] * B) for f in args.fractions]
    fx = fixture_gaze()
    if fx is not None:
        layouts.append(("fixture mixed-scale", lambda B: real_counts(fx) * B))
    has_varlen = dev.type == "cuda" and _torch_varlen() is not None and dtype != torch.float32

    rows, results = [], {"card": card, "torch": torch.__version__, "dtype": str(dtype), "heads": H, "head_dim": d,
                         "backend": backend, "cases": []}
    g = torch.Generator().manual_seed(0)
    for name, make in layouts:
        for B in args.batches:
            counts = make(B)
            cu_seqlens, cu_frames = offsets(counts, dev)
            total = int(cu_seqlens[-1])
            q, k, v = (torch.randn(total, H, d, generator=g).to(dev, dtype) for _ in range(3))
            for mode in MODES:
                flops = useful_flops(cu_seqlens, cu_frames, mode, H, d)
                run = lambda: varlen_attention(q, k, v, cu_seqlens, cu_frames, mode, validate=False)  # noqa: E731
                ours = median(time_ms(run, warmup=3, reps=args.reps))
                case = dict(layout=name, B=B, tokens=total, mode=mode, ours_ms=ours, ours_tflops=flops / ours / 1e9,
                            ours_peak_mib=peak_mib(run), ours_gpu_ms=graph_ms(run))
                if case["ours_gpu_ms"]:
                    case["ours_gpu_tflops"] = flops / case["ours_gpu_ms"] / 1e9
                if dev.type == "cuda" and backend == "compiled CUDA kernel":  # the wrapper's torch path too
                    tp = lambda: varlen_attention(q, k, v, cu_seqlens, cu_frames, mode, validate=False,  # noqa: E731
                                                  backend="torch")
                    case["torch_path_ms"] = median(time_ms(tp, warmup=3, reps=args.reps))
                if has_varlen and mode != "block_causal":
                    cu = cu_frames if mode == "frame_independent" else cu_seqlens
                    lens = (cu[1:] - cu[:-1]).max().item()
                    tv = lambda: _torch_varlen()(q, k, v, cu, cu, lens, lens,  # noqa: E731
                                                 window_size=(-1, 0) if mode == "causal" else (-1, -1))
                    case["torch_varlen_ms"] = median(time_ms(tv, warmup=3, reps=args.reps))
                    case["torch_varlen_gpu_ms"] = graph_ms(tv)
                if mode == "block_causal":
                    qp, kp, vp, mask = padded_dense(q, k, v, counts, mode)
                    dense = lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)  # noqa: E731
                    case["dense_sdpa_ms"] = median(time_ms(dense, warmup=3, reps=args.reps))
                    case["dense_sdpa_gpu_ms"] = graph_ms(dense)
                    case["dense_sdpa_peak_mib"] = peak_mib(dense)
                    case["dense_mask_mib"] = mask.numel() * mask.element_size() / 2**20
                    del qp, kp, vp, mask
                rows.append(case)
                results["cases"].append(case)

    nan = float("nan")
    val = lambda c, k: c.get(k) or nan  # noqa: E731 - None (not capturable / not measured) prints as nan
    print(f"\n{'layout':22} {'B':>3} {'tokens':>7} {'mode':18} {'ours ms':>9} {'TFLOP/s':>8} {'torch path':>10} "
          f"{'torch varlen':>12} {'dense SDPA':>11} {'speedup':>8} | {'GPU: ours':>9} {'TFLOP/s':>8} "
          f"{'varlen':>8} {'SDPA':>8} {'speedup':>8}")
    for c in rows:
        other = c.get("dense_sdpa_ms", c.get("torch_varlen_ms", nan))
        other_gpu = val(c, "dense_sdpa_gpu_ms") if c["mode"] == "block_causal" else val(c, "torch_varlen_gpu_ms")
        print(f"{c['layout']:22} {c['B']:3d} {c['tokens']:7d} {c['mode']:18} {c['ours_ms']:9.3f} "
              f"{c['ours_tflops']:8.2f} {c.get('torch_path_ms', nan):10.3f} {c.get('torch_varlen_ms', nan):12.3f} "
              f"{c.get('dense_sdpa_ms', nan):11.3f} {other / c['ours_ms']:7.2f}x | {val(c, 'ours_gpu_ms'):9.4f} "
              f"{val(c, 'ours_gpu_tflops'):8.2f} {val(c, 'torch_varlen_gpu_ms'):8.4f} "
              f"{val(c, 'dense_sdpa_gpu_ms'):8.4f} "
              f"{other_gpu / val(c, 'ours_gpu_ms'):7.2f}x")
    print("per call: one call timed alone (host dispatch and checks included); GPU: 20 calls replayed from a CUDA "
          "graph (kernel time only). torch path: varlen_attention(backend='torch') (torch's varlen FlashAttention, "
          "block_causal through overlapping key ranges); torch varlen: torch's call where the mode maps onto it "
          "directly; speedup: vs dense SDPA in block_causal, vs torch varlen elsewhere (nan: not measured)")
    save_json("bench_attention.json", results)


if __name__ == "__main__":
    main()
