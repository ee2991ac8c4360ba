"""Time pyllm's quantized linear against torch's float32 matmul and the reference.

    python bench/qlinear.py [--threads 2] [--repeats 15] [--tokens 1,256] [--clock wall|cpu]

SmolLM2-135M shapes (Q4_1 attention/FFN matrices, fused QKV and gate/up as the model loads
them, the Q8_0 49152x576 tied LM head), random weights. For each shape and token count:

  pyllm   pyllm.ops.linear on the GGUF blocks (the model's entry; raw-pointer hot path)
  torch   torch.nn.functional.linear on the dequantized float32 weight (what transformers does)
  ref     qlinear_ref: dequantize, then matmul (the op's meaning; no caching)

Figures: median microseconds per call, GB/s of weight bytes each one reads (pyllm reads the
blocks, torch the float32 matrix), and torch's time divided by pyllm's. The "decode token" row
is the sum over one decoded token's matrices: 30 layers x (q, k, v, o, gate, up, down) + head,
96.4 MB of blocks, i.e. the GEMV share of a batch-1 decode step.

--clock cpu times with the process CPU clock instead of the wall clock: on a machine shared with
other work (load above the core count) wall times mostly measure waiting for a core; with
--threads 1, CPU time is what the kernel costs when it has a core to itself.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pyllm import _C
from pyllm.ops.qlinear import QWeight, linear, qlinear_ref
from pyllm.weights.quant import quantize

N_EMBD, N_FF, N_KV, VOCAB, LAYERS = 576, 1536, 192, 49152, 30
SHAPES = [  # name, out, in, qtype
    ("q/o 576x576", N_EMBD, N_EMBD, "q4_1"),
    ("k/v 192x576", N_KV, N_EMBD, "q4_1"),
    ("qkv 960x576", N_EMBD + 2 * N_KV, N_EMBD, "q4_1"),
    ("gate/up 1536x576", N_FF, N_EMBD, "q4_1"),
    ("gate_up 3072x576", 2 * N_FF, N_EMBD, "q4_1"),
    ("down 576x1536", N_EMBD, N_FF, "q4_1"),
    ("head 49152x576 q8_0", VOCAB, N_EMBD, "q8_0"),
]


CLOCK = time.perf_counter


def median_s(fn, repeats: int, min_time: float = 0.02) -> float:
    """Median seconds per call; each timing batches enough calls to last min_time."""
    fn()
    n = 1
    while True:
        t = CLOCK()
        for _ in range(n):
            fn()
        if CLOCK() - t >= min_time:
            break
        n *= 2
    times = []
    for _ in range(repeats):
        t = CLOCK()
        for _ in range(n):
            fn()
        times.append((CLOCK() - t) / n)
    return statistics.median(times)


def bench_shape(name, n, k, qtype, tokens, repeats, with_ref):
    gen = torch.Generator().manual_seed(0)
    w = QWeight(quantize(torch.randn(n, k, generator=gen) * 0.05, qtype), qtype, n, k)
    wf = w.dequantize()
    x = torch.randn(tokens, k, generator=gen)
    out = torch.empty(tokens, n)
    t_pyllm = median_s(lambda: linear(x, w, out=out), repeats)
    t_torch = median_s(lambda: F.linear(x, wf), repeats)
    t_ref = median_s(lambda: qlinear_ref(x, w.data, w.code, n), max(3, repeats // 3)) if with_ref else float("nan")
    qbytes, fbytes = w.data.numel() * w.data.element_size(), wf.numel() * 4
    print(f"{name:22s} T={tokens:<4d} pyllm {t_pyllm * 1e6:9.1f} us {qbytes / t_pyllm / 1e9:6.1f} GB/s "
          f"{2 * tokens * n * k / t_pyllm / 1e9:6.1f} GFLOP/s | torch {t_torch * 1e6:9.1f} us "
          f"{fbytes / t_torch / 1e9:6.1f} GB/s | ref {t_ref * 1e6:9.1f} us | torch/pyllm {t_torch / t_pyllm:5.2f}x")
    return t_pyllm, t_torch


def bench_decode_token(repeats: int) -> None:
    """All GEMVs of one decoded token, each matrix its own memory (nothing stays in cache)."""
    gen = torch.Generator().manual_seed(1)
    mats = []
    for _ in range(LAYERS):
        for n, k in [(N_EMBD + 2 * N_KV, N_EMBD), (N_EMBD, N_EMBD), (2 * N_FF, N_EMBD), (N_EMBD, N_FF)]:
            mats.append(QWeight(quantize(torch.randn(n, k, generator=gen) * 0.05, "q4_1"), "q4_1", n, k))
    mats.append(QWeight(quantize(torch.randn(VOCAB, N_EMBD, generator=gen) * 0.05, "q8_0"), "q8_0", VOCAB, N_EMBD))
    total = sum(m.data.numel() for m in mats)
    xs = {k: torch.randn(1, k) for k in (N_EMBD, N_FF)}
    outs = {m.out_features: torch.empty(1, m.out_features) for m in mats}

    def token():
        for m in mats:
            linear(xs[m.in_features], m, out=outs[m.out_features])

    t = median_s(token, repeats, min_time=0.0)
    print(f"decode token: {len(mats)} GEMVs over {total / 1e6:.1f} MB of blocks: {t * 1e3:.2f} ms "
          f"= {total / t / 1e9:.1f} GB/s (GEMV-only ceiling {1 / t:.0f} tokens/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--tokens", default="1,256", help="comma-separated token counts (1 = decode GEMV)")
    ap.add_argument("--no-ref", action="store_true", help="skip the (slow) reference timings")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall clock (default) or process CPU time (see above)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    _C.set_num_threads(args.threads)
    print(f"threads {args.threads}, ISA {_C.cpu_isa()}, torch {torch.__version__}, {args.clock} clock")
    for tokens in [int(t) for t in args.tokens.split(",")]:
        tp = tt = 0.0
        for name, n, k, qtype in SHAPES:
            a, b = bench_shape(name, n, k, qtype, tokens, args.repeats, not args.no_ref)
            if "qkv" not in name and "gate_up" not in name:  # the unfused set is one layer's worth
                mult = 2 if name.startswith(("q/o", "k/v", "gate/up")) else 1
                mult = 1 if name.startswith("head") else mult * LAYERS
                tp, tt = tp + a * mult, tt + b * mult
        print(f"{'model total (unfused)':22s} T={tokens:<4d} pyllm {tp * 1e3:8.2f} ms  torch {tt * 1e3:8.2f} ms  "
              f"torch/pyllm {tt / tp:5.2f}x  ({tokens / tp:.0f} vs {tokens / tt:.0f} tokens/s on matmuls alone)")
    bench_decode_token(args.repeats)


if __name__ == "__main__":
    main()
