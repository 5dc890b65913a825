"""Teacher-forced scoring, NTP and GRPO against the official training code (fixtures/training, its README).

Every ntp* and grpo* case: the collated labels (exact), the teacher-forced log-probabilities, probabilities and
task-loss predictions, the losses and their parts, the per-parameter gradient norms and the four stored full
gradients. The fixtures are CPU fp32 outputs of the official code; ours run CPU fp32 too.

Tolerances (fp32; the official decoder ran torch sdpa as ours does here, and the README puts sdpa vs eager
attention alone at ~1e-7):
* collated ids, padding, slot counts, task losses: exact;
* log_action_probs, gaze_probs, task_loss_prediction, every loss tensor, advantages: rtol 1e-5, atol 1e-5
  (measured: max abs diff <= 1e-6);
* the GRPO ``loss_mean`` of a group whose advantages cancel (grpo1, ~5e-7 of float noise): atol 1e-5;
* gradient norms per parameter: rtol 1e-4, plus an absolute floor of 1e-4 of the largest norm (measured: <= 1.4e-6
  relative), and the task-loss head's gradient exactly zero where the official loss is ``0 * mean(prediction)``;
* full gradients: relative L2 error <= 1e-4 (measured: <= 1.7e-6).
(Measured maxima over all cases, CPU, torch 2.13: scores 9.5e-7, losses 1.4e-6 absolute.)

Every case runs in full (forward, losses, backward): the CPU file takes ~30 s on 1 thread (the official code took
20-120 s per case). A CUDA test compares the GPU path with the same CPU references.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import REPO, fixture_dir

import autogaze_ext as ag
from autogaze_ext.training import collate_gazing_info, group_repeat, grpo_loss, ntp_loss, sample_group

V = 265
RTOL = ATOL = 1e-5
GRAD_RTOL = 1e-4


def training_dir() -> Path | None:
    """The training fixture set: $AUTOGAZE_TRAINING_FIXTURES, beside $AUTOGAZE_FIXTURES, <repo>/.fixtures/training
    (a copy that travels to GPU machines), then <repo>/../shared/fixtures/training."""
    off = os.environ.get("AUTOGAZE_FIXTURES")
    cands = [os.environ.get("AUTOGAZE_TRAINING_FIXTURES"), off and Path(off).parent / "training",
             REPO / ".fixtures" / "training", REPO.parent / "shared" / "fixtures" / "training"]
    for c in cands:
        if c and (Path(c) / "cases.json").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="module")
def training():
    d = training_dir()
    if d is None:
        msg = ("training fixtures not found (looked in $AUTOGAZE_TRAINING_FIXTURES, beside $AUTOGAZE_FIXTURES, "
               ".fixtures/training, ../shared/fixtures/training)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " — required under CI")
        pytest.skip(msg)
    from safetensors.torch import load_file

    return load_file(str(d / "cases.safetensors")), json.loads((d / "cases.json").read_text())


@pytest.fixture(scope="module")
def model_dir(training):
    d = fixture_dir()
    d = d / "model" if d is not None else training_dir().parent / "official" / "model"
    if not (d / "model.safetensors").is_file():
        pytest.fail(f"the training fixtures' model is missing: {d}")
    return d


@pytest.fixture(scope="module")
def model(model_dir):
    return ag.AutoGaze.from_pretrained(model_dir).train()


def _case(meta, name):
    return next(c for c in meta["cases"] if c["name"] == name)


def case_video(fx, case) -> torch.Tensor:
    """A case's video from its input_rows (README "Inputs"): rows of the stored inputs, maybe flipped."""
    rows = []
    for r in case["input_rows"]:
        x = fx[r["tensor"]][r["batch_index"]: r["batch_index"] + 1, r["frames"][0]: r["frames"][1]]
        if r["flip"] != "none":
            x = torch.flip(x, dims=[-1] if r["flip"] == "width" else [-2])
        rows.append(x)
    video = torch.cat(rows, dim=0)
    assert list(video.shape) == case["input_shape"]
    return video


NTP = [f"ntp{i}" for i in range(1, 11)]
GRPO = ["grpo1", "grpo2", "grpo3"]


