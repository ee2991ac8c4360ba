"""pyllm: a plugin-based chat and text-generation toolkit with a C++/CUDA kernel core.

The public API is imported lazily so that `import pyllm` (and `pyllm --help`) stays fast;
torch is only imported when a model or an op is used.
"""

from __future__ import annotations

import os

# OpenMP (torch's and the kernels' shared libgomp) spins ~300k iterations (several ms) waiting
# for work by default; on a busy machine a spinning thread steals the core the other thread
# needs, and every parallel region stalls for a scheduler tick. A shorter spin (still far longer
# than the gap between two kernels of a decode step) bounds that. Only effective when pyllm is
# imported before torch, and never overrides the user's own setting.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from typing import TYPE_CHECKING, Any

from pyllm.errors import ContextLengthError, ModelFormatError, PyllmError

__version__ = "0.1.0"

_LAZY = {
    "load": ("pyllm.api", "load"),
    "LLM": ("pyllm.api", "LLM"),
    "SamplingParams": ("pyllm.sampling_params", "SamplingParams"),
    "Message": ("pyllm.types", "Message"),
}

__all__ = ["ModelFormatError", "ContextLengthError", "PyllmError", "__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    # `X as X`: re-exported for type checkers; at run time __getattr__ imports them lazily.
    from pyllm.api import LLM as LLM
    from pyllm.api import load as load
    from pyllm.sampling_params import SamplingParams as SamplingParams
    from pyllm.types import Message as Message


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyllm' has no attribute {name!r}")
