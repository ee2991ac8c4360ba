"""Build a GPT from a GGUF file or a Hugging Face folder.

GGUF weights stay in their blocks (`QWeight` views of the memory-mapped file); only the fused
QKV and gate/up matrices are copied once (row concatenation, exact). Every tensor's shape is
checked against the config before use: a mismatch is a `ModelFormatError` naming the tensor.

RoPE and GGUF Llama weights: llama.cpp's converter permutes the rows of Q and K so that its
"normal" RoPE (rotating adjacent pairs 2i, 2i+1) computes what Hugging Face's NeoX-style RoPE
(pairs i, i+D/2) computes on the original weights. We keep the stored rows and rotate with
`rope_layout="normal"` instead of un-permuting: the weights stay a zero-copy view of the file
(un-permuting would copy every Q/K matrix), we compute exactly what llama.cpp computes on the
same file, and the `rope` op supports both layouts at the same cost. A float64
reference applying adjacent-pair RoPE to the stored weights agrees with transformers to 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pyllm import ops
from pyllm.errors import ModelFormatError
from pyllm.model.config import ModelConfig
from pyllm.model.context import check_kv_memory, with_context
from pyllm.model.gpt import GPT, MLP, Block, CausalSelfAttention, SandwichBlock
from pyllm.model.layers import ConcatLinear, Embedding, Linear, Norm, as_qweight, fused_linear
from pyllm.model.runtime import ModelRunner
from pyllm.ops.qlinear import QWeight


@dataclass
class LoadedModel:
    model: ModelRunner  # the GPT (`model.gpt`) and how it is run (pyllm/model/runtime.py)
    config: ModelConfig
    path: Path
    kind: str  # "gguf" | "hf"
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF metadata ({} for HF)
    gguf: Any = None  # the GGUFFile (keeps the memory map alive)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, context_length: int | None = None
) -> LoadedModel:
    """A GGUF file or a Hugging Face folder (config.json + *.safetensors) -> LoadedModel.

    `context_length`: the context to run with (1 .. the trained context); None picks the
    trained context capped at pyllm.model.context.DEFAULT_CONTEXT_CAP.
    """
    path = Path(path)
    if path.is_dir():
        loaded = load_hf(path, context_length=context_length)
    elif path.is_file():
        loaded = load_gguf_model(path, context_length=context_length)
    else:
        raise FileNotFoundError(f"no model at {path}")
    if torch.device(device) == torch.device("cpu"):
        check_kv_memory(loaded.config, str(path))
    else:
        loaded.model.to(device)
    return loaded


# ---------------------------------------------------------------------- weight access


class _Weights:
    """Checked access to a file's tensors by name: `matrix(name, out, in)`, `vector(name, n)`."""

    def __init__(
        self,
        where: str,
        names: set[str],
        shape: Callable[[str], tuple[int, ...]],
        fetch: Callable[[str], tuple[torch.Tensor, str]],
        transposed: Callable[[str], bool] = lambda name: False,
        release: Callable[[torch.Tensor], int] | None = None,
    ) -> None:
        self.where, self.names, self._shape, self._fetch = where, names, shape, fetch
        self._transposed = transposed
        # Drops the resident pages of a fetched tensor that was copied (a memory-mapped file's
        # loader passes one; re-reading a dropped page is always correct, just slower).
        self.release = release or (lambda tensor: 0)

    def fused(
        self, weights: list[QWeight], biases: list[torch.Tensor | None]
    ) -> Linear | ConcatLinear:
        """fused_linear, releasing the parts' pages when they were copied into one matrix."""
        module = fused_linear(weights, biases)
        if isinstance(module, Linear):
            for w in weights:
                self.release(w.data)
        return module

    def has(self, name: str) -> bool:
        return name in self.names

    def _require(self, name: str) -> None:
        if name not in self.names:
            raise ModelFormatError(f"{self.where}: tensor {name!r} is missing")

    def matrix(self, name: str, out_features: int, in_features: int) -> QWeight:
        self._require(name)
        want = (
            (in_features, out_features) if self._transposed(name) else (out_features, in_features)
        )
        shape = tuple(self._shape(name))
        if shape != want:
            raise ModelFormatError(
                f"{self.where}: tensor {name!r} has shape {list(shape)}, expected {list(want)}"
            )
        data, qtype = self._fetch(name)
        if self._transposed(name):
            data = data.t()
        if qtype in ("f32", "f16", "bf16"):
            return as_qweight(data)
        try:
            return QWeight(data, qtype, out_features, in_features)
        except ValueError as exc:
            raise ModelFormatError(f"{self.where}: tensor {name!r}: {exc}") from exc

    def vector(self, name: str, n: int) -> torch.Tensor:
        self._require(name)
        shape = tuple(self._shape(name))
        if shape != (n,):
            raise ModelFormatError(
                f"{self.where}: tensor {name!r} has shape {list(shape)}, expected [{n}]"
            )
        data, qtype = self._fetch(name)
        if qtype not in ("f32", "f16", "bf16"):
            raise ModelFormatError(
                f"{self.where}: tensor {name!r} must be a float vector, got {qtype}"
            )
        return data.float()

    def optional_vector(self, name: str | None, n: int) -> torch.Tensor | None:
        return self.vector(name, n) if name is not None and self.has(name) else None


