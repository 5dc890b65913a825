"""Training losses of AutoGaze (spec §7): next-token prediction on gaze labels, and GRPO.

Both follow the official algorithms (``autogaze/algorithms/ntp.py``, ``grpo.py``) to the float operation, so that
losses and gradients match the official training code:

* the NTP loss of a row is ``-sum(log p of its unpadded slots)`` divided by the **batch-average** number of unpadded
  slots (``+ 1e-6``), not by the row's own count;
* the task-loss-prediction loss is the masked squared error ``(prediction - task_loss)**2`` over the same slots,
  divided the same way; when it is not optimized it is ``0 * mean(prediction)``, so the task-loss head still gets an
  (exactly zero) gradient, as the official code gives it;
* GRPO advantages are centred on the group mean only (no division by the std), discounted per slot by
  ``discount_factor ** (unpadded slots from the slot up to the reward, minus one)``, zero from the reward position on
  and on padded slots, and summed over rewards; the policy loss is ``-sum(exp(lap - lap.detach()) * advantage)``,
  whose value is ``-sum(advantage)`` and whose gradient is ``-advantage * d lap``.

Padded slots (``if_padded_gazing``, which includes every frame's end slot) never contribute: EOS is never trained.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

__all__ = ["ntp_loss", "grpo_loss", "grpo_advantages", "group_centered_rewards", "discounted_advantages",
           "group_repeat", "sample_group"]


def _tensor(name: str, x, ndim: int | None = None, floating: bool | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {x.dtype}")
    return x


def _padded_mask(if_padded_gazing, shape, device) -> torch.Tensor:
    m = _tensor("if_padded_gazing", if_padded_gazing, 2)
    if m.dtype != torch.bool:
        raise TypeError(f"if_padded_gazing: expected a bool tensor, got {m.dtype}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"if_padded_gazing: expected shape {tuple(shape)} (as log_action_probs), got {tuple(m.shape)}")
    return m.to(device)


def _same_shape(name: str, x, shape, device) -> torch.Tensor:
    x = _tensor(name, x, floating=True)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (as log_action_probs), got {tuple(x.shape)}")
    return x.to(device)


def _task_loss_prediction_loss(log_action_probs, loss_mask, task_loss_prediction, task_losses, task_losses_mask,
                               optimize: bool) -> torch.Tensor:
    """The official ``task_loss_prediction_loss`` shared by NTP and GRPO: (B,)."""
    B = log_action_probs.shape[0]
    zeros = torch.zeros(B, dtype=log_action_probs.dtype, device=log_action_probs.device)
    if task_loss_prediction is not None:
        task_loss_prediction = _same_shape("task_loss_prediction", task_loss_prediction, log_action_probs.shape,
                                           log_action_probs.device)
    if not optimize:
        # keeps the head in the graph with an exact-zero gradient, as the official code does
        return zeros if task_loss_prediction is None else zeros * task_loss_prediction.mean()
    if task_loss_prediction is None or task_losses is None:
        raise ValueError("optimize_task_loss_prediction=True needs task_loss_prediction (from the model's scores) and "
                         "task_losses (the labels' task losses: collate_gazing_info(labels, task_losses)"
                         "['task_losses'])")
    task_losses = _same_shape("task_losses", task_losses, log_action_probs.shape, log_action_probs.device)
    if task_losses_mask is None:
        task_losses_mask = torch.ones_like(task_losses)  # what the official NTP trainer passes
    task_losses_mask = _same_shape("task_losses_mask", task_losses_mask, log_action_probs.shape,
                                   log_action_probs.device)
    mask = task_losses_mask * loss_mask
    loss = ((task_loss_prediction - task_losses).pow(2) * mask).sum(dim=-1)
    return loss / (mask.sum() / mask.shape[0] + 1e-6)


def ntp_loss(log_action_probs: torch.Tensor, if_padded_gazing: torch.Tensor,
             task_loss_prediction: torch.Tensor | None = None, task_losses: torch.Tensor | None = None,
             task_losses_mask: torch.Tensor | None = None, *, optimize_task_loss_prediction: bool = False) -> dict:
    """Next-token-prediction loss on teacher-forced gaze labels (official ``NTP``), per row.

    log_action_probs, task_loss_prediction: (B, N) from ``model.score(video, info)`` (or the forward with
    ``gazing_info=info, generate_only=False``); if_padded_gazing (B, N) bool and task_losses (B, N): from
    :func:`collate_gazing_info`; task_losses_mask (B, N): 1 where a task loss is a label (default all ones, as the
    official NTP trainer). With ``optimize_task_loss_prediction`` the task-loss head is trained on ``task_losses``
    (both must then be given).

    Returns ``{"loss", "ntp_loss", "task_loss_prediction_loss"}``, each (B,): ``loss`` is their sum; the trainer's
    scalar is ``loss.mean()``. See the module docstring for the normalisation.
    """
    lap = _tensor("log_action_probs", log_action_probs, 2, floating=True)
    padded = _padded_mask(if_padded_gazing, lap.shape, lap.device)
    mask = ~padded
    ntp = -(lap * mask).sum(dim=-1)
    ntp = ntp / (mask.sum() / mask.shape[0] + 1e-6)  # batch-average length, as the official code
    tl = _task_loss_prediction_loss(lap, mask, task_loss_prediction, task_losses, task_losses_mask,
                                    bool(optimize_task_loss_prediction))
    return {"loss": ntp + tl, "ntp_loss": ntp, "task_loss_prediction_loss": tl}


# ----------------------------------------------------------------------------------------------------- GRPO
def _check_group(group_size, rows: int) -> int:
    if not isinstance(group_size, numbers.Integral) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
    if rows % group_size:
        raise ValueError(f"group_size: {group_size} does not divide the {rows} trajectories (expected G * B rows, "
                         "row i = group member i // B of video i % B)")
    return int(group_size)


def group_repeat(inputs, group_size: int):
    """Repeat a batch ``group_size`` times for GRPO, as the official ``GRPO.preprocess_inputs``.

    inputs: a video tensor (B, ...) or a dict of tensors (each repeated along dim 0) and lists (repeated as
    ``list * G``). Row ``i`` of the result is group member ``i // B`` of video ``i % B``. A dict comes back as a new
    dict with ``"group_size"`` added; the argument is not modified.
    """
    g = _check_group(group_size, 0)
    if isinstance(inputs, torch.Tensor):
        return inputs.repeat(g, *([1] * (inputs.ndim - 1)))
    if not isinstance(inputs, dict):
        raise TypeError(f"inputs: expected a tensor or a dict of tensors and lists, got {type(inputs).__name__}")
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.repeat(g, *([1] * (v.ndim - 1)))
        elif isinstance(v, list):
            out[k] = v * g
        else:
            raise TypeError(f"inputs[{k!r}]: expected a tensor or a list to repeat, got {type(v).__name__}")
    out["group_size"] = g
    return out


def group_centered_rewards(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    """reward (G*B,) or (G*B, R) -> (R, G*B): each reward minus its group's mean (no std normalisation)."""
    reward = _tensor("reward", reward, floating=True)
    if reward.ndim == 1:
        reward = reward[:, None]
    if reward.ndim != 2:
        raise ValueError(f"reward: expected shape (G*B,) or (G*B, R), got {tuple(reward.shape)}")
    g = _check_group(group_size, reward.shape[0])
    out = []
    for r in range(reward.shape[1]):
        cur = reward[:, r].contiguous().view(g, -1)  # (G, B)
        out.append((cur - cur.mean(dim=0, keepdim=True)).contiguous().view(-1))
    return torch.stack(out)


