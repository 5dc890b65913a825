"""varlen_attention under autograd: the compiled forward's gradients are the reference's (float64 gradcheck
of the backward path, and op vs reference gradients in float32)."""

import pytest
import torch

from autogaze_ext.ops import _common as common
from autogaze_ext.ops.varlen import MODES, varlen_attention, varlen_attention_reference
from test_op_varlen_attention import layout, qkv, random_layout

needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")


def _grads(fn, q, k, v, gout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    return torch.autograd.grad(fn(q, k, v), (q, k, v), gout)


@needs_ext
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_prefix", [0, 2])
def test_op_gradients_are_the_reference_gradients(mode, num_prefix):
    g = torch.Generator().manual_seed(7 + num_prefix)
    cs, cf, _ = layout(random_layout(g, 3, 4, 9))
    total = int(cs[-1])
    q, k, v = qkv(g, total, 2, 16)
    gout = torch.randn(total, 2, 16, generator=g)
    op = lambda q, k, v: torch.ops.autogaze_ext.varlen_attention(q, k, v, cs, cf, mode, 0.25, num_prefix)  # noqa
    ref = lambda q, k, v: varlen_attention_reference(q, k, v, cs, cf, mode, 0.25, num_prefix)  # noqa
    for a, b in zip(_grads(op, q, k, v, gout), _grads(ref, q, k, v, gout)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_ext
def test_only_requested_gradients_and_a_float64_gradcheck():
    cs, cf, _ = layout([[3, 0, 2], [1]])
    g = torch.Generator().manual_seed(3)
    q, k, v = qkv(g, 6, 1, 4)
    q.requires_grad_()
    out = varlen_attention(q, k, v, cs, cf, "block_causal", backend="compiled")
    out.sum().backward()
    assert q.grad is not None and k.grad is None and v.grad is None
    # the backward path itself (the reference) against finite differences, in float64
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: varlen_attention_reference(a, b, c, cs, cf, "block_causal", 0.5, 1), (q64, k64, v64))
