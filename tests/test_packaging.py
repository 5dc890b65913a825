"""Wheel and install metadata: the package requires the torch minor release its extension was compiled against."""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import autogaze_ext
from autogaze_ext.ops import _common as common
from conftest import REPO

MINOR = re.match(r"\d+\.\d+", torch.__version__)[0]


def test_setup_pins_the_build_torch(tmp_path):
    """setup.py's metadata (what a wheel built here would carry) asks for torch==X.Y.* of this torch."""
    r = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (requires,) = tmp_path.glob("*.egg-info/requires.txt")
    deps = requires.read_text().split("\n\n")[0].split()  # the unconditional requirements come first
    assert f"torch=={MINOR}.*" in deps and not any(d.startswith("torch") and d != f"torch=={MINOR}.*" for d in deps)


def test_installed_package_requires_its_build_torch():
    """An installed wheel: its Requires-Dist pins the torch its _C was built against, and that is this torch."""
    if Path(autogaze_ext.__file__).resolve().parents[1] == REPO.resolve():
        pytest.skip("the in-tree package: test_setup_pins_the_build_torch checks its metadata")
    requires = importlib.metadata.requires("autogaze-ext") or []
    pins = [r for r in requires if re.match(r"torch\b", r)]
    assert common.HAS_EXTENSION, common.EXTENSION_IMPORT_ERROR
    built = re.match(r"\d+\.\d+", common.build_info()["torch_version"])[0]
    assert pins == [f"torch=={built}.*"] and built == MINOR, (pins, common.build_info())
