"""fused_linear: compiled kernels vs the pure-PyTorch reference (fp32) and a float64 computation."""

import itertools

import pytest
import torch

from conftest import capture_graph, on_side_stream, poison_cuda_cache

from autogaze_ext.ops import _common as common
from autogaze_ext.ops._common import FUSED_LINEAR_MAX_K as MAX_K
from autogaze_ext.ops.linear import fused_linear, fused_linear_reference

op = torch.ops.autogaze_ext.fused_linear if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
EPS = 1e-5
TOL = 1e-5

# (K, N, swiglu) the gaze decoder uses: qkv, o_proj, gate+up, down, lm_head + loss head; plus tiny N.
LAYERS = [(192, 576, False), (192, 192, False), (192, 768, True), (384, 192, False), (192, 2670, False),
          (192, 1, False), (384, 10, False)]
MS = [1, 10, 37, 206, 640, 2060]


def make_inputs(seed, M, K, N, swiglu, norm, res, device="cpu", lead=None):
    """Activations ~ N(0, 1) with a per-row scale (RMSNorm matters), weights ~ Linear init."""
    g = torch.Generator().manual_seed(seed)
    shape = (M,) if lead is None else lead
    x = torch.randn(*shape, K, generator=g) * (0.5 + 2 * torch.rand(*shape, 1, generator=g))
    w = (torch.rand(N, K, generator=g) * 2 - 1) / K**0.5
    nw = 0.5 + torch.rand(K, generator=g) if norm else None
    n_out = N // 2 if swiglu else N
    r = torch.randn(*shape, n_out, generator=g) if res else None
    to = (lambda t: None if t is None else t.to(device))
    return to(x), to(w), to(nw), to(r)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check(out, x, w, nw, r, swiglu):
    """out vs the fp32 reference and vs the float64 computation (both on the CPU)."""
    cpu = (lambda t: None if t is None else t.cpu())
    x, w, nw, r = cpu(x), cpu(w), cpu(nw), cpu(r)
    ref = fused_linear_reference(x, w, nw, EPS, r, swiglu)
    f64 = (lambda t: None if t is None else t.double())
    ref64 = fused_linear_reference(f64(x), f64(w), f64(nw), EPS, f64(r), swiglu)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    out = out.cpu()
    assert torch.isfinite(out).all()
    e32, e64 = rel_err(out, ref), rel_err(out, ref64)
    assert e32 < TOL and e64 < TOL, (e32, e64)


@needs_ext
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("K,N,swiglu", LAYERS)
def test_decoder_sizes(M, K, N, swiglu):
    # cycle the (norm, residual) flags over the grid; test_flags covers every combination
    norm, res = [(False, False), (True, False), (False, True), (True, True)][(M + N) % 4]
    x, w, nw, r = make_inputs(M + N, M, K, N, swiglu, norm, res)
    check(op(x, w, nw, EPS, r, swiglu), x, w, nw, r, swiglu)