@dataclass
class _Names:
    """Where each weight lives in a file; `{i}` is the layer index."""

    embed: str
    norm_f: str
    lm_head: str
    attn_norm: str
    mlp_norm: str
    o: str
    down: str
    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""  # a fused [q; k; v] matrix in the file (GPT-2)
    gate: str = ""
    up: str = ""
    gate_up: str = ""  # a fused [gate; up] matrix in the file (Phi-3)
    pos_embed: str = ""
    q_norm: str = ""  # per-head RMSNorm weights of q and k (QK-norm), when the family has them
    k_norm: str = ""
    post_attn_norm: str = ""  # Gemma 3's norms on the attention and MLP outputs
    post_mlp_norm: str = ""
    bias: Callable[[str], str] = lambda w: w.replace(".weight", ".bias")


GGUF_NAMES = _Names(
    embed="token_embd.weight",
    norm_f="output_norm.weight",
    lm_head="output.weight",
    attn_norm="blk.{i}.attn_norm.weight",
    mlp_norm="blk.{i}.ffn_norm.weight",
    q="blk.{i}.attn_q.weight",
    k="blk.{i}.attn_k.weight",
    v="blk.{i}.attn_v.weight",
    o="blk.{i}.attn_output.weight",
    gate="blk.{i}.ffn_gate.weight",
    up="blk.{i}.ffn_up.weight",
    down="blk.{i}.ffn_down.weight",
    q_norm="blk.{i}.attn_q_norm.weight",
    k_norm="blk.{i}.attn_k_norm.weight",
    post_attn_norm="blk.{i}.post_attention_norm.weight",
    post_mlp_norm="blk.{i}.post_ffw_norm.weight",
)
GGUF_GPT2_NAMES = _Names(
    embed="token_embd.weight",
    pos_embed="position_embd.weight",
    norm_f="output_norm.weight",
    lm_head="output.weight",
    attn_norm="blk.{i}.attn_norm.weight",
    mlp_norm="blk.{i}.ffn_norm.weight",
    qkv="blk.{i}.attn_qkv.weight",
    o="blk.{i}.attn_output.weight",
    up="blk.{i}.ffn_up.weight",
    down="blk.{i}.ffn_down.weight",
)
HF_LLAMA_NAMES = _Names(
    embed="model.embed_tokens.weight",
    norm_f="model.norm.weight",
    lm_head="lm_head.weight",
    attn_norm="model.layers.{i}.input_layernorm.weight",
    mlp_norm="model.layers.{i}.post_attention_layernorm.weight",
    q="model.layers.{i}.self_attn.q_proj.weight",
    k="model.layers.{i}.self_attn.k_proj.weight",
    v="model.layers.{i}.self_attn.v_proj.weight",
    o="model.layers.{i}.self_attn.o_proj.weight",
    gate="model.layers.{i}.mlp.gate_proj.weight",
    up="model.layers.{i}.mlp.up_proj.weight",
    down="model.layers.{i}.mlp.down_proj.weight",
    q_norm="model.layers.{i}.self_attn.q_norm.weight",
    k_norm="model.layers.{i}.self_attn.k_norm.weight",
)
# Phi-3: fused qkv_proj and gate_up_proj (gate rows first), in the checkpoint and the GGUF.
HF_PHI3_NAMES = replace(
    HF_LLAMA_NAMES,
    q="",
    k="",
    v="",
    qkv="model.layers.{i}.self_attn.qkv_proj.weight",
    gate="",
    up="",
    gate_up="model.layers.{i}.mlp.gate_up_proj.weight",
)
GGUF_PHI3_NAMES = replace(
    GGUF_NAMES,
    q="",
    k="",
    v="",
    qkv="blk.{i}.attn_qkv.weight",
    gate="",
    up="",
    gate_up="blk.{i}.ffn_up.weight",
)
# Gemma 3: post_attention_layernorm is the norm on the attention output; the MLP's pre-norm is
# pre_feedforward_layernorm.
HF_GEMMA3_NAMES = replace(
    HF_LLAMA_NAMES,
    mlp_norm="model.layers.{i}.pre_feedforward_layernorm.weight",
    post_attn_norm="model.layers.{i}.post_attention_layernorm.weight",
    post_mlp_norm="model.layers.{i}.post_feedforward_layernorm.weight",
)


