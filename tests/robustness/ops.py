"""Every compiled op with a small valid argument set, called directly (torch.ops.autogaze_ext.*) and through its
Python wrapper, and the bad inputs generated from it: per tensor argument a non-tensor, a wrong dtype, a wrong rank,
a meta tensor among real ones, requires_grad (an error for inference ops, a correct gradient for the others), and
for the arguments written in place a non-contiguous view and a view aliasing another argument; per scalar argument
NaN / inf / out-of-range / wrong-typed values, and numpy scalars where Python numbers are accepted."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from autogaze_ext.ops import attention as A, gaze as GD, decoder as DL, frame as FR, linear as LI
from autogaze_ext.ops import patches as PA, preprocess as PP, select as SE, varlen as VT

from .case import Case

EOS = 5  # select_step / frame ops: vocabulary 6, EOS = 5


@dataclass
class OpSpec:
    name: str
    make: Callable[[torch.device], dict]  # a fresh valid argument set, in schema order
    wrapped: Callable[[dict], Any]  # the Python wrapper called with those arguments
    reference: Callable[[dict], Any] | None = None  # differentiable ops: the PyTorch reference
    differentiable: tuple = ()
    written: tuple = ()  # arguments updated in place
    scalars: list = field(default_factory=list)  # (argument, bad value, where: "both" | "direct" | "wrapped")
    numpy_ok: list = field(default_factory=list)  # (argument, numpy value): accepted by the wrapper
    wrapped_rank_ok: tuple = ()  # tensor arguments whose extra leading dim the wrapper accepts
    wrapped_names: dict = field(default_factory=dict)  # argument -> the name the wrapper's errors use for it

    def direct(self, args: dict):
        return getattr(torch.ops.autogaze_ext, self.name)(*args.values())


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _to(d: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in d.items()}


def _rope_args(device):
    g = _gen(1)
    B, n, H, KVH, d, L = 2, 3, 2, 1, 4, 8
    return _to(dict(qkv=torch.randn(B, n, (H + 2 * KVH) * d, generator=g), positions=torch.arange(n).repeat(B, 1),
                    inv_freq=torch.rand(d // 2, generator=g), k_cache=torch.randn(B, KVH, L, d, generator=g),
                    v_cache=torch.randn(B, KVH, L, d, generator=g), start=torch.tensor([1]), num_heads=H,
                    num_kv_heads=KVH), device)


def _attention_args(device):
    g = _gen(2)
    return _to(dict(q=torch.randn(2, 2, 3, 4, generator=g), k_cache=torch.randn(2, 1, 8, 4, generator=g),
                    v_cache=torch.randn(2, 1, 8, 4, generator=g), key_valid=torch.rand(2, 8, generator=g) < 0.7,
                    start=torch.tensor([1]), tf32=False), device)


def _decoder_args(device):
    g = _gen(3)
    layers, B, n, D, H, KVH, d, L, inter = 2, 2, 3, 16, 2, 1, 4, 8, 16
    w = lambda *s: torch.randn(*s, generator=g) / s[-1] ** 0.5  # noqa: E731
    return _to(dict(x=torch.randn(B, n, D, generator=g), positions=torch.arange(n).repeat(B, 1),
                    inv_freq=torch.rand(d // 2, generator=g), k_cache=torch.randn(layers, B, KVH, L, d, generator=g),
                    v_cache=torch.randn(layers, B, KVH, L, d, generator=g),
                    key_valid=torch.rand(B, L, generator=g) < 0.7, start=torch.tensor([0]),
                    w_qkv=w(layers, (H + 2 * KVH) * d, D), w_o=w(layers, D, H * d), w_gu=w(layers, 2 * inter, D),
                    w_down=w(layers, D, inter), norm_attn=1 + 0.1 * torch.randn(layers, D, generator=g),
                    norm_mlp=1 + 0.1 * torch.randn(layers, D, generator=g), eps=1e-5, num_heads=H,
                    num_kv_heads=KVH, last_only=False), device)


def _select_args(device):
    g = _gen(4)
    banned = torch.zeros(2, EOS + 1, dtype=torch.bool)
    banned[:, EOS] = True
    return _to(dict(logits=torch.randn(2, 2, EOS + 1, generator=g), loss_pred=torch.rand(2, 2, generator=g),
                    cap=torch.tensor([4]), req=torch.full((2,), 0.5), has_req=torch.tensor([True]), banned=banned,
                    unfinished=torch.ones(2, dtype=torch.bool), fids=torch.full((2, 8), EOS),
                    n=torch.tensor([0]), first=torch.tensor([True]), active=torch.tensor([True])), device)


def _begin_args(device):
    g = _gen(5)
    return _to(dict(pend=torch.tensor([[1, EOS], [2, 3]]), pend_len=torch.tensor([1]),
                    vision=torch.randn(2, 2, 3, 4, generator=g), t=torch.tensor([0]),
                    embed_weight=torch.randn(EOS + 1, 4, generator=g), start=torch.tensor([0]),
                    key_valid=torch.zeros(2, 12, dtype=torch.bool), count=torch.zeros(2, dtype=torch.long),
                    tail_pos=torch.zeros(2, 2, dtype=torch.long), eos=EOS), device)


def _end_args(device):
    return _to(dict(fids=torch.tensor([[1, 2, EOS, 3, 4, EOS], [0, EOS, 1, 2, EOS, EOS]]), n=torch.tensor([3]),
                    frame_start=torch.tensor([0]), t=torch.tensor([0]), key_valid=torch.ones(2, 12, dtype=torch.bool),
                    count=torch.zeros(2, dtype=torch.long), pend=torch.full((2, 2), EOS),
                    pend_len=torch.tensor([0]), out_ids=torch.full((2, 2, 6), EOS),
                    out_n=torch.zeros(2, dtype=torch.long), eos=EOS), device)


def _varlen_args(device):
    g = _gen(6)
    return _to(dict(q=torch.randn(6, 2, 4, generator=g), k=torch.randn(6, 2, 4, generator=g),
                    v=torch.randn(6, 2, 4, generator=g), cu_seqlens=torch.tensor([0, 3, 6], dtype=torch.int32),
                    cu_frames=torch.tensor([0, 2, 3, 6], dtype=torch.int32), mode="block_causal", scale=0.5,
                    num_prefix=0), device)


def _gaze_ids(g, B=2, N=5, T=2, V=5):
    return torch.randint(0, T * V, (B, N), generator=g), torch.rand(B, N, generator=g) < 0.3


def _gather_args(device):
    g = _gen(7)
    pos, pad = _gaze_ids(g)
    return _to(dict(frames=torch.randn(2, 2, 3, 16, 16, generator=g), gazing_pos=pos, if_padded=pad, scales=[8, 16],
                    patch=8, weight=torch.randn(4, 192, generator=g) / 14, bias=torch.randn(4, generator=g),
                    pos_table=torch.randn(5, 4, generator=g), packed_rows=-1), device)


def _gather_wrapped(a):
    rows = a["packed_rows"]
    return PA.gather_patches(a["frames"], a["gazing_pos"], a["if_padded"], a["scales"], a["patch"], weight=a["weight"],
                             bias=a["bias"], pos_table=a["pos_table"], packed=rows >= 0,
                             total=rows if rows >= 0 else None)


def _preprocess_args(device):
    return _to(dict(frames=torch.randint(0, 256, (2, 10, 12, 3), generator=_gen(8), dtype=torch.uint8), out_h=8,
                    out_w=9, model_size=6, rescale=1 / 127.5, offset=True, mean=[0.485, 0.456, 0.406],
                    std=[0.229, 0.224, 0.225]), device)


def _preprocess_wrapped(a):
    proc = {"size": {"height": a["out_h"], "width": a["out_w"]}, "rescale_factor": a["rescale"],
            "image_mean": a["mean"], "image_std": a["std"]}
    return PP.preprocess(a["frames"], proc, model_size=a["model_size"])


def _gaze_decode_args(device):
    pos, pad = _gaze_ids(_gen(9))
    return _to(dict(gazing_pos=pos, if_padded=pad, num_frames=2, grids=[1, 2]), device)


BAD_INT = [0, -1, "2", 2.5, True, None]
BAD_FLOAT = [math.nan, math.inf, -1.0, "1e-5", None]
BAD_GRIDS = [[], [0], [1, "a"], "12", None, [1] * 9]


def op_specs(device="cpu") -> dict[str, OpSpec]:
    device = torch.device(device)
    specs = [
        OpSpec("gaze_decode", _gaze_decode_args,
               lambda a: GD.gaze_decode(a["gazing_pos"], a["if_padded"], a["num_frames"], a["grids"]),
               scalars=[("num_frames", v, "both") for v in BAD_INT] + [("grids", v, "both") for v in BAD_GRIDS],
               numpy_ok=[("num_frames", np.int64(2)), ("grids", np.array([1, 2]))]),
        OpSpec("fused_linear", lambda dev: _to(dict(
                   x=torch.randn(3, 8, generator=_gen(10)), weight=torch.randn(6, 8, generator=_gen(11)) / 3,
                   norm_weight=torch.rand(8, generator=_gen(12)) + 0.5, eps=1e-5,
                   residual=torch.randn(3, 6, generator=_gen(13)), swiglu=False), dev),
               lambda a: LI.fused_linear(*a.values()),
               reference=lambda a: LI.fused_linear_reference(*a.values()),
               differentiable=("x", "weight", "norm_weight", "residual"),
               scalars=[("eps", v, "both") for v in BAD_FLOAT + [0.0]] + [("swiglu", "yes", "both"),
                                                                           ("swiglu", 1, "wrapped")],
               numpy_ok=[("eps", np.float32(1e-5)), ("eps", np.float64(1e-4))], wrapped_rank_ok=("x", "residual")),
        OpSpec("rope_cache_write", _rope_args, lambda a: A.rope_cache_write(*a.values()),
               written=("k_cache", "v_cache"),
               scalars=[(k, v, "both") for k in ("num_heads", "num_kv_heads") for v in BAD_INT] + [
                   ("num_heads", 3, "both")],
               numpy_ok=[("num_heads", np.int64(2)), ("num_kv_heads", np.int32(1))]),
        OpSpec("cache_attention", _attention_args, lambda a: A.cache_attention(*a.values()),
               scalars=[("tf32", "yes", "both"), ("tf32", None, "wrapped")]),
        OpSpec("decoder_layers", _decoder_args, lambda a: DL.decoder_layers(*a.values()),
               written=("k_cache", "v_cache"),
               scalars=[("eps", v, "both") for v in BAD_FLOAT + [0.0]] + [
                   (k, v, "both") for k in ("num_heads", "num_kv_heads") for v in BAD_INT] + [
                   ("num_heads", 3, "both"), ("last_only", "yes", "both"), ("last_only", None, "wrapped")],
               numpy_ok=[("eps", np.float32(1e-5)), ("num_heads", np.int64(2))]),
        OpSpec("select_step", _select_args, lambda a: SE.select_step(*a.values()),
               written=("banned", "unfinished", "fids", "n", "first", "active")),
        OpSpec("frame_begin", _begin_args, lambda a: FR.frame_begin(*a.values()),
               written=("key_valid", "count", "tail_pos"),
               scalars=[("eos", v, "both") for v in (-1, "5", 2.5, True, None)], numpy_ok=[("eos", np.int64(EOS))]),
        OpSpec("frame_end", _end_args, lambda a: FR.frame_end(*a.values()),
               written=("key_valid", "count", "pend", "pend_len", "out_ids", "out_n"),
               scalars=[("eos", v, "both") for v in (-1, "5", 2.5, True, None)], numpy_ok=[("eos", np.int64(EOS))]),
        OpSpec("varlen_attention", _varlen_args, lambda a: VT.varlen_attention(*a.values()),
               reference=lambda a: VT.varlen_attention_reference(*a.values()), differentiable=("q", "k", "v"),
               scalars=[("mode", v, "both") for v in ("bogus", 3, None)] + [
                   ("scale", v, "both" if v is not None else "direct") for v in BAD_FLOAT + [0.0]] + [
                   ("num_prefix", v, "both") for v in (-1, "0", 1.5, None)],
               numpy_ok=[("scale", np.float32(0.5)), ("num_prefix", np.int64(1))]),
        OpSpec("multiscale_patches",
               lambda dev: _to(dict(frames=torch.randn(2, 3, 16, 16, generator=_gen(14)), scales=[8, 16], patch=8),
                               dev),
               lambda a: PA.multiscale_patches(*a.values()),
               reference=lambda a: PA.multiscale_patches_reference(*a.values()), differentiable=("frames",),
               scalars=[("scales", v, "both") for v in ([], [0], [4], "816", None, [8] * 9)] + [
                   ("patch", v, "both") for v in BAD_INT + [65]] + [("scales", [16, 8], "wrapped")],
               numpy_ok=[("patch", np.int64(8)), ("scales", np.array([8, 16]))], wrapped_rank_ok=("frames",)),
        OpSpec("gather_patches", _gather_args, _gather_wrapped,
               reference=lambda a: PA.gather_patches_reference(*a.values()),
               differentiable=("frames", "weight", "bias", "pos_table"),
               scalars=[("scales", v, "both") for v in ([], [0], [4], "816", None)] + [
                   ("patch", v, "both") for v in BAD_INT + [65]] + [("scales", [16, 8], "wrapped")],
               numpy_ok=[("patch", np.int64(8)), ("scales", np.array([8, 16]))]),
        OpSpec("preprocess", _preprocess_args, _preprocess_wrapped,
               scalars=[(k, v, "both") for k in ("out_h", "out_w") for v in (0, -1, 1 << 21, "8", None)] + [
                   ("model_size", v, "both") for v in (-1, "6", 2.5, 1 << 21)] + [
                   ("rescale", v, "both") for v in BAD_FLOAT + [0.0]] + [
                   ("mean", v, "both") for v in ([math.nan, 0.0, 0.0], [0.0, 0.0], "x", None)] + [
                   ("std", v, "both") for v in ([0.0, 1.0, 1.0], [math.inf, 1.0, 1.0], [1.0], "x")],
               numpy_ok=[("rescale", np.float32(0.5)), ("out_h", np.int64(8)), ("model_size", np.int32(6)),
                         ("mean", np.array([0.5, 0.5, 0.5]))], wrapped_rank_ok=("frames",),
               wrapped_names={"out_h": "size", "out_w": "size", "rescale": "rescale_factor", "mean": "image_mean",
                              "std": "image_std"}),
    ]
    out = {}
    for s in specs:
        make = s.make
        s.make = (lambda make=make: make(device))  # noqa: E731  (bind the device)
        out[s.name] = s
    return out


# ------------------------------------------------------------------------------------------ mutations

def _wrong_dtype(t: torch.Tensor) -> torch.Tensor:
    to = {torch.float32: torch.float64, torch.int64: torch.int32, torch.int32: torch.int64, torch.bool: torch.uint8,
          torch.uint8: torch.int64}[t.dtype]
    return t.to(to)


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values with doubled strides."""
    return torch.stack([t, t], dim=-1)[..., 0]


