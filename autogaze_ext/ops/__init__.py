"""The Python face of the compiled ops (torch.ops.autogaze_ext.*), one module per op family:

- ``_common``: the extension handle, ``has_kernel``, the kernels' limits, shared argument checks, autograd
  registration;
- ``gaze``: gaze_decode; ``patches``: multiscale_patches and gather_patches; ``preprocess``: preprocess and the
  image processor's computation; ``varlen``: varlen_attention;
- the fast decoder's ops: ``linear`` (fused_linear), ``attention`` (rope_cache_write, cache_attention),
  ``decoder`` (decoder_layers, and DecoderOps, the compiled-or-reference choice), ``frame`` (frame_begin,
  frame_end), ``select`` (select_step).

Importing this package registers every op's fake kernel and autograd formula. Nothing here imports from the
rest of autogaze_ext.
"""

from . import attention, decoder, frame, gaze, linear, patches, preprocess, select, varlen  # noqa: F401
from ._common import EXTENSION_IMPORT_ERROR, HAS_CUDA_KERNELS, HAS_EXTENSION, build_info, has_kernel

__all__ = ["EXTENSION_IMPORT_ERROR", "HAS_CUDA_KERNELS", "HAS_EXTENSION", "build_info", "has_kernel"]
