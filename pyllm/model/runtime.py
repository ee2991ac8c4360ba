"""How a GPT is run: the runtime choices around the model, kept out of the model.

`pyllm/model/gpt.py` is the model: its op-by-op forward is the meaning of every step. A
`ModelRunner` owns one GPT and decides how each step runs:

- the fast CPU forward (pyllm/model/fast.py, the C++ runner): used when the kernels are native
  and built, the model is on the CPU and `fast_path` is on; anything it does not take runs op by
  op, with the same results bit for bit. A model the runner cannot build at all (Qwen3's per-head
  QK-norm, say) runs op by op with a `FastPathUnavailable` warning saying why
  (`fast_unsupported` keeps the reason);
- int8 activations (`int8_activations`, opt-in): the runner's Q4_0/Q4_1/Q8_0 matrices run on
  int8-quantized activations, and, once their int8 panels are packed, the memory-mapped source
  pages of those matrices are released (`release_pages`, given by a loader whose weights are
  views of a file);
- CUDA graphs: `step_runner()` gives the engine what runs its steps, on a GPU a
  `CudaGraphRunner` (pyllm/model/cuda_graph.py) that replays decode steps over this runner.

A runner has the model's call signature, `runner(input_ids, meta, kv_caches, logits_at=None)
-> logits`, plus `hidden_states`, `logits`, `config` and `device`, so the engine, the scorer and
the CUDA-graph runner call it where they would call the model. The GPT itself is `runner.gpt`.
Move the model with `runner.to(...)`: the C++ runner borrows the weights' memory and is rebuilt
on the next step whenever the model's tensors were replaced (checked cheaply every step).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch

from pyllm.model.batch import AttentionMetadata, KVCaches
from pyllm.model.config import ModelConfig
from pyllm.model.fast import FastForward, Unsupported
from pyllm.model.fast import available as fast_available
from pyllm.model.gpt import GPT
from pyllm.model.layers import Linear
from pyllm.ops.qlinear import INT8_QTYPES

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.model.cuda_graph import CudaGraphRunner


class FastPathUnavailable(UserWarning):
    """The fused CPU runner cannot run this model; it runs op by op (slower, same results)."""


class ModelRunner:
    """Runs one GPT: the C++ fast forward where it applies, else the model op by op."""

    def __init__(
        self, gpt: GPT, *, release_pages: Callable[[torch.Tensor], int] | None = None
    ) -> None:
        self.gpt = gpt
        # `fast_path = False` forces op by op (the fast forward stays built for later).
        self.fast_path = True
        # Drops a tensor's resident pages (see GGUFFile.release); None: weights not mapped.
        self.release_pages = release_pages
        self._fast: FastForward | Literal[False] | None = None  # None: not built; False: unusable
        # What the fast forward was built on (see _stale): the config, and the final norm's
        # buffers with the weight tensor they held.
        self._built_config: ModelConfig | None = None
        self._built_norm: tuple[dict[str, torch.Tensor | None], torch.Tensor | None] = ({}, None)
        self._int8_activations = False
        # Why the fused CPU runner could not be built for this model (None: it could, or not tried).
        self.fast_unsupported: str | None = None

    # ------------------------------------------------------------------ the model's surface

    @property
    def config(self) -> ModelConfig:
        return self.gpt.config

    @config.setter
    def config(self, cfg: ModelConfig) -> None:
        self.gpt.config = cfg

    @property
    def device(self) -> torch.device:
        return self.gpt.device

    def to(self, *args: Any, **kwargs: Any) -> ModelRunner:
        """Move or cast the model (nn.Module.to); the fast forward is rebuilt on next use."""
        self.gpt.to(*args, **kwargs)
        self._fast = None
        return self

    def check_step(
        self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: KVCaches
    ) -> None:
        self.gpt.check_step(input_ids, meta, kv_caches)

    def check_caches(self, kv_caches: KVCaches) -> None:
        self.gpt.check_caches(kv_caches)

    # ------------------------------------------------------------------ int8 activations

    @property
    def int8_activations(self) -> bool:
        """Opt-in: the fast CPU forward runs its block matrices on int8-quantized activations
        (csrc/quant/qlinear_int8.h) where that pays: Q4_0/Q4_1/Q8_0 in steps of enough tokens
        (every step with the panels prepacked on AVX-512), Q5_0/Q5_1 and the K-quants in steps
        below 10 tokens (decode). Faster, but no longer the exact float32 product: the op-by-op
        path and the default stay exact. See docs/kernels.md for the measured error."""
        return self._int8_activations

    @int8_activations.setter
    def int8_activations(self, on: bool) -> None:
        self._int8_activations = bool(on)
        if self._fast:
            self._set_runner_int8(self._fast)

    def _set_runner_int8(self, fast: FastForward) -> None:
        fast.runner.int8_activations = self._int8_activations
        if self._int8_activations and fast.runner.packed_bytes and self.release_pages:
            # The packed panels are a copy of every block matrix: their memory-mapped
            # source pages are not read while int8 is on (a page touched again, e.g. an
            # embedding row of a tied table, is read back from the file).
            for module in self.gpt.modules():
                w = module.weight if isinstance(module, Linear) else None
                if w is not None and w.qtype in INT8_QTYPES and w.in_features % 32 == 0:
                    self.release_pages(w.data)

    # ------------------------------------------------------------------ the fast forward

    def _stale(self) -> bool:
        """Whether the model changed under the fast forward: its config was replaced (a capped
        context), or its tensors were (`.to()`, `.float()` on the GPT itself replace every
        buffer, the final norm's weight among them). Two identity checks, run every step."""
        buffers, weight = self._built_norm
        return self.gpt.config is not self._built_config or buffers.get("weight") is not weight

    def _remember_build(self) -> None:
        buffers = self.gpt.norm_f._buffers
        self._built_config, self._built_norm = self.gpt.config, (buffers, buffers.get("weight"))

    def _fast_forward(self) -> FastForward | None:
        fast: FastForward | Literal[False] | None = self._fast
        if fast is None or (fast and self._stale()):
            fast = False
            if fast_available() and self.device.type == "cpu":
                try:
                    fast = FastForward(self.gpt)
                    self._set_runner_int8(fast)
                except Unsupported as exc:
                    fast = False
                    if self.fast_unsupported != str(exc):
                        warnings.warn(
                            f"{self.config.family} model: the fused CPU runner does not support "
                            f"it ({exc}); running op by op",
                            FastPathUnavailable,
                            stacklevel=2,
                        )
                    self.fast_unsupported = str(exc)
            self._fast = fast
            self._remember_build()
        return fast if (fast and self.fast_path and not torch.compiler.is_compiling()) else None

    # ------------------------------------------------------------------ a step

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        *,
        validated: bool = False,
    ) -> torch.Tensor:
        """The final-layer residual stream [T, C], before the last norm (GPT.hidden_states)."""
        fast = self._fast_forward()
        if fast is not None:
            h = fast.hidden(input_ids, meta, kv_caches)
            if h is not None:
                return h
        return self.gpt.hidden_states(input_ids, meta, kv_caches, validated=validated)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[R, C] final-layer states -> [R, V] logits (float32)."""
        return self.gpt.logits(hidden)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gpt.final_norm(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        logits_at: torch.Tensor | None = None,
        *,
        validated: bool = False,
    ) -> torch.Tensor:
        """Logits [R, V] at the rows `logits_at` (GPT.forward)."""
        fast = self._fast_forward()
        if fast is not None:
            logits = fast.logits(input_ids, meta, kv_caches, logits_at)
            if logits is not None:
                return logits
        return self.gpt(input_ids, meta, kv_caches, logits_at, validated=validated)

    def __call__(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        logits_at: torch.Tensor | None = None,
        *,
        validated: bool = False,
    ) -> torch.Tensor:
        # Delegates rather than aliasing forward, so patching forward (bench/decode_profile.py
        # times it) also changes what a call runs.
        return self.forward(input_ids, meta, kv_caches, logits_at, validated=validated)

    # ------------------------------------------------------------------ an engine's steps

    def step_runner(
        self, *, max_batch: int, cuda_graphs: bool = True
    ) -> ModelRunner | CudaGraphRunner:
        """What runs an engine's steps (same call signature): on a CUDA device, unless
        `cuda_graphs` is False, a CudaGraphRunner replaying decode steps of up to `max_batch`
        sequences as CUDA graphs over this runner; otherwise this runner."""
        if cuda_graphs and self.device.type == "cuda":
            from pyllm.model.cuda_graph import CudaGraphRunner

            return CudaGraphRunner(self, max_batch=max_batch)
        return self