def _close(got, want, what, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(got.detach().float(), want.float(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _check_grads(model, fx, meta, name):
    params = dict(model.named_parameters())
    names = meta["param_names"]
    assert sorted(names) == sorted(params), "parameter names differ from the official ones"
    got = torch.stack([params[n].grad.norm() for n in names])
    want = fx[f"{name}/grad_norms"]
    _close(got, want, f"{name} gradient norms", rtol=GRAD_RTOL, atol=GRAD_RTOL * float(want.max()))
    for p in meta["grad_tensors"]:
        g, w = params[p].grad, fx[f"{name}/grad/{p}"]
        if not bool(w.any()):  # 0 * mean(prediction): exact zeros, not None
            assert bool((g == 0).all()), f"{name} {p}: expected an exact-zero gradient"
            continue
        err = ((g - w).norm() / w.norm()).item()
        assert err < GRAD_RTOL, f"{name} {p}: relative gradient error {err:.2e}"


def _check_scores(fx, name, s):
    _close(s.log_action_probs, fx[f"{name}/log_action_probs"], f"{name} log_action_probs")
    _close(s.gaze_probs, fx[f"{name}/gaze_probs"], f"{name} gaze_probs")
    _close(s.task_loss_prediction, fx[f"{name}/task_loss_prediction"], f"{name} task_loss_prediction")


@pytest.mark.parametrize("name", NTP)
def test_ntp_case(training, model, name):
    fx, meta = training
    case = _case(meta, name)
    video = case_video(fx, case)
    labels = [[[i + V * t for i in f] for t, f in enumerate(v)] for v in case["labels_local"]]
    tl = case["task_losses"]
    labels_copy, tl_copy = json.loads(json.dumps(labels)), json.loads(json.dumps(tl))
    info = collate_gazing_info(labels, tl)
    assert labels == labels_copy and tl == tl_copy, "collate_gazing_info modified its arguments"
    assert torch.equal(info["gazing_pos"], fx[f"{name}/gazing_pos"])
    assert torch.equal(info["if_padded_gazing"], fx[f"{name}/if_padded_gazing"].bool())
    assert torch.equal(info["num_gazing_each_frame"], fx[f"{name}/num_gazing_each_frame"])
    assert info["num_gazing_each_frame"].tolist() == case["num_gazing_each_frame"]
    if tl is None:
        assert "task_losses" not in info
    else:
        assert torch.equal(info["task_losses"], fx[f"{name}/task_losses"])

    model.zero_grad(set_to_none=True)
    # the trainer's call: the official forward with the video-MAE task's (native) target scales
    out = model({"video": video, "gt_gazing_info": info}, gazing_info=info, target_scales=[32, 64, 112, 224],
                target_patch_size=16)
    _close(out["log_action_probs"], fx[f"{name}/log_action_probs"], f"{name} forward log_action_probs")
    _close(out["task_loss_prediction"], fx[f"{name}/task_loss_prediction"], f"{name} forward task_loss_prediction")
    assert torch.equal(out["gazing_pos"], info["gazing_pos"]) and not out["has_task_loss_requirement"]
    gazed = torch.cat(out["gazing_mask"], dim=-1)  # (B, T, 265): the labels, padding ignored
    assert gazed.sum(-1).long().tolist() == case["label_lengths"]

    backward = None
    for opt in ([0] if tl is None else [0, 1]):
        extra = {} if tl is None else {"task_losses": info["task_losses"], "task_losses_mask":
                                       fx[f"{name}/task_losses_mask"]}
        r = ntp_loss(out["log_action_probs"], info["if_padded_gazing"], out["task_loss_prediction"],
                     optimize_task_loss_prediction=bool(opt), **extra)
        for part in ("ntp_loss", "task_loss_prediction_loss", "loss"):
            _close(r[part], fx[f"{name}/ntp_opt{opt}/{part}"], f"{name} opt{opt} {part}")
        _close(r["loss"].mean(), fx[f"{name}/ntp_opt{opt}/loss_mean"], f"{name} opt{opt} loss_mean")
        backward = r["loss"].mean()  # opt1 where task losses exist, else opt0 (as the fixtures)
    backward.backward()
    _check_grads(model, fx, meta, name)


@pytest.mark.parametrize("name", GRPO)
def test_grpo_case(training, model, name):
    fx, meta = training
    case = _case(meta, name)
    g = case["grpo"]
    G = g["group_size"]
    video = group_repeat(case_video(fx, case), G)
    info = {"gazing_pos": fx[f"{name}/gazing_pos"], "if_padded_gazing": fx[f"{name}/if_padded_gazing"].bool(),
            "num_gazing_each_frame": fx[f"{name}/num_gazing_each_frame"]}
    model.zero_grad(set_to_none=True)
    s = model.score(video, info)
    _check_scores(fx, name, s)
    extra = {}
    if g["optimize_task_loss_prediction"]:
        extra = {"task_losses": fx[f"{name}/task_losses"], "task_losses_mask": fx[f"{name}/task_losses_mask"]}
    lens = fx[f"{name}/traj_len_each_reward"]
    assert lens.tolist() == g["traj_len_each_reward"]
    r = grpo_loss(s.log_action_probs, info["if_padded_gazing"], fx[f"{name}/reward"], lens, group_size=G,
                  discount_factor=g["discount_factor"], task_loss_prediction=s.task_loss_prediction,
                  optimize_task_loss_prediction=g["optimize_task_loss_prediction"], **extra)
    for part in ("group_centered_reward", "discounted_advantages", "advantages", "grpo_loss",
                 "task_loss_prediction_loss", "loss"):
        _close(r[part], fx[f"{name}/{part}"], f"{name} {part}")
    _close(r["loss"].mean(), fx[f"{name}/loss_mean"], f"{name} loss_mean")
    r["loss"].mean().backward()
    _check_grads(model, fx, meta, name)


# ------------------------------------------------------------------------------ API behaviour beyond the fixtures
def _ntp_inputs(fx, meta, name="ntp2"):
    case = _case(meta, name)
    labels = [[[i + V * t for i in f] for t, f in enumerate(v)] for v in case["labels_local"]]
    return case, case_video(fx, case), collate_gazing_info(labels, case["task_losses"])


def test_score_equals_forward_and_generate_only(training, model):
    fx, meta = training
    _, video, info = _ntp_inputs(fx, meta)
    with torch.no_grad():
        s = model.score(video, info)
        out = model({"video": video}, gazing_info=info)
        only = model({"video": video}, gazing_info=info, generate_only=True)
    assert torch.equal(s.log_action_probs, out.log_action_probs)
    assert torch.equal(s.task_loss_prediction, out.task_loss_prediction)
    assert only.log_action_probs is None and torch.equal(only.gazing_pos, info["gazing_pos"])
    assert s.log_action_probs.dtype == s.task_loss_prediction.dtype == torch.float32


def test_train_mode_forward_samples_then_scores(training, model):
    """The official GRPO rollout call: train() mode samples (temperature, top-k 50), then scores teacher-forced."""
    fx, meta = training
    clip = case_video(fx, _case(meta, "grpo2"))[:1, :2]  # (1, 2, 3, 32, 32)
    video = group_repeat(clip, 2)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model({"video": video}, gazing_ratio=0.1, task_loss_requirement=0.7, temperature=2.0)
        again = model.score(video, out)
    assert out.gazing_pos.shape == out.log_action_probs.shape == out.task_loss_prediction.shape
    assert out["has_task_loss_requirement"]
    torch.testing.assert_close(out.log_action_probs, again.log_action_probs, rtol=0, atol=0)
    # sample_group: the same through the training API, reproducible by seed
    vg, a = sample_group(model, clip, 2, gazing_ratio=0.1, task_loss_requirement=0.7, temperature=2.0, seed=3)
    _, b = sample_group(model, clip, 2, gazing_ratio=0.1, task_loss_requirement=0.7, temperature=2.0, seed=3,
                        score=False)
    assert vg.shape == video.shape and torch.equal(vg, video)
    assert torch.equal(a.gazing_pos, b.gazing_pos) and b.log_action_probs is None
    assert a.log_action_probs.requires_grad and torch.isfinite(a.log_action_probs).all()
    ids = a.gazing_pos[~a.if_padded_gazing]
    assert ids.numel() and bool(((ids >= 0) & (ids < V * 2)).all())


def test_adamw_steps_reduce_ntp_loss(training, model_dir):
    """A few optimizer steps on one tiny batch lower its NTP loss (both terms)."""
    fx, meta = training
    _, video, info = _ntp_inputs(fx, meta, "ntp2")
    m = ag.AutoGaze.from_pretrained(model_dir).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        s = m.score(video, info)
        r = ntp_loss(s.log_action_probs, info["if_padded_gazing"], s.task_loss_prediction, info["task_losses"],
                     optimize_task_loss_prediction=True)
        opt.zero_grad()
        r["loss"].mean().backward()
        opt.step()
        losses.append((r["ntp_loss"].mean().item(), r["task_loss_prediction_loss"].mean().item()))
    assert losses[-1][0] < losses[0][0] - 0.05 and losses[-1][1] < losses[0][1], losses


@pytest.mark.parametrize("labels, task_losses, match", [
    ([[[1, 2], [265]], [[3], [266, 267, 268]]], None, None),  # valid
    ([[[1, 2], [265]], [[3]]], None, r"labels\[1\] \(video 1\): has 1 frames, expected 2"),
    ([[[1, 2], [265]], [[3], [3]]], None, r"labels\[1\]\[1\]\[0\] \(video 1, frame 1\): id 3 is outside \[265, 530\)"),
    ([[[1, 265]]], None, r"video 0, frame 0\): id 265 is outside \[0, 265\)"),
    ([[[1, 2, 1]]], None, r"labels\[0\]\[0\] \(video 0, frame 0\): id 1 appears more than once"),
    ([[[1.0]]], None, r"video 0, frame 0\): expected an int id"),
    ([[[1, 2], []]], [[[0.5, 0.4], []]], r"task_losses\[0\]\[1\] \(video 0, frame 1\): has 0 values for 0 labels"),
    ([[[1, 2], [265]]], [[[0.5], [0.3]]], r"task_losses\[0\]\[0\] \(video 0, frame 0\): has 1 values for 2 labels"),
    ([[[1, 2]]], [[[0.5, float("nan")]]], r"task_losses\[0\]\[0\]\[1\] \(video 0, frame 0\): expected a finite"),
    ([[[1]]], [[[0.5]], [[0.5]]], r"task_losses: has 2 videos, labels has 1"),
    ([], None, r"labels: no videos"),
    ([[[1]], 5], None, r"labels\[1\]: expected a list"),
])
def test_collate_bad_labels(labels, task_losses, match):
    if match is None:
        info = collate_gazing_info(labels, task_losses)
        assert info["num_gazing_each_frame"].tolist() == [3, 4]
        assert info["gazing_pos"].tolist() == [[1, 2, -1, 265, -1, -1, -1], [3, -1, -1, 266, 267, 268, -1]]
        return
    with pytest.raises((ValueError, TypeError), match=match):
        collate_gazing_info(labels, task_losses)


def test_collate_frame_count_and_empty_frames():
    with pytest.raises(ValueError, match=r"labels\[0\] \(video 0\): has 2 frames, expected 16"):
        collate_gazing_info([[[1], [266]]], num_frames=16)
    info = collate_gazing_info([[[], []], [[], [265]]], [[[0.9], [0.8]], [[0.7], [0.6]]])
    assert info["gazing_pos"].tolist() == [[-1, -1, -1], [-1, 265, -1]]
    torch.testing.assert_close(info["task_losses"], torch.tensor([[0.9, 0.8, 0.8], [0.7, 0.6, 0.6]]))


def test_score_bad_gazing_info(training, model):
    fx, meta = training
    _, video, info = _ntp_inputs(fx, meta)
    bad = dict(info, gazing_pos=info["gazing_pos"].clone())
    bad["gazing_pos"][1, 0] = 3 * V  # frame 0 of video 1 gets an id of frame 3
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"video 1, frame 0 holds id 795"):
            model.score(video, bad)
        with pytest.raises(ValueError, match=r"has 2 rows, the video batch has 1"):
            model.score(video[:1], info)
        with pytest.raises(ValueError, match=r"num_gazing_each_frame.*expected 1 non-negative slot counts"):
            model.score(video[:, :1], info)
        with pytest.raises(ValueError, match=r"missing 'if_padded_gazing'"):
            model.score(video, {"gazing_pos": info["gazing_pos"], "num_gazing_each_frame": [38, 6]})
        with pytest.raises(ValueError, match=r"target_scales"):
            model({"video": video}, gazing_info=info, target_scales=[28, 56, 112, 448], target_patch_size=16)
        with pytest.raises(ValueError, match=r"precision"):
            model.score(video, info, precision="fp16")
    with pytest.raises(ValueError, match=r"optimize_task_loss_prediction=True needs"):
        ntp_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), optimize_task_loss_prediction=True)
    with pytest.raises(ValueError, match=r"group_size: 3 does not divide the 4 trajectories"):
        grpo_loss(torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.bool), torch.zeros(4, 1), [3], group_size=3,
                  discount_factor=1.0)
    with pytest.raises(ValueError, match=r"traj_len: expected an int in \[1, 3\]"):
        grpo_loss(torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.bool), torch.zeros(4, 1), [4], group_size=2,
                  discount_factor=1.0)


