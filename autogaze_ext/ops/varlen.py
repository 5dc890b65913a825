"""varlen_attention: attention over packed gazed tokens with per-video and per-frame offsets.

Python face of torch.ops.autogaze_ext.varlen_attention: argument checks, fake kernel, a pure-PyTorch
reference (the test oracle, also the path without the compiled module), and on CUDA tensors without a
compiled CUDA kernel a fast path built from torch's own kernels (``torch.nn.attention.varlen`` where the
mode fits it, else scaled_dot_product_attention per video with a boolean block mask).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from ._common import (HAS_EXTENSION, MAX_HEAD_DIM, check_float, check_int, check_same_device, has_kernel,
                      register_reference_autograd)

MODES = ("block_causal", "causal", "bidirectional", "frame_independent")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------- checks


def _check_varlen_attention_args(q, k, v, cu_seqlens, cu_frames, mode, scale, num_prefix) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens), ("cu_frames", cu_frames)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q must be float32, float16 or bfloat16, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    if q.dim() != 3:
        raise ValueError(f"q must be (total_tokens, heads, head_dim), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} must match q {tuple(q.shape)}")
    if q.shape[1] < 1 or not 1 <= q.shape[2] <= MAX_HEAD_DIM:
        raise ValueError(f"q must have >= 1 head and head_dim in [1, {MAX_HEAD_DIM}], got shape {tuple(q.shape)}")
    for name, t in (("cu_seqlens", cu_seqlens), ("cu_frames", cu_frames)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must have dtype torch.int32, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] < 2:
            raise ValueError(f"{name} must be (n + 1,) offsets with n >= 1, got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v), ("cu_seqlens", cu_seqlens), ("cu_frames", cu_frames)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q on {q.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    if not q.is_contiguous():
        raise ValueError("q must be contiguous (call .contiguous() first)")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_float(scale, "scale", positive=True)
    check_int(num_prefix, "num_prefix", 0)


def _validate_offsets(cu_seqlens: torch.Tensor, cu_frames: torch.Tensor, total: int) -> None:
    """Value checks (one small device->host copy): offsets run from 0 to total without decreasing, and every
    video boundary is a frame boundary."""
    videos, frames = cu_seqlens.tolist(), cu_frames.tolist()
    for name, o in (("cu_seqlens", videos), ("cu_frames", frames)):
        if o[0] != 0 or o[-1] != total:
            raise ValueError(f"{name} must start at 0 and end at total_tokens = {total}, got {o[0]} and {o[-1]}")
        bad = next((i for i in range(1, len(o)) if o[i] < o[i - 1]), None)
        if bad is not None:
            raise ValueError(f"{name} must be non-decreasing, got {o[bad - 1]} then {o[bad]} at index {bad}")
    missing = sorted(set(videos) - set(frames))
    if missing:
        raise ValueError(f"every cu_seqlens value must appear in cu_frames (a frame may not span two videos); "
                         f"missing {missing[:5]}")


# ---------------------------------------------------------------------------------------------- reference


def token_key_ranges(cu_seqlens: torch.Tensor, cu_frames: torch.Tensor, mode: str, num_prefix: int,
                     total: int) -> tuple[torch.Tensor, ...]:
    """Per query token (int64, on the offsets' device, no host sync): video start, the mode's key range
    [lo, hi) and the end of the video's prefix keys; query i sees keys j with lo <= j < hi or start <= j < pend."""
    dev = cu_seqlens.device
    i = torch.arange(total, device=dev)
    cs, cf = cu_seqlens.long(), cu_frames.long()
    vid = torch.searchsorted(cs, i, right=True) - 1  # last offset <= i: skips empty videos and frames
    fid = torch.searchsorted(cf, i, right=True) - 1
    s, e = cs[vid], cs[vid + 1]
    fs, fe = cf[fid], cf[fid + 1]
    if mode == "block_causal":
        lo, hi = s, fe
    elif mode == "causal":
        lo, hi = s, i + 1
    elif mode == "bidirectional":
        lo, hi = s, e
    else:
        lo, hi = fs, fe
    return s, lo, hi, s + torch.clamp(e - s, max=num_prefix)


def varlen_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                               cu_frames: torch.Tensor, mode: str, scale: float, num_prefix: int = 0,
                               rows_per_chunk: int = 256) -> torch.Tensor:
    """Pure-PyTorch varlen_attention (no argument checks): masked softmax attention in q's dtype promoted to
    at least float32 (float64 inputs give a float64 oracle), query rows in chunks so memory stays
    O(chunk * keys). Returns q's shape and dtype."""
    total, H, d = q.shape
    cdt = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty(total, H, d, dtype=cdt, device=q.device)
    if total == 0:
        return out.to(q.dtype)
    s, lo, hi, pend = token_key_ranges(cu_seqlens, cu_frames, mode, num_prefix, total)
    qc, kc, vc = (t.to(cdt).transpose(0, 1) for t in (q, k, v))  # (H, total, d)
    for a in range(0, total, rows_per_chunk):
        c = min(total, a + rows_per_chunk)
        # keys of the videos these rows belong to; the video end is at most the last row's hi or pend
        k0, k1 = int(s[a]), int(torch.maximum(hi[a:c], pend[a:c]).max())
        j = torch.arange(k0, k1, device=q.device)
        allowed = ((j >= lo[a:c, None]) & (j < hi[a:c, None])) | ((j >= s[a:c, None]) & (j < pend[a:c, None]))
        sc = torch.matmul(qc[:, a:c], kc[:, k0:k1].transpose(1, 2)) * scale
        p = torch.softmax(sc.masked_fill(~allowed, float("-inf")), dim=-1)
        out[a:c] = torch.matmul(p, vc[:, k0:k1]).transpose(0, 1)
    return out.to(q.dtype)


