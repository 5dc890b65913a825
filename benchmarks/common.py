"""Timing helpers shared by the benchmark scripts: CUDA events, warm-up, medians, card name."""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable

import torch


def card_name() -> str:
    """The GPU as nvidia-ml-py names it (falls back to torch), with driver version."""
    if not torch.cuda.is_available():
        return "cpu"
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name
        drv = pynvml.nvmlSystemGetDriverVersion()
        drv = drv.decode() if isinstance(drv, bytes) else drv
        return f"{name} (driver {drv}, via nvidia-ml-py)"
    except Exception as e:  # noqa: BLE001 - report, don't fail the benchmark
        return f"{torch.cuda.get_device_name()} (nvidia-ml-py unavailable: {type(e).__name__})"


def time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> list[float]:
    """Per-call times in ms: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    out = []
    cuda = torch.cuda.is_available()
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def graph_ms(fn: Callable[[], object], calls: int = 20, reps: int = 10) -> float | None:
    """GPU time per call in ms: `calls` calls captured in one CUDA graph, replayed `reps` times, median
    per replay / calls. No host overhead (dispatch, argument checks), so kernels of tens of microseconds
    compare fairly. None without a GPU or when fn cannot be captured."""
    if not torch.cuda.is_available():
        return None
    try:
        fn()  # warm-up outside the graph (lazy init, workspaces)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
        g.replay()
    except RuntimeError as e:  # capture refused (a host sync inside fn, an uncapturable library call)
        print(f"  (not capturable in a CUDA graph: {str(e).splitlines()[0][:100]})")
        torch.cuda.synchronize()
        return None
    return median(time_ms(g.replay, warmup=1, reps=reps)) / calls


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_mib(fn: Callable[[], object]) -> float:
    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def save_json(name: str, payload: dict) -> None:
    out = os.environ.get("OUT") or os.environ.get("BENCH_OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, name), "w") as f:
            json.dump(payload, f, indent=2)
