"""pyllm: a plugin-based chat and text-generation toolkit with a C++/CUDA kernel core.

The public API is imported lazily so that `import pyllm` (and `pyllm --help`) stays fast;
torch is only imported when a model or an op is used.
"""

from __future__ import annotations

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
    from pyllm.api import LLM, load
    from pyllm.sampling_params import SamplingParams
    from pyllm.types import Message


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyllm' has no attribute {name!r}")
