"""What every op module shares: the compiled extension handle, whether a kernel exists, the limits of the
kernels, the argument checks and the autograd registration.

Each op gets: argument checks with clear errors, a fake (meta) kernel so torch.compile and CUDA graphs
can trace it, and a pure-PyTorch reference used when the compiled module, or the backend a tensor
needs, is missing (e.g. CUDA tensors with a CPU-only build). The references double as test oracles.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import warnings
from collections.abc import Sequence

import torch

EXTENSION_IMPORT_ERROR: ImportError | None = None
_REBUILD = ("rebuild it against this torch: pip install --no-build-isolation -e . (from the source folder; "
            "README \"Building\")")
try:
    from .. import _C
except ModuleNotFoundError as _err:  # not built
    _C = None
    EXTENSION_IMPORT_ERROR = ImportError(f"autogaze_ext._C is not built (running torch {torch.__version__}); "
                                         f"{_REBUILD}")
    EXTENSION_IMPORT_ERROR.__cause__ = _err
except ImportError as _err:  # built against a torch whose symbols differ (or a broken build)
    _C = None
    EXTENSION_IMPORT_ERROR = ImportError(
        f"autogaze_ext._C does not load with the running torch {torch.__version__}, most likely because it was "
        f"built against another torch ({_err}); {_REBUILD}")
    EXTENSION_IMPORT_ERROR.__cause__ = _err
else:
    # A module built against another torch minor version may import and then crash: refuse to use it.
    _built = re.match(r"\d+\.\d+", _C.build_info()["torch_version"])
    _running = re.match(r"\d+\.\d+", torch.__version__)
    if not (_built and _running and _built[0] == _running[0]):
        EXTENSION_IMPORT_ERROR = ImportError(
            f"autogaze_ext._C was built against torch {_C.build_info()['torch_version']} but torch "
            f"{torch.__version__} is running; install torch=={_built[0] if _built else '?'}.* (what this build "
            f"requires) or {_REBUILD}")
        _C = None
if EXTENSION_IMPORT_ERROR is not None:  # once per process: this module body runs once
    warnings.warn(f"{EXTENSION_IMPORT_ERROR}. Until then every op runs its PyTorch reference (same results, "
                  f"several times slower; HAS_EXTENSION is False).", RuntimeWarning)

HAS_EXTENSION = _C is not None
HAS_CUDA_KERNELS = HAS_EXTENSION and bool(_C.has_cuda())

# Limits of the compiled kernels. _C exports none of them (bindings.cpp exposes has_cuda and build_info only),
# so each is kept once here, beside the C++ constant it mirrors; the op modules check arguments against these.
MAX_SCALES = 8  # kMaxScales in csrc/common/gaze_layout.h
MAX_PATCH = 64  # kMaxPatch in csrc/ops.h
MAX_SIDE = 1 << 20  # make_patch_layout in csrc/ops.h: largest scale side (also preprocess' sides)
MAX_GRID = 46340  # check_grids in csrc/ops.h: tokens per frame stay in int32
MAX_HEAD_DIM = 256  # head_dim bound of varlen_attention, rope_cache_write and cache_attention (csrc/ops.h)
FUSED_LINEAR_MAX_K = 1024  # kFusedLinearMaxK in csrc/cuda/fused_linear.h


def build_info() -> dict:
    """How the compiled module was built ({} when it is unavailable)."""
    return dict(_C.build_info()) if HAS_EXTENSION else {}


def _kernel_table() -> frozenset:
    """(op name, dispatch key) of every compiled CPU / CUDA kernel, read once from the dispatcher when the
    module loads: a constant set, so torch.compile traces the lookups in has_kernel without a graph break."""
    if not HAS_EXTENSION:
        return frozenset()
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("autogaze_ext::")]
    return frozenset((n.split("::", 1)[1], key) for n in names for key in ("CPU", "CUDA")
                     if torch._C._dispatch_has_kernel_for_dispatch_key(n, key))


_KERNELS = _kernel_table()


def has_kernel(op_name: str, device: torch.device | str) -> bool:
    """Whether torch.ops.autogaze_ext.<op_name> has a compiled kernel for tensors on ``device`` (meta: its
    fake kernel). The one test every wrapper and the fast decoder use to choose between op and reference;
    HAS_EXTENSION is read at each call, so tests can switch the extension off."""
    if not HAS_EXTENSION:
        return False
    kind = torch.device(device).type
    if kind == "meta":
        return True
    if kind == "cuda" and not HAS_CUDA_KERNELS:
        return False
    return (op_name, kind.upper()) in _KERNELS


def check_tensor(x, name: str, dtype: torch.dtype) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")


def check_same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} on {ref.device}")


def check_bool(x, name: str) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return x


def check_int(x, name: str, minimum: int) -> int:
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        x = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(x).__name__}") from None
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return x


def check_float(x, name: str, *, positive: bool = False, minimum: float | None = None) -> float:
    """A finite real number (numpy scalars too, not bool), > 0 when positive, >= minimum when given."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x) or (positive and x <= 0) or (minimum is not None and x < minimum):
        want = " > 0" if positive else f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be a finite float{want}, got {x}")
    return x


