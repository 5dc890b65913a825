"""frame_begin / frame_end: the bookkeeping around each frame of the fast decoding path (spec §5.1, §5.6).

Python face of torch.ops.autogaze_ext.frame_begin and frame_end: argument checks, fake kernels, and the
pure-PyTorch references (what ``FastGazeRunner.prefill`` and ``end_frame`` in model/fast.py run when the
compiled ops are absent), which are also the fallback when the compiled kernel for the tensors' device is
missing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (HAS_EXTENSION, check_int, check_no_grad, check_same_device, check_tensor, check_written_apart,
                      has_kernel, register_inference_only)


def frame_begin_reference(pend: torch.Tensor, pend_len: torch.Tensor, vision: torch.Tensor, t: torch.Tensor,
                          embed_weight: torch.Tensor, start: torch.Tensor, key_valid: torch.Tensor,
                          count: torch.Tensor, tail_pos: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch frame_begin (no argument checks) for in-range device values: 0 <= t < T, pending ids in
    the table, start + K + NV <= L (the kernels give zero rows and skip slots outside; this would raise)."""
    B, K = pend.shape
    NV = vision.shape[2]
    karange = torch.arange(K, device=pend.device)
    x = torch.cat([F.embedding(pend, embed_weight), vision.index_select(1, t.reshape(1)).squeeze(1)], dim=1)
    pend_valid = (karange[None, :] < pend_len.reshape(1)) & (pend != eos)
    valid = torch.cat([pend_valid, torch.ones(B, NV, dtype=torch.bool, device=pend.device)], dim=1)
    positions = count[:, None] + valid.long().cumsum(1) - 1
    key_valid.index_copy_(1, start.reshape(1) + torch.arange(K + NV, device=pend.device), valid)
    count.add_(valid.sum(1))
    tail_pos.copy_(positions[:, K + NV - tail_pos.shape[1]:])
    return x, positions


def _check_frame_begin_args(pend, pend_len, vision, t, embed_weight, start, key_valid, count, tail_pos,
                            eos) -> None:
    check_tensor(pend, "pend", torch.int64)
    if pend.dim() != 2 or not 1 <= pend.shape[1] <= 1024:
        raise ValueError(f"pend must be (B, K) with 1 <= K <= 1024, got shape {tuple(pend.shape)}")
    B, K = pend.shape
    check_int(eos, "eos", 0)
    args = {"pend_len": (pend_len, torch.int64), "vision": (vision, torch.float32), "t": (t, torch.int64),
            "embed_weight": (embed_weight, torch.float32), "start": (start, torch.int64),
            "key_valid": (key_valid, torch.bool), "count": (count, torch.int64), "tail_pos": (tail_pos, torch.int64)}
    for name, (x, dtype) in args.items():
        check_tensor(x, name, dtype)
    check_same_device("pend", pend, **{name: x for name, (x, _) in args.items()})
    for name in ("pend_len", "t", "start"):
        if args[name][0].numel() != 1:
            raise ValueError(f"{name} must hold one element, got shape {tuple(args[name][0].shape)}")
    if vision.dim() != 4 or vision.shape[0] != B or vision.shape[1] < 1:
        raise ValueError(f"vision must be (B={B}, T, NV, hidden) with T >= 1, got shape {tuple(vision.shape)}")
    D = vision.shape[3]
    if embed_weight.dim() != 2 or embed_weight.shape[0] < 1 or embed_weight.shape[1] != D:
        raise ValueError(f"embed_weight must be (vocab, hidden={D}), got shape {tuple(embed_weight.shape)}")
    if key_valid.dim() != 2 or key_valid.shape[0] != B:
        raise ValueError(f"key_valid must be (B={B}, L), got shape {tuple(key_valid.shape)}")
    if tuple(count.shape) != (B,):
        raise ValueError(f"count must have shape ({B},), got {tuple(count.shape)}")
    P = K + vision.shape[2]
    if tail_pos.dim() != 2 or tail_pos.shape[0] != B or not 1 <= tail_pos.shape[1] <= P:
        raise ValueError(f"tail_pos must be (B={B}, n) with 1 <= n <= K + NV = {P}, got shape {tuple(tail_pos.shape)}")
    for name in ("key_valid", "count", "tail_pos"):
        if not args[name][0].is_contiguous():
            raise ValueError(f"{name} is updated in place and must be contiguous")
    _check_in_place("frame_begin", {"pend": (pend, None), **args}, ("key_valid", "count", "tail_pos"))
    check_no_grad("frame_begin", vision=vision, embed_weight=embed_weight)


