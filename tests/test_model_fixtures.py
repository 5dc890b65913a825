"""Exact parity with the official AutoGaze outputs in the fixture set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import autogaze_ext as ag
from conftest import case_input, run_case

CASES = [f"case{i}" for i in range(1, 10)]


def _case(meta, name):
    return next(c for c in meta["cases"] if c["name"] == name)


@pytest.mark.parametrize("name", CASES)
def test_case_exact(official, official_model, name):
    _, fx, meta = official
    case = _case(meta, name)
    video = case_input(fx, case)
    ids, pads, counts, masks = run_case(official_model, video, case)
    assert counts.tolist() == fx[f"{name}/num_gazing_each_frame"].tolist()
    assert torch.equal(pads, fx[f"{name}/if_padded_gazing"].bool())
    assert torch.equal(ids, fx[f"{name}/gazing_pos"])  # padded slot values included
    assert len(masks) == 4
    for s in range(4):
        assert torch.equal(masks[s], fx[f"{name}/gazing_mask_{s}"]), f"mask {s}"


def test_vision_embeddings(official, official_model):
    _, fx, meta = official
    video = case_input(fx, _case(meta, "case1"))
    with torch.no_grad():
        emb, _ = official_model.gazing_model.embed_video(video)
    ref = fx["case1/vision_embeds"]
    assert emb.shape == ref.shape
    assert ((emb - ref).norm() / ref.norm()).item() < 1e-5


def test_official_call_style(official, official_model):
    _, fx, meta = official
    video = case_input(fx, _case(meta, "case3"))
    out = official_model({"video": video}, gazing_ratio=[0.2] + [0.06] * 15, task_loss_requirement=0.6,
                         generate_only=True)
    assert torch.equal(out["gazing_pos"], fx["case3/gazing_pos"])
    assert torch.equal(out["if_padded_gazing"], fx["case3/if_padded_gazing"].bool())
    assert out["has_task_loss_requirement"] and out["scales"] == [32, 64, 112, 224]
    # the official default generate_only=False adds the teacher-forced scores of the gaze (tests/test_training_parity.py)
    with torch.no_grad():
        scored = official_model({"video": video[:, :2]}, gazing_ratio=0.1)
    assert scored["log_action_probs"].shape == scored["task_loss_prediction"].shape == scored["gazing_pos"].shape


def test_official_style_streaming(official, official_model):
    _, fx, meta = official
    video = case_input(fx, _case(meta, "case1"))[:, :3]
    pkv, ids = None, []
    for t in range(3):
        o = official_model({"video": video[:, t: t + 1]}, gazing_ratio=0.75, task_loss_requirement=0.7,
                           generate_only=True, use_cache=True, past_key_values=pkv)
        pkv = o["past_key_values"]
        ids.append(o["gazing_pos"] + 265 * t)
    n = sum(fx["case1/num_gazing_each_frame"][:3].tolist())
    assert torch.equal(torch.cat(ids, 1), fx["case1/gazing_pos"][:, :n])


OFFICIAL_STATIC_KEYS = ["gazing_pos", "log_action_probs", "gazing_mask", "scales", "frame_sampling_rate",
                        "num_vision_tokens_each_frame", "num_gazing_each_frame", "if_padded_gazing",
                        "task_loss_prediction", "has_task_loss_requirement", "task_loss_requirement",
                        "past_key_values", "past_input_embeds", "past_attention_mask", "past_conv_values"]


def test_official_dict_shape(official, official_model):
    """The keys, their order and shapes of the official forward's dictionary (spec §1.3, §5.9): the four past_*
    keys always present (None unless use_cache); with target scales log_action_probs / task_loss_prediction
    deleted and the requirement per tile row (B * tiles, T)."""
    _, fx, meta = official
    video = case_input(fx, _case(meta, "case1"))[:, :2]
    out = official_model({"video": video}, gazing_ratio=0.75, task_loss_requirement=0.7, generate_only=True)
    assert out.keys() == OFFICIAL_STATIC_KEYS and list(out.to_dict()) == OFFICIAL_STATIC_KEYS
    for k in ("log_action_probs", "task_loss_prediction", "past_key_values", "past_input_embeds",
              "past_attention_mask", "past_conv_values"):
        assert k in out and out[k] is None
    assert out["task_loss_requirement"].shape == (1, 2) and out["frame_sampling_rate"] == 1
    only_ratio = official_model({"video": video}, gazing_ratio=0.75, generate_only=True)
    assert only_ratio["task_loss_requirement"] is None and only_ratio["has_task_loss_requirement"] is False

    case = _case(meta, "case9")  # 2 rows of 392 px: 2 x 2 tiles each
    v392 = case_input(fx, case)
    out = official_model({"video": v392}, **case["kwargs"], generate_only=True)
    want = [k for k in OFFICIAL_STATIC_KEYS if k not in ("log_action_probs", "task_loss_prediction")]
    assert out.keys() == want
    for k in ("log_action_probs", "task_loss_prediction"):
        assert k not in out and out.get(k, "absent") == "absent"
        with pytest.raises(KeyError):
            out[k]
    assert out["task_loss_requirement"].shape == (2 * 4, 2) and out["num_vision_tokens_each_frame"] == 1060
    assert torch.equal(out["gazing_pos"], fx["case9/gazing_pos"])

    streamed = official_model({"video": video[:, :1]}, gazing_ratio=0.75, generate_only=True, use_cache=True)
    assert streamed.keys() == OFFICIAL_STATIC_KEYS and isinstance(streamed["past_key_values"], ag.GazeState)
    assert streamed["past_input_embeds"] is None  # the whole state travels in past_key_values


def test_defaults_are_the_released_operating_point(official, official_model):
    """Neither ratio nor requirement: the config's inference values (0.75 and 0.7), as case1."""
    _, fx, meta = official
    video = case_input(fx, _case(meta, "case1"))[:, :4]
    out = official_model.generate(video)
    n = sum(fx["case1/num_gazing_each_frame"][:4].tolist())
    assert torch.equal(out.gazing_pos, fx["case1/gazing_pos"][:, :n])


