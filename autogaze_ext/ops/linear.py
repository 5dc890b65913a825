"""fused_linear: RMSNorm prologue + fp32 linear + SwiGLU / residual epilogue in one kernel.

Python face of torch.ops.autogaze_ext.fused_linear: argument checks, fake kernel, pure-PyTorch reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (FUSED_LINEAR_MAX_K, HAS_EXTENSION, check_bool, check_float, check_same_device, check_tensor,
                      has_kernel, register_reference_autograd)



def fused_linear_reference(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float,
                           residual: torch.Tensor | None, swiglu: bool) -> torch.Tensor:
    """Pure-PyTorch fused_linear (no argument checks), torch ops in the kernels' order; any leading dims."""
    if norm_weight is not None:  # HF LlamaRMSNorm: normalise, then scale
        x = norm_weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    y = F.linear(x, weight)
    if swiglu:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    if residual is not None:
        y = residual + y
    return y


def _check_fused_linear_args(x, weight, norm_weight, eps, residual, swiglu) -> int:
    """Checks the wrapper's arguments; returns the number of output columns."""
    check_tensor(x, "x", torch.float32)
    check_tensor(weight, "weight", torch.float32)
    check_bool(swiglu, "swiglu")
    # eps is only read by the RMSNorm prologue, where it must keep rsqrt finite
    if check_float(eps, "eps", minimum=0.0) == 0 and norm_weight is not None:
        raise ValueError("eps must be > 0 with norm_weight (RMSNorm of a zero row would be NaN), got 0.0")
    if x.dim() < 1:
        raise ValueError("x must be (..., K), got a 0-d tensor")
    K = x.shape[-1]
    if not 1 <= K <= FUSED_LINEAR_MAX_K:
        raise ValueError(f"x must be (..., K) with 1 <= K <= {FUSED_LINEAR_MAX_K}, got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != K or weight.shape[0] < 1:
        raise ValueError(f"weight must be (N, {K}) with N >= 1, got shape {tuple(weight.shape)}")
    N = weight.shape[0]
    if swiglu and N % 2:
        raise ValueError(f"swiglu needs weight with an even number of rows (gate over up), got {N}")
    n_out = N // 2 if swiglu else N
    named = [("x", x), ("weight", weight)]
    if norm_weight is not None:
        check_tensor(norm_weight, "norm_weight", torch.float32)
        if norm_weight.shape != (K,):
            raise ValueError(f"norm_weight must be ({K},), got shape {tuple(norm_weight.shape)}")
        named.append(("norm_weight", norm_weight))
    if residual is not None:
        check_tensor(residual, "residual", torch.float32)
        want = (*x.shape[:-1], n_out)
        if residual.shape != want:
            raise ValueError(f"residual must have the output's shape {want}, got {tuple(residual.shape)}")
        named.append(("residual", residual))
    for name, t in named:
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x on {x.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    return n_out


def fused_linear(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None, eps: float = 1e-5,
                 residual: torch.Tensor | None = None, swiglu: bool = False) -> torch.Tensor:
    """out = [swiglu]([rmsnorm(x) * norm_weight] @ weight^T) [+ residual], fp32.

    x: (..., K) float32 contiguous, K <= 1024; weight: (N, K), a torch Linear weight. norm_weight: (K,) to
    apply LLaMA RMSNorm (eps) to x first. swiglu: weight is gate_proj stacked over up_proj (N even) and the
    result is silu(y[..., :N/2]) * y[..., N/2:]. residual: same shape as the output, added last.
    Returns a new (..., N or N/2) float32 tensor.
    """
    n_out = _check_fused_linear_args(x, weight, norm_weight, eps, residual, swiglu)
    if not has_kernel("fused_linear", x.device):
        return fused_linear_reference(x, weight, norm_weight, float(eps), residual, swiglu)
    lead = x.shape[:-1]
    x2 = x.view(-1, x.shape[-1])
    res2 = residual.view(-1, n_out) if residual is not None else None
    out = torch.ops.autogaze_ext.fused_linear(x2, weight, norm_weight, float(eps), res2, swiglu)
    return out.view(*lead, n_out)


if HAS_EXTENSION:

    @torch.library.register_fake("autogaze_ext::fused_linear")
    def _fused_linear_fake(x, weight, norm_weight, eps, residual, swiglu):
        check_same_device("x", x, weight=weight, norm_weight=norm_weight, residual=residual)  # meta among real
        torch._check(x.dim() == 2 and weight.dim() == 2, lambda: "fused_linear: x and weight must be 2-D")
        torch._check(x.dtype == torch.float32 and weight.dtype == torch.float32,
                     lambda: "fused_linear: x and weight must be float32")
        torch._check(weight.shape[1] == x.shape[1], lambda: "fused_linear: weight must be (N, K)")
        n = weight.shape[0] // 2 if swiglu else weight.shape[0]
        return x.new_empty((x.shape[0], n))

    # Differentiable (a building block users may train with): x, weight, norm_weight and residual get gradients.
    register_reference_autograd("fused_linear", fused_linear_reference,
                                      ["x", "weight", "norm_weight", "residual"])
