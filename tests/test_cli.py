"""The command line end to end, in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import data_dir, fixture_dir


def _run(*args, cwd=None, env=None):
    # OMP_WAIT_POLICY set: the CLI's policy without its one re-execution (tests/test_first_hour.py covers that)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    return subprocess.run([sys.executable, "-m", "autogaze_ext", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def test_demo_writes_overlay_and_stats(tmp_path):
    pytest.importorskip("av")
    out, js = tmp_path / "demo.mp4", tmp_path / "demo.json"
    r = _run("demo", "--frames", "4", "--size", "224", "--out", str(out), "--json", str(js), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "greedy gazer" in r.stdout and "kept fraction" in r.stdout
    stats = json.loads(js.read_text())
    assert len(stats["frames"]) == 4 and all(f["tokens"] >= 1 for f in stats["frames"])
    assert out.stat().st_size > 1000
    import av

    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 4 and frames[0].width == 224 * 2 + 4  # overlay | reconstruction


def test_run_on_real_video(tmp_path):
    pytest.importorskip("av")
    d = data_dir()
    if d is None or not (d / "example_input.mp4").is_file():
        pytest.skip("example video not available")
    js = tmp_path / "s.json"
    r = _run("run", str(d / "example_input.mp4"), "--max-frames", "16", "--json", str(js),
             "--out", str(tmp_path / "o.mp4"), "--max-error", "0.2")
    assert r.returncode == 0, r.stderr
    assert "frame" in r.stderr  # the tqdm progress bar
    stats = json.loads(js.read_text())
    assert len(stats["frames"]) == 16 and stats["frames"][0]["possible"] == 4 * 265
    assert 0 < stats["kept_fraction"] < 1 and "gaze_s" in stats["timings_s"]


def test_run_with_checkpoint(tmp_path):
    pytest.importorskip("av")
    fx, d = fixture_dir(), data_dir()
    if fx is None or d is None:
        pytest.skip("fixtures or example video not available")
    r = _run("run", str(d / "example_input.mp4"), "--checkpoint", str(fx / "model"), "--max-frames", "2",
             "--gazing-ratio", "0.1", "--json", str(tmp_path / "s.json"), "--quiet")
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert [f["tokens"] for f in stats["frames"]] == [4 * 26, 4 * 26] and "AutoGaze" in stats["gazer"]


def test_errors_are_clear(tmp_path):
    pytest.importorskip("av")
    r = _run("run", str(tmp_path / "missing.mp4"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x01garbage" * 100)
    r = _run("run", str(tmp_path / "bad.mp4"))
    assert r.returncode == 2 and "corrupt" in r.stderr
    r = _run("demo", "--task-loss-requirement", "0.7", "--out", "")
    assert r.returncode == 2 and "--checkpoint" in r.stderr
    r = _run("demo", "--checkpoint", str(tmp_path), "--out", "")
    assert r.returncode == 2 and "config.json" in r.stderr
    r = _run("demo", "--max-error", "-1", "--frames", "1", "--size", "224", "--out", "")
    assert r.returncode == 2 and "--max-error" in r.stderr
    r = _run("demo", "--precision", "tf32", "--frames", "1", "--size", "224", "--out", "")
    assert r.returncode == 2 and "--precision" in r.stderr
