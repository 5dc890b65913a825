"""gaze_decode: compiled kernels vs the pure-PyTorch reference (spec §3.2-3.3)."""

import pytest
import torch

from conftest import capture_graph, on_side_stream, poison_cuda_cache

from autogaze_ext.ops import _common as common, gaze

NATIVE = [2, 4, 7, 14]  # V = 265
TARGET = [4, 8, 14, 28]  # V = 1060
op = torch.ops.autogaze_ext.gaze_decode if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_inputs(seed, B, N, T, grids, pad_frac=0.3):
    """Random ids (duplicates allowed); padded slots hold garbage: V*(t+1), -1+V*t or any int64."""
    g = torch.Generator().manual_seed(seed)
    V = sum(s * s for s in grids)
    pos = torch.randint(0, T * V, (B, N), generator=g)
    pad = torch.rand(B, N, generator=g) < pad_frac
    t = torch.randint(0, T, (B, N), generator=g)
    junk = torch.stack([V * (t + 1), V * t - 1, torch.randint(-(2**40), 2**40, (B, N), generator=g)])
    pick = torch.randint(0, 3, (1, B, N), generator=g)
    return torch.where(pad, junk.gather(0, pick)[0], pos), pad


def test_extension_loaded():
    assert common.HAS_EXTENSION, f"autogaze_ext._C failed to import: {common.EXTENSION_IMPORT_ERROR!r}"
    info = common.build_info()
    assert info["torch_version"] and info["cuda"] == common.HAS_CUDA_KERNELS


@needs_ext
@pytest.mark.parametrize("grids", [NATIVE, TARGET], ids=["native", "target"])
@pytest.mark.parametrize("T", [1, 16])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(seed, B, T, grids):
    pos, pad = make_inputs(seed, B, 40 * T + 3, T, grids)
    mask, coords = op(pos, pad, T, grids)
    ref_mask, ref_coords = gaze.gaze_decode_reference(pos, pad, T, grids)
    V = sum(s * s for s in grids)
    assert mask.shape == (B, T, V) and mask.dtype == torch.float32
    assert coords.shape == (B, pos.shape[1], 4) and coords.dtype == torch.int32
    assert torch.equal(mask, ref_mask) and torch.equal(coords, ref_coords)
    assert ((mask == 0) | (mask == 1)).all()
    # one entry per distinct non-padded id of each row
    for b in range(B):
        assert mask[b].sum().item() == pos[b][~pad[b]].unique().numel()
    assert (coords[pad] == -1).all() and (coords[~pad] >= 0).all()
    # the wrapper (validating) agrees
    w_mask, w_coords = gaze.gaze_decode(pos, pad, T, grids)
    assert torch.equal(w_mask, mask) and torch.equal(w_coords, coords)


@needs_ext
def test_known_ids():
    ids = torch.tensor([[0, 3, 4, 19, 20, 68, 69, 264, 265 + 69 + 15, 2 * 265 - 1]])
    mask, coords = op(ids, torch.zeros_like(ids, dtype=torch.bool), 2, NATIVE)
    assert coords[0].tolist() == [
        [0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0], [0, 1, 3, 3], [0, 2, 0, 0],
        [0, 2, 6, 6], [0, 3, 0, 0], [0, 3, 13, 13], [1, 3, 1, 1], [1, 3, 13, 13]]
    assert mask.flatten().nonzero().flatten().tolist() == ids[0].tolist()


@needs_ext
@pytest.mark.parametrize("B", [1, 3])
def test_edge_sizes(B):
    empty = torch.empty(B, 0, dtype=torch.int64)
    mask, coords = op(empty, empty.bool(), 4, NATIVE)
    assert mask.shape == (B, 4, 265) and not mask.any() and coords.shape == (B, 0, 4)

    one = torch.full((B, 1), 265 * 2 + 100)
    mask, coords = op(one, torch.zeros_like(one, dtype=torch.bool), 3, NATIVE)
    assert mask.sum().item() == B and mask[:, 2, 100].eq(1).all()
    assert coords[:, 0].tolist() == [[2, 3, 2, 3]] * B

    frame = (torch.randperm(265) + 265).expand(B, 265).contiguous()  # every token of frame 1
    mask, coords = op(frame, torch.zeros_like(frame, dtype=torch.bool), 2, NATIVE)
    assert mask[:, 1].eq(1).all() and not mask[:, 0].any()
    ref = gaze.gaze_decode_reference(frame, torch.zeros_like(frame, dtype=torch.bool), 2, NATIVE)
    assert torch.equal(coords, ref[1])

    pos, _ = make_inputs(5, B, 30, 2, NATIVE)
    mask, coords = op(pos, torch.ones_like(pos, dtype=torch.bool), 2, NATIVE)  # all padded
    assert not mask.any() and (coords == -1).all()


