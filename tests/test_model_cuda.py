"""The model on a CUDA device gives the CPU's ids (exact fp32: TF32 off inside generate)."""
from __future__ import annotations

import pytest
import torch

from conftest import case_input, run_case

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def cuda_model(official_model):
    import copy

    return copy.deepcopy(official_model).to("cuda")


@pytest.mark.parametrize("name", [f"case{i}" for i in range(1, 10)])
def test_fixture_case_on_cuda(official, cuda_model, name):
    _, fx, meta = official
    case = next(c for c in meta["cases"] if c["name"] == name)
    ids, pads, counts, masks = run_case(cuda_model, case_input(fx, case).cuda(), case)
    assert counts.tolist() == fx[f"{name}/num_gazing_each_frame"].tolist()
    assert torch.equal(pads, fx[f"{name}/if_padded_gazing"].bool())
    assert torch.equal(ids, fx[f"{name}/gazing_pos"])
    for s in range(4):
        assert torch.equal(masks[s], fx[f"{name}/gazing_mask_{s}"])


def test_tf32_flags_restored(official, cuda_model):
    _, fx, meta = official
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        cuda_model.generate(case_input(fx, meta["cases"][0])[:, :1].cuda(), gazing_ratio=0.1)
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
