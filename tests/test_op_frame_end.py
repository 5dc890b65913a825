"""frame_end: compiled kernels vs the pure-PyTorch reference (FastGazeRunner.end_frame's bookkeeping, spec §5.6)."""

import pytest
import torch

from conftest import capture_graph, clone_state

from autogaze_ext.ops import _common as common, frame as frame_ops

op = torch.ops.autogaze_ext.frame_end if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EOS = 265
STATE = ("key_valid", "count", "pend", "pend_len", "out_ids", "out_n")
ARGS = ("fids", "n", "frame_start", "t") + STATE


def make_state(seed, B, W=40, K=10, L=200, T=4, n=23, frame_start=17, t=2, p_pad=0.3):
    """Random frame ids (pads at random) and random prior state, so that every write is visible."""
    g = torch.Generator().manual_seed(seed)
    fids = torch.randint(0, EOS, (B, W), generator=g)
    fids[torch.rand(B, W, generator=g) < p_pad] = EOS
    return {
        "fids": fids, "n": torch.tensor([n]), "frame_start": torch.tensor([frame_start]), "t": torch.tensor([t]),
        "key_valid": torch.rand(B, L, generator=g) < 0.5, "count": torch.randint(0, 500, (B,), generator=g),
        "pend": torch.randint(-9, 9, (B, K), generator=g), "pend_len": torch.tensor([-7]),
        "out_ids": torch.randint(-9, 9, (B, T, W), generator=g), "out_n": torch.randint(-9, 9, (T,), generator=g),
    }



def run(fn, s):
    fn(*(s[a] for a in ARGS), EOS)
    return s


def assert_same(a, b):
    for k in STATE:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


# n: none, one slot, exactly a chunk, a chunk and one, a full window, past the window (clamped), negative (clamped)
N_VALUES = [0, 1, 10, 11, 23, 40, 45, -3]


@needs_ext
@pytest.mark.parametrize("n", N_VALUES)
@pytest.mark.parametrize("B, K", [(1, 10), (3, 10), (2, 1), (4, 7)])
def test_cpu_matches_reference(n, B, K):
    s = make_state(n + 100 * B + K, B, K=K, n=n)
    ref = run(frame_ops.frame_end_reference, clone_state(s))
    got = run(op, clone_state(s))
    assert_same(got, ref)


def test_reference_semantics_by_hand():
    """One row worked out: n = 23, K = 10 -> 20 ids fed (2 chunks), ids 20..22 pending."""
    s = make_state(0, 1, n=23)
    f = s["fids"][0]
    before = clone_state(s)
    out = run(frame_ops.frame_end_reference, clone_state(s))
    real = f[:20] != EOS
    assert torch.equal(out["key_valid"][0, 17:37], real)
    assert torch.equal(out["key_valid"][0, :17], before["key_valid"][0, :17])
    assert torch.equal(out["key_valid"][0, 37:], before["key_valid"][0, 37:])
    assert out["count"][0] == before["count"][0] + int(real.sum())
    assert out["pend"][0].tolist() == f[20:23].tolist() + [EOS] * 7
    assert out["pend_len"].item() == 3
    assert torch.equal(out["out_ids"][0, 2], f) and out["out_n"][2] == 23
    assert torch.equal(out["out_ids"][:, [0, 1, 3]], before["out_ids"][:, [0, 1, 3]])


@needs_ext
def test_out_of_range_slots_and_frame_are_skipped():
    s = make_state(1, 2, L=50, frame_start=40, t=7, n=31)  # fed = 30 slots from 40: 10 inside the cache
    before = clone_state(s)
    got = run(op, clone_state(s))
    real = s["fids"][:, :10] != EOS
    assert torch.equal(got["key_valid"][:, 40:], real)
    assert torch.equal(got["key_valid"][:, :40], before["key_valid"][:, :40])
    assert torch.equal(got["count"], before["count"] + (s["fids"][:, :30] != EOS).sum(1))
    assert torch.equal(got["out_ids"], before["out_ids"]) and torch.equal(got["out_n"], before["out_n"])
    for start in (-30, -10**12, 10**12):  # every slot outside: nothing written
        s2 = clone_state(s)
        s2["frame_start"].fill_(start)
        assert torch.equal(run(op, s2)["key_valid"], before["key_valid"])
    s2 = clone_state(s)
    s2["frame_start"].fill_(-5)  # slots -5..24: only the 5 before the cache are skipped
    got = run(op, s2)["key_valid"]
    assert torch.equal(got[:, :25], s["fids"][:, 5:30] != EOS) and torch.equal(got[:, 25:], before["key_valid"][:, 25:])


