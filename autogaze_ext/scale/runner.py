"""A per-video job over a whole collection of videos on Ray Data: CPU tasks check each video, an actor pool
(one actor per GPU) runs the job, the driver collects one index row per video into a Parquet file.

    rows (path, output)  --map_batches(_check, CPU tasks)-->  todo / skipped / failed
                         --map_batches(_Worker, actor pool, num_gpus=1 each)-->  ok / skipped / failed
                         --driver: progress (videos, tokens/s), index.parquet

Where decoding runs. Each actor decodes its own videos (the encode pipeline's ClipReader: PyAV threads
filling pinned buffers beside the GPU work) on the CPUs reserved with it (``cpus_per_gpu``); the CPU tasks
only open each container and read its header. Decoded frames never cross the object store: a 16-frame 4K
clip is 398 MB of RGB (the float32 tiles of it 8x that), i.e. ~2.3 GB/s per GPU at the encode pipeline's
measured 92 4K frames/s on an H100, and one feature file is streamed by one process, in clip order, so a
video's clips cannot be spread over tasks without holding the whole video. Compressed bytes (MB/s) are what
moves; decode scales with the CPUs per actor (``benchmarks/bench_ray.py`` measures how many it needs).

Exactly once. Outputs are written under a private staging name and renamed into place when complete, so a
killed worker leaves no file that looks complete and a zombie attempt cannot corrupt another's file. Ray
restarts dead actors (``max_restarts``) and retries their tasks (``max_task_retries``), both unbounded in
Ray Data's actor pools; ``TransientError`` (I/O worth retrying) is retried through Ray's ``retry_exceptions``
(``DataContext.actor_task_retry_on_errors``). A retried task skips videos whose output is already complete.
A per-video attempt counter (a small file beside the output) turns a video that kills its worker every time
into a failed index row after ``max_attempts`` instead of failing the run. Other per-video errors (corrupt
or truncated files) are failed rows; the run goes on.
"""
from __future__ import annotations

import glob
import os
import sys
import time
import uuid
from dataclasses import dataclass, field

from .._files import fsync_dir, remove_if_exists, write_atomic
from .jobs import VIDEO_ERRORS, VideoJob

INDEX_COLUMNS = ("path", "output", "status", "clips", "frames", "tokens", "seconds", "error", "attempts")
ATTEMPTS_SUFFIX = ".attempts"


class TransientError(OSError):
    """An I/O error worth retrying (network storage hiccups); Ray retries the task."""


def _schema():
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("path", pa.string()), ("output", pa.string()),
                      ("status", pa.string()), ("clips", pa.int64()), ("frames", pa.int64()),
                      ("tokens", pa.int64()), ("seconds", pa.float64()), ("error", pa.string()),
                      ("attempts", pa.int64())])


def _table(rows: list[dict]):
    import pyarrow as pa

    cols = _schema().names
    return pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows], schema=_schema())


def _row_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------------------ stage 1: CPU tasks
def _made_before(path: str, started: float) -> bool:
    try:
        return os.stat(path).st_mtime < started
    except OSError:
        return False


def _check(batch, job: VideoJob, overwrite: bool, started: float):
    """CPU task: finished outputs are skipped, unreadable videos fail here, the rest go on to the workers.
    Ray reruns this task when its result was lost with a dead worker; outputs made since the run started are
    then reported as made ("ok"), not as found ("skipped")."""
    rows = []
    for r in batch.to_pylist():
        out = {**r, "status": "todo", "attempts": 0}
        done = None if overwrite else job.completed(r["output"])
        if done is not None:
            out.update(status="skipped" if _made_before(r["output"], started) else "ok", **done)
        else:
            try:
                job.check(r["path"])
            except (ValueError, TypeError, OSError) as e:
                out.update(status="failed", error=_row_error(e))
        rows.append(out)
    return _table(rows)


# ------------------------------------------------------------------------------- stage 2: workers
def _attempts_file(output: str) -> str:
    d, base = os.path.split(os.path.abspath(output))
    return os.path.join(d, "." + base + ATTEMPTS_SUFFIX)


def _staging_prefix(output: str) -> str:
    d, base = os.path.split(os.path.abspath(output))
    return os.path.join(d, "." + base + ".")


def _bump_attempts(output: str) -> int:
    path = _attempts_file(output)
    try:
        with open(path, encoding="ascii") as f:
            n = int(f.read().strip() or 0)
    except (OSError, ValueError):
        n = 0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        f.write(str(n + 1))
    return n + 1