@needs_ext
def test_non_contiguous_inputs():
    pos, pad = make_inputs(7, 40, 3, 4, NATIVE)
    pos_t, pad_t = pos.t(), pad.t()
    assert not pos_t.is_contiguous()
    got = op(pos_t, pad_t, 4, NATIVE)
    ref = gaze.gaze_decode_reference(pos_t.contiguous(), pad_t.contiguous(), 4, NATIVE)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


@needs_ext
def test_invalid_ids_skipped_without_validation():
    pos = torch.tensor([[-5, 0, 265 * 2, 2**62, 264]])
    pad = torch.zeros_like(pos, dtype=torch.bool)
    mask, coords = gaze.gaze_decode(pos, pad, 1, NATIVE, validate=False)
    ref = gaze.gaze_decode_reference(pos, pad, 1, NATIVE)
    assert torch.equal(mask, ref[0]) and torch.equal(coords, ref[1])
    assert mask.sum().item() == 2 and coords[0, [0, 2, 3]].eq(-1).all()


def test_validation_names_gazing_pos():
    pad = torch.tensor([[False, True]])
    with pytest.raises(ValueError, match="gazing_pos.*265"):
        gaze.gaze_decode(torch.tensor([[265, 0]]), pad, 1, NATIVE)
    with pytest.raises(ValueError, match="gazing_pos.*-1"):
        gaze.gaze_decode(torch.tensor([[-1, 0]]), pad, 1, NATIVE)
    gaze.gaze_decode(torch.tensor([[0, 10**9]]), pad, 1, NATIVE)  # garbage only in a padded slot: fine


@pytest.mark.parametrize("args, exc, match", [
    (([[0]], "pad", 1, NATIVE), TypeError, "gazing_pos must be a torch.Tensor"),
    ((torch.zeros(1, 2, dtype=torch.int32), "pad", 1, NATIVE), TypeError, "gazing_pos must have dtype"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2), 1, NATIVE), TypeError, "if_padded must have dtype"),
    ((torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.bool), 1, NATIVE), ValueError, "gazing_pos must be"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool), 1, NATIVE), ValueError, "if_padded shape"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool), 0, NATIVE), ValueError, "num_frames"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool), 1.0, NATIVE), TypeError, "num_frames"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool), True, NATIVE), TypeError, "num_frames"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool), 1, []), ValueError, "grids"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool), 1, [2, 0]), ValueError, r"grids\[1\]"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool), 1, [1] * 9), ValueError, "grids"),
    ((torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool), 1, 14), TypeError, "grids"),
])
def test_bad_arguments(args, exc, match):
    args = tuple(torch.zeros(1, 2, dtype=torch.bool) if isinstance(a, str) else a for a in args)
    with pytest.raises(exc, match=match):
        gaze.gaze_decode(*args)


@needs_ext
def test_op_checks_its_own_arguments():
    pos, pad = make_inputs(0, 1, 4, 1, NATIVE)
    for grids in ([], [3, -1], [1] * 9):
        with pytest.raises(RuntimeError, match="grids"):
            op(pos, pad, 1, grids)
    with pytest.raises(RuntimeError, match="num_frames"):
        op(pos, pad, 0, NATIVE)
    with pytest.raises(RuntimeError, match="if_padded"):
        op(pos, pad[:, :2], 1, NATIVE)


def test_split_gaze_mask():
    pos, pad = make_inputs(3, 2, 50, 3, TARGET)
    mask, _ = gaze.gaze_decode(pos, pad, 3, TARGET)
    parts = gaze.split_gaze_mask(mask, TARGET)
    assert [p.shape for p in parts] == [(2, 3, g * g) for g in TARGET]
    assert torch.equal(torch.cat(parts, -1), mask)


