"""``autogaze-ext encode ... --ray`` and ``label ... --ray``: those commands on Ray Data (one actor per GPU, a
Parquet index)."""
from __future__ import annotations

import json
import os
import sys


def _ray_error(e: BaseException) -> str:
    """The user-facing line of an error raised inside a Ray worker (the original exception, not Ray's wrapper)."""
    cause = getattr(e, "cause", None) or e.__cause__
    while cause is not None and (getattr(cause, "cause", None) or cause.__cause__) is not None:
        cause = getattr(cause, "cause", None) or cause.__cause__
    err = cause or e
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


def _check_options(args) -> None:
    """The --ray options shared by encode and label, checked before Ray starts."""
    if args.threads is not None:
        raise ValueError("--threads: with --ray each worker uses the CPUs reserved for it (--cpus-per-gpu)")
    if args.device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device: with --ray expected 'cpu' or 'cuda' (each actor gets its own GPU), "
                         f"got {args.device!r}")
    if args.gpus is not None and args.gpus < 1:
        raise ValueError(f"--gpus: expected >= 1, got {args.gpus}")
    if args.cpus_per_gpu is not None and not args.cpus_per_gpu > 0:
        raise ValueError(f"--cpus-per-gpu: expected > 0, got {args.cpus_per_gpu}")


def _check_index(index: str) -> None:
    folder = os.path.dirname(os.path.abspath(index))
    if os.path.isdir(index) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"--index: cannot write {index!r} (a folder, or its folder is missing or not writable)")


def _connect(args):
    """(ray, cuda, workers, CPUs per worker) for --address, --device, --gpus and --cpus-per-gpu."""
    from . import runner

    ray = runner.connect(args.address)  # ImportError naming the extra when Ray is missing
    gpus_in_cluster = float(ray.cluster_resources().get("GPU", 0))
    if args.device == "cuda" and not gpus_in_cluster:
        raise ValueError("--device cuda: the Ray cluster has no GPU")
    cuda = args.device == "cuda" or (args.device is None and gpus_in_cluster > 0)
    workers, cpus = runner.plan_workers(ray, args.gpus, args.cpus_per_gpu, 1.0 if cuda else 0.0)
    return ray, cuda, workers, cpus


def _list_failed(failed: list[dict], total: int) -> None:
    print(f"\n{len(failed)} of {total} videos failed:", file=sys.stderr)
    for r in failed[:50]:
        print(f"  {r['path']}: {r['error']}", file=sys.stderr)
    if len(failed) > 50:
        print(f"  ... and {len(failed) - 50} more (the index lists them all)", file=sys.stderr)


def run_ray(args) -> int:
    from ..pipeline.cli import check_out_dir, encoder_kwargs, input_pairs
    from . import runner
    from .jobs import EncodeJob

    _check_options(args)
    pairs = input_pairs(args)
    check_out_dir(args.out)
    index = args.index or os.path.join(args.out, "index.parquet")
    _check_index(index)
    ray, cuda, workers, cpus = _connect(args)
    job = EncodeJob(encoder_kwargs(args, "cuda" if cuda else "cpu"), max_frames=args.max_frames)
    gaze = f"AutoGaze {args.checkpoint}" if args.checkpoint else "training-free greedy gazer"
    print(f"ray: {len(pairs)} videos, {workers} {'GPU' if cuda else 'CPU'} worker(s) x {cpus:g} CPUs; gazer: {gaze}; "
          f"ViT: {args.vit or 'random-init SigLIP-B/16 (features for timing only)'}; index {index}", file=sys.stderr)
    try:
        res = runner.run(pairs, job, index=index, workers=workers, cpus_per_worker=cpus,
                         gpus_per_worker=1.0 if cuda else 0.0, overwrite=args.overwrite, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted; finished videos are complete, partial outputs are never taken for complete. Rerun the "
              "same command to resume.", file=sys.stderr)
        return 130
    except ray.exceptions.RayError as e:
        raise RuntimeError(f"the Ray run failed: {_ray_error(e)}") from None
    c = res.counts
    print(f"{c['ok']} encoded, {c['skipped']} already complete, {c['failed']} failed in {res.seconds:.1f} s; "
          f"{res.tokens:,} tokens ({res.tokens / max(res.seconds, 1e-9):,.0f} tokens/s); index {index}",
          file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"settings": job.settings(), "index": index, "seconds": res.seconds, "counts": c,
                       "videos": [{k: v for k, v in r.items() if k != "index"} for r in res.rows]}, f, indent=2)
    if res.failed:
        _list_failed(res.failed, len(res.rows))
        return 1
    return 0