class _Worker:
    """The actor: the job's models are set up once; each call processes the videos of one batch, together when
    the job has its own ``run_many`` (one GPU batch over several videos), else one at a time."""

    def __init__(self, job: VideoJob, num_cpus: int, overwrite: bool, max_attempts: int, cuda: bool):
        import torch

        if not cuda:  # Ray sets OMP_NUM_THREADS for the actor; torch is told too
            torch.set_num_threads(max(1, int(num_cpus)))
        self.job, self.overwrite, self.max_attempts = job, overwrite, max_attempts
        self.batched = type(job).run_many is not VideoJob.run_many
        job.setup(num_cpus)

    def __call__(self, batch):
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["status"] == "todo"]
        # a live attempt counter means an earlier attempt of this call died: then one video at a time, so that a
        # video that kills its worker uses up its own attempts, not those of the videos batched with it
        if self.batched and len(todo) > 1 and not any(os.path.exists(_attempts_file(rows[i]["output"]))
                                                      for i in todo):
            self._group(rows, todo)
        else:
            for i in todo:
                self._group(rows, [i])
        return _table(rows)

    def _one(self, r: dict) -> dict:
        rows = [r]
        self._group(rows, [0])
        return rows[0]

    def _start(self, r: dict) -> tuple[dict, str | None]:
        """(row, staging file) of a video to process; (final row, None) when it is done or out of attempts."""
        out = r["output"]
        if not self.overwrite:
            done = self.job.completed(out)
            if done is not None:  # finished by an earlier attempt of this task, then the worker died
                remove_if_exists(_attempts_file(out))
                return {**r, "status": "ok", **done}, None
        n = _bump_attempts(out)
        r = {**r, "attempts": n}
        if n > self.max_attempts:
            remove_if_exists(_attempts_file(out))
            return {**r, "status": "failed", "error": f"WorkerDied: the worker processing this video died "
                                                      f"{n - 1} times (max_attempts={self.max_attempts})"}, None
        prefix = _staging_prefix(out)
        for stale in glob.glob(glob.escape(prefix) + "*"):  # left by killed attempts (never the attempts file)
            if not stale.endswith(ATTEMPTS_SUFFIX):
                remove_if_exists(stale)
        return r, prefix + uuid.uuid4().hex[:12] + self.job.suffix

    def _group(self, rows: list[dict], idx: list[int]) -> None:
        """Process rows[i] for i in idx (in one ``run_many`` call) and update them in place."""
        work = []
        for i in idx:
            rows[i], stage = self._start(rows[i])
            if stage is not None:
                work.append((i, stage))
        if not work:
            return
        t0 = time.perf_counter()
        try:
            results = self.job.run_many([(rows[i]["path"], stage) for i, stage in work])
            if len(results) != len(work):
                raise RuntimeError(f"{type(self.job).__name__}.run_many returned {len(results)} results for "
                                   f"{len(work)} videos")
        except VIDEO_ERRORS as e:  # the whole group failed (e.g. its GPU batch)
            results = [e] * len(work)
        seconds = (time.perf_counter() - t0) / len(work)
        transient = None
        for (i, stage), res in zip(work, results):
            r, out = rows[i], rows[i]["output"]
            try:
                if isinstance(res, BaseException):
                    raise res
                os.replace(stage, out)
                fsync_dir(os.path.dirname(os.path.abspath(out)))
            except TransientError as e:
                if r["attempts"] < self.max_attempts:
                    transient = e  # Ray retries the task (retry_exceptions); the attempts file stays
                    continue
                r.update(status="failed", error="TransientError: retries exhausted")
            except VIDEO_ERRORS as e:
                r.update(status="failed", error=_row_error(e))
            else:
                r.update(status="ok", **res)
            finally:
                for leftover in glob.glob(glob.escape(stage) + "*"):
                    remove_if_exists(leftover)
            r["seconds"] = seconds
            remove_if_exists(_attempts_file(out))
        if transient is not None:
            raise transient


# ------------------------------------------------------------------------------------------- driver
@dataclass
class RunResult:
    rows: list[dict]
    index: str | None
    seconds: float
    counts: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def tokens(self) -> int:
        return sum(r["tokens"] or 0 for r in self.rows if r["status"] == "ok")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("--ray needs Ray Data: pip install 'autogaze_ext[ray]' (ray[data], pyarrow, pandas)") \
            from None
    return ray


