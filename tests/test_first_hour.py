"""A new user's first hour (issue 23): help and version, checks before any decoding, progress that moves while
gazing, the CPU threading policy, where the demo writes, what the JSON records, the overlay's colour key, short
reprs, ``vit(pixel_values=...)``, the extension warning and packaging metadata."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, data_dir, fixture_dir


def _cli(*args, cwd=None, passive=True, timeout=300):
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if passive:  # the policy without the CLI's one re-execution (which one test below covers)
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return subprocess.run([sys.executable, "-m", "autogaze_ext", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def _example() -> Path:
    d = data_dir()
    if d is None or not (d / "example_input.mp4").is_file():
        pytest.skip("example video not available (../shared/data)")
    return d / "example_input.mp4"


# ------------------------------------------------------------------------------------ help, version
def test_bare_command_prints_help_not_the_demo(tmp_path):
    r = _cli(cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: autogaze-ext")
    for cmd in ("demo", "run", "encode"):
        assert re.search(rf"^\s+{cmd}\s+\S", r.stdout, re.M), f"{cmd} missing from the help:\n{r.stdout}"
    # nothing ran (the demo's report starts with "gazer:"), nothing written
    assert not re.search(r"^gazer:", r.stdout, re.M) and not list(tmp_path.iterdir())


def test_version():
    import autogaze_ext

    r = _cli("--version")
    assert r.returncode == 0, r.stderr
    assert f"autogaze-ext {autogaze_ext.__version__}" in r.stdout and f"torch {torch.__version__}" in r.stdout


def test_every_option_and_positional_has_help():
    from autogaze_ext.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"demo", "run", "encode"} <= set(sub.choices)
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert all(helps.get(c) for c in ("demo", "run", "encode"))
    for name in ("demo", "run"):
        for action in sub.choices[name]._actions:
            assert action.help and action.help.strip(), f"{name}: {action.dest} has no help text"
    run_opts = {a.dest for a in sub.choices["run"]._actions}
    assert {"video", "threads", "max_frames", "fps"} <= run_opts
    demo_opts = {a.dest for a in sub.choices["demo"]._actions}
    assert {"frames", "seed", "size", "threads"} <= demo_opts


# --------------------------------------------------------------------- checks before any decoding
BAD = [  # (arguments after the video, substrings of the one-line error)
    (["--gazing-ratio", "2"], ["--gazing-ratio", "(0, 1]", "2"]),
    (["--gazing-ratio", "nan"], ["--gazing-ratio"]),
    (["--task-loss-requirement", "-1", "--checkpoint", "X"], ["--task-loss-requirement"]),
    (["--max-error", "-0.5"], ["--max-error"]),
    (["--batch-rows", "0"], ["--batch-rows"]),
    (["--threads", "0"], ["--threads"]),
    (["--max-frames", "0"], ["--max-frames"]),
    (["--fps", "0"], ["--fps"]),
    (["--device", "tpu"], ["--device", "expected", "cpu", "cuda", "tpu"]),
    (["--out", "{tmp}/x.txt"], ["--out", "x.txt", ".mp4"]),
    (["--out", "{tmp}"], ["--out", "is a folder", ".mp4"]),
    (["--out", "{tmp}/missing/o.mp4"], ["--out", "missing", "does not exist"]),
    (["--json", "{tmp}/missing/s.json"], ["--json", "missing", "does not exist"]),
    (["--json", "{tmp}"], ["--json", "is a folder"]),
    (["--out", "{tmp}/same.mp4", "--json", "{tmp}/same.mp4"], ["--json", "same.mp4"]),
    (["--out", "{video}"], ["--out", "input video"]),
    (["--precision", "tf32"], ["--precision", "--checkpoint"]),
    (["--revision", "main"], ["--revision", "--checkpoint"]),
]


@pytest.mark.parametrize("extra,expect", BAD, ids=[" ".join(b[0][:2]) for b in BAD])
def test_bad_options_fail_before_loading_or_decoding(extra, expect, tmp_path, monkeypatch, capsys):
    """In-process: the gazer is never loaded and no frame is decoded; one line naming the option (and path)."""
    from autogaze_ext import cli, video

    video_path = tmp_path / "in.mp4"
    video_path.write_bytes(b"not looked at: the options fail first")

    def boom(*a, **k):
        raise AssertionError("reached loading or decoding")

    monkeypatch.setattr(cli, "_load_gazer", boom)
    monkeypatch.setattr(video, "iter_frames", boom)
    monkeypatch.setattr(video, "probe", boom)
    args = [a.format(tmp=tmp_path, video=video_path) for a in extra]
    assert cli.main(["run", str(video_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for s in expect:
        assert s.format(tmp=tmp_path) in err, (s, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]  # nothing written


def test_demo_option_checks(monkeypatch, capsys):
    from autogaze_ext import cli

    monkeypatch.setattr(cli, "_load_gazer", lambda *a, **k: pytest.fail("loaded a gazer"))
    for args, expect in ((["--frames", "0"], "--frames"), (["--size", "4"], "--size"),
                         (["--size", "100000"], "GiB")):
        assert cli.main(["demo", *args]) == 2
        assert expect in capsys.readouterr().err


def test_unusable_files_fail_in_one_line_before_work(tmp_path):
    """In a subprocess: fast, exit status 2, one line naming the option or file, no output left behind."""
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    out, js = tmp_path / "o.mp4", tmp_path / "s.json"
    cases = [
        (["run", str(empty), "--out", str(out), "--json", str(js)], ["is empty", "empty.mp4"]),
        (["run", str(tmp_path / "nope.mp4"), "--out", str(out)], ["no such file", "nope.mp4"]),
        (["run", str(empty), "--gazing-ratio", "2", "--out", str(out)], ["--gazing-ratio"]),
        (["demo", "--out", str(tmp_path / "x.txt")], ["--out", ".mp4"]),
    ]
    for args, expect in cases:
        t0 = time.perf_counter()
        r = _cli(*args)
        took = time.perf_counter() - t0
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert "Traceback" not in r.stderr and all(s in lines[0] for s in expect), (expect, lines)
        assert took < 60, took  # only the interpreter's start: no decoding, no model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.mp4"]


# ------------------------------------------------------------------ progress, threads, JSON settings
def _bar_states(stderr: str) -> list[dict]:
    """tqdm's refreshes (carriage-return separated) -> [{stage, n, total, decoded}]."""
    states = []
    for chunk in re.split(r"[\r\n]+", stderr):
        m = re.match(r"\s*(\w+)\s*:.*?\|\s*(\d+)/(\d+) \[.*?decoded (\d+)", chunk)
        if m:
            states.append({"stage": m[1], "n": int(m[2]), "total": int(m[3]), "decoded": int(m[4])})
    return states