# ------------------------------------------------------------------------------- CUDA path from torch ops


try:  # torch's varlen FlashAttention (torch >= 2.10)
    from torch.nn.attention.varlen import varlen_attn as _VARLEN_ATTN
except ImportError:
    _VARLEN_ATTN = None


def _torch_varlen():
    return _VARLEN_ATTN


def _torch_varlen_plan(q, videos: list[int], frames: list[int], mode: str, num_prefix: int):
    """How to express the mode with torch's FlashAttention varlen kernel: (cu_q, cu_k, max_q, max_k,
    causal, seqused_k) as host lists, or None when it cannot (dtype, head dim, mode with prefix)."""
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[2] % 8 or _torch_varlen() is None:
        return None
    vlen = [b - a for a, b in zip(videos, videos[1:])]
    flen = [b - a for a, b in zip(frames, frames[1:])]
    if mode == "bidirectional":
        return videos, videos, max(vlen), max(vlen), False, None
    if mode == "causal" and num_prefix <= 1:  # token 0 is visible to every causal query anyway
        return videos, videos, max(vlen), max(vlen), True, None
    if mode == "frame_independent" and num_prefix == 0:
        return frames, frames, max(flen), max(flen), False, None
    if mode == "block_causal":
        # Each frame is a query sequence whose keys are its video's first (frame end - video start) tokens:
        # key sequences overlap, which FlashAttention allows with explicit per-sequence key counts.
        owner = _frame_video(videos, frames)
        starts = [videos[b] for b in owner]
        used = [fe - st for fe, st in zip(frames[1:], starts)]
        # prefix keys beyond a frame's end cannot be added: fine when each non-empty frame ends past them
        if all(n == 0 or u >= min(num_prefix, videos[b + 1] - videos[b]) for u, n, b in zip(used, flen, owner)):
            return frames, starts + [frames[-1]], max(flen), max(used), False, used
    return None


def _torch_varlen_kwargs(causal: bool, used, scale: float, device) -> dict | None:
    """Keyword arguments for this torch's varlen_attn, or None when it lacks one the plan needs (its
    signature changed across torch releases: torch 2.11's has no window_size/seqused_k)."""
    params = inspect.signature(_torch_varlen()).parameters
    kw: dict = {}
    if "scale" not in params:
        return None
    kw["scale"] = scale
    if "window_size" in params:
        kw["window_size"] = (-1, 0) if causal else (-1, -1)
    elif "is_causal" in params:
        kw["is_causal"] = causal
    elif causal:
        return None
    if used is not None:  # overlapping key ranges (block_causal): FlashAttention with per-sequence key counts
        if "seqused_k" not in params or "num_splits" not in params:
            return None
        kw["seqused_k"] = torch.tensor(used, dtype=torch.int32, device=device)
        kw["num_splits"] = 1
    return kw


def _frame_video(videos: list[int], frames: list[int]) -> list[int]:
    """Index of the video holding each frame (host lists of offsets; empty frames go to a neighbour)."""
    out, b = [], 0
    for f in range(len(frames) - 1):
        while b + 2 < len(videos) and videos[b + 1] <= frames[f]:
            b += 1
        out.append(b)
    return out