# ------------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["ntp4", "ntp7", "grpo2"])
def test_cuda_scoring_against_cpu_references(training, model_dir, name):
    """The CUDA teacher-forced pass against the CPU fp32 references: precision="fp32" (TF32 off) within 1e-4 of
    the scores and 1e-3 of the gradient norms; the official default bf16 autocast within 0.1 of the scores and
    1e-2 of the losses (bounds set from bf16's 8-bit mantissa, not yet measured); gradients reach every parameter."""
    fx, meta = training
    case = _case(meta, name)
    video = case_video(fx, case).cuda()
    tl = case.get("task_losses")
    if case["kind"] == "grpo":
        video = group_repeat(video, case["grpo"]["group_size"])
        info = {"gazing_pos": fx[f"{name}/gazing_pos"], "if_padded_gazing": fx[f"{name}/if_padded_gazing"].bool(),
                "num_gazing_each_frame": fx[f"{name}/num_gazing_each_frame"]}
    else:
        labels = [[[i + V * t for i in f] for t, f in enumerate(v)] for v in case["labels_local"]]
        info = collate_gazing_info(labels, tl)
    m = ag.AutoGaze.from_pretrained(model_dir, device="cuda").train()
    params = dict(m.named_parameters())
    for precision, atol, rtol in (("fp32", 1e-4, 1e-5), ("bf16", 0.1, 1e-2)):
        m.zero_grad(set_to_none=True)
        s = m.score(video, info, precision=precision)  # info is moved to the GPU
        assert s.log_action_probs.is_cuda and s.log_action_probs.dtype == s.task_loss_prediction.dtype == torch.float32
        for k in ("log_action_probs", "task_loss_prediction"):
            torch.testing.assert_close(getattr(s, k).cpu(), fx[f"{name}/{k}"], rtol=0, atol=atol,
                                       msg=lambda msg: f"{precision} {k}: {msg}")
        opt = tl is not None
        extra = {"task_losses": collate_gazing_info(labels, tl)["task_losses"].cuda()} if opt else {}
        r = ntp_loss(s.log_action_probs, info["if_padded_gazing"].cuda(), s.task_loss_prediction,
                     optimize_task_loss_prediction=opt, **extra)
        if case["kind"] == "ntp":  # the fixtures' backward loss: opt1 where task losses exist, else opt0
            torch.testing.assert_close(r["loss"].cpu(), fx[f"{name}/ntp_opt{int(opt)}/loss"], rtol=rtol, atol=1e-5)
        r["loss"].mean().backward()
        for n, p in params.items():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), f"{precision}: {n} has no finite grad"
        if precision == "fp32" and case["kind"] == "ntp":
            got = torch.stack([params[n].grad.norm() for n in meta["param_names"]]).cpu()
            torch.testing.assert_close(got, fx[f"{name}/grad_norms"], rtol=1e-3, atol=1e-6)