def test_fallback_without_extension(monkeypatch):
    pos, pad = make_inputs(4, 2, 60, 2, NATIVE)
    expected = gaze.gaze_decode(pos, pad, 2, NATIVE)
    monkeypatch.setattr(common, "HAS_EXTENSION", False)
    got = gaze.gaze_decode(pos, pad, 2, NATIVE)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@needs_ext
@pytest.mark.parametrize("grids", [NATIVE, TARGET], ids=["native", "target"])
def test_opcheck(grids):
    pos, pad = make_inputs(1, 2, 33, 3, grids)
    torch.library.opcheck(op, (pos, pad, 3, grids))


@needs_ext
def test_fake_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    pos, pad = make_inputs(2, 2, 20, 4, NATIVE)
    with FakeTensorMode() as mode:
        m, c = op(mode.from_tensor(pos), mode.from_tensor(pad), 4, NATIVE)
    assert m.shape == (2, 4, 265) and m.dtype == torch.float32
    assert c.shape == (2, 20, 4) and c.dtype == torch.int32

    fn = torch.compile(lambda p, q: gaze.gaze_decode(p, q, 4, NATIVE, validate=False),
                       backend="aot_eager", fullgraph=True)
    got, ref = fn(pos, pad), op(pos, pad, 4, NATIVE)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


# ------------------------------------------------------------------------------------------------- CUDA




def _cuda_vs_cpu(pos, pad, T, grids):
    poison_cuda_cache()
    got = gaze.gaze_decode(pos.cuda(), pad.cuda(), T, grids, validate=False)
    ref = op(pos, pad, T, grids)
    for a, b in zip(got, ref):
        assert a.is_cuda and a.dtype == b.dtype and torch.equal(a.cpu(), b)


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("grids", [NATIVE, TARGET], ids=["native", "target"])
@pytest.mark.parametrize("B,T", [(1, 1), (3, 16), (2, 5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_cuda_matches_cpu(seed, B, T, grids):
    assert common.HAS_CUDA_KERNELS, "built without CUDA kernels; the CUDA path would be the reference"
    _cuda_vs_cpu(*make_inputs(seed, B, 40 * T + 3, T, grids), T, grids)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_edges():
    _cuda_vs_cpu(torch.empty(2, 0, dtype=torch.long), torch.empty(2, 0, dtype=torch.bool), 3, NATIVE)
    frame = (torch.randperm(265) + 265)[None]
    _cuda_vs_cpu(frame, torch.zeros_like(frame, dtype=torch.bool), 2, NATIVE)
    bad = torch.tensor([[-5, 0, 530, 2**62, 264]])
    _cuda_vs_cpu(bad, torch.zeros_like(bad, dtype=torch.bool), 1, NATIVE)
    pos, pad = make_inputs(9, 4, 1 << 16, 16, TARGET)  # more slots than one launch wave
    _cuda_vs_cpu(pos, pad, 16, TARGET)
    pos_t, pad_t = pos[:, :100].t(), pad[:, :100].t()  # non-contiguous
    _cuda_vs_cpu(pos_t, pad_t, 16, TARGET)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_opcheck_stream_and_graph():
    pos, pad = make_inputs(1, 2, 33, 3, NATIVE)
    pos, pad = pos.cuda(), pad.cuda()
    torch.library.opcheck(op, (pos, pad, 3, NATIVE))
    ref = op(pos.cpu(), pad.cpu(), 3, NATIVE)

    got = on_side_stream(lambda: op(pos, pad, 3, NATIVE))
    assert all(torch.equal(a.cpu(), b) for a, b in zip(got, ref))

    # CUDA graph: capture once, change the inputs in place, replay.
    static_pos, static_pad = pos.clone(), pad.clone()
    graph, out = capture_graph(lambda: op(static_pos, static_pad, 3, NATIVE))
    pos2, pad2 = make_inputs(2, 2, 33, 3, NATIVE)
    static_pos.copy_(pos2)
    static_pad.copy_(pad2)
    graph.replay()
    ref2 = op(pos2, pad2, 3, NATIVE)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(out, ref2))