def _attention_torch_cuda(q, k, v, cu_seqlens, cu_frames, mode, scale, num_prefix) -> torch.Tensor:
    """CUDA tensors without a compiled kernel: torch's varlen FlashAttention where the mode fits it, else SDPA
    per video with a boolean mask. Reads the offsets on the host once (a few hundred bytes)."""
    videos, frames = cu_seqlens.tolist(), cu_frames.tolist()
    plan = _torch_varlen_plan(q, videos, frames, mode, num_prefix)
    kwargs = None if plan is None else _torch_varlen_kwargs(plan[4], plan[5], scale, q.device)
    if kwargs is not None:
        cu_q, cu_k, max_q, max_k, _, _ = plan
        as_dev = (lambda x: torch.tensor(x, dtype=torch.int32, device=q.device))
        return _torch_varlen()(q, k, v, as_dev(cu_q), as_dev(cu_k), max_q, max_k, **kwargs)
    out = torch.empty_like(q)
    s, lo, hi, pend = token_key_ranges(cu_seqlens, cu_frames, mode, num_prefix, q.shape[0])
    for a, b in zip(videos, videos[1:]):
        if a == b:
            continue
        j = torch.arange(a, b, device=q.device)
        mask = ((j >= lo[a:b, None]) & (j < hi[a:b, None])) | (j < pend[a:b, None])
        qb, kb, vb = (t[a:b].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
        out[a:b] = ob[0].transpose(0, 1)
    return out


# -------------------------------------------------------------------------------------------------- public


BACKENDS = ("auto", "compiled", "torch", "reference")


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     cu_frames: torch.Tensor | None = None, mode: str = "block_causal", scale: float | None = None,
                     num_prefix: int = 0, validate: bool = True, backend: str = "auto") -> torch.Tensor:
    """Softmax attention over packed tokens of several videos, each cut into frames.

    q, k, v: (total_tokens, heads, head_dim), one dtype of float32/float16/bfloat16 (scores and softmax in
    float32), head_dim <= 256, contiguous. cu_seqlens: (B + 1,) int32 offsets of the videos; cu_frames:
    (F + 1,) int32 offsets of the frames, which must include every video boundary (frames may be empty;
    None = one frame per video). A query sees keys of its own video only:

    - ``block_causal``: every key of frames up to and including its own (the official AutoGaze SigLIP mask);
    - ``causal``: keys up to and including itself;
    - ``bidirectional``: every key of the video;
    - ``frame_independent``: the keys of its own frame;

    and in every mode the first ``num_prefix`` keys of its video (class / register tokens).
    scale: score multiplier, default head_dim ** -0.5. Returns a (total_tokens, heads, head_dim) tensor of q's
    dtype. validate=True checks the offset values (one small device->host copy; skipped while compiling);
    the CPU kernel checks them in any case.

    backend: ``auto`` (the compiled kernel for the tensor's device when built, else ``torch`` on CUDA and
    ``reference`` elsewhere), ``compiled``, ``torch`` (CUDA only: torch's varlen FlashAttention where the
    mode fits it, else SDPA per video with a boolean mask; reads the offsets on the host) or ``reference``.
    """
    if isinstance(q, torch.Tensor) and q.dim() == 3 and scale is None:
        scale = q.shape[2] ** -0.5
    if cu_frames is None:
        cu_frames = cu_seqlens
    _check_varlen_attention_args(q, k, v, cu_seqlens, cu_frames, mode, scale, num_prefix)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    scale, num_prefix = float(scale), int(num_prefix)
    if validate and q.device.type != "meta" and not torch.compiler.is_compiling():
        _validate_offsets(cu_seqlens, cu_frames, q.shape[0])
    compiled = has_kernel("varlen_attention", q.device)
    if backend == "auto":
        backend = "compiled" if compiled else "torch" if q.device.type == "cuda" else "reference"
    if backend == "compiled":
        if not compiled:
            raise ValueError(f"backend='compiled': no compiled varlen_attention kernel for {q.device.type} tensors")
        return torch.ops.autogaze_ext.varlen_attention(q, k, v, cu_seqlens, cu_frames, mode, scale, num_prefix)
    if backend == "torch":
        if q.device.type != "cuda":
            raise ValueError(f"backend='torch' needs CUDA tensors, got {q.device}")
        return _attention_torch_cuda(q, k, v, cu_seqlens, cu_frames, mode, scale, num_prefix)
    return varlen_attention_reference(q, k, v, cu_seqlens, cu_frames, mode, scale, num_prefix)


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::varlen_attention")
    def _varlen_attention_fake(q, k, v, cu_seqlens, cu_frames, mode, scale, num_prefix):
        check_same_device("q", q, k=k, v=v, cu_seqlens=cu_seqlens, cu_frames=cu_frames)  # meta among real
        torch._check(q.dim() == 3 and k.shape == q.shape and v.shape == q.shape,
                     lambda: "varlen_attention: q, k, v must be (total, heads, head_dim) of one shape")
        return q.new_empty(q.shape)

    # Gradients for q, k, v from the PyTorch reference (the kernels are forward-only): exact, O(chunk * keys)
    # memory, but not fast.
    register_reference_autograd("varlen_attention", varlen_attention_reference, ["q", "k", "v"])
