"""Write a random-weight Llama as a GGUF laid out like llama.cpp's (and, optionally, the same
weights as a Hugging Face folder), for GPU checks and benchmarks where the real model cannot go.

The GGUF mirrors SmolLM2-135M-Instruct.Q4_1.gguf: Q4_1 attention/FFN matrices, a Q8_0 token
embedding tied to the LM head, F32 norms, Q/K rows permuted for llama.cpp's "normal" RoPE. The
Hugging Face folder holds the dequantized values in the original (unpermuted) layout, so
transformers and pyllm compute on the same numbers (up to the folder's dtype).

    python scripts/make_random_llama.py OUT_DIR [--shape smollm2|tiny] [--hf] \
        [--metadata FILE.json.gz]   # key/value pairs (the tokenizer...) copied from a real GGUF

`--metadata` takes a gzipped JSON list of {"key", "types", "value"} (GGUF value type ids; `types`
is [9, element type] for arrays), as written by `--dump-metadata REAL.gguf` with the `gguf` package.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import gguf_builder as B  # the project's own GGUF writer; no `gguf` package needed

SHAPES = {
    # SmolLM2-135M's shape (its GGUF metadata)
    "smollm2": dict(
        n_layer=30,
        n_embd=576,
        n_ff=1536,
        n_head=9,
        n_kv_head=3,
        vocab=49152,
        context=8192,
        rope_theta=100000.0,
    ),
    "tiny": dict(
        n_layer=2,
        n_embd=64,
        n_ff=96,
        n_head=4,
        n_kv_head=2,
        vocab=256,
        context=512,
        rope_theta=10000.0,
    ),
}
Q4_1, Q8_0, F32 = 3, 8, 0


class ByteTokenizer:
    """The smallest Tokenizer pyllm's engine accepts, for the tiny shape's 256-token vocabulary
    (random models carry no tokenizer): one token per byte, no specials."""

    vocab_size = SHAPES["tiny"]["vocab"]
    bos_id = eos_id = None
    eos_ids: frozenset[int] = frozenset()
    special_ids: frozenset[int] = frozenset()
    add_bos = strip_leading_space = False

    def encode(self, text, *, add_bos=None, parse_special=False):
        return list(text.encode())

    def decode(self, ids, *, skip_special=False):
        return bytes(ids).decode("utf-8", "replace")

    def token_bytes(self, i):
        if not 0 <= i < self.vocab_size:
            raise ValueError(i)
        return bytes([i])

    def decode_bytes(self, ids):
        return bytes(ids)


def permute_for_normal_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's converter on Llama Q/K rows: per head, the NeoX halves become adjacent pairs.
    Works on float rows and on rows of quant blocks alike (blocks never span rows)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _kvs(shape: dict, metadata: list[dict] | None) -> list[tuple]:
    a = "llama"
    own = [
        ("general.architecture", B.STRING, a),
        ("general.name", B.STRING, "random llama (pyllm GPU checks)"),
        (f"{a}.block_count", B.UINT32, shape["n_layer"]),
        (f"{a}.context_length", B.UINT32, shape["context"]),
        (f"{a}.embedding_length", B.UINT32, shape["n_embd"]),
        (f"{a}.feed_forward_length", B.UINT32, shape["n_ff"]),
        (f"{a}.attention.head_count", B.UINT32, shape["n_head"]),
        (f"{a}.attention.head_count_kv", B.UINT32, shape["n_kv_head"]),
        (f"{a}.rope.freq_base", B.FLOAT32, shape["rope_theta"]),
        (f"{a}.attention.layer_norm_rms_epsilon", B.FLOAT32, 1e-5),
        (f"{a}.vocab_size", B.UINT32, shape["vocab"]),
        (f"{a}.rope.dimension_count", B.UINT32, shape["n_embd"] // shape["n_head"]),
        ("general.file_type", B.UINT32, 3),
    ]
    if not metadata:
        return own
    mine = {k for k, _, _ in own}
    copied = []
    for item in metadata:
        types, value = item["types"], item["value"]
        if item["key"] in mine:
            continue  # the shape comes from SHAPES (checked against the copy below)
        vtype = types[0]
        copied.append((item["key"], vtype, (types[1], value) if vtype == B.ARRAY else value))
    have = {item["key"]: item["value"] for item in metadata}
    for k, _, v in own:
        if k in have and k not in ("general.name",) and have[k] != v and not isinstance(v, float):
            raise SystemExit(f"--metadata has {k} = {have[k]}, the shape says {v}")
    return own + copied


def write_random_llama(
    path: Path,
    shape: dict,
    *,
    seed: int = 0,
    metadata: list[dict] | None = None,
    scale: float = 0.05,
    embed_scale: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Write the GGUF; return the Hugging Face state dict (dequantized float32, tied head)."""
    from pyllm.weights.quant import dequantize, quantize

    g = torch.Generator().manual_seed(seed)
    C, F, V = shape["n_embd"], shape["n_ff"], shape["vocab"]
    Hq, Hkv = shape["n_head"], shape["n_kv_head"]
    D = C // Hq
    tensors: list[B.Tensor] = []
    hf: dict[str, torch.Tensor] = {}

    def matrix(
        gguf_name: str, hf_name: str, out_f: int, in_f: int, qtype: int, std: float, heads: int = 0
    ) -> None:
        w = torch.randn(out_f, in_f, generator=g) * std
        name = "q4_1" if qtype == Q4_1 else "q8_0"
        raw = quantize(w, name)  # uint8 [out, row_bytes]
        hf[hf_name] = dequantize(raw, name, in_f).reshape(out_f, in_f)
        stored = permute_for_normal_rope(raw, heads) if heads else raw
        tensors.append(
            B.Tensor(gguf_name, (in_f, out_f), qtype, stored.contiguous().numpy().tobytes())
        )

    def vector(gguf_name: str, hf_name: str, n: int) -> None:
        v = torch.rand(n, generator=g) * 0.5 + 0.75
        hf[hf_name] = v
        tensors.append(B.Tensor(gguf_name, (n,), F32, v.numpy().tobytes()))

    matrix("token_embd.weight", "model.embed_tokens.weight", V, C, Q8_0, embed_scale)
    vector("output_norm.weight", "model.norm.weight", C)
    for i in range(shape["n_layer"]):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        vector(p + "attn_norm.weight", h + "input_layernorm.weight", C)
        vector(p + "ffn_norm.weight", h + "post_attention_layernorm.weight", C)
        matrix(p + "attn_q.weight", h + "self_attn.q_proj.weight", Hq * D, C, Q4_1, scale, Hq)
        matrix(p + "attn_k.weight", h + "self_attn.k_proj.weight", Hkv * D, C, Q4_1, scale, Hkv)
        matrix(p + "attn_v.weight", h + "self_attn.v_proj.weight", Hkv * D, C, Q4_1, scale)
        matrix(p + "attn_output.weight", h + "self_attn.o_proj.weight", C, Hq * D, Q4_1, scale)
        matrix(p + "ffn_gate.weight", h + "mlp.gate_proj.weight", F, C, Q4_1, scale)
        matrix(p + "ffn_up.weight", h + "mlp.up_proj.weight", F, C, Q4_1, scale)
        matrix(p + "ffn_down.weight", h + "mlp.down_proj.weight", C, F, Q4_1, scale)
    B.build(_kvs(shape, metadata), tensors).write(Path(path))
    return hf