def as_list(x):
    """Tensors and numpy arrays as Python lists (sequence arguments may come as either)."""
    return x.tolist() if hasattr(x, "tolist") and not isinstance(x, (list, tuple, str)) else x


def check_grids(grids) -> tuple[int, ...]:
    grids = as_list(grids)
    if not isinstance(grids, Sequence):
        raise TypeError(f"grids must be a sequence of ints (grid side per scale), got {type(grids).__name__}")
    if not 1 <= len(grids) <= MAX_SCALES:
        raise ValueError(f"grids must hold 1 to {MAX_SCALES} grid sides, got {len(grids)}")
    return tuple(check_int(g, f"grids[{i}]", 1) for i, g in enumerate(grids))


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors view overlapping bytes (strides are never negative in torch). Fake and meta tensors
    have no memory, and non-tensors are left to the type checks: False."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.numel() == 0 or b.numel() == 0 \
            or a.device != b.device or a.device.type == "meta" \
            or torch.compiler.is_compiling() or isinstance(a, torch._subclasses.FakeTensor):
        return False

    def span(t):
        lo = t.data_ptr()
        return lo, lo + (sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def check_written_apart(op: str, written: dict, read: dict) -> None:
    """Tensors an op writes in place must not share memory with any other of its tensors (the result would
    depend on the order the kernel reads and writes them). The compiled ops check the same in C++."""
    items = list(written.items())
    for i, (name, w) in enumerate(items):
        for other, t in items[i + 1:] + [(k, v) for k, v in read.items() if v is not None]:
            if shares_memory(w, t):
                raise ValueError(f"{op}: {name} and {other} share memory; {name} is written in place and needs a "
                                 "buffer of its own")


# ------------------------------------------------------------------------------------------------ autograd
# Each op either has a gradient (the backward differentiates its PyTorch reference) or is an inference op that
# refuses inputs requiring grad while grad mode is on, instead of returning results that autograd silently
# disconnects from them. Both are registered as the op's Autograd kernel, so direct torch.ops calls behave like
# the wrappers; the check reads requires_grad flags only (no sync; free inside CUDA graphs and torch.compile).


def check_no_grad(op: str, **tensors) -> None:
    if torch.is_grad_enabled():
        for name, t in tensors.items():
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise RuntimeError(f"{op}: {name} requires grad, but {op} is an inference op without a gradient; "
                                   f"call it under torch.no_grad() (or pass {name}.detach())")


if HAS_EXTENSION:
    _LIB = torch.library.Library("autogaze_ext", "IMPL")  # the Python kernels registered below


def _arg_names(name: str) -> list[str]:
    return [a.name for a in getattr(torch.ops.autogaze_ext, name).default._schema.arguments]


def register_inference_only(name: str) -> None:
    """The Autograd kernel of an op without a gradient: check_no_grad, then the backend kernel."""
    op = getattr(torch.ops.autogaze_ext, name).default
    names = _arg_names(name)

    def autograd_kernel(keyset, *args, **kwargs):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):  # flags only: a few C++ checks
            check_no_grad(name, **dict(zip(names, args)))
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args, **kwargs)

    _LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)


def register_reference_autograd(name: str, reference, differentiable: Sequence[str]) -> None:
    """Gradients of a forward-only op: the backward reruns the op's PyTorch reference (same arguments, same
    outputs) under autograd and differentiates it. Exact, but it recomputes the forward: made for training
    and fine-tuning, not for speed. Non-floating outputs (offsets) get no gradient."""
    names = _arg_names(name)
    diff = [names.index(n) for n in differentiable]

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*(t if isinstance(t, torch.Tensor) else None for t in inputs))
        ctx.constants = [None if isinstance(t, torch.Tensor) else t for t in inputs]

    def backward(ctx, *grads):
        inputs = [t if t is not None else c for t, c in zip(ctx.saved_tensors, ctx.constants)]
        wanted = [i for i in diff if ctx.needs_input_grad[i]]
        with torch.enable_grad():
            for i in wanted:
                inputs[i] = inputs[i].detach().requires_grad_()
            outs = reference(*inputs)
            pairs = [(o, g) for o, g in zip(outs if isinstance(outs, tuple) else (outs,), grads)
                     if g is not None and o.is_floating_point() and o.requires_grad]
            got = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                      allow_unused=True) if pairs else [None] * len(wanted)
        by_index = dict(zip(wanted, got))
        return tuple(by_index.get(i) for i in range(len(inputs)))

    torch.library.register_autograd(f"autogaze_ext::{name}", backward, setup_context=setup_context)


# ---------------------------------------------------------------------------------------------- gaze_decode


def check_gaze_ids(gazing_pos, if_padded) -> None:
    """gazing_pos (B, N) int64 with a matching bool if_padded: shared by every op that takes gaze ids."""
    check_tensor(gazing_pos, "gazing_pos", torch.int64)
    check_tensor(if_padded, "if_padded", torch.bool)
    if gazing_pos.dim() != 2:
        raise ValueError(f"gazing_pos must be (B, N), got shape {tuple(gazing_pos.shape)}")
    if if_padded.shape != gazing_pos.shape:
        raise ValueError(f"if_padded shape {tuple(if_padded.shape)} must match gazing_pos {tuple(gazing_pos.shape)}")