@needs_ext
def test_empty_batch_still_sets_the_scalars():
    s = make_state(2, 0, n=13, t=1)
    got = run(op, clone_state(s))
    assert got["pend_len"].item() == 3 and got["out_n"][1] == 13


@pytest.mark.parametrize("field, value, exc, match", [
    ("fids", torch.zeros(2, 40, dtype=torch.int32), TypeError, "fids must have dtype torch.int64"),
    ("fids", torch.zeros(2, 0, dtype=torch.long), ValueError, "fids must be"),
    ("key_valid", torch.zeros(2, 10), TypeError, "key_valid must have dtype torch.bool"),
    ("key_valid", torch.zeros(3, 10, dtype=torch.bool), ValueError, "key_valid must be"),
    ("n", torch.tensor([1, 2]), ValueError, "n must hold one element"),
    ("count", torch.zeros(3, dtype=torch.long), ValueError, "count must have shape"),
    ("pend", torch.zeros(2, 41, dtype=torch.long), ValueError, "pend must be"),
    ("out_ids", torch.zeros(2, 4, 39, dtype=torch.long), ValueError, "out_ids must be"),
    ("out_n", torch.zeros(5, dtype=torch.long), ValueError, "out_n must have shape"),
    ("out_ids", torch.zeros(2, 40, 4, dtype=torch.long).transpose(1, 2), ValueError, "contiguous"),
])
def test_bad_arguments(field, value, exc, match):
    s = make_state(3, 2)
    s[field] = value
    with pytest.raises(exc, match=match):
        frame_ops.frame_end(*(s[a] for a in ARGS), EOS)


def test_bad_eos():
    s = make_state(3, 2)
    with pytest.raises(TypeError, match="eos must be an int"):
        frame_ops.frame_end(*(s[a] for a in ARGS), 265.0)


@needs_ext
def test_op_checks_its_own_arguments():
    s = make_state(4, 2)
    s["count"] = s["count"].float()
    with pytest.raises(RuntimeError, match="count must be Long"):
        run(op, s)


@needs_ext
def test_opcheck():
    torch.library.opcheck(op, tuple(make_state(5, 3)[a] for a in ARGS) + (EOS,))


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("n", N_VALUES)
@pytest.mark.parametrize("B, K, W", [(1, 10, 40), (3, 10, 40), (64, 10, 284), (2, 1, 300), (5, 7, 130)])
def test_cuda_matches_cpu(n, B, K, W):
    assert common.HAS_CUDA_KERNELS, "built without CUDA kernels"
    s = make_state(7 * n + B + W, B, W=W, K=K, L=700, n=n, frame_start=300)
    want = run(op, clone_state(s))
    got = run(op, clone_state(s, "cuda"))  # the prior state is random: every element the kernel must write differs
    assert_same(got, want)


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_edges_match_cpu():
    for kw in (dict(B=0, n=13, t=1), dict(B=2, L=50, frame_start=40, t=7, n=31), dict(B=2, frame_start=-5, n=31)):
        B = kw.pop("B")
        s = make_state(8, B, **kw)
        assert_same(run(op, clone_state(s, "cuda")), run(op, clone_state(s)))


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_graph_reads_device_values_at_replay():
    s = clone_state(make_state(9, 3, n=5, t=0), "cuda")
    torch.library.opcheck(op, tuple(s[a] for a in ARGS) + (EOS,))
    g, _ = capture_graph(lambda: run(op, s), warmup=lambda: run(op, clone_state(s)))
    host = clone_state(s, "cpu")
    for n, t in ((17, 1), (40, 3)):
        s["n"].fill_(n), s["t"].fill_(t)
        host["n"].fill_(n), host["t"].fill_(t)
        g.replay()
        run(op, host)
        torch.cuda.synchronize()
        assert_same(s, host)
