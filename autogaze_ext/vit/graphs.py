"""CUDA graphs of an accelerated ViT's block stack.

A stock ViT's Python forward launches ~15 kernels per block: at a few hundred gazed tokens the host, not the
GPU, sets the pace. The block stack (pre-norm, blocks, final norm) runs here as one CUDA-graph replay.

Packed token counts change from call to call, so a graph serves a *bucket* of row counts: the real tokens
fill rows [0, total) of its static input, and the rows up to the bucket's size form one extra video of a
single frame, which no real token can see (attention never crosses videos) and whose outputs are dropped.
Buckets are at most 12.5% larger than the call (at least 64 rows); graphs are kept per (rows, videos, frames,
mode, prefix, dtype), least recently used evicted, and share one memory pool.

Replays read the model's parameters in place: updating weights in place is seen; replacing parameter
tensors (or moving the model) needs ``GazedViT.clear_graphs()``.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch


def bucket_rows(total: int) -> int:
    """Smallest bucket holding total rows: a multiple of max(64, 2^(floor(log2 total) - 3))."""
    if total <= 64:
        return 64
    grain = max(64, 1 << (total.bit_length() - 4))
    return -(-total // grain) * grain


def capture(fn: Callable, pool=None):
    """fn() captured into a CUDA graph after one warm-up call on a side stream (library handles, lazy
    initialisation): returns (graph, fn's output, which each replay rewrites)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


class _Graph:
    """One captured block stack: static input rows, offsets (real videos + the filler video) and output."""

    def __init__(self, run: Callable, rows: int, width: int, n_videos: int, n_frames: int, dtype, device, pool):
        self.x = torch.zeros(rows, width, dtype=dtype, device=device)
        # the filler video / frame ends at the last row: the final entries never change
        self.cu_seqlens = torch.zeros(n_videos + 2, dtype=torch.int32, device=device)
        self.cu_frames = torch.zeros(n_frames + 2, dtype=torch.int32, device=device)
        self.cu_seqlens[-1] = self.cu_frames[-1] = rows
        with torch.cuda.device(device):  # streams and graph on the tensors' GPU
            self.graph, self.out = capture(lambda: run(self.x, self.cu_seqlens, self.cu_frames), pool)

    def __call__(self, x: torch.Tensor, cu_seqlens: torch.Tensor, cu_frames: torch.Tensor) -> torch.Tensor:
        total = x.shape[0]
        self.x[:total].copy_(x)
        self.x[total:].zero_()  # filler rows: finite whatever ran before
        self.cu_seqlens[:-1].copy_(cu_seqlens)
        self.cu_frames[:-1].copy_(cu_frames)
        self.graph.replay()
        return self.out[:total].clone()


class BlockGraphs:
    """Graphs of ``run(x, cu_seqlens, cu_frames) -> out`` (x, out: (rows, D)) keyed by shape and settings."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool = None

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()
        self._pool = None

    def __call__(self, run: Callable, x: torch.Tensor, cu_seqlens: torch.Tensor, cu_frames: torch.Tensor,
                 settings: tuple) -> torch.Tensor:
        rows = bucket_rows(x.shape[0])
        key = (rows, x.shape[1], cu_seqlens.numel(), cu_frames.numel(), x.dtype, x.device, settings)
        graph = self._graphs.get(key)
        if graph is None:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            while len(self._graphs) >= self.capacity:
                self._graphs.popitem(last=False)
            graph = _Graph(run, rows, x.shape[1], cu_seqlens.numel() - 1, cu_frames.numel() - 1, x.dtype, x.device,
                           self._pool)
            self._graphs[key] = graph
        else:
            self._graphs.move_to_end(key)
        return graph(x, cu_seqlens, cu_frames)