def _alias(args: dict, w: str) -> tuple[dict, str] | None:
    """args with the written tensor w and another tensor of its dtype made views of one buffer (overlapping
    by an element); None when no other argument has w's dtype."""
    other = next((k for k, v in args.items() if k != w and isinstance(v, torch.Tensor) and v.dtype == args[w].dtype
                  and v.numel() > 0), None)
    if other is None:
        return None
    a, b = args[w], args[other]
    buf = torch.zeros(a.numel() + b.numel() - 1, dtype=a.dtype, device=a.device)
    out = dict(args)
    out[w] = buf[: a.numel()].view(a.shape).copy_(a)
    out[other] = buf[a.numel() - 1:].view(b.shape)
    return out, other


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _results(out, args: dict) -> list:
    """Everything a call produced: its outputs and the arguments it may have updated in place."""
    outs = list(out) if isinstance(out, tuple) else [out]
    return [t.detach().cpu() for t in outs + list(args.values()) if isinstance(t, torch.Tensor)]


def _same(xs: list, ys: list, tol: float = 0.0) -> bool:
    return len(xs) == len(ys) and all(
        x.shape == y.shape and x.dtype == y.dtype and
        (torch.equal(x, y) or (x.is_floating_point() and torch.allclose(x, y, rtol=tol, atol=tol, equal_nan=True)))
        for x, y in zip(xs, ys))


