"""cache_attention: compiled kernels vs a float64 oracle and the fp32 reference (fast.py's ``_attend``).

Error measure: for an output o_i = sum_j p_ij v_j, the natural scale of its rounding error is
sum_j p_ij |v_j| (a convex combination), so |o - o64| <= tol * (p64 @ |v|) is the relative error asked
for (tol = 1e-5); an element-wise relative error would blow up where o_i happens to be near 0.
"""

import pytest
import torch

from autogaze_ext.ops import _common as common
from conftest import capture_graph, cuda_us_per_call, on_side_stream, poison_cuda_cache
from autogaze_ext.ops import attention as A

op = torch.ops.autogaze_ext.cache_attention if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_inputs(seed, B, H, KVH, n, L, d, p_valid=0.7, diag_only_rows=(), device="cpu"):
    """Random q/k/v; key_valid random, except rows in diag_only_rows where nothing is valid (each query
    then sees only its own slot)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, n, d, generator=g)
    k = torch.randn(B, KVH, L, d, generator=g)
    v = torch.randn(B, KVH, L, d, generator=g)
    valid = torch.rand(B, L, generator=g) < p_valid
    for b in diag_only_rows:
        valid[b] = False
    return [t.to(device) for t in (q, k, v, valid)]


def oracle(q, k, v, valid, start):
    """float64 reference and the per-element error scale p64 @ |v|."""
    ref = A.cache_attention_reference(q.double(), k.double(), v.double(), valid, start)
    scale = A.cache_attention_reference(q.double(), k.double(), v.double().abs(), valid, start)
    return ref, scale


def check(out, q, k, v, valid, start, tol=1e-5):
    ref, scale = oracle(q, k, v, valid, start)
    out = out.to(ref.device)
    assert out.shape == q.shape and out.dtype == torch.float32
    nan = ref.isnan()
    assert torch.equal(out.isnan(), nan), "NaN only where a query has nothing to attend"
    err = (out.double() - ref).abs()[~nan]
    bound = tol * scale[~nan] + 1e-30
    assert (err <= bound).all(), f"max error / scale {(err / bound).max().item() * tol:.3g} > {tol}"
    # and close to the fp32 reference (fast.py's _attend arithmetic)
    ref32 = A.cache_attention_reference(q, k, v, valid, start).to(out.device)
    assert ((out - ref32).abs()[~nan.to(out.device)].double() <= 2 * tol * scale[~nan].to(out.device)).all()


def start_value(where, n, L):
    return {"zero": 0, "small": 3, "mid": L // 2, "end": L - n}[where]


CPU_CASES = [  # B, H, KVH, n, L, d
    (1, 6, 6, 1, 256, 32),
    (2, 6, 6, 10, 256, 32),
    (2, 6, 2, 10, 1024, 32),
    (1, 6, 3, 206, 1024, 32),
    (2, 4, 4, 7, 300, 64),
    (3, 2, 1, 5, 64, 8),
    (2, 3, 3, 10, 200, 7),
]


@needs_ext
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "B{}H{}KVH{}n{}L{}d{}".format(*c))
@pytest.mark.parametrize("where", ["zero", "small", "mid", "end"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_oracle(seed, case, where):
    B, H, KVH, n, L, d = case
    q, k, v, valid = make_inputs(seed, B, H, KVH, n, L, d, diag_only_rows=(B - 1,) if B > 1 else ())
    start = torch.tensor([start_value(where, n, L)])
    out = op(q, k, v, valid, start)
    check(out, q, k, v, valid, start)
    assert torch.equal(A.cache_attention(q, k, v, valid, start), out)


@needs_ext
def test_diagonal_only_row_returns_own_value():
    q, k, v, valid = make_inputs(2, 2, 6, 6, 10, 64, 32, diag_only_rows=(0, 1))
    out = op(q, k, v, valid, torch.tensor([20]))
    torch.testing.assert_close(out, v[:, :, 20:30], rtol=0, atol=0)


@needs_ext
@pytest.mark.parametrize("start", [-3, -12, 60, 62, 64, 70, 2**50, -(2**50)])
def test_out_of_range_start(start):
    """Slots outside the cache: valid keys below still count; nothing to attend gives NaN, like the reference."""
    B, H, KVH, n, L, d = 2, 6, 2, 10, 64, 32
    q, k, v, valid = make_inputs(3, B, H, KVH, n, L, d, diag_only_rows=(1,))
    st = torch.tensor([start])
    check(op(q, k, v, valid, st), q, k, v, valid, st)


@needs_ext
def test_keys_beyond_last_query_never_read():
    B, H, KVH, n, L, d = 2, 6, 6, 10, 256, 32
    q, k, v, valid = make_inputs(4, B, H, KVH, n, L, d)
    start = torch.tensor([100])
    ref = op(q, k, v, valid, start)
    k[:, :, 110:] = float("nan")
    v[:, :, 110:] = float("nan")
    valid[:, 110:] = True
    assert torch.equal(op(q, k, v, valid, start), ref)


@needs_ext
def test_empty_sizes():
    q, k, v, valid = make_inputs(0, 2, 6, 6, 0, 64, 32)
    assert op(q, k, v, valid, torch.tensor([0])).shape == (2, 6, 0, 32)
    q, k, v, valid = make_inputs(0, 2, 6, 6, 3, 0, 32)
    out = op(q, k, v, valid, torch.tensor([0]))
    assert out.shape == (2, 6, 3, 32) and out.isnan().all()


@needs_ext
def test_non_contiguous_inputs():
    q, k, v, valid = make_inputs(5, 3, 6, 2, 10, 128, 32)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    kt = k.transpose(0, 1).contiguous().transpose(0, 1)
    vt = valid.t().contiguous().t()
    assert not (qt.is_contiguous() or kt.is_contiguous() or vt.is_contiguous())
    start = torch.tensor([50])
    assert torch.equal(op(qt, kt, v, vt, start), op(q, k, v, valid, start))


def _args(**over):
    q, k, v, valid = make_inputs(0, 2, 6, 2, 3, 16, 32)
    a = dict(q=q, k_cache=k, v_cache=v, key_valid=valid, start=torch.tensor([0]))
    a.update(over)
    return a


@pytest.mark.parametrize("over, exc, match", [
    (dict(q=[0.0]), TypeError, "q must be a torch.Tensor"),
    (dict(q=torch.zeros(2, 6, 3, 32, dtype=torch.float64)), TypeError, "q must have dtype"),
    (dict(q=torch.zeros(2, 6, 32)), ValueError, "q must be"),
    (dict(q=torch.zeros(2, 6, 3, 257)), ValueError, "head dim"),
    (dict(q=torch.zeros(2, 5, 3, 32)), ValueError, "multiple"),
    (dict(k_cache=torch.zeros(2, 2, 16, 16)), ValueError, "k_cache must be"),
    (dict(k_cache=torch.zeros(3, 2, 16, 32)), ValueError, "k_cache must be"),
    (dict(k_cache=torch.zeros(2, 2, 16, 32, dtype=torch.float16)), TypeError, "k_cache must have dtype"),
    (dict(v_cache=torch.zeros(2, 2, 17, 32)), ValueError, "v_cache shape"),
    (dict(key_valid=torch.zeros(2, 16)), TypeError, "key_valid must have dtype"),
    (dict(key_valid=torch.zeros(2, 15, dtype=torch.bool)), ValueError, "key_valid must be"),
    (dict(start=torch.tensor([[0]], dtype=torch.int32)), TypeError, "start must have dtype"),
    (dict(start=torch.tensor([1, 2])), ValueError, "start must hold one"),
    (dict(start=0), TypeError, "start must be a torch.Tensor"),
])
def test_bad_arguments(over, exc, match):
    with pytest.raises(exc, match=match):
        A.cache_attention(**_args(**over))


@needs_ext
def test_op_checks_its_own_arguments():
    a = _args()
    with pytest.raises(RuntimeError, match="multiple"):
        op(torch.zeros(2, 5, 3, 32), a["k_cache"], a["v_cache"], a["key_valid"], a["start"])
    with pytest.raises(RuntimeError, match="key_valid"):
        op(a["q"], a["k_cache"], a["v_cache"], a["key_valid"][:, :4], a["start"])
    with pytest.raises(RuntimeError, match="v_cache"):
        op(a["q"], a["k_cache"], a["v_cache"][:, :, :4], a["key_valid"], a["start"])
    with pytest.raises(RuntimeError, match="start"):
        op(a["q"], a["k_cache"], a["v_cache"], a["key_valid"], torch.tensor([0, 1]))


def test_fallback_without_extension(monkeypatch):
    a = _args()
    expected = A.cache_attention(**a)
    monkeypatch.setattr(common, "HAS_EXTENSION", False)
    torch.testing.assert_close(A.cache_attention(**a), expected, rtol=1e-5, atol=1e-6)


@needs_ext
@pytest.mark.parametrize("start", [0, 5, 28])  # opcheck compares without equal_nan: no empty query here
def test_opcheck(start):
    q, k, v, valid = make_inputs(1, 2, 6, 3, 4, 32, 32, diag_only_rows=(1,))
    torch.library.opcheck(op, (q, k, v, valid, torch.tensor([start])))
    torch.library.opcheck(op, (q, k, v, valid, torch.tensor([start]), True))


def test_tf32_flag_is_fp32_on_cpu_and_checked():
    q, k, v, valid = make_inputs(6, 2, 6, 6, 40, 300, 32)
    start = torch.tensor([100])
    assert torch.equal(A.cache_attention(q, k, v, valid, start, tf32=True), A.cache_attention(q, k, v, valid, start))
    with pytest.raises(TypeError, match="tf32"):
        A.cache_attention(q, k, v, valid, start, tf32=1)


@needs_ext
def test_fake_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, valid = make_inputs(2, 2, 6, 2, 10, 64, 32)
    start = torch.tensor([30])
    with FakeTensorMode() as mode:
        out = op(*(mode.from_tensor(t) for t in (q, k, v, valid, start)))
    assert out.shape == q.shape and out.dtype == torch.float32
    fn = torch.compile(A.cache_attention, backend="aot_eager", fullgraph=True)
    assert torch.equal(fn(q, k, v, valid, start), op(q, k, v, valid, start))


# ------------------------------------------------------------------------------------------------- CUDA




def _cuda_check(q, k, v, valid, start, tol=1e-5):
    poison_cuda_cache()
    qc, kc, vc, validc, sc = (t.cuda() for t in (q, k, v, valid, start))
    out = op(qc, kc, vc, validc, sc)
    check(out.cpu(), q, k, v, valid, start, tol)
    return out


GPU_CASES = [  # B, H, KVH, n, L, d: tiled (d 32/64, q tiles of 16 and 64), split and direct, generic (other d)
    (1, 6, 6, 1, 256, 32),
    (1, 6, 6, 10, 4096, 32),
    (2, 6, 2, 10, 1024, 32),
    (2, 6, 3, 206, 1024, 32),
    (1, 6, 6, 206, 4096, 32),
    (3, 6, 6, 17, 256, 64),
    (1, 6, 2, 10, 4096, 64),
    (2, 6, 3, 10, 1024, 48),
    (1, 4, 4, 33, 256, 16),
    (2, 2, 1, 5, 320, 256),
    (2, 3, 3, 10, 200, 7),  # odd d: the (m, l) workspace pairs must stay 8-byte aligned
    (128, 6, 6, 10, 256, 32),  # one split covers the cache: direct output, no combine
    (64, 6, 6, 206, 256, 32),
    (1, 6, 6, 64, 300, 32),  # a cache that is not a whole number of 64-key chunks
    (4, 6, 6, 1, 2048, 32),  # one query: a 16-query tile with three idle warps
    # 64-query tiles (batches whose tiles fill an H100 twice over): exactly one tile; a second tile with one
    # query (three idle warps); d = 64 over several tiles and splits
    (44, 6, 6, 64, 300, 32),
    (48, 6, 2, 65, 1024, 32),
    (24, 6, 6, 130, 1024, 64),
    # calls that fill an H100 four times over with one split of more than 2048 keys (no combine)
    (96, 6, 6, 1, 3000, 32),
    (44, 6, 6, 65, 2500, 32),
]


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}H{}KVH{}n{}L{}d{}".format(*c))
@pytest.mark.parametrize("where", ["zero", "small", "mid", "end"])
def test_cuda_matches_oracle(case, where):
    assert common.HAS_CUDA_KERNELS, "built without CUDA kernels; the CUDA path would be the reference"
    B, H, KVH, n, L, d = case
    q, k, v, valid = make_inputs(11, B, H, KVH, n, L, d, diag_only_rows=(0,) if B > 1 else ())
    start = torch.tensor([start_value(where, n, L)])
    out = _cuda_check(q, k, v, valid, start)
    cpu = op(q, k, v, valid, start)
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("L", [256, 4096])
@pytest.mark.parametrize("start_off", [-3, -12, 2, 4, 9])
def test_cuda_out_of_range_start(L, start_off):
    """start < 0, or queries past the cache end (start_off counts from L - n)."""
    B, H, KVH, n, d = 2, 6, 2, 10, 32
    q, k, v, valid = make_inputs(12, B, H, KVH, n, L, d, diag_only_rows=(1,))
    st = start_off if start_off < 0 else L - n + start_off
    _cuda_check(q, k, v, valid, torch.tensor([st]))


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_sparse_and_diag_only():
    B, H, KVH, n, L, d = 3, 6, 6, 10, 4096, 32
    for p_valid in (0.0, 0.01, 1.0):
        q, k, v, valid = make_inputs(13, B, H, KVH, n, L, d, p_valid=p_valid, diag_only_rows=(2,))
        _cuda_check(q, k, v, valid, torch.tensor([3000]))


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_keys_beyond_last_query_never_read():
    for n, L, d in [(10, 4096, 32), (206, 1024, 64), (10, 1024, 48)]:
        q, k, v, valid = make_inputs(14, 2, 6, 6, n, L, d)
        start = torch.tensor([L // 3])
        qc, kc, vc, validc, sc = (t.cuda() for t in (q, k, v, valid, start))
        ref = op(qc, kc, vc, validc, sc)
        last = L // 3 + n
        kc[:, :, last:] = float("nan")
        vc[:, :, last:] = float("nan")
        validc[:, last:] = True
        assert torch.equal(op(qc, kc, vc, validc, sc), ref)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_misaligned_uses_generic_kernel():
    B, H, KVH, n, L, d = 2, 6, 6, 10, 1024, 32
    q, k, v, valid = make_inputs(15, B, H, KVH, n, L, d)
    start = torch.tensor([500])
    buf = torch.empty(q.numel() + 1, device="cuda")
    q_odd = buf[1:].view(q.shape).copy_(q)  # 4-byte aligned only
    out = op(q_odd, k.cuda(), v.cuda(), valid.cuda(), start.cuda())
    check(out.cpu(), q, k, v, valid, start)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_opcheck_stream_and_graph():
    B, H, KVH, n, L, d = 2, 6, 2, 10, 4096, 32
    q, k, v, valid = make_inputs(16, B, H, KVH, n, L, d)
    qc, kc, vc, validc = (t.cuda() for t in (q, k, v, valid))
    torch.library.opcheck(op, (qc, kc, vc, validc, torch.tensor([5], device="cuda")))

    got = on_side_stream(lambda: op(qc, kc, vc, validc, torch.tensor([700], device="cuda")))
    check(got.cpu(), q, k, v, valid, torch.tensor([700]))

    # capture once, then change start and key_valid (and q) in place: the graph follows the new values
    start = torch.tensor([10], device="cuda")
    s_q, s_valid = qc.clone(), validc.clone()
    graph, out = capture_graph(lambda: op(s_q, kc, vc, s_valid, start))
    for seed, st in [(17, 0), (18, 3000), (19, L - n), (20, 64), (21, -4), (22, L - 3)]:
        q2, _, _, valid2 = make_inputs(seed, B, H, KVH, n, L, d, p_valid=0.3, diag_only_rows=(seed % 2,))
        s_q.copy_(q2)
        s_valid.copy_(valid2)
        start.fill_(st)
        poison_cuda_cache()
        graph.replay()
        check(out.cpu(), q2, k, v, valid2, torch.tensor([st]))


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_graph_rope_then_attention():
    """One decode step's attention as fast.py will run it: rope_cache_write, then cache_attention, captured."""
    B, H, KVH, n, L, d = 2, 6, 6, 10, 1024, 32
    g = torch.Generator().manual_seed(23)
    qkv = torch.randn(B, n, (H + 2 * KVH) * d, generator=g).cuda()
    pos = torch.randint(0, 500, (B, n), generator=g).cuda()
    freq = (1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))).cuda()
    kc = torch.randn(B, KVH, L, d, generator=g).cuda()
    vc = torch.randn(B, KVH, L, d, generator=g).cuda()
    valid = (torch.rand(B, L, generator=g) < 0.5).cuda()
    start = torch.tensor([0], device="cuda")

    def step():
        q = torch.ops.autogaze_ext.rope_cache_write(qkv, pos, freq, kc, vc, start, H, KVH)
        return op(q, kc, vc, valid, start)

    graph, out = capture_graph(step)
    for st in (100, 400, L - n):
        qkv.normal_()
        valid[:, st: st + n] = True
        start.fill_(st)
        kr, vr = kc.clone(), vc.clone()
        qr = A.rope_cache_write_reference(qkv, pos, freq, kr, vr, start, H, KVH)
        ref = A.cache_attention_reference(qr, kr, vr, valid, start)
        graph.replay()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        assert torch.equal(kc, kr) and torch.equal(vc, vr)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_timing_print():
    """Not an assertion: one decode step's attention, B=1, n=10, H=6, d=32, L=4096 with a 3000-key valid prefix
    (target <= 10 us on an H100), against the torch reference (fp32 masked softmax as in fast.py's _attend)."""
    B, H, KVH, n, L, d = 1, 6, 6, 10, 4096, 32
    q, k, v, valid = make_inputs(0, B, H, KVH, n, L, d, device="cuda")
    valid[:] = False
    valid[:, :3000] = True
    start = torch.tensor([3000], device="cuda")

    kern = lambda: op(q, k, v, valid, start)  # noqa: E731
    ref = lambda: A.cache_attention_reference(q, k, v, valid, start)  # noqa: E731
    msg = [f"\ncache_attention B={B} n={n} H={H} d={d} L={L}, 3000 valid keys ({torch.cuda.get_device_name()}):"]
    for name, fn in (("op", kern), ("torch reference", ref)):
        msg.append(f"  {name}: {cuda_us_per_call(fn):.2f} us/call in a CUDA graph, "
                   f"{cuda_us_per_call(fn, iters=200, graph=False):.2f} us/call eager")
    for B2, n2 in [(256, 10), (1, 206), (64, 206)]:
        q2, k2, v2, valid2 = make_inputs(1, B2, H, KVH, n2, L, d, device="cuda")
        valid2[:, 3000 + n2:] = False
        kern2 = lambda: op(q2, k2, v2, valid2, start)  # noqa: E731
        msg.append(f"  op B={B2} n={n2}: {cuda_us_per_call(kern2, reps=5, iters=10):.2f} us/call in a CUDA graph")
    print("\n".join(msg))