def _hf_gpt2_names(prefix: str) -> _Names:
    p = prefix
    return _Names(
        embed=f"{p}wte.weight",
        pos_embed=f"{p}wpe.weight",
        norm_f=f"{p}ln_f.weight",
        lm_head="lm_head.weight",
        attn_norm=f"{p}h.{{i}}.ln_1.weight",
        mlp_norm=f"{p}h.{{i}}.ln_2.weight",
        qkv=f"{p}h.{{i}}.attn.c_attn.weight",
        o=f"{p}h.{{i}}.attn.c_proj.weight",
        up=f"{p}h.{{i}}.mlp.c_fc.weight",
        down=f"{p}h.{{i}}.mlp.c_proj.weight",
    )


# ---------------------------------------------------------------------- building


def build_gpt(
    cfg: ModelConfig,
    w: _Weights,
    names: _Names,
    rope_scaling: dict[str, Any] | None = None,
    norm_shift: float = 0.0,
) -> GPT:
    """Assemble the GPT from checked weights (`rope_scaling`: the dict for ops.rope_cos_sin).

    `norm_shift` is added to every RMSNorm weight: Gemma checkpoints store w for a norm that
    scales by (1 + w); llama.cpp's converter stores 1 + w in the GGUF, which is what we run."""
    C, F = cfg.n_embd, cfg.n_ff
    Q, KV = cfg.q_size, cfg.kv_size
    layer_norm = cfg.norm == "layer"

    def norm(name: str, n: int = C) -> Norm:
        bias = w.optional_vector(names.bias(name), n) if layer_norm else None
        if layer_norm and bias is None:
            raise ModelFormatError(f"{w.where}: tensor {names.bias(name)!r} is missing")
        return Norm(cfg.norm, w.vector(name, n) + norm_shift, bias, cfg.norm_eps)

    def bias(name: str, n: int, wanted: bool) -> torch.Tensor | None:
        return w.vector(names.bias(name), n) if wanted else None

    blocks: list[Block] = []
    for i in range(cfg.n_layer):
        n = {
            k: getattr(names, k).format(i=i)
            for k in (
                "attn_norm",
                "mlp_norm",
                "q",
                "k",
                "v",
                "qkv",
                "o",
                "gate",
                "up",
                "down",
                "gate_up",
                "q_norm",
                "k_norm",
                "post_attn_norm",
                "post_mlp_norm",
            )
        }
        qkv: Linear | ConcatLinear
        if names.qkv:
            qkv = Linear(
                w.matrix(n["qkv"], Q + 2 * KV, C), bias(n["qkv"], Q + 2 * KV, cfg.qkv_bias)
            )
        else:
            qkv = w.fused(
                [w.matrix(n["q"], Q, C), w.matrix(n["k"], KV, C), w.matrix(n["v"], KV, C)],
                [
                    bias(n["q"], Q, cfg.qkv_bias),
                    bias(n["k"], KV, cfg.qkv_bias),
                    bias(n["v"], KV, cfg.qkv_bias),
                ],
            )
        o = Linear(w.matrix(n["o"], C, Q), bias(n["o"], C, cfg.o_bias))
        up: Linear | ConcatLinear
        if names.gate_up:
            up = Linear(w.matrix(n["gate_up"], 2 * F, C), bias(n["gate_up"], 2 * F, cfg.mlp_bias))
        elif cfg.activation in ("swiglu", "geglu"):
            up = w.fused(
                [w.matrix(n["gate"], F, C), w.matrix(n["up"], F, C)],
                [bias(n["gate"], F, cfg.mlp_bias), bias(n["up"], F, cfg.mlp_bias)],
            )
        else:
            up = Linear(w.matrix(n["up"], F, C), bias(n["up"], F, cfg.mlp_bias))
        down = Linear(w.matrix(n["down"], C, F), bias(n["down"], C, cfg.mlp_bias))
        q_norm = k_norm = None
        if cfg.qk_norm:
            q_norm, k_norm = norm(n["q_norm"], cfg.head_dim), norm(n["k_norm"], cfg.head_dim)
        attn = CausalSelfAttention(cfg, i, qkv, o, q_norm, k_norm)
        mlp = MLP(cfg.activation, up, down)
        if cfg.post_norms:
            blocks.append(
                SandwichBlock(
                    norm(n["attn_norm"]),
                    attn,
                    norm(n["post_attn_norm"]),
                    norm(n["mlp_norm"]),
                    mlp,
                    norm(n["post_mlp_norm"]),
                )
            )
        else:
            blocks.append(Block(norm(n["attn_norm"]), attn, norm(n["mlp_norm"]), mlp))

    embed = w.matrix(names.embed, cfg.vocab_size, C)
    wpe = None
    if cfg.position == "learned":
        wpe = Embedding(w.matrix(names.pos_embed, cfg.trained_context, C))
    if cfg.tied_embeddings or not w.has(names.lm_head):
        if not cfg.tied_embeddings:
            raise ModelFormatError(f"{w.where}: tensor {names.lm_head!r} is missing")
        lm_head = Linear(embed)
    else:
        lm_head = Linear(w.matrix(names.lm_head, cfg.vocab_size, C))
    cos_sin = cos_sin_local = None
    if cfg.position == "rope":
        scaling = rope_scaling if rope_scaling is not None else cfg.rope_scaling
        if scaling is not None and scaling.get("type") == "longrope":
            cos_sin = _longrope_table(cfg, w, scaling)
        else:
            cos_sin = _rope_table(cfg, w.where, scaling)
        if cfg.rope_local_theta and cfg.sliding_window:
            cos_sin_local = _rope_table(cfg, w.where, None, cfg.rope_local_theta)
    return GPT(
        cfg, Embedding(embed), wpe, blocks, norm(names.norm_f), lm_head, cos_sin, cos_sin_local
    )


