"""The fused sampler: `pyllm::sample_tokens`, its reference, and the Philox stream it draws from.

Schema::

    sample_tokens(Tensor logits, Tensor fparams, Tensor iparams, Tensor recent_ids,
                  Tensor bias_rows, Tensor bias_ids, Tensor bias_values, int num_logprobs)
        -> (Tensor token_ids, Tensor logprobs, Tensor top_ids, Tensor top_logprobs, Tensor probs)

Inputs (B rows, V vocabulary):
    logits       float32 [B, V]
    fparams      float32 [B, 7]: temperature, top_p, min_p, typical_p, repetition_penalty,
                 frequency_penalty, presence_penalty (``FPARAMS`` names the columns)
    iparams      int64 [B, 3]: top_k, seed (the 64 bits as a signed int64), position
    recent_ids   int64 [B, N]: the penalty window (the last N tokens), -1 = padding; N may be 0
    bias_rows, bias_ids  int64 [K]; bias_values float32 [K]: logit bias as sparse (row, id, bias)
    num_logprobs the number of top alternatives to return per row (0..V)
Outputs: token_ids int64 [B], logprobs float32 [B], top_ids int64 [B, n], top_logprobs float32
[B, n], probs float32 [B] (the chosen token's probability under the distribution it was drawn
from: after every filter and the temperature; 1 when greedy, 0 for a row with no finite logit).

What one row computes (the CPU and CUDA kernels and ``sample_tokens_ref`` all follow this):

0. Token mask (optional, ``token_mask`` int32 ``[B, ceil(V/32)]``, one bit per id: id i is bit
   ``i % 32`` of word ``i // 32``): ``z[i] = -inf`` where the bit is 0 (structured output's
   constraint, pyllm/constraints). A row whose mask allows nothing returns token 0, as below.
1. ``z = logits`` (float32), masked as in 0. Penalties, once per distinct id t in the window
   with count c: repetition (CTRL): ``z[t] = z[t] / r if z[t] > 0 else z[t] * r``; then
   frequency and presence (OpenAI): ``z[t] -= c * frequency + presence``.
2. Logit bias: ``z[id] += bias`` for each (row, id, bias) entry of this row.
3. K = the ids with a finite ``z`` (``-inf`` bans a token; NaN counts as banned). The *rank
   order* is z descending, then id ascending. Each active filter narrows K, on the distribution
   renormalized over K (weights ``w = exp(z - max_K z)`` in float64):
   - top_k (k > 0): the first k of K in rank order;
   - typical_p (< 1): with ``d = max z - z`` and ``D = sum(w d) / sum(w)``, score
     ``float32(|d - D|)`` (= |surprise - entropy|); the fewest tokens in (score ascending, id
     ascending) order whose weight reaches ``typical_p * sum(w)``;
   - top_p (< 1): the fewest tokens in rank order whose weight reaches ``top_p * sum(w)``;
   - min_p (> 0): the tokens with ``exp(z - max z) >= min_p``.
4. Temperature 0: the first token of K in rank order (argmax, ties to the lowest id). Otherwise
   ``y = float32(z / T)`` over K, ``v = exp(y - max y)`` (float64), cumulative sums of v in id
   order, and the token is the first whose cumulative weight exceeds ``u * total``, where ``u``
   is the 53-bit uniform from Philox4x32-10 keyed by the row's seed at its position
   (:func:`philox_uniform`, stream 0). If ``z / T`` overflows, the argmax is taken.
   A row with no finite ``z`` returns token 0.
5. Log-probs are those of the model's own distribution: ``log_softmax(logits)`` of the logits as
   given (before penalties, bias, filters and temperature), like vLLM's default and OpenAI's
   ``logprobs``. Comparable across requests whatever their sampling settings; the top-n
   alternatives are the first n ids in rank order of the given logits. ``probs`` reports the
   sampling distribution instead: ``v[token] / total`` from step 4.

The kernels select without sorting the vocabulary. CPU: block maxima then a small sorted buffer
(or nth_element) for top-k; a mass histogram over the order keys' top bits and a mass-weighted
quickselect inside the boundary bucket for top-p and typical-p. CUDA: one thread block per row; a
threshold on a 64-bit order key found by an MSD radix walk (4 bits a level, fixed-order block
sums, no floating-point atomics) for all three. Sums are taken in float64, in a different order
than the reference's sorted cumsum, so a token whose cumulative mass lies within ~1e-15 of a
top-p boundary may land on the other side; away from such ties kernels and reference pick the
same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pyllm.ops import _library as L

__all__ = [
    "FPARAMS",
    "IPARAMS",
    "launch_sample_tokens",
    "philox4x32_10",
    "philox_uniform",
    "sample_tokens",
    "sample_tokens_ref",
    "token_mask_bits",
]

FPARAMS = (
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
)
IPARAMS = ("top_k", "seed", "position")
# An fparams row that changes nothing: temperature 1, every filter and penalty off.
NEUTRAL_FPARAMS = (1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0)
# The sampler-chain step that switches each fparams column on (its value is neutral otherwise).
FPARAM_STEPS = ("temperature", "top_p", "min_p", "typical_p", "penalties", "penalties", "penalties")
STREAM_DRAW = 0  # Philox streams (sub-sequences) for one token's random numbers
STREAM_XTC = 1

# ------------------------------------------------------------------------------- Philox

_M32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Salmon et al. 2011, Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # key schedule (Weyl sequence) constants


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    """Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011) in Python integers: 4 words -> 4 words."""
    c0, c1, c2, c3 = (int(c) & _M32 for c in counter)
    k0, k1 = (int(k) & _M32 for k in key)
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _M32, (k1 + _W1) & _M32
        p0, p1 = _M0 * c0, _M1 * c2
        c0, c1, c2, c3 = (
            ((p1 >> 32) ^ c1 ^ k0) & _M32,
            p1 & _M32,
            ((p0 >> 32) ^ c3 ^ k1) & _M32,
            p0 & _M32,
        )
    return c0, c1, c2, c3


def philox_uniform(seed: int, position: int, stream: int = STREAM_DRAW) -> float:
    """The sampler's uniform in [0, 1) for (seed, position, stream), 53 random bits.

    Counter = (position low, position high, stream, 0), key = (seed low, seed high); the value
    is the top 53 bits of ``word0 << 32 | word1`` over 2**53 (csrc/sampling/philox.h).
    """
    seed &= (1 << 64) - 1
    position &= (1 << 64) - 1
    w = philox4x32_10((position & _M32, position >> 32, stream, 0), (seed & _M32, seed >> 32))
    return ((w[0] << 32 | w[1]) >> 11) * 2.0**-53


# ---------------------------------------------------------------------------- reference


def _rank_order(values: torch.Tensor) -> torch.Tensor:
    """Indices of `values` (over ids in ascending order) by value descending, index ascending."""
    return torch.sort(values, descending=True, stable=True).indices


def _fewest_reaching(weights_in_order: torch.Tensor, target: float) -> int:
    cum = torch.cumsum(weights_in_order, 0)
    return min(int((cum < target).sum()) + 1, weights_in_order.numel())


def _choose_ref(
    z: torch.Tensor, f: list[float], top_k: int, seed: int, position: int
) -> tuple[int, float]:
    """The chosen token and its probability under the distribution it was drawn from."""
    temperature, top_p, min_p, typical_p = f[0], f[1], f[2], f[3]
    ids = torch.nonzero(z > float("-inf")).flatten()  # ascending; NaN is not > -inf
    if ids.numel() == 0:
        return 0, 0.0

    def best() -> tuple[int, float]:
        return int(ids[_rank_order(z[ids])[0]]), 1.0

    def weights():
        zk = z[ids].double()
        m = zk.max()
        return zk, m, torch.exp(zk - m)

    if temperature == 0.0 and not typical_p < 1.0:
        return best()
    if 0 < top_k < ids.numel():
        ids = ids[_rank_order(z[ids])[:top_k]].sort().values
    if typical_p < 1.0 and ids.numel() > 1:
        zk, m, w = weights()
        total = w.sum()
        d = m - zk
        score = (d - (w * d).sum() / total).abs().float()
        order = torch.sort(score, stable=True).indices
        keep = _fewest_reaching(w[order], typical_p * float(total))
        ids = ids[order[:keep]].sort().values
    if top_p < 1.0 and ids.numel() > 1:
        _, _, w = weights()
        order = _rank_order(z[ids])
        keep = _fewest_reaching(w[order], top_p * float(w.sum()))
        ids = ids[order[:keep]].sort().values
    if min_p > 0.0 and ids.numel() > 1:
        _, _, w = weights()
        ids = ids[w >= min_p]
    if temperature == 0.0:
        return best()
    y = z[ids] / torch.tensor(temperature, dtype=torch.float32)
    v = torch.exp(y.double() - y.max().double())
    cum = torch.cumsum(v, 0)
    total = float(cum[-1])
    if not (total > 0.0 and total < float("inf")):
        return best()
    u = philox_uniform(seed, position, STREAM_DRAW)
    j = int(torch.searchsorted(cum, torch.tensor([u * total], dtype=torch.float64), right=True)[0])
    return (int(ids[j]), float(v[j]) / total) if j < ids.numel() else best()


def token_mask_bits(token_mask: torch.Tensor, V: int) -> torch.Tensor:
    """bool [B, V]: True where ``token_mask`` (int32 [B, ceil(V/32)]) allows the token."""
    shifts = torch.arange(32, dtype=torch.int32, device=token_mask.device)
    bits = (token_mask.to(torch.int32).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(token_mask.shape[0], -1)[:, :V] != 0


def sample_tokens_ref(
    logits,
    fparams,
    iparams,
    recent_ids,
    bias_rows,
    bias_ids,
    bias_values,
    num_logprobs,
    token_mask=None,
):
    """Plain PyTorch, row by row: the meaning of `sample_tokens` (see the module docstring)."""
    device = logits.device
    allowed = (
        token_mask_bits(token_mask.cpu(), logits.shape[1])
        if token_mask is not None and token_mask.numel()
        else None
    )
    logits, fparams, iparams = logits.float().cpu(), fparams.float().cpu(), iparams.cpu()
    recent_ids, bias_rows, bias_ids = recent_ids.cpu(), bias_rows.cpu(), bias_ids.cpu()
    bias_values = bias_values.float().cpu()
    B, V = logits.shape
    tokens = torch.zeros(B, dtype=torch.int64)
    probs = torch.zeros(B, dtype=torch.float32)
    for b in range(B):
        z = logits[b].clone()
        if allowed is not None:
            z[~allowed[b]] = float("-inf")
        f = fparams[b]
        rep, freq, pres = f[4], f[5], f[6]
        if rep != 1 or freq != 0 or pres != 0:
            window = recent_ids[b][(recent_ids[b] >= 0) & (recent_ids[b] < V)]
            counts = torch.bincount(window, minlength=V).to(torch.float32)
            seen = counts > 0
            if rep != 1:
                z = torch.where(seen, torch.where(z > 0, z / rep, z * rep), z)
            z = torch.where(seen, z - (counts * freq + pres), z)
        mine = bias_rows == b
        if bool(mine.any()):
            z.index_put_((bias_ids[mine],), bias_values[mine], accumulate=True)
        top_k, seed, position = (int(v) for v in iparams[b])
        tokens[b], probs[b] = _choose_ref(z, [float(v) for v in f[:4]], top_k, seed, position)
    lse = torch.logsumexp(logits.double(), dim=-1)
    logprobs = (logits.double().gather(1, tokens[:, None])[:, 0] - lse).float()
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :num_logprobs]
    top_logprobs = (logits.double().gather(1, order) - lse[:, None]).float()
    return (
        tokens.to(device),
        logprobs.to(device),
        order.to(device),
        top_logprobs.to(device),
        probs.to(device),
    )


# ------------------------------------------------------------------------------ checks


def _check_shapes(
    logits,
    fparams,
    iparams,
    recent_ids,
    bias_rows,
    bias_ids,
    bias_values,
    num_logprobs,
    token_mask=None,
) -> None:
    L.check(
        logits.dtype == torch.float32 and logits.dim() == 2,
        f"logits must be float32 [B, V], got {logits.dtype} {list(logits.shape)}",
    )
    B, V = logits.shape
    L.check(V >= 1, "logits must have at least one column (the vocabulary)")
    L.check(V < 2**31, f"vocabulary too large: {V}")
    L.check(
        fparams.dtype == torch.float32 and tuple(fparams.shape) == (B, len(FPARAMS)),
        f"fparams must be float32 [{B}, {len(FPARAMS)}], got {fparams.dtype} {list(fparams.shape)}",
    )
    L.check(
        iparams.dtype == torch.int64 and tuple(iparams.shape) == (B, len(IPARAMS)),
        f"iparams must be int64 [{B}, {len(IPARAMS)}], got {iparams.dtype} {list(iparams.shape)}",
    )
    L.check(
        recent_ids.dtype == torch.int64 and recent_ids.dim() == 2 and recent_ids.shape[0] == B,
        f"recent_ids must be int64 [{B}, N], got {recent_ids.dtype} {list(recent_ids.shape)}",
    )
    K = bias_rows.shape[0] if bias_rows.dim() == 1 else -1
    L.check(
        bias_rows.dtype == torch.int64
        and bias_ids.dtype == torch.int64
        and bias_values.dtype == torch.float32
        and K >= 0
        and tuple(bias_ids.shape) == (K,)
        and tuple(bias_values.shape) == (K,),
        "bias_rows, bias_ids (int64) and bias_values (float32) must be 1-D of one length, got "
        f"{bias_rows.dtype} {list(bias_rows.shape)}, {bias_ids.dtype} {list(bias_ids.shape)}, "
        f"{bias_values.dtype} {list(bias_values.shape)}",
    )
    L.check(0 <= num_logprobs <= V, f"num_logprobs must be in 0..{V}, got {num_logprobs}")
    if token_mask is not None:
        L.check(
            token_mask.dtype == torch.int32
            and token_mask.dim() == 2
            and token_mask.shape[0] == B
            and token_mask.shape[1] in (0, (V + 31) // 32),
            f"token_mask must be int32 [{B}, {(V + 31) // 32}] (or [{B}, 0]), got "
            f"{token_mask.dtype} {list(token_mask.shape)}",
        )
        L.check_same_device(logits=logits, token_mask=token_mask)
    L.check_same_device(
        logits=logits,
        fparams=fparams,
        iparams=iparams,
        recent_ids=recent_ids,
        bias_rows=bias_rows,
        bias_ids=bias_ids,
        bias_values=bias_values,
    )


def _check_values(logits, fparams, iparams, recent_ids, bias_rows, bias_ids) -> None:
    """Parameter ranges and index bounds. Reads the small tensors: on the CPU through numpy (a few
    microseconds), on CUDA with one device-to-host copy (a sync)."""
    B, V = logits.shape
    if B == 0:
        return
    f = fparams.detach().cpu().numpy()
    i = iparams.detach().cpu().numpy()
    t, top_p, min_p, typ, rep = (f[:, c] for c in range(5))
    with np.errstate(invalid="ignore"):
        problems = [
            (~((t >= 0) & np.isfinite(t)), "temperature (fparams[:, 0]) must be finite and >= 0"),
            (~((top_p > 0) & (top_p <= 1)), "top_p (fparams[:, 1]) must be in (0, 1]"),
            (~((min_p >= 0) & (min_p <= 1)), "min_p (fparams[:, 2]) must be in [0, 1]"),
            (~((typ > 0) & (typ <= 1)), "typical_p (fparams[:, 3]) must be in (0, 1]"),
            (
                ~((rep > 0) & np.isfinite(rep)),
                "repetition_penalty (fparams[:, 4]) must be finite and > 0",
            ),
            (
                ~np.isfinite(f[:, 5:7]).all(1),
                "frequency/presence penalties (fparams[:, 5:7]) must be finite",
            ),
            (i[:, 0] < 0, "top_k (iparams[:, 0]) must be >= 0"),
            (i[:, 2] < 0, "position (iparams[:, 2]) must be >= 0"),
        ]
    for bad, message in problems:
        L.check(not bad.any(), message)
    if recent_ids.numel():
        r = recent_ids.detach().cpu().numpy()
        L.check(
            bool(((r >= -1) & (r < V)).all()),
            f"recent_ids must hold token ids in 0..{V - 1} or -1 (padding)",
        )
    if bias_rows.numel():
        rows, ids = bias_rows.detach().cpu().numpy(), bias_ids.detach().cpu().numpy()
        L.check(bool(((rows >= 0) & (rows < B)).all()), f"bias_rows must be in 0..{B - 1}")
        L.check(bool(((ids >= 0) & (ids < V)).all()), f"bias_ids must be in 0..{V - 1}")


# ------------------------------------------------------------------------ op and kernels

SAMPLE_TOKENS = L.define(
    "sample_tokens(Tensor logits, Tensor fparams, Tensor iparams, Tensor recent_ids, "
    "Tensor bias_rows, Tensor bias_ids, Tensor bias_values, int num_logprobs, "
    "Tensor? token_mask=None) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def _outputs(logits: torch.Tensor, num_logprobs: int):
    B, dev = logits.shape[0], logits.device
    return (
        torch.empty(B, dtype=torch.int64, device=dev),
        torch.empty(B, dtype=torch.float32, device=dev),
        torch.empty(B, num_logprobs, dtype=torch.int64, device=dev),
        torch.empty(B, num_logprobs, dtype=torch.float32, device=dev),
        torch.empty(B, dtype=torch.float32, device=dev),
    )


def _fake(
    logits,
    fparams,
    iparams,
    recent_ids,
    bias_rows,
    bias_ids,
    bias_values,
    num_logprobs,
    token_mask=None,
):
    _check_shapes(
        logits,
        fparams,
        iparams,
        recent_ids,
        bias_rows,
        bias_ids,
        bias_values,
        num_logprobs,
        token_mask,
    )
    return _outputs(logits, num_logprobs)


def launch_sample_tokens(
    logits,
    fparams,
    iparams,
    recent_ids,
    bias_rows,
    bias_ids,
    bias_values,
    num_logprobs: int,
    token_mask: torch.Tensor | None = None,
):
    """Run the kernel for the tensors' device with no checks (the caller built and checked them).

    The decode hot path (pyllm.sampler) uses this; `torch.ops.pyllm.sample_tokens` checks
    everything first and then does the same.
    """
    if token_mask is None:
        token_mask = torch.empty(logits.shape[0], 0, dtype=torch.int32, device=logits.device)
    args = [
        t.contiguous()
        for t in (
            logits,
            fparams,
            iparams,
            recent_ids,
            bias_rows,
            bias_ids,
            bias_values,
            token_mask,
        )
    ]
    outs = _outputs(logits, num_logprobs)
    if logits.shape[0] == 0:
        return outs
    if L.on_cuda(logits):
        _launch_cuda(args, outs)
    else:
        L._C.sample_tokens_cpu(*(L.view(t) for t in args), *(L.view(o) for o in outs))
    return outs


def _launch_cuda(args: list[torch.Tensor], outs) -> None:
    """The CUDA kernel on contiguous inputs (logits first; the token mask last, or left out for
    none), with its float64 workspace."""
    B, V = args[0].shape
    if len(args) == 7:
        args = [*args, torch.empty(B, 0, dtype=torch.int32, device=args[0].device)]
    workspace = torch.empty(B, 2 * V, dtype=torch.float64, device=args[0].device)
    L._C.sample_tokens_cuda(
        *(L.view(t) for t in args),
        L.view(workspace),
        *(L.view(o) for o in outs),
        L.cuda_stream(args[0].device),
    )


def _with_checks(impl: Callable[..., Any]) -> Callable[..., Any]:
    """`impl` (the kernel launch or the reference) behind the op's shape and value checks."""

    def checked(
        logits,
        fparams,
        iparams,
        recent_ids,
        bias_rows,
        bias_ids,
        bias_values,
        num_logprobs,
        token_mask=None,
    ):
        args = (logits, fparams, iparams, recent_ids, bias_rows, bias_ids, bias_values)
        _check_shapes(*args, num_logprobs, token_mask)
        _check_values(*args[:6])
        return impl(*args, num_logprobs, token_mask)

    return checked


