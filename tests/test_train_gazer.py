"""benchmarks/train_gazer.py end to end at tiny sizes on the CPU (~45 s), its packaging of a checkpoint for
``--checkpoint builtin``, and the CLI's answer when no built-in checkpoint is shipped (~3 s)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_gazer.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_gazer", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_sane_outputs(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--minutes", "0.75", "--device", "cpu", "--videos", "6",
           "--heldout-every", "6", "--thresholds", "0.5", "--ratios", "0.03", "--requirements", "0.3",
           "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("error_vs_tokens.png", "results.md", "results.json", "checkpoint/model.safetensors",
                 "checkpoint/config.json", "checkpoint/preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert (out / "error_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["heldout_clips"] == 2 and res["data"]["train_clips"] == 10
    assert 4 <= res["labels"]["clips"] <= 10 and res["labels"]["ms_per_clip"] > 0
    loss = [p["loss"] for p in res["loss_curve"]]
    assert len(loss) == res["training"]["steps"] >= 1 and all(math.isfinite(v) and v > 0 for v in loss)
    k = int(0.03 * 265)  # the cap of --ratios 0.03
    curves = res["curves"]
    assert set(curves) == {"trained (ratio)", "trained (requirement)", "greedy (max error)", "greedy (cap)",
                           "random", "uniform grid"}
    for name in ("greedy (cap)", "random", "uniform grid"):  # exactly the cap, every frame
        assert curves[name][0]["tokens_per_frame"] == pytest.approx(k)
    assert 1 <= curves["trained (ratio)"][0]["tokens_per_frame"] <= k
    for pts in curves.values():
        for p in pts:
            assert math.isfinite(p["error"]) and p["error"] > 0
    # the greedy gazer stops each frame below its bound: the mean is below it too
    assert curves["greedy (max error)"][0]["error"] < 0.5
    # greedy picks the best next token at every step: it does not lose to a random pick of the same size
    assert curves["greedy (cap)"][0]["error"] <= curves["random"][0]["error"]
    assert res["costs"]["trained_ms_per_clip"] and res["costs"]["greedy_ms_per_clip"]
    table = (out / "results.md").read_text()
    assert "| uniform grid |" in table and "error ratio trained over random" in table

    from autogaze_ext.model import AutoGaze

    model = AutoGaze.from_pretrained(str(out / "checkpoint"))
    g = model.generate(torch.zeros(1, 2, 3, 224, 224), gazing_ratio=0.02)
    assert g.gazing_pos.shape[0] == 1


def test_package_for_builtin_and_cli_lookup(tmp_path, monkeypatch):
    from autogaze_ext import cli
    from autogaze_ext.config import AutoGazeConfig
    from autogaze_ext.model import AutoGaze

    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    AutoGaze(AutoGazeConfig()).save_pretrained(str(ckpt))
    dest = tmp_path / "builtin"
    tg = _script()
    tg.package(str(ckpt), str(dest))
    size = sum(f.stat().st_size for f in dest.iterdir())
    assert size <= 7 * 2**20
    packed = AutoGaze.from_pretrained(str(dest), torch_dtype="auto")
    assert packed.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        tg.package(str(tmp_path), str(tmp_path / "x"))

    monkeypatch.setattr(cli, "BUILTIN_CHECKPOINT", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="--checkpoint builtin: no built-in checkpoint is shipped"):
        cli.builtin_checkpoint("builtin")
    assert cli.builtin_checkpoint("some/dir") == "some/dir"
    monkeypatch.setattr(cli, "BUILTIN_CHECKPOINT", str(dest))
    assert cli.builtin_checkpoint("builtin") == str(dest)
    with pytest.raises(ValueError, match="--revision"):
        cli.builtin_checkpoint("builtin", revision="main")