def test_progress_moves_while_gazing_and_policy_applies(tmp_path):
    """The real command on the 64-frame example, default settings, started without OMP_WAIT_POLICY: the bar
    counts gazed frames clip by clip while later clips are still to be decoded; the CLI re-executed itself
    once with OMP_WAIT_POLICY=PASSIVE and used every usable CPU."""
    from autogaze_ext.cli import usable_cpus

    js = tmp_path / "s.json"
    r = _cli("run", str(_example()), "--json", str(js), passive=False)
    assert r.returncode == 0, r.stderr
    states = _bar_states(r.stderr)
    assert states and all(s["total"] == 64 for s in states), r.stderr[-2000:]
    gazed = sorted({s["n"] for s in states})
    assert gazed[:5] == [0, 16, 32, 48, 64], gazed  # one step per 16-frame clip (4 tiles, CPU default batch)
    first = next(s for s in states if s["n"] == 16)
    assert first["decoded"] < 64, first  # gazed frames reported before decoding had finished
    assert {"decode", "gaze"} <= {s["stage"] for s in states}
    assert "kept" in r.stderr and "frame/s" in r.stderr
    stats = json.loads(js.read_text())
    assert stats["threads"]["omp_wait_policy"] == "PASSIVE"
    assert stats["threads"]["intra_op_threads"] == usable_cpus()
    assert stats["settings"]["batch_rows"] == 4 and stats["settings"]["gazing_ratio"] == 1.0


