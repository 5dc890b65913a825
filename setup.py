"""Builds autogaze_ext._C with CMake (CMakeLists.txt) against the torch installed in this environment.

Install with `pip install --no-build-isolation .` (or `-e .`) so the build sees that torch.

Environment:
  AUTOGAZE_EXT_NO_CUDA=1   CPU kernels only, even when torch has CUDA and nvcc is found
  CUDA_HOME / CUDA_PATH    CUDA toolkit root (otherwise located from the nvcc on PATH)
  TORCH_CUDA_ARCH_LIST     target GPUs, default "9.0"
  MAX_JOBS                 parallel compile jobs, default: number of cores
  AUTOGAZE_EXT_DEBUG=1     CMake Debug build
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


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


def _find_cuda_home() -> Path | None:
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT"):
        root = os.environ.get(var)
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root)
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc exec-ing the real one), so
        # ask nvcc where it lives rather than trusting the path it was found at.
        try:
            out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=120)
            m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.M)
            if m and (Path(m[1]).parent / "bin" / "nvcc").is_file():
                return Path(m[1]).parent
        except (OSError, subprocess.SubprocessError):
            pass
        root = Path(nvcc).resolve().parent.parent
        if (root / "include" / "cuda_runtime.h").is_file():
            return root
    root = Path("/usr/local/cuda")
    return root if (root / "bin" / "nvcc").is_file() else None


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        cuda_home = None
        if torch.version.cuda and os.environ.get("AUTOGAZE_EXT_NO_CUDA", "0") in ("", "0"):
            cuda_home = _find_cuda_home()
            if cuda_home is None:
                print("autogaze_ext: torch has CUDA but no nvcc was found; building CPU kernels only")
        # One CMake tree per (python, torch, CUDA) so switching environments never reuses a stale cache,
        # while rebuilding in one environment stays incremental.
        key = f"{sys.executable}|{torch.__version__}|{torch.__file__}|{cuda_home}"
        build_dir = ROOT / "build" / f"cmake-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        build_dir.mkdir(parents=True, exist_ok=True)

        env = os.environ.copy()
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        cfg = "Debug" if os.environ.get("AUTOGAZE_EXT_DEBUG") == "1" else "Release"
        args = [
            _tool("cmake", "cmake"), "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'ninja')}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DAUTOGAZE_EXT_CUDA={'ON' if cuda_home else 'OFF'}",
        ]
        if cuda_home:
            # FindCUDA (torch's cuda.cmake), CMake's CUDA language and FindCUDAToolkit each look for the
            # toolkit their own way; point all three at the same root.
            args += [f"-DCMAKE_CUDA_COMPILER={cuda_home / 'bin' / 'nvcc'}",
                     f"-DCUDAToolkit_ROOT={cuda_home}", f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}"]
            env["CUDA_HOME"] = str(cuda_home)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        jobs = os.environ.get("MAX_JOBS") or str(cores or 1)

        t0 = time.perf_counter()
        subprocess.run(args, check=True, env=env)
        t1 = time.perf_counter()
        subprocess.run([_tool("cmake", "cmake"), "--build", str(build_dir), "-j", jobs], check=True, env=env)
        t2 = time.perf_counter()
        print(f"autogaze_ext: CUDA={'yes' if cuda_home else 'no'} configure {t1 - t0:.1f}s, "
              f"compile {t2 - t1:.1f}s, {jobs} jobs, build dir {build_dir}", flush=True)


setup(ext_modules=[Extension("autogaze_ext._C", sources=[])], cmdclass={"build_ext": CMakeBuild})
