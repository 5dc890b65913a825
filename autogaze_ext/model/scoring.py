"""Teacher-forced scoring of given gaze sequences (spec §7.1): the training forward of AutoGaze.

Given clips and gaze ids (labels, or sampled trajectories), one decoder pass over the interleaved sequence
``[V_0, G_0, V_1, G_1, ...]`` gives, for every slot, the probability of its id and the predicted task loss, as the
official ``AutoGazeModel.forward(video, gazing_info)`` computes them:

* ids are video-global (``local + 265 t``); padded slots (``if_padded_gazing``) become EOS (265), get attention
  mask 0 and the previous token's position (positions are ``cumsum(mask) - 1`` over the whole sequence);
* slot ``j`` of a frame is predicted by head ``j % K`` from the token ``j % K + 1`` positions earlier (the last
  vision token for a frame's first chunk); its probability is a softmax over all 266 outputs of that head (no bans,
  no temperature), and ``log_action_probs = log(p + 1e-8)``; padded slots hold ``log p(EOS)``;
* its task-loss prediction is head ``(j % K + 1) % K`` of the same source, or for ``j % K = K - 1`` head 0 at the
  slot itself (the source of the next chunk);
* frames of another size are resized to 224 x 224 bicubically first (``align_corners=False``).

Everything is plain PyTorch with autograd (the model's reference modules, attention through
``F.scaled_dot_product_attention``). Only the heads actually used are evaluated: the official code computes all
``K x 266`` logits at every position and then gathers.
"""
from __future__ import annotations

import contextlib
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .precision import exact_fp32

SCORE_PRECISIONS = ("bf16", "fp32")


class TeacherForcedScores(NamedTuple):
    """What :meth:`AutoGaze.score` returns; every tensor is (B, N) float32, differentiable w.r.t. the weights."""

    log_action_probs: torch.Tensor  # log(p + 1e-8) of each slot's id (EOS for padded slots)
    task_loss_prediction: torch.Tensor  # per-slot predicted task loss
    gaze_probs: torch.Tensor  # p itself


def _get(info, key: str):
    try:
        return info[key]
    except (KeyError, TypeError):
        raise ValueError(f"gazing_info: missing {key!r} (expected collate_gazing_info(...) or a GazeOutput)") from None


def gazing_tensors(info, B: int, T: int, V: int, device, check: bool = True):
    """Validate gazing_info against a (B, T) clip batch; returns (gazing_pos, if_padded, counts list) on device."""
    if info is None:
        raise ValueError("gazing_info: expected collate_gazing_info(...) or a GazeOutput, got None")
    gpos, padded, counts = (_get(info, k) for k in ("gazing_pos", "if_padded_gazing", "num_gazing_each_frame"))
    if not isinstance(gpos, torch.Tensor) or gpos.dtype not in (torch.int64, torch.int32) or gpos.ndim != 2:
        raise ValueError(f"gazing_info['gazing_pos']: expected an int64 tensor (B, N), got "
                         f"{getattr(gpos, 'dtype', type(gpos).__name__)} {tuple(getattr(gpos, 'shape', ()))}")
    if not isinstance(padded, torch.Tensor) or padded.dtype != torch.bool or padded.shape != gpos.shape:
        raise ValueError(f"gazing_info['if_padded_gazing']: expected a bool tensor of shape {tuple(gpos.shape)}, got "
                         f"{getattr(padded, 'dtype', type(padded).__name__)} {tuple(getattr(padded, 'shape', ()))}")
    counts = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
    if (len(counts) != T or any(not isinstance(c, numbers.Integral) or isinstance(c, bool) or c < 0 for c in counts)
            or sum(counts) != gpos.shape[1]):
        raise ValueError(f"gazing_info['num_gazing_each_frame']: expected {T} non-negative slot counts (one per frame "
                         f"of the video) summing to N = {gpos.shape[1]}, got {counts}")
    counts = [int(c) for c in counts]
    if gpos.shape[0] != B:
        raise ValueError(f"gazing_info['gazing_pos']: has {gpos.shape[0]} rows, the video batch has {B}")
    gpos, padded = gpos.to(device, torch.long), padded.to(device)
    if check and gpos.numel():
        frame = _frame_of_slot(counts).to(device, non_blocking=True)
        local = gpos - V * frame
        bad = ~padded & ((local < 0) | (local >= V))
        if bool(bad.any()):
            b, n = (int(i) for i in bad.nonzero()[0])
            t = int(frame[n])
            raise ValueError(f"gazing_info['gazing_pos']: video {b}, frame {t} holds id {int(gpos[b, n])} (slot {n}) "
                             f"outside [{V * t}, {V * (t + 1)}): ids are video-global (local id + {V} * frame)")
    return gpos, padded, counts


