"""Soak: many clips through one process, watching for leaks.

    python benchmarks/soak.py [--clips 10000] [--vit-clips 1000] [--model DIR] [--quick]

`generate` (the fast path) runs over --clips random 16-frame 224-px clips spread over batch sizes 1, 16, 64
and 256 and both precisions (fp32, tf32), round-robin, then the gazed SigLIP-B/16 (random init, bf16,
`accelerate`, block-causal) over --vit-clips clips of varying token counts (the last gaze outputs). After each
call: the allocator's allocated and reserved bytes, the device's used memory (nvml) and the process RSS. The
first round of every configuration is warm-up (runners, CUDA graphs and buckets are built then); after it,
no figure may grow by more than --slack-mib (exit 1 if one does). Prints a table; --json FILE keeps the
samples.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gaze import default_model_dir  # noqa: E402
from common import card_name  # noqa: E402

import autogaze_ext as ag  # noqa: E402

MIB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    def __init__(self, device: torch.device):
        self.device = device
        self.handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                self._nvml = pynvml
            except Exception:  # nvml missing or not permitted: the allocator's figures still count
                self.handle = None
        self.rows: list[dict] = []

    def sample(self, phase: str, step: int, clips: int) -> None:
        row = {"phase": phase, "step": step, "clips": clips, "t": time.perf_counter(), "rss": rss_bytes()}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            row["allocated"] = torch.cuda.memory_allocated(self.device)
            row["reserved"] = torch.cuda.memory_reserved(self.device)
            if self.handle is not None:
                row["device_used"] = self._nvml.nvmlDeviceGetMemoryInfo(self.handle).used
        self.rows.append(row)


def growth(rows: list[dict], key: str) -> tuple[float, float, float]:
    """(value at the end of warm-up, max after it, growth) in MiB."""
    warm = [r for r in rows if r["warm"]]
    after = [r for r in rows if not r["warm"]]
    if key not in rows[0] or not warm or not after:
        return float("nan"), float("nan"), 0.0
    base = max(r[key] for r in warm) / MIB
    peak = max(r[key] for r in after) / MIB
    return base, peak, peak - base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--vit-clips", type=int, default=1_000)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--slack-mib", type=float, default=64.0)
    ap.add_argument("--quick", action="store_true", help="small batches and counts (a CPU smoke run)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = [1, 16, 64, 256] if not args.quick else [1, 2]
    precisions = ["fp32", "tf32"] if dev.type == "cuda" else ["fp32"]
    if args.quick:
        args.clips, args.vit_clips = min(args.clips, 12), min(args.vit_clips, 4)
    model = ag.AutoGaze.from_pretrained(args.model or default_model_dir()).to(dev).eval()
    print(f"card: {card_name()} | torch {torch.__version__} | clips {args.clips} (generate) + {args.vit_clips} (ViT)")

    sampler = Sampler(dev)
    configs = [(b, p) for p in precisions for b in batches]
    videos = {b: torch.randn(b, 16, 3, 224, 224, generator=torch.Generator().manual_seed(b)).to(dev) for b in batches}
    seen: set = set()
    done, step, last_out = 0, 0, None
    t0 = time.perf_counter()
    while done < args.clips:
        for b, prec in configs:
            if done >= args.clips:
                break
            # a new frame of noise each call (the same memory): varying ids and counts, fixed shapes
            videos[b].normal_()
            with torch.no_grad():
                out = model.generate(videos[b], gazing_ratio=0.1, task_loss_requirement=0.7, precision=prec)
            done += b
            step += 1
            sampler.sample(f"generate B={b} {prec}", step, done)
            sampler.rows[-1]["warm"] = (b, prec) not in seen
            seen.add((b, prec))
            if b == max(batches):
                last_out = out
    gen_s = time.perf_counter() - t0

    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
               patch_size=16) if not args.quick else dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                           num_attention_heads=2, image_size=224, patch_size=16)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    vit = ag.accelerate(SiglipVisionModel(SiglipVisionConfig(**cfg)).to(dev, dtype).eval())
    vb = 32 if not args.quick else 2
    vid = torch.randn(vb, 16, 3, 224, 224, device=dev, dtype=dtype)
    vdone, t1, vsteps = 0, time.perf_counter(), 0
    while vdone < args.vit_clips:
        # varying token totals: gaze a slice of the last outputs' rows (ratio and requirement vary by clip)
        videos[max(batches)].normal_()
        with torch.no_grad():
            g = model.generate(videos[max(batches)][:vb], gazing_ratio=0.05 + 0.05 * (vsteps % 4),
                               task_loss_requirement=0.7)
            vit(vid, gaze=g)
        vdone += vb
        vsteps += 1
        sampler.sample("gazed ViT", step + vsteps, vdone)
        sampler.rows[-1]["warm"] = vsteps <= 8  # the first buckets are captured / compiled here
    vit_s = time.perf_counter() - t1

    ok = True
    print(f"generate: {done} clips in {gen_s:.1f} s ({done / gen_s:.0f} clips/s incl. sampling); "
          f"gazed ViT: {vdone} clips in {vit_s:.1f} s")
    print(f"{'figure':<14} {'phase':<10} {'after warm-up MiB':>18} {'max after MiB':>14} {'growth MiB':>11}")
    for phase, rows in (("generate", [r for r in sampler.rows if r["phase"].startswith("generate")]),
                        ("gazed ViT", [r for r in sampler.rows if r["phase"] == "gazed ViT"])):
        for key in ("allocated", "reserved", "device_used", "rss"):
            base, peak, grow = growth(rows, key)
            if base != base:
                continue
            bad = grow > args.slack_mib
            ok &= not bad
            print(f"{key:<14} {phase:<10} {base:>18.1f} {peak:>14.1f} {grow:>11.1f}{'  GROWS' if bad else ''}")
    if args.json:
        args.json.write_text(json.dumps({"card": card_name(), "rows": sampler.rows, "ok": ok}, indent=1))
    print("no growth after warm-up" if ok else f"FAILED: growth above {args.slack_mib} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