def _check_in_place(op: str, args: dict, written: tuple[str, ...]) -> None:
    """frame_begin / frame_end: the tensors written in place apart from each other and from the ones read."""
    check_written_apart(op, {name: args[name][0] for name in written},
                         {name: t for name, (t, _) in args.items() if name not in written})


def frame_begin(pend: torch.Tensor, pend_len: torch.Tensor, vision: torch.Tensor, t: torch.Tensor,
                embed_weight: torch.Tensor, start: torch.Tensor, key_valid: torch.Tensor, count: torch.Tensor,
                tail_pos: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefill input of frame t (spec §5.1, §5.6); returns x (B, K + NV, hidden) and positions (B, K + NV).

    pend (B, K) int64: the previous frame's last chunk (eos pads; only k < pend_len counts), vision (B, T, NV,
    hidden) float32 with frame t's vision tokens, embed_weight (vocab, hidden) the token embedding. x = the
    pending ids' embeddings then the vision tokens; a token is valid if it is a vision token or a pending id
    k < pend_len that is not eos; positions = count + (valid tokens up to and including it) - 1. In place:
    key_valid (B, L) at slots start .. start + K + NV - 1 = validity; count (B,) += valid tokens; tail_pos
    (B, n) = the last n positions (the stale positions of the frame's decode steps, spec §5.6). Ids outside
    the table and t outside [0, T) give zero rows, slots outside the cache are skipped. pend_len, t and start
    are never read on the host: CUDA-graph capturable.
    """
    _check_frame_begin_args(pend, pend_len, vision, t, embed_weight, start, key_valid, count, tail_pos, eos)
    if has_kernel("frame_begin", pend.device):
        return torch.ops.autogaze_ext.frame_begin(pend, pend_len, vision, t, embed_weight, start, key_valid, count,
                                                  tail_pos, eos)
    return frame_begin_reference(pend, pend_len, vision, t, embed_weight, start, key_valid, count, tail_pos, eos)


def frame_end_reference(fids: torch.Tensor, n: torch.Tensor, frame_start: torch.Tensor, t: torch.Tensor,
                        key_valid: torch.Tensor, count: torch.Tensor, pend: torch.Tensor, pend_len: torch.Tensor,
                        out_ids: torch.Tensor, out_n: torch.Tensor, eos: int) -> None:
    """Pure-PyTorch frame_end (no argument checks) for in-range device values: frame_start + W <= L and
    0 <= t < T (the kernels skip what lies outside; index_copy_ here would raise)."""
    B, W = fids.shape
    K = pend.shape[1]
    nn = n.reshape(1).clamp(0, W)
    window = torch.arange(W, device=fids.device)
    karange = torch.arange(K, device=fids.device)
    out_ids.index_copy_(1, t.reshape(1), fids[:, None])
    out_n.index_copy_(0, t.reshape(1), nn)
    fed = K * torch.div((nn - 1).clamp(min=0), K, rounding_mode="floor")
    ids_real = fids != eos
    in_fed = window[None, :] < fed
    # slots frame_start .. frame_start+fed-1 hold the fed chunks: visible only where not a pad
    slots = frame_start.reshape(1) + window
    cur = key_valid.index_select(1, slots)
    key_valid.index_copy_(1, slots, torch.where(in_fed, ids_real, cur))
    count.add_((ids_real & in_fed).sum(1))
    pend.copy_(fids.gather(1, (fed + karange).clamp(max=W - 1).expand(B, K)))
    pend_len.copy_((nn - fed).reshape(pend_len.shape))
    pend.masked_fill_(karange[None, :] >= pend_len.reshape(1), eos)


def _check_frame_end_args(fids, n, frame_start, t, key_valid, count, pend, pend_len, out_ids, out_n, eos) -> None:
    check_tensor(fids, "fids", torch.int64)
    if fids.dim() != 2 or fids.shape[1] < 1:
        raise ValueError(f"fids must be (B, W) with W >= 1, got shape {tuple(fids.shape)}")
    B, W = fids.shape
    check_int(eos, "eos", 0)
    args = {"n": (n, torch.int64), "frame_start": (frame_start, torch.int64), "t": (t, torch.int64),
            "key_valid": (key_valid, torch.bool), "count": (count, torch.int64), "pend": (pend, torch.int64),
            "pend_len": (pend_len, torch.int64), "out_ids": (out_ids, torch.int64), "out_n": (out_n, torch.int64)}
    for name, (x, dtype) in args.items():
        check_tensor(x, name, dtype)
    check_same_device("fids", fids, **{name: x for name, (x, _) in args.items()})
    for name in ("n", "frame_start", "t", "pend_len"):
        if args[name][0].numel() != 1:
            raise ValueError(f"{name} must hold one element, got shape {tuple(args[name][0].shape)}")
    if key_valid.dim() != 2 or key_valid.shape[0] != B:
        raise ValueError(f"key_valid must be (B={B}, L), got shape {tuple(key_valid.shape)}")
    if tuple(count.shape) != (B,):
        raise ValueError(f"count must have shape ({B},), got {tuple(count.shape)}")
    if pend.dim() != 2 or pend.shape[0] != B or not 1 <= pend.shape[1] <= W:
        raise ValueError(f"pend must be (B={B}, K) with 1 <= K <= W={W}, got shape {tuple(pend.shape)}")
    if out_ids.dim() != 3 or out_ids.shape[0] != B or out_ids.shape[2] != W:
        raise ValueError(f"out_ids must be (B={B}, T, W={W}), got shape {tuple(out_ids.shape)}")
    if tuple(out_n.shape) != (out_ids.shape[1],):
        raise ValueError(f"out_n must have shape ({out_ids.shape[1]},), got {tuple(out_n.shape)}")
    for name in ("key_valid", "count", "pend", "pend_len", "out_ids", "out_n"):
        if not args[name][0].is_contiguous():
            raise ValueError(f"{name} is updated in place and must be contiguous")
    _check_in_place("frame_end", {"fids": (fids, None), **args},
                    ("key_valid", "count", "pend", "pend_len", "out_ids", "out_n"))


def frame_end(fids: torch.Tensor, n: torch.Tensor, frame_start: torch.Tensor, t: torch.Tensor,
              key_valid: torch.Tensor, count: torch.Tensor, pend: torch.Tensor, pend_len: torch.Tensor,
              out_ids: torch.Tensor, out_n: torch.Tensor, eos: int) -> None:
    """End frame t of a batch in place (spec §5.6); every tensor int64 except key_valid (bool).

    fids (B, W): the frame's ids (W >= the frame's slot count n, a 1-element tensor, clamped to [0, W]);
    K = pend.shape[1] is the chunk size, and the frame's first fed = K * floor((n - 1) / K) ids are the
    chunks already fed at cache slots frame_start .. frame_start + fed - 1. Updates: key_valid (B, L) at those
    slots = (id != eos), so pads stay invisible to later frames; count (B,) += the real ids among them; pend
    (B, K) = ids fed .. n-1 (the last chunk, fed with the next frame's prefill), then eos; pend_len = n - fed;
    out_ids[:, t] = fids (out_ids (B, T, W)) and out_n[t] = n. Slots outside the cache and t outside
    [0, T) are skipped. n, frame_start and t are never read on the host: CUDA-graph capturable.
    """
    _check_frame_end_args(fids, n, frame_start, t, key_valid, count, pend, pend_len, out_ids, out_n, eos)
    if has_kernel("frame_end", fids.device):
        torch.ops.autogaze_ext.frame_end(fids, n, frame_start, t, key_valid, count, pend, pend_len, out_ids,
                                         out_n, eos)
    else:
        frame_end_reference(fids, n, frame_start, t, key_valid, count, pend, pend_len, out_ids, out_n, eos)


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::frame_begin")
    def _frame_begin_fake(pend, pend_len, vision, t, embed_weight, start, key_valid, count, tail_pos, eos):
        check_same_device("pend", pend, pend_len=pend_len, vision=vision, t=t, embed_weight=embed_weight,
                           start=start, key_valid=key_valid, count=count, tail_pos=tail_pos)  # meta among real
        B, K = pend.shape
        P = K + vision.shape[2]
        return vision.new_empty((B, P, vision.shape[3])), pend.new_empty((B, P))

    @torch.library.register_fake("autogaze_ext::frame_end")
    def _frame_end_fake(fids, n, frame_start, t, key_valid, count, pend, pend_len, out_ids, out_n, eos):
        check_same_device("fids", fids, n=n, frame_start=frame_start, t=t, key_valid=key_valid, count=count,
                           pend=pend, pend_len=pend_len, out_ids=out_ids, out_n=out_n)  # meta among real
        return None

    # Inference ops: decoding bookkeeping, updated in place.
    register_inference_only("frame_begin")
    register_inference_only("frame_end")
