"""Runs bad-input cases, each in a forked child (several at a time), and classifies the outcome (see case.py).

torch and the package are imported once by the parent; a child runs one case single-threaded and writes its
classification to a pipe. A child killed by a signal is a crash, one past the timeout a hang (it is killed).
CUDA cannot be used in a child forked from a process that initialised it, so the GPU run starts a fresh
interpreter that forks its children before touching CUDA itself:

    python tests/robustness/runner.py --device cuda [--json out.json]
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter

import torch

if __package__ in (None, ""):  # run as a script: make `robustness` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robustness.case import Case, classify  # noqa: E402


def _child(case: Case, ctx, fd: int) -> None:
    """Runs in the forked child: never returns."""
    code = 0
    try:
        torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork; tiny tensors anyway
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1), os.dup2(devnull, 2)  # warnings and prints of the case stay out of the test log
        faulthandler.disable()  # a crash is reported by the parent, not as a traceback dump in the log
        error, result = None, None
        try:
            result = case.run(ctx)
        except Exception as e:  # noqa: BLE001 - classifying every exception is the point
            error = e
        cls, detail = classify(case, error, result)
        os.write(fd, json.dumps({"class": cls, "detail": detail[:400]}).encode())
    except BaseException:  # noqa: BLE001
        code = 3
    finally:
        os._exit(code)


def run_cases(cases: list[Case], ctx, jobs: int | None = None, timeout: float = 60.0) -> list[dict]:
    """Outcome per case: {"name", "class", "detail", "seconds"}."""
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    results: list[dict | None] = [None] * len(cases)
    queue = list(enumerate(cases))
    running: dict[int, tuple[int, int, float, bytearray]] = {}  # pid -> (index, pipe, start, output)
    while queue or running:
        while queue and len(running) < jobs:
            i, case = queue.pop(0)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(case, ctx, w)
            os.close(w)
            running[pid] = (i, r, time.monotonic(), bytearray())
        ready, _, _ = select.select([v[1] for v in running.values()], [], [], 0.05)
        for pid, (i, r, start, buf) in list(running.items()):
            if r in ready:
                chunk = os.read(r, 65536)
                buf += chunk
                if chunk:
                    continue
            done, status = os.waitpid(pid, os.WNOHANG)
            elapsed = time.monotonic() - start
            if done == 0 and elapsed < timeout:
                continue
            if done == 0:  # a hang: stop the child we started
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                out = {"class": "hang", "detail": f"no result after {timeout:.0f} s"}
            elif os.WIFSIGNALED(status):
                out = {"class": "crash", "detail": f"killed by signal {os.WTERMSIG(status)}"}
            else:
                while chunk := os.read(r, 65536):
                    buf += chunk
                try:
                    out = json.loads(bytes(buf))
                except ValueError:
                    out = {"class": "crash", "detail": f"exited with status {os.WEXITSTATUS(status)}, no report"}
            os.close(r)
            del running[pid]
            results[i] = {"name": cases[i].name, "seconds": round(elapsed, 3), **out}
    return results


def summary(results: list[dict]) -> str:
    by_surface: dict[str, Counter] = {}
    for r in results:
        by_surface.setdefault(r["name"].split("/")[0], Counter())[r["class"]] += 1
    total = Counter(r["class"] for r in results)
    lines = [f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items()))]
    lines += [f"  {s}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for s, c in sorted(by_surface.items())]
    return "\n".join(lines)


def run_suite(device: str = "cpu", jobs: int | None = None) -> list[dict]:
    """Every case for device, in forked children."""
    from robustness.api import Context, api_cases
    from robustness.ops import op_cases

    tmp = tempfile.mkdtemp(prefix="autogaze-bad-inputs-")
    try:
        ctx = Context(device, tmp)  # built before forking (CPU only: children initialise CUDA themselves)
        cases = [c for c in op_cases(device) + api_cases() if device.split(":")[0] in c.devices]
        return run_cases(cases, ctx, jobs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--json", help="write every outcome here")
    args = ap.parse_args()
    results = run_suite(args.device, args.jobs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(summary(results))
    bad = [r for r in results if r["class"] not in ("clear", "accepted")]
    for r in bad:
        print(f"{r['class']:9s} {r['name']}: {r['detail']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
