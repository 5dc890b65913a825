"""Attention ops of the fast decoding path: RoPE + KV-cache write, and attention over the cache.

``rope_cache_write`` and ``cache_attention`` replace the torch code of ``model/fast.py``
(``_forward``: rope_cos_sin/apply_rope/index_copy_, and ``_attend``). Both take the first cache slot
``start`` as a 1-element int64 tensor on the device and never read it on the host, so they can be
captured in CUDA graphs and replayed with new values. Each op has argument checks, a fake kernel and a
pure-PyTorch reference (``*_reference``) used when the compiled kernels are missing.
"""

from __future__ import annotations

import math

import torch

from ._common import (HAS_EXTENSION, MAX_HEAD_DIM, check_bool, check_int, check_no_grad, check_same_device,
                      check_tensor, check_written_apart, has_kernel, register_inference_only)

_START_BOUND = 1 << 40  # any start beyond +-2^40 behaves like the bound; keeps start + i from overflowing


def _check_start(start) -> None:
    check_tensor(start, "start", torch.int64)
    if start.numel() != 1:
        raise ValueError(f"start must hold one element (the first cache slot), got shape {tuple(start.shape)}")


# ------------------------------------------------------------------------------------------ rope_cache_write


def _check_rope_cache_write_args(qkv, positions, inv_freq, k_cache, v_cache, start, num_heads,
                                 num_kv_heads) -> int:
    H = check_int(num_heads, "num_heads", 1)
    KVH = check_int(num_kv_heads, "num_kv_heads", 1)
    for name, t, dt in [("qkv", qkv, torch.float32), ("positions", positions, torch.int64),
                        ("inv_freq", inv_freq, torch.float32), ("k_cache", k_cache, torch.float32),
                        ("v_cache", v_cache, torch.float32)]:
        check_tensor(t, name, dt)
    _check_start(start)
    if qkv.dim() != 3:
        raise ValueError(f"qkv must be (B, n, (H + 2*KVH) * d), got shape {tuple(qkv.shape)}")
    B, n, width = qkv.shape
    if width % (H + 2 * KVH):
        raise ValueError(f"qkv width {width} is not a multiple of num_heads + 2*num_kv_heads = {H + 2 * KVH}")
    d = width // (H + 2 * KVH)
    if d % 2 or not 2 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head dim (qkv width / (H + 2*KVH)) must be even and in [2, {MAX_HEAD_DIM}], got {d}")
    if positions.shape != (B, n):
        raise ValueError(f"positions must be (B, n) = {(B, n)}, got shape {tuple(positions.shape)}")
    if inv_freq.shape != (d // 2,):
        raise ValueError(f"inv_freq must be (d/2,) = ({d // 2},), got shape {tuple(inv_freq.shape)}")
    for name, c in [("k_cache", k_cache), ("v_cache", v_cache)]:
        if c.dim() != 4 or c.shape[0] != B or c.shape[1] != KVH or c.shape[3] != d:
            raise ValueError(f"{name} must be (B, KVH, L, d) = ({B}, {KVH}, L, {d}), got shape {tuple(c.shape)}")
        if not c.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is written in place)")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} must match k_cache {tuple(k_cache.shape)}")
    check_same_device("qkv", qkv, positions=positions, inv_freq=inv_freq, k_cache=k_cache, v_cache=v_cache,
                       start=start)
    check_written_apart("rope_cache_write", {"k_cache": k_cache, "v_cache": v_cache},
                         {"qkv": qkv, "positions": positions, "inv_freq": inv_freq, "start": start})
    check_no_grad("rope_cache_write", qkv=qkv, inv_freq=inv_freq, k_cache=k_cache, v_cache=v_cache)
    return d


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rope_cache_write_reference(qkv: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                               k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor, num_heads: int,
                               num_kv_heads: int) -> torch.Tensor:
    """Pure-PyTorch rope_cache_write (no argument checks), the same computation as decoder.py's
    rope_cos_sin + apply_rope. Slots outside [0, L) are skipped; no host sync (graph-capturable)."""
    B, n, width = qkv.shape
    H, KVH = num_heads, num_kv_heads
    d = width // (H + 2 * KVH)
    L = k_cache.shape[2]
    q, k, v = qkv.split([H * d, KVH * d, KVH * d], dim=-1)
    freqs = positions.float()[..., None] * inv_freq.to(positions.device)[None, None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # (B, 1, n, d)
    q = (q.reshape(B, n, H, d).transpose(1, 2) * cos + _rotate_half(q.reshape(B, n, H, d).transpose(1, 2)) * sin)
    kk = k.reshape(B, n, KVH, d).transpose(1, 2)
    kk = kk * cos + _rotate_half(kk) * sin
    vv = v.reshape(B, n, KVH, d).transpose(1, 2)
    if n and L:
        s = start.reshape(1).clamp(-_START_BOUND, _START_BOUND)
        slots = s + torch.arange(n, device=qkv.device)
        # Out-of-range tokens are redirected to the nearest cache end (0 or L-1) carrying that slot's own new
        # value (its token, when one lands there) or its current value (when none does): duplicate indices
        # then carry equal values, so index_copy_ stays deterministic and in bounds without a host sync.
        target = slots.clamp(0, L - 1)
        src = (target - s).clamp(0, n - 1)
        any_in = ((slots >= 0) & (slots < L)).any()
        for cache, new in ((k_cache, kk), (v_cache, vv)):
            data = torch.where(any_in, new.index_select(2, src), cache.index_select(2, target))
            cache.index_copy_(2, target, data.to(cache.dtype))
    return q.contiguous()


def rope_cache_write(qkv: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, start: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """RoPE on q and k of a packed qkv projection; k and v written into the caches in place.

    qkv: (B, n, (H + 2*KVH) * d) float32, the output of x @ [Wq; Wk; Wv]^T (q | k | v, each head-major);
    positions: (B, n) int64 RoPE positions; inv_freq: (d/2,) float32; k_cache, v_cache: (B, KVH, L, d)
    float32, contiguous; start: 1-element int64 tensor on the same device. Token j of row b goes to slot
    start + j; slots outside [0, L) are skipped. RoPE is rotate-half with angles
    float32(position) * inv_freq, as in decoder.py. Returns the rotated q, (B, H, n, d) contiguous.
    """
    _check_rope_cache_write_args(qkv, positions, inv_freq, k_cache, v_cache, start, num_heads, num_kv_heads)
    if has_kernel("rope_cache_write", qkv.device):
        return torch.ops.autogaze_ext.rope_cache_write(qkv, positions, inv_freq, k_cache, v_cache, start,
                                                       num_heads, num_kv_heads)
    return rope_cache_write_reference(qkv, positions, inv_freq, k_cache, v_cache, start, num_heads, num_kv_heads)


# ------------------------------------------------------------------------------------------- cache_attention


def _check_cache_attention_args(q, k_cache, v_cache, key_valid, start) -> None:
    for name, t, dt in [("q", q, torch.float32), ("k_cache", k_cache, torch.float32),
                        ("v_cache", v_cache, torch.float32), ("key_valid", key_valid, torch.bool)]:
        check_tensor(t, name, dt)
    _check_start(start)
    if q.dim() != 4:
        raise ValueError(f"q must be (B, H, n, d), got shape {tuple(q.shape)}")
    B, H, n, d = q.shape
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"q head dim must be in [1, {MAX_HEAD_DIM}], got {d}")
    if k_cache.dim() != 4 or k_cache.shape[0] != B or k_cache.shape[3] != d:
        raise ValueError(f"k_cache must be (B, KVH, L, d) with B = {B} and d = {d}, got shape {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} must match k_cache {tuple(k_cache.shape)}")
    KVH, L = k_cache.shape[1], k_cache.shape[2]
    if KVH < 1 or H % KVH:
        raise ValueError(f"q heads ({H}) must be a multiple of k_cache heads ({KVH})")
    if key_valid.shape != (B, L):
        raise ValueError(f"key_valid must be (B, L) = {(B, L)}, got shape {tuple(key_valid.shape)}")
    check_same_device("q", q, k_cache=k_cache, v_cache=v_cache, key_valid=key_valid, start=start)
    check_no_grad("cache_attention", q=q, k_cache=k_cache, v_cache=v_cache)


def attend_values(p: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """p @ v with the keys a query may not see truly absent: a NaN or inf value of a masked key (p = 0) must not
    reach the output as 0 * inf = NaN, while those of visible keys count as IEEE sums would (NaN; +-inf, NaN
    where both signs meet). p (..., n, L), v (..., L, d), allowed (..., n, L) broadcastable to p. No host sync."""
    finite = torch.isfinite(v)
    out = torch.matmul(p, torch.where(finite, v, 0))
    inf = float("inf")
    flags = torch.cat([v.isnan(), v == inf, v == -inf], dim=-1).to(p.dtype)  # which visible keys are not finite
    nan, pos, neg = torch.matmul(allowed.to(p.dtype), flags).split(v.shape[-1], dim=-1)
    out = torch.where(pos > 0, inf, torch.where(neg > 0, -inf, out))
    return torch.where((nan > 0) | ((pos > 0) & (neg > 0)), float("nan"), out)


def cache_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              key_valid: torch.Tensor, start: torch.Tensor, rows_per_chunk: int = 32) -> torch.Tensor:
    """Pure-PyTorch cache_attention (no argument checks): masked softmax in q's dtype (float32 like
    fast.py's ``_attend``; float64 inputs give a float64 oracle). A query with nothing to attend gets NaN."""
    B, H, n, d = q.shape
    KVH, L = k_cache.shape[1], k_cache.shape[2]
    rep = H // KVH
    s = start.reshape(1).clamp(-_START_BOUND, _START_BOUND)
    slots = s + torch.arange(n, device=q.device)
    idx = torch.arange(L, device=q.device)
    causal = idx[None, :] <= slots[:, None]  # (n, L)
    diag = idx[None, :] == slots[:, None]
    scale = 1.0 / math.sqrt(d)
    outs = []
    for r in range(0, B, rows_per_chunk):
        sl = slice(r, r + rows_per_chunk)
        kk, vv = k_cache[sl].to(q.dtype), v_cache[sl].to(q.dtype)
        if rep > 1:
            kk, vv = kk.repeat_interleave(rep, 1), vv.repeat_interleave(rep, 1)
        allowed = (key_valid[sl, None, None, :] & causal) | diag  # (rows, 1, n, L)
        sc = torch.matmul(q[sl], kk.transpose(-1, -2)) * scale
        p = torch.softmax(sc.masked_fill(~allowed, float("-inf")), dim=-1)
        outs.append(attend_values(p, vv, allowed))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def cache_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, key_valid: torch.Tensor,
                    start: torch.Tensor, tf32: bool = False) -> torch.Tensor:
    """Softmax attention of n queries over a static KV cache.

    q: (B, H, n, d) float32 (already rotated); k_cache, v_cache: (B, KVH, L, d) float32 with H % KVH == 0
    (query head h reads kv head h // (H // KVH)); key_valid: (B, L) bool; start: 1-element int64 tensor on
    the same device. Query i sits at slot start + i and attends keys j <= start + i with key_valid[b, j] or
    j == start + i; scale 1/sqrt(d), fp32 softmax. Returns (B, H, n, d) float32. A query with nothing to
    attend (its slot outside the cache and no valid key below it) gets NaN. Keys a query may not see are absent:
    a NaN or inf in their cache rows does not reach its output (CPU kernel and reference; the CUDA kernels
    still weight masked values by 0, see the NaN/Inf policy in the README). tf32=True: on a GPU the products
    of calls with more than 16 queries and d = 32 (prefills) run on TF32 tensor cores (outputs within ~1e-4
    relative of fp32); everything else, and the CPU, computes in fp32.
    """
    _check_cache_attention_args(q, k_cache, v_cache, key_valid, start)
    check_bool(tf32, "tf32")
    if has_kernel("cache_attention", q.device):
        return torch.ops.autogaze_ext.cache_attention(q, k_cache, v_cache, key_valid, start, tf32)
    return cache_attention_reference(q, k_cache, v_cache, key_valid, start)


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::rope_cache_write")
    def _rope_cache_write_fake(qkv, positions, inv_freq, k_cache, v_cache, start, num_heads, num_kv_heads):
        check_same_device("qkv", qkv, positions=positions, inv_freq=inv_freq, k_cache=k_cache, v_cache=v_cache,
                           start=start)  # a meta argument among real ones
        B, n, width = qkv.shape
        return qkv.new_empty((B, num_heads, n, width // (num_heads + 2 * num_kv_heads)))

    @torch.library.register_fake("autogaze_ext::cache_attention")
    def _cache_attention_fake(q, k_cache, v_cache, key_valid, start, tf32=False):
        check_same_device("q", q, k_cache=k_cache, v_cache=v_cache, key_valid=key_valid, start=start)
        return q.new_empty(q.shape)

    # Inference ops: they write a KV cache in place / read one, and nothing trains through them.
    register_inference_only("rope_cache_write")
    register_inference_only("cache_attention")
