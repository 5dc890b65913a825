"""rope_cache_write: compiled kernels vs the pure-PyTorch reference (decoder.py's RoPE + cache writes)."""

import pytest
import torch

from autogaze_ext.ops import _common as common
from conftest import capture_graph, cuda_us_per_call, poison_cuda_cache
from autogaze_ext.ops import attention as A

op = torch.ops.autogaze_ext.rope_cache_write if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def inv_freq(d: int, theta: float = 10000.0) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))


def make_inputs(seed, B, n, H, KVH, d, L, pos_max=3000):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, n, (H + 2 * KVH) * d, generator=g)
    positions = torch.randint(0, pos_max, (B, n), generator=g)
    k_cache = torch.randn(B, KVH, L, d, generator=g)
    v_cache = torch.randn(B, KVH, L, d, generator=g)
    return qkv, positions, inv_freq(d), k_cache, v_cache


def run_both(qkv, positions, freq, k_cache, v_cache, start, H, KVH, fn=None):
    """(q, k_cache, v_cache) from fn (the op) and from the reference, on copies of the caches."""
    fn = fn or op
    kc, vc, kr, vr = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    q = fn(qkv, positions, freq, kc, vc, start, H, KVH)
    qr = A.rope_cache_write_reference(qkv, positions, freq, kr, vr, start, H, KVH)
    return (q, kc, vc), (qr, kr, vr)


def written_slots(L, n, start):
    slots = torch.arange(n) + start
    return slots[(slots >= 0) & (slots < L)]


def check_against_reference(got, ref, k_cache, v_cache, start, n, exact=False):
    (q, kc, vc), (qr, kr, vr) = got, ref
    L = k_cache.shape[2]
    assert q.shape == qr.shape and q.dtype == torch.float32 and q.is_contiguous()
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-6)  # CPU cos/sin: a last-bit difference
    torch.testing.assert_close(q, qr, **tol)
    torch.testing.assert_close(kc, kr, **tol)
    assert torch.equal(vc, vr)  # v is a plain copy
    keep = torch.ones(L, dtype=torch.bool)
    keep[written_slots(L, n, start)] = False
    assert torch.equal(kc[:, :, keep], k_cache[:, :, keep]) and torch.equal(vc[:, :, keep], v_cache[:, :, keep])


SHAPES = [(1, 1, 6, 6, 32), (2, 10, 6, 6, 32), (3, 37, 6, 2, 64), (2, 10, 4, 1, 6), (1, 5, 2, 2, 256)]


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}n{}H{}KVH{}d{}".format(*s))
@pytest.mark.parametrize("where", ["zero", "mid", "end", "neg_partial", "end_partial", "past_end", "all_neg"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(seed, shape, where):
    B, n, H, KVH, d = shape
    L = 2 * n + 8
    start = {"zero": 0, "mid": n // 2 + 3, "end": L - n, "neg_partial": -(n // 2) - 1, "end_partial": L - n // 2,
             "past_end": L + 1, "all_neg": -n - 4}[where]
    inputs = make_inputs(seed, B, n, H, KVH, d, L)
    st = torch.tensor([start])
    got, ref = run_both(*inputs, st, H, KVH)
    check_against_reference(got, ref, inputs[3], inputs[4], start, n)
    # the wrapper agrees
    kc, vc = inputs[3].clone(), inputs[4].clone()
    q = A.rope_cache_write(inputs[0], inputs[1], inputs[2], kc, vc, st, H, KVH)
    assert torch.equal(q, got[0]) and torch.equal(kc, got[1]) and torch.equal(vc, got[2])


@needs_ext
def test_position_zero_is_identity_and_norms_kept():
    qkv, pos, freq, kc, vc = make_inputs(3, 2, 12, 6, 6, 32, 40, pos_max=100000)
    pos[0] = 0
    q = op(qkv, pos, freq, kc, vc, torch.tensor([0]), 6, 6)
    q_in = qkv[..., : 6 * 32].view(2, 12, 6, 32).transpose(1, 2)
    assert torch.equal(q[0], q_in[0])  # cos 0 = 1, sin 0 = 0 exactly
    assert torch.equal(kc[0, :, :12], qkv[0, :, 6 * 32: 12 * 32].view(12, 6, 32).transpose(0, 1))
    # a rotation keeps the norm of every (i, i + d/2) pair
    pair = lambda x: x[..., :16] ** 2 + x[..., 16:] ** 2  # noqa: E731
    torch.testing.assert_close(pair(q), pair(q_in), rtol=1e-5, atol=1e-5)


@needs_ext
def test_large_positions_and_int64_rounding():
    # positions above 2^24 are rounded to fp32 first, exactly like positions.float()
    qkv, pos, freq, kc, vc = make_inputs(4, 2, 8, 6, 6, 32, 16)
    pos = torch.tensor([[2**24 + 1, 2**24 + 3, 2**30 + 77, 5, 0, 1, 2**40 + 12345, 123456789]] * 2)
    got, ref = run_both(qkv, pos, freq, kc, vc, torch.tensor([4]), 6, 6)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)  # huge angles: libm reductions differ
    assert torch.equal(got[2], ref[2])


@needs_ext
def test_empty_and_no_cache():
    qkv, pos, freq, kc, vc = make_inputs(5, 2, 0, 6, 6, 32, 8)
    q = op(qkv, pos, freq, kc, vc, torch.tensor([0]), 6, 6)
    assert q.shape == (2, 6, 0, 32)
    qkv, pos, freq, kc, vc = make_inputs(5, 2, 4, 6, 6, 32, 0)  # L = 0: every slot skipped
    got, ref = run_both(qkv, pos, freq, kc, vc, torch.tensor([0]), 6, 6)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-6)


