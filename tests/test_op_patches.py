"""multiscale_patches, multiscale_pos_table and gather_patches vs the official computation
(F.interpolate bicubic + unfold + cat, then index; spec §3.4, §6.1)."""

import pytest
import torch
import torch.nn.functional as F

from autogaze_ext.ops import _common as common
from autogaze_ext.ops.patches import (NATIVE_SCALES, gather_patches, gather_patches_reference, multiscale_patches,
                                       multiscale_patches_reference, multiscale_pos_table,
                                       multiscale_pos_table_reference, patch_grids)

from conftest import capture_graph, data_dir, fixture_dir, on_side_stream, poison_cuda_cache

dense_op = torch.ops.autogaze_ext.multiscale_patches if common.HAS_EXTENSION else None
gather_op = torch.ops.autogaze_ext.gather_patches if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = 1e-6  # fp32 relative error (norm) against the reference
TARGET_SCALES = (56, 112, 196, 392)

# (C, H, W, scales, patch): native (V = 265), SigLIP2-so400m tiles (V = 1060), odd sizes with upscaling
# (scales above the frame), non-square frames, scales not divisible by the patch, one scale, one channel,
# a repeated scale.
LAYOUTS = {
    "native": (3, 224, 224, NATIVE_SCALES, 16),
    "target": (3, 392, 392, TARGET_SCALES, 14),
    "odd": (2, 37, 53, (5, 17, 40, 70), 3),
    "nonsquare": (3, 100, 60, (33, 64), 16),
    "wide": (3, 224, 398, NATIVE_SCALES, 16),
    "one_scale": (1, 50, 50, (50,), 7),
    "patch1": (4, 9, 9, (3, 9, 12), 1),
    "remainder": (3, 232, 232, (64, 232), 16),  # the frame-size scale copied, its last 8 pixels dropped
    "repeated": (3, 64, 64, (32, 64, 64), 16),
}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def frames_like(seed, shape, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 1.5).to(device)


def check_close(out, ref, tol=TOL):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    out, ref = out.cpu(), ref.cpu()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= tol, rel_err(out, ref)
    assert (out - ref).abs().max() <= 20 * tol * ref.abs().max()


def make_gaze(seed, B, N, T, V, pad_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, T * V, (B, N), generator=g)
    pad = torch.rand(B, N, generator=g) < pad_frac
    junk = torch.randint(-(2**40), 2**40, (B, N), generator=g)
    return torch.where(pad, junk, pos), pad


# ------------------------------------------------------------------------------------------ dense


@needs_ext
@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("N", [1, 3])
def test_dense_matches_reference(name, N):
    C, H, W, scales, p = LAYOUTS[name]
    x = frames_like(N + H, (N, C, H, W))
    out = dense_op(x, list(scales), p)
    V = sum(g * g for g in patch_grids(scales, p))
    assert out.shape == (N, V, C * p * p)
    check_close(out, multiscale_patches_reference(x, scales, p))


@needs_ext
def test_dense_counts_and_identity_scale():
    x = frames_like(0, (2, 3, 224, 224))
    out = multiscale_patches(x)
    assert out.shape == (2, 265, 768)
    # the 224 scale is the frame itself: exact copy of unfold
    assert torch.equal(out[:, 69:], F.unfold(x, 16, stride=16).transpose(1, 2))
    assert multiscale_patches(frames_like(0, (1, 3, 392, 392)), TARGET_SCALES, 14).shape == (1, 1060, 588)


@needs_ext
def test_dense_wrapper_shapes():
    x = frames_like(1, (2, 4, 3, 64, 80))
    out = multiscale_patches(x, (16, 32, 64), 16)
    ref = multiscale_patches_reference(x.flatten(0, 1), (16, 32, 64), 16)
    assert out.shape == (2, 4, 21, 768) and torch.equal(out.flatten(0, 1), dense_op(x.flatten(0, 1), [16, 32, 64], 16))
    check_close(out.flatten(0, 1), ref)
    assert multiscale_patches(x[:0]).shape == (0, 4, 265, 768)
    nc = x.transpose(-1, -2)  # non-contiguous input
    check_close(multiscale_patches(nc, (16, 32), 16).flatten(0, 1),
                multiscale_patches_reference(nc.flatten(0, 1), (16, 32), 16))