def _frame_of_slot(counts: list[int]) -> torch.Tensor:
    """(N,) frame index of every slot, on the CPU."""
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))


def precision_context(precision: str, device: torch.device):
    """bf16: CUDA autocast, as the official training forward (on the CPU, fp32 as there); fp32: TF32 off."""
    if precision not in SCORE_PRECISIONS:
        raise ValueError(f"precision: expected 'bf16' (official: CUDA bf16 autocast) or 'fp32', got {precision!r}")
    if device.type != "cuda":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return exact_fp32()


def teacher_forced_scores(gazing_model, video: torch.Tensor, gpos: torch.Tensor, padded: torch.Tensor,
                          counts: list[int], precision: str = "bf16") -> TeacherForcedScores:
    """The computation behind :meth:`AutoGaze.score`, on checked inputs (see the module docstring)."""
    dec = gazing_model.gaze_decoder
    cfg = dec.cfg
    K, vocab, eos = cfg.num_multi_token_pred, cfg.vocab_size, cfg.eos_token_id
    V = gazing_model.cfg.num_vision_tokens_each_frame
    B, T = video.shape[:2]
    dev = video.device
    N = gpos.shape[1]
    # the slot layout, shared by every row, built on the CPU (no device syncs) then moved once
    frame = _frame_of_slot(counts)
    counts_t = torch.tensor(counts, dtype=torch.long)
    start = torch.cumsum(counts_t, 0) - counts_t  # first slot of each frame
    j = torch.arange(N) - start[frame]  # slot index within its frame
    k = j % K  # the head that predicts it
    nv = gazing_model.connector.pos_embed.shape[0]  # vision tokens per frame (196)
    seq = j + (frame + 1) * nv + start[frame]  # sequence index of the slot
    src = seq - (k + 1)  # the token it is predicted from
    heads = [(h, (k == h).nonzero().squeeze(1)) for h in range(K)]
    heads = [(h, sel.to(dev, non_blocking=True), src[sel].to(dev, non_blocking=True)) for h, sel in heads if len(sel)]
    tl_pos = torch.where(k == K - 1, seq, src).to(dev, non_blocking=True)
    tl_head = ((k + 1) % K).to(dev, non_blocking=True)
    order = torch.argsort(torch.cat([sel for _, sel, _ in heads])).to(dev) if heads else None
    tok = torch.where(padded, torch.full_like(gpos, eos), gpos - V * frame.to(dev, non_blocking=True))

    with precision_context(precision, dev):
        vision, _ = gazing_model.embed_video(video)  # (B, T, nv, D), resized to the model size
        gaze = dec.model.embed_tokens(tok)
        key_gaze = tok != eos
        pieces, masks = [], []
        for t, (g, m) in enumerate(zip(gaze.split(counts, dim=1), key_gaze.split(counts, dim=1))):
            pieces += [vision[:, t], g]
            masks += [torch.ones(B, nv, dtype=torch.bool, device=dev), m]
        x = torch.cat(pieces, dim=1)
        key_mask = torch.cat(masks, dim=1)
        positions = key_mask.long().cumsum(-1) - 1  # padded tokens repeat the previous position
        h = dec(x, positions, key_mask, sdpa=True)  # (B, L, D)

        W = dec.lm_head.weight.view(K, vocab, -1)  # head k: rows [266 k, 266 (k + 1)) of lm_head
        probs = []
        for head, sel, sel_src in heads:
            p = torch.softmax(F.linear(h[:, sel_src], W[head]), dim=-1)  # (B, n_k, 266), float32 under autocast too
            probs.append(p.gather(-1, tok[:, sel, None]).squeeze(-1))
        gaze_probs = torch.cat(probs, dim=1)[:, order] if heads else h.new_zeros(B, 0)
        tl = dec.task_loss_prediction_head(h[:, tl_pos])  # (B, N, K)
        tlp = tl.gather(-1, tl_head[None, :, None].expand(B, N, 1)).squeeze(-1)
    gaze_probs = gaze_probs.float()
    return TeacherForcedScores(torch.log(gaze_probs + 1e-8), tlp.float(), gaze_probs)
