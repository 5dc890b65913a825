"""The scripts in python/ run end to end on the CPU at tiny sizes, with the autogaze_ext under test (the one this
process imports: the checkout's or an installed wheel's), and report one feature row per gazed token."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import autogaze_ext as ag
from conftest import _need, fixture_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "python"
TINY = ["--tiny", "--frames", "2", "--size", "64", "--reps", "1", "--device", "cpu"]


def run_example(script: str, dense_tokens: int) -> str:
    d = fixture_dir()
    if d is None:
        _need("official fixtures (the AutoGaze checkpoint in model/)")
    package_root = str(Path(ag.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(EXAMPLES / script), *TINY, "--autogaze", str(d / "model")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout}\n{res.stderr}"
    # the run used the package under test, and its gazed features hold one row per gazed token
    per_frame = re.search(r"gazed tokens per frame .*: \[([\d, ]+)\]", res.stdout)
    rows = re.search(r"gazed features: \((\d+), (\d+)\) packed \((\d+) gazed tokens", res.stdout)
    assert per_frame and rows, res.stdout
    assert sum(int(n) for n in per_frame[1].split(",")) == int(rows[3]) > 0, res.stdout
    assert f"dense features: (2, {dense_tokens}, 64)" in res.stdout, res.stdout
    return res.stdout


def test_siglip_example():
    pytest.importorskip("transformers")
    out = run_example("siglip_gazed_video.py", 196)
    assert "tiny SigLIP" in out


def test_timm_example():
    pytest.importorskip("timm", reason="timm is not installed (README \"Building\" says how, with your torch's "
                                       "torchvision)")
    out = run_example("timm_gazed_video.py", 197)  # + the class token
    assert "tiny ViT" in out and "+ 1 prefix" in out  # the class token once per video