@needs_ext
def test_dense_real_video():
    d = fixture_dir()
    if d is None:
        pytest.skip("official fixtures not found")
    from safetensors.torch import load_file

    video = load_file(str(d / "cases.safetensors"))["inputs/video_224"][0]
    check_close(multiscale_patches(video), multiscale_patches_reference(video, NATIVE_SCALES, 16))
    v392 = load_file(str(d / "cases.safetensors"))["inputs/video_392"][0]
    check_close(multiscale_patches(v392, TARGET_SCALES, 14), multiscale_patches_reference(v392, TARGET_SCALES, 14))


def _example_video_frames(n=16):
    d = data_dir()
    if d is None or not (d / "example_input.mp4").is_file():
        pytest.skip("example_input.mp4 not found")
    av = pytest.importorskip("av")
    frames = []
    with av.open(str(d / "example_input.mp4")) as c:
        for f in c.decode(video=0):
            frames.append(torch.from_numpy(f.to_ndarray(format="rgb24")))
            if len(frames) == n:
                break
    return torch.stack(frames)


@needs_ext
def test_dense_and_gather_example_video():
    from autogaze_ext.processor import AutoGazeImageProcessor

    video = AutoGazeImageProcessor()(_example_video_frames())  # (1, 16, 3, 224, 224)
    check_close(multiscale_patches(video[0]), multiscale_patches_reference(video[0], NATIVE_SCALES, 16))
    pos, pad = make_gaze(3, 1, 300, 16, 265)
    got, cu = gather_patches(video, pos, pad)
    ref, rcu = gather_patches_reference(video, pos, pad, NATIVE_SCALES, 16, packed_rows=got.shape[0])
    check_close(got, ref)
    assert torch.equal(cu, rcu)


# ------------------------------------------------------------------------------------- position table


@needs_ext
@pytest.mark.parametrize("G,grids", [(14, (2, 4, 7, 14)), (27, (4, 8, 14, 28)), (16, (3, 16, 40)), (1, (1, 2))])
def test_pos_table(G, grids):
    pe = frames_like(G, (G * G, 24))
    got = multiscale_pos_table(pe, grids)
    ref = multiscale_pos_table_reference(pe, grids)
    check_close(got, ref)
    if G in grids:  # the native grid is the learned table itself
        start = sum(g * g for g in grids[:grids.index(G)])
        assert torch.equal(got[start:start + G * G], pe)


def test_pos_table_errors():
    with pytest.raises(ValueError, match="square"):
        multiscale_pos_table(torch.zeros(15, 4), (2,))
    with pytest.raises(TypeError, match="pos_embed"):
        multiscale_pos_table(torch.zeros(16, 4, dtype=torch.long), (2,))
    with pytest.raises(ValueError, match="grids"):
        multiscale_pos_table(torch.zeros(16, 4), (2, 0))


# ------------------------------------------------------------------------------------------ gather


def _embed_params(seed, D, K, V, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(D, K, generator=g) * 2 - 1) / K**0.5
    b = torch.randn(D, generator=g) * 0.1
    pt = torch.randn(V, D, generator=g) * 0.2
    return w.to(device, dtype), b.to(device, dtype), pt.to(device, dtype)


def _check_gather(frames, pos, pad, scales, p, embed, packed, tol=TOL, total=None, dtype=torch.float32):
    B, T, C = frames.shape[:3]
    V = sum(g * g for g in patch_grids(scales, p))
    kw = {}
    if embed:
        w, b, pt = _embed_params(1, 40, C * p * p, V, dtype, frames.device)
        kw = dict(weight=w, bias=b, pos_table=pt)
    got, cu = gather_patches(frames, pos, pad, scales, p, packed=packed, total=total, validate=False, **kw)
    rows = got.shape[0] if packed else -1
    ref, rcu = gather_patches_reference(frames.cpu(), pos.cpu(), pad.cpu(), scales, p,
                                        *(t.cpu() for t in kw.values()), packed_rows=rows)
    assert torch.equal(cu.cpu(), rcu)
    if ref.numel():
        check_close(got, ref, tol)
    else:
        assert got.shape == ref.shape
    return got, cu


