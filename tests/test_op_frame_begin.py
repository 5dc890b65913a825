"""frame_begin: compiled kernels vs the pure-PyTorch reference (FastGazeRunner.prefill's input assembly,
spec §5.1 and §5.6)."""

import pytest
import torch

from conftest import capture_graph, clone_state

from autogaze_ext.ops import _common as common, frame as frame_ops

op = torch.ops.autogaze_ext.frame_begin if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EOS = 265
STATE = ("key_valid", "count", "tail_pos")
ARGS = ("pend", "pend_len", "vision", "t", "embed_weight", "start") + STATE


def make_state(seed, B, K=10, NV=12, D=24, T=3, L=120, V=266, NT=None, pend_len=7, t=1, start=30, p_pad=0.3):
    """Random pending ids (pads at random), vision, table and prior state, so that every write is visible."""
    g = torch.Generator().manual_seed(seed)
    pend = torch.randint(0, V, (B, K), generator=g)
    pend[torch.rand(B, K, generator=g) < p_pad] = EOS
    return {
        "pend": pend, "pend_len": torch.tensor([pend_len]), "vision": torch.randn(B, T, NV, D, generator=g),
        "t": torch.tensor([t]), "embed_weight": torch.randn(V, D, generator=g), "start": torch.tensor([start]),
        "key_valid": torch.rand(B, L, generator=g) < 0.5, "count": torch.randint(0, 500, (B,), generator=g),
        "tail_pos": torch.randint(-9, 9, (B, NT or K), generator=g),
    }



def run(fn, s):
    x, pos = fn(*(s[a] for a in ARGS), EOS)
    return x, pos, s


def assert_same(a, b):
    assert torch.equal(a[0].cpu(), b[0].cpu()), "x"
    assert torch.equal(a[1].cpu(), b[1].cpu()), "positions"
    for k in STATE:
        assert torch.equal(a[2][k].cpu(), b[2][k].cpu()), k


# pend_len: nothing pending, one, part of the chunk, all of it, more than K (every id counts), negative
PEND_LEN = [0, 1, 7, 10, 15, -2]


@needs_ext
@pytest.mark.parametrize("pend_len", PEND_LEN)
@pytest.mark.parametrize("B, K, NT", [(1, 10, None), (3, 10, None), (2, 1, None), (4, 7, 3)])
def test_cpu_matches_reference(pend_len, B, K, NT):
    s = make_state(pend_len + 10 * B + K, B, K=K, NT=NT, pend_len=pend_len)
    assert_same(run(op, clone_state(s)), run(frame_ops.frame_begin_reference, clone_state(s)))


def test_reference_semantics_by_hand():
    """One row: 3 of 5 pending ids count (k < pend_len = 4, one of them a pad), then 2 vision tokens."""
    s = make_state(0, 1, K=5, NV=2, pend_len=4, t=2, start=10, NT=3)
    s["pend"][0] = torch.tensor([7, EOS, 9, 11, 12])
    s["count"][0] = 100
    before = clone_state(s)
    x, pos, out = run(frame_ops.frame_begin_reference, clone_state(s))
    assert torch.equal(x[0, :5], s["embed_weight"][[7, EOS, 9, 11, 12]])
    assert torch.equal(x[0, 5:], s["vision"][0, 2])
    assert pos[0].tolist() == [100, 100, 101, 102, 102, 103, 104]
    assert out["key_valid"][0, 10:17].tolist() == [True, False, True, True, False, True, True]
    assert torch.equal(out["key_valid"][0, :10], before["key_valid"][0, :10])
    assert torch.equal(out["key_valid"][0, 17:], before["key_valid"][0, 17:])
    assert out["count"][0] == 105 and out["tail_pos"][0].tolist() == [102, 103, 104]


