"""decoder_layers: the compiled op (CPU chain; CUDA persistent kernel) vs the chain of the ops' references."""

import pytest
import torch

from autogaze_ext.ops import _common as common
from autogaze_ext.ops import decoder as Dm
from conftest import capture_graph, cuda_us_per_call, poison_cuda_cache

op = torch.ops.autogaze_ext.decoder_layers if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MODEL = dict(D=192, H=6, KVH=6, d=32, inter=384, layers=4)  # the released decoder: the persistent kernel's shape


def make_case(seed, B, n, L, D, H, KVH, d, inter, layers, valid_p=0.7, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale)  # noqa: E731
    args = dict(
        x=r(B, n, D),
        positions=torch.randint(0, 6000, (B, n), generator=g),
        inv_freq=1.0 / (500000.0 ** (torch.arange(0, d, 2).float() / d)),
        k_cache=r(layers, B, KVH, L, d), v_cache=r(layers, B, KVH, L, d),
        key_valid=torch.rand(B, L, generator=g) < valid_p,
        w_qkv=r(layers, (H + 2 * KVH) * d, D, scale=D ** -0.5), w_o=r(layers, D, H * d, scale=(H * d) ** -0.5),
        w_gu=r(layers, 2 * inter, D, scale=D ** -0.5), w_down=r(layers, D, inter, scale=inter ** -0.5),
        norm_attn=1 + 0.1 * r(layers, D), norm_mlp=1 + 0.1 * r(layers, D))
    return {k: v.to(device) for k, v in args.items()}


def call(fn, a, start, H, KVH, eps=1e-5, last_only=False):
    """fn on copies of the caches -> (out, k_cache, v_cache)."""
    kc, vc = a["k_cache"].clone(), a["v_cache"].clone()
    out = fn(a["x"], a["positions"], a["inv_freq"], kc, vc, a["key_valid"], start, a["w_qkv"], a["w_o"], a["w_gu"],
             a["w_down"], a["norm_attn"], a["norm_mlp"], eps, H, KVH, last_only)
    return out, kc, vc


def reference64(a, start, H, KVH):
    """The reference chain in float64 on the CPU (every token): the oracle both backends are held to."""
    a64 = {k: (v.cpu().double() if v.is_floating_point() else v.cpu()) for k, v in a.items()}
    out, kc, vc = call(Dm.decoder_layers_reference, a64, start.cpu(), H, KVH)
    return out, kc, vc


def check_last_only(fn, a, start, H, KVH, ro, rk, rv, tol):
    """last_only=True gives each row's last token of the full oracle, (B, 1, hidden), and the same caches."""
    if a["x"].is_cuda:
        poison_cuda_cache()
    out, kc, vc = call(fn, a, start, H, KVH, last_only=True)
    assert out.shape == (ro.shape[0], 1, ro.shape[2])
    assert_close(out, ro[:, -1:], tol)
    assert_close(kc, rk, tol)
    assert_close(vc, rv, tol)


def assert_close(got, want, tol):
    got = got.cpu().double()
    assert torch.isfinite(got).all(), "non-finite output (an unwritten element?)"
    err = (got - want).abs().max().item()
    assert err <= tol * (1 + want.abs().max().item()), f"max error {err}"


# ------------------------------------------------------------------------------------------------- CPU

CPU_CASES = [  # B, n, L, D, H, KVH, d, inter, layers
    (1, 1, 16, 32, 2, 2, 8, 48, 1),
    (2, 5, 40, 64, 4, 2, 16, 96, 3),
    (3, 10, 64, 48, 3, 1, 16, 32, 2),
]


@needs_ext
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "B{}n{}L{}D{}H{}KVH{}d{}I{}l{}".format(*c))
@pytest.mark.parametrize("start", [0, 7, 30])
def test_cpu_matches_reference(case, start):
    B, n, L, D, H, KVH, d, inter, layers = case
    a = make_case(1, B, n, L, D, H, KVH, d, inter, layers)
    s = torch.tensor([start])
    out, kc, vc = call(op, a, s, H, KVH)
    ro, rk, rv = reference64(a, s, H, KVH)
    # fp32 against the float64 oracle: a wrong mask, slot or rotation is off by O(0.1), rounding by ~1e-5
    assert_close(out, ro, 1e-4)
    assert_close(kc, rk, 1e-4)
    assert_close(vc, rv, 1e-4)
    # slots outside start..start+n-1 are untouched
    slots = torch.arange(L)
    keep = (slots < start) | (slots >= start + n)
    assert torch.equal(kc[:, :, :, keep], a["k_cache"][:, :, :, keep])
    check_last_only(op, a, s, H, KVH, ro, rk, rv, 1e-4)
    check_last_only(Dm.decoder_layers_reference, a, s, H, KVH, ro, rk, rv, 1e-4)


