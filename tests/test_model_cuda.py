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


@pytest.mark.parametrize("shape", [(1, 16, 224), (3, 5, 224), (2, 2, 64)])
def test_patch_embed_gemm_matches_conv(cuda_model, shape):
    """The CUDA patch embedding (one GEMM) against the conv it replaces, on fresh random frames."""
    from autogaze_ext.model.encoder import ShallowVideoConvNet
    from autogaze_ext.model.autogaze import exact_fp32

    net = next(m for m in cuda_model.modules() if isinstance(m, ShallowVideoConvNet))
    B, T, S = shape
    video = torch.randn(B, T, 3, S, S, device="cuda", generator=torch.Generator("cuda").manual_seed(S + T))
    with torch.no_grad(), exact_fp32():
        got = net.patch_embed(video)
        want = net.temporal_conv(video.permute(0, 2, 1, 3, 4)).permute(0, 2, 3, 4, 1)
    assert got.shape == want.shape == (B, T, S // 16, S // 16, 192)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B", [1, 64])
def test_trunk_conv_choice_matches_conv3d(cuda_model, B):
    """The trunk conv on CUDA (3D conv, or per-tap 2D convs where they timed clearly faster) against the 3D
    conv, on fresh random activations; the choice is made once per shape and kept."""
    from autogaze_ext.model.encoder import CausalConv3dBlock
    from autogaze_ext.model.autogaze import exact_fp32

    block = next(m for m in cuda_model.modules() if isinstance(m, CausalConv3dBlock))
    x = torch.randn(B, 192, 18, 14, 14, device="cuda", generator=torch.Generator("cuda").manual_seed(B))
    with torch.no_grad(), exact_fp32():
        got, want = block._conv(x), block.conv3d(x)
        assert len([k for k in block._taps_choice if k[0] == tuple(x.shape)]) == (B * 16 >= block.TAPS_MIN_FRAMES)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(block._conv_taps(x), want, rtol=1e-5, atol=1e-4)