@needs_ext
@pytest.mark.parametrize("norm,res,swiglu", list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flags(seed, norm, res, swiglu):
    x, w, nw, r = make_inputs(seed, 37, 192, 768 if swiglu else 576, swiglu, norm, res)
    check(op(x, w, nw, EPS, r, swiglu), x, w, nw, r, swiglu)


@needs_ext
@pytest.mark.parametrize("K", [1, 3, 4, 7, 33, 100, 1000, MAX_K])
@pytest.mark.parametrize("N,swiglu", [(1, False), (2, True), (13, False), (70, True)])
def test_odd_sizes(K, N, swiglu):
    x, w, nw, r = make_inputs(K * N, 19, K, N, swiglu, True, True)
    check(op(x, w, nw, EPS, r, swiglu), x, w, nw, r, swiglu)
    x, w, _, _ = make_inputs(K * N + 1, 5, K, N, swiglu, False, False)
    check(op(x, w, None, EPS, None, swiglu), x, w, None, None, swiglu)


@needs_ext
def test_rmsnorm_semantics():
    # RMSNorm alone: identity weight -> rows of out are the normalised rows of x times norm_weight
    x, _, nw, _ = make_inputs(3, 6, 64, 1, False, True, False)
    out = op(x, torch.eye(64), nw, 1e-6, None, False)
    want = nw * x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    assert torch.allclose(out, want, rtol=1e-6, atol=1e-6)
    # eps matters for small rows
    small = torch.full((1, 8), 1e-3)
    got = op(small, torch.eye(8), torch.ones(8), 1.0, None, False)
    assert torch.allclose(got, small / (1e-6 + 1.0) ** 0.5)


@needs_ext
def test_empty_rows():
    w = torch.randn(6, 8)
    assert op(torch.empty(0, 8), w, None, EPS, None, False).shape == (0, 6)
    assert op(torch.empty(0, 8), w, torch.ones(8), EPS, torch.empty(0, 3), True).shape == (0, 3)
    assert fused_linear(torch.empty(2, 0, 8), w, swiglu=True).shape == (2, 0, 3)


@needs_ext
def test_wrapper_leading_dims():
    x, w, nw, r = make_inputs(4, None, 192, 768, True, True, True, lead=(3, 10))
    out = fused_linear(x, w, nw, EPS, r, swiglu=True)
    assert out.shape == (3, 10, 384)
    check(out, x, w, nw, r, True)
    one = fused_linear(x[0, 0], w, nw, EPS, r[0, 0], swiglu=True)  # 1-D x
    assert one.shape == (384,) and torch.allclose(one, out[0, 0], rtol=1e-6, atol=1e-6)


def test_fallback_without_extension(monkeypatch):
    x, w, nw, r = make_inputs(5, 10, 192, 576, False, True, True)
    expected = fused_linear(x, w, nw, EPS, r)
    monkeypatch.setattr(common, "HAS_EXTENSION", False)
    got = fused_linear(x, w, nw, EPS, r)
    assert rel_err(got, expected) < TOL


def _bad_cases():
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    yield (x.double(), w), {}, TypeError, "x must have dtype"
    yield ([[1.0]], w), {}, TypeError, "x must be a torch.Tensor"
    yield (x, w.half()), {}, TypeError, "weight must have dtype"
    yield (x, w), {"norm_weight": torch.ones(8, dtype=torch.float64)}, TypeError, "norm_weight must have dtype"
    yield (x, w), {"residual": torch.zeros(4, 6, dtype=torch.int32)}, TypeError, "residual must have dtype"
    yield (x, w), {"swiglu": 1}, TypeError, "swiglu"
    yield (x, w), {"eps": "1e-5"}, TypeError, "eps"
    yield (x, w), {"eps": True}, TypeError, "eps"
    yield (x, w), {"eps": float("nan")}, ValueError, "eps"
    yield (torch.tensor(1.0), w), {}, ValueError, "x must be"
    yield (torch.randn(4, 0), torch.randn(6, 0)), {}, ValueError, "x must be"
    yield (torch.randn(2, MAX_K + 1), torch.randn(6, MAX_K + 1)), {}, ValueError, "x must be"
    yield (x, torch.randn(6, 9)), {}, ValueError, "weight must be"
    yield (x, torch.randn(6)), {}, ValueError, "weight must be"
    yield (x, torch.randn(5, 8)), {"swiglu": True}, ValueError, "even"
    yield (x, w), {"norm_weight": torch.ones(9)}, ValueError, "norm_weight must be"
    yield (x, w), {"residual": torch.zeros(4, 6), "swiglu": True}, ValueError, "residual must"
    yield (x, w), {"residual": torch.zeros(3, 6)}, ValueError, "residual must"
    yield (torch.randn(8, 4).t(), w), {}, ValueError, "x must be contiguous"
    yield (x, torch.randn(8, 6).t()), {}, ValueError, "weight must be contiguous"
    yield (x, w), {"norm_weight": torch.ones(16)[::2]}, ValueError, "norm_weight must be contiguous"
    yield (x, w), {"residual": torch.zeros(6, 4).t()}, ValueError, "residual must be contiguous"
    yield (x, w.to("meta")), {}, ValueError, "weight is on"
    yield (x, w), {"residual": torch.zeros(4, 6, device="meta")}, ValueError, "residual is on"


@pytest.mark.parametrize("args,kwargs,exc,match", list(_bad_cases()))
def test_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fused_linear(*args, **kwargs)


@needs_ext
def test_op_checks_its_own_arguments():
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    cases = [
        ((x.t(), torch.randn(6, 4), None, EPS, None, False), "x must be contiguous"),
        ((x, torch.randn(8, 6).t(), None, EPS, None, False), "weight must be contiguous"),
        ((x.double(), w, None, EPS, None, False), "x must be float32"),
        ((x, w, None, EPS, None, True), None),  # fine: N = 6 is even
        ((x, torch.randn(5, 8), None, EPS, None, True), "even"),
        ((x, torch.randn(6, 7), None, EPS, None, False), "weight"),
        ((x[0], w, None, EPS, None, False), "x must be"),
        ((x, w, torch.ones(7), EPS, None, False), "norm_weight"),
        ((x, w, torch.ones(16)[::2], EPS, None, False), "norm_weight must be contiguous"),
        ((x, w, None, EPS, torch.zeros(4, 5), False), "residual"),
        ((x, w, None, EPS, torch.zeros(6, 4).t(), False), "residual must be contiguous"),
        ((torch.randn(2, MAX_K + 1), torch.randn(3, MAX_K + 1), None, EPS, None, False), "K"),
    ]
    for args, match in cases:
        if match is None:
            op(*args)
            continue
        with pytest.raises(RuntimeError, match=match):
            op(*args)


@needs_ext
@pytest.mark.parametrize("norm,res,swiglu", [(False, False, False), (True, True, True), (True, False, False),
                                             (False, True, True)])
def test_opcheck(norm, res, swiglu):
    x, w, nw, r = make_inputs(1, 13, 64, 20, swiglu, norm, res)
    torch.library.opcheck(op, (x, w, nw, EPS, r, swiglu))


@needs_ext
def test_fake_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w, nw, r = make_inputs(2, 10, 192, 768, True, True, True)
    with FakeTensorMode() as mode:
        out = op(mode.from_tensor(x), mode.from_tensor(w), mode.from_tensor(nw), EPS, mode.from_tensor(r), True)
    assert out.shape == (10, 384) and out.dtype == torch.float32

    fn = torch.compile(lambda a, b, c, d: fused_linear(a, b, c, EPS, d, swiglu=True), backend="aot_eager",
                       fullgraph=True)
    assert torch.equal(fn(x, w, nw, r), op(x, w, nw, EPS, r, True))


# ------------------------------------------------------------------------------------------------- CUDA




def _cuda_case(seed, M, K, N, swiglu, norm, res):
    x, w, nw, r = make_inputs(seed, M, K, N, swiglu, norm, res, device="cuda")
    poison_cuda_cache()
    out = op(x, w, nw, EPS, r, swiglu)
    assert out.is_cuda
    check(out, x, w, nw, r, swiglu)
    cpu = (lambda t: None if t is None else t.cpu())
    assert rel_err(out.cpu(), op(cpu(x), cpu(w), cpu(nw), EPS, cpu(r), swiglu)) < TOL  # the CPU op agrees


def _cuda_ready():
    assert common.HAS_CUDA_KERNELS, "built without CUDA kernels; the CUDA path would be the reference"


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("K,N,swiglu", LAYERS)
@pytest.mark.parametrize("norm,res", [(False, False), (True, True)])
def test_cuda_decoder_sizes(M, K, N, swiglu, norm, res):
    _cuda_ready()
    _cuda_case(M * 7 + N, M, K, N, swiglu, norm, res)


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("norm,res,swiglu", list(itertools.product([False, True], repeat=3)))
# the skinny kernel, then the small, narrow (2), medium and large tiles at K=192, N=576/768
@pytest.mark.parametrize("M", [10, 37, 206, 640, 2060, 9000])
def test_cuda_flags(M, norm, res, swiglu):
    _cuda_ready()
    _cuda_case(M, M, 192, 768 if swiglu else 576, swiglu, norm, res)


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("norm,res", [(False, False), (True, True), (True, False)])
# wide outputs at tens to hundreds of rows: the k-split tiles (4 warp groups up to one 16x64 tile per SM,
# 2 groups up to two), at the smallest and largest K they take and odd M / N; then just past their range
@pytest.mark.parametrize("M,K,N,swiglu", [(17, 16, 512, False), (37, 384, 576, False), (150, 48, 600, True),
                                          (206, 384, 1030, True), (300, 192, 580, False), (206, 192, 2670, False)])
def test_cuda_ksplit_tiles(M, K, N, swiglu, norm, res):
    _cuda_ready()
    _cuda_case(M + K + N, M, K, N, swiglu, norm, res)


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("K", [1, 3, 7, 33, 100, 1000, MAX_K])
@pytest.mark.parametrize("M,N,swiglu", [(1, 1, False), (19, 70, True), (700, 13, False), (3000, 130, True)])
def test_cuda_odd_sizes(K, M, N, swiglu):
    _cuda_ready()
    _cuda_case(K + M + N, M, K, N, swiglu, True, True)


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("M,N,swiglu", [(52000, 576, False), (20600, 768, True), (9000, 2670, False)])
def test_cuda_prefill_sizes(M, N, swiglu):
    _cuda_ready()
    _cuda_case(M, M, 192, N, swiglu, True, True)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_unaligned_rows():
    # contiguous views whose data starts 4 bytes into an allocation: the kernel must not use 16-byte copies
    _cuda_ready()
    for M, K, N in [(10, 192, 576), (2060, 192, 768), (640, 384, 192)]:
        x, w, nw, r = make_inputs(M, M, K, N, False, True, True, device="cuda")
        xs = torch.empty(M * K + 1, device="cuda")[1:].view(M, K).copy_(x)
        ws = torch.empty(N * K + 1, device="cuda")[1:].view(N, K).copy_(w)
        poison_cuda_cache()
        check(op(xs, ws, nw, EPS, r, False), x, w, nw, r, False)
        sw = op(xs, ws, nw, EPS, None, True)
        check(sw, x, w, nw, None, True)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_empty_and_errors():
    _cuda_ready()
    w = torch.randn(6, 8, device="cuda")
    assert op(torch.empty(0, 8, device="cuda"), w, None, EPS, None, True).shape == (0, 3)
    x = torch.randn(8, 4, device="cuda").t()
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        op(x, torch.randn(6, 4, device="cuda"), None, EPS, None, False)
    with pytest.raises(ValueError, match="x must be contiguous"):
        fused_linear(x, torch.randn(6, 8, device="cuda"))
    with pytest.raises(RuntimeError, match="weight is on"):
        op(torch.randn(4, 8, device="cuda"), torch.randn(6, 8), None, EPS, None, False)
    with pytest.raises(RuntimeError, match="norm_weight is on"):
        op(torch.randn(4, 8, device="cuda"), w, torch.ones(8), EPS, None, False)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_opcheck_stream_and_graph():
    _cuda_ready()
    x, w, nw, r = make_inputs(1, 10, 192, 768, True, True, True, device="cuda")
    torch.library.opcheck(op, (x, w, nw, EPS, r, True))

    got = on_side_stream(lambda: op(x, w, nw, EPS, r, True))
    check(got, x, w, nw, r, True)

    # CUDA graph: capture the decode-step chain once, change inputs and weights in place, replay.
    sx, sw, snw, sr = x.clone(), w.clone(), nw.clone(), r.clone()
    wo = torch.randn(192, 384, device="cuda") / 384**0.5

    def step():
        h = op(sx, sw, snw, EPS, sr, True)
        return h, op(h, wo, None, EPS, sx, False)

    graph, (h, out) = capture_graph(step)
    for seed in (2, 3):
        x2, w2, nw2, r2 = make_inputs(seed, 10, 192, 768, True, True, True, device="cuda")
        for static, new in ((sx, x2), (sw, w2), (snw, nw2), (sr, r2)):
            static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        h_ref = fused_linear_reference(x2.cpu(), w2.cpu(), nw2.cpu(), EPS, r2.cpu(), True)
        check(h, x2, w2, nw2, r2, True)
        check(out, h_ref, wo, None, x2, False)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_timing_print():
    """Not an assertion: kernel time of a decode-step qkv projection vs F.linear (run with -s to see it)."""
    _cuda_ready()
    rows = []
    for M, K, N, swiglu, norm in [(10, 192, 576, False, True), (10, 192, 768, True, True), (10, 384, 192, False, False),
                                  (10, 192, 2670, False, True), (2560, 192, 576, False, True),
                                  (2560, 192, 2670, False, True), (52000, 192, 576, False, True)]:
        x, w, nw, _ = make_inputs(0, M, K, N, swiglu, norm, False, device="cuda")

        def ours():
            return op(x, w, nw, EPS, None, swiglu)

        def torch_linear():
            return torch.nn.functional.linear(x, w)

        times = []
        for fn in (ours, torch_linear):
            for _ in range(10):
                fn()
            reps = 200 if M < 10000 else 20
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1000 / reps)
        rows.append(f"M={M:6d} K={K} N={N:5d} swiglu={swiglu!s:5} norm={norm!s:5}: fused_linear {times[0]:8.1f} us, "
                    f"F.linear (no norm/epilogue) {times[1]:8.1f} us")
    print("\nfused_linear timing on", torch.cuda.get_device_name(), "(back-to-back launches, CUDA events):")
    print("\n".join(rows))