def write_hf_folder(
    folder: Path, shape: dict, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16
) -> None:
    """config.json + model.safetensors for transformers' LlamaForCausalLM (tied head)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape["vocab"],
        "hidden_size": shape["n_embd"],
        "intermediate_size": shape["n_ff"],
        "num_hidden_layers": shape["n_layer"],
        "num_attention_heads": shape["n_head"],
        "num_key_value_heads": shape["n_kv_head"],
        "max_position_embeddings": shape["context"],
        "rms_norm_eps": 1e-5,
        "rope_theta": shape["rope_theta"],
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file(
        {k: v.to(dtype).contiguous() for k, v in state.items()}, str(folder / "model.safetensors")
    )


def dump_metadata(gguf_path: Path, out: Path) -> None:
    """Every key/value pair of a real GGUF (the tokenizer, the chat template...) -> json.gz."""
    import gguf

    r = gguf.GGUFReader(str(gguf_path))
    items = [
        {"key": k, "types": [int(t) for t in f.types], "value": f.contents()}
        for k, f in r.fields.items()
        if not k.startswith("GGUF.")
    ]
    with gzip.open(out, "wt") as fh:
        json.dump(items, fh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metadata", type=Path)
    ap.add_argument("--hf", action="store_true", help="also write OUT/hf (bfloat16 safetensors)")
    ap.add_argument(
        "--dump-metadata",
        type=Path,
        metavar="REAL.gguf",
        help="write OUT (a .json.gz) from a real GGUF's key/value pairs and exit",
    )
    args = ap.parse_args()
    if args.dump_metadata:
        dump_metadata(args.dump_metadata, args.out)
        return
    metadata = None
    if args.metadata:
        with gzip.open(args.metadata, "rt") as fh:
            metadata = json.load(fh)
    args.out.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    state = write_random_llama(args.out / "model.gguf", shape, seed=args.seed, metadata=metadata)
    if args.hf:
        write_hf_folder(args.out / "hf", shape, state)
    print(f"wrote {args.out / 'model.gguf'}" + (f" and {args.out / 'hf'}" if args.hf else ""))


if __name__ == "__main__":
    main()