TF32_CASES = [  # B, H, KVH, n, L, d: prefills with d = 32 take the TF32 tile (64 queries per block, 4 warps)
    (1, 6, 6, 206, 1024, 32),  # small grid: several key splits and the combine
    (64, 6, 6, 206, 600, 32),  # one split: normalised output written directly
    (3, 6, 2, 17, 300, 32),  # the smallest prefill: one warp with one query past 16, grouped kv heads
    (2, 6, 6, 65, 200, 32),  # a second tile with one query (three idle warps); 200 keys: a partial chunk
]


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("case", TF32_CASES, ids=lambda c: "B{}H{}KVH{}n{}L{}d{}".format(*c))
@pytest.mark.parametrize("where", ["zero", "small", "mid", "end"])
def test_cuda_tf32_tile_matches_oracle_to_tf32_precision(case, where):
    """TF32 products (10-bit mantissas): error under 1e-2 of the p @ |v| scale, NaN exactly where a query has
    nothing to attend -- and not the fp32 result (the tensor-core tile really ran)."""
    B, H, KVH, n, L, d = case
    q, k, v, valid = make_inputs(23, B, H, KVH, n, L, d, diag_only_rows=(0,) if B > 1 else ())
    start = torch.tensor([start_value(where, n, L)])
    poison_cuda_cache()
    args = [t.cuda() for t in (q, k, v, valid, start)]
    out = op(*args, True)
    check(out.cpu(), q, k, v, valid, start, tol=1e-2)
    fp32 = op(*args)
    live = ~fp32.isnan()
    assert not torch.equal(out[live], fp32[live])


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("case", [(2, 6, 6, 10, 1024, 32), (2, 4, 4, 40, 300, 64), (2, 3, 3, 40, 200, 7)],
                         ids=["decode step", "d64", "d7"])
