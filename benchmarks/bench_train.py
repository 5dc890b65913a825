"""Training throughput (clips/s per GPU): our NTP training step against the official step on the same card.

    python benchmarks/bench_train.py [--model DIR] [--batches 8 32 64] [--per-frame 26] [--reps 10]

One step = teacher-forced scoring of a batch of 16-frame 224x224 clips with their labels, the NTP loss (task-loss
head on), backward, gradient clipping and the optimizer update, inputs already on the GPU (the data loader is
not timed). Variants, all in one run on one card:

  ours        ``Trainer.step_on``: ``AutoGaze`` forward with ``gazing_info`` under bf16 autocast, AdamW (fused)
  ours-fp32   the same step without autocast (true fp32, TF32 off): the teacher-forced reference path
  official    the official ``autogaze`` package's forward + ``NTP`` + Adam on the same weights and labels, if it is
              importable here (pip install the NVlabs/AutoGaze repository); skipped otherwise

Labels: ``--per-frame`` distinct random ids per frame (26 = the NTP script's gazing ratio 0.1), decreasing task
losses. Weights: the official fixture model (released architecture). Times: CUDA-event medians after warm-up;
clips/s = batch / median step time. Card via nvidia-ml-py (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import card_name, median, peak_mib, save_json, time_ms  # noqa: E402

from bench_gaze import default_model_dir  # noqa: E402


def make_batch(B: int, T: int, per_frame: int, device, seed: int = 0) -> dict:
    from autogaze_ext.training.collate import collate_gazing_info

    g = torch.Generator().manual_seed(seed)
    labels = [[(torch.randperm(265, generator=g)[:per_frame] + 265 * t).tolist() for t in range(T)] for _ in range(B)]
    losses = [[[round(0.9 * 0.97 ** j, 4) for j in range(per_frame)] for _ in range(T)] for _ in range(B)]
    info = collate_gazing_info(labels, losses)
    video = torch.randn(B, T, 3, 224, 224, generator=g)
    return {"video": video.to(device), "gazing_info": {k: v.to(device) for k, v in info.items()},
            "labels": labels, "losses": losses}


def ours(model_dir: str, precision: str, device):
    from autogaze_ext.training.trainer import TrainConfig, Trainer

    class _Empty(torch.utils.data.Dataset):
        def __len__(self):
            return 1 << 20

    import tempfile

    cfg = TrainConfig(videos=["(bench)"], out=tempfile.mkdtemp(prefix="bench_train_"),
                      init=model_dir, steps=1 << 20, warmup_steps=0, batch_size=1, device=str(device),
                      precision=precision, quiet=True, workers=0)
    tr = Trainer(cfg, dataset=_Empty())
    return lambda batch: tr.step_on(batch)


def official(model_dir: str, device):
    """The official step (``Trainer._one_step_ntp`` + backward + clip + step), or None when not importable."""
    try:
        from autogaze.algorithms.ntp import NTP
        from autogaze.models.autogaze import AutoGaze as OfficialAutoGaze
    except ImportError as e:
        print(f"official: not importable here ({e}); skipped")
        return None
    model = OfficialAutoGaze.from_pretrained(model_dir).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    algo = NTP(optimize_task_loss_prediction=True)

    def step(batch):
        info = dict(batch["gazing_info"])
        inputs = {"video": batch["video"], "gt_gazing_info": info}
        out = model(inputs, gazing_info=info, target_scales=[32, 64, 112, 224], target_patch_size=16)
        task = {"task_losses": info["task_losses"], "task_losses_mask": torch.ones_like(info["task_losses"])}
        loss = algo(inputs, out, task)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the official fixture model)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--per-frame", type=int, default=26)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_train: needs a CUDA GPU (CPU timings are not what this measures)")
        return
    device = torch.device("cuda")
    model_dir = args.model or str(default_model_dir())
    card = card_name()
    print(f"card: {card}\nmodel: {model_dir}\nclips of {args.frames} frames at 224x224, {args.per_frame} labels per "
          f"frame; step = score + NTP loss + backward + clip + optimizer update")
    variants = {"ours": ours(model_dir, "bf16", device), "ours-fp32": ours(model_dir, "fp32", device)}
    off = official(model_dir, device)
    if off is not None:
        variants["official"] = off
    rows = []
    print(f"{'variant':<10} {'batch':>5} {'ms/step':>9} {'clips/s':>9} {'peak MiB':>9}")
    for B in args.batches:
        batch = make_batch(B, args.frames, args.per_frame, device)
        for name, step in variants.items():
            try:
                ms = median(time_ms(lambda: step(batch), warmup=args.warmup, reps=args.reps))
                mib = peak_mib(lambda: step(batch))
            except torch.cuda.OutOfMemoryError:
                print(f"{name:<10} {B:>5} out of memory")
                torch.cuda.empty_cache()
                continue
            rows.append({"variant": name, "batch": B, "ms_per_step": ms, "clips_per_s": B / ms * 1e3,
                         "peak_mib": mib})
            print(f"{name:<10} {B:>5} {ms:>9.2f} {B / ms * 1e3:>9.1f} {mib:>9.0f}")
    save_json("bench_train.json", {"card": card, "model": model_dir, "frames": args.frames,
                                   "labels_per_frame": args.per_frame, "rows": rows})


if __name__ == "__main__":
    main()