@needs_ext
def test_non_contiguous_inputs():
    qkv, pos, freq, kc, vc = make_inputs(6, 3, 10, 6, 2, 32, 30)
    qkv_t = qkv.transpose(0, 1).contiguous().transpose(0, 1)
    pos_t = pos.t().contiguous().t()
    assert not qkv_t.is_contiguous() and not pos_t.is_contiguous()
    got, ref = run_both(qkv_t, pos_t, freq, kc, vc, torch.tensor([7]), 6, 2)
    check_against_reference(got, ref, kc, vc, 7, 10)


def _args(**over):
    qkv, pos, freq, kc, vc = make_inputs(0, 2, 3, 6, 2, 32, 8)
    a = dict(qkv=qkv, positions=pos, inv_freq=freq, k_cache=kc, v_cache=vc, start=torch.tensor([0]), num_heads=6,
             num_kv_heads=2)
    a.update(over)
    return a


@pytest.mark.parametrize("over, exc, match", [
    (dict(qkv=[[0.0]]), TypeError, "qkv must be a torch.Tensor"),
    (dict(qkv=torch.zeros(2, 3, 320, dtype=torch.float64)), TypeError, "qkv must have dtype"),
    (dict(qkv=torch.zeros(2, 320)), ValueError, "qkv must be"),
    (dict(qkv=torch.zeros(2, 3, 321)), ValueError, "qkv width"),
    (dict(qkv=torch.zeros(2, 3, 10 * 33), inv_freq=torch.zeros(16)), ValueError, "head dim"),
    (dict(qkv=torch.zeros(2, 3, 10 * 258), inv_freq=torch.zeros(129)), ValueError, "head dim"),
    (dict(positions=torch.zeros(2, 3, dtype=torch.int32)), TypeError, "positions must have dtype"),
    (dict(positions=torch.zeros(2, 4, dtype=torch.int64)), ValueError, "positions must be"),
    (dict(inv_freq=torch.zeros(15)), ValueError, "inv_freq must be"),
    (dict(inv_freq=torch.zeros(16, dtype=torch.float64)), TypeError, "inv_freq must have dtype"),
    (dict(k_cache=torch.zeros(2, 3, 8, 32)), ValueError, "k_cache must be"),
    (dict(v_cache=torch.zeros(2, 2, 9, 32)), ValueError, "v_cache shape"),
    (dict(k_cache=torch.zeros(2, 2, 32, 8).transpose(2, 3)), ValueError, "k_cache must be contiguous"),
    (dict(v_cache=torch.zeros(2, 2, 8, 32, dtype=torch.float64)), TypeError, "v_cache must have dtype"),
    (dict(start=torch.tensor([0, 1])), ValueError, "start must hold one"),
    (dict(start=torch.tensor([0], dtype=torch.int32)), TypeError, "start must have dtype"),
    (dict(start=3), TypeError, "start must be a torch.Tensor"),
    (dict(num_heads=0), ValueError, "num_heads"),
    (dict(num_kv_heads=2.0), TypeError, "num_kv_heads"),
    (dict(num_heads=True), TypeError, "num_heads"),
])
def test_bad_arguments(over, exc, match):
    with pytest.raises(exc, match=match):
        A.rope_cache_write(**_args(**over))


