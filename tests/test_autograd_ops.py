"""Autograd through every compiled op.

Ops used in training paths (fused_linear, multiscale_patches / multiscale_pos_table, gather_patches,
varlen_attention) have a gradient: their backward differentiates the PyTorch reference, which is checked here
with gradcheck in float64 (the ops themselves are float32) and compared with the op's gradients in float32,
through the wrapper and through torch.ops directly. The decode-only ops refuse inputs that require grad while
grad mode is on, instead of returning results that autograd silently disconnects from them (the old behaviour:
gradients that never reached the input, or, for decoder_layers, reached x wrongly).
"""

import pytest
import torch

from autogaze_ext.ops import _common as common
from autogaze_ext.ops.linear import fused_linear, fused_linear_reference
from autogaze_ext.ops.patches import (gather_patches, gather_patches_reference, multiscale_patches,
                                       multiscale_patches_reference, multiscale_pos_table,
                                       multiscale_pos_table_reference)

needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
ops = torch.ops.autogaze_ext
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


def _grads(fn, inputs, gout):
    """Gradients of fn(*inputs) (one output) for every input, from fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    return torch.autograd.grad(fn(*leaves), leaves, gout)


def _assert_close(got, want, tol=1e-5):
    for a, b in zip(got, want):
        assert a is not None and torch.isfinite(a).all()
        err = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        assert err < tol, err


# --------------------------------------------------------------------------------------- fused_linear

def _linear_inputs(seed, M, K, N, swiglu, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    nw = 0.5 + torch.rand(K, generator=g)
    r = torch.randn(M, N // 2 if swiglu else N, generator=g)
    return [t.to(device) for t in (x, w, nw, r)]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("swiglu", [False, True])
def test_fused_linear_gradients(device, swiglu):
    x, w, nw, r = _linear_inputs(0, 7, 24, 16, swiglu, device)
    gout = torch.randn(7, 8 if swiglu else 16, device=device)
    ref = _grads(lambda *a: fused_linear_reference(a[0], a[1], a[2], 1e-5, a[3], swiglu), (x, w, nw, r), gout)
    direct = _grads(lambda *a: ops.fused_linear(a[0], a[1], a[2], 1e-5, a[3], swiglu), (x, w, nw, r), gout)
    wrapped = _grads(lambda *a: fused_linear(a[0], a[1], a[2], 1e-5, a[3], swiglu), (x, w, nw, r), gout)
    _assert_close(direct, ref)
    _assert_close(wrapped, ref)
    # the formula itself, against finite differences in float64
    g = torch.Generator().manual_seed(9)
    n = 4 if swiglu else 5
    f64 = [torch.randn(3, 6, generator=g), torch.randn(n, 6, generator=g), 0.5 + torch.rand(6, generator=g),
           torch.randn(3, n // 2 if swiglu else n, generator=g)]
    x64, w64, nw64, r64 = (t.double().requires_grad_() for t in f64)
    assert torch.autograd.gradcheck(lambda *a: fused_linear_reference(a[0], a[1], a[2], 1e-5, a[3], swiglu),
                                    (x64, w64, nw64, r64))


@needs_ext
def test_fused_linear_only_requested_gradients_and_opcheck():
    x, w, nw, r = _linear_inputs(1, 5, 8, 6, False)
    x.requires_grad_()
    fused_linear(x, w, nw, 1e-5, r).sum().backward()
    assert x.grad is not None and w.grad is None and nw.grad is None
    w.requires_grad_(), nw.requires_grad_(), r.requires_grad_()
    torch.library.opcheck(ops.fused_linear, (x, w, nw, 1e-5, r, False))


# ------------------------------------------------------------------------ multi-scale patches and gather

def _gaze(seed, B, N, T, V, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, T * V, (B, N), generator=g)
    pad = torch.rand(B, N, generator=g) < 0.3
    return pos.to(device), pad.to(device)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_multiscale_patches_and_pos_table_gradients(device):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 20, 24, generator=g).to(device)
    gout = torch.randn(2, 1 + 4, 3 * 64, generator=g).to(device)
    ref = _grads(lambda a: multiscale_patches_reference(a, [8, 16], 8), (x,), gout)
    _assert_close(_grads(lambda a: ops.multiscale_patches(a, [8, 16], 8), (x,), gout), ref)
    _assert_close(_grads(lambda a: multiscale_patches(a, [8, 16], 8), (x,), gout), ref)
    pe = torch.randn(16, 5, generator=g).to(device)
    tout = torch.randn(4 + 9 + 16, 5, generator=g).to(device)
    _assert_close(_grads(lambda a: multiscale_pos_table(a, [2, 3, 4]), (pe,), tout),
                  _grads(lambda a: multiscale_pos_table_reference(a, [2, 3, 4]), (pe,), tout))
    x64 = torch.randn(1, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: multiscale_patches_reference(a, [4, 8], 4), (x64,))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [False, True])
def test_gather_patches_gradients(device, packed):
    g = torch.Generator().manual_seed(3)
    B, T, scales, p, D = 2, 2, [8, 16], 8, 6
    V, K = 1 + 4, 3 * 64
    frames = torch.randn(B, T, 3, 16, 16, generator=g).to(device)
    w, b, pt = (torch.randn(D, K, generator=g) / 8).to(device), torch.randn(D).to(device), torch.randn(V, D).to(device)
    pos, pad = _gaze(4, B, 7, T, V, device)
    rows = int((~pad).sum()) if packed else -1
    gout = torch.randn(rows if packed else B * 7, D, generator=g).to(device).view(*((rows,) if packed else (B, 7)), D)
    args = lambda a: (a[0], pos, pad, scales, p, a[1], a[2], a[3], rows)  # noqa: E731
    ref = _grads(lambda *a: gather_patches_reference(*args(a))[0], (frames, w, b, pt), gout)
    _assert_close(_grads(lambda *a: ops.gather_patches(*args(a))[0], (frames, w, b, pt), gout), ref)
    wrapped = _grads(lambda *a: gather_patches(a[0], pos, pad, scales, p, weight=a[1], bias=a[2], pos_table=a[3],
                                               packed=packed)[0], (frames, w, b, pt), gout)
    _assert_close(wrapped, ref)
    # raw patches (no embedding): the frames' gradient alone
    gout_raw = torch.randn(B, 7, K, generator=g).to(device)
    _assert_close(_grads(lambda a: ops.gather_patches(a, pos, pad, scales, p, None, None, None, -1)[0], (frames,),
                         gout_raw),
                  _grads(lambda a: gather_patches_reference(a, pos, pad, scales, p)[0], (frames,), gout_raw))
    f64 = torch.randn(1, 2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(2, 3 * 16, dtype=torch.float64, requires_grad=True)
    p64, q64 = _gaze(5, 1, 4, 2, 1 + 4)
    assert torch.autograd.gradcheck(
        lambda a, ww: gather_patches_reference(a, p64, q64, [4, 8], 4, ww, None, None, int((~q64).sum()))[0],
        (f64, w64))


@needs_ext
def test_patch_ops_opcheck():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 16, 16, generator=g, requires_grad=True)
    torch.library.opcheck(ops.multiscale_patches, (x, [8, 16], 8))
    frames = torch.randn(2, 2, 3, 16, 16, generator=g, requires_grad=True)
    w = torch.randn(4, 192, generator=g, requires_grad=True)
    pt = torch.randn(5, 4, generator=g, requires_grad=True)
    pos, pad = _gaze(7, 2, 6, 2, 5)
    torch.library.opcheck(ops.gather_patches, (frames, pos, pad, [8, 16], 8, w, None, pt, int((~pad).sum())))


# ------------------------------------------------------------------------------------- inference ops

def _decode_op_calls(device="cpu"):
    """The op specs of the bad-input suite: a valid argument set per op, its direct and wrapped calls."""
    from robustness.ops import op_specs

    return op_specs(device)


@needs_ext
@pytest.mark.parametrize("name", ["rope_cache_write", "cache_attention", "decoder_layers", "select_step",
                                  "frame_begin", "preprocess"])
def test_inference_ops_refuse_inputs_that_require_grad(name):
    spec = _decode_op_calls()[name]
    args = spec.make()
    if name == "preprocess":
        args["frames"] = args["frames"].float()  # float32 frames on the 0..255 scale: these could require grad
    arg = next(k for k, v in args.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    args[arg] = args[arg].detach().requires_grad_()
    for call in (spec.direct, spec.wrapped):
        with pytest.raises(RuntimeError, match=f"{name}: {arg} requires grad.*no_grad"):
            call(dict(args))
    with torch.no_grad():  # the same call is fine without grad mode, and under inference_mode
        spec.direct(dict(args))
    with torch.inference_mode():
        spec.direct(spec.make())


@needs_ext
def test_decoder_layers_no_longer_returns_a_wrong_gradient():
    """It used to return a graph through its CPU composition whose gradient of x was off by up to 3.07."""
    spec = _decode_op_calls()["decoder_layers"]
    args = spec.make()
    args["x"] = args["x"].detach().requires_grad_()
    with pytest.raises(RuntimeError, match="decoder_layers: x requires grad"):
        spec.direct(args)


# ------------------------------------------------------------------------------- training the model

def test_model_trains_through_its_modules():
    """The model's trainable path (encoder, connector, decoder trunk and heads: plain PyTorch modules, no
    inference op) gives every parameter a finite gradient."""
    import autogaze_ext as ag
    from robustness.api import tiny_config

    torch.manual_seed(0)
    cfg = ag.AutoGazeConfig.from_dict(tiny_config())
    model = ag.AutoGaze(cfg).train()
    gm = model.gazing_model
    video = torch.randn(2, 3, 3, 32, 32)
    vision, _ = gm.embed_video(video)  # (B, T, NV, D)
    x = vision.flatten(1, 2)
    ids = torch.randint(0, cfg.num_vision_tokens_each_frame, (2, 3))
    x = torch.cat([x, gm.gaze_decoder.model.embed_tokens(ids)], dim=1)
    L = x.shape[1]
    h = gm.gaze_decoder(x, torch.arange(L).expand(2, L), torch.ones(2, L, dtype=torch.bool))
    logits, loss_pred = gm.gaze_decoder.heads(h[:, -1])
    (logits.logsumexp(-1).sum() + loss_pred.square().sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if "embed_tokens" not in name:
            assert p.grad.abs().sum() > 0, name
