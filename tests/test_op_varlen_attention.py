"""varlen_attention: compiled kernels and torch paths vs the float64 reference; the reference vs a brute force."""

import pytest
import torch

from autogaze_ext.ops import _common as common, varlen as varlen_ops
from autogaze_ext.ops.varlen import MODES, _torch_varlen_plan, varlen_attention, varlen_attention_reference
from conftest import capture_graph

op = torch.ops.autogaze_ext.varlen_attention if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Output tolerance by dtype: fp32 math everywhere, so fp16/bf16 only add the rounding of inputs and output.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def layout(frame_lens: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Per video a list of frame lengths -> (cu_seqlens, cu_frames, [(video, frame)] per token)."""
    cs, cf, owner = [0], [0], []
    for b, frames in enumerate(frame_lens):
        for t, n in enumerate(frames):
            cf.append(cf[-1] + n)
            owner += [(b, t)] * n
        cs.append(cf[-1])
        if not frames:  # a video without frames still needs its boundary in cu_frames
            cf.append(cf[-1])
    return torch.tensor(cs, dtype=torch.int32), torch.tensor(cf, dtype=torch.int32), owner


def random_layout(g: torch.Generator, videos: int, max_frames: int, max_len: int, p_empty: float = 0.2):
    out = []
    for _ in range(videos):
        nf = int(torch.randint(1, max_frames + 1, (1,), generator=g))
        lens = torch.randint(1, max_len + 1, (nf,), generator=g)
        lens[torch.rand(nf, generator=g) < p_empty] = 0
        out.append(lens.tolist())
    return out


def qkv(g: torch.Generator, total: int, H: int, d: int, dtype=torch.float32):
    return [(torch.randn(total, H, d, generator=g) * 1.5).to(dtype) for _ in range(3)]


def brute_force(q, k, v, owner, mode, scale, num_prefix):
    """Float64 attention with the visibility rule spelled out per (query, key) pair from token owners."""
    total = q.shape[0]
    first = {}
    for j, (b, _) in enumerate(owner):
        first.setdefault(b, j)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    for i, (bi, ti) in enumerate(owner):
        for j, (bj, tj) in enumerate(owner):
            if bi != bj:
                continue
            see = {"block_causal": tj <= ti, "causal": j <= i, "bidirectional": True,
                   "frame_independent": tj == ti}[mode]
            allowed[i, j] = see or j - first[bj] < num_prefix
    qd, kd, vd = (t.double().transpose(0, 1) for t in (q, k, v))
    sc = (qd @ kd.transpose(1, 2) * scale).masked_fill(~allowed, float("-inf"))
    return (torch.softmax(sc, -1) @ vd).transpose(0, 1)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_against_reference(out, q, k, v, cs, cf, mode, scale, num_prefix):
    ref = varlen_attention_reference(q.cpu().double(), k.cpu().double(), v.cpu().double(), cs.cpu(), cf.cpu(), mode,
                                     scale, num_prefix)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    err = rel_err(out.cpu(), ref)
    assert err < TOL[q.dtype], (mode, num_prefix, q.dtype, err)
    return ref


# ----------------------------------------------------------------------------------- semantics of the oracle


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_prefix", [0, 1, 3])
def test_reference_matches_brute_force(mode, num_prefix):
    g = torch.Generator().manual_seed(len(mode) * 10 + num_prefix)
    lens = [[3, 0, 4, 2], [1], [0, 5, 0], [2, 2]]
    cs, cf, owner = layout(lens)
    q, k, v = qkv(g, len(owner), 2, 8, torch.float64)
    got = varlen_attention_reference(q, k, v, cs, cf, mode, 0.3, num_prefix, rows_per_chunk=5)
    assert rel_err(got, brute_force(q, k, v, owner, mode, 0.3, num_prefix)) < 1e-12


def test_modes_differ_as_expected():
    g = torch.Generator().manual_seed(0)
    cs, cf, _ = layout([[4, 4, 4]])
    q, k, v = qkv(g, 12, 1, 8, torch.float64)
    out = {m: varlen_attention_reference(q, k, v, cs, cf, m, 0.5) for m in MODES}
    # frame 0 sees only itself in block_causal and frame_independent; the last frame sees everything in
    # block_causal and bidirectional
    assert torch.allclose(out["block_causal"][:4], out["frame_independent"][:4])
    assert torch.allclose(out["block_causal"][8:], out["bidirectional"][8:])
    assert not torch.allclose(out["block_causal"][4:], out["frame_independent"][4:])
    assert torch.allclose(out["causal"][0], v[0])  # the first token sees only itself


# ------------------------------------------------------------------------------------------------ CPU kernel


@needs_ext
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", MODES)
def test_random_layouts(seed, mode):
    g = torch.Generator().manual_seed(seed)
    lens = random_layout(g, videos=1 + seed % 4, max_frames=6, max_len=40 + 50 * (seed % 3))
    cs, cf, owner = layout(lens)
    H, d = [(2, 64), (3, 72), (1, 128), (4, 16), (2, 5), (1, 256)][seed]
    num_prefix = [0, 1, 0, 2, 0, 3][seed]
    q, k, v = qkv(g, len(owner), H, d)
    scale = d ** -0.5
    check_against_reference(op(q, k, v, cs, cf, mode, scale, num_prefix), q, k, v, cs, cf, mode, scale, num_prefix)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("d", [64, 72, 128])
def test_half_dtypes(dtype, mode, d):
    g = torch.Generator().manual_seed(d)
    cs, cf, owner = layout(random_layout(g, 3, 5, 60))
    q, k, v = qkv(g, len(owner), 2, d, dtype)
    out = varlen_attention(q, k, v, cs, cf, mode)
    check_against_reference(out, q, k, v, cs, cf, mode, d ** -0.5, 0)


@needs_ext
def test_edge_layouts():
    g = torch.Generator().manual_seed(7)
    cases = [
        [[1]],  # a single token
        [[1], [1], [1]],  # three one-token videos
        [[0, 0, 3], [0, 2, 0]],  # empty leading / trailing frames
        [[5], [], [0, 0], [4, 1]],  # empty videos in the middle
        [[0, 0, 0], [2]],  # a video with no tokens at all first
    ]
    for lens in cases:
        cs, cf, owner = layout(lens)
        q, k, v = qkv(g, len(owner), 2, 16)
        for mode in MODES:
            for p in (0, 2):
                out = varlen_attention(q, k, v, cs, cf, mode, num_prefix=p)
                check_against_reference(out, q, k, v, cs, cf, mode, 0.25, p)
    # a lone token attends only to itself: the output is its value
    cs, cf, _ = layout([[1]])
    q, k, v = qkv(g, 1, 3, 8)
    assert torch.allclose(op(q, k, v, cs, cf, "block_causal", 0.3, 0), v)


@needs_ext
def test_inference_mode_and_threads():
    # the kernel's worker threads run ATen ops on tensors made under the caller's inference mode
    g = torch.Generator().manual_seed(4)
    cs, cf, owner = layout([[300, 200], [100, 400, 50]])
    q, k, v = qkv(g, len(owner), 2, 32)
    want = op(q, k, v, cs, cf, "causal", 0.2, 0)
    with torch.inference_mode():
        got = op(q, k, v, cs, cf, "causal", 0.2, 0)
    assert torch.equal(got, want)


@needs_ext
def test_no_tokens():
    q = torch.empty(0, 2, 8)
    z = torch.zeros(2, dtype=torch.int32)
    assert op(q, q, q, z, z, "block_causal", 1.0, 0).shape == (0, 2, 8)
    assert varlen_attention(q, q, q, torch.zeros(3, dtype=torch.int32)).shape == (0, 2, 8)


@needs_ext
def test_long_video(mode="block_causal"):
    # 10k+ tokens in one video of 16 frames; float64 reference (causal masking at scale: the CUDA tests)
    g = torch.Generator().manual_seed(11)
    lens = [[640 + i for i in range(16)]]
    cs, cf, owner = layout(lens)
    assert len(owner) > 10_000
    q, k, v = qkv(g, len(owner), 1, 64)
    check_against_reference(op(q, k, v, cs, cf, mode, 0.125, 0), q, k, v, cs, cf, mode, 0.125, 0)


@needs_ext
def test_default_frames_and_scale():
    g = torch.Generator().manual_seed(3)
    cs, cf, _ = layout([[7], [9]])
    q, k, v = qkv(g, 16, 2, 32)
    got = varlen_attention(q, k, v, cs)  # one frame per video, scale d^-0.5
    want = varlen_attention_reference(q, k, v, cs, cs, "bidirectional", 32 ** -0.5)
    assert rel_err(got, want) < 1e-6


def test_reference_backend():
    g = torch.Generator().manual_seed(6)
    cs, cf, owner = layout([[3, 4], [5, 0, 2]])
    q, k, v = qkv(g, len(owner), 2, 16)
    out = varlen_attention(q, k, v, cs, cf, "causal", num_prefix=2, backend="reference")
    assert torch.equal(out, varlen_attention_reference(q, k, v, cs, cf, "causal", 0.25, 2))


def test_fallback_without_extension(monkeypatch):
    g = torch.Generator().manual_seed(5)
    cs, cf, owner = layout([[3, 4], [5, 0, 2]])
    q, k, v = qkv(g, len(owner), 2, 16)
    monkeypatch.setattr(common, "HAS_EXTENSION", False)
    out = varlen_attention(q, k, v, cs, cf, "block_causal", num_prefix=1)
    check_against_reference(out, q, k, v, cs, cf, "block_causal", 0.25, 1)
    with pytest.raises(ValueError, match="no compiled varlen_attention kernel"):
        varlen_attention(q, k, v, cs, cf, backend="compiled")


def test_torch_varlen_plan():
    # how each mode maps onto torch's FlashAttention varlen call (host-side planning, no GPU needed)
    q = torch.empty(0, 1, 64, dtype=torch.float16)
    videos, frames = [0, 5, 5, 12], [0, 2, 5, 5, 5, 9, 12]
    if varlen_ops._torch_varlen() is None:
        pytest.skip("torch.nn.attention.varlen missing in this torch")
    assert _torch_varlen_plan(q, videos, frames, "bidirectional", 0) == (videos, videos, 7, 7, False, None)
    assert _torch_varlen_plan(q, videos, frames, "causal", 1)[4] is True
    assert _torch_varlen_plan(q, videos, frames, "causal", 2) is None
    assert _torch_varlen_plan(q, videos, frames, "frame_independent", 0)[:4] == (frames, frames, 4, 4)
    assert _torch_varlen_plan(q, videos, frames, "frame_independent", 1) is None
    cu_q, cu_k, max_q, max_k, causal, used = _torch_varlen_plan(q, videos, frames, "block_causal", 0)
    assert (cu_q, max_q, causal) == (frames, 4, False)
    assert cu_k == [0, 0, 5, 5, 5, 5, 12] and used == [2, 5, 0, 0, 4, 7] and max_k == 7
    assert _torch_varlen_plan(q, videos, frames, "block_causal", 2) is not None  # frame 0 ends at the prefix
    assert _torch_varlen_plan(q, videos, frames, "block_causal", 3) is None
    assert _torch_varlen_plan(q.float(), videos, frames, "bidirectional", 0) is None  # FlashAttention: half only
    assert _torch_varlen_plan(torch.empty(0, 1, 36, dtype=torch.float16), videos, frames, "causal", 0) is None


# ------------------------------------------------------------------------------------------------- errors


def _bad_cases():
    q = torch.randn(6, 2, 8)
    cs = torch.tensor([0, 6], dtype=torch.int32)
    cf = torch.tensor([0, 2, 6], dtype=torch.int32)
    yield (q.double(), q.double(), q.double(), cs), {}, TypeError, "q must be float32"
    yield (q, q.half(), q, cs), {}, TypeError, "k must have q's dtype"
    yield ([[1.0]], q, q, cs), {}, TypeError, "q must be a torch.Tensor"
    yield (q, q, q, cs.long()), {}, TypeError, "cu_seqlens must have dtype"
    yield (q, q, q, cs), {"cu_frames": cf.long()}, TypeError, "cu_frames must have dtype"
    yield (q[0], q[0], q[0], cs), {}, ValueError, "q must be"
    yield (q, q[:5], q, cs), {}, ValueError, "k shape"
    yield (torch.randn(6, 2, 257),) * 3 + (cs,), {}, ValueError, "head_dim"
    yield (q, q, q, cs[:1]), {}, ValueError, "cu_seqlens must be"
    yield (q, q, q, cs), {"mode": "full"}, ValueError, "mode must be one of"
    yield (q, q, q, cs), {"scale": 0.0}, ValueError, "scale"
    yield (q, q, q, cs), {"scale": True}, TypeError, "scale"
    yield (q, q, q, cs), {"num_prefix": -1}, ValueError, "num_prefix"
    yield (q, q, q, cs), {"num_prefix": 1.5}, TypeError, "num_prefix"
    yield (q, q, q, cs.to("meta")), {}, ValueError, "cu_seqlens is on"
    yield (torch.randn(2, 6, 8).transpose(0, 1), q, q, cs), {}, ValueError, "q must be contiguous"
    yield (q, q, q, torch.tensor([0, 5], dtype=torch.int32)), {}, ValueError, "end at total_tokens"
    yield (q, q, q, torch.tensor([0, 4, 2, 6], dtype=torch.int32)), {}, ValueError, "non-decreasing"
    yield (q, q, q, torch.tensor([0, 3, 6], dtype=torch.int32)), {"cu_frames": cf}, ValueError, "missing \\[3\\]"
    yield (q, q, q, cs), {"backend": "fast"}, ValueError, "backend must be one of"
    yield (q, q, q, cs), {"backend": "torch"}, ValueError, "needs CUDA tensors"


@pytest.mark.parametrize("args,kwargs,exc,match", list(_bad_cases()))
def test_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        varlen_attention(*args, **kwargs)


@needs_ext
def test_op_checks_its_own_arguments():
    q = torch.randn(6, 2, 8)
    cs = torch.tensor([0, 6], dtype=torch.int32)
    cases = [
        ((q, q, q, cs, cs, "sideways", 1.0, 0), "mode must be"),
        ((q.double(), q.double(), q.double(), cs, cs, "causal", 1.0, 0), "float32, float16 or bfloat16"),
        ((q, q[:4], q, cs, cs, "causal", 1.0, 0), "must match q"),
        ((q, q, q, cs.long(), cs, "causal", 1.0, 0), "cu_seqlens must be int32"),
        ((q, q, q, cs, torch.tensor([0, 7], dtype=torch.int32), "causal", 1.0, 0), "cu_frames must start at 0"),
        ((q, q, q, torch.tensor([0, 4, 3, 6], dtype=torch.int32), torch.tensor([0, 3, 4, 6], dtype=torch.int32),
          "causal", 1.0, 0), "non-decreasing"),
        ((q, q, q, torch.tensor([0, 3, 6], dtype=torch.int32), torch.tensor([0, 2, 6], dtype=torch.int32),
          "causal", 1.0, 0), "must appear in cu_frames"),
        ((q, q, q, cs, cs, "causal", 1.0, -2), "num_prefix"),
        ((torch.randn(2, 6, 8).transpose(0, 1), q, q, cs, cs, "causal", 1.0, 0), "contiguous"),
    ]
    for args, match in cases:
        with pytest.raises(RuntimeError, match=match):
            op(*args)


# ------------------------------------------------------------------------------------------ opcheck, compile


@needs_ext
@pytest.mark.parametrize("mode,dtype,num_prefix", [("block_causal", torch.float32, 0), ("causal", torch.float16, 1),
                                                   ("bidirectional", torch.bfloat16, 0),
                                                   ("frame_independent", torch.float32, 2)])
def test_opcheck(mode, dtype, num_prefix):
    g = torch.Generator().manual_seed(1)
    cs, cf, owner = layout([[3, 0, 5], [4, 2]])
    q, k, v = qkv(g, len(owner), 2, 16, dtype)
    torch.library.opcheck(op, (q, k, v, cs, cf, mode, 0.25, num_prefix))


@needs_ext
def test_fake_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    g = torch.Generator().manual_seed(2)
    cs, cf, owner = layout([[3, 4], [5]])
    q, k, v = qkv(g, len(owner), 2, 16)
    with FakeTensorMode() as mode:
        out = op(*(mode.from_tensor(t) for t in (q, k, v, cs, cf)), "block_causal", 0.25, 0)
    assert out.shape == q.shape and out.dtype == q.dtype
    fn = torch.compile(lambda a, b, c, s, f: varlen_attention(a, b, c, s, f, "causal"), backend="aot_eager",
                       fullgraph=True)
    assert torch.equal(fn(q, k, v, cs, cf), op(q, k, v, cs, cf, "causal", 0.25, 0))


# ------------------------------------------------------------------------------------------------- CUDA


# the CUDA paths: torch's kernels always, the compiled kernel when this build has one
CUDA_BACKENDS = ["torch"] + (["compiled"] if common.has_kernel("varlen_attention", "cuda") else [])


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_prefix", [0, 1, 3])
@pytest.mark.parametrize("d", [64, 72, 128, 40, 256])
def test_cuda_against_reference(backend, dtype, mode, num_prefix, d):
    g = torch.Generator().manual_seed(d + num_prefix)
    lens = random_layout(g, 4, 16, 120)
    lens[0][0] = max(lens[0][0], 3)  # block_causal with a prefix frame takes the FlashAttention route
    cs, cf, owner = layout(lens)
    q, k, v = (t.cuda() for t in qkv(g, len(owner), 3, d, dtype))
    out = varlen_attention(q, k, v, cs.cuda(), cf.cuda(), mode, num_prefix=num_prefix, backend=backend)
    assert out.is_cuda
    check_against_reference(out, q, k, v, cs, cf, mode, d ** -0.5, num_prefix)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_edge_layouts_and_long(backend):
    g = torch.Generator().manual_seed(9)
    for lens in ([[1]], [[0, 0, 3], [0, 2, 0]], [[5], [], [0, 0], [4, 1]], [[700 + i for i in range(16)]],
                 [[1] * 70, [0, 129, 1]]):
        cs, cf, owner = layout(lens)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            q, k, v = (t.cuda() for t in qkv(g, len(owner), 2, 64, dtype))
            for mode in MODES:
                for p in (0, 2):
                    out = varlen_attention(q, k, v, cs.cuda(), cf.cuda(), mode, num_prefix=p, backend=backend)
                    check_against_reference(out, q, k, v, cs, cf, mode, 0.125, p)


def _cuda_kernel_ready():
    if not common.has_kernel("varlen_attention", "cuda"):
        pytest.skip("this build has no varlen_attention CUDA kernel")


# Elementwise bounds for the compiled kernel vs the float64 reference (the norm check of
# check_against_reference can hide a few wrong rows among thousands): fp32 scores and sums, so the error is
# the rounding of P to the input dtype before P.V plus the rounding of the output.
ELEMENT_TOL = {torch.float16: (4e-3, 2e-3), torch.bfloat16: (3e-2, 1.6e-2)}  # (atol, rtol)


def check_elementwise(out, q, k, v, cs, cf, mode, scale, num_prefix):
    ref = check_against_reference(out, q, k, v, cs, cf, mode, scale, num_prefix)
    atol, rtol = ELEMENT_TOL[q.dtype]
    err = (out.cpu().double() - ref).abs()
    bad = err > atol + rtol * ref.abs()
    assert not bad.any(), (mode, num_prefix, q.dtype, q.shape, int(bad.sum()), bad.nonzero()[:5].tolist())


def run_poisoned(q, k, v, cs, cf, mode, scale, num_prefix):
    """The compiled op with its output allocation pre-filled with NaN: the caching allocator hands the block
    of a just-freed tensor of the same size to the op, so an element the kernel forgets stays NaN."""
    torch.empty_like(q).fill_(float("nan"))
    return op(q, k, v, cs, cf, mode, scale, num_prefix)


# Layouts around the kernel's 64-row / 64-key tiles: tiles straddling frames (and, where segments average
# under half a tile -- the third layout's frames in frame_independent -- videos), frames of zero tokens, a
# video of one token, segments of exactly 64 and of 63 / 65 tokens, a lone token at the end.
TILE_LAYOUTS = [
    [[49] * 16, [49] * 16],
    [[30, 0, 70, 1], [1], [0, 65, 63, 0], [64, 64], [5, 200, 3]],
    [[1], [0, 0, 1], [2, 1], [0, 127, 0, 129], [1]],
]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 72, 128, 40])
def test_cuda_kernel_tiles(dtype, d):
    _cuda_kernel_ready()
    g = torch.Generator().manual_seed(20 + d)
    for lens in TILE_LAYOUTS:
        cs, cf, owner = layout(lens)
        q, k, v = (t.cuda() for t in qkv(g, len(owner), 2, d, dtype))
        for mode in MODES:
            for num_prefix in (0, 1, 5):
                out = run_poisoned(q, k, v, cs.cuda(), cf.cuda(), mode, d ** -0.5, num_prefix)
                check_elementwise(out, q, k, v, cs, cf, mode, d ** -0.5, num_prefix)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("d", [64, 72, 128])
def test_cuda_kernel_long(d):
    # 10k+ tokens: long key walks (many pipeline stages), a video starting mid-tile, causal masking at scale
    _cuda_kernel_ready()
    g = torch.Generator().manual_seed(30 + d)
    lens = [[650] * 8, [333] * 16 + [0, 1]]
    cs, cf, owner = layout(lens)
    assert len(owner) > 10_000
    q, k, v = (t.cuda() for t in qkv(g, len(owner), 2, d, torch.bfloat16))
    for mode in MODES:
        for num_prefix in (0, 5):
            out = run_poisoned(q, k, v, cs.cuda(), cf.cuda(), mode, d ** -0.5, num_prefix)
            check_elementwise(out, q, k, v, cs, cf, mode, d ** -0.5, num_prefix)


@pytest.mark.cuda
@cuda
def test_cuda_kernel_many_segments():
    # query tiles aligned to segments (videos; frames in frame_independent) are found by a block-wide scan over
    # 128 segments per round: 140 videos of 2 frames each take 2 rounds (3 for the frames), with segments
    # shorter than, equal to and longer than a 64-row tile and empty frames
    _cuda_kernel_ready()
    g = torch.Generator().manual_seed(41)
    lens = [[33 + (7 * i) % 61, (11 * i) % 50] for i in range(140)]
    cs, cf, owner = layout(lens)
    q, k, v = (t.cuda() for t in qkv(g, len(owner), 2, 64, torch.bfloat16))
    for mode in MODES:
        for num_prefix in (0, 2):
            out = run_poisoned(q, k, v, cs.cuda(), cf.cuda(), mode, 0.125, num_prefix)
            check_elementwise(out, q, k, v, cs, cf, mode, 0.125, num_prefix)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shift,d", [(1, 64), (2, 64), (8, 64), (2, 72), (0, 36), (0, 50)])
def test_cuda_kernel_unaligned_rows(dtype, shift, d):
    # contiguous tensors that start `shift` elements into an allocation, and head dims that are not a multiple
    # of 8: 2-byte aligned rows take the fp32 path, 4-byte aligned ones the tensor-core kernel with 32-bit
    # loads, 16-byte aligned ones the cp.async kernel
    _cuda_kernel_ready()
    g = torch.Generator().manual_seed(12)
    cs, cf, owner = layout([[30, 20], [10, 45, 0, 70]])
    q, k, v = qkv(g, len(owner), 2, d, dtype)
    for mode in MODES:
        for num_prefix in (0, 5):
            shifted = [torch.empty(q.numel() + shift, dtype=dtype, device="cuda")[shift:].view(q.shape).copy_(t)
                       for t in (q, k, v)]
            out = run_poisoned(*shifted, cs.cuda(), cf.cuda(), mode, d ** -0.5, num_prefix)
            if dtype == torch.float32:
                check_against_reference(out, q, k, v, cs, cf, mode, d ** -0.5, num_prefix)
            else:
                check_elementwise(out, q, k, v, cs, cf, mode, d ** -0.5, num_prefix)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("d", [72, 128])
def test_cuda_kernel_opcheck_and_graph(d):
    _cuda_kernel_ready()
    g = torch.Generator().manual_seed(13)
    cs, cf, owner = layout([[40, 0, 70], [25, 33]])
    q, k, v = (t.cuda() for t in qkv(g, len(owner), 4, d, torch.bfloat16))
    csd, cfd = cs.cuda(), cf.cuda()
    scale = d ** -0.5
    torch.library.opcheck(op, (q, k, v, csd, cfd, "block_causal", scale, 1))
    # no host sync inside the op: it can be captured in a CUDA graph and replayed on new values
    sq = q.clone()
    graph, out = capture_graph(lambda: op(sq, k, v, csd, cfd, "block_causal", scale, 0))
    q2 = torch.randn(q.shape, generator=g).to("cuda", q.dtype)
    sq.copy_(q2)
    graph.replay()
    torch.cuda.synchronize()
    check_against_reference(out, q2, k, v, cs, cf, "block_causal", scale, 0)


@pytest.mark.cuda
@cuda
def test_cuda_kernel_timing_print():
    """Not an assertion: compiled kernel vs torch's paths on a SigLIP-B layer's attention (run with -s)."""
    _cuda_kernel_ready()
    g = torch.Generator().manual_seed(14)
    lens = [[49] * 16 for _ in range(32)]  # 32 clips x 16 frames, a quarter of the 196 tokens per frame
    cs, cf, owner = layout(lens)
    q, k, v = (t.cuda() for t in qkv(g, len(owner), 12, 64, torch.bfloat16))
    csd, cfd = cs.cuda(), cf.cuda()
    rows = []
    for mode in MODES:
        times = {}
        for backend in CUDA_BACKENDS:
            fn = (lambda b=backend: varlen_attention(q, k, v, csd, cfd, mode, validate=False, backend=b))
            for _ in range(5):
                fn()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(20):
                fn()
            end.record()
            torch.cuda.synchronize()
            times[backend] = start.elapsed_time(end) / 20
        rows.append(f"{mode:18} " + "  ".join(f"{b} {t:.3f} ms" for b, t in times.items()))
    print(f"\nvarlen_attention, {len(owner)} tokens, 12 heads x 64, bf16, on {torch.cuda.get_device_name()}:")
    print("\n".join(rows))


def test_torch_varlen_kwargs_follow_the_installed_signature(monkeypatch):
    """Older torch varlen_attn (no window_size / seqused_k): plans that need them fall back to SDPA."""
    import autogaze_ext.ops.varlen as mod

    def old(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, is_causal=False):
        raise AssertionError("not called here")

    def new(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
            window_size=(-1, -1), seqused_k=None, num_splits=None):
        raise AssertionError("not called here")

    monkeypatch.setattr(mod, "_torch_varlen", lambda: old)
    assert mod._torch_varlen_kwargs(True, None, 0.1, "cpu") == {"scale": 0.1, "is_causal": True}
    assert mod._torch_varlen_kwargs(False, [3, 5], 0.1, "cpu") is None
    monkeypatch.setattr(mod, "_torch_varlen", lambda: new)
    kw = mod._torch_varlen_kwargs(False, [3, 5], 0.1, "cpu")
    assert kw["window_size"] == (-1, -1) and kw["seqused_k"].tolist() == [3, 5] and kw["num_splits"] == 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 42])  # the cp.async tensor-core kernel; the 32-bit-load one (d % 8 != 0)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_hidden_nonfinite_values_are_absent(device, dtype, d, value):
    """A NaN or Inf in the value of a token reaches exactly the rows that see it (causal: the token and the
    rows after it in its video; block_causal: its frame and the later ones), on every kernel; the other rows
    equal a run without it -- hidden keys are absent, not weighted by 0."""
    if not common.HAS_EXTENSION:
        pytest.skip("compiled extension missing")
    if device == "cuda" and dtype != torch.float32:
        _cuda_kernel_ready()
    g = torch.Generator().manual_seed(d)
    lens = [[30, 0, 70, 1], [5, 200, 3]]
    cs, cf, owner = layout(lens)
    q, k, v = qkv(g, len(owner), 2, d, dtype)
    j = 60  # video 0, frame 2 (tokens 30..99)
    bad = v.clone()
    bad[j, 1, 3] = value
    for mode in ("causal", "block_causal", "frame_independent"):
        args = [t.to(device) for t in (cs, cf)] + [mode, d ** -0.5, 0]
        clean = op(q.to(device), k.to(device), v.to(device), *args).cpu()
        out = op(q.to(device), k.to(device), bad.to(device), *args).cpu()
        sees = torch.tensor([b == 0 and {"causal": i >= j, "block_causal": t >= 2,
                                         "frame_independent": t == 2}[mode] for i, (b, t) in enumerate(owner)])
        assert not torch.isfinite(out[sees, 1, 3]).any(), mode
        rest = torch.ones_like(out, dtype=torch.bool)
        rest[sees, 1, 3] = False
        assert torch.isfinite(out[rest]).all(), mode
        atol, rtol = ELEMENT_TOL.get(dtype, (1e-5, 1e-5))
        torch.testing.assert_close(out[rest], clean[rest], atol=atol, rtol=rtol)