@needs_ext
@pytest.mark.parametrize("name", ["native", "target", "odd", "nonsquare"])
@pytest.mark.parametrize("embed", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gather_matches_reference(name, embed, packed):
    C, H, W, scales, p = LAYOUTS[name]
    V = sum(g * g for g in patch_grids(scales, p))
    B, T = 2, 3
    x = frames_like(H, (B, T, C, H, W))
    pos, pad = make_gaze(H + embed, B, 57, T, V)
    _check_gather(x, pos, pad, scales, p, embed, packed, tol=TOL if not embed else 1e-5)


@needs_ext
def test_gather_edges():
    x = frames_like(5, (2, 1, 3, 224, 224))  # one frame
    one = torch.tensor([[264], [0]])
    no_pad = torch.zeros_like(one, dtype=torch.bool)
    got, cu = _check_gather(x, one, no_pad, NATIVE_SCALES, 16, False, True)  # one token per row
    assert got.shape == (2, 768) and cu.tolist() == [0, 1, 2]
    assert torch.equal(got[0], F.unfold(x[0], 16, stride=16).transpose(1, 2)[0, 195])
    every = torch.randperm(265).expand(2, 265).contiguous()  # all 265 tokens
    got, _ = _check_gather(x, every, torch.zeros_like(every, dtype=torch.bool), NATIVE_SCALES, 16, True, True, 1e-5)
    dense = multiscale_patches(x[:, 0])
    got, _ = gather_patches(x, every, torch.zeros_like(every, dtype=torch.bool))
    assert torch.equal(got.view(2, 265, 768), dense[:, every[0]])
    # all padded, empty N, B=0
    pos, pad = make_gaze(1, 2, 9, 1, 265, pad_frac=1.0)
    got, cu = _check_gather(x, pos, pad, NATIVE_SCALES, 16, True, True)
    assert got.shape == (0, 40) and cu.tolist() == [0, 0, 0]
    got, cu = _check_gather(x, pos, pad, NATIVE_SCALES, 16, False, False)  # per-slot: all dummies (token 0)
    assert torch.equal(got, dense[:, :1].expand(2, 9, 768))
    e = torch.empty(2, 0, dtype=torch.long)
    got, cu = gather_patches(x, e, e.bool())
    assert got.shape == (0, 768) and cu.tolist() == [0, 0, 0]
    got, cu = gather_patches(x[:0], e[:0], e[:0].bool(), packed=False)
    assert got.shape == (0, 0, 768) and cu.tolist() == [0]


@needs_ext
def test_gather_total_argument():
    x = frames_like(6, (2, 2, 3, 64, 64))
    scales = (16, 32, 64)
    pos, pad = make_gaze(2, 2, 20, 2, 21)
    real = int((~pad).sum())
    more, cu = _check_gather(x, pos, pad, scales, 16, True, True, 1e-5, total=real + 5)  # zero tail
    assert more.shape[0] == real + 5 and not more[real:].any() and cu[-1] == real
    fewer, cu = _check_gather(x, pos, pad, scales, 16, False, True, total=real - 3)  # truncated, cu clamped
    exact, _ = gather_patches(x, pos, pad, scales, 16)
    assert torch.equal(fewer, exact[:real - 3]) and cu[-1] == real - 3 and (cu <= real - 3).all()


@needs_ext
def test_gather_invalid_ids_count_as_padded():
    x = frames_like(7, (1, 2, 3, 32, 32))
    pos = torch.tensor([[-5, 3, 10**9, 2 * 5 - 1, 5]])  # V = 5 with scales (16, 32) @ 16
    pad = torch.zeros_like(pos, dtype=torch.bool)
    _check_gather(x, pos, pad, (16, 32), 16, False, True)
    got, cu = gather_patches(x, pos, pad, (16, 32), 16, validate=False)
    assert got.shape[0] == 3 and cu.tolist() == [0, 3]
    got, _ = gather_patches(x, pos, pad, (16, 32), 16, validate=False, packed=False)
    dense = multiscale_patches(x[0], (16, 32), 16).reshape(10, -1)
    assert torch.equal(got[0, 0], dense[0]) and torch.equal(got[0, 2], dense[0]) and torch.equal(got[0, 1], dense[3])
    with pytest.raises(ValueError, match="gazing_pos.*-5"):
        gather_patches(x, pos, pad, (16, 32), 16)


@needs_ext
def test_gather_conv_weight_and_bf16():
    C, H, W, scales, p = LAYOUTS["native"]
    x = frames_like(8, (1, 2, C, H, W))
    pos, pad = make_gaze(8, 1, 40, 2, 265)
    w, b, pt = _embed_params(2, 32, 768, 265)
    a, _ = gather_patches(x, pos, pad, weight=w.view(32, 3, 16, 16), bias=b, pos_table=pt)
    bb, _ = gather_patches(x, pos, pad, weight=w, bias=b, pos_table=pt)
    assert torch.equal(a, bb)
    for dt in (torch.bfloat16, torch.float16):
        _check_gather(x, pos, pad, scales, p, True, True, tol=1e-2, dtype=dt)
    only_w, _ = gather_patches(x, pos, pad, weight=w)
    ref, _ = gather_patches_reference(x, pos, pad, scales, p, w, packed_rows=only_w.shape[0])
    check_close(only_w, ref, 1e-5)


@needs_ext
def test_gather_siglip_fixture():
    """The official SigLIP patch embeddings (gathered, embedded, position-embedded; padded rows = dummy)."""
    d = fixture_dir()
    if d is None:
        pytest.skip("official fixtures not found")
    from safetensors.torch import load_file

    fx = load_file(str(d / "siglip" / "fixture.safetensors"))
    w = load_file(str(d / "siglip" / "model.safetensors"))
    emb = "vision_model.embeddings."
    table = multiscale_pos_table(w[emb + "position_embedding.weight"], patch_grids(NATIVE_SCALES, 16))
    pad = fx["if_padded_gazing"].bool()
    kw = dict(weight=w[emb + "patch_embedding.weight"], bias=w[emb + "patch_embedding.bias"], pos_table=table)
    per_slot, cu = gather_patches(fx["video"], fx["gazing_pos"], pad, packed=False, **kw)
    check_close(per_slot, fx["embeddings"], 1e-5)
    packed, cu = gather_patches(fx["video"], fx["gazing_pos"], pad, **kw)
    check_close(packed, fx["embeddings"][~pad], 1e-5)
    assert cu.tolist() == [0, int((~pad).sum())]


def test_fallback_without_extension(monkeypatch):
    x = frames_like(9, (1, 2, 3, 64, 64))
    pos, pad = make_gaze(9, 1, 30, 2, 21)
    expected = gather_patches(x, pos, pad, (16, 32, 64), 16)
    dense = multiscale_patches(x, (16, 32, 64), 16)
    monkeypatch.setattr(common, "HAS_EXTENSION", False)
    got = gather_patches(x, pos, pad, (16, 32, 64), 16)
    check_close(got[0], expected[0])
    assert torch.equal(got[1], expected[1])
    check_close(multiscale_patches(x, (16, 32, 64), 16), dense)


def _bad_dense():
    x = torch.zeros(1, 3, 32, 32)
    yield (x.double(),), {}, TypeError, "frames must have dtype"
    yield ([1.0],), {}, TypeError, "frames must be a torch.Tensor"
    yield (torch.zeros(32, 32),), {}, ValueError, "frames must be"
    yield (torch.zeros(1, 0, 32, 32),), {}, ValueError, "frames has an empty"
    yield (x, (16, 32), 0), {}, ValueError, "patch must be >= 1"
    yield (x, (16, 32), 65), {}, ValueError, "patch must be <= 64"
    yield (x, (16, 32), 2.0), {}, TypeError, "patch must be an int"
    yield (x, (8, 32), 16), {}, ValueError, r"scales\[0\] must be >= 16"
    yield (x, (32, 16), 16), {}, ValueError, "ascending"
    yield (x, [], 16), {}, ValueError, "scales must hold"
    yield (x, 32, 16), {}, TypeError, "scales must be a sequence"
    yield (x, [16] * 9, 16), {}, ValueError, "scales must hold"
    yield (x, (16, 2**21), 16), {}, ValueError, "scales must be <="


@pytest.mark.parametrize("args,kwargs,exc,match", list(_bad_dense()))
def test_dense_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        multiscale_patches(*args, **kwargs)


def _bad_gather():
    x = torch.zeros(1, 2, 3, 32, 32)
    pos = torch.zeros(1, 4, dtype=torch.long)
    pad = torch.zeros(1, 4, dtype=torch.bool)
    w = torch.zeros(8, 768)
    yield (torch.zeros(2, 3, 32, 32), pos, pad), {}, ValueError, r"frames must be \(B, T, C, H, W\)"
    yield (x[:, :0], pos, pad), {}, ValueError, "at least one frame"
    yield (x, pos.int(), pad), {}, TypeError, "gazing_pos must have dtype"
    yield (x, pos, pad.int()), {}, TypeError, "if_padded must have dtype"
    yield (x, pos[0], pad[0]), {}, ValueError, "gazing_pos must be"
    yield (x, pos, pad[:, :3]), {}, ValueError, "if_padded shape"
    yield (x, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool)), {}, ValueError, "batch"
    yield (x, pos, pad.to("meta")), {}, ValueError, "if_padded is on"
    yield (x, pos, pad), {"bias": torch.zeros(8)}, ValueError, "need weight"
    yield (x, pos, pad), {"weight": w.long()}, TypeError, "weight must be float32"
    yield (x, pos, pad), {"weight": torch.zeros(8, 700)}, ValueError, "weight must be"
    yield (x, pos, pad), {"weight": w, "bias": torch.zeros(7)}, ValueError, "bias must be"
    yield (x, pos, pad), {"weight": w, "bias": torch.zeros(8).double()}, TypeError, "bias must have dtype"
    yield (x, pos, pad), {"weight": w, "pos_table": torch.zeros(264, 8)}, ValueError, "pos_table must be"
    yield (x, pos, pad), {"weight": w.to("meta")}, ValueError, "weight is on"
    yield (x, pos, pad), {"total": -1}, ValueError, "total must be >= 0"
    yield (x, pos, pad), {"total": 2.5}, TypeError, "total must be an int"
    yield (x, pos, pad), {"packed": False, "total": 3}, ValueError, "total is only"
    yield (x, pos, pad), {"packed": 1}, TypeError, "packed must be a bool"
    yield (x, pos, pad, (16, 8), 16), {}, ValueError, r"scales\[1\] must be >= 16"