def _longrope_table(cfg: ModelConfig, w: _Weights, scaling: dict[str, Any]) -> torch.Tensor:
    """Phi-3's LongRoPE: each frequency divided by its short or long factor (the long ones when
    the context in use is longer than the original context: llama.cpp's rule; transformers
    switches on the longest position of the current input instead, so the two agree whenever
    the input reaches past the original context or the context in use does not), and cos/sin
    scaled by the attention factor. A GGUF holds the factors as two tensors."""
    long = cfg.max_position > scaling["original_max_position_embeddings"]
    key, tensor = (
        ("long_factor", "rope_factors_long") if long else ("short_factor", "rope_factors_short")
    )
    half = cfg.rotary_dim // 2
    factors = scaling.get(key)
    if factors is None:
        divisors = w.vector(f"{tensor}.weight", half)
    else:
        divisors = torch.tensor(factors, dtype=torch.float64)
    if not bool(torch.isfinite(divisors).all()) or not bool((divisors > 0).all()):
        raise ModelFormatError(f"{w.where}: the LongRoPE {key} must be positive numbers")
    table = _rope_table(cfg, w.where, {"type": "none", "freq_factors": divisors})
    return table * float(scaling["attention_factor"])


def _rope_table(
    cfg: ModelConfig, where: str, scaling: dict[str, Any] | None, theta: float = 0.0
) -> torch.Tensor:
    """ops.rope_cos_sin for the context in use (base `theta`, default cfg.rope_theta); running
    out of memory is a clear error that names the size, not the allocator's message."""
    try:
        return ops.rope_cos_sin(cfg.max_position, cfg.rotary_dim, theta or cfg.rope_theta, scaling)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "alloc" not in str(exc).lower():
            raise
        size = cfg.max_position * cfg.rotary_dim * 4
        raise ModelFormatError(
            f"{where}: the RoPE table for a context of {cfg.max_position} tokens needs "
            f"{size / 2**20:.0f} MiB, which could not be allocated; use a smaller context "
            "(--ctx / context_length)"
        ) from None


