"""pyllm.ops: every kernel as a torch.library op (`torch.ops.pyllm.*`) with a `_ref` beside it.

Import this package to register the ops. See docs/kernels.md for the contract each op follows.
"""

from pyllm.ops._library import cuda_built, kernel_mode, native
from pyllm.ops.norm import fused_add_rms_norm, rms_norm
from pyllm.ops.qlinear import QWeight, linear, qlinear  # noqa: F401

__all__ = ["cuda_built", "kernel_mode", "native", "rms_norm", "fused_add_rms_norm"]