@pytest.mark.parametrize("alias", ["same", "view", "overlap", "qkv"])
def test_aliased_buffers_rejected(alias):
    """k_cache and v_cache are both written: no two views of one buffer (k would be lost), and qkv is read while
    they are written. Through the wrapper (ValueError) and the direct op (the C++ check)."""
    a = _args()
    k = a["k_cache"]
    if alias == "same":
        a["v_cache"] = k
    elif alias == "view":
        a["v_cache"] = k.view(k.shape)
    elif alias == "overlap":  # both views of one buffer one element apart
        buf = torch.zeros(k.numel() + 1)
        a["k_cache"], a["v_cache"] = buf[:-1].view(k.shape), buf[1:].view(k.shape)
    else:  # the cache's first element is qkv's last
        m = a["qkv"].numel()
        buf = torch.zeros(m + k.numel() - 1)
        a["qkv"], a["k_cache"] = buf[:m].view(a["qkv"].shape), buf[m - 1:].view(k.shape)
    with pytest.raises(ValueError, match="share memory"):
        A.rope_cache_write(**a)
    if common.HAS_EXTENSION:
        with pytest.raises(RuntimeError, match="share memory"):
            torch.ops.autogaze_ext.rope_cache_write(*a.values())


@needs_ext
def test_op_checks_its_own_arguments():
    a = _args()
    with pytest.raises(RuntimeError, match="k_cache"):
        op(a["qkv"], a["positions"], a["inv_freq"], torch.zeros(2, 2, 8, 16), a["v_cache"], a["start"], 6, 2)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(a["qkv"], a["positions"], a["inv_freq"], a["k_cache"], torch.zeros(2, 2, 32, 8).transpose(2, 3),
           a["start"], 6, 2)
    with pytest.raises(RuntimeError, match="multiple"):
        op(a["qkv"], a["positions"], a["inv_freq"], a["k_cache"], a["v_cache"], a["start"], 5, 2)
    with pytest.raises(RuntimeError, match="start"):
        op(a["qkv"], a["positions"], a["inv_freq"], a["k_cache"], a["v_cache"], torch.tensor([1.0]), 6, 2)


def test_fallback_without_extension(monkeypatch):
    a = _args()
    kc, vc = a["k_cache"].clone(), a["v_cache"].clone()
    expected = A.rope_cache_write(**{**a, "k_cache": kc, "v_cache": vc})
    monkeypatch.setattr(common, "HAS_EXTENSION", False)
    kc2, vc2 = a["k_cache"].clone(), a["v_cache"].clone()
    got = A.rope_cache_write(**{**a, "k_cache": kc2, "v_cache": vc2})
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kc2, kc, rtol=1e-6, atol=1e-6)
    assert torch.equal(vc2, vc)


@needs_ext
@pytest.mark.parametrize("start", [2, -1, 7])
def test_opcheck(start):
    qkv, pos, freq, kc, vc = make_inputs(1, 2, 3, 6, 2, 32, 8)
    torch.library.opcheck(op, (qkv, pos, freq, kc, vc, torch.tensor([start]), 6, 2))


@needs_ext
def test_fake_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    qkv, pos, freq, kc, vc = make_inputs(2, 2, 10, 6, 2, 32, 24)
    start = torch.tensor([5])
    with FakeTensorMode() as mode:
        q = op(*(mode.from_tensor(t) for t in (qkv, pos, freq, kc, vc, start)), 6, 2)
    assert q.shape == (2, 6, 10, 32) and q.dtype == torch.float32

    fn = torch.compile(lambda *t: A.rope_cache_write(*t, 6, 2), backend="aot_eager", fullgraph=True)
    kc1, vc1, kc2, vc2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
    got = fn(qkv, pos, freq, kc1, vc1, start)
    ref = op(qkv, pos, freq, kc2, vc2, start, 6, 2)
    assert torch.equal(got, ref) and torch.equal(kc1, kc2) and torch.equal(vc1, vc2)


# ------------------------------------------------------------------------------------------------- CUDA




