"""precision="tf32" (opt-in TF32 for cuBLAS/cuDNN) and GazeOutput.agreement, which measures it."""
from __future__ import annotations

import pytest
import torch

from conftest import random_video
from test_model_behaviour import _model


def test_precision_is_checked_and_cpu_stays_fp32():
    m = _model(5)
    v = random_video(2, 2, seed=50)
    with pytest.raises(ValueError, match="precision"):
        m.generate(v, gazing_ratio=0.1, precision="bf16")
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for backend in ("reference", "fast"):
        a = m.generate(v, gazing_ratio=0.1, backend=backend)
        b = m.generate(v, gazing_ratio=0.1, backend=backend, precision="tf32")
        assert torch.equal(a.gazing_pos, b.gazing_pos) and torch.equal(a.if_padded_gazing, b.if_padded_gazing)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    # captured graphs keep the matmul kernels of their capture: one runner per precision
    assert {k[2] for k in m._fast_runners} == {"fp32", "tf32"}


@pytest.mark.parametrize("on", [False, True])
def test_tf32_context_sets_and_restores_both_flags(on):
    from autogaze_ext.model.precision import tf32 as _tf32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with _tf32(on):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (on, on)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_agreement_counts_rows_and_patch_overlap():
    m = _model(6)
    v = random_video(3, 2, seed=51)
    out = m.generate(v, gazing_ratio=0.05)  # caps 13 per frame
    assert out.agreement(out) == {"rows": 3, "same_ids": 1.0, "same_masks": 1.0, "token_overlap": 1.0}

    other = m.generate(v, gazing_ratio=0.05)
    n0 = int(out.num_gazing_each_frame[0])
    # row 1: its first frame's ids reversed (same patches, other order)
    other.gazing_pos[1, :n0] = out.gazing_pos[1, :n0].flip(0)
    # row 2: one patch of frame 1 swapped for one the row did not select
    V = out.num_vision_tokens_each_frame
    chosen = set((out.gazing_pos[2, n0:] - V).tolist())
    new = next(i for i in range(V) if i not in chosen)
    other.gazing_pos[2, n0] = new + V
    from autogaze_ext.model.masks import gazing_masks

    other.gazing_mask = gazing_masks(other.gazing_pos, other.if_padded_gazing, 2, m.config.grids)
    r = out.agreement(other)
    k = int(out.num_gazing_each_frame[1])  # real tokens in frame 1 of row 2 (no pads without a requirement)
    assert r["rows"] == 3
    assert r["same_ids"] == pytest.approx(1 / 3)
    assert r["same_masks"] == pytest.approx(2 / 3)
    assert r["token_overlap"] == pytest.approx((5 + (k - 1) / (k + 1)) / 6)

    with pytest.raises(ValueError, match="other"):
        out.agreement(m.generate(v[:2], gazing_ratio=0.05))
