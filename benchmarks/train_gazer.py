"""A trained gazer, measured: generate videos, label them with the greedy gazer, train NTP from random init, and
compare on held-out clips, all within one wall-clock budget on one device.

    python benchmarks/train_gazer.py --out DIR [--minutes 7] [--example VIDEO] [--device cuda]
    python benchmarks/train_gazer.py --quick --out DIR          # tiny sizes, CPU, ~1.5 min (smoke test)
    python benchmarks/train_gazer.py --package CKPT_DIR [--package-to DIR]   # bf16 copy for --checkpoint builtin

Phases (each timed, the budget includes all of them):

1. data: ``--videos`` generated scenes (``autogaze_ext.synthetic.scene_video``: objects over textured or flat
   backgrounds, camera pans, near-static scenes, noise beside flat regions, speeds 0.5-8 px/frame), each
   ``--video-frames`` long and cut into clips of ``--clip-len`` frames at 224 x 224; every ``--heldout-every``-th
   video is held out (the split is by video). ``--example`` (a real video, decoded with PyAV by the product's
   decoder) is held out too, reported on its own as well; skipped when the file is absent.
2. baselines on the held-out clips: the greedy gazer at several max-error thresholds and at the token caps of
   the trained model, random selection and a uniform multi-scale grid at the same caps; greedy cost per clip.
3. labels: greedy labels of the training clips through ``autogaze_ext.training.labels.label_clips`` (official
   record format, checked with ``validate_record``), in batches, until ``--label-share`` of the budget is spent
   or every clip is labelled; ms per clip.
4. train: ``autogaze_ext.training.Trainer`` (released architecture, random init, AdamW, bf16 autocast on CUDA,
   grad clipping, warm-up then cosine) stepped on in-memory batches (``Trainer.step_on``) until the budget left
   minus the measured cost of the final evaluation; the step count of the schedule comes from the timed first
   steps.
5. evaluation: the trained model at several gazing ratios and task-loss requirements; its ``generate`` cost
   per clip against the greedy gazer's on the same device.

Every method is scored by the greedy gazer's own painter (``labels.frame_errors``: mean absolute error in
normalised pixels of each frame repainted from its gazed tokens, the previous frame's reconstruction carried
over), against the tokens it kept per frame. Outputs under ``--out``: ``error_vs_tokens.png`` (matplotlib when
installed, else a plain PNG drawn here), ``results.md``, ``results.json`` (every number, the loss curve), and
``checkpoint/`` (official format: config.json, model.safetensors, preprocessor_config.json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import card_name, median, time_ms  # noqa: E402

SIZE = 224
TOKENS = 265
SCALES = (32, 64, 112, 224)
GRIDS = tuple(s // 16 for s in SCALES)
MAX_PACKED_BYTES = 7 * 2**20

# sizes for a GPU (a meaningful run in 7 minutes on one H100) and for --quick (a 2-core CPU in ~1.5 minutes)
FULL = dict(minutes=7.0, videos=300, video_frames=48, clip_len=16, heldout_every=8, example_clips=4,
            batch_size=32, label_batch=128, eval_batch=64, greedy_batch=128, label_ratio=0.2, label_max_error=0.05,
            ratios=[0.02, 0.04, 0.08, 0.12, 0.2], thresholds=[0.3, 0.2, 0.15, 0.1, 0.07, 0.05],
            requirements=[0.3, 0.2, 0.15, 0.1, 0.07], label_share=0.25, lr=5e-4, min_lr=1e-5, warmup=100,
            probe_steps=10, cost_reps=5)
QUICK = dict(minutes=1.5, videos=10, video_frames=8, clip_len=4, heldout_every=5, example_clips=1,
             batch_size=2, label_batch=4, eval_batch=4, greedy_batch=4, label_ratio=0.05, label_max_error=0.05,
             ratios=[0.02, 0.05], thresholds=[0.3, 0.15], requirements=[0.2], label_share=0.1, lr=5e-4,
             min_lr=1e-5, warmup=2, probe_steps=2, cost_reps=1)


class BudgetError(SystemExit):
    """The wall-clock budget cannot fit the run (exit status 2, with the reason)."""

    def __init__(self, msg: str):
        super().__init__(2)
        self.msg = msg


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- data
def make_data(a, device, proc):
    """Generated scenes -> training clips (uint8 on the device) and held-out clips (normalised, on the device)."""
    from autogaze_ext.synthetic import SCENE_KINDS, scene_video

    if a.video_frames % a.clip_len:
        raise ValueError(f"--video-frames: {a.video_frames} is not a multiple of --clip-len {a.clip_len}")
    per = a.video_frames // a.clip_len
    seeds = [a.seed * 100_003 + i for i in range(a.videos)]
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as ex:  # numpy releases the GIL in its loops
        videos = list(ex.map(lambda s: scene_video(a.video_frames, SIZE, seed=s), seeds))
    train, test, test_src, train_meta = [], [], [], []
    for i, v in enumerate(videos):
        clips = torch.from_numpy(v).view(per, a.clip_len, SIZE, SIZE, 3)
        kind = SCENE_KINDS[seeds[i] % len(SCENE_KINDS)]
        if i % a.heldout_every == 0:
            test.append(proc(clips, device=device))
            test_src += [f"synthetic/{kind}"] * per
        else:
            train.append(clips)
            train_meta += [(i, c, kind) for c in range(per)]
    n_example = 0
    if a.example:
        if not os.path.isfile(a.example):
            log(f"--example: {a.example!r} not found; evaluating on generated clips only")
        else:
            ex_clips = read_example(a.example, a.clip_len, a.example_clips, proc)
            test.append(ex_clips.to(device))
            test_src += ["example"] * ex_clips.shape[0]
            n_example = ex_clips.shape[0]
    if not train or not test:
        raise ValueError(f"--videos: {a.videos} videos with --heldout-every {a.heldout_every} leave no training or no "
                         f"held-out video")
    train_u8 = torch.cat(train).to(device)
    test_v = torch.cat(test)
    stats = {"videos": a.videos, "frames_per_video": a.video_frames, "clip_len": a.clip_len,
             "train_clips": int(train_u8.shape[0]), "heldout_clips": int(test_v.shape[0]),
             "heldout_example_clips": n_example, "frames_generated": a.videos * a.video_frames,
             "seconds_of_video_at_25fps": a.videos * a.video_frames / 25.0,
             "kinds": {k: sum(1 for s in seeds if SCENE_KINDS[s % len(SCENE_KINDS)] == k) for k in SCENE_KINDS}}
    return train_u8, train_meta, test_v, test_src, stats


def read_example(path: str, clip_len: int, max_clips: int, proc) -> torch.Tensor:
    """Whole clips of a real video as the label loader prepares them (processor at shortest edge 224, then
    224 x 224 bicubic): (N, clip_len, 3, 224, 224)."""
    import torch.nn.functional as F

    try:
        from autogaze_ext.pipeline.decode import ClipReader
    except ImportError as e:  # pragma: no cover - PyAV missing
        raise ValueError(f"--example: decoding {path!r} needs PyAV (pip install av): {e}") from None
    out = []
    for c in ClipReader(os.fspath(path), clip_len=clip_len, max_frames=clip_len * max_clips, buffers=2, converters=1):
        if c.real == clip_len:
            x = proc(c.frames.clone()[None])[0]
            if x.shape[-2:] != (SIZE, SIZE):
                x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
            out.append(x)
        c.release()
    if not out:
        raise ValueError(f"--example: {path!r} has fewer than {clip_len} frames")
    return torch.stack(out)


# ------------------------------------------------------------------------------------- selection
class _Masks:
    """What frame_errors reads of a gaze: per-scale (B, T, g*g) masks."""

    def __init__(self, flat: torch.Tensor):  # flat (B, T, 265) 0/1
        self.gazing_mask = list(flat.split([g * g for g in GRIDS], dim=-1))


def random_gaze(video: torch.Tensor, k: int, gen: torch.Generator) -> _Masks:
    B, T = video.shape[:2]
    ids = torch.rand(B, T, TOKENS, generator=gen).argsort(-1)[..., :k]
    flat = torch.zeros(B, T, TOKENS).scatter_(-1, ids, 1.0)
    return _Masks(flat.to(video.device))


def uniform_ids(k: int) -> list[int]:
    """k token ids of a uniform multi-scale grid: whole grids coarse to fine while they fit, the rest spread
    evenly over the next finer grid."""
    ids, off = [], 0
    for g in GRIDS:
        n = g * g
        left = k - len(ids)
        if left <= 0:
            break
        if left >= n:
            ids += range(off, off + n)
        else:
            ids += [off + int(j) for j in np.floor(np.linspace(0, n - 1, left) + 0.5)]
        off += n
    return ids


def uniform_gaze(video: torch.Tensor, k: int) -> _Masks:
    B, T = video.shape[:2]
    flat = torch.zeros(B, T, TOKENS, device=video.device)
    flat[..., uniform_ids(k)] = 1.0
    return _Masks(flat)


def evaluate(gaze, test: torch.Tensor, src: list[str], batch: int, desc: str) -> dict:
    """Run ``gaze(video) -> masks`` over the held-out clips; the painter's error and the tokens kept per frame,
    overall, on generated clips and on the example video."""
    from autogaze_ext.training.labels import frame_errors

    errs, toks = [], []
    for i in range(0, test.shape[0], batch):
        v = test[i:i + batch]
        out = gaze(v)
        errs.append(frame_errors(v, out.gazing_mask, SCALES).mean(1).float().cpu())
        toks.append(sum(m.float().sum(-1) for m in out.gazing_mask).mean(1).cpu())
    e, t = torch.cat(errs), torch.cat(toks)
    res = {"setting": desc, "tokens_per_frame": float(t.mean()), "error": float(e.mean())}
    for name, keep in (("synthetic", [s != "example" for s in src]), ("example", [s == "example" for s in src])):
        m = torch.tensor(keep)
        if m.any():
            res[f"error_{name}"] = float(e[m].mean())
            res[f"tokens_{name}"] = float(t[m].mean())
    return res


def caps(ratios) -> list[int]:
    # the model's cap for a ratio: trunc(float32(ratio) * 265), at least 1
    return [max(1, int((torch.tensor(r, dtype=torch.float32) * TOKENS).item())) for r in ratios]


# ------------------------------------------------------------------------------------------ phases
def run_baselines(a, test, src, device, bar) -> tuple[dict, dict]:
    from autogaze_ext.greedy import GreedyGazer

    greedy = GreedyGazer().to(device)
    curves = {"greedy (max error)": [], "greedy (cap)": [], "random": [], "uniform grid": []}
    for e in a.thresholds:
        curves["greedy (max error)"].append(
            evaluate(lambda v: greedy.generate(v, max_error=e), test, src, a.greedy_batch, f"max_error={e}"))
        bar.update(1)
    gen = torch.Generator().manual_seed(a.seed + 17)
    for r, k in zip(a.ratios, caps(a.ratios)):
        curves["greedy (cap)"].append(
            evaluate(lambda v: greedy.generate(v, gazing_ratio=r, max_error=0.0), test, src, a.greedy_batch,
                     f"gazing_ratio={r} (cap {k})"))
        curves["random"].append(evaluate(lambda v: random_gaze(v, k, gen), test, src, a.eval_batch, f"{k} per frame"))
        curves["uniform grid"].append(evaluate(lambda v: uniform_gaze(v, k), test, src, a.eval_batch,
                                               f"{k} per frame"))
        bar.update(1)
    # cost on one batch of held-out clips: the label setting, and the cap the trained model is timed at
    vb = test[: a.eval_batch]
    r_mid = a.ratios[len(a.ratios) // 2]
    costs = {"batch": int(vb.shape[0]), "greedy_ms_per_clip": {}}
    for name, kw in ((f"labels (gazing_ratio={a.label_ratio}, max_error={a.label_max_error})",
                      dict(gazing_ratio=a.label_ratio, max_error=a.label_max_error)),
                     (f"gazing_ratio={r_mid}", dict(gazing_ratio=r_mid, max_error=0.0)),
                     ("max_error=0.15", dict(max_error=0.15))):
        ms = time_ms(lambda: greedy.generate(vb, **kw), warmup=1, reps=max(1, a.cost_reps // 2))
        costs["greedy_ms_per_clip"][name] = median(ms) / vb.shape[0]
    return curves, costs


def run_labels(a, train_u8, proc, device, until: float) -> tuple[list[dict], dict]:
    """Greedy labels of training clips in a seeded order (so a partial run covers every kind) until ``until``."""
    from tqdm import tqdm

    from autogaze_ext.greedy import GreedyGazer
    from autogaze_ext.training.labels import label_clips, validate_record

    greedy = GreedyGazer().to(device)
    n = train_u8.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed + 1)).tolist()
    need = 2 * a.batch_size
    records, idx = [], []
    busy = 0.0
    with tqdm(total=n, desc="labels", unit="clip", file=sys.stderr, dynamic_ncols=True) as bar:
        for i in range(0, n, a.label_batch):
            if time.perf_counter() >= until and len(records) >= need:
                break
            b = order[i:i + a.label_batch]
            t0 = time.perf_counter()
            v = proc(train_u8[b], device=device)
            recs = label_clips(greedy, v, gazing_ratio=a.label_ratio, max_error=a.label_max_error)
            sync(device)
            busy += time.perf_counter() - t0
            for j, r in zip(b, recs):
                validate_record(f"train clip {j}", r, clip_len=a.clip_len, need_task_losses=True)
            records += recs
            idx += b
            bar.update(len(b))
    if len(records) < need:
        raise BudgetError(f"--minutes: only {len(records)} clips labelled, the trainer needs at least {need}")
    toks = [len(f) for r in records for f in r["gazing_pos"]]
    info = {"clips": len(records), "of": n, "ms_per_clip": 1e3 * busy / len(records), "seconds": busy,
            "tokens_per_frame_mean": float(np.mean(toks)), "tokens_per_frame_max": int(max(toks)),
            "gazing_ratio": a.label_ratio, "max_error": a.label_max_error}
    return [records[k] for k in np.argsort(idx)], {**info, "indices": sorted(idx)}


class _Prefetch:
    """Items of an iterator produced ahead in a daemon thread (at most ``depth`` waiting)."""

    def __init__(self, it, depth: int = 4):
        import queue
        import threading

        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def run():
            try:
                for item in it:
                    while not self._stop.is_set():
                        try:
                            self._q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                self._q.put(e)

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()

    def get(self):
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()


class _Sized(torch.utils.data.Dataset):
    """The Trainer reads only the data set's size (batches are made here, on the device)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def run_training(a, train_u8, labelled: list[int], records, proc, device, deadline_fn, test):
    from tqdm import tqdm

    from autogaze_ext.training.collate import collate_gazing_info
    from autogaze_ext.training.trainer import TrainConfig, Trainer, lr_factor

    state_dir = tempfile.mkdtemp(prefix="train_gazer_")
    cfg = TrainConfig(videos=["(generated, in memory)"], out=os.path.join(state_dir, "run"), steps=10**6,
                      batch_size=a.batch_size, lr=a.lr, min_lr=a.min_lr, warmup_steps=a.warmup, seed=a.seed,
                      workers=0, device=str(device), precision=a.precision, quiet=True, clip_len=a.clip_len)
    tr = Trainer(cfg, dataset=_Sized(len(records)))
    rows = torch.tensor(labelled, device=device)

    def collated():
        """Batches of labels in a seeded order (epochs of a fresh permutation each), collated as the official
        trainer does; made in a thread so that the Python collation overlaps the GPU's step."""
        gen = torch.Generator().manual_seed(a.seed + 2)
        while True:
            perm = torch.randperm(len(records), generator=gen).tolist()
            for i in range(0, len(perm) - a.batch_size + 1, a.batch_size):
                sel = perm[i:i + a.batch_size]
                yield sel, collate_gazing_info([records[j]["gazing_pos"] for j in sel],
                                               [records[j]["task_losses"] for j in sel], num_frames=a.clip_len)

    batches = _Prefetch(collated(), depth=4)

    def next_batch():
        sel, info = batches.get()
        video = proc(train_u8[rows[sel]], device=device)
        return {"video": video, "gazing_info": {k: v.to(device) for k, v in info.items()}}

    # the evaluation after training costs about what it costs on the untrained model at the same caps (an early
    # stop only shortens it): time each setting on one batch
    per_setting = model_eval_probe(tr.model, test, a)
    n_batches = math.ceil(test.shape[0] / a.eval_batch)
    t_label = per_setting[a.label_ratio]
    eval_est = n_batches * (sum(per_setting[r] for r in a.ratios) + len(a.requirements) * t_label) + \
        (a.cost_reps + 1) * (per_setting[a.ratios[len(a.ratios) // 2]] + 2 * t_label)
    tr.model.train()
    deadline = deadline_fn(eval_est)
    curve, times = [], []
    total = None
    with tqdm(desc="train", unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        while time.perf_counter() < deadline and (total is None or tr.step < total):
            t_it = time.perf_counter()
            m = tr.step_on(next_batch())
            times.append(time.perf_counter() - t_it)  # the whole iteration: batch, step, metrics
            curve.append({"step": tr.step, **{k: m[k] for k in ("loss", "ntp_loss", "task_loss_prediction_loss",
                                                                "lr", "grad_norm") if k in m}})
            bar.update(1)
            bar.set_postfix_str(f"loss {m['loss']:.3f} lr {m['lr']:.1e}", refresh=False)
            if total is None and tr.step >= a.probe_steps:
                # the schedule's length from the timed steps (the first ones include warm-up costs)
                per = median(times[1:] or times)
                left = max(0.0, deadline - time.perf_counter())
                total = tr.step + int(left / (per * 1.03))
                tr.cfg.steps = total
                warm, ratio = tr.warmup, a.min_lr / a.lr
                tr.scheduler.lr_lambdas = [lambda s, total=total, warm=warm: lr_factor(s, total, warm, ratio)]
                bar.total = total
                log(f"  {per * 1e3:.1f} ms/step -> {total} steps ({left:.0f} s left for training, evaluation "
                    f"reserve {eval_est:.0f} s)")
    batches.close()
    if not curve:
        raise BudgetError("--minutes: no time left to train after data, baselines and labels")
    tr.model.eval()
    info = {"steps": tr.step, "planned_steps": total, "batch_size": a.batch_size, "lr": a.lr, "min_lr": a.min_lr,
            "warmup_steps": tr.warmup, "precision": a.precision if device.type == "cuda" else "fp32 (CPU)",
            "iteration_ms_median": 1e3 * median(times), "clips_per_s": a.batch_size / median(times),
            "epochs": tr.step * a.batch_size / len(records), "eval_reserve_s": eval_est,
            "loss_first": curve[0]["loss"], "loss_last": float(np.mean([c["loss"] for c in curve[-20:]]))}
    shutil.rmtree(state_dir, ignore_errors=True)
    return tr, curve, info


def model_eval_probe(model, test, a) -> dict:
    """Seconds of one generate call on one batch of held-out clips, per gazing ratio (warmed up first)."""
    model.eval()
    v = test[: a.eval_batch]
    out = {}
    for r in [a.ratios[0]] + sorted(set(a.ratios) | {a.label_ratio}):
        t0 = time.perf_counter()
        model.generate(v, gazing_ratio=r)
        sync(v.device)
        out[r] = time.perf_counter() - t0
    return out


def run_model_eval(a, model, test, src) -> tuple[dict, dict]:
    curves = {"trained (ratio)": [], "trained (requirement)": []}
    for r, k in zip(a.ratios, caps(a.ratios)):
        curves["trained (ratio)"].append(evaluate(lambda v: model.generate(v, gazing_ratio=r), test, src,
                                                  a.eval_batch, f"gazing_ratio={r} (cap {k})"))
    for q in a.requirements:
        curves["trained (requirement)"].append(
            evaluate(lambda v: model.generate(v, gazing_ratio=a.label_ratio, task_loss_requirement=q), test, src,
                     a.eval_batch, f"task_loss_requirement={q}, gazing_ratio={a.label_ratio}"))
    vb = test[: a.eval_batch]
    r_mid = a.ratios[len(a.ratios) // 2]
    costs = {"trained_ms_per_clip": {}}
    q_mid = a.requirements[len(a.requirements) // 2]
    for name, kw in ((f"gazing_ratio={r_mid}", dict(gazing_ratio=r_mid)),
                     (f"gazing_ratio={a.label_ratio}", dict(gazing_ratio=a.label_ratio)),
                     (f"task_loss_requirement={q_mid}", dict(gazing_ratio=a.label_ratio, task_loss_requirement=q_mid))):
        costs["trained_ms_per_clip"][name] = median(time_ms(lambda: model.generate(vb, **kw), warmup=1,
                                                            reps=a.cost_reps)) / vb.shape[0]
    return curves, costs


# ---------------------------------------------------------------------------------------- outputs
COLOURS = {"trained (ratio)": (214, 39, 40), "trained (requirement)": (255, 127, 14),
           "greedy (max error)": (31, 119, 180), "greedy (cap)": (23, 190, 207), "random": (127, 127, 127),
           "uniform grid": (44, 160, 44)}


def write_plot(path: str, curves: dict, loss: list[dict]) -> str:
    """Error vs tokens kept (left) and the training loss (right). matplotlib when installed, else drawn here."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plain_plot(path, curves, loss)
        return "plain PNG (matplotlib not installed)"
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["tokens_per_frame"])
        c = [v / 255 for v in COLOURS.get(name, (0, 0, 0))]
        ax.plot([p["tokens_per_frame"] for p in pts], [p["error"] for p in pts], "o-", color=c, label=name)
    ax.set_xlabel("tokens kept per frame (of 265)")
    ax.set_ylabel("reconstruction error (greedy painter, MAE, normalised px)")
    ax.set_title("held-out clips")
    ax.grid(alpha=0.3)
    ax.legend()
    bx.plot([p["step"] for p in loss], [p["loss"] for p in loss], color="k", lw=0.8)
    bx.set_xlabel("step")
    bx.set_ylabel("NTP loss (+ task-loss head)")
    bx.set_title("training loss")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return "matplotlib"


def _png(path: str, img: np.ndarray) -> None:
    """(H, W, 3) uint8 -> PNG, with the standard library only."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _plain_plot(path: str, curves: dict, loss: list[dict]) -> None:
    W, H, M = 1300, 520, 60
    img = np.full((H, W, 3), 255, np.uint8)
    texts: list[tuple[int, int, str, tuple]] = []

    def line(x0, y0, x1, y1, c, th=1):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.linspace(x0, x1, n).round().astype(int)
        ys = np.linspace(y0, y1, n).round().astype(int)
        for d in range(-(th // 2), th - th // 2):
            img[np.clip(ys + d, 0, H - 1), np.clip(xs, 0, W - 1)] = c

    def panel(x0, x1, series, xlabel, title):
        xs = [x for s in series for x, _ in s[1]]
        ys = [y for s in series for _, y in s[1]]
        lo_x, hi_x = min(xs), max(xs) or 1
        lo_y, hi_y = 0.0, max(ys) * 1.05 or 1
        px = lambda x: x0 + (x - lo_x) / max(hi_x - lo_x, 1e-9) * (x1 - x0)  # noqa: E731
        py = lambda y: H - M - (y - lo_y) / max(hi_y - lo_y, 1e-9) * (H - 2 * M)  # noqa: E731
        line(x0, H - M, x1, H - M, (0, 0, 0))
        line(x0, M, x0, H - M, (0, 0, 0))
        for f in (0, 0.5, 1):
            texts.append((int(px(lo_x + f * (hi_x - lo_x))) - 10, H - M + 8, f"{lo_x + f * (hi_x - lo_x):.3g}",
                          (0, 0, 0)))
            texts.append((x0 - 50, int(py(lo_y + f * (hi_y - lo_y))) - 6, f"{lo_y + f * (hi_y - lo_y):.3g}", (0, 0, 0)))
        texts.append(((x0 + x1) // 2 - 60, H - M + 28, xlabel, (0, 0, 0)))
        texts.append((x0, M - 40, title, (0, 0, 0)))
        for k, (name, pts, c) in enumerate(series):
            pts = sorted(pts)
            for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
                line(px(xa), py(ya), px(xb), py(yb), c, 2)
            for x, y in pts if len(pts) < 50 else []:
                cx, cy = int(px(x)), int(py(y))
                img[max(0, cy - 3):cy + 4, max(0, cx - 3):cx + 4] = c
            if len(series) > 1:
                texts.append((x1 - 170, M + 18 * k, name, c))

    panel(M + 30, 760, [(n, [(p["tokens_per_frame"], p["error"]) for p in pts], COLOURS.get(n, (0, 0, 0)))
                        for n, pts in curves.items()], "tokens kept per frame", "reconstruction error (held-out)")
    panel(850, W - 30, [("loss", [(p["step"], p["loss"]) for p in loss], (0, 0, 0))], "step", "training loss")
    try:
        from PIL import Image, ImageDraw

        pil = Image.fromarray(img)
        d = ImageDraw.Draw(pil)
        for x, y, s, c in texts:
            d.text((x, y), s, fill=c)
        img = np.asarray(pil).copy()
    except ImportError:
        try:
            import cv2

            for x, y, s, c in texts:
                cv2.putText(img, s, (x, y + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, c, 1, cv2.LINE_AA)
        except ImportError:
            pass  # no text: the table and the JSON carry the numbers
    _png(path, img)


def write_table(path: str, res: dict) -> None:
    L = ["# Trained gazer vs greedy, random and uniform selection", "",
         f"Device: {res['device']}. Date: {res['date']}. Command: `{res['command']}`.", "",
         f"Data: {res['data']['videos']} generated videos x {res['data']['frames_per_video']} frames "
         f"({res['data']['seconds_of_video_at_25fps'] / 60:.1f} min at 25 fps), {res['data']['train_clips']} training "
         f"clips ({res['labels']['clips']} labelled), {res['data']['heldout_clips']} held-out clips "
         f"({res['data']['heldout_example_clips']} of the example video). Labels: greedy, gazing_ratio "
         f"{res['labels']['gazing_ratio']}, max_error {res['labels']['max_error']}, "
         f"{res['labels']['ms_per_clip']:.1f} ms/clip. Training: {res['training']['steps']} steps of "
         f"{res['training']['batch_size']} clips ({res['training']['epochs']:.1f} epochs, "
         f"{res['training']['iteration_ms_median']:.1f} ms/step), loss {res['training']['loss_first']:.3f} -> "
         f"{res['training']['loss_last']:.3f}.", "",
         "Error: the greedy painter's mean absolute error (normalised pixels; one 8-bit level ~ 0.035) of each "
         "held-out frame repainted from its gazed tokens.", "",
         "| method | setting | tokens/frame | error | error, generated | error, example |", "|---|---|---|---|---|---|"]
    for name, pts in res["curves"].items():
        for p in pts:
            ex = f"{p['error_example']:.4f}" if "error_example" in p else "-"
            sy = f"{p['error_synthetic']:.4f}" if "error_synthetic" in p else "-"
            L.append(f"| {name} | {p['setting']} | {p['tokens_per_frame']:.1f} | {p['error']:.4f} | {sy} | {ex} |")
    L += ["", "| cost (ms per clip, batch of %d held-out clips) | |" % res["costs"]["batch"], "|---|---|"]
    for k, v in res["costs"]["trained_ms_per_clip"].items():
        L.append(f"| trained, {k} | {v:.3f} |")
    for k, v in res["costs"]["greedy_ms_per_clip"].items():
        L.append(f"| greedy, {k} | {v:.3f} |")
    L += ["", "| at the same token caps | " + " | ".join(f"{p['setting']}" for p in res["curves"]["random"]) + " |",
          "|---|" + "---|" * len(res["curves"]["random"])]
    for key in ("trained_over_random", "trained_over_uniform", "trained_over_greedy_cap"):
        L.append(f"| error ratio {key.replace('_', ' ')} | " + " | ".join(f"{v:.3f}" for v in res["summary"][key])
                 + " |")
    L += ["", "Phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res["phases_s"].items()), ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(L))


# ---------------------------------------------------------------------------------------- package
def package(ckpt: str, dest: str | None = None) -> str:
    """A trained checkpoint -> the packaged form of ``--checkpoint builtin``: bf16 safetensors + config.json +
    preprocessor_config.json, at most 7 MB, checked by loading it back."""
    from safetensors.torch import save_file

    import autogaze_ext
    from autogaze_ext.model import AutoGaze

    if not os.path.isfile(os.path.join(ckpt, "model.safetensors")):
        raise ValueError(f"--package: {ckpt!r} is not a checkpoint folder (no model.safetensors)")
    dest = dest or os.path.join(os.path.dirname(autogaze_ext.__file__), "checkpoints", "builtin")
    model = AutoGaze.from_pretrained(ckpt)
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    os.makedirs(dest, exist_ok=True)
    save_file(sd, os.path.join(dest, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(dest)
    proc = os.path.join(ckpt, "preprocessor_config.json")
    if os.path.isfile(proc):
        shutil.copyfile(proc, os.path.join(dest, "preprocessor_config.json"))
    size = sum(os.path.getsize(os.path.join(dest, f)) for f in os.listdir(dest))
    if size > MAX_PACKED_BYTES:
        raise ValueError(f"--package: the packaged checkpoint is {size / 2**20:.1f} MiB, over the 7 MiB limit")
    back = AutoGaze.from_pretrained(dest)  # loads and checks (finite weights, every key)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(back.state_dict().values(), sd.values()))
    if diff:
        raise RuntimeError(f"--package: the packaged weights read back differ by {diff}")
    log(f"packaged {ckpt} -> {dest} ({size / 2**20:.2f} MiB, bf16)")
    return dest


# ------------------------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (plot, table, JSON, checkpoint)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the whole run (default 7; "
                   "--quick: 1.5)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke test")
    p.add_argument("--example", default=None, metavar="VIDEO", help="a real video to hold out (skipped if absent)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="training autocast on CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--package", metavar="CKPT_DIR", help="only package CKPT_DIR for --checkpoint builtin, then exit")
    p.add_argument("--package-to", metavar="DIR", help="where --package writes (default: "
                   "autogaze_ext/checkpoints/builtin)")
    for k, v in FULL.items():  # sizes: defaults from FULL (or QUICK with --quick)
        if k == "minutes":
            continue
        opt = "--" + k.replace("_", "-")
        if isinstance(v, list):
            p.add_argument(opt, type=float, nargs="+", default=None)
        else:
            p.add_argument(opt, type=type(v), default=None)
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.package:
        return a
    if not a.out:
        p.error("--out: required (the folder for the plot, table, JSON and checkpoint)")
    if not a.minutes > 0:
        p.error(f"--minutes: expected a positive number, got {a.minutes}")
    for k in ("ratios",):
        if any(not 0 < r <= 1 for r in getattr(a, k)):
            p.error(f"--{k}: values must be in (0, 1]")
    if not 0 < a.label_ratio <= 1:
        p.error("--label-ratio: expected a value in (0, 1]")
    if not 1 <= a.clip_len <= 16:
        p.error("--clip-len: expected an int in [1, 16]")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    if a.package:
        package(a.package, a.package_to)
        return 0
    t_start = time.perf_counter()
    budget = a.minutes * 60.0
    end = t_start + budget

    from autogaze_ext.pipeline.cli import check_device
    from autogaze_ext.training.labels import label_processor

    device = check_device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    os.makedirs(a.out, exist_ok=True)
    proc = label_processor()
    phases: dict[str, float] = {}
    log(f"device {card_name() if device.type == 'cuda' else 'cpu'}; budget {budget:.0f} s")

    t = time.perf_counter()
    train_u8, train_meta, test, src, data = make_data(a, device, proc)
    sync(device)
    phases["data"] = time.perf_counter() - t
    log(f"data: {data['train_clips']} training clips, {data['heldout_clips']} held-out "
        f"({data['heldout_example_clips']} of the example) in {phases['data']:.1f} s")

    from tqdm import tqdm

    t = time.perf_counter()
    with tqdm(total=len(a.thresholds) + len(a.ratios), desc="baselines", file=sys.stderr, dynamic_ncols=True) as bar:
        curves, costs = run_baselines(a, test, src, device, bar)
    phases["baselines"] = time.perf_counter() - t
    log(f"baselines: {phases['baselines']:.1f} s")
    if time.perf_counter() > t_start + 0.6 * budget:
        raise BudgetError(f"--minutes: data and baselines took {time.perf_counter() - t_start:.0f} s of the "
                          f"{budget:.0f} s budget; give more minutes or fewer --videos / held-out clips")

    t = time.perf_counter()
    records, lab = run_labels(a, train_u8, proc, device, until=t + a.label_share * budget)
    phases["labels"] = time.perf_counter() - t
    labelled = lab.pop("indices")
    log(f"labels: {lab['clips']} of {lab['of']} clips, {lab['ms_per_clip']:.1f} ms/clip, "
        f"{lab['tokens_per_frame_mean']:.1f} tokens/frame")

    t = time.perf_counter()
    margin = 3.0 if device.type == "cuda" else 5.0  # saving, plot, table

    def train_deadline(eval_est: float) -> float:
        d = end - eval_est * 1.25 - margin
        if d - time.perf_counter() < max(10.0, 0.05 * budget):
            raise BudgetError(f"--minutes: {budget:.0f} s leave {max(0.0, d - time.perf_counter()):.0f} s to train "
                              f"after data ({phases['data']:.0f} s), baselines ({phases['baselines']:.0f} s), labels "
                              f"({phases['labels']:.0f} s) and the evaluation reserve ({eval_est:.0f} s); give more "
                              f"minutes")
        return d

    tr, loss_curve, training = run_training(a, train_u8, labelled, records, proc, device, train_deadline, test)
    phases["train"] = time.perf_counter() - t
    log(f"train: {training['steps']} steps, loss {training['loss_first']:.3f} -> {training['loss_last']:.3f}")

    t = time.perf_counter()
    ckpt = os.path.join(a.out, "checkpoint")
    tr.model.save_pretrained(ckpt)
    with open(os.path.join(ckpt, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(tr.processor.config, f, indent=2, sort_keys=True)
    phases["save"] = time.perf_counter() - t

    t = time.perf_counter()
    model_curves, model_costs = run_model_eval(a, tr.model, test, src)
    curves = {**model_curves, **curves}
    costs.update(model_costs)
    phases["evaluate"] = time.perf_counter() - t

    def ratio(x, y):
        return [p["error"] / q["error"] if q["error"] > 0 else float("nan") for p, q in zip(x, y)]

    tm = curves["trained (ratio)"]
    summary = {"caps": caps(a.ratios), "trained_over_random": ratio(tm, curves["random"]),
               "trained_over_uniform": ratio(tm, curves["uniform grid"]),
               "trained_over_greedy_cap": ratio(tm, curves["greedy (cap)"])}
    r_mid = a.ratios[len(a.ratios) // 2]
    g = costs["greedy_ms_per_clip"].get(f"gazing_ratio={r_mid}")
    m = costs["trained_ms_per_clip"].get(f"gazing_ratio={r_mid}")
    if g and m:
        summary["greedy_over_trained_cost_at_same_cap"] = g / m
    phases["total"] = time.perf_counter() - t_start
    res = {"device": card_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
           "torch": torch.__version__, "date": datetime.date.today().isoformat(),
           "command": "python benchmarks/train_gazer.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "budget_s": budget, "settings": {k: getattr(a, k) for k in FULL if k != "minutes"},
           "data": data, "labels": lab, "training": training, "curves": curves, "costs": costs,
           "summary": summary, "loss_curve": loss_curve, "phases_s": phases}
    try:
        from autogaze_ext import ops

        res["compiled_cuda_kernels"] = bool(ops.HAS_CUDA_KERNELS)
    except Exception:  # noqa: BLE001 - informational only
        pass
    with open(os.path.join(a.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    res["plot"] = write_plot(os.path.join(a.out, "error_vs_tokens.png"), curves, loss_curve)
    write_table(os.path.join(a.out, "results.md"), res)
    with open(os.path.join(a.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    log(open(os.path.join(a.out, "results.md"), encoding="utf-8").read())
    log(f"total {time.perf_counter() - t_start:.1f} s of {budget:.0f} s; outputs in {a.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BudgetError as e:
        print(f"error: {e.msg}", file=sys.stderr)
        sys.exit(2)