_checked_kernel = _with_checks(launch_sample_tokens)
_checked_reference = _with_checks(sample_tokens_ref)


L.register(
    SAMPLE_TOKENS,
    reference=_checked_reference,
    fake=_fake,
    cpu=_checked_kernel,
    cuda=_checked_kernel,
    cuda_entry="sample_tokens_cuda",
)


def sample_tokens(
    logits: torch.Tensor,
    fparams: torch.Tensor,
    iparams: torch.Tensor,
    recent_ids: torch.Tensor | None = None,
    bias_rows: torch.Tensor | None = None,
    bias_ids: torch.Tensor | None = None,
    bias_values: torch.Tensor | None = None,
    num_logprobs: int = 0,
    token_mask: torch.Tensor | None = None,
):
    """Sample one token per row (see the module docstring); absent penalty/bias inputs are empty,
    an absent ``token_mask`` allows every token.

    Returns (token_ids [B] int64, logprobs [B] float32, top_ids [B, n], top_logprobs [B, n],
    probs [B] float32).
    """
    B, dev = logits.shape[0], logits.device
    if recent_ids is None:
        recent_ids = torch.empty(B, 0, dtype=torch.int64, device=dev)
    if bias_rows is None:
        bias_rows = torch.empty(0, dtype=torch.int64, device=dev)
        bias_ids = torch.empty(0, dtype=torch.int64, device=dev)
        bias_values = torch.empty(0, dtype=torch.float32, device=dev)
    return torch.ops.pyllm.sample_tokens(
        logits,
        fparams,
        iparams,
        recent_ids,
        bias_rows,
        bias_ids,
        bias_values,
        int(num_logprobs),
        token_mask,
    )
