"""The bad-input suite: several hundred generated bad inputs over every surface we own -- each compiled op
called directly and through its wrapper, generate (and the official call style), checkpoint / config loading,
streaming state, split_clips and the greedy gazer -- each run in its own forked process, so that a segfault or a
hang is a failed case, not a dead test session. Every case must be a clear error (ValueError / TypeError /
FileNotFoundError / RuntimeError naming the argument) or a correct acceptance; robustness/case.py defines the
classes. The GPU run (marked cuda) repeats the op and API cases with CUDA tensors in a fresh interpreter.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from robustness.case import PASSING, Case
from robustness.runner import run_cases, run_suite, summary

RUNNER = os.path.join(os.path.dirname(__file__), "robustness", "runner.py")


def _report(results):
    bad = [r for r in results if r["class"] not in PASSING]
    return summary(results) + "".join(f"\n{r['class']:9s} {r['name']}: {r['detail']}" for r in bad[:60])


def test_bad_inputs_cpu():
    t0 = time.monotonic()
    results = run_suite("cpu")
    print(summary(results), f"\n{time.monotonic() - t0:.1f} s")
    assert len(results) >= 300
    assert {r["name"].split("/")[0] for r in results} >= {"op", "generate", "load", "stream", "clips"}
    assert all(r["class"] in PASSING for r in results), _report(results)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bad_inputs_cuda(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, RUNNER, "--device", "cuda", "--json", str(out)], capture_output=True,
                          text=True, timeout=900)
    assert out.is_file(), proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert len(results) >= 300
    assert all(r["class"] in PASSING for r in results), _report(results)


def test_the_harness_classifies_each_outcome():
    """The classes themselves: a segfault is a crash, a sleep past the timeout a hang, and so on."""
    def segfault(ctx):
        os.kill(os.getpid(), signal.SIGSEGV)

    def error(exc):
        def run(ctx):
            raise exc
        return run

    cases = [
        Case("t/crash", segfault),
        Case("t/hang", lambda ctx: time.sleep(30)),
        Case("t/silent", lambda ctx: None),
        Case("t/wrong", lambda ctx: False, "ok"),
        Case("t/accepted", lambda ctx: True, "ok"),
        Case("t/refused", error(ValueError("x: no")), "ok", ("x",)),
        Case("t/clear", error(ValueError("eps must be finite, got nan")), "error", ("eps",)),
        Case("t/clear_runtime", error(RuntimeError("fused_linear: eps must be > 0")), "error", ("eps",)),
        Case("t/unclear_type", error(IndexError("eps")), "error", ("eps",)),
        Case("t/unclear_name", error(ValueError("bad value")), "error", ("eps",)),
        Case("t/unclear_word", error(ValueError("epsilon is bad")), "error", ("eps",)),
        Case("t/unclear_also", error(ValueError("eps is bad")), "error", ("eps",), ("finite",)),
        Case("t/exit", lambda ctx: os._exit(0)),
    ]
    got = {r["name"]: r["class"] for r in run_cases(cases, None, jobs=4, timeout=2.0)}
    assert got == {"t/crash": "crash", "t/hang": "hang", "t/silent": "silent", "t/wrong": "silent",
                   "t/accepted": "accepted", "t/refused": "unclear", "t/clear": "clear", "t/clear_runtime": "clear",
                   "t/unclear_type": "unclear", "t/unclear_name": "unclear", "t/unclear_word": "unclear",
                   "t/unclear_also": "unclear", "t/exit": "crash"}
