"""Gazed SigLIP: accelerate() vs the dense stock model and vs the official gazed approach, same run.

    python benchmarks/bench_vit.py [--quick] [--batches 1 32] [--fractions 0.25 0.1 0.05 0.01] [--reps 20]

Model: SigLIP-B/16 geometry (hidden 768, 12 layers, 12 heads, MLP 3072, 224 px, 16-px patches), random
init from the config, stock transformers SiglipVisionModel with SDPA, bf16 on a GPU (fp32 on the CPU).
Input: B clips of 16 frames of 224x224. Gazing: a fraction f of the 196 finest-scale tokens per frame,
random (plus the official fixture's mixed-scale gazing, 8 frames, padded slots included).
  dense   the stock model on every frame (B * 16 images of 196 tokens)
  official the official AutoGaze SigLIP approach: every slot kept (padded ones as dummies), a dense
           (B, 1, N, N) additive block-causal mask built per forward, stock SDPA attention
  ours    accelerate(model): packed non-padded tokens, block-causal varlen attention
--quick: a 2-layer 64-wide model, B <= 2, 4 frames, on any device in seconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import card_name, median, peak_mib, save_json, time_ms  # noqa: E402
from vit_layouts import fixture_gaze, random_finest_gaze  # noqa: E402

import autogaze_ext as ag  # noqa: E402
from autogaze_ext.ops import has_kernel  # noqa: E402
from autogaze_ext.vit.graphs import capture  # noqa: E402
from autogaze_ext.vit.reference import dense_forward  # noqa: E402

BASE16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
              patch_size=16)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=224,
            patch_size=16)


def graphed(fn):
    """fn() replayed from a CUDA graph (static inputs): the stock model without its Python overhead."""
    return capture(fn)[0].replay


def rel_err(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes (CPU smoke run)")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.1, 0.05, 0.01])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cfg = TINY if args.quick else BASE16
    if args.quick:
        args.batches, args.frames, args.reps = [b for b in args.batches if b <= 2] or [1], 4, 2
        args.fractions = args.fractions[:2]
    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(**cfg, attn_implementation="sdpa")).to(dev, dtype).eval()
    vit = ag.accelerate(model, scales=(32, 64, 112, 224))
    # with a compiled CUDA kernel, also time the same model on torch's attention kernels
    vit_torch = (ag.accelerate(model, scales=(32, 64, 112, 224), attention_backend="torch")
                 if dev.type == "cuda" and has_kernel("varlen_attention", "cuda") else None)
    attn = ("compiled CUDA kernel" if dev.type == "cuda" and has_kernel("varlen_attention", "cuda") else
            "torch varlen FlashAttention" if dev.type == "cuda" else "CPU kernel")
    card = card_name()
    print(f"card: {card}; torch {torch.__version__}; {dtype}; SigLIP {cfg}; varlen_attention: {attn}")
    results = {"card": card, "torch": torch.__version__, "dtype": str(dtype), "config": cfg, "attention": attn,
               "cases": []}
    rows = []
    g = torch.Generator().manual_seed(1)
    fx = fixture_gaze(dev)
    with torch.inference_mode():
        for B in args.batches:
            T = args.frames
            video = torch.randn(B, T, 3, 224, 224, generator=g).to(dev, dtype)
            dense_cache: dict = {}  # per input video: the stock model on all of its frames
            gazes = [(f"f={f}", video, random_finest_gaze(B, T, f, seed=B, device=dev)) for f in args.fractions]
            if fx is not None:
                rep = {k: (v.repeat(B, 1) if k in ("gazing_pos", "if_padded_gazing") else v) for k, v in fx.items()}
                fx_video = torch.randn(B, 8, 3, 224, 224, generator=g).to(dev, dtype)
                gazes.append(("fixture mixed-scale (8 frames)", fx_video, rep))
            for name, vid, gaze in gazes:
                ours_run = lambda: vit(vid, gaze=gaze, validate=False)  # noqa: E731
                torch_path = vit_torch is not None and (lambda: vit_torch(vid, gaze=gaze, validate=False))
                official_run = lambda: dense_forward(vit, vid, gaze)  # noqa: E731
                err = rel_err(torch.cat([x.float() for x in ours_run().per_video()]),
                              torch.cat([x.float() for x in official_run()]))
                ours = median(time_ms(ours_run, warmup=2, reps=args.reps))
                ours_torch = median(time_ms(torch_path, warmup=2, reps=args.reps)) if torch_path else float("nan")
                official = median(time_ms(official_run, warmup=2, reps=args.reps))
                if id(vid) not in dense_cache:
                    dense_run = lambda: model(vid.flatten(0, 1))  # noqa: E731
                    dense_g = (median(time_ms(graphed(dense_run), warmup=2, reps=args.reps)) if dev.type == "cuda"
                               else float("nan"))
                    dense_cache[id(vid)] = (median(time_ms(dense_run, warmup=2, reps=args.reps)), peak_mib(dense_run),
                                            dense_g)
                dense, dense_mem, dense_g = dense_cache[id(vid)]
                n_real = int((~gaze["if_padded_gazing"]).sum())
                case = dict(gaze=name, B=B, frames=vid.shape[1], tokens=n_real, slots=gaze["gazing_pos"].numel(),
                            dense_ms=dense, dense_graphed_ms=dense_g, official_ms=official, ours_ms=ours,
                            ours_torch_attention_ms=ours_torch,
                            speedup_vs_dense=dense / ours, speedup_vs_dense_graphed=dense_g / ours,
                            speedup_vs_official=official / ours,
                            dense_peak_mib=dense_mem, official_peak_mib=peak_mib(official_run),
                            ours_peak_mib=peak_mib(ours_run), rel_err_vs_official=err)
                rows.append(case)
                results["cases"].append(case)

    print(f"\n{'gazing':30} {'B':>3} {'tokens':>7} {'dense ms':>9} {'graphed':>8} {'official ms':>11} {'ours ms':>8} "
          f"{'(torch)':>8} {'vs dense':>8} {'vs graphed':>10} {'vs offic.':>9} {'MiB dense/offic./ours':>22} "
          f"{'rel err':>8}")
    for c in rows:
        mem = f"{c['dense_peak_mib']:.0f}/{c['official_peak_mib']:.0f}/{c['ours_peak_mib']:.0f}"
        print(f"{c['gaze']:30} {c['B']:3d} {c['tokens']:7d} {c['dense_ms']:9.2f} {c['dense_graphed_ms']:8.2f} "
              f"{c['official_ms']:11.2f} {c['ours_ms']:8.2f} {c['ours_torch_attention_ms']:8.2f} "
              f"{c['speedup_vs_dense']:7.1f}x {c['speedup_vs_dense_graphed']:9.1f}x {c['speedup_vs_official']:8.1f}x "
              f"{mem:>22} {c['rel_err_vs_official']:8.1e}")
    print("dense: the stock model on every frame of the case (graphed: the same, replayed from a CUDA graph); "
          "ours: accelerate(model) with its CUDA-graphed block stack; (torch): ours with torch's attention kernels "
          "instead of the compiled one (no graphs); rel err: ours vs the official approach on the non-padded rows")
    save_json("bench_vit.json", results)


if __name__ == "__main__":
    main()
