"""``autogaze-ext encode VIDEO_OR_DIR... --out DIR``: gazed ViT features of many videos, one file each.

Everything that can be checked is checked before the first frame is decoded (inputs, output folder,
options, device, models). Videos already encoded completely are skipped (resume after an interruption;
``--overwrite`` redoes them); a video that fails is reported and the others go on; the exit status is 1
when any failed, with the list.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from .._cli_options import add_index_option, add_ray_options

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".3gp", ".y4m")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_parser(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("encode", help="video files or folders -> gazed ViT features (one safetensors file each)",
                       description="Decode, gaze and encode videos with the gazed ViT; one feature file per video "
                                   "in --out (load with autogaze_ext.load_features).")
    e.add_argument("inputs", nargs="*", metavar="VIDEO_OR_DIR",
                   help="video files, or folders searched recursively for " + " ".join(VIDEO_EXTENSIONS) +
                        ", or glob patterns ('videos/**/*.mp4'), or URIs PyAV opens")
    e.add_argument("--out", required=True, help="output folder (created if missing)")
    e.add_argument("--checkpoint", help="AutoGaze checkpoint: a local folder or a hub id (e.g. nvidia/AutoGaze); "
                                        "default: the training-free greedy gazer")
    e.add_argument("--revision", help="hub revision of --checkpoint (branch, tag or commit)")
    e.add_argument("--vit", help="ViT: a local transformers SigLIP folder, a hub id, or a timm name (timm/...); "
                                 "default: a random-init SigLIP-B/16 (timing only)")
    e.add_argument("--vit-revision", help="hub revision of --vit")
    e.add_argument("--gazing-ratio", type=float, help="max share of the 265 tokens per frame and tile")
    e.add_argument("--task-loss-requirement", type=float, help="AutoGaze early-stop threshold (with --checkpoint)")
    e.add_argument("--max-error", type=float, help="greedy gazer's stop rule (without --checkpoint; default 0.15)")
    e.add_argument("--precision", choices=["fp32", "tf32"], default="fp32",
                   help="gaze precision: fp32 (exact) or tf32 (GPU, faster; ids agree with fp32 mostly)")
    e.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="ViT and feature dtype (default bf16 on a GPU, fp32 on the CPU)")
    e.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    e.add_argument("--batch-size", type=int, default=None,
                   help="tile-clips per gaze/ViT batch (default: from the GPU's free memory; 16 on the CPU)")
    e.add_argument("--tile-mode", choices=["resize", "pad"], default="resize",
                   help="frames onto 224-px tiles: resize to the next multiple (default) or pad")
    e.add_argument("--max-frames", type=int, default=None, help="encode at most this many frames of each video")
    e.add_argument("--overwrite", action="store_true", help="re-encode videos whose output is already complete")
    e.add_argument("--no-fsync", action="store_true", help="skip fsync before the atomic rename (faster, less durable)")
    e.add_argument("--json", help="also write the summary (per video and totals) to this JSON file")
    e.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU compute threads (default: the usable CPUs, or $OMP_NUM_THREADS; README \"CPU threads\")")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--manifest", metavar="FILE",
                   help="videos listed in a .txt (one path or URI per line), .csv or .parquet ('path' column, "
                        "optional 'output' column relative to --out) file, besides any VIDEO_OR_DIR")
    r = add_ray_options(e, actor="encoder", ray_help="run on Ray Data: one encoder actor per GPU, CPU tasks checking "
                        "the videos, a Parquet index")
    add_index_option(r, "the run's index (path, status, clips, tokens, seconds, error per video; default "
                     "OUT/index.parquet)")
    return e


# ----------------------------------------------------------------------------------------- checks
def collect_inputs(inputs: list[str], out_dir: str) -> list[tuple[str, str]]:
    """(video, output file) pairs; folders keep their relative layout under out_dir."""
    pairs: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(VIDEO_EXTENSIONS):
                        found.append(os.path.join(root, name))
            if not found:
                raise ValueError(f"inputs: folder {item!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
            for f in found:
                rel = os.path.splitext(os.path.relpath(f, item))[0]
                pairs.append((f, os.path.join(out_dir, rel + ".safetensors")))
        elif os.path.isfile(item):
            pairs.append((item, os.path.join(out_dir, os.path.splitext(os.path.basename(item))[0] + ".safetensors")))
        else:
            raise ValueError(f"inputs: no such file or folder: {item!r}")
    seen: dict[str, str] = {}
    for video, out in pairs:
        key = os.path.abspath(out)
        if key in seen and os.path.abspath(seen[key]) != os.path.abspath(video):
            raise ValueError(f"inputs: {seen[key]!r} and {video!r} would both write {out!r}; encode them into "
                             f"different --out folders")
        seen[key] = video
    unique = {os.path.abspath(o): (v, o) for v, o in pairs}
    return list(unique.values())


def check_out_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out: {path!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".autogaze-write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"--out: cannot write into {path!r}: {e.strerror or e}") from None


def check_options(args) -> None:
    if args.gazing_ratio is not None and not 0 < args.gazing_ratio <= 1:
        raise ValueError(f"--gazing-ratio: expected a value in (0, 1], got {args.gazing_ratio}")
    if args.task_loss_requirement is not None and not args.task_loss_requirement >= 0:
        raise ValueError(f"--task-loss-requirement: expected a value >= 0, got {args.task_loss_requirement}")
    if args.max_error is not None and not args.max_error >= 0:
        raise ValueError(f"--max-error: expected a value >= 0, got {args.max_error}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected >= 1, got {args.threads}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames: expected >= 1, got {args.max_frames}")
    if args.checkpoint and args.max_error is not None:
        raise ValueError("--max-error: applies to the training-free gazer; with --checkpoint use "
                         "--task-loss-requirement")
    if not args.checkpoint and args.task_loss_requirement is not None:
        raise ValueError("--task-loss-requirement: needs --checkpoint (the training-free gazer stops on --max-error)")
    if not args.checkpoint and args.precision != "fp32":
        raise ValueError("--precision: applies to a trained AutoGaze (--checkpoint)")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json):
            raise ValueError(f"--json: {args.json!r} is a folder; give a file name")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ValueError(f"--json: cannot write {args.json!r} (folder missing or not writable)")


def check_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected 'cpu' or 'cuda', got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda', got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available")
    return dev


def encoder_kwargs(args, device) -> dict:
    """The ``Encoder`` arguments of the command line (one place, so --ray writes the same files)."""
    import torch

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    return dict(gazer=args.checkpoint, vit=args.vit, device=device, revision=args.revision,
                vit_revision=args.vit_revision, gazing_ratio=args.gazing_ratio,
                task_loss_requirement=args.task_loss_requirement, max_error=args.max_error, precision=args.precision,
                batch_size=args.batch_size, tile_mode=args.tile_mode, vit_dtype=dtype, features_dtype=dtype,
                fsync=not args.no_fsync)


def input_pairs(args) -> list[tuple[str, str]]:
    """(video, output) pairs of VIDEO_OR_DIR... and --manifest."""
    if not args.inputs and not args.manifest:
        raise ValueError("inputs: give VIDEO_OR_DIR... or --manifest FILE")
    if not args.manifest and all(os.path.exists(i) for i in args.inputs):
        return collect_inputs(args.inputs, args.out)
    from ..scale.manifest import expand_inputs, read_manifest

    pairs = expand_inputs(args.inputs, args.out) if args.inputs else []
    if args.manifest:
        pairs += read_manifest(args.manifest, args.out)
    seen: dict[str, str] = {}
    for video, out in pairs:
        key = os.path.abspath(out)
        if key in seen and seen[key] != video:
            raise ValueError(f"inputs: {seen[key]!r} and {video!r} would both write {out!r}")
        seen[key] = video
    return list({os.path.abspath(o): (v, o) for v, o in pairs}.values())


# -------------------------------------------------------------------------------------------- run
def run(args) -> int:
    import warnings

    from ..video import TileGeometry
    from .decode import probe
    from .encoder import Encoder
    from .features import is_complete

    check_options(args)
    if args.ray:
        from ..scale.cli import run_ray

        return run_ray(args)
    for opt in ("address", "gpus", "cpus_per_gpu", "index"):
        if getattr(args, opt) is not None:
            raise ValueError(f"--{opt.replace('_', '-')}: applies to --ray runs")
    device = check_device(args.device)
    pairs = input_pairs(args)
    check_out_dir(args.out)
    todo, skipped = [], []
    for video, out in pairs:
        (todo if args.overwrite or not is_complete(out) else skipped).append((video, out))
    if device.type == "cpu":
        from ..cli import configure_cpu_threads

        configure_cpu_threads(args.threads)  # the command line's measured CPU policy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = Encoder(**encoder_kwargs(args, device))
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    gz, vi = enc.gazer_info, enc.vit_info
    print(f"gazer: {'AutoGaze ' + str(gz.get('id')) if gz['kind'] == 'autogaze' else 'training-free greedy gazer'}"
          f"; ViT: {vi['name']}{' (RANDOM INIT: features for timing only)' if vi.get('random_init') else ''}"
          f"; device {device}, batch {enc.batch_size} tile-clips, features {str(enc.features_dtype)[6:]}",
          file=sys.stderr)
    for video, out in skipped:
        print(f"skip (complete): {video} -> {out}", file=sys.stderr)

    infos, total_frames = {}, 0
    for video, out in todo:  # frame counts for one progress bar over all videos; unreadable ones fail below
        try:
            infos[video] = probe(video)
            n = infos[video].frames or 0
            total_frames += min(n, args.max_frames) if args.max_frames else n
        except (OSError, ValueError):
            pass
    bar = _bar(total_frames or None, args.quiet)
    failures, results, t0 = [], [], time.perf_counter()
    tokens = possible = 0
    for i, (video, out) in enumerate(todo):
        bar.set_description(f"[{i + 1}/{len(todo)}] {os.path.basename(video)[:28]}")

        def progress(p, _bar=bar):
            nonlocal tokens, possible
            tokens, possible = tokens + p["tokens"], possible + p["possible"]
            _bar.update(p["frames"])
            _bar.set_postfix_str(f"kept {100 * tokens / max(possible, 1):.2f}% tok/s "
                                 f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)

        try:
            if video not in infos:
                infos[video] = probe(video)  # raises the clear error for this file
            TileGeometry(infos[video].height, infos[video].width, args.tile_mode)
            res = enc.encode(video, out, max_frames=args.max_frames, progress=progress)
            results.append((video, res))
            share = _stage_share(res.stages, res.seconds)
            bar.write(f"ok: {video} -> {out} ({res.frames} frames, {res.tokens:,} tokens, "
                      f"{100 * res.kept_fraction:.2f}% kept, {res.seconds:.1f} s; busy {share})")
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted during {video}; its partial output was removed. Rerun the same command to "
                  f"resume (finished videos are skipped).", file=sys.stderr)
            return 130
        except (ValueError, TypeError, OSError, RuntimeError, ImportError) as e:
            failures.append((video, f"{type(e).__name__}: {e}"))
            bar.write(f"FAILED: {video}: {e}")
    bar.close()
    rows = _summary(results, skipped, failures)
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"settings": enc.settings(), "videos": rows,
                       "failed": [{"video": v, "error": e} for v, e in failures]}, f, indent=2, default=str)
    if failures:
        print(f"\n{len(failures)} of {len(pairs)} videos failed:", file=sys.stderr)
        for v, e in failures:
            print(f"  {v}: {e}", file=sys.stderr)
        return 1
    return 0


def _bar(total, quiet):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", disable=quiet, dynamic_ncols=True, smoothing=0.1)


def _stage_share(stages: dict, seconds: float) -> str:
    keys = [k for k in ("decode", "upload", "preprocess", "gaze", "vit", "write") if k in stages]
    return ", ".join(f"{k} {100 * stages[k] / max(seconds, 1e-9):.0f}%" for k in keys)


def _summary(results, skipped, failures) -> list[dict]:
    rows = []
    for video, r in results:
        rows.append({"video": video, "status": "ok", **r.as_dict()})
    for video, out in skipped:
        rows.append({"video": video, "status": "skipped", "output": out})
    for video, err in failures:
        rows.append({"video": video, "status": "failed", "error": err})
    head = f"{'video':<40} {'status':<8} {'frames':>7} {'tiles':>6} {'tokens':>12} {'kept %':>7} {'s':>8} {'frames/s':>9}"
    print("\n" + head)
    print("-" * len(head))
    tf = tt = 0
    ts = 0.0
    for row in rows:
        name = os.path.basename(row["video"])[:40]
        if row["status"] == "ok":
            fps = row["frames"] / max(row["seconds"], 1e-9)
            print(f"{name:<40} {'ok':<8} {row['frames']:>7} {row['tiles']:>6} {row['tokens']:>12,} "
                  f"{100 * row['kept_fraction']:>7.2f} {row['seconds']:>8.1f} {fps:>9.1f}")
            tf, tt, ts = tf + row["frames"], tt + row["tokens"], ts + row["seconds"]
        else:
            print(f"{name:<40} {row['status']:<8}")
    print("-" * len(head))
    print(f"{'total':<40} {'':<8} {tf:>7} {'':>6} {tt:>12,} {'':>7} {ts:>8.1f} {tf / max(ts, 1e-9):>9.1f}")
    return rows