@pytest.mark.parametrize("args,kwargs,exc,match", list(_bad_gather()))
def test_gather_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gather_patches(*args, **kwargs)


@needs_ext
def test_ops_check_their_own_arguments():
    x = torch.zeros(1, 3, 32, 32)
    for args, match in [((x, [8], 16), "scales"), ((x, [32], 0), "patch"), ((x, [32], 65), "patch"),
                        ((x.double(), [32], 16), "float32"), ((x[0], [32], 16), "frames")]:
        with pytest.raises(RuntimeError, match=match):
            dense_op(*args)
    v = torch.zeros(1, 2, 3, 32, 32)
    pos, pad = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool)
    for args, match in [((v, pos.int(), pad), "gazing_pos"), ((v, pos, pad[:, :2]), "if_padded"),
                        ((v, pos, pad, torch.zeros(4, 5)), "weight"),
                        ((v, pos, pad, None, torch.zeros(4)), "need weight"),
                        ((v, pos, pad, torch.zeros(4, 768), None, torch.zeros(3, 4)), "pos_table")]:
        full = list(args) + [None] * (6 - len(args))
        with pytest.raises(RuntimeError, match=match):
            gather_op(full[0], full[1], full[2], [16, 32], 16, full[3], full[4], full[5], -1)


@needs_ext
def test_opcheck():
    x = frames_like(1, (2, 3, 40, 48))
    torch.library.opcheck(dense_op, (x, [16, 32, 48], 16))
    v = frames_like(2, (2, 2, 3, 32, 32))
    pos, pad = make_gaze(2, 2, 7, 2, 5)
    w, b, pt = _embed_params(3, 8, 768, 5)
    torch.library.opcheck(gather_op, (v, pos, pad, [16, 32], 16, None, None, None, -1))
    torch.library.opcheck(gather_op, (v, pos, pad, [16, 32], 16, w, b, pt, int((~pad).sum())))