# ---------------------------------------------------------------------- GGUF


def load_gguf_model(path: str | Path, *, context_length: int | None = None) -> LoadedModel:
    from pyllm.weights.gguf import load_gguf

    g = load_gguf(path)
    cfg = with_context(ModelConfig.from_gguf(g), context_length, str(g.path))
    w = _Weights(
        str(g.path), set(g.tensors), lambda n: g.tensors[n].shape, g.weight, release=g.release
    )
    names = {"gpt2": GGUF_GPT2_NAMES, "phi3": GGUF_PHI3_NAMES}.get(cfg.family, GGUF_NAMES)
    scaling = cfg.rope_scaling
    if scaling is not None and scaling.get("type") == "freq_factors":
        # Llama 3.x GGUFs carry the per-frequency divisors as a tensor instead of the formula.
        scaling = {
            "type": "none",
            "freq_factors": w.vector("rope_freqs.weight", cfg.rotary_dim // 2),
        }
    model = ModelRunner(build_gpt(cfg, w, names, scaling), release_pages=g.release)
    return LoadedModel(model, cfg, Path(path), "gguf", dict(g.metadata), g)


# ---------------------------------------------------------------------- Hugging Face


def load_hf(folder: str | Path, *, context_length: int | None = None) -> LoadedModel:
    from pyllm.weights.safetensors import load_folder, load_hf_config

    folder = Path(folder)
    cfg = with_context(
        ModelConfig.from_hf(load_hf_config(folder), where=str(folder / "config.json")),
        context_length,
        str(folder),
    )
    tensors: dict[str, torch.Tensor] = load_folder(folder)

    def fetch(name: str) -> tuple[torch.Tensor, str]:
        t = tensors[name]
        qtype = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}.get(t.dtype)
        if qtype is None:
            raise ModelFormatError(
                f"{folder}: tensor {name!r} has dtype {t.dtype}; "
                "expected float32, float16 or bfloat16"
            )
        return t, qtype

    if cfg.family == "gpt2":
        prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
        names = _hf_gpt2_names(prefix)
        # GPT-2 checkpoints store Conv1D weights as [in, out].
        conv1d = (
            ".attn.c_attn.weight",
            ".attn.c_proj.weight",
            ".mlp.c_fc.weight",
            ".mlp.c_proj.weight",
        )
        transposed = lambda name: name.endswith(conv1d)  # noqa: E731 - paired with the one below
    else:
        names = {"gemma3": HF_GEMMA3_NAMES, "phi3": HF_PHI3_NAMES}.get(cfg.family, HF_LLAMA_NAMES)
        transposed = lambda name: False  # noqa: E731 - paired with the one above
    w = _Weights(str(folder), set(tensors), lambda n: tuple(tensors[n].shape), fetch, transposed)
    shift = 1.0 if cfg.family == "gemma3" else 0.0  # Gemma's RMSNorm scales by (1 + weight)
    model = ModelRunner(build_gpt(cfg, w, names, norm_shift=shift))
    return LoadedModel(model, cfg, folder, "hf")