@needs_ext
def test_last_only_of_empty_rows():
    """n = 0 tokens: nothing to return in either mode, (B, 0, hidden)."""
    a = make_case(6, 2, 3, 16, 32, 2, 2, 8, 48, 2)
    a["x"], a["positions"] = a["x"][:, :0], a["positions"][:, :0]
    for last_only in (False, True):
        out, kc, _ = call(op, a, torch.tensor([0]), 2, 2, last_only=last_only)
        assert out.shape == (2, 0, 32)
        assert torch.equal(kc, a["k_cache"])


@needs_ext
def test_wrapper_checks_name_the_argument():
    a = make_case(2, 1, 3, 16, 32, 2, 2, 8, 48, 2)
    s = torch.tensor([0])
    bad = dict(a, w_o=a["w_o"][:, :, :5])
    with pytest.raises(ValueError, match="w_o"):
        call(Dm.decoder_layers, bad, s, 2, 2)
    with pytest.raises(TypeError, match="positions"):
        call(Dm.decoder_layers, dict(a, positions=a["positions"].int()), s, 2, 2)
    with pytest.raises(ValueError, match="num_heads"):
        call(Dm.decoder_layers, a, s, 3, 2)
    with pytest.raises(ValueError, match="start"):
        call(Dm.decoder_layers, a, torch.tensor([0, 1]), 2, 2)
    with pytest.raises(ValueError, match="key_valid"):
        call(Dm.decoder_layers, dict(a, key_valid=a["key_valid"][:, :3]), s, 2, 2)
    with pytest.raises(TypeError, match="last_only"):
        call(Dm.decoder_layers, a, s, 2, 2, last_only=1)


@needs_ext
def test_opcheck():
    """Schema (in-place cache writes), fake kernel and dynamic-shape tracing agree with the CPU kernel."""
    a = make_case(4, 2, 3, 16, 32, 2, 2, 8, 48, 2)
    for last_only in (False, True):
        torch.library.opcheck(op, (a["x"], a["positions"], a["inv_freq"], a["k_cache"], a["v_cache"],
                                   a["key_valid"], torch.tensor([2]), a["w_qkv"], a["w_o"], a["w_gu"], a["w_down"],
                                   a["norm_attn"], a["norm_mlp"], 1e-5, 2, 2, last_only))


@needs_ext
def test_op_checks_shapes():
    a = make_case(3, 1, 3, 16, 32, 2, 2, 8, 48, 2)
    with pytest.raises(RuntimeError, match="w_down"):
        call(op, dict(a, w_down=a["w_down"][:1]), torch.tensor([0]), 2, 2)


# ------------------------------------------------------------------------------------------------- CUDA