@needs_ext
def test_fake_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    v = frames_like(3, (2, 2, 3, 64, 64))
    pos, pad = make_gaze(3, 2, 11, 2, 21)
    w, b, pt = _embed_params(3, 8, 768, 21)
    with FakeTensorMode() as mode:
        fv = mode.from_tensor(v)
        d = dense_op(fv.flatten(0, 1), [16, 32, 64], 16)
        g, cu = gather_op(fv, mode.from_tensor(pos), mode.from_tensor(pad), [16, 32, 64], 16, mode.from_tensor(w),
                          None, mode.from_tensor(pt), 9)
    assert d.shape == (4, 21, 768) and g.shape == (9, 8) and cu.shape == (3,) and cu.dtype == torch.int32

    total = int((~pad).sum())
    fn = torch.compile(lambda a, p, q, ww, bb, tt: gather_patches(a, p, q, (16, 32, 64), 16, weight=ww, bias=bb,
                                                                  pos_table=tt, total=total, validate=False),
                       backend="aot_eager", fullgraph=True)
    got = fn(v, pos, pad, w, b, pt)
    ref = gather_patches(v, pos, pad, (16, 32, 64), 16, weight=w, bias=b, pos_table=pt)
    assert all(torch.equal(a, c) for a, c in zip(got, ref))
    dn = torch.compile(lambda a: multiscale_patches(a, (16, 32, 64), 16), backend="aot_eager", fullgraph=True)
    assert torch.equal(dn(v), multiscale_patches(v, (16, 32, 64), 16))


