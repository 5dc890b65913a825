"""The fast path on a CUDA device (CUDA graphs, the compiled decoder ops) gives the reference path's ids on
random weights and random videos."""
from __future__ import annotations

import pytest
import torch

from conftest import random_video
from test_model_behaviour import _model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONFIGS = {
    "ratio list": dict(gazing_ratio=[0.2, 0.0378, 0.06, 0.0378]),
    "ratio 0.03": dict(gazing_ratio=0.03),
    "ratio 1.0": dict(gazing_ratio=1.0),
    "ratio + requirement": dict(gazing_ratio=0.75, task_loss_requirement=0.02),
    "requirement only": dict(task_loss_requirement=0.05),
}


@pytest.fixture(scope="module")
def cuda_models():
    return {seed: _model(60 + seed).to("cuda") for seed in range(2)}


def _row_frames(out, r: int) -> list:
    """Row r's unpadded ids, frame by frame."""
    ids, pads, s = out.gazing_pos[r].cpu(), out.if_padded_gazing[r].cpu(), 0
    frames = []
    for n in out.num_gazing_each_frame.tolist():
        frames.append(ids[s: s + n][~pads[s: s + n]])
        s += n
    return frames


@pytest.mark.parametrize("B, config", [(B, c) for B in (1, 3) for c in CONFIGS] +
                         [(64, "ratio list"), (64, "ratio + requirement")])
def test_cuda_fast_equals_reference_random(cuda_models, B, config):
    """Each row of a fast batched decode against the reference path on that row alone, frame by frame up to the
    row's first frame with a decision within 1e-4 of a tie (design.md §4: fp32 sums in another order may break
    such a tie either way)."""
    m = cuda_models[B % 2]
    T = 2 if config == "ratio 1.0" else 4
    video = random_video(B, T, seed=70 + B, device="cuda")
    kw = CONFIGS[config]
    fast = m.generate(video, backend="fast", **kw)
    compared = 0
    for r in range(B):
        margins: list = []
        ref = m.generate(video[r: r + 1], margins=margins, backend="reference", **kw)
        cut = next((t for t, mg in enumerate(margins) if mg < 1e-4), T)
        got, want = _row_frames(fast, r), _row_frames(ref, 0)
        for t in range(cut):
            assert torch.equal(got[t], want[t]), f"{config}, B={B}: row {r}, frame {t} differs"
        compared += cut
        if config == "ratio 1.0":  # every frame gazes all its tokens, once each, whatever the ties
            assert all(torch.equal(f.sort().values, torch.arange(265) + 265 * t) for t, f in enumerate(got))
    if config != "ratio 1.0":  # 265 decisions per frame: near-ties are the rule there
        assert compared >= B * T // 2, f"{config}, B={B}: only {compared} of {B * T} row frames clear of ties"


def test_tf32_mode_on_cuda_keeps_exact_mode_exact(cuda_models):
    """precision="tf32" at a batch whose prefill projections go through cuBLAS: a well-formed result (caps met,
    no id twice in a frame), the TF32 flags restored, and the exact mode's runner untouched by it."""
    m = cuda_models[0]
    B, T = 16, 3  # 16 x 206 prefill rows > FastGazeRunner.FUSED_LINEAR_MAX_ROWS: cuBLAS GEMMs
    video = random_video(B, T, seed=90, device="cuda")
    kw = dict(gazing_ratio=[0.2, 0.0378, 0.06])
    exact = m.generate(video, backend="fast", **kw)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    fast32 = m.generate(video, backend="fast", precision="tf32", **kw)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    assert fast32.num_gazing_each_frame.tolist() == exact.num_gazing_each_frame.tolist() == [53, 10, 15]
    for r in range(B):
        for f in _row_frames(fast32, r):
            assert f.unique().numel() == f.numel()
    a = exact.agreement(fast32)
    assert a["rows"] == B and 0.0 <= a["same_ids"] <= a["same_masks"] <= 1.0 and a["token_overlap"] > 0.0
    again = m.generate(video, backend="fast", **kw)
    assert torch.equal(again.gazing_pos, exact.gazing_pos)