def connect(address: str | None = None, **init_kwargs):
    """ray.init: the cluster at ``address`` (``auto``, ``ray://host:10001``), else a new local instance.
    A Ray already initialised in this process is used as it is."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True, **init_kwargs)
    return ray


def plan_workers(ray, workers: int | None, cpus_per_worker: float | None, gpus_per_worker: float) -> tuple[int, float]:
    """(workers, CPUs per worker), checked against the cluster so that an impossible request is an error
    naming the option instead of a run that waits for resources forever."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    if gpus_per_worker:
        if gpus < gpus_per_worker:
            raise ValueError(f"--gpus: the Ray cluster has no GPU (resources: {cpus:g} CPUs); use --device cpu "
                             f"or a cluster with GPUs")
        avail = int(gpus // gpus_per_worker)
        if workers is None:
            workers = avail
        elif workers > avail:
            raise ValueError(f"--gpus: {workers} asked for, the Ray cluster has {gpus:g}")
    elif workers is None:
        workers = 1
    if workers < 1:
        raise ValueError(f"--gpus: expected >= 1, got {workers}")
    if cpus_per_worker is None:  # leave one CPU for the check tasks and the driver
        cpus_per_worker = max(1.0, (cpus - 1) // workers)
    if cpus_per_worker <= 0:
        raise ValueError(f"--cpus-per-gpu: expected > 0, got {cpus_per_worker}")
    if workers * cpus_per_worker > cpus:
        raise ValueError(f"--cpus-per-gpu: {workers} workers x {cpus_per_worker:g} CPUs exceed the cluster's "
                         f"{cpus:g} CPUs")
    return workers, cpus_per_worker


def run(pairs: list[tuple[str, str]], job: VideoJob, *, index: str | None = None, workers: int | None = None,
        cpus_per_worker: float | None = None, gpus_per_worker: float = 1.0, overwrite: bool = False,
        max_attempts: int = 3, videos_per_call: int = 1, progress: bool = True, address: str | None = None,
        ray_init: dict | None = None) -> RunResult:
    """Run ``job`` on every (video, output) pair with Ray Data; write the Parquet ``index`` (one row per video:
    path, output, status ok/skipped/failed, clips, frames, tokens, seconds, error, attempts).

    workers: actors (default: one per GPU of the cluster; 1 without GPUs). gpus_per_worker: 1 for GPU
    encoding, 0 for CPU workers. videos_per_call: videos per actor call (a retried call redoes only its
    unfinished videos; a job with its own ``run_many`` processes them together). max_attempts: starts of one
    video before it is recorded as failed.
    """
    ray = connect(address, **(ray_init or {}))
    from ray.data import ActorPoolStrategy, DataContext

    if not pairs:
        raise ValueError("inputs: no videos to process")
    if max_attempts < 1:
        raise ValueError(f"max_attempts: expected >= 1, got {max_attempts}")
    workers, cpus_per_worker = plan_workers(ray, workers, cpus_per_worker, gpus_per_worker)
    t0, started = time.perf_counter(), time.time()
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.actor_task_retry_on_errors = [TransientError]
    items = [{"index": i, "path": v, "output": os.path.abspath(o), "status": "todo", "clips": None, "frames": None,
              "tokens": None, "seconds": None, "error": None, "attempts": 0} for i, (v, o) in enumerate(pairs)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 8 or 1, 1024)))
    ds = ds.map_batches(_check, fn_kwargs={"job": job, "overwrite": overwrite, "started": started},
                        batch_format="pyarrow",
                        # a request unlike any worker's keeps Ray Data from fusing the checks into the actors
                        batch_size=8, num_cpus=0.5)
    # Ray Data's actor pools restart dead actors and retry their tasks without limit by default (max_restarts=-1,
    # max_task_retries=-1; passing them here is deprecated from Ray 2.60); the per-video attempt counter is what
    # bounds the retries of one video, and retry_exceptions comes from actor_task_retry_on_errors above.
    ds = ds.map_batches(_Worker, fn_constructor_kwargs={"job": job, "num_cpus": cpus_per_worker,
                                                        "overwrite": overwrite, "max_attempts": max_attempts,
                                                        "cuda": bool(gpus_per_worker)},
                        compute=ActorPoolStrategy(size=workers), batch_format="pyarrow", batch_size=videos_per_call,
                        num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)
    rows, tokens, frames = [], 0, 0
    bar = _bar(len(items), progress, job.name)
    for r in ds.iter_rows():
        rows.append(dict(r))
        if r["status"] == "ok":
            tokens += r["tokens"] or 0
            frames += r["frames"] or 0
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix_str(f"tok/s {tokens / dt:,.0f} frames/s {frames / dt:,.1f} "
                            f"failed {sum(x['status'] == 'failed' for x in rows)}", refresh=False)
    bar.close()
    rows.sort(key=lambda x: x["index"])
    if len(rows) != len(items):  # every video has exactly one row
        raise RuntimeError(f"the run returned {len(rows)} index rows for {len(items)} videos")
    if index:
        write_index(rows, index)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    return RunResult(rows, index, time.perf_counter() - t0, counts)


def write_index(rows: list[dict], path: str) -> None:
    """The Parquet index, written atomically."""
    import pyarrow.parquet as pq

    table = _table(rows).drop(["index"])
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp), fsync=False)


def read_index(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _bar(total: int, progress: bool, name: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc=name, disable=not progress, dynamic_ncols=True, file=sys.stderr)