@needs_ext
def test_out_of_range_values_give_zero_rows_and_skip_slots():
    s = make_state(1, 2, L=40, start=30, t=5, NV=12)  # t past the clip; slots 30..51 of a 40-slot cache
    s["pend"][0, 0] = 9999  # an id outside the table
    before = clone_state(s)
    x, pos, out = run(op, clone_state(s))
    assert torch.equal(x[:, 10:], torch.zeros_like(x[:, 10:])) and torch.equal(x[0, 0], torch.zeros(24))
    assert torch.equal(out["key_valid"][:, :30], before["key_valid"][:, :30])
    valid = torch.cat([(torch.arange(10) < 7) & (s["pend"] != EOS), torch.ones(2, 12, dtype=torch.bool)], dim=1)
    assert torch.equal(out["key_valid"][:, 30:], valid[:, :10])
    assert torch.equal(pos, before["count"][:, None] + valid.long().cumsum(1) - 1)
    for start in (-50, -10**12, 10**12):  # every slot outside: nothing written
        s2 = clone_state(s)
        s2["start"].fill_(start)
        assert torch.equal(run(op, s2)[2]["key_valid"], before["key_valid"])
    s2 = clone_state(s)
    s2["start"].fill_(-5)  # slots -5..16: only the 5 before the cache are skipped
    got = run(op, s2)[2]["key_valid"]
    assert torch.equal(got[:, :17], valid[:, 5:]) and torch.equal(got[:, 17:], before["key_valid"][:, 17:])


@needs_ext
def test_empty_batch():
    x, pos, _ = run(op, make_state(2, 0))
    assert x.shape == (0, 22, 24) and pos.shape == (0, 22)


@pytest.mark.parametrize("field, value, exc, match", [
    ("pend", torch.zeros(2, 10, dtype=torch.int32), TypeError, "pend must have dtype torch.int64"),
    ("pend", torch.zeros(2, 0, dtype=torch.long), ValueError, "pend must be"),
    ("vision", torch.zeros(2, 3, 12, 24, dtype=torch.float64), TypeError, "vision must have dtype torch.float32"),
    ("vision", torch.zeros(3, 3, 12, 24), ValueError, "vision must be"),
    ("embed_weight", torch.zeros(266, 23), ValueError, "embed_weight must be"),
    ("t", torch.tensor([1, 2]), ValueError, "t must hold one element"),
    ("key_valid", torch.zeros(2, 10, dtype=torch.long), TypeError, "key_valid must have dtype torch.bool"),
    ("count", torch.zeros(3, dtype=torch.long), ValueError, "count must have shape"),
    ("tail_pos", torch.zeros(2, 23, dtype=torch.long), ValueError, "tail_pos must be"),
    ("tail_pos", torch.zeros(10, 2, dtype=torch.long).t(), ValueError, "contiguous"),
])
def test_bad_arguments(field, value, exc, match):
    s = make_state(3, 2)
    s[field] = value
    with pytest.raises(exc, match=match):
        frame_ops.frame_begin(*(s[a] for a in ARGS), EOS)


@needs_ext
def test_op_checks_its_own_arguments():
    s = make_state(4, 2)
    s["tail_pos"] = s["tail_pos"].float()
    with pytest.raises(RuntimeError, match="tail_pos must be Long"):
        run(op, s)


@needs_ext
def test_opcheck():
    torch.library.opcheck(op, tuple(make_state(5, 3)[a] for a in ARGS) + (EOS,))


@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("pend_len", PEND_LEN)
@pytest.mark.parametrize("B, K, NV, D", [(1, 10, 196, 192), (3, 10, 12, 24), (64, 10, 196, 192), (2, 1, 5, 7)])
def test_cuda_matches_cpu(pend_len, B, K, NV, D):
    assert common.HAS_CUDA_KERNELS, "built without CUDA kernels"
    s = make_state(pend_len + B + NV, B, K=K, NV=NV, D=D, L=700, start=300, pend_len=pend_len)
    assert_same(run(op, clone_state(s, "cuda")), run(op, clone_state(s)))  # random prior state: every write is visible


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_edges_match_cpu():
    for kw in (dict(L=40, start=30, t=5), dict(start=-5, t=-1), dict(pend_len=0, NT=1)):
        s = make_state(8, 2, **kw)
        s["pend"][1, 3] = -4  # an id outside the table
        assert_same(run(op, clone_state(s, "cuda")), run(op, clone_state(s)))


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_graph_reads_device_values_at_replay():
    s = clone_state(make_state(9, 3), "cuda")
    torch.library.opcheck(op, tuple(s[a] for a in ARGS) + (EOS,))
    g, (x, pos, _) = capture_graph(lambda: run(op, s), warmup=lambda: run(op, clone_state(s)))
    host = clone_state(s, "cpu")
    for pend_len, t, start in ((3, 0, 5), (10, 2, 60)):
        for d in (s, host):
            d["pend_len"].fill_(pend_len), d["t"].fill_(t), d["start"].fill_(start)
        g.replay()
        want = run(op, host)
        torch.cuda.synchronize()
        assert_same((x, pos, s), want)
