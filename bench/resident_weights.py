"""How much memory a GGUF model's weights hold once loaded and run, against the file's tensor bytes.

    python bench/resident_weights.py                        # $PYLLM_HOME/bench/...Q4_K_M.gguf
    python bench/resident_weights.py --model FILE.gguf

Each configuration runs in a fresh process: load the file, generate 16 tokens greedily, then
count the weights' memory: the resident pages of the file's mapping (/proc/self/smaps; the
blocks pyllm computes on as stored), tensors copied at load (the fused q/k/v and gate/up
matrices, whose mapped source pages are then left untouched; PYLLM_NATIVE_KQUANTS=0 also turns
Q5 and K-quant blocks into Q8_0 copies), and the int8 path's prepacked panels (AVX-512; the
mapped pages they replace are released, the fused copies are kept for the exact path). Printed
per configuration with the ratio to the file's tensor bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CONFIGS = {  # name: (environment, int8 activations)
    "native, exact": ({}, False),
    "native, int8": ({}, True),
    "converted to Q8_0, exact": ({"PYLLM_NATIVE_KQUANTS": "0"}, False),
}


def mapping_rss_bytes(g) -> int:
    """Resident bytes of the GGUFFile `g`'s own mapping of its file."""
    import torch

    start = torch.frombuffer(g._mm, dtype=torch.uint8, count=1).data_ptr()
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and ":" not in head[0]:  # a mapping's header line
                inside = int(head[0].split("-")[0], 16) == start
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def worker(model: str, int8: bool) -> dict:
    import pyllm
    from pyllm.ops.qlinear import QWeight
    from pyllm.sampling_params import SamplingParams

    llm = pyllm.load(model, progress=False, int8_activations=int8)
    llm.generate("The capital of France is", SamplingParams.greedy(max_tokens=16))
    g = llm.loaded.gguf
    mapped = {t.data_ptr() for t in (g.raw(name) for name in g.tensors)}
    converted = 0
    seen: set[int] = set()
    for module in llm.model.gpt.modules():
        for value in vars(module).values():
            w = value if isinstance(value, QWeight) else None
            if w is None or w.data.data_ptr() in seen:
                continue
            seen.add(w.data.data_ptr())
            if w.data.data_ptr() not in mapped:  # a copy made at load
                converted += w.data.numel() * w.data.element_size()
    fast = llm.model._fast
    packed = fast.runner.packed_bytes if fast else 0
    tensor_bytes = sum(t.nbytes for t in g.tensors.values())
    return dict(
        mapped=mapping_rss_bytes(g), converted=converted, packed=packed, tensor_bytes=tensor_bytes
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", help="GGUF path (default: the Q4_K_M file bench/make_kquant_models.py makes)"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.model is None:
        from pyllm.weights.pull import pyllm_home

        a.model = str(pyllm_home() / "bench" / "SmolLM2-135M-Instruct.Q4_K_M.gguf")
    if a.worker:
        print(json.dumps(worker(a.model, CONFIGS[a.worker][1])))
        return 0
    print(f"model {Path(a.model).name}")
    heads = ("mapped", "copied", "packed", "total", "/ tensors")
    print(f"{'configuration':28} " + " ".join(f"{h:>10}" for h in heads))
    for name, (env, _) in CONFIGS.items():
        out = subprocess.run(
            [sys.executable, __file__, "--model", a.model, "--worker", name],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            print(f"{name:28} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["mapped"] + r["converted"] + r["packed"]
        mib = 1 << 20
        sizes = [r["mapped"], r["converted"], r["packed"], total]
        print(
            f"{name:28} "
            + " ".join(f"{v / mib:9.1f}M" for v in sizes)
            + f" {total / r['tensor_bytes']:10.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
