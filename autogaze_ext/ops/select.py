"""select_step: one decode step's token choice and frame-state update on the device (spec §5.4).

Python face of torch.ops.autogaze_ext.select_step: argument checks, fake kernel, and the pure-PyTorch
reference (also what ``FastGazeRunner.step`` in model/fast.py runs when the compiled ops are absent),
which is also the fallback when the compiled kernel for the tensors' device is missing.
"""

from __future__ import annotations

import torch

from ._common import (HAS_EXTENSION, check_no_grad, check_same_device, check_tensor, check_written_apart, has_kernel,
                      register_inference_only)

_NEG_INF = float("-inf")


def select_step_reference(logits: torch.Tensor, loss_pred: torch.Tensor, cap: torch.Tensor, req: torch.Tensor,
                          has_req: torch.Tensor, banned: torch.Tensor, unfinished: torch.Tensor,
                          fids: torch.Tensor, n: torch.Tensor, first: torch.Tensor,
                          active: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch select_step (no argument checks): FastGazeRunner.step's selection, torch op for torch op.

    The one difference: fids columns n+k at or past fids.shape[1] are skipped (index_copy_ would raise).
    """
    B, K, V = logits.shape
    eos = V - 1
    karange = torch.arange(K, device=logits.device)
    scores = logits.masked_fill(banned[:, None, :], _NEG_INF)
    chunk_ban = torch.zeros(B, V, dtype=torch.bool, device=logits.device)
    picks = []
    for k in range(K):
        tok = scores[:, k].masked_fill(chunk_ban, _NEG_INF).argmax(-1)
        picks.append(tok)
        chunk_ban.scatter_(1, tok[:, None], True)
    chunk = torch.stack(picks, dim=1)
    cap, n, has_req, first, active = (t.reshape(1) for t in (cap, n, has_req, first, active))
    k_max = torch.clamp(cap - n, 0, K) * active  # slots this step emits
    in_chunk = karange[None, :] < k_max
    chunk = torch.where(unfinished[:, None], chunk, eos)
    met = (loss_pred <= req[:, None]) & in_chunk & has_req
    met = met & ~(first & (karange == 0))[None, :]
    chunk = torch.where(met | ~in_chunk, eos, chunk)
    hit_cap = n + K >= cap
    unfinished.copy_(unfinished & ~met.any(1) & ~hit_cap & active)
    # fids[:, n + k] = chunk[:, k], through one spare column that swallows the out-of-range ones
    F = fids.shape[1]
    cols = n + karange
    cols = torch.where((cols >= 0) & (cols < F), cols, F)
    wide = torch.cat([fids, fids.new_empty(B, 1)], dim=1)
    wide.index_copy_(1, cols, chunk)
    fids.copy_(wide[:, :F])
    banned.scatter_(1, chunk, True)
    feed = active & unfinished.any()
    n.add_(k_max)
    first.copy_(first & ~active)
    active.copy_(feed)
    return chunk


def _check_select_step_args(logits, loss_pred, cap, req, has_req, banned, unfinished, fids, n, first,
                            active) -> None:
    check_tensor(logits, "logits", torch.float32)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, K, V), got shape {tuple(logits.shape)}")
    B, K, V = logits.shape
    if not 1 <= K <= 128:
        raise ValueError(f"logits must have 1 to 128 heads (dim 1), got {K}")
    if V < 1 or K * V >= 1 << 30:
        raise ValueError(f"logits vocabulary (dim 2) must be >= 1 with K*V < 2^30, got V={V}")
    args = {"loss_pred": (loss_pred, torch.float32, (B, K)), "cap": (cap, torch.int64, None),
            "req": (req, torch.float32, (B,)), "has_req": (has_req, torch.bool, None),
            "banned": (banned, torch.bool, (B, V)), "unfinished": (unfinished, torch.bool, (B,)),
            "fids": (fids, torch.int64, "fids"), "n": (n, torch.int64, None),
            "first": (first, torch.bool, None), "active": (active, torch.bool, None)}
    for name, (t, dtype, shape) in args.items():
        check_tensor(t, name, dtype)
        if t.device != logits.device:
            raise ValueError(f"{name} is on {t.device} but logits on {logits.device}")
        if shape is None:
            if t.numel() != 1:
                raise ValueError(f"{name} must hold one element, got shape {tuple(t.shape)}")
        elif shape == "fids":
            if t.dim() != 2 or t.shape[0] != B:
                raise ValueError(f"fids must be (B={B}, F), got shape {tuple(t.shape)}")
        elif tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    for name, t in (("banned", banned), ("unfinished", unfinished), ("fids", fids)):
        if not t.is_contiguous():
            raise ValueError(f"{name} is updated in place and must be contiguous")
    written = ("banned", "unfinished", "fids", "n", "first", "active")
    check_written_apart("select_step", {name: args[name][0] for name in written},
                         {"logits": logits, **{name: t for name, (t, _, _) in args.items() if name not in written}})
    check_no_grad("select_step", logits=logits, loss_pred=loss_pred, req=req)


def select_step(logits: torch.Tensor, loss_pred: torch.Tensor, cap: torch.Tensor, req: torch.Tensor,
                has_req: torch.Tensor, banned: torch.Tensor, unfinished: torch.Tensor, fids: torch.Tensor,
                n: torch.Tensor, first: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Choose one decode step's chunk for every row and update the frame state in place (spec §5.4).

    logits (B, K, V) float32 (EOS = V-1), loss_pred (B, K) float32, cap (1,) int64 slot budget of the frame,
    req (B,) float32 task-loss requirement, has_req (1,) bool. State, updated in place: banned (B, V) bool
    (ids used in the frame; EOS always banned), unfinished (B,) bool, fids (B, F) int64 (ids of the frame;
    columns n..n+K-1 are written, those past F skipped), n (1,) int64 slots emitted, first (1,) bool before the
    frame's first step, active (1,) bool frame running (afterwards: any row still unfinished).
    Returns chunk (B, K) int64, the tokens to feed back. Never syncs with the host; CUDA-graph capturable.
    """
    _check_select_step_args(logits, loss_pred, cap, req, has_req, banned, unfinished, fids, n, first, active)
    if has_kernel("select_step", logits.device):
        return torch.ops.autogaze_ext.select_step(logits, loss_pred, cap, req, has_req, banned, unfinished, fids,
                                                  n, first, active)
    return select_step_reference(logits, loss_pred, cap, req, has_req, banned, unfinished, fids, n, first, active)


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::select_step")
    def _select_step_fake(logits, loss_pred, cap, req, has_req, banned, unfinished, fids, n, first, active):
        check_same_device("logits", logits, loss_pred=loss_pred, cap=cap, req=req, has_req=has_req, banned=banned,
                           unfinished=unfinished, fids=fids, n=n, first=first, active=active)  # meta among real
        B, K, _ = logits.shape
        return logits.new_empty((B, K), dtype=torch.int64)

    # An inference op (argmax selection); it updates the frame state in place.
    register_inference_only("select_step")