def _cuda(*ts):
    return [t.cuda() for t in ts]


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("shape", SHAPES + [(64, 206, 6, 6, 32), (3, 10, 6, 3, 48)],
                         ids=lambda s: "B{}n{}H{}KVH{}d{}".format(*s))
@pytest.mark.parametrize("where", ["zero", "end", "neg_partial", "end_partial", "past_end"])
def test_cuda_matches_cpu_and_torch(shape, where):
    assert common.HAS_CUDA_KERNELS, "built without CUDA kernels; the CUDA path would be the reference"
    B, n, H, KVH, d = shape
    L = 2 * n + 8
    start = {"zero": 0, "end": L - n, "neg_partial": -(n // 2) - 1, "end_partial": L - n // 2, "past_end": L + 1}[where]
    inputs = make_inputs(7, B, n, H, KVH, d, L)
    st = torch.tensor([start])
    cpu, _ = run_both(*inputs, st, H, KVH)
    poison_cuda_cache()
    got, ref = run_both(*_cuda(*inputs), st.cuda(), H, KVH)
    # same fp32 operations as torch's CUDA RoPE (cosf/sinf, no FMA contraction): bit-exact
    check_against_reference([t.cpu() for t in got], [t.cpu() for t in ref], inputs[3], inputs[4], start, n,
                            exact=True)
    for a, b in zip(got, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_misaligned_falls_back_to_scalar_loads():
    B, n, H, KVH, d, L = 2, 10, 6, 6, 32, 40
    qkv, pos, freq, kc, vc = _cuda(*make_inputs(8, B, n, H, KVH, d, L))
    buf = torch.empty(qkv.numel() + 1, device="cuda")
    qkv_odd = buf[1:].view_as(qkv).copy_(qkv)  # contiguous, 4-byte but not 16-byte aligned
    got, ref = run_both(qkv_odd, pos, freq, kc, vc, torch.tensor([3], device="cuda"), H, KVH)
    check_against_reference([t.cpu() for t in got], [t.cpu() for t in ref], kc.cpu(), vc.cpu(), 3, n, exact=True)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_opcheck_and_graph():
    B, n, H, KVH, d, L = 2, 10, 6, 6, 32, 64
    qkv, pos, freq, kc, vc = _cuda(*make_inputs(9, B, n, H, KVH, d, L))
    torch.library.opcheck(op, (qkv, pos, freq, kc.clone(), vc.clone(), torch.tensor([4], device="cuda"), H, KVH))

    start = torch.tensor([0], device="cuda")
    s_qkv, s_pos = qkv.clone(), pos.clone()
    graph, out = capture_graph(lambda: op(s_qkv, s_pos, freq, kc, vc, start, H, KVH))
    for seed, st in [(10, 13), (11, L - n), (12, L - 3), (13, -5)]:
        qkv2, pos2, _, _, _ = _cuda(*make_inputs(seed, B, n, H, KVH, d, L))
        s_qkv.copy_(qkv2)
        s_pos.copy_(pos2)
        start.fill_(st)
        before_k, before_v = kc.clone(), vc.clone()
        graph.replay()
        kr, vr = before_k.clone(), before_v.clone()
        qr = A.rope_cache_write_reference(qkv2, pos2, freq, kr, vr, start, H, KVH)
        check_against_reference((out.cpu(), kc.cpu(), vc.cpu()), (qr.cpu(), kr.cpu(), vr.cpu()), before_k.cpu(),
                                before_v.cpu(), st, n, exact=True)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_timing_print():
    """Not an assertion: per-call time of one decode step's RoPE + cache write (target <= 3 us on an H100)."""
    B, n, H, KVH, d, L = 1, 10, 6, 6, 32, 4096
    qkv, pos, freq, kc, vc = _cuda(*make_inputs(0, B, n, H, KVH, d, L))
    start = torch.tensor([3000], device="cuda")

    t_op = cuda_us_per_call(lambda: op(qkv, pos, freq, kc, vc, start, H, KVH))
    t_ref = cuda_us_per_call(lambda: A.rope_cache_write_reference(qkv, pos, freq, kc, vc, start, H, KVH))
    print(f"\nrope_cache_write B={B} n={n} H={H} d={d} ({torch.cuda.get_device_name()}): "
          f"op {t_op:.2f} us/call, torch reference {t_ref:.2f} us/call (CUDA graph, back to back)")
