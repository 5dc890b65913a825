"""The training-free greedy gazer: objective, stop rule, layout, streaming."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import autogaze_ext as ag
from autogaze_ext.greedy import GreedyGazer
from autogaze_ext.reconstruct import reconstruct_tiles
from autogaze_ext.synthetic import moving_objects_clip
from conftest import frame_slots


def _clip(T=6, seed=0, objects=3, speed=True):
    frames = moving_objects_clip(T, 224, 224, objects=objects, seed=seed)
    if not speed:
        frames = np.repeat(frames[:1], T, axis=0)
    return ag.AutoGazeImageProcessor()(frames)


def test_error_under_threshold_when_cap_allows():
    g = GreedyGazer(max_error=0.12)
    out = g.generate(_clip(4))
    err = out.extra["reconstruction_error"][0]  # error after each slot (pads keep the last value)
    ends = np.cumsum(out.num_gazing_each_frame.tolist()) - 1
    assert all(float(err[e]) < 0.12 for e in ends)


def test_static_clip_gets_one_token_per_later_frame():
    out = GreedyGazer(max_error=0.15).generate(_clip(5, speed=False))
    real = out.real_tokens_each_frame()[0].tolist()
    assert real[0] > 1 and real[1:] == [1, 1, 1, 1]


def test_more_motion_more_tokens():
    g = GreedyGazer(max_error=0.1)
    still = g.generate(_clip(6, speed=False)).real_tokens_each_frame()[0, 1:].sum()
    moving = g.generate(_clip(6, seed=1, objects=6)).real_tokens_each_frame()[0, 1:].sum()
    assert moving > still


def test_cap_and_layout():
    video = _clip(3)
    out = GreedyGazer(max_error=0.0).generate(video, gazing_ratio=0.05)  # error 0 is never reached
    assert out.num_gazing_each_frame.tolist() == [13, 13, 13]
    assert not out.if_padded_gazing.any()
    for t in range(3):
        ids, _ = frame_slots(out, t)
        local = (ids[0] - 265 * t).tolist()
        assert len(set(local)) == 13 and min(local) >= 0 and max(local) < 265
    assert sum(int(m.sum()) for m in out.gazing_mask) == 39


def test_batch_rows_pad_to_shared_lengths():
    video = torch.cat([_clip(2, speed=False), _clip(2, seed=3, objects=6)], dim=0)
    out = GreedyGazer(max_error=0.12).generate(video)
    real = out.real_tokens_each_frame()
    assert out.num_gazing_each_frame.tolist() == real.max(dim=0).values.tolist()
    assert (real >= 1).all()
    assert int(out.if_padded_gazing.sum()) == int((out.num_gazing_each_frame[None] - real).sum())


def test_streaming_equals_static():
    video = _clip(4, seed=2)
    g = GreedyGazer(max_error=0.12)
    ref = g.generate(video)
    state, ids = None, []
    for t in range(4):
        o, state = g.generate(video[:, t:t + 1], state=state, return_state=True)
        ids.append(o.gazing_pos + 265 * t)
    assert torch.equal(torch.cat(ids, dim=1), ref.gazing_pos)


def test_reconstruction_of_greedy_output_matches_its_own():
    video = _clip(3, seed=4)
    out = GreedyGazer(max_error=0.1).generate(video)
    rec = reconstruct_tiles(video, out, [32, 64, 112, 224])
    assert torch.allclose(rec[:, -1], out.extra["reconstruction"], atol=1e-6)


def test_bad_arguments():
    g = GreedyGazer()
    with pytest.raises(ValueError, match="max_error"):
        g.generate(_clip(1), max_error=-1)
    with pytest.raises(ValueError, match="gazing_ratio"):
        g.generate(_clip(1), gazing_ratio=0)
    with pytest.raises(ValueError, match="video"):
        g.generate(torch.zeros(1, 2, 224, 224))
    with pytest.raises(ValueError, match="16"):
        g.generate(torch.zeros(1, 17, 3, 32, 32))
    with pytest.raises(ValueError, match="target_scales"):
        g.generate(_clip(1), target_scales=[56, 112, 196, 392], target_patch_size=14)