def test_progress_callback_order_in_process(monkeypatch):
    """gaze_clips reports each batch's gaze stage before yielding its clips, and yields before the next clip
    is decoded."""
    from autogaze_ext.greedy import GreedyGazer
    from autogaze_ext.synthetic import moving_objects_clip
    from autogaze_ext.video import gaze_clips, iter_clips

    events = []

    def frames():
        for i, f in enumerate(moving_objects_clip(48, 224, 224, seed=1)):
            events.append(("decoded", i))
            yield f

    clips = iter_clips(frames(), 16)
    for res in gaze_clips(GreedyGazer(), clips, batch_rows=1, progress=lambda s, n: events.append((s, n))):
        events.append(("result", res.first_frame))
    names = [e[0] if e[0] != "decoded" else f"d{e[1]}" for e in events]
    assert names.index("result") < names.index("d32")  # the first clip's result before the third clip decodes
    assert [e for e in events if e[0] == "gaze"] == [("gaze", 16)] * 3


def test_threads_option_and_env(monkeypatch):
    from autogaze_ext.cli import configure_cpu_threads, usable_cpus

    before = torch.get_num_threads()
    try:
        assert configure_cpu_threads(1)["intra_op_threads"] == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert configure_cpu_threads()["source"] == "OMP_NUM_THREADS"
        monkeypatch.delenv("OMP_NUM_THREADS")
        info = configure_cpu_threads()
        assert info["intra_op_threads"] == usable_cpus() >= 1 and info["source"] == "usable CPUs"
        with pytest.raises(ValueError, match="threads"):
            configure_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_json_records_the_checkpoint_defaults():
    fx = fixture_dir()
    if fx is None:
        pytest.skip("official fixtures not available")
    from argparse import Namespace

    from autogaze_ext.cli import _load_gazer

    args = Namespace(checkpoint=str(fx / "model"), revision=None, gazing_ratio=None, task_loss_requirement=None,
                     precision="fp32", max_error=None)
    model, _, kw, _, settings = _load_gazer(args, torch.device("cpu"))
    assert (kw["gazing_ratio"], kw["task_loss_requirement"]) == (model.config.default_gazing_ratio,
                                                                 model.config.default_task_loss_requirement)
    assert settings["gazing_ratio"] == 0.75 and settings["task_loss_requirement"] == 0.7
    assert "checkpoint" in settings["ratio_and_requirement_from"]
    args.task_loss_requirement = 0.5
    _, _, kw, _, settings = _load_gazer(args, torch.device("cpu"))
    assert kw["gazing_ratio"] == 1.0 and settings["task_loss_requirement"] == 0.5  # as model.generate does


# ------------------------------------------------------------------------------------------ demo
def test_demo_writes_into_a_temporary_folder_not_the_cwd(tmp_path):
    pytest.importorskip("av")
    r = _cli("demo", "--frames", "2", "--size", "64", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.iterdir())
    m = re.search(r"overlay video: (\S+\.mp4)", r.stdout)
    assert m, r.stdout
    out = Path(m[1])
    try:
        assert out.is_absolute() and out.stat().st_size > 0 and out.parent.name.startswith("autogaze-demo-")
    finally:
        if out.exists():
            out.unlink()
            out.parent.rmdir()


# -------------------------------------------------------------------------------------- pictures
def test_overlay_is_light_and_carries_a_colour_key():
    from autogaze_ext.viz import SCALE_COLOURS, draw_scale_key, overlay

    frame = np.full((224, 224, 3), 200, np.uint8)
    o = overlay(frame, [(0, 0, 112, 112, 0)])
    assert o[150, 150, 0] >= 110  # not gazed: dimmed, still readable (0.6)
    inside = o[50, 50].astype(int)
    assert np.abs(inside - 200).max() <= 0.25 * 200  # gazed: a light tint
    keyed = draw_scale_key(o)
    assert keyed.shape == o.shape and (keyed[:180] == o[:180]).all()  # only the bottom corner changes
    corner = keyed[-30:, :200].reshape(-1, 3)
    for c in SCALE_COLOURS:
        assert (np.abs(corner.astype(int) - c).max(1) <= 2).sum() >= 9, c  # a swatch of every scale colour