def run_label_ray(args) -> int:
    """``label --ray``: a record file per video (``LabelJob``, atomic, resumable like encode's outputs), then the
    driver merges the records, in input order, into the label file exactly as the single-process ``label``
    writes it. Videos the label file already holds are skipped without Ray (``skipped`` rows of the index)."""
    from ..training.cli import LABEL_BATCH_ROWS, add_record, existing_labels, label_videos
    from ..training.labels import label_key, write_labels
    from . import runner
    from .jobs import LabelJob

    _check_options(args)
    videos = label_videos(args)
    labels = existing_labels(args)
    done = {label_key(k): k for k in labels}
    records = args.records or os.path.splitext(args.out)[0] + ".records"
    if os.path.exists(records) and not os.path.isdir(records):
        raise ValueError(f"--records: {records!r} exists and is not a folder")
    os.makedirs(records, exist_ok=True)
    index = args.index or os.path.join(records, "index.parquet")
    _check_index(index)
    todo = [v for v in videos if args.overwrite or label_key(v) not in done]
    rows = {v: {"path": v, "output": args.out, "status": "skipped", "clips": 1,
                "frames": len(labels[done[label_key(v)]]["gazing_pos"]),
                "tokens": sum(map(len, labels[done[label_key(v)]]["gazing_pos"])), "attempts": 0}
            for v in videos if v not in todo}
    job = LabelJob(checkpoint=args.checkpoint, revision=args.revision, max_error=args.max_error,
                   gazing_ratio=args.gazing_ratio, task_loss_requirement=args.task_loss_requirement,
                   precision=args.precision, clip_len=args.clip_len)
    pairs = [(v, job.record_path(records, v)) for v in todo]

    def merge(finished) -> int:
        """Records of the videos ``finished`` (in input order) into the label file, written atomically."""
        n = 0
        for v, out in pairs:
            rec = job.read(out) if finished(v) else None
            if rec is not None:
                add_record(labels, done, v, rec)
                n += 1
        write_labels(args.out, labels)
        return n

    res = None
    if todo:
        ray, cuda, workers, cpus = _connect(args)
        job.device = "cuda" if cuda else "cpu"
        per_call = args.batch_rows or LABEL_BATCH_ROWS["cuda" if cuda else "cpu"]
        gaze = f"AutoGaze {args.checkpoint}" if args.checkpoint else "training-free greedy gazer"
        print(f"ray: {len(todo)} video(s) to label, {len(rows)} already in {args.out}; {workers} "
              f"{'GPU' if cuda else 'CPU'} worker(s) x {cpus:g} CPUs, {per_call} clips per call; gazer: {gaze}; "
              f"records {records}", file=sys.stderr)
        try:
            res = runner.run(pairs, job, workers=workers, cpus_per_worker=cpus, gpus_per_worker=1.0 if cuda else 0.0,
                             overwrite=args.overwrite, videos_per_call=per_call, progress=not args.quiet)
        except KeyboardInterrupt:  # every complete record is kept: merge those
            n = merge(lambda v: True)
            print(f"interrupted: {n} labelled video(s) saved to {args.out}; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"the Ray run failed: {_ray_error(e)}") from None
        rows.update({r["path"]: r for r in res.rows})
    ok = {r["path"] for r in (res.rows if res else []) if r["status"] in ("ok", "skipped")}
    n = merge(ok.__contains__)
    if n != len(ok):
        raise RuntimeError(f"--records: {len(ok) - n} record file(s) in {records!r} were complete during the run "
                           f"but cannot be read now")
    ordered = [rows[v] for v in videos]
    runner.write_index(ordered, index)
    failed = [r for r in ordered if r["status"] == "failed"]
    made = 0 if res is None else res.counts["ok"]
    print(f"labels: {made} video(s) labelled, {len(ordered) - made - len(failed)} skipped (already labelled), "
          f"{len(failed)} failed; {len(labels)} in {args.out}; index {index}"
          + (f"; {res.tokens / max(res.seconds, 1e-9):,.0f} tokens/s" if res else ""), file=sys.stderr)
    if failed:
        _list_failed(failed, len(ordered))
        return 1
    return 0
