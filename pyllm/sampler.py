"""The sampler chain: logits [B, V] in, one token per row out.

A request names its chain in ``SamplingParams.samplers`` the way llama.cpp's ``--samplers`` does:
``"penalties;top_k;top_p;min_p;temperature"``. Each name is a step registered through the
``register_samplers`` plugin hook (``pyllm.plugins.samplers()``). Two rules complete a chain:
``logit_bias`` always applies (right after ``penalties``, or first) and ``temperature`` always
applies (last) unless the chain places them; so temperature 0 means greedy whatever the chain.

A chain made of the built-in steps in the default order (``DEFAULT_SAMPLERS``, any of them left
out) runs as the fused kernel ``pyllm::sample_tokens``. Any other order, or a chain with another
step (mirostat_v2, dry, xtc, a plugin's), runs step by step: each step maps logits to logits,
then the same kernel draws from the result with every filter off, so both paths use the same
Philox stream and give the same tokens for the same chain.

The random stream of a row is keyed by (seed, position): ``SamplingParams.seed``, or a random
seed drawn once per request and kept in the row's state; position = the index of the token being
sampled in the whole sequence (prompt length + tokens generated so far). A seeded request
therefore draws the same tokens alone or in any batch.

Log-probs are those of the model's distribution (log-softmax of the logits as given).

A ``token_mask`` (int32 ``[B, ceil(V/32)]``, one bit per token; structured output's constraint,
pyllm/constraints) removes the tokens whose bit is 0 before every step of the chain: the fused
kernel takes it as an input; the step-by-step path applies it to the logits first. Log-probs stay
those of the unmasked model distribution.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pyllm.ops import sampling as sampling_ops
from pyllm.sampling_params import DEFAULT_SAMPLERS, SamplingParams, split_chain
from pyllm.types import SamplerStep, SamplingContext

__all__ = ["FUSED_ORDER", "SampleResult", "Sampler", "parse_chain"]

# The built-in steps the fused kernel implements, in the order it applies them.
FUSED_ORDER = tuple(split_chain(DEFAULT_SAMPLERS))
SEED_KEY = "seed"  # where a row's effective seed lives in its state dict
_GRAPH_ROW_KEY = "graph_row"  # (params, Sampler._graph_row(params)), cached in the state dict


@dataclass
class SampleResult:
    """One sampled token per row, with its log-prob under the model's distribution.

    ``top_ids`` / ``top_logprobs`` are ``[B, n]`` for n = the largest ``logprobs`` asked for in
    the batch (rows that asked for fewer use the first columns), or None when no row asked.
    ``probs`` is each token's probability under the filtered, tempered distribution it was drawn
    from. ``logprobs`` is NaN only from a Sampler made with ``skip_unrequested_logprobs=True``,
    for a batch in which no row asked for log-probs (``SamplingParams.logprobs`` None).
    """

    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor  # [B] float32
    top_ids: torch.Tensor | None = None  # [B, n] int64
    top_logprobs: torch.Tensor | None = None  # [B, n] float32
    probs: torch.Tensor | None = None  # [B] float32: under the sampling distribution (1 = greedy)


def parse_chain(chain: str | None, registry: Mapping[str, Any]) -> tuple[str, ...]:
    """The step names of ``chain`` (None = ``DEFAULT_SAMPLERS``), completed with the implicit
    ``logit_bias`` and ``temperature`` steps. An unknown name raises a ValueError that names it and
    lists the registered steps."""
    names = split_chain(chain or DEFAULT_SAMPLERS)
    for name in names:
        if name not in registry:
            near = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}? " if near else ""
            known = ", ".join(sorted(registry)) or "(none: is the pyllm_samplers plugin loaded?)"
            raise ValueError(
                f"unknown sampler step {name!r} in SamplingParams.samplers "
                f"{chain!r}; {hint}registered steps: {known}"
            )
    if "logit_bias" not in names:
        names.insert(names.index("penalties") + 1 if "penalties" in names else 0, "logit_bias")
    if "temperature" not in names:
        names.append("temperature")
    return tuple(names)


def _fusable(names: tuple[str, ...], registry: Mapping[str, Any]) -> bool:
    """True when every step is a built-in fused step, each once, in the kernel's order."""
    if len(set(names)) != len(names):
        return False
    if not all(n in FUSED_ORDER and getattr(registry[n], "fusable", False) for n in names):
        return False
    positions = [FUSED_ORDER.index(n) for n in names]
    return positions == sorted(positions)