def discounted_advantages(advantage: torch.Tensor, traj_len: int, discount_factor: float,
                          if_padded_gazing: torch.Tensor) -> torch.Tensor:
    """Spread one reward's per-trajectory advantage over the slots before it (official
    ``get_discounted_advantages``).

    advantage: (G*B,) group-centred advantage of a reward that arrives after the first ``traj_len`` slots;
    if_padded_gazing: (G*B, N). Returns (G*B, N): slot ``n < traj_len`` gets
    ``advantage * discount_factor ** (unpadded slots in [n, traj_len) - 1)``; slots from ``traj_len`` on and padded
    slots get 0.
    """
    adv = _tensor("advantage", advantage, 1, floating=True)
    padded = _tensor("if_padded_gazing", if_padded_gazing, 2)
    if padded.dtype != torch.bool or padded.shape[0] != adv.shape[0]:
        raise ValueError(f"if_padded_gazing: expected a bool tensor ({adv.shape[0]}, N), got {padded.dtype} "
                         f"{tuple(padded.shape)}")
    N = padded.shape[1]
    if not isinstance(traj_len, numbers.Integral) or isinstance(traj_len, bool) or not 0 < traj_len <= N:
        raise ValueError(f"traj_len: expected an int in [1, {N}] (slots before the reward), got {traj_len!r}")
    traj_len = int(traj_len)
    mask = ~padded.to(adv.device)
    out = adv[:, None].repeat(1, N)
    distance = mask[:, :traj_len].flip(dims=(1,)).cumsum(dim=1).flip(dims=(1,)) - 1
    out[:, :traj_len] = out[:, :traj_len] * float(discount_factor) ** distance
    out[:, traj_len:] = 0
    # where, not a product: a padded slot's factor can be inf (discount 0, distance -1)
    return torch.where(mask, out, torch.zeros_like(out))