GPU_CASES = [  # B, n, L. Persistent kernel (n <= 16, B * n <= 64): decode steps, one token, its limits;
    (1, 1, 256),  # chained ops beyond them: prefills (n = 206), big batches, n = 17
    (1, 10, 512),
    (1, 10, 4096),
    (3, 10, 1024),
    (6, 10, 300),
    (4, 16, 1024),
    (64, 1, 2048),
    (1, 206, 4096),
    (2, 206, 1024),
    (64, 10, 4096),
    (5, 17, 300),
]


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}n{}L{}".format(*c))
@pytest.mark.parametrize("where", ["zero", "mid", "end"])
def test_cuda_persistent_matches_reference(case, where):
    assert common.HAS_CUDA_KERNELS
    B, n, L = case
    m = MODEL
    a = make_case(10 + B + n, B, n, L, m["D"], m["H"], m["KVH"], m["d"], m["inter"], m["layers"], device="cuda")
    # "end": the last tokens fall outside the cache (not written, queries with few keys)
    start = {"zero": 0, "mid": L // 2 - n // 2, "end": L - n // 2}[where]
    s = torch.tensor([start], device="cuda")
    poison_cuda_cache()
    out, kc, vc = call(op, a, s, m["H"], m["KVH"])
    ro, rk, rv = reference64(a, s, m["H"], m["KVH"])
    assert_close(out, ro, 1e-4)
    assert_close(kc, rk, 1e-4)
    assert_close(vc, rv, 1e-4)
    # the persistent kernel and the chain of the CUDA ops agree closely too
    cout, ckc, _ = call(Dm.decoder_layers_reference, a, s, m["H"], m["KVH"])
    assert (out - cout).abs().max().item() < 1e-4
    # each row's last token alone (the persistent kernel's last_out rows; the chain's one-token last layer)
    check_last_only(op, a, s, m["H"], m["KVH"], ro, rk, rv, 1e-4)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_other_shapes_run_the_chain():
    """A decoder shape the persistent kernel is not built for runs the chained CUDA ops."""
    a = make_case(5, 2, 5, 40, 64, 4, 2, 16, 96, 3, device="cuda")
    s = torch.tensor([3], device="cuda")
    out, kc, _ = call(op, a, s, 4, 2)
    ro, rk, rv = reference64(a, s, 4, 2)
    assert_close(out, ro, 1e-4)
    assert_close(kc, rk, 1e-4)
    check_last_only(op, a, s, 4, 2, ro, rk, rv, 1e-4)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_graph_replays_with_new_start():
    """Captured once, replayed with a new start on the device: same as an eager call at that start."""
    m = MODEL
    a = make_case(7, 2, 10, 1024, m["D"], m["H"], m["KVH"], m["d"], m["inter"], m["layers"], device="cuda")
    s = torch.tensor([100], device="cuda")
    kc, vc = a["k_cache"].clone(), a["v_cache"].clone()
    args = lambda: (a["x"], a["positions"], a["inv_freq"], kc, vc, a["key_valid"], s, a["w_qkv"], a["w_o"],  # noqa
                    a["w_gu"], a["w_down"], a["norm_attn"], a["norm_mlp"], 1e-5, m["H"], m["KVH"])
    g, out = capture_graph(lambda: op(*args()))
    s.fill_(700)
    kc.copy_(a["k_cache"]), vc.copy_(a["v_cache"])
    g.replay()
    want, wk, _ = call(op, a, torch.tensor([700], device="cuda"), m["H"], m["KVH"])
    assert torch.equal(out, want)
    assert torch.equal(kc, wk)


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("B,n,L", [(1, 1, 512), (1, 10, 4096), (4, 10, 4096), (1, 206, 4096)])
def test_cuda_timing(B, n, L, capsys):
    """Prints µs per call (CUDA graph) of the op (the persistent kernel where it applies), of the op with
    last_only, and of the chained ops the persistent kernel replaces."""
    m = MODEL
    a = make_case(9, B, n, L, m["D"], m["H"], m["KVH"], m["d"], m["inter"], m["layers"], device="cuda")
    s = torch.tensor([L // 2], device="cuda")
    kc, vc = a["k_cache"].clone(), a["v_cache"].clone()
    rest = (a["key_valid"], s, a["w_qkv"], a["w_o"], a["w_gu"], a["w_down"], a["norm_attn"], a["norm_mlp"], 1e-5,
            m["H"], m["KVH"])
    persistent = cuda_us_per_call(lambda: op(a["x"], a["positions"], a["inv_freq"], kc, vc, *rest))
    last = cuda_us_per_call(lambda: op(a["x"], a["positions"], a["inv_freq"], kc, vc, *rest, True))
    ops = torch.ops.autogaze_ext  # the layers as the chain of CUDA ops (what decoder_layers replaces)
    chained = cuda_us_per_call(lambda: Dm.chain_layers(a["x"], a["positions"], a["inv_freq"], kc, vc, *rest,
                                                       linear=ops.fused_linear, rope=ops.rope_cache_write,
                                                       attention=ops.cache_attention))
    with capsys.disabled():
        print(f"\ndecoder_layers B={B} n={n} L={L}: op {persistent:.1f} us, op last_only {last:.1f} us, "
              f"chained ops {chained:.1f} us")
