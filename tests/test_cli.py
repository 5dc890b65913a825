"""The command line end to end, in a subprocess."""
from __future__ import annotations

import subprocess
import sys

from conftest import fixture_dir


def _run(*args):
    return subprocess.run([sys.executable, "-m", "autogaze_ext", *args], capture_output=True, text=True, timeout=300)


def test_demo_runs_on_random_weights():
    r = _run("demo", "--frames", "3")
    assert r.returncode == 0, r.stderr
    assert "RANDOM WEIGHTS" in r.stdout and "gazed tokens per frame" in r.stdout
    assert "[26, 26, 26]" in r.stdout


def test_demo_with_checkpoint():
    d = fixture_dir()
    if d is None:
        return
    r = _run("demo", "--checkpoint", str(d / "model"), "--frames", "2", "--gazing-ratio", "0.75",
             "--task-loss-requirement", "0.7")
    assert r.returncode == 0, r.stderr
    assert "RANDOM" not in r.stdout and "task_loss_requirement=0.7" in r.stdout


def test_demo_errors_are_clear(tmp_path):
    r = _run("demo", "--frames", "17")
    assert r.returncode == 2 and "16" in r.stderr and "Traceback" not in r.stderr
    r = _run("demo", "--checkpoint", str(tmp_path))
    assert r.returncode == 2 and "config.json" in r.stderr
