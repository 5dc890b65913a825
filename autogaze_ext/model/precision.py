"""TF32 switches for cuBLAS matmuls and cuDNN convolutions, shared by generation and scoring."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def tf32(on: bool):
    """cuBLAS matmuls and cuDNN convolutions in TF32 (on) or true fp32 (off) inside the block."""
    m, c = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = m, c


def exact_fp32():
    """True fp32 for matmuls and cuDNN convolutions (TF32 off) inside the block."""
    return tf32(False)
