"""Exceptions users can catch. Importing this module is cheap (no torch)."""


class PyllmError(Exception):
    """Base class for pyllm's own errors."""


class ModelFormatError(PyllmError, ValueError):
    """A model file (GGUF, safetensors, config, tokenizer) is malformed or unsupported.

    The message names the file and the field at fault.
    """


class ContextLengthError(PyllmError, ValueError):
    """A prompt does not fit the model's context window (the message gives both lengths)."""


class KernelUnavailableError(PyllmError, ImportError):
    """pyllm._C failed to build or import; pyllm refuses to silently fall back."""
