"""``autogaze-ext label`` (gaze labels in the official JSON format) and ``autogaze-ext train`` (NTP / GRPO).

``label`` checks every option, the output file and the device before anything is decoded; videos already in
the label file are skipped (resume; ``--overwrite`` labels them again); the file is rewritten atomically after
batches and on Ctrl-C, so an interruption loses at most the batch in flight; a video that fails is reported and
the others go on (exit status 1 with the list).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .._cli_options import add_index_option, add_ray_options

# clips gazed per call when --batch-rows is not given (one progress step per call)
LABEL_BATCH_ROWS = {"cpu": 4, "cuda": 32}
SAVE_EVERY_S = 10.0  # rewrite the label file at most this often while running (and always at the end)


# ------------------------------------------------------------------------------------------- label
def add_label_parser(sub) -> argparse.ArgumentParser:
    from ..pipeline.cli import VIDEO_EXTENSIONS

    p = sub.add_parser("label", help="video files or folders -> gaze labels for training (official JSON format)",
                       description="Gaze the first 16-frame clip of each video (224 x 224, as the official training "
                                   "data) and write the official label JSON: per video, per frame the gazed ids and "
                                   "the reconstruction error after each one (task losses).")
    p.add_argument("inputs", nargs="*", metavar="VIDEO_OR_DIR",
                   help="video files, or folders searched recursively for " + " ".join(VIDEO_EXTENSIONS) +
                        ", or glob patterns ('videos/**/*.mp4'), or URIs PyAV opens")
    p.add_argument("--out", required=True, metavar="LABELS.json", help="label file to write (or resume)")
    p.add_argument("--checkpoint", metavar="DIR_OR_ID",
                   help="AutoGaze checkpoint (folder or hub id); default: the training-free greedy gazer")
    p.add_argument("--revision", help="hub revision of --checkpoint")
    p.add_argument("--max-error", type=float, default=None, metavar="E",
                   help="greedy gazer: stop a frame once its mean absolute reconstruction error is below E "
                        "(normalised pixels; default 0.15)")
    p.add_argument("--gazing-ratio", type=float, default=None, metavar="R",
                   help="at most this share of the 265 tokens per frame, in (0, 1]")
    p.add_argument("--task-loss-requirement", type=float, default=None, metavar="L",
                   help="AutoGaze early stop (with --checkpoint)")
    p.add_argument("--precision", choices=["fp32", "tf32"], default="fp32", help="AutoGaze precision (GPU)")
    p.add_argument("--clip-len", type=int, default=16, metavar="T", help="frames per clip (default 16, at most 16)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="clips gazed per call (default 4 on the CPU, 32 on a GPU)")
    p.add_argument("--overwrite", action="store_true", help="label videos again that the file already holds")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU compute threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--manifest", metavar="FILE",
                   help="videos listed in a .txt (one path or URI per line), .csv or .parquet ('path' column) file, "
                        "after any VIDEO_OR_DIR")
    r = add_ray_options(p, actor="gazer", ray_help="run on Ray Data: one gazer actor per GPU writing a record file "
                        "per video, merged into --out")
    r.add_argument("--records", metavar="DIR",
                   help="folder of the per-video record files, on storage every node sees (default: --out without "
                        ".json, plus .records)")
    add_index_option(r, "the run's index (path, status, tokens, seconds, error per video; default "
                     "RECORDS/index.parquet)")
    return p


def label_videos(args) -> list[str]:
    """The videos of VIDEO_OR_DIR... and --manifest, in order (folders as ``find_videos``), each once; two
    videos with the same label key are an error."""
    from ..pipeline.decode import is_uri
    from ..scale.manifest import _GLOB, expand_inputs
    from .labels import label_key

    if not args.inputs and not args.manifest:
        raise ValueError("inputs: give VIDEO_OR_DIR... or --manifest FILE")
    videos: list[str] = []
    for item in args.inputs:
        if not os.path.exists(item) and (is_uri(item) or _GLOB.search(item)):
            videos += [v for v, _ in expand_inputs([item], ".")]
        else:
            videos += find_videos([item])
    if args.manifest:
        from ..scale.manifest import read_manifest

        videos += [v for v, _ in read_manifest(args.manifest, ".")]
    seen: set[str] = set()
    keys: dict[str, str] = {}
    unique = []
    for v in videos:
        a = v if is_uri(v) else os.path.abspath(v)
        if a in seen:
            continue
        seen.add(a)
        k = label_key(v)
        if k in keys:
            raise ValueError(f"inputs: {keys[k]!r} and {v!r} share the label key {k!r} (the last three path "
                             f"components, by which the official trainer matches videos); rename one")
        keys[k] = v
        unique.append(v)
    return unique


def existing_labels(args) -> dict:
    """The label file to resume (empty when there is none)."""
    from .labels import read_labels

    if not (os.path.exists(args.out) and os.path.getsize(args.out) > 0):
        return {}
    try:
        return read_labels(args.out, clip_len=args.clip_len, allow_empty=True)
    except ValueError as e:
        raise ValueError(f"{e}\n--out: the existing label file cannot be resumed; fix it, or give another "
                         f"file") from None


def add_record(labels: dict, done: dict, video: str, record: dict) -> None:
    """Put a video's record into the label file (``done``: label key -> key in ``labels``). A video labelled
    before keeps its place; one labelled before under another spelling of its path is moved to the end."""
    from .labels import label_key

    old = done.get(label_key(video))
    if old is not None and old != video:
        labels.pop(old, None)
    labels[video] = record
    done[label_key(video)] = video


def find_videos(inputs: list[str]) -> list[str]:
    """Video files named or found (recursively, sorted) in folders; a folder without videos is an error."""
    from ..pipeline.cli import VIDEO_EXTENSIONS

    out: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(VIDEO_EXTENSIONS)]
            if not found:
                raise ValueError(f"inputs: folder {item!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
            out += found
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise ValueError(f"inputs: no such file or folder: {item!r}")
    seen, unique = set(), []
    for v in out:
        if os.path.abspath(v) not in seen:
            seen.add(os.path.abspath(v))
            unique.append(v)
    return unique


def _check_label_args(args) -> None:
    from ..cli import _finite, check_output

    _finite("--gazing-ratio", args.gazing_ratio, above=0, maximum=1, what="a ratio in (0, 1]")
    _finite("--task-loss-requirement", args.task_loss_requirement, minimum=0, what="a finite value >= 0")
    _finite("--max-error", args.max_error, minimum=0, what="a finite value >= 0")
    _finite("--batch-rows", args.batch_rows, minimum=1, what="an int >= 1")
    _finite("--threads", args.threads, minimum=1, what="an int >= 1")
    _finite("--clip-len", args.clip_len, minimum=1, maximum=16, what="an int in [1, 16]")
    if args.checkpoint and args.max_error is not None:
        raise ValueError("--max-error: applies to the training-free gazer; with --checkpoint use "
                         "--task-loss-requirement")
    if not args.checkpoint:
        if args.task_loss_requirement is not None:
            raise ValueError("--task-loss-requirement: needs --checkpoint (the greedy gazer stops on --max-error)")
        if args.precision != "fp32":
            raise ValueError("--precision: applies to a trained model (--checkpoint)")
        if args.revision:
            raise ValueError("--revision: applies to a hub id given with --checkpoint")
    if not args.out.lower().endswith(".json"):
        raise ValueError(f"--out: {args.out!r}: the label file is JSON; give a name ending in .json")
    args.out = check_output("--out", args.out)
    if not args.ray:
        for opt in ("address", "gpus", "cpus_per_gpu", "records", "index"):
            if getattr(args, opt) is not None:
                raise ValueError(f"--{opt.replace('_', '-')}: applies to --ray runs")


def run_label(args) -> int:
    from tqdm import tqdm

    from ..pipeline.cli import check_device
    from .labels import label_clips, label_key, label_processor, read_clip, write_labels

    _check_label_args(args)
    if args.ray:
        from ..scale.cli import run_label_ray

        return run_label_ray(args)
    device = check_device(args.device)
    videos = label_videos(args)
    labels = existing_labels(args)
    done = {label_key(k): k for k in labels}
    todo = [v for v in videos if args.overwrite or label_key(v) not in done]
    skipped = len(videos) - len(todo)
    if device.type == "cpu":
        from ..cli import configure_cpu_threads

        configure_cpu_threads(args.threads)
    from ..cli import _load_gazer

    gazer, proc, kw, name, settings = _load_gazer(args, device)
    proc = label_processor(proc)
    rows = args.batch_rows or LABEL_BATCH_ROWS.get(device.type, 16)
    print(f"labels: {name} on {device}; {len(todo)} video(s) to label, {skipped} already in {args.out}; "
          f"clips of {args.clip_len} frames at 224 x 224, {rows} per call", file=sys.stderr)
    if not todo:
        if not os.path.exists(args.out):
            write_labels(args.out, labels)
        return 0

    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(todo), unit="video", disable=args.quiet, dynamic_ncols=True, file=sys.stderr)
    tokens = slots = 0
    last_save = time.monotonic()
    new = 0

    def save(force: bool = False) -> None:
        nonlocal last_save
        if force or time.monotonic() - last_save >= SAVE_EVERY_S:
            write_labels(args.out, labels)
            last_save = time.monotonic()

    import torch
    from concurrent.futures import ThreadPoolExecutor

    def decode(v):
        try:
            return v, read_clip(v, args.clip_len, proc)[0], None
        except (ValueError, OSError, RuntimeError) as e:
            return v, None, f"{type(e).__name__}: {e}"

    pool = ThreadPoolExecutor(2, thread_name_prefix="autogaze-label-decode")
    batches = [todo[i: i + rows] for i in range(0, len(todo), rows)]
    try:
        ahead = pool.submit(lambda b: [decode(v) for v in b], batches[0])
        for bi in range(len(batches)):
            decoded = ahead.result()
            if bi + 1 < len(batches):  # decode the next batch while this one is gazed
                ahead = pool.submit(lambda b: [decode(v) for v in b], batches[bi + 1])
            ok = [(v, c) for v, c, err in decoded if err is None]
            for v, _, err in decoded:
                if err is not None:
                    failures.append((v, err))
                    bar.write(f"FAILED: {v}: {err}")
            if ok:
                try:
                    records = label_clips(gazer, torch.stack([c for _, c in ok]), **kw)
                except (ValueError, RuntimeError) as e:
                    records = None
                    for v, _ in ok:
                        failures.append((v, f"{type(e).__name__}: {e}"))
                        bar.write(f"FAILED: {v}: {e}")
                for (v, _), rec in zip(ok, records or []):
                    add_record(labels, done, v, rec)
                    new += 1
                    n = sum(len(f) for f in rec["gazing_pos"])
                    tokens, slots = tokens + n, slots + 265 * len(rec["gazing_pos"])
            bar.update(len(decoded))
            bar.set_postfix_str(f"kept {100 * tokens / max(slots, 1):.2f}% of tokens", refresh=False)
            save()
    except KeyboardInterrupt:
        bar.close()
        write_labels(args.out, labels)
        print(f"interrupted: {new} video(s) labelled in this run were saved to {args.out}; rerun the same command "
              f"to resume (labelled videos are skipped)", file=sys.stderr)
        return 130
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    bar.close()
    write_labels(args.out, labels)
    print(f"labels: {new} video(s) labelled, {skipped} skipped (already labelled), {len(failures)} failed; "
          f"{len(labels)} in {args.out}", file=sys.stderr)
    if failures:
        print(f"\n{len(failures)} of {len(todo)} videos failed:", file=sys.stderr)
        for v, e in failures:
            print(f"  {v}: {e}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------- train
def add_train_parser(sub) -> argparse.ArgumentParser:
    from .trainer import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a gazer: NTP on gaze labels or GRPO (torchrun for several GPUs)",
                       description="Train an AutoGaze gazer on labelled videos. --out is a checkpoint folder in the "
                                   "official format, rewritten every --save-every steps; the same command resumes "
                                   "it. Several GPUs: torchrun --nproc-per-node N -m autogaze_ext train ...")
    p.add_argument("--videos", nargs="+", required=True, metavar="DIR_OR_VIDEO",
                   help="training videos: folders (searched recursively) or files")
    p.add_argument("--labels", metavar="LABELS.json", help="label file (autogaze-ext label); required for ntp")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint folder to write (or resume)")
    p.add_argument("--init", metavar="DIR_OR_ID", help="start from this checkpoint; default: random init of the "
                                                       "released architecture")
    p.add_argument("--revision", help="hub revision of --init")
    p.add_argument("--model-config", metavar="CONFIG.json", help="architecture for a random init (config.json)")
    p.add_argument("--algo", choices=["ntp", "grpo"], default=d.algo, help="ntp (default) or grpo")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"clips per process and step (GRPO: videos, each sampled --group-size times; "
                        f"default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help=f"end of the cosine decay (default {d.min_lr})")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 5%% of --steps)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default 0)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient norm clip (default 1.0)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the init, data order and sampling")
    p.add_argument("--workers", type=int, default=d.workers, help="decoding worker processes per training process")
    p.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines (train_log.jsonl)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=d.precision,
                   help="bf16: autocast on CUDA as the official training forward (default); fp32: none")
    p.add_argument("--no-task-loss-prediction", action="store_true",
                   help="do not train the task-loss head (NTP trains it on the labels' task losses by default)")
    p.add_argument("--clip-len", type=int, default=d.clip_len, help="frames per clip (default 16)")
    g = p.add_argument_group("GRPO")
    g.add_argument("--group-size", type=int, default=d.group_size, help=f"samples per clip (default {d.group_size})")
    g.add_argument("--discount", type=float, default=d.discount, help=f"reward discount per slot ({d.discount})")
    g.add_argument("--gazing-ratio", type=float, default=d.gazing_ratio,
                   help=f"token cap per frame of the samples (default {d.gazing_ratio})")
    g.add_argument("--task-loss-requirement", type=float, default=None, help="early stop of the samples")
    g.add_argument("--temperature-start", type=float, default=d.temperature_start)
    g.add_argument("--temperature-end", type=float, default=d.temperature_end)
    g.add_argument("--reward-frames", type=int, default=d.reward_frames,
                   help="frames per clip whose reconstruction error (greedy painter) is a reward (default 2)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU compute threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_train(args) -> int:
    from .trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        videos=list(args.videos), labels=args.labels, out=args.out, init=args.init, revision=args.revision,
        model_config=args.model_config, algo=args.algo, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        min_lr=args.min_lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        seed=args.seed, workers=args.workers, save_every=args.save_every, log_every=args.log_every,
        device=args.device, precision=args.precision, optimize_task_loss_prediction=not args.no_task_loss_prediction,
        clip_len=args.clip_len, group_size=args.group_size, discount=args.discount, gazing_ratio=args.gazing_ratio,
        task_loss_requirement=args.task_loss_requirement, temperature_start=args.temperature_start,
        temperature_end=args.temperature_end, reward_frames=args.reward_frames, quiet=args.quiet)
    cfg.check()
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f"--out: {cfg.out!r} exists and is not a folder")
    if (args.device or "").startswith("cpu") or args.threads:
        from ..cli import configure_cpu_threads

        configure_cpu_threads(args.threads)
    trainer = Trainer(cfg)
    if trainer.is_main:
        n = sum(p.numel() for p in trainer.model.parameters())
        print(f"train: {cfg.algo} on {len(trainer.dataset)} clips, {trainer.world} process(es) on "
              f"{trainer.device.type}, {n:,} parameters ({'from ' + cfg.init if cfg.init else 'random init'}); "
              f"batch {cfg.batch_size} per process, {trainer.per_epoch} steps per epoch -> {cfg.out}", file=sys.stderr)
    try:
        step = trainer.train()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0 if step >= cfg.steps else 130