# ------------------------------------------------------------------------------------------------- CUDA




def _cuda_ready():
    assert common.HAS_CUDA_KERNELS, "built without CUDA kernels; the CUDA path would be the reference"


# More dense cases for the GPU kernel's paths (one block per band of rows and channel, unless a band does not
# fit 47 KB of shared memory): runtime patch sizes with and without float4 (8, 10; 2 on a tall frame), a band
# taller than the frame (32), frames of one or two pixels, strong upscaling (several output rows per source
# row), and the per-patch fallback for wide frames (resampled scales only / with the frame-size scale / p = 64).
CUDA_LAYOUTS = {
    "tiny": (1, 2, 3, (1, 2, 3, 5), 1),
    "one_pixel": (2, 1, 1, (1, 4), 1),
    "upscale": (2, 20, 20, (16, 48, 96), 16),
    "patch8": (3, 64, 64, (32, 64), 8),
    "patch10": (3, 50, 50, (20, 30, 50), 10),
    "tall_patch2": (2, 600, 40, (16, 300, 600), 2),
    "patch32": (3, 30, 30, (32, 64, 128), 32),
    "wide_fallback": (2, 64, 1024, (32, 64), 16),
    "frame_fallback": (3, 640, 640, (320, 640), 16),
    "patch64_fallback": (1, 5, 400, (64, 128), 64),
}


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("name", list(LAYOUTS) + list(CUDA_LAYOUTS))
@pytest.mark.parametrize("N", [1, 3, 5])
def test_cuda_dense(name, N):
    _cuda_ready()
    C, H, W, scales, p = {**LAYOUTS, **CUDA_LAYOUTS}[name]
    x = frames_like(N * H + W, (N, C, H, W))
    poison_cuda_cache()
    got = dense_op(x.cuda(), list(scales), p)
    V = sum(g * g for g in patch_grids(scales, p))
    assert got.shape == (N, V, C * p * p)
    check_close(got, multiscale_patches_reference(x, scales, p))
    check_close(got, dense_op(x, list(scales), p))
    check_close(got, multiscale_patches_reference(x.cuda(), scales, p))  # torch's CUDA bicubic


