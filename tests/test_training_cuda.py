"""The trainer on a GPU: bf16 autocast steps reduce the loss and give a loadable checkpoint; an fp32 run resumed
after an interruption ends near the uninterrupted one; greedy labels on the GPU equal those on the CPU; two GPUs
under torchrun (nccl) make the update of one GPU on the combined batch. Seconds each on an H100."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.cuda
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from test_training_loop import MemoryClips, batch_loss, make_cfg, params  # noqa: E402


def test_bf16_steps_on_the_gpu(tmp_path):
    from autogaze_ext import AutoGaze
    from autogaze_ext.training.data import collate_batch
    from autogaze_ext.training.trainer import Trainer

    data = MemoryClips(4)
    tr = Trainer(make_cfg(tmp_path, device="cuda", steps=8, batch_size=4, save_every=100), dataset=data)
    batch = collate_batch([data[i] for i in range(4)])
    batch["video"] = batch["video"].cuda()
    batch["gazing_info"] = {k: v.cuda() for k, v in batch["gazing_info"].items()}
    before = batch_loss(tr, batch)
    tr.train()
    assert batch_loss(tr, batch) < before - 0.3
    m = AutoGaze.from_pretrained(tmp_path / "ckpt", device="cuda")
    assert all(torch.equal(v, tr.model.state_dict()[k]) for k, v in m.state_dict().items())


def test_resume_on_the_gpu(tmp_path):
    from autogaze_ext.training.trainer import Trainer

    data = MemoryClips(4)
    full = Trainer(make_cfg(tmp_path, "full", device="cuda", precision="fp32", steps=4), dataset=data)
    full.train()
    Trainer(make_cfg(tmp_path, "cut", device="cuda", precision="fp32", steps=4), dataset=data).train(until=2)
    again = Trainer(make_cfg(tmp_path, "cut", device="cuda", precision="fp32", steps=4), dataset=data)
    assert again.step == 2
    again.train()
    a, b = params(full.model), params(again.model)
    for k in a:  # CUDA backward kernels may add in another order: equal to float rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_greedy_labels_gpu_equal_cpu():
    from autogaze_ext.greedy import GreedyGazer
    from autogaze_ext.training.labels import label_clips

    video = MemoryClips(2).videos.repeat_interleave(2, dim=1)  # (2, 4, 3, 32, 32)
    cpu = label_clips(GreedyGazer(max_error=0.2), video)
    gpu = label_clips(GreedyGazer(max_error=0.2).to("cuda"), video)
    assert [r["gazing_pos"] for r in cpu] == [r["gazing_pos"] for r in gpu]
    for a, b in zip(cpu, gpu):
        for fa, fb in zip(a["task_losses"], b["task_losses"]):
            assert fa == pytest.approx(fb, abs=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_two_gpus_match_one(tmp_path):
    """The train command under torchrun (nccl) against one process on the combined batch, on files."""
    import numpy as np

    from autogaze_ext.synthetic import moving_objects_clip
    from pipeline_helpers import write_video
    from test_training_loop import tiny_config

    root = tmp_path / "data" / "train"
    root.mkdir(parents=True)
    for i in range(8):
        write_video(root / f"v{i}.mp4", moving_objects_clip(4, 64, 64, seed=i))
    labels = {str(root / f"v{i}.mp4"): {"gazing_pos": [(np.random.default_rng(i * 4 + t).permutation(265)[:6]
                                                         + 265 * t).tolist() for t in range(4)],
                                        "task_losses": [[0.5] * 6 for _ in range(4)]} for i in range(8)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    common = ["train", "--videos", str(tmp_path / "data"), "--labels", str(tmp_path / "labels.json"),
              "--model-config", tiny_config(tmp_path), "--steps", "2", "--clip-len", "4", "--precision", "fp32",
              "--device", "cuda", "--workers", "1", "--quiet", "--seed", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "autogaze_ext",
                    *common, "--batch-size", "2", "--out", str(tmp_path / "two")], check=True, env=env)
    subprocess.run([sys.executable, "-m", "autogaze_ext", *common, "--batch-size", "4", "--out",
                    str(tmp_path / "one")], check=True, env=env)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "two" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
