"""The trainer on the CPU with a tiny decoder (the released token layout: 265 ids per frame): the loss falls,
an interrupted and resumed run ends with the parameters of an uninterrupted one, two gloo processes (DDP) make the
update of one process on the combined batch, and checkpoints load with ``AutoGaze.from_pretrained``.

Wall times on a shared 2-core CPU (OMP_NUM_THREADS=1): about 25 s for the file, the DDP test ~12 s of it."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch

pytest.importorskip("safetensors")

from autogaze_ext.config import released_config_dict  # noqa: E402

T = 2  # frames per clip
PER_FRAME = 6  # labels per frame: equal everywhere, so the batch-average normalisation is the same in any split


def tiny_config(path) -> str:
    d = released_config_dict()
    d["gaze_model_config"]["gaze_decoder_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                          num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    d["gaze_model_config"]["vision_model_config"].update(hidden_dim=16, out_dim=32)
    d["gaze_model_config"]["connector_config"]["hidden_dim"] = 32
    file = os.path.join(path, "tiny_config.json")
    with open(file, "w") as f:
        json.dump(d, f)
    return file


class MemoryClips(torch.utils.data.Dataset):
    """LabelledClips' items without video files: seeded 32 x 32 clips (the model resizes them to 224) and labels
    of PER_FRAME distinct ids per frame with decreasing task losses."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.videos = torch.randn(n, T, 3, 32, 32, generator=g)
        self.labels, self.losses = [], []
        for _ in range(n):
            ids = [(torch.randperm(265, generator=g)[:PER_FRAME] + 265 * t).tolist() for t in range(T)]
            self.labels.append(ids)
            self.losses.append([[round(1.0 / (j + 2), 4) for j in range(PER_FRAME)] for _ in range(T)])

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        return {"video": self.videos[i], "gazing_pos": self.labels[i], "task_losses": self.losses[i], "index": i,
                "path": f"clip{i}"}


def make_cfg(tmp_path, out="ckpt", **kw):
    from autogaze_ext.training.trainer import TrainConfig

    base = dict(videos=["(memory)"], labels=None, out=str(tmp_path / out), model_config=tiny_config(tmp_path),
                steps=4, batch_size=2, lr=3e-3, warmup_steps=1, seed=3, workers=0, save_every=2, log_every=1,
                device="cpu", clip_len=T, quiet=True)
    base.update(kw)
    return TrainConfig(**base)


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def batch_loss(trainer, batch) -> float:
    from autogaze_ext.training.losses import ntp_loss

    info = batch["gazing_info"]
    with torch.no_grad():
        s = trainer.model.score(batch["video"], info, precision="fp32")
        out = ntp_loss(s.log_action_probs, info["if_padded_gazing"], s.task_loss_prediction, info["task_losses"],
                       optimize_task_loss_prediction=True)
    return float(out["loss"].mean())


def test_steps_reduce_the_loss(tmp_path):
    from autogaze_ext.training.data import collate_batch
    from autogaze_ext.training.trainer import Trainer

    data = MemoryClips(2)
    tr = Trainer(make_cfg(tmp_path, steps=6, save_every=100), dataset=data)
    batch = collate_batch([data[0], data[1]])
    before = batch_loss(tr, batch)
    tr.train()
    after = batch_loss(tr, batch)
    assert after < before - 0.3, (before, after)
    log = [json.loads(x) for x in open(tmp_path / "ckpt" / "train_log.jsonl")]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert {"loss", "ntp_loss", "task_loss_prediction_loss", "lr", "grad_norm", "tokens_per_s",
            "clips_per_s"} <= set(log[0])
    assert log[0]["lr"] == pytest.approx(3e-3)  # warm-up of one step: step 1 runs at the peak lr