def _png_frames(d, n):
    from PIL import Image

    return [np.array(Image.open(d / "raw" / f"frame_{i:02d}.png").convert("RGB")) for i in range(n)]


def test_processor_matches_official(official):
    pytest.importorskip("PIL")
    d, fx, _ = official
    frames = _png_frames(d, 16)
    proc = ag.AutoGazeImageProcessor.from_pretrained(d / "model")
    v = proc(frames)
    ref = fx["inputs/video_224"]
    assert v.shape == ref.shape and v.dtype == torch.float32
    assert ((v - ref).norm() / ref.norm()).item() < 1e-5
    proc392 = ag.AutoGazeProcessor.from_pretrained(d / "model", size=(392, 392))
    v392 = proc392(frames[:2])
    ref392 = fx["inputs/video_392"]
    assert ((v392 - ref392).norm() / ref392.norm()).item() < 1e-5


def test_processor_shortest_edge_keeps_aspect():
    proc = ag.AutoGazeImageProcessor()
    frames = np.random.default_rng(0).integers(0, 256, (3, 300, 533, 3), dtype=np.uint8)
    v = proc(frames)
    assert v.shape == (1, 3, 3, 224, int(224 * 533 / 300))
    batch = proc(np.stack([frames, frames]))
    assert batch.shape[0] == 2 and torch.equal(batch[0], batch[1])


def test_processor_rejects_bad_frames():
    proc = ag.AutoGazeImageProcessor()
    with pytest.raises(TypeError, match="uint8"):
        proc(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="frames"):
        proc(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="one shape"):
        proc([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)])
    with pytest.raises(TypeError):
        proc("video.mp4")