# ------------------------------------------------------------------------------------------ reprs
def test_processor_repr_is_short():
    from autogaze_ext import AutoGazeImageProcessor

    r = repr(AutoGazeImageProcessor())
    assert r.startswith("AutoGazeImageProcessor(") and "0x" not in r and len(r) < 200
    assert "224" in r and "0.485" in r


# ------------------------------------------------------------------------------- vit(pixel_values=)
def test_vit_accepts_pixel_values():
    transformers = pytest.importorskip("transformers")
    import autogaze_ext as ag
    from autogaze_ext.greedy import GreedyGazer

    torch.manual_seed(0)
    cfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=224, patch_size=16,
                                          attn_implementation="sdpa")
    vit = ag.accelerate(transformers.SiglipVisionModel(cfg).eval())
    x = torch.randn(1, 3, 224, 224)
    video = torch.randn(1, 2, 3, 224, 224)
    out = GreedyGazer(max_error=0.5).generate(video, gazing_ratio=0.05)
    with torch.no_grad():
        assert torch.equal(vit(pixel_values=x).last_hidden_state, vit(x).last_hidden_state)
        a, b = vit(pixel_values=video, gaze=out), vit(video, gaze=out)
    assert torch.equal(a.features, b.features)
    with pytest.raises(TypeError, match="once"):
        vit(x, pixel_values=x)


# ---------------------------------------------------------------------------------- extension load
@pytest.mark.parametrize("case", ["missing", "other_torch"])
def test_extension_problems_warn_once_naming_versions(case):
    code = f"""
import sys, types, warnings
warnings.simplefilter("default")
if {case!r} == "missing":
    sys.modules["autogaze_ext._C"] = None
else:
    m = types.ModuleType("autogaze_ext._C")
    m.build_info = lambda: {{"torch_version": "1.99.0"}}
    m.has_cuda = lambda: False
    sys.modules["autogaze_ext._C"] = m
import autogaze_ext, autogaze_ext.ops as o, autogaze_ext.cli
assert not o.HAS_EXTENSION
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    warns = [ln for ln in r.stderr.splitlines() if "RuntimeWarning" in ln]
    assert len(warns) == 1, r.stderr
    assert torch.__version__ in warns[0] and "pip install --no-build-isolation" in warns[0]
    assert ("1.99.0" in warns[0]) == (case == "other_torch")


# -------------------------------------------------------------------------------------- packaging
def test_setup_explains_a_missing_torch(tmp_path):
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = ['setup.py', 'build_ext', '--build-temp', {str(tmp_path / 't')!r}, "
            f"'--build-lib', {str(tmp_path / 'l')!r}]; runpy.run_path('setup.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "torch is not importable" in r.stderr and "--no-build-isolation" in r.stderr


def test_package_metadata():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0" and (REPO / "LICENSE").read_text().count("Apache License") >= 1
    assert meta["urls"] and all(u.startswith("https://") and "example" not in u for u in meta["urls"].values())
    assert any(c.startswith("License :: ") or c.startswith("Programming Language") for c in meta["classifiers"])
    extras = meta["optional-dependencies"]
    assert "nvidia-ml-py" in extras["bench"]
    for name, reqs in extras.items():  # nothing that would replace the installed torch
        for req in reqs:
            assert not re.match(r"(torch|torchvision|timm)\b", req), (name, req)
    assert (REPO / "autogaze_ext" / "py.typed").is_file()
    script = meta["scripts"]["autogaze-ext"]
    module = script.split(":")[0]
    assert (REPO / f"{module}.py").is_file() or (REPO / module.replace(".", "/")).exists()


def test_stream_gazer_checks_clip_len():
    from types import SimpleNamespace

    from autogaze_ext.greedy import GreedyGazer
    from autogaze_ext.video import StreamGazer

    for bad in (0, -1, 2.5, True, "16"):
        with pytest.raises(ValueError, match="clip_len"):
            StreamGazer(GreedyGazer(), clip_len=bad)
    autogaze_like = SimpleNamespace(config=SimpleNamespace(max_num_frames=16), grids=[2, 4, 7, 14])
    with pytest.raises(ValueError, match="at most 16"):
        StreamGazer(autogaze_like, clip_len=17)
    assert StreamGazer(autogaze_like, clip_len=16).clip_len == 16