def _unaligned_cuda(x):
    """x's values in a view starting 4 bytes into its allocation (no float4 path)."""
    return torch.empty(x.numel() + 1, device="cuda")[1:].view(x.shape).copy_(x)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_dense_large_and_unaligned():
    _cuda_ready()
    x = frames_like(0, (64, 3, 224, 224), "cuda")
    check_close(dense_op(x, list(NATIVE_SCALES), 16), multiscale_patches_reference(x, NATIVE_SCALES, 16))
    # a view starting 4 bytes into its allocation: the float4 copy path must step aside
    xs = _unaligned_cuda(x[:3])
    poison_cuda_cache()
    check_close(dense_op(xs, list(NATIVE_SCALES), 16), multiscale_patches_reference(x[:3], NATIVE_SCALES, 16))
    t = frames_like(1, (17, 3, 392, 392), "cuda")
    for frames in (t, _unaligned_cuda(t[:2])):
        poison_cuda_cache()
        check_close(dense_op(frames, list(TARGET_SCALES), 14), multiscale_patches_reference(frames, TARGET_SCALES, 14))


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_dense_frame_scale_is_a_copy_and_matches_gather():
    """The frame-size scale is unfold's bits, and every token equals what gather_patches returns for it (the same
    bicubic arithmetic in both kernels), float4 path or not."""
    _cuda_ready()
    for scales, p, side in [(NATIVE_SCALES, 16, 224), (TARGET_SCALES, 14, 392), ((20, 30, 50), 10, 50)]:
        x = frames_like(side, (3, 3, side, side), "cuda")
        V = sum(g * g for g in patch_grids(scales, p))
        first = V - (side // p) ** 2
        for frames in (x, _unaligned_cuda(x)):
            poison_cuda_cache()
            dense = dense_op(frames, list(scales), p)
            assert torch.equal(dense[:, first:], F.unfold(frames, p, stride=p).transpose(1, 2))
            every = torch.arange(3 * V, device="cuda")[None]  # all tokens of the 3 frames, as one video
            got, _ = gather_patches(frames[None], every, torch.zeros_like(every, dtype=torch.bool), scales, p,
                                    packed=False)
            assert torch.equal(got.view(3, V, -1), dense)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_dense_inputs():
    _cuda_ready()
    x = frames_like(4, (2, 3, 64, 80), "cuda")
    nc = x.transpose(-1, -2)  # non-contiguous: the op copies it
    check_close(dense_op(nc, [16, 32, 80], 16), multiscale_patches_reference(nc.contiguous(), (16, 32, 80), 16))
    for dt in (torch.bfloat16, torch.float16, torch.float64):  # float32 frames only, as on the CPU
        with pytest.raises(RuntimeError, match="float32"):
            dense_op(x.to(dt), [16, 32], 16)
    assert dense_op(x[:0], [16, 32], 16).shape == (0, 5, 768)


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("name", ["native", "target", "odd", "nonsquare"])
@pytest.mark.parametrize("embed", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_cuda_gather(name, embed, packed):
    _cuda_ready()
    C, H, W, scales, p = LAYOUTS[name]
    V = sum(g * g for g in patch_grids(scales, p))
    B, T = 3, 4
    x = frames_like(H, (B, T, C, H, W), "cuda")
    pos, pad = make_gaze(H, B, 333, T, V)
    poison_cuda_cache()
    got, cu = _check_gather(x, pos.cuda(), pad.cuda(), scales, p, embed, packed, tol=1e-5 if embed else TOL)
    cpu, cpu_cu = gather_patches(x.cpu(), pos, pad, scales, p, packed=packed, validate=False,
                                 **(dict(zip(("weight", "bias", "pos_table"),
                                             _embed_params(1, 40, C * p * p, V))) if embed else {}))
    check_close(got, cpu, 1e-5 if embed else TOL)
    assert torch.equal(cu.cpu(), cpu_cu)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_gather_edges():
    _cuda_ready()
    x = frames_like(5, (2, 16, 3, 224, 224), "cuda")
    for seed, N, frac in [(0, 1, 0.0), (1, 265 * 16, 0.2), (2, 9, 1.0), (3, 4000, 0.9)]:
        pos, pad = make_gaze(seed, 2, N, 16, 265, frac)
        for total in (None, 0, 7, int((~pad).sum()) + 3):
            poison_cuda_cache()
            _check_gather(x, pos.cuda(), pad.cuda(), NATIVE_SCALES, 16, True, True, 1e-5, total=total)
    e = torch.empty(2, 0, dtype=torch.long, device="cuda")
    got, cu = gather_patches(x, e, e.bool())
    assert got.shape == (0, 768) and cu.tolist() == [0, 0, 0]
    bad = torch.tensor([[-5, 3, 10**9, 16 * 265 - 1], [0, 265 * 16, 1, 2]], device="cuda")
    _check_gather(x, bad, torch.zeros_like(bad, dtype=torch.bool), NATIVE_SCALES, 16, True, False, 1e-5)
    pos, pad = make_gaze(4, 2, 100, 16, 265)
    for dt in (torch.bfloat16, torch.float16):
        _check_gather(x, pos.cuda(), pad.cuda(), NATIVE_SCALES, 16, True, True, 1e-2, dtype=dt)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_opcheck_stream_and_graph():
    _cuda_ready()
    torch.backends.cuda.matmul.allow_tf32 = False
    x = frames_like(1, (2, 4, 3, 224, 224), "cuda")
    pos, pad = make_gaze(1, 2, 120, 4, 265)
    pos, pad = pos.cuda(), pad.cuda()
    w, b, pt = _embed_params(1, 64, 768, 265, device="cuda")
    total = int((~pad).sum())
    torch.library.opcheck(dense_op, (x[0], list(NATIVE_SCALES), 16))
    torch.library.opcheck(gather_op, (x, pos, pad, list(NATIVE_SCALES), 16, w, b, pt, total))

    got = on_side_stream(lambda: gather_op(x, pos, pad, list(NATIVE_SCALES), 16, w, b, pt, total))
    ref = gather_patches_reference(x, pos, pad, NATIVE_SCALES, 16, w, b, pt, total)
    check_close(got[0], ref[0], 1e-5)

    # CUDA graph: capture dense + packed gather with a fixed row budget, change inputs in place, replay.
    sx, spos, spad = x.clone(), pos.clone(), pad.clone()
    budget = 2 * 120
    graph, (dense, (tokens, cu)) = capture_graph(lambda: (
        dense_op(sx[0], list(NATIVE_SCALES), 16), gather_op(sx, spos, spad, list(NATIVE_SCALES), 16, w, b, pt, budget)))
    for seed in (2, 3):
        x2 = frames_like(seed, (2, 4, 3, 224, 224), "cuda")
        p2, q2 = make_gaze(seed, 2, 120, 4, 265, pad_frac=0.1 * seed)
        sx.copy_(x2)
        spos.copy_(p2)
        spad.copy_(q2)
        poison_cuda_cache()
        graph.replay()
        torch.cuda.synchronize()
        check_close(dense, multiscale_patches_reference(x2[0], NATIVE_SCALES, 16))
        ref, rcu = gather_patches_reference(x2, p2.cuda(), q2.cuda(), NATIVE_SCALES, 16, w, b, pt, budget)
        check_close(tokens, ref, 1e-5)
        assert torch.equal(cu, rcu)


def test_pos_table_gradients_are_the_reference_gradients():
    from autogaze_ext.ops.patches import multiscale_pos_table, multiscale_pos_table_reference

    g = torch.Generator().manual_seed(5)
    pos = torch.randn(196, 8, generator=g)
    weight = torch.randn(4 + 16 + 49 + 196, 8, generator=g)
    grads = []
    for fn in (multiscale_pos_table, multiscale_pos_table_reference):
        p = pos.clone().requires_grad_()
        (fn(p, [2, 4, 7, 14]) * weight).sum().backward()
        grads.append(p.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)
