"""Token bitmasks for a batch, computed on a worker thread while the model's forward runs.

The engine knows, before a step's forward, which sequences it will sample and that their
matchers have already consumed every earlier token; so `MaskJob` starts their masks then and
the sampler waits for the result only after the forward. llguidance computes masks with the GIL
released, and the forward spends its time in C++ / torch kernels that release it too, so the two
overlap. The mask's own time is kept (``last_seconds``) for the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from pyllm.constraints.matcher import ConstraintMatcher, mask_words

__all__ = ["MaskJob", "MaskWorker", "apply_token_mask", "compute_masks"]


def compute_masks(
    matchers: Sequence[ConstraintMatcher | None], vocab_size: int, logits_width: int | None = None
) -> torch.Tensor:
    """int32 [B, ceil(V / 32)] for V = ``logits_width`` (default ``vocab_size``, the tokenizer's):
    row b's allowed tokens; every token for a None row. Ids past the tokenizer's vocabulary (a
    model's padded rows) are never allowed in a constrained row."""
    n = mask_words(vocab_size)
    W = max(n, mask_words(logits_width or vocab_size))
    out = np.full((len(matchers), W), -1, dtype=np.int32)
    for b, m in enumerate(matchers):
        if m is not None:
            out[b] = 0
            m.fill_mask(out[b, :n])
    return torch.from_numpy(out)


def apply_token_mask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits`` [B, V] with -inf where ``mask`` [B, ceil(V/32)] has a 0 bit (a new tensor)."""
    B, V = logits.shape
    shifts = torch.arange(32, dtype=torch.int32, device=mask.device)
    bits = ((mask.unsqueeze(-1) >> shifts) & 1).reshape(B, -1)[:, :V].to(logits.device)
    return logits.masked_fill(bits == 0, float("-inf"))


class MaskJob:
    """The masks of one step, being computed (or already computed) on the worker thread."""

    def __init__(self, future: Future[torch.Tensor], worker: MaskWorker) -> None:
        self._future = future
        self._worker = worker
        self._value: torch.Tensor | None = None

    def result(self) -> torch.Tensor:
        """The masks; waits for the worker if they are not ready yet (the wait is counted in
        ``MaskWorker.wait_seconds``: the part of the mask's time the forward did not hide)."""
        if self._value is None:
            t0 = time.perf_counter()
            self._value = self._future.result()
            self._worker.wait_seconds += time.perf_counter() - t0
        return self._value


class MaskWorker:
    """One background thread that computes step masks (created on the first constrained step)."""

    def __init__(self, vocab_size: int, logits_width: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.logits_width = logits_width
        self._pool: ThreadPoolExecutor | None = None
        self.total_seconds = 0.0  # mask time summed over steps (the mask's own cost)
        self.wait_seconds = 0.0  # how long the engine waited for masks after the forward
        self.steps = 0

    def start(self, matchers: Sequence[ConstraintMatcher | None]) -> MaskJob | None:
        """Begin the masks for these rows; None when no row is constrained."""
        if all(m is None for m in matchers):
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyllm-mask")
        rows = list(matchers)

        def work() -> torch.Tensor:
            t0 = time.perf_counter()
            mask = compute_masks(rows, self.vocab_size, self.logits_width)
            self.total_seconds += time.perf_counter() - t0
            self.steps += 1
            return mask

        return MaskJob(self._pool.submit(work), self)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