def _grad_matches(spec: OpSpec, call, arg: str) -> bool:
    """The gradient an op call gives arg equals the reference's."""
    def grad(fn):
        args = spec.make()
        args[arg] = args[arg].detach().requires_grad_()
        out = _first(fn(args))
        gout = torch.randn(out.shape, generator=_gen(99)).to(out.device)
        return torch.autograd.grad(out, args[arg], gout)[0]
    got, want = grad(call), grad(spec.reference)
    return bool(torch.isfinite(got).all()) and ((got - want).norm() <= 1e-5 * want.norm() + 1e-6).item()


def op_cases(device: str) -> list[Case]:
    cases = []
    on_cpu = op_specs("cpu")  # the argument structure, read here without touching the device (a CUDA parent
    for spec in op_specs(device).values():  # could not fork children that use CUDA)
        base = on_cpu[spec.name].make()
        tensors = [k for k, v in base.items() if isinstance(v, torch.Tensor)]
        for how, call in (("direct", spec.direct), ("wrapped", spec.wrapped)):
            def add(kind, args_fn, expect="error", names=(), also=(), check=None, spec=spec, call=call, how=how):
                def run(ctx, args_fn=args_fn, check=check, call=call):
                    args = args_fn()
                    out = call(args)
                    return True if check is None else check(args, out)
                cases.append(Case(f"op/{spec.name}/{how}/{kind}", run, expect, names, also))

            for t in tensors:
                mk = spec.make
                add(f"{t}:list", lambda t=t, mk=mk: {**mk(), t: mk()[t].tolist()}, names=(t,))
                add(f"{t}:dtype", lambda t=t, mk=mk: {**mk(), t: _wrong_dtype(mk()[t])}, names=(t,))
                if base[t].numel() == 1:  # a one-element argument (a device scalar) of any shape is fine: two
                    add(f"{t}:two_elements", lambda t=t, mk=mk: {**mk(), t: mk()[t].reshape(1).repeat(2)},
                        names=(t,))
                elif not (how == "wrapped" and t in spec.wrapped_rank_ok):
                    add(f"{t}:rank", lambda t=t, mk=mk: {**mk(), t: mk()[t][None]}, names=(t,))
                if len(tensors) > 1:  # a meta tensor among real ones (meta alone is a legitimate shape-only call)
                    add(f"{t}:meta", lambda t=t, mk=mk: {**mk(), t: mk()[t].to("meta")}, names=(t,))
                if base[t].is_floating_point():
                    if t in spec.differentiable:
                        add(f"{t}:requires_grad", lambda mk=mk: mk(), "ok",
                            check=lambda args, out, t=t, call=call, spec=spec: _grad_matches(spec, call, t))
                    else:
                        add(f"{t}:requires_grad", lambda t=t, mk=mk: {**mk(), t: mk()[t].requires_grad_()},
                            names=(t,), also=("requires grad",))
                if t in spec.written:
                    if base[t].numel() > 1:
                        add(f"{t}:noncontiguous", lambda t=t, mk=mk: {**mk(), t: _noncontiguous(mk()[t])}, names=(t,))
                    if _alias(base, t) is not None:
                        add(f"{t}:aliased", lambda t=t, mk=mk: _alias(mk(), t)[0], names=(t,), also=("share memory",))
            for arg, value, where in spec.scalars:
                # torch's schema turns a bool into an int for the direct op: not a bad input there
                if where in ("both", how) and not (how == "direct" and isinstance(value, bool)):
                    name = spec.wrapped_names.get(arg, arg) if how == "wrapped" else arg
                    add(f"{arg}={value!r:.20}", lambda arg=arg, value=value, mk=spec.make: {**mk(), arg: value},
                        names=(name,))
            if how == "wrapped":  # numpy scalars and arrays where Python numbers are accepted
                for arg, value in spec.numpy_ok:
                    def check(args, out, arg=arg, value=value, call=call, mk=spec.make):
                        ref = {**mk(), arg: value.tolist()}
                        return _same(_results(out, args), _results(call(ref), ref))
                    add(f"{arg}=numpy", lambda arg=arg, value=value, mk=spec.make: {**mk(), arg: value}, "ok",
                        check=check)
    return cases + _special_op_cases(device)


