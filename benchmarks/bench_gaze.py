"""Gaze-model latency and throughput: reference PyTorch loop vs the fast path, same run.

    python benchmarks/bench_gaze.py [--model DIR] [--reps 20] [--batches 64 256]

Weights: the official fixture model (seeded random weights in the official format); inputs:
random normalised videos. Configurations (16 frames of 224x224):
  (a) gazing_ratio [0.75] + [0.0378]*15, no requirement: caps 198, then 10 per frame
  (b) gazing_ratio 0.75, task_loss_requirement 0.7 (fixture case 1 settings)
  (c) gazing_ratio 0.75, no requirement: 198 tokens in every frame (worst case)
Exact fp32 (TF32 off). Times are CUDA-event medians after warm-up. The fast path is timed twice: with the
`decoder_layers` op (the default: a decode step at small batch runs all layers in one persistent launch)
and without it, every layer a chain of the separate decoder ops ("chained", the previous version).
Last, the opt-in precision="tf32" mode: throughput for (a) and its agreement with exact fp32 on the same
videos (GazeOutput.agreement), for (a) and (b).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import card_name, median, peak_mib, save_json, time_ms  # noqa: E402

import autogaze_ext as ag  # noqa: E402
from autogaze_ext.model.fast import FastGazeRunner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "a": dict(gazing_ratio=[0.75] + [0.0378] * 15),
    "b": dict(gazing_ratio=0.75, task_loss_requirement=0.7),
    "c": dict(gazing_ratio=0.75),
}


def default_model_dir() -> Path:
    for c in [os.environ.get("AUTOGAZE_MODEL"), REPO / ".fixtures/official/model",
              REPO.parent / "shared/fixtures/official/model"]:
        if c and (Path(c) / "config.json").is_file():
            return Path(c)
    raise SystemExit("no model: pass --model DIR (a folder with config.json + model.safetensors)")


def videos(B: int, n: int, device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(B)
    return [(torch.randn(B, 16, 3, 224, 224, generator=g) * 1.2).to(device) for _ in range(n)]


def use_persistent(model, on: bool) -> None:
    """Fast path with (on) or without the persistent decoder_layers kernel; drops the captured runners."""
    FastGazeRunner.LAYERS_OP_MAX_ROWS = 2048 if on else 0
    model.__dict__.pop("_fast_runners", None)


def step_us(model) -> float:
    """Median µs of one decode-step graph replay at B=1 inside frame 0 (after a B=1 generate)."""
    runner = model.__dict__.get("_fast_runners", {}).get((1, 16, "fp32"), (None, None, None))[2]
    if runner is None or runner.graphs is None:
        return float("nan")
    runner.reset()
    runner.graphs["prefill"].replay()
    return median(time_ms(lambda: runner.graphs["step"].replay(), warmup=2, reps=20)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--ref-reps", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="*", default=[16, 64, 256])
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = ag.AutoGaze.from_pretrained(args.model or default_model_dir()).to(dev)
    card = card_name()
    print(f"card: {card}; torch {torch.__version__}; exact fp32 (TF32 off)")
    results: dict = {"card": card, "torch": torch.__version__, "latency": {}, "throughput": {}}

    # --- latency at B=1 ------------------------------------------------------------------
    rows = []
    steps = {}
    for key, kw in CONFIGS.items():
        vids = videos(1, 4, dev)
        it = iter(range(10**9))
        run = lambda backend: model.generate(vids[next(it) % len(vids)], backend=backend, **kw)  # noqa: E731
        fast = {}
        for variant in ("chained", "persistent"):
            use_persistent(model, variant == "persistent")
            fast[variant] = median(time_ms(lambda: run("fast"), warmup=3, reps=args.reps))
            if key == "a":
                steps[variant] = step_us(model)  # µs per decode step at B=1 inside frame 0
        same = all(torch.equal(model.generate(v, backend="fast", **kw).gazing_pos,
                               model.generate(v, backend="reference", **kw).gazing_pos) for v in vids[:2])
        ref = median(time_ms(lambda: run("reference"), warmup=1, reps=args.ref_reps))
        mem = peak_mib(lambda: run("fast"))
        out = model.generate(vids[0], backend="fast", **kw)
        f = fast["persistent"]
        rows.append((key, ref, fast["chained"], f, ref / f, mem, same, out.num_gazing_each_frame.tolist()[:3]))
        results["latency"][key] = dict(reference_ms=ref, fast_ms=f, fast_chained_ms=fast["chained"],
                                       speedup=ref / f, peak_mib=mem, ids_equal=same,
                                       slots=out.num_gazing_each_frame.tolist())
    results["step_us_b1"] = steps

    # --- throughput for (a) ---------------------------------------------------------------
    trows = []
    for B in args.batches:
        vid = videos(B, 1, dev)[0]
        kw = CONFIGS["a"]
        fast = {}
        for variant in ("chained", "persistent"):
            use_persistent(model, variant == "persistent")
            fast[variant] = median(time_ms(lambda: model.generate(vid, backend="fast", **kw), warmup=2,
                                           reps=max(5, args.reps // 4)))
        ref = median(time_ms(lambda: model.generate(vid, backend="reference", **kw), warmup=1, reps=2)) \
            if B <= 64 else float("nan")
        mem = peak_mib(lambda: model.generate(vid, backend="fast", **kw))
        f = fast["persistent"]
        trows.append((B, 1e3 * B / ref if ref == ref else float("nan"), 1e3 * B / fast["chained"], 1e3 * B / f,
                      ref / f, mem))
        results["throughput"][B] = dict(reference_clips_s=trows[-1][1], fast_chained_clips_s=trows[-1][2],
                                        fast_clips_s=trows[-1][3], speedup=trows[-1][4], peak_mib=mem)

    # --- the tf32 mode: throughput for (a), agreement with fp32 for (a) and (b) -------------------
    use_persistent(model, True)
    prow = []
    for B in [1] + list(args.batches):
        vid = videos(B, 1, dev)[0]
        t = {}
        for prec in ("fp32", "tf32"):
            t[prec] = median(time_ms(lambda: model.generate(vid, backend="fast", precision=prec, **CONFIGS["a"]),
                                     warmup=2, reps=max(5, args.reps // 4)))
        agree = {}
        if B > 1:
            for key in ("a", "b"):
                exact = model.generate(vid, backend="fast", **CONFIGS[key])
                agree[key] = exact.agreement(model.generate(vid, backend="fast", precision="tf32", **CONFIGS[key]))
        prow.append((B, 1e3 * B / t["fp32"], 1e3 * B / t["tf32"], t["fp32"] / t["tf32"], agree))
        results.setdefault("tf32", {})[B] = dict(fp32_clips_s=prow[-1][1], tf32_clips_s=prow[-1][2],
                                                 speedup=prow[-1][3], agreement=agree)

    print("\nlatency per 16-frame clip, B=1 (ms, median)")
    print(f"{'config':8} {'reference':>10} {'chained':>9} {'fast':>9} {'speedup':>8} {'peak MiB':>9} {'ids equal':>9}"
          "  slots")
    for k, r, c, f, s, m, same, slots in rows:
        print(f"({k})      {r:10.2f} {c:9.3f} {f:9.3f} {s:8.1f} {m:9.1f} {str(same):>9}  {slots}...")
    print(f"\nfast decode step at B=1 in frame 0 (median of graph replays): {steps.get('persistent', float('nan')):.1f}"
          f" µs; chained ops {steps.get('chained', float('nan')):.1f} µs")
    print("\nthroughput for (a), clips/s")
    print(f"{'B':>5} {'reference':>10} {'chained':>9} {'fast':>9} {'speedup':>8} {'peak MiB':>9}")
    for B, r, c, f, s, m in trows:
        print(f"{B:5d} {r:10.1f} {c:9.1f} {f:9.1f} {s:8.1f} {m:9.1f}")
    print("\nprecision='tf32' for (a), clips/s, and its agreement with fp32 on the same clips "
          "(share of clips with equal ids / equal masks, mean patch-set overlap)")
    print(f"{'B':>5} {'fp32':>9} {'tf32':>9} {'ratio':>6}   {'(a) ids / masks / overlap':>27}   "
          f"{'(b) ids / masks / overlap':>27}")
    for B, f32, t32, ratio, agree in prow:
        cells = ["{same_ids:7.3f} / {same_masks:6.3f} / {token_overlap:7.4f}".format(**agree[k]) if k in agree
                 else f"{'-':>27}" for k in ("a", "b")]
        print(f"{B:5d} {f32:9.1f} {t32:9.1f} {ratio:6.2f}   {cells[0]:>27}   {cells[1]:>27}")
    save_json("bench_gaze.json", results)


if __name__ == "__main__":
    main()