def penalty_window(
    params: SamplingParams, prompt: Sequence[int], output: Sequence[int]
) -> list[int]:
    """The last ``penalty_last_n`` tokens of prompt + output (-1 = all of them, 0 = none)."""
    n = params.penalty_last_n
    if n == 0:
        return []
    if n < 0:
        return list(prompt) + list(output)
    tail = list(output[-n:])
    need = n - len(tail)
    return (list(prompt[-need:]) if need > 0 else []) + tail


def _signed64(seed: int) -> int:
    return seed - (1 << 64) if seed >= 1 << 63 else seed


class Sampler:
    """Samples one token per row from a batch of logits, each row with its own SamplingParams.

    ``steps`` maps step names to SamplerStep objects (default: the plugin registry, looked up on
    first use). ``tokenizer`` is handed to steps that need token text (DRY's sequence breakers)
    as ``context.tokenizer``. ``fused=False`` forces the step-by-step path (tests, debugging).

    A batch whose rows are all plain greedy (see `_plain_greedy`) takes a fast path on the CPU:
    the argmax, without the fused kernel's parameter tensors and filter passes; same result.
    ``skip_unrequested_logprobs=True`` lets that path also skip the chosen tokens' log-probs (a
    float64 log-softmax normalizer over the vocabulary, most of its cost) and return NaN for them
    when no row asked for log-probs: for callers that read log-probs only where asked (the engine).
    """

    def __init__(
        self,
        steps: Mapping[str, SamplerStep] | None = None,
        *,
        tokenizer: Any = None,
        fused: bool = True,
        skip_unrequested_logprobs: bool = False,
    ) -> None:
        self._steps = dict(steps) if steps is not None else None
        self.tokenizer = tokenizer
        self.fused = fused
        self.skip_unrequested_logprobs = skip_unrequested_logprobs
        self._chains: dict[str | None, tuple[str, ...]] = {}
        # chain key -> (fusable, has penalties, has typical_p): what the greedy fast path checks
        self._chain_info: dict[str | None, tuple[bool, bool, bool]] = {}

    @property
    def steps(self) -> dict[str, SamplerStep]:
        if self._steps is None:
            from pyllm import plugins

            self._steps = dict(plugins.samplers())
        return self._steps

    def chain(self, params: SamplingParams) -> tuple[str, ...]:
        key = params.samplers
        if key not in self._chains:
            self._chains[key] = parse_chain(key, self.steps)
        return self._chains[key]

    def _plain_greedy(self, p: SamplingParams) -> bool:
        """True when the fused kernel would return this row's argmax of the logits as given:
        temperature 0 through a fused chain, no penalty or logit bias that changes the logits,
        no typical_p (the one filter that can remove the best token), and no top-n log-probs."""
        if p.temperature != 0.0 or p.logprobs is not None or p.logit_bias:
            return False
        info = self._chain_info.get(p.samplers)
        if info is None:
            names = self.chain(p)
            info = (_fusable(names, self.steps), "penalties" in names, "typical_p" in names)
            self._chain_info[p.samplers] = info
        fusable, penalties, typical = info
        if not fusable or (typical and p.typical_p != 1.0):
            return False
        return not (
            penalties
            and p.penalty_last_n != 0
            and (
                p.repetition_penalty != 1.0
                or p.frequency_penalty != 0.0
                or p.presence_penalty != 0.0
            )
        )

    # ------------------------------------------------------------------------------ sampling

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        prompt_ids: Sequence[Sequence[int]],
        output_ids: Sequence[Sequence[int]],
        state: list[dict[str, Any]] | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> SampleResult:
        """One token per row of ``logits`` [B, V] (float32). ``state`` holds a dict per row that
        lives as long as the request (the row's seed when unseeded, mirostat's mu...).
        ``token_mask`` (int32 [B, ceil(V/32)], or None) allows only the tokens whose bit is set."""
        B = logits.shape[0]
        if not (len(params) == len(prompt_ids) == len(output_ids) == B):
            raise ValueError(
                f"logits has {B} rows but got {len(params)} params, "
                f"{len(prompt_ids)} prompts and {len(output_ids)} outputs"
            )
        if state is None:
            state = [{} for _ in range(B)]
        elif len(state) != B:
            raise ValueError(f"state must hold one dict per row ({B}), got {len(state)}")
        logits = logits.float()
        if token_mask is not None:
            W = (logits.shape[1] + 31) // 32
            if token_mask.dtype != torch.int32 or tuple(token_mask.shape) != (B, W):
                raise ValueError(
                    f"token_mask must be int32 [{B}, {W}], got {token_mask.dtype} "
                    f"{list(token_mask.shape)}"
                )
            token_mask = token_mask.to(logits.device, non_blocking=True)
        if (
            B
            and self.fused
            and token_mask is None
            and logits.device.type == "cpu"
            and _GREEDY_KERNEL
            and all(self._plain_greedy(p) for p in params)
        ):
            for p, s in zip(params, state):
                self._seed(p, s)  # as the full path does: the state holds the row's seed
            return _greedy(logits, not self.skip_unrequested_logprobs)
        chains = [self.chain(p) for p in params]
        n_top = max((p.logprobs or 0) for p in params) if B else 0
        n_top = min(n_top, logits.shape[1]) if B else 0
        seeds = [self._seed(p, s) for p, s in zip(params, state)]
        positions = [len(pr) + len(out) for pr, out in zip(prompt_ids, output_ids)]

        fused_rows = [b for b in range(B) if self.fused and _fusable(chains[b], self.steps)]
        if len(fused_rows) == B:
            result = self._fused(
                logits, params, prompt_ids, output_ids, chains, seeds, positions, n_top, token_mask
            )
        else:
            result = self._empty(B, n_top, logits.device)
            if fused_rows:
                self._scatter(
                    result,
                    fused_rows,
                    self._fused(
                        logits[fused_rows],
                        [params[b] for b in fused_rows],
                        [prompt_ids[b] for b in fused_rows],
                        [output_ids[b] for b in fused_rows],
                        [chains[b] for b in fused_rows],
                        [seeds[b] for b in fused_rows],
                        [positions[b] for b in fused_rows],
                        n_top,
                        None if token_mask is None else token_mask[fused_rows],
                    ),
                )
            groups: dict[tuple[str, ...], list[int]] = {}
            for b in range(B):
                if b not in fused_rows:
                    groups.setdefault(chains[b], []).append(b)
            for names, rows in groups.items():
                ctx = SamplingContext(
                    params=[params[b] for b in rows],
                    prompt_ids=[prompt_ids[b] for b in rows],
                    output_ids=[output_ids[b] for b in rows],
                    state=[state[b] for b in rows],
                )
                ctx.tokenizer = self.tokenizer  # type: ignore[attr-defined]  # extra, read by DRY
                self._scatter(
                    result,
                    rows,
                    self._stepwise(
                        logits[rows],
                        ctx,
                        names,
                        [seeds[b] for b in rows],
                        [positions[b] for b in rows],
                        n_top,
                        None if token_mask is None else token_mask[rows],
                    ),
                )
        if n_top == 0:
            result.top_ids = result.top_logprobs = None
        return result

    @staticmethod
    def _seed(params: SamplingParams, state: dict[str, Any]) -> int:
        if params.seed is not None:
            state.setdefault(SEED_KEY, params.seed)
            return params.seed
        if SEED_KEY not in state:
            state[SEED_KEY] = random.SystemRandom().getrandbits(64)
        return state[SEED_KEY]

    @staticmethod
    def _empty(B: int, n_top: int, device: torch.device) -> SampleResult:
        return SampleResult(
            torch.zeros(B, dtype=torch.int64, device=device),
            torch.zeros(B, dtype=torch.float32, device=device),
            torch.zeros(B, n_top, dtype=torch.int64, device=device),
            torch.zeros(B, n_top, dtype=torch.float32, device=device),
            torch.zeros(B, dtype=torch.float32, device=device),
        )

    @staticmethod
    def _scatter(result: SampleResult, rows: list[int], part: SampleResult) -> None:
        idx = torch.tensor(rows, dtype=torch.int64, device=result.token_ids.device)
        result.token_ids[idx] = part.token_ids
        result.logprobs[idx] = part.logprobs
        assert result.probs is not None and part.probs is not None  # made by _empty / the kernel
        result.probs[idx] = part.probs
        if part.top_ids is not None and part.top_ids.shape[1]:
            assert result.top_ids is not None and result.top_logprobs is not None
            assert part.top_logprobs is not None
            result.top_ids[idx] = part.top_ids
            result.top_logprobs[idx] = part.top_logprobs

    # ------------------------------------------------------------------------------ fused path

    @staticmethod
    def _param_row(
        p: SamplingParams, names: tuple[str, ...], seed: int, position: int
    ) -> tuple[list[float], list[int]]:
        """A row of the fused kernel's fparams and iparams: the chain's steps that are on take
        the request's values, the others their neutral ones."""
        on = set(names)
        frow = [
            getattr(p, field) if step in on else neutral
            for field, step, neutral in zip(
                sampling_ops.FPARAMS, sampling_ops.FPARAM_STEPS, sampling_ops.NEUTRAL_FPARAMS
            )
        ]
        return frow, [p.top_k if "top_k" in on else 0, _signed64(seed), position]

    @staticmethod
    def _window(
        p: SamplingParams, names: tuple[str, ...], prompt: Sequence[int], output: Sequence[int]
    ) -> list[int]:
        """The ids the penalties look at for this row (empty when no penalty is on)."""
        return penalty_window(p, prompt, output) if Sampler._penalizes(p, names) else []

    @staticmethod
    def _penalizes(p: SamplingParams, names: tuple[str, ...]) -> bool:
        return "penalties" in names and (
            p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        )

    def _graph_row(self, p: SamplingParams) -> tuple[list[float] | None, int, bool]:
        """A request's constant part of its graph row: (fparams row, or None when the graph can
        never sample it; its iparams top-k; whether a penalty window would disqualify a step)."""
        names = self.chain(p)
        if (
            p.logprobs
            or not _fusable(names, self.steps)
            or (p.logit_bias and "logit_bias" in names)
        ):
            return None, 0, False
        frow, irow = self._param_row(p, names, 0, 0)
        return frow, irow[0], self._penalizes(p, names)

    def graph_params(
        self,
        params: Sequence[SamplingParams],
        prompt_ids: Sequence[Sequence[int]],
        output_ids: Sequence[Sequence[int]],
        state: list[dict[str, Any]],
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The fused kernel's parameter rows (fparams [B, 7] float32, iparams [B, 3] int64, on
        the CPU) for a step whose sampling can run inside a captured decode graph (see
        CudaGraphRunner.decode_and_sample): every row through a fused chain, with no penalty
        window, logit bias or top log-probs, the inputs whose size changes from step to step.
        None otherwise: sample the logits with `sample`. The kernel then computes what `sample`
        would for these rows (the same kernel on the same inputs)."""
        if not self.fused:
            return None
        frows, irows = [], []
        for p, prompt, output, st in zip(params, prompt_ids, output_ids, state):
            cached = st.get(_GRAPH_ROW_KEY)
            if cached is None or cached[0] is not p:  # once per request: its params never change
                cached = st[_GRAPH_ROW_KEY] = (p, *self._graph_row(p))
            _, frow, top_k, penalizes = cached
            if frow is None or (penalizes and penalty_window(p, prompt, output)):
                return None
            frows.append(frow)
            irows.append([top_k, _signed64(self._seed(p, st)), len(prompt) + len(output)])
        B = len(frows)
        return (
            torch.tensor(frows, dtype=torch.float32).reshape(B, len(sampling_ops.FPARAMS)),
            torch.tensor(irows, dtype=torch.int64).reshape(B, len(sampling_ops.IPARAMS)),
        )

    def _fused(
        self,
        logits,
        params,
        prompt_ids,
        output_ids,
        chains,
        seeds,
        positions,
        n_top,
        token_mask=None,
    ):
        B, V = logits.shape
        dev = logits.device
        frows, irows, windows = [], [], []
        bias_rows, bias_ids, bias_values = [], [], []
        for b, (p, names) in enumerate(zip(params, chains)):
            frow, irow = self._param_row(p, names, seeds[b], positions[b])
            frows.append(frow)
            irows.append(irow)
            windows.append(self._window(p, names, prompt_ids[b], output_ids[b]))
            if p.logit_bias and "logit_bias" in names:
                for tid, bias in p.logit_bias.items():
                    if tid < V:  # ids beyond this model's vocabulary cannot be sampled anyway
                        bias_rows.append(b)
                        bias_ids.append(tid)
                        bias_values.append(bias)
        fparams = torch.tensor(frows, dtype=torch.float32).reshape(B, len(sampling_ops.FPARAMS))
        iparams = torch.tensor(irows, dtype=torch.int64).reshape(B, len(sampling_ops.IPARAMS))
        N = max((len(w) for w in windows), default=0)
        recent = torch.full((B, N), -1, dtype=torch.int64)
        for b, w in enumerate(windows):
            if w:
                recent[b, N - len(w) :] = torch.tensor([t if 0 <= t < V else -1 for t in w])
        tensors = [
            fparams,
            iparams,
            recent,
            torch.tensor(bias_rows, dtype=torch.int64),
            torch.tensor(bias_ids, dtype=torch.int64),
            torch.tensor(bias_values, dtype=torch.float32),
        ]
        tensors = [t.to(dev, non_blocking=True) for t in tensors]
        # Everything was built here from validated SamplingParams: call the kernel directly.
        tok, lp, top_ids, top_lp, probs = sampling_ops.launch_sample_tokens(
            logits, *tensors, n_top, token_mask
        )
        return SampleResult(tok, lp, top_ids, top_lp, probs)

    # ------------------------------------------------------------------------ step-by-step path

    def _stepwise(
        self, logits, ctx: SamplingContext, names, seeds, positions, n_top, token_mask=None
    ):
        raw = logits
        z = logits.clone()
        if token_mask is not None:
            z = z.masked_fill(~sampling_ops.token_mask_bits(token_mask, z.shape[1]), float("-inf"))
        for name in names:
            z = self.steps[name](z, ctx)
            if z.shape != raw.shape:
                raise ValueError(
                    f"sampler step {name!r} returned shape {list(z.shape)}, "
                    f"expected {list(raw.shape)}"
                )
        B = z.shape[0]
        neutral = torch.tensor([sampling_ops.NEUTRAL_FPARAMS] * B, dtype=torch.float32)
        irows = torch.tensor(
            [[0, _signed64(s), pos] for s, pos in zip(seeds, positions)], dtype=torch.int64
        ).reshape(B, 3)
        empty = torch.empty(0, dtype=torch.int64, device=z.device)
        tok, _, _, _, probs = sampling_ops.launch_sample_tokens(
            z.float().contiguous(),
            neutral.to(z.device),
            irows.to(z.device),
            torch.empty(B, 0, dtype=torch.int64, device=z.device),
            empty,
            empty,
            torch.empty(0, dtype=torch.float32, device=z.device),
            0,
        )
        lp, top_ids, top_lp = model_logprobs(raw, tok, n_top)
        return SampleResult(tok, lp, top_ids, top_lp, probs)


_GREEDY_KERNEL = sampling_ops.L._C is not None and hasattr(sampling_ops.L._C, "greedy_tokens_ptr")


def _greedy(logits: torch.Tensor, with_logprobs: bool = True) -> SampleResult:
    """The greedy fast path on the CPU: what the fused kernel returns for rows that pass
    `Sampler._plain_greedy` (argmax, ties to the lowest id; the same log-probs bit for bit, or NaN
    without `with_logprobs`; probs 1), without building its parameter tensors or running its
    filter passes."""
    B, V = logits.shape
    logits = logits.contiguous()
    tok = torch.empty(B, dtype=torch.int64)
    lp = torch.empty(B, dtype=torch.float32)
    probs = torch.empty(B, dtype=torch.float32)
    # Every tensor was made or checked here (float32, contiguous, CPU): pointers suffice.
    sampling_ops.L._C.greedy_tokens_ptr(
        logits.data_ptr(), B, V, tok.data_ptr(), lp.data_ptr(), probs.data_ptr(), with_logprobs
    )
    return SampleResult(tok, lp, None, None, probs)


def model_logprobs(logits: torch.Tensor, tokens: torch.Tensor, n_top: int):
    """Log-probs of ``tokens`` under log_softmax(logits), and the n_top best alternatives in rank
    order (logit descending, then id ascending: exact, even through ties)."""
    x = logits.double()
    lse = torch.logsumexp(x, dim=-1)  # (B,)
    lp = (x.gather(1, tokens[:, None])[:, 0] - lse).float()
    B = logits.shape[0]
    top_ids = torch.zeros(B, n_top, dtype=torch.int64, device=logits.device)
    top_lp = torch.zeros(B, n_top, dtype=torch.float32, device=logits.device)
    if n_top:
        nth = torch.topk(logits, n_top, dim=-1).values[:, -1:]  # (B, 1): the n-th largest value
        for b in range(B):
            cand = torch.nonzero(logits[b] >= nth[b]).flatten()  # ascending ids
            order = torch.sort(logits[b, cand], descending=True, stable=True).indices[:n_top]
            top_ids[b] = cand[order]
        top_lp = (x.gather(1, top_ids) - lse[:, None]).float()
    return lp, top_ids, top_lp