def _special_op_cases(device: str) -> list[Case]:
    """Cases a mutation of one argument does not express: values, masks, semantics."""
    specs = op_specs(device)
    cases = []

    def add(name, run, expect="error", names=(), also=(), devices=("cpu", "cuda")):
        cases.append(Case(name, run, expect, names, also, devices))

    att = specs["cache_attention"]

    def masked_nonfinite(where: str, value: float):
        """A NaN or inf in the k or v row of a key no query may see (key_valid False and past every query's slot,
        or only past it) must leave the output unchanged: masked keys are absent."""
        def run(ctx):
            a = att.make()
            a["key_valid"][:, 0] = False
            clean = att.direct(dict(a))
            a[where] = a[where].clone()
            a[where][:, :, 0] = value  # an invalid key below every query's slot (start = 1)
            a[where][:, :, 7] = value  # a key beyond the last query's slot (start + n - 1 = 3)
            return _same([att.direct(a)], [clean])
        return run

    for where in ("k_cache", "v_cache"):
        for value in (math.nan, math.inf, -math.inf):
            add(f"op/cache_attention/direct/masked_{where}={value}", masked_nonfinite(where, value), "ok")

    def visible_nan(ctx):  # a NaN in a key a query does see reaches that query (and no other)
        a = att.make()
        a["key_valid"][:] = True
        a["v_cache"][0, 0, 0, 0] = math.nan  # row 0, slot 0, column 0: seen by every query of row 0
        out = att.direct(a).cpu()
        return bool(out[0, ..., 0].isnan().all()) and not bool(out[0, ..., 1:].isnan().any() or out[1].isnan().any())
    add("op/cache_attention/direct/visible_nan_propagates", visible_nan, "ok")

    fb, fe = specs["frame_begin"], specs["frame_end"]

    def negative_start(spec, slot_arg, n_slots):
        def run(ctx):  # slots start..start+n-1 with start = -1: the first is skipped, the others written
            a = spec.make()
            a[slot_arg] = torch.tensor([-1], device=a[slot_arg].device)
            b = spec.make()
            spec.direct(b)  # start 0: the reference writes
            spec.direct(a)
            return torch.equal(a["key_valid"][:, : n_slots - 1].cpu(), b["key_valid"][:, 1: n_slots].cpu())
        return run
    add("op/frame_begin/direct/negative_start_skips_only_outside", negative_start(fb, "start", 5), "ok")
    add("op/frame_end/direct/negative_start_skips_only_outside", negative_start(fe, "frame_start", 2), "ok")

    gd = specs["gaze_decode"]

    def invalid_id(call, expect_error):
        def run(ctx):
            a = gd.make()
            a["gazing_pos"][0, 0], a["if_padded"][0, 0] = 99, False
            mask, coords = call(a)
            return not expect_error and int(coords[0, 0, 0]) == -1
        return run
    add("op/gaze_decode/wrapped/id_out_of_range", invalid_id(gd.wrapped, True), names=("gazing_pos",))
    add("op/gaze_decode/direct/id_out_of_range_skipped", invalid_id(gd.direct, False), "ok")

    vl = specs["varlen_attention"]
    for label, cs in (("end", [0, 3, 7]), ("decreasing", [0, 4, 3, 6]), ("start", [1, 3, 6])):
        for how, call in (("direct", vl.direct), ("wrapped", vl.wrapped)):
            add(f"op/varlen_attention/{how}/cu_seqlens_{label}",
                lambda ctx, cs=cs, call=call: call({**vl.make(), "cu_seqlens": torch.tensor(
                    cs, dtype=torch.int32, device=vl.make()["q"].device), "cu_frames": torch.tensor(
                    sorted(set(cs) | {0, 6}), dtype=torch.int32, device=vl.make()["q"].device)}),
                names=("cu_seqlens", "cu_frames"), devices=("cpu",) if how == "direct" else ("cpu", "cuda"))

    ga = specs["gather_patches"]
    add("op/gather_patches/wrapped/id_out_of_range",
        lambda ctx: ga.wrapped({**ga.make(), "gazing_pos": torch.full((2, 5), 99, device=ga.make()["frames"].device)}),
        names=("gazing_pos",))
    add("op/gather_patches/wrapped/bias_without_weight", lambda ctx: ga.wrapped({**ga.make(), "weight": None}),
        names=("weight",))

    pp = specs["preprocess"]
    add("op/preprocess/wrapped/float_frames_require_grad",
        lambda ctx: pp.wrapped({**pp.make(), "frames": pp.make()["frames"].float().requires_grad_()}),
        names=("frames",), also=("requires grad",))
    add("op/preprocess/direct/float_frames_require_grad",
        lambda ctx: pp.direct({**pp.make(), "frames": pp.make()["frames"].float().requires_grad_()}),
        names=("frames",), also=("requires grad",))
    return cases