def test_cuda_tf32_elsewhere_is_fp32(case):
    """Decode steps (n <= 16) and head dims without a TF32 tile keep the fp32 kernels: bitwise the same."""
    B, H, KVH, n, L, d = case
    q, k, v, valid = make_inputs(24, B, H, KVH, n, L, d)
    args = [t.cuda() for t in (q, k, v, valid, torch.tensor([L // 2]))]
    assert torch.equal(op(*args, True), op(*args))


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_tf32_graph_follows_start():
    B, H, KVH, n, L, d = 4, 6, 6, 206, 2048, 32
    q, k, v, valid = make_inputs(25, B, H, KVH, n, L, d)
    qc, kc, vc, validc = (t.cuda() for t in (q, k, v, valid))
    start = torch.tensor([10], device="cuda")
    graph, out = capture_graph(lambda: op(qc, kc, vc, validc, start, True))
    for st in (0, 1000, L - n, -30, L - 3, 5000):
        start.fill_(st)
        poison_cuda_cache()
        graph.replay()
        check(out.cpu(), q, k, v, valid, torch.tensor([st]), tol=1e-2)


NONFINITE_CASES = [  # B, H, KVH, n, L, d, tf32: every kernel -- 16-query tiles (decode steps, one query), 32-query
    # and 64-query fp32 tiles, the TF32 tile, several splits and one, d = 64, the generic kernel (d = 48, 7)
    (2, 6, 6, 10, 4096, 32, False),
    (4, 6, 6, 1, 2048, 32, False),
    (3, 6, 6, 17, 256, 64, False),
    (44, 6, 6, 65, 1024, 32, False),
    (64, 6, 6, 206, 256, 32, False),
    (4, 6, 6, 206, 2048, 32, True),
    (2, 6, 3, 10, 1024, 48, False),
    (2, 3, 3, 10, 200, 7, False),
]


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=lambda c: "B{}H{}KVH{}n{}L{}d{}{}".format(*c[:6], "tf32" * c[6]))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_cuda_masked_nonfinite_values_are_absent(case, value):
    """A NaN or Inf in the value (or key) of a masked key -- key_valid False below the queries, or a slot past
    a query's own -- reaches no output that does not see it, as on the CPU (masked keys are absent, not
    weighted by 0); a query that sees it gets it."""
    B, H, KVH, n, L, d, tf32 = case
    q, k, v, valid = make_inputs(31, B, H, KVH, n, L, d)
    st = L // 2
    start = torch.tensor([st])
    valid[:, : st] &= torch.arange(st) % 3 != 0  # every third key below the queries masked
    masked = (~valid[:, : st]).nonzero()
    for b, j in masked[::5].tolist():  # a fifth of them poisoned, in v and k
        v[b, :, j, j % d] = value
        k[b, :, j, (j + 1) % d] = value
    # the last query's own slot, valid: seen by that query only (the others are before it)
    valid[:, st + n - 1] = True
    v[:, :, st + n - 1, 0] = value
    args = [t.cuda() for t in (q, k, v, valid, start)]
    poison_cuda_cache()
    out = op(*args, tf32).cpu()
    cpu = op(q, k, v, valid, start)
    assert torch.equal(out.isnan(), cpu.isnan()) and torch.equal(out.isinf(), cpu.isinf())
    assert torch.isfinite(cpu[:, :, : n - 1]).all()  # the poison reaches only the last query
    assert not torch.isfinite(cpu[:, :, n - 1, 0]).any()
    tol = 1e-3 if tf32 else 1e-5  # tiles holding a non-finite value run in fp32; any other in TF32
    torch.testing.assert_close(out, cpu, rtol=100 * tol, atol=tol, equal_nan=True)
