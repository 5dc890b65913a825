"""Builds autogaze_ext._C with CMake (CMakeLists.txt) against the torch installed in this environment.

Install with `pip install --no-build-isolation .` (or `-e .`) so the build sees that torch; without torch in
the build environment (pip's default isolated build) the build stops with a message saying so.

Environment:
  AUTOGAZE_EXT_NO_CUDA=1   CPU kernels only, even when torch has CUDA and nvcc is found
  CUDA_HOME / CUDA_PATH    CUDA toolkit root (otherwise the nvcc on PATH; see CMakeLists.txt)
  TORCH_CUDA_ARCH_LIST     target GPUs, default "9.0"; "wheel": the CUDA wheel's list (WHEEL_CUDA_ARCHS below)
  MAX_JOBS                 parallel compile jobs, default: number of cores
  AUTOGAZE_EXT_DEBUG=1     CMake Debug build
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# The CUDA wheel's targets (pyproject.toml [tool.cibuildwheel], README "Wheels"): SASS for A100, A10/RTX 30xx,
# L4/L40/RTX 40xx and H100/H200, and PTX that newer cards JIT-compile.
WHEEL_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def _dependencies() -> list[str]:
    """Runtime requirements. _C only loads with the torch minor release it was compiled against, so the
    package (wheel or install) asks for that one: torch==X.Y.* of the torch in this build environment."""
    deps = [
        "numpy",
        "safetensors",
        "tqdm",
        "pillow",  # the processor resizes with PIL, bit-exact with the official processor
        "av",  # PyAV: video decoding and the overlay videos of the command line
    ]
    try:
        import torch
    except ImportError:  # an isolated build: build_ext stops with a message saying what to do
        return ["torch>=2.4", *deps]
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return [f"torch=={major}.{minor}.*", *deps]


def _tool(module: str, name: str) -> str:
    """The cmake/ninja of the pip packages in this environment, else the one on PATH."""
    try:
        mod = __import__(module)
        exe = Path(getattr(mod, "BIN_DIR", getattr(mod, "CMAKE_BIN_DIR", ""))) / name
        if exe.is_file():
            return str(exe)
    except ImportError:
        pass
    exe = shutil.which(name)
    if exe is None:
        sys.exit(f"autogaze_ext: `{name}` not found; pip install {module}")
    return exe


def _import_build_dependency(name: str):
    """torch and pybind11 come from the environment (no build isolation): a clear message when they are absent."""
    try:
        return __import__(name)
    except ImportError:
        pass
    if name == "torch":
        sys.exit(
            "autogaze_ext: torch is not importable in the build environment. The extension must be compiled "
            "against the torch you will run, so torch is deliberately not a build requirement, and pip's default "
            "isolated build environment has none. Install torch first, then build without isolation:\n"
            "    pip install torch pybind11 cmake ninja numpy\n"
            "    pip install --no-build-isolation .        (or -e . for a development install)\n"
            "(README \"Building\")")
    sys.exit(f"autogaze_ext: `{name}` is not installed; with --no-build-isolation the build uses this environment: "
             f"pip install {name}")


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        torch = _import_build_dependency("torch")
        pybind11 = _import_build_dependency("pybind11")
        import torch.utils  # noqa: F401  (cmake_prefix_path)

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        # CMake finds nvcc (CUDA_HOME, CUDA_PATH, CUDACXX, PATH) and builds the CUDA kernels when it can.
        no_cuda = not torch.version.cuda or os.environ.get("AUTOGAZE_EXT_NO_CUDA", "0") not in ("", "0")
        # One CMake tree per (python, torch, CUDA setup) so switching environments never reuses a stale
        # cache, while rebuilding in one environment stays incremental.
        key = "|".join([sys.executable, torch.__version__, torch.__file__, str(no_cuda), shutil.which("nvcc") or "",
                        *(os.environ.get(v, "") for v in ("CUDA_HOME", "CUDA_PATH", "CUDACXX",
                                                          "TORCH_CUDA_ARCH_LIST"))])
        build_dir = ROOT / "build" / f"cmake-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        build_dir.mkdir(parents=True, exist_ok=True)

        env = os.environ.copy()
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        if env["TORCH_CUDA_ARCH_LIST"] == "wheel":
            env["TORCH_CUDA_ARCH_LIST"] = WHEEL_CUDA_ARCHS
        cfg = "Debug" if os.environ.get("AUTOGAZE_EXT_DEBUG") == "1" else "Release"
        args = [
            _tool("cmake", "cmake"), "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'ninja')}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            # built inside this environment's own tree, then copied: with one shared output path another
            # environment's newer module would pass for up to date here
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir / 'out'}",
            f"-DAUTOGAZE_EXT_CUDA={'OFF' if no_cuda else 'AUTO'}",
        ]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        jobs = os.environ.get("MAX_JOBS") or str(cores or 1)

        # Two installs of one checkout into one environment at once would share this tree: take turns.
        with open(build_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            t0 = time.perf_counter()
            subprocess.run(args, check=True, env=env)
            t1 = time.perf_counter()
            subprocess.run([_tool("cmake", "cmake"), "--build", str(build_dir), "-j", jobs], check=True, env=env)
            built = build_dir / "out" / target.name
            if not built.is_file():
                sys.exit(f"autogaze_ext: the build did not produce {built}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)
            t2 = time.perf_counter()
        print(f"autogaze_ext: configure {t1 - t0:.1f}s, "
              f"compile {t2 - t1:.1f}s, {jobs} jobs, build dir {build_dir}", flush=True)


setup(ext_modules=[Extension("autogaze_ext._C", sources=[])], cmdclass={"build_ext": CMakeBuild},
      install_requires=_dependencies())
