"""The fast decoder (static shapes, device-side selection) gives the reference path's ids."""
from __future__ import annotations

import pytest
import torch

from conftest import case_input, frames_equal_up_to_tie, random_video
from test_model_behaviour import _model


@pytest.mark.parametrize("kw", [
    dict(gazing_ratio=0.75, task_loss_requirement=0.7),
    dict(gazing_ratio=[0.2, 0.06, 0.06]),
    dict(task_loss_requirement=0.7),
    dict(gazing_ratio=1.0),
])
def test_fast_equals_official_on_fixture_frames(official, official_model, kw):
    _, fx, meta = official
    video = case_input(fx, meta["cases"][3])[:, :3]  # the clip and its mirror, 3 frames
    ref = official_model.generate(video, **kw, backend="reference")
    fast = official_model.generate(video, **kw, backend="fast")
    assert fast.num_gazing_each_frame.tolist() == ref.num_gazing_each_frame.tolist()
    assert torch.equal(fast.if_padded_gazing, ref.if_padded_gazing)
    assert torch.equal(fast.gazing_pos, ref.gazing_pos)
    for a, b in zip(fast.gazing_mask, ref.gazing_mask):
        assert torch.equal(a, b)


def test_fast_equals_official_case9_target_scales(official, official_model):
    _, fx, meta = official
    case = next(c for c in meta["cases"] if c["name"] == "case9")
    out = official_model.generate(case_input(fx, case), **case["kwargs"], backend="fast")
    assert torch.equal(out.gazing_pos, fx["case9/gazing_pos"])
    assert torch.equal(out.if_padded_gazing, fx["case9/if_padded_gazing"].bool())


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_equals_reference_random(seed):
    m = _model(20 + seed)
    video = random_video(3, 3, seed=30 + seed)
    kw = dict(gazing_ratio=[0.12, 0.04, 0.3], task_loss_requirement=None if seed == 0 else 0.02)
    margins: list = []
    ref = m.generate(video, margins=margins, backend="reference", **kw)
    fast = m.generate(video, backend="fast", **kw)
    compared, cut = frames_equal_up_to_tie(ref, fast, margins)
    assert cut is None or cut > 0


def test_fast_runner_is_reused_and_edge_caps():
    m = _model(3)
    video = random_video(1, 2, seed=40)
    a = m.generate(video, gazing_ratio=1 / 265, backend="fast")  # cap 1: one token per frame
    assert a.num_gazing_each_frame.tolist() == [1, 1]
    b = m.generate(video, gazing_ratio=1 / 265, backend="reference")
    assert torch.equal(a.gazing_pos, b.gazing_pos)
    n_runners = len(m._fast_runners)
    m.generate(video, gazing_ratio=0.05, backend="fast")
    assert len(m._fast_runners) == n_runners


def test_fast_rejects_what_it_cannot_do():
    m = _model(4)
    v = random_video(1, 1, seed=41)
    with pytest.raises(ValueError, match="backend"):
        m.generate(v, gazing_ratio=0.1, backend="fast", return_state=True)
    with pytest.raises(ValueError, match="backend"):
        m.generate(v, gazing_ratio=0.1, backend="fast", do_sample=True)
    with pytest.raises(ValueError, match="backend"):
        m.generate(v, gazing_ratio=0.1, backend="gpu")


def _runner(model_seed: int, caps: list, video_seed: int, req=None, use_ops: bool = True):
    """A fresh FastGazeRunner (no graphs) for B=2 random clips, with its (vision, reqs) inputs; the runner's
    class knobs as the caller left them. Skips when use_ops is set and the compiled decoder ops are not built."""
    from autogaze_ext.model.fast import FastGazeRunner, _slot_budget
    from autogaze_ext.ops.decoder import DecoderOps

    if use_ops and not DecoderOps.available(torch.device("cpu")):
        pytest.skip("compiled decoder ops not built")
    m = _model(model_seed)
    B, T = 2, len(caps)
    vision, _ = m.gazing_model.embed_video(random_video(B, T, seed=video_seed))
    reqs = None if req is None else torch.full((B, T), req)
    r = FastGazeRunner(m.gazing_model.gaze_decoder, B, T, vision.shape[2], _slot_budget(caps, 196, 10),
                       use_graphs=False, use_ops=use_ops)
    return r, vision, reqs


def _runner_decode(model_seed: int, caps: list, video_seed: int, req=None, use_ops: bool = True):
    """(ids, counts) of a fresh _runner."""
    r, vision, reqs = _runner(model_seed, caps, video_seed, req, use_ops)
    with torch.no_grad():
        return r.decode(vision, caps, reqs)


@pytest.mark.parametrize("req", [None, 0.02])
def test_fast_runner_last_step_only_chooses(req):
    """A frame's last possible step runs choose() alone: afterwards every row has stopped, so the feed it skips
    would change nothing, and the ids equal those of a run that feeds after every step."""
    from autogaze_ext.model.fast import FastGazeRunner

    caps = [25, 10, 1, 30]
    r, vision, reqs = _runner(7, caps, 52, req, use_ops=False)
    chose = []

    def run_checked(name):
        FastGazeRunner._run(r, name)
        if name == "choose":
            chose.append(int(r.t))
            assert not bool(r.active) and not bool(r.unfinished.any())
            before = (r.seq.clone(), r.kvalid.clone(), r.h.clone())
            r._feed(r.fids[:, :r.K].clone(), r.active)  # the feed step() would run next: no effect
            assert all(torch.equal(a, b) for a, b in zip(before, (r.seq, r.kvalid, r.h)))

    r._run = run_checked
    with torch.no_grad():
        ids, counts = r.decode(vision, caps, reqs)
    if req is None:
        assert chose == [0, 1, 2, 3] and counts.tolist() == caps
    r._run = lambda name: FastGazeRunner._run(r, "step" if name == "choose" else name)
    with torch.no_grad():
        ids_fed, counts_fed = r.decode(vision, caps, reqs)
    assert torch.equal(counts, counts_fed) and torch.equal(ids, ids_fed)


@pytest.mark.parametrize("req", [None, 0.02])
def test_fast_runner_ops_and_torch_paths_agree(req):
    """The compiled decoder ops and the PyTorch ops inside the fast runner make the same choices."""
    outs = [_runner_decode(5, [30, 12, 25], 50, req, use_ops) for use_ops in (False, True)]
    assert torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][0], outs[1][0])


def test_fast_runner_cublas_projections_agree(monkeypatch):
    """The many-row projection path (PyTorch's RMSNorm + cuBLAS, taken above FUSED_LINEAR_MAX_ROWS rows) makes
    the same choices as the fused op; the thresholds are lowered so that a small batch takes it."""
    from autogaze_ext.model.fast import FastGazeRunner

    outs = []
    for max_rows in (2048, 8):
        monkeypatch.setattr(FastGazeRunner, "FUSED_LINEAR_MAX_ROWS", max_rows)
        monkeypatch.setattr(FastGazeRunner, "LAYERS_OP_MAX_ROWS", 0)  # chain the ops here, through _linear
        outs.append(_runner_decode(6, [40, 12, 21], 51))
    assert torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][0], outs[1][0])
    assert outs[0][1].tolist() == [40, 12, 21]
