"""Make real mixed K-quant GGUF files of the default model with llama.cpp's own quantizer.

    python bench/make_kquant_models.py                 # Q4_K_M and Q6_K under $PYLLM_HOME/bench
    python bench/make_kquant_models.py --types Q4_K_M --threads 2

The default model is only published as a Q4_1 GGUF, so the float GGUF this starts from is that
Q4_1 model dequantized (every tensor decoded to F32 by pyllm's own dequantizers,
pyllm/weights/quant.py), not the original bf16 checkpoint: the K-quant files made from it carry
the Q4_1 rounding plus their own. Every metadata key of the source is copied with its exact GGUF
value type (tokenizer, merges, chat template, ...); only `general.file_type` changes (to F32,
and then to the quantizer's type). llama.cpp's quantizer then runs through llama-cpp-python
(`llama_model_quantize` with `llama_model_quantize_default_params()`), as its `llama-quantize`
tool would: Q4_K_M is a mix, and tensors whose rows are not a multiple of 256 (SmolLM2's hidden
size is 576) fall back to other block types, which is the point of measuring on such a file.

Files already made are kept (`--force` remakes them). Each file's tensor-type census is printed:
type -> tensor count and bytes, and the total tensor bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

# llama.cpp file types (enum llama_ftype) by the names its quantize tool uses.
FTYPES = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K"}
LLAMA_FTYPE_ALL_F32 = 0
# Keys the writer sets itself, and GGUFReader's pseudo-fields for the header.
_SKIP_KEYS = ("general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


def bench_dir() -> Path:
    from pyllm.weights.pull import pyllm_home

    return pyllm_home() / "bench"


def _model_stem(source: Path) -> str:
    """ "SmolLM2-135M-Instruct" for "SmolLM2-135M-Instruct.Q4_1.gguf"."""
    return source.name.split(".")[0]


def float_path(source: Path, out_dir: Path) -> Path:
    """Where the dequantized float GGUF of `source` goes (its name says what it came from)."""
    src_type = source.stem.split(".")[-1] if "." in source.stem else "src"
    return out_dir / f"{_model_stem(source)}.F32-from-{src_type}.gguf"


def quant_path(source: Path, out_dir: Path, qtype: str) -> Path:
    return out_dir / f"{_model_stem(source)}.{qtype}.gguf"


def _copy_metadata(source: Path, writer) -> None:
    """Every key of `source` into `writer`, with the value types it has in the file."""
    from gguf import GGUFReader, GGUFValueType

    fields = GGUFReader(source).fields
    for key, field in fields.items():
        if key in _SKIP_KEYS:
            continue
        vtype = field.types[0]
        value = field.contents()
        if key == "general.file_type":
            value = LLAMA_FTYPE_ALL_F32
        if vtype == GGUFValueType.ARRAY:
            if len(field.types) > 2:
                raise ValueError(f"{source}: {key}: nested arrays are not copied by this script")
            writer.add_key_value(key, list(value), vtype, sub_type=field.types[1])
        else:
            writer.add_key_value(key, value, vtype)


def write_float_gguf(source: Path, dest: Path) -> None:
    """`source` with every tensor dequantized to F32 (written tensor by tensor, so only one
    float tensor is in memory at a time)."""
    from gguf import GGUFWriter

    from pyllm.weights import quant
    from pyllm.weights.gguf import load_gguf

    g = load_gguf(source)
    arch = g.metadata["general.architecture"]
    part = dest.with_name(dest.name + ".part")
    writer = GGUFWriter(part, arch)
    _copy_metadata(source, writer)
    if "general.file_type" not in g.metadata:
        writer.add_file_type(LLAMA_FTYPE_ALL_F32)
    for t in g.tensors.values():
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.n_elements * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in g.tensors.values():
        w = quant.dequantize(g.raw(t.name), t.type_name, t.shape[-1]).reshape(t.shape)
        writer.write_tensor_data(np.ascontiguousarray(w.numpy(), dtype=np.float32))
    writer.close()
    part.rename(dest)


def quantize(src: Path, dest: Path, qtype: str, threads: int) -> None:
    """llama.cpp's quantizer (default parameters, file type `qtype`) from `src` to `dest`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[qtype])
    params.nthread = threads
    part = dest.with_name(dest.name + ".part")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(part).encode(), ctypes.byref(params))
    if rc != 0:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to {qtype} failed (return code {rc})")
    part.rename(dest)


def census(path: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """({type: (tensor count, bytes)} sorted by bytes, total tensor bytes) of a GGUF file."""
    from pyllm.weights.gguf import load_gguf

    g = load_gguf(path)
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for t in g.tensors.values():
        counts[t.type_name] += 1
        sizes[t.type_name] += t.nbytes
    by_bytes = sorted(sizes, key=lambda k: -sizes[k])
    return {k.upper(): (counts[k], sizes[k]) for k in by_bytes}, sum(sizes.values())


def print_census(path: Path) -> None:
    types, total = census(path)
    print(f"{path}  ({path.stat().st_size / 2**20:.1f} MiB file)")
    for name, (n, nbytes) in types.items():
        print(f"  {name:<6} {n:4d} tensors  {nbytes:>12,d} bytes  ({100 * nbytes / total:5.1f} %)")
    print(
        f"  total  {sum(n for n, _ in types.values()):4d} tensors  {total:>12,d} bytes "
        f"({total / 2**20:.1f} MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="GGUF to start from (default: pyllm's default model)")
    p.add_argument("--out-dir", help="where the files go (default: $PYLLM_HOME/bench)")
    p.add_argument("--types", default="Q4_K_M,Q6_K", help=f"comma list of {', '.join(FTYPES)}")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--force", action="store_true", help="remake files that already exist")
    a = p.parse_args(argv)
    qtypes = [q.strip() for q in a.types.split(",") if q.strip()]
    bad = [q for q in qtypes if q not in FTYPES]
    if bad:
        print(
            f"error: --types: unknown {', '.join(bad)} (known: {', '.join(FTYPES)})",
            file=sys.stderr,
        )
        return 2
    if a.source:
        source = Path(a.source)
        if not source.is_file():
            print(f"error: --source: {source} is not a file", file=sys.stderr)
            return 2
    else:
        from pyllm.weights.pull import ensure_default_model

        source = ensure_default_model(progress=True)
    out_dir = Path(a.out_dir) if a.out_dir else bench_dir()
    out_dir.mkdir(parents=True, exist_ok=True)

    fpath = float_path(source, out_dir)
    outputs = {q: quant_path(source, out_dir, q) for q in qtypes}
    need_float = a.force or not all(o.exists() for o in outputs.values())
    if need_float and (a.force or not fpath.exists()):
        print(f"dequantizing {source.name} -> {fpath} ...", file=sys.stderr)
        write_float_gguf(source, fpath)
    for q, out in outputs.items():
        if out.exists() and not a.force:
            print(f"{out.name}: already made", file=sys.stderr)
            continue
        print(f"quantizing {fpath.name} -> {out.name} (llama.cpp, {q}) ...", file=sys.stderr)
        quantize(fpath, out, q, a.threads)
    for path in [fpath, *outputs.values()]:
        if path.exists():
            print_census(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