def grpo_advantages(reward: torch.Tensor, traj_len_each_reward: Sequence[int], if_padded_gazing: torch.Tensor,
                    group_size: int, discount_factor: float) -> dict:
    """Per-slot GRPO advantages of a group of trajectories.

    reward: (G*B, R), one column per reward (e.g. per reconstructed frame); traj_len_each_reward: R ints, the
    number of slots (padded included) up to and including the one after which reward r is taken;
    if_padded_gazing: (G*B, N). Returns ``{"advantages": (G*B, N) summed over rewards,
    "group_centered_reward": (R, G*B), "discounted_advantages": (R, G*B, N)}``.
    """
    reward = _tensor("reward", reward, 2, floating=True)
    lens = list(traj_len_each_reward.tolist() if isinstance(traj_len_each_reward, torch.Tensor)
                else traj_len_each_reward)
    if len(lens) != reward.shape[1]:
        raise ValueError(f"traj_len_each_reward: expected {reward.shape[1]} lengths (one per reward column), got "
                         f"{len(lens)}")
    centered = group_centered_rewards(reward, group_size)
    per = [discounted_advantages(centered[r], lens[r], discount_factor, if_padded_gazing) for r in range(len(lens))]
    advantages = torch.zeros(reward.shape[0], if_padded_gazing.shape[1], dtype=reward.dtype, device=reward.device)
    for a in per:
        advantages = advantages + a
    return {"advantages": advantages, "group_centered_reward": centered,
            "discounted_advantages": torch.stack(per) if per else advantages[None, :, :0]}


def grpo_loss(log_action_probs: torch.Tensor, if_padded_gazing: torch.Tensor, reward: torch.Tensor,
              traj_len_each_reward: Sequence[int], *, group_size: int, discount_factor: float,
              task_loss_prediction: torch.Tensor | None = None, task_losses: torch.Tensor | None = None,
              task_losses_mask: torch.Tensor | None = None, optimize_task_loss_prediction: bool = False) -> dict:
    """GRPO loss of a group of sampled trajectories (official ``GRPO``), per trajectory.

    log_action_probs, task_loss_prediction: (G*B, N) teacher-forced scores of the sampled ids
    (``model.score(video_g, sampled)``, temperature 1, no bans, as the official code); if_padded_gazing (G*B, N);
    reward (G*B, R) and traj_len_each_reward (R,): see :func:`grpo_advantages`; task_losses / task_losses_mask
    (G*B, N): the task-loss head's targets and where they hold (with ``optimize_task_loss_prediction``).
    Rows are laid out as :func:`group_repeat` makes them (row i = member i // B of video i % B).

    Returns ``{"loss", "grpo_loss", "task_loss_prediction_loss"}`` (each (G*B,); ``loss`` is their sum, the
    trainer's scalar ``loss.mean()``) plus the detached ``"advantages"``, ``"group_centered_reward"`` and
    ``"discounted_advantages"``.
    """
    lap = _tensor("log_action_probs", log_action_probs, 2, floating=True)
    padded = _padded_mask(if_padded_gazing, lap.shape, lap.device)
    reward = _tensor("reward", reward, 2, floating=True).to(lap.device)
    if reward.shape[0] != lap.shape[0]:
        raise ValueError(f"reward: expected {lap.shape[0]} rows (one per trajectory), got {reward.shape[0]}")
    parts = grpo_advantages(reward, traj_len_each_reward, padded, group_size, discount_factor)
    adv = parts["advantages"]
    policy = -(torch.exp(lap - lap.detach()) * adv).sum(dim=-1)
    tl = _task_loss_prediction_loss(lap, ~padded, task_loss_prediction, task_losses, task_losses_mask,
                                    bool(optimize_task_loss_prediction))
    return {"loss": policy + tl, "grpo_loss": policy, "task_loss_prediction_loss": tl, **parts}


def sample_group(model, video: torch.Tensor, group_size: int, *, gazing_ratio=None, task_loss_requirement=None,
                 temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None,
                 seed: int | None = None, score: bool = True, precision: str = "bf16"):
    """GRPO rollouts: repeat each clip ``group_size`` times, sample gaze with the official training sampler, and
    score the samples teacher-forced.

    video: (B, T, 3, H, W) normalised clips. The model samples as the official train-mode generate (no repeats
    within a frame, no EOS, then ``temperature`` and top-k (``top_k``, default the config's 50), multinomial),
    reproducible with ``seed`` or ``generator`` (the ids cannot equal the official RNG stream's). gazing_ratio /
    task_loss_requirement: as :meth:`AutoGaze.generate`.

    Returns ``(video_g, out)``: the repeated clips (G*B, T, 3, H, W) and the sampled :class:`GazeOutput`, whose
    ``log_action_probs`` and ``task_loss_prediction`` hold the teacher-forced scores (with grad, ``precision`` as
    in :meth:`AutoGaze.score`) when ``score`` is true, else None. Sampling itself runs without grad.
    """
    video_g = group_repeat(video, group_size)
    out = model.generate(video_g, gazing_ratio, task_loss_requirement, do_sample=True, temperature=temperature,
                         top_k=top_k, generator=generator, seed=seed)
    if score:
        s = model.score(video_g, out, precision=precision, check=False)
        out.log_action_probs, out.task_loss_prediction = s.log_action_probs, s.task_loss_prediction
    return video_g, out
