"""Shared test helpers: where the official fixtures live, and how to build a case's input.

Fixtures are looked up in $AUTOGAZE_FIXTURES, then ``<repo>/.fixtures/official`` (a copy that
travels to GPU machines), then ``<repo>/../shared/fixtures/official``. Without them fixture tests
skip, except under CI (``CI=true``), where a missing fixture set is a failure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path | None:
    cands = [os.environ.get("AUTOGAZE_FIXTURES"), REPO / ".fixtures" / "official",
             REPO.parent / "shared" / "fixtures" / "official"]
    for c in cands:
        if c and (Path(c) / "cases.json").is_file():
            return Path(c)
    return None


def data_dir() -> Path | None:
    for c in [os.environ.get("AUTOGAZE_DATA"), REPO / ".fixtures" / "data", REPO.parent / "shared" / "data"]:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def _need(what: str):
    msg = f"{what} not found (looked in $AUTOGAZE_FIXTURES, .fixtures/, ../shared/)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " — required under CI")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def official():
    """(fixture dir, tensors, cases.json) of the official outputs."""
    d = fixture_dir()
    if d is None:
        _need("official fixtures")
    from safetensors.torch import load_file

    return d, load_file(str(d / "cases.safetensors")), json.loads((d / "cases.json").read_text())


@pytest.fixture(scope="session")
def official_model(official):
    import autogaze_ext as ag

    return ag.AutoGaze.from_pretrained(official[0] / "model")


def case_input(fx: dict, case: dict) -> torch.Tensor:
    rows = []
    for r in case["input_rows"]:
        x = fx[r["tensor"]][:, r["frames"][0]: r["frames"][1]]
        if r["flip"] != "none":
            x = torch.flip(x, dims=[-1] if r["flip"] == "width" else [-2])
        rows.append(x)
    return torch.cat(rows, dim=0)


def run_case(model, video: torch.Tensor, case: dict):
    """Run a fixture case the way it was made; returns (ids, pads, counts, masks) on the CPU."""
    kw = case["kwargs"]
    if case["mode"] == "stream":
        state, outs = None, []
        for t in range(video.shape[1]):
            o, state = model.generate(video[:, t: t + 1], **kw, state=state, return_state=True)
            outs.append(o)
        V = outs[0].num_vision_tokens_each_frame
        ids = torch.cat([o.gazing_pos + V * t for t, o in enumerate(outs)], 1)
        pads = torch.cat([o.if_padded_gazing for o in outs], 1)
        counts = torch.cat([o.num_gazing_each_frame for o in outs])
        masks = [torch.cat([o.gazing_mask[s] for o in outs], 1) for s in range(len(outs[0].gazing_mask))]
    else:
        o = model.generate(video, **kw)
        ids, pads, counts, masks = o.gazing_pos, o.if_padded_gazing, o.num_gazing_each_frame, o.gazing_mask
    return ids.cpu(), pads.cpu(), counts.cpu(), [m.cpu() for m in masks]


def frames_equal_up_to_tie(a, b, margins, tol: float = 1e-4):
    """Compare two GazeOutputs frame by frame, up to the first frame whose reference decisions
    came within ``tol`` of a tie (design.md §4). Returns (frames compared, first frame cut or None)."""
    cut = next((t for t, m in enumerate(margins) if m < tol), None)
    T = len(a.num_gazing_each_frame)
    upto = T if cut is None else cut
    for t in range(upto):
        fa, fb = frame_slots(a, t), frame_slots(b, t)
        assert fa[0].shape == fb[0].shape, f"frame {t}: {fa[0].shape[1]} vs {fb[0].shape[1]} slots"
        assert torch.equal(fa[1], fb[1]), f"frame {t}: padding differs"
        assert torch.equal(fa[0][~fa[1]], fb[0][~fb[1]]), f"frame {t}: ids differ"
    return upto, cut


def frame_slots(o, t: int):
    counts = o.num_gazing_each_frame.tolist()
    s = sum(counts[:t])
    return o.gazing_pos[:, s: s + counts[t]].cpu(), o.if_padded_gazing[:, s: s + counts[t]].cpu()


def random_video(B: int, T: int, H: int = 224, W: int = 224, seed: int = 0, device="cpu") -> torch.Tensor:
    """Smooth random clips in the processor's value range, with motion between frames."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, 1, 3, H // 8 + 2, W // 8 + 2, generator=g)
    drift = torch.randn(B, T, 3, H // 8 + 2, W // 8 + 2, generator=g).cumsum(1) * 0.3
    x = torch.nn.functional.interpolate((base + drift).flatten(0, 1), size=(H, W), mode="bilinear",
                                        align_corners=False)
    return (x.view(B, T, 3, H, W) * 1.2).to(device)


@pytest.fixture(scope="session")
def official_siglip():
    """(dir, tensors) of the official AutoGaze SigLIP fixture (siglip/ in the fixture set)."""
    d = fixture_dir()
    if d is None or not (d / "siglip" / "fixture.safetensors").is_file():
        _need("official SigLIP fixture (siglip/fixture.safetensors)")
    from safetensors.torch import load_file

    return d / "siglip", load_file(str(d / "siglip" / "fixture.safetensors"))


def cuda_us_per_call(fn, reps: int = 20, iters: int = 50, graph: bool = True) -> float:
    """µs per call of fn on the GPU: reps calls captured in one CUDA graph and replayed iters times (graph=True),
    or iters eager calls back to back. For the timing prints of the GPU tests."""
    fn()
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(reps):
                fn()
        g.replay()
        run, calls = g.replay, iters * reps
    else:
        run, calls = fn, iters
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        run()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) * 1e3 / calls


def on_side_stream(fn):
    """fn() run on a fresh CUDA stream that first waits for the current one, then synchronized: an op must follow
    the current stream, not the default one."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    side.synchronize()
    return out


def capture_graph(fn, warmup=None):
    """(graph, what fn returned during capture): warmup() (default fn) once on a side stream outside the capture,
    as torch.cuda.graph needs, then fn captured; graph.replay() reruns it on the tensors fn closes over, writing
    the returned tensors again."""
    on_side_stream(warmup or fn)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def poison_cuda_cache() -> None:
    """Leave the caching allocator's free blocks full of 0x7F bytes, so an output element (or workspace entry)
    a kernel forgets to write shows up as 3.4e38 instead of a lucky zero."""
    keep = [torch.full((n,), 0x7F, dtype=torch.uint8, device="cuda") for n in [1 << 28] + [1 << 20] * 32]
    torch.cuda.synchronize()
    del keep


def clone_state(state: dict, device="cpu") -> dict:
    """A copy of a dict of tensors (an op's inputs and in-place state), on device."""
    return {k: v.clone().to(device) for k, v in state.items()}
