"""``autogaze-ext encode ... --ray``: the encode command on Ray Data (one encoder actor per GPU, a Parquet index)."""
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


def run_ray(args) -> int:
    from ..pipeline.cli import check_out_dir, encoder_kwargs, input_pairs
    from . import runner
    from .jobs import EncodeJob

    if args.threads is not None:
        raise ValueError("--threads: with --ray each worker uses the CPUs reserved for it (--cpus-per-gpu)")
    if args.device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device: with --ray expected 'cpu' or 'cuda' (each actor gets its own GPU), "
                         f"got {args.device!r}")
    if args.gpus is not None and args.gpus < 1:
        raise ValueError(f"--gpus: expected >= 1, got {args.gpus}")
    if args.cpus_per_gpu is not None and not args.cpus_per_gpu > 0:
        raise ValueError(f"--cpus-per-gpu: expected > 0, got {args.cpus_per_gpu}")
    pairs = input_pairs(args)
    check_out_dir(args.out)
    index = args.index or os.path.join(args.out, "index.parquet")
    folder = os.path.dirname(os.path.abspath(index))
    if os.path.isdir(index) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"--index: cannot write {index!r} (a folder, or its folder is missing or not writable)")
    ray = runner.connect(args.address)  # ImportError naming the extra when Ray is missing
    gpus_in_cluster = float(ray.cluster_resources().get("GPU", 0))
    if args.device == "cuda" and not gpus_in_cluster:
        raise ValueError("--device cuda: the Ray cluster has no GPU")
    cuda = args.device == "cuda" or (args.device is None and gpus_in_cluster > 0)
    job = EncodeJob(encoder_kwargs(args, "cuda" if cuda else "cpu"), max_frames=args.max_frames)
    workers, cpus = runner.plan_workers(ray, args.gpus, args.cpus_per_gpu, 1.0 if cuda else 0.0)
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
        print(f"\n{len(res.failed)} of {len(res.rows)} videos failed:", file=sys.stderr)
        for r in res.failed[:50]:
            print(f"  {r['path']}: {r['error']}", file=sys.stderr)
        if len(res.failed) > 50:
            print(f"  ... and {len(res.failed) - 50} more (the index lists them all)", file=sys.stderr)
        return 1
    return 0