def test_lr_schedule():
    from autogaze_ext.training.trainer import lr_factor

    assert [lr_factor(s, 10, 4, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, 0.1) == pytest.approx(1.0)
    assert lr_factor(7, 10, 4, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 2))))
    assert lr_factor(10, 10, 4, 0.1) == pytest.approx(0.1)


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    from autogaze_ext.training.trainer import Trainer

    data = MemoryClips(4)  # 2 steps per epoch: the resumed run crosses an epoch boundary (new shuffle)
    full = Trainer(make_cfg(tmp_path, "full", steps=5), dataset=data)
    full.train()
    first = Trainer(make_cfg(tmp_path, "cut", steps=5), dataset=data)
    assert first.train(until=3) == 3  # stops (saving) after step 3, as on Ctrl-C / SIGTERM
    again = Trainer(make_cfg(tmp_path, "cut", steps=5), dataset=data)
    assert again.step == 3
    again.train()
    a, b = params(full.model), params(again.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in open(tmp_path / "cut" / "train_log.jsonl")]
    assert steps == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="--batch-size"):
        Trainer(make_cfg(tmp_path, "cut", steps=5, batch_size=1), dataset=data)


def test_checkpoint_loads_with_from_pretrained(tmp_path):
    from safetensors import safe_open

    from autogaze_ext import AutoGaze
    from autogaze_ext.training.trainer import Trainer

    tr = Trainer(make_cfg(tmp_path, steps=1), dataset=MemoryClips(2))
    tr.train()
    m = AutoGaze.from_pretrained(tmp_path / "ckpt")
    mine = tr.model.state_dict()
    assert set(m.state_dict()) == set(mine)
    assert all(torch.equal(v, mine[k]) for k, v in m.state_dict().items())
    assert m.config.raw == tr.model.config.raw
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}  # what transformers' from_pretrained expects
        keys = set(f.keys())
    official = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "official", "model",
                            "model.safetensors")
    if os.path.isfile(official):  # the official checkpoint's weight names, exactly
        import re

        with safe_open(official, "pt") as f:  # (the tiny model has one decoder layer, the released four)
            assert {re.sub(r"layers\.\d+", "layers.N", k) for k in keys} == \
                {re.sub(r"layers\.\d+", "layers.N", k) for k in f.keys()}
    out = m.generate(torch.randn(1, T, 3, 224, 224), gazing_ratio=0.02)
    assert out.gazing_pos.shape[0] == 1


def test_grpo_step_runs_and_updates(tmp_path):
    from autogaze_ext.training.trainer import Trainer

    tr = Trainer(make_cfg(tmp_path, algo="grpo", steps=2, batch_size=1, group_size=2, gazing_ratio=0.02,
                          reward_frames=1, save_every=100), dataset=MemoryClips(2))
    before = params(tr.model)
    tr.train()
    log = [json.loads(x) for x in open(tmp_path / "ckpt" / "train_log.jsonl")]
    assert {"grpo_loss", "reward", "temperature"} <= set(log[0]) and all(r["reward"] < 0 for r in log)
    after = params(tr.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_kw: dict, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path

    from autogaze_ext.training.trainer import Trainer

    tr = Trainer(make_cfg(Path(tmp), **cfg_kw), dataset=MemoryClips(8))
    tr.train()
    import torch.distributed as dist

    dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_one_process_on_the_combined_batch(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from autogaze_ext.training.trainer import Trainer

    # 2 steps: each process takes 2 clips per step, one process 4: the same clips per step (DistributedSampler)
    mp.spawn(_ddp_worker, args=(2, _free_port(), dict(out="ddp", steps=2, batch_size=2), str(tmp_path)), nprocs=2)
    one = Trainer(make_cfg(tmp_path, "one", steps=2, batch_size=4), dataset=MemoryClips(8))
    one.train()
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model.safetensors"))
    start = Trainer(make_cfg(tmp_path, "start", steps=2, batch_size=4), dataset=MemoryClips(8))
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
        moved += not torch.equal(b[k], start.model.state_dict()[k])
    assert moved > len(a) // 2  # the update is not trivially zero
    logs = [json.loads(x) for x in open(tmp_path / "ddp" / "train_log.jsonl")]
    one_logs = [json.loads(x) for x in open(tmp_path / "one" / "train_log.jsonl")]
    assert [r["loss"] for r in logs] == pytest.approx([r["loss"] for r in one_logs], rel=1e-5)
