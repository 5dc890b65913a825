"""The encode pipeline on a GPU: the same features as the pieces run by hand, in fp32 and bf16."""
from __future__ import annotations

import pytest
import torch

from pipeline_helpers import compare_to_file, decoded_frames, fixture_model_dir, tiny_siglip, write_video

pytestmark = pytest.mark.cuda
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("av")
pytest.importorskip("transformers")

import autogaze_ext as ag  # noqa: E402
from autogaze_ext.synthetic import moving_objects_clip  # noqa: E402


@pytest.fixture(scope="module")
def gazer():
    d = fixture_model_dir()
    if d is None:
        pytest.skip("official fixture model not found ($AUTOGAZE_FIXTURES, .fixtures/official, ../shared)")
    return ag.AutoGaze.from_pretrained(d).cuda()


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cuda_pipeline_matches_by_hand(tmp_path, gazer, dtype, rtol):
    # 36 frames (2 full clips + 4), 300 x 700 -> 2 x 4 tiles; batches of 6 rows cross clips and are padded
    path = write_video(tmp_path / "v.mp4", moving_objects_clip(36, 300, 700, seed=11))
    enc = ag.Encoder(gazer, tiny_siglip(), device="cuda", gazing_ratio=[0.75] + [0.0378] * 15, batch_size=6,
                     vit_dtype=dtype)
    res = enc.encode(path, tmp_path / "v.safetensors")
    assert (res.frames, res.clips, res.tiles) == (36, 3, 8)
    assert compare_to_file(enc, decoded_frames(path), tmp_path / "v.safetensors", rtol) == 24
    assert res.stages["gaze"] > 0 and res.stages["vit"] > 0 and res.peak_gpu_mib > 0


def test_cuda_pipeline_requirement_and_tf32(tmp_path, gazer):
    frames = moving_objects_clip(16, 448, 448, seed=12)
    enc = ag.Encoder(gazer, tiny_siglip(), device="cuda", gazing_ratio=0.75, task_loss_requirement=0.7,
                     precision="tf32", batch_size=4, vit_dtype=torch.float32)
    res = enc.encode(frames, tmp_path / "r.safetensors")
    f = ag.load_features(tmp_path / "r.safetensors")
    assert f.total_tokens == res.tokens and f.meta["settings"]["precision"] == "tf32"
    assert f.meta["settings"]["task_loss_requirement"] == 0.7
