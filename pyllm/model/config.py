"""One ModelConfig for every decoder-only family pyllm runs (GPT-2, Llama, Mistral, Qwen2,
Qwen3, Gemma 3, Phi-3).

Configs come from GGUF metadata (`ModelConfig.from_gguf`) or a Hugging Face `config.json`
(`ModelConfig.from_hf`). Both validate every hyper-parameter before a tensor is allocated: a
missing or absurd value raises `pyllm.ModelFormatError` naming the key at fault, so a damaged file
never turns into a crash or a huge allocation further down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from pyllm.errors import ModelFormatError

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")
# Hugging Face model_type -> family, where they differ
_HF_MODEL_TYPES = {"gemma3_text": "gemma3"}

# Sanity bounds: far above any real model, low enough that a corrupted value is caught before
# it sizes an allocation.
_MAX_LAYERS = 1024
_MAX_EMBD = 1 << 17
_MAX_HEADS = 4096
_MAX_HEAD_DIM = 1024
_MAX_FF = 1 << 20
_MAX_VOCAB = 1 << 22
_MAX_POSITION = 1 << 24


# Where a Llama-style Hugging Face config.json keeps each field (ModelConfig.keys, for errors).
_HF_DECODER_KEYS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "n_embd": "hidden_size",
    "head_dim": "head_dim",
    "n_ff": "intermediate_size",
    "max_position": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "rope_scaling": "rope_scaling",
    "sliding_window": "sliding_window",
}


@dataclass
class ModelConfig:
    """Hyper-parameters of one decoder-only transformer.

    `keys` maps a field name to the key it was read from (a GGUF metadata key or a config.json
    field), so validation errors can name what is wrong in the user's file.
    """

    family: str  # one of FAMILIES
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    head_dim: int
    n_ff: int
    # The context length in use: the trained one, or less (pyllm/model/context.py picks it;
    # the RoPE table and the KV-cache are sized by it).
    max_position: int
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-5
    activation: str = "swiglu"  # "swiglu" | "geglu" (gelu_tanh(gate) * up) | "gelu_tanh"
    position: str = "rope"  # "rope" | "learned"
    rope_theta: float = 10000.0
    rotary_dim: int = 0  # 0 -> head_dim
    # None, {"type": "linear", "factor": f}, or {"type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"} (as ops.rope_cos_sin takes it);
    # GGUF files may carry per-frequency factors as a `rope_freqs.weight` tensor instead
    # ({"type": "freq_factors"}, applied by the loader). Phi-3's LongRoPE: {"type": "longrope",
    # "short_factor", "long_factor" (R/2 divisors each; a GGUF has them as rope_factors_short/long
    # tensors), "original_max_position_embeddings", "attention_factor"}: the long factors apply
    # when the context in use exceeds the original one (pyllm/model/loader.py).
    rope_scaling: dict[str, Any] | None = None
    rope_layout: str = "neox"  # "neox" (pairs i, i+R/2) | "normal" (pairs 2i, 2i+1)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False  # LayerNorm with a bias (GPT-2)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3)
    # Gemma 3: RMSNorms after attention and after the MLP too (before their residual adds),
    # embeddings times sqrt(n_embd), softmax scale 1/sqrt(query_pre_attn_scalar), and the
    # sliding-window layers rotating with their own RoPE base (no scaling).
    post_norms: bool = False
    embed_scale: float = 1.0
    attn_scale: float = 0.0  # 0 -> 1/sqrt(head_dim)
    rope_local_theta: float = 0.0  # 0: window layers use rope_theta and rope_scaling too
    tied_embeddings: bool = False
    sliding_window: int = 0  # 0: full attention
    window_layers: tuple[int, ...] | None = None  # layers that use sliding_window (None: all)
    trained_context: int = 0  # the context the model was trained for (0 -> max_position)
    keys: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    source: str = field(default="config", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.rotary_dim:
            self.rotary_dim = self.head_dim
        if not self.trained_context:
            self.trained_context = self.max_position
        self.validate()

    # ------------------------------------------------------------------ validation

    def _fail(self, name: str, problem: str) -> None:
        key = self.keys.get(name, name)
        raise ModelFormatError(f"{self.source}: {key} {problem}")

    def validate(self) -> None:
        """Raise ModelFormatError naming the key of the first absurd or inconsistent value."""
        if self.family not in FAMILIES:
            self._fail("family", f"is {self.family!r}; supported: {', '.join(FAMILIES)}")
        bounds = {
            "vocab_size": _MAX_VOCAB,
            "n_layer": _MAX_LAYERS,
            "n_head": _MAX_HEADS,
            "n_kv_head": _MAX_HEADS,
            "n_embd": _MAX_EMBD,
            "head_dim": _MAX_HEAD_DIM,
            "n_ff": _MAX_FF,
            "max_position": _MAX_POSITION,
        }
        for name, hi in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                self._fail(name, f"must be an integer in [1, {hi}], got {value!r}")
        if (
            not isinstance(self.trained_context, int)
            or not self.max_position <= self.trained_context <= _MAX_POSITION
        ):
            self._fail(
                "trained_context",
                f"must be an integer in [{self.max_position}, "
                f"{_MAX_POSITION}], got {self.trained_context!r}",
            )
        if self.n_head % self.n_kv_head:
            self._fail(
                "n_kv_head", f"({self.n_kv_head}) must divide the number of heads ({self.n_head})"
            )
        if self.family == "gpt2" and self.n_embd % self.n_head:
            self._fail("n_head", f"({self.n_head}) must divide the embedding size ({self.n_embd})")
        if self.family == "gpt2" and self.head_dim * self.n_head != self.n_embd:
            self._fail(
                "head_dim",
                f"({self.head_dim}) x heads ({self.n_head}) must equal the "
                f"embedding size ({self.n_embd})",
            )
        for name, allowed in (
            ("norm", ("rms", "layer")),
            ("activation", ("swiglu", "geglu", "gelu_tanh")),
            ("position", ("rope", "learned")),
            ("rope_layout", ("neox", "normal")),
        ):
            if getattr(self, name) not in allowed:
                self._fail(name, f"is {getattr(self, name)!r}; supported: {', '.join(allowed)}")
        if not _finite(self.norm_eps) or not 0 < self.norm_eps < 1:
            self._fail("norm_eps", f"must be in (0, 1), got {self.norm_eps!r}")
        if self.position == "rope":
            if not _finite(self.rope_theta) or not 1 <= self.rope_theta <= 1e12:
                self._fail("rope_theta", f"must be in [1, 1e12], got {self.rope_theta!r}")
            r = self.rotary_dim
            if isinstance(r, bool) or not isinstance(r, int) or r < 2 or r % 2 or r > self.head_dim:
                self._fail(
                    "rotary_dim", f"must be even and in [2, head_dim={self.head_dim}], got {r!r}"
                )
            self._validate_rope_scaling()
        for name in ("embed_scale", "attn_scale", "rope_local_theta"):
            value = getattr(self, name)
            if not _finite(value) or not 0 <= value <= 1e12:
                self._fail(name, f"must be a number in [0, 1e12], got {value!r}")
        # A window past the context masks nothing (Phi-3-mini-128k's file says 262144 for a
        # 131072 context), so only values no context could reach are refused: the kernels take
        # the window as a signed 64-bit integer.
        sw = self.sliding_window
        if isinstance(sw, bool) or not isinstance(sw, int) or not 0 <= sw <= _MAX_POSITION:
            self._fail(
                "sliding_window",
                f"must be an integer in [0, {_MAX_POSITION}] (0: no window), got {sw!r}",
            )
        if self.window_layers is not None and any(
            not 0 <= i < self.n_layer for i in self.window_layers
        ):
            self._fail("window_layers", f"names a layer outside [0, {self.n_layer})")

    def _validate_rope_scaling(self) -> None:
        s = self.rope_scaling
        if s is None:
            return
        kind = s.get("type")
        if kind not in ("linear", "llama3", "freq_factors", "longrope"):
            self._fail(
                "rope_scaling",
                f"type {kind!r} is not supported (supported: none, linear, "
                "llama3, longrope, and GGUF rope_freqs factors)",
            )
        if kind == "longrope":
            orig, af = s.get("original_max_position_embeddings"), s.get("attention_factor")
            if not isinstance(orig, int) or not 1 <= orig <= _MAX_POSITION:
                self._fail(
                    "rope_scaling",
                    f"original_max_position_embeddings must be a positive integer, got {orig!r}",
                )
            if not _finite(af) or not 0 < af <= 1e3:
                self._fail("rope_scaling", f"attention_factor must be positive, got {af!r}")
            for name in ("short_factor", "long_factor"):
                f = s.get(name)
                if f is None:
                    continue  # a GGUF's tensors, checked by the loader
                if (
                    not isinstance(f, (list, tuple))
                    or len(f) != self.rotary_dim // 2
                    or not all(_finite(x) and x > 0 for x in f)
                ):
                    self._fail(
                        "rope_scaling",
                        f"{name} must be {self.rotary_dim // 2} positive numbers "
                        f"(rotary_dim / 2), got {str(f)[:80]}",
                    )
        if kind in ("linear", "llama3"):
            factor = s.get("factor")
            if not _finite(factor) or not 0 < factor <= 1e6:
                self._fail("rope_scaling", f"factor must be a positive number, got {factor!r}")
        if kind == "llama3":
            lo, hi = s.get("low_freq_factor"), s.get("high_freq_factor")
            orig = s.get("original_max_position_embeddings")
            if not (_finite(lo) and _finite(hi) and 0 < lo < hi):
                self._fail(
                    "rope_scaling",
                    f"needs 0 < low_freq_factor < high_freq_factor, got {lo!r}, {hi!r}",
                )
            if not isinstance(orig, int) or not 1 <= orig <= _MAX_POSITION:
                self._fail(
                    "rope_scaling",
                    f"original_max_position_embeddings must be a positive integer, got {orig!r}",
                )

    # ------------------------------------------------------------------ derived

    @property
    def q_size(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_head * self.head_dim

    def window(self, layer: int) -> int:
        """The sliding window of `layer` (0 = full attention)."""
        if self.sliding_window and (self.window_layers is None or layer in self.window_layers):
            return self.sliding_window
        return 0

    # ------------------------------------------------------------------ GGUF

    @classmethod
    def from_gguf(cls, gguf_file: Any) -> ModelConfig:
        """Read the hyper-parameters from a GGUFFile's metadata (and which tensors it holds)."""
        md: Mapping[str, Any] = gguf_file.metadata
        tensors: Mapping[str, Any] = gguf_file.tensors
        where = f"GGUF file {getattr(gguf_file, 'path', '')}".strip()
        arch = md.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFormatError(f"{where}: general.architecture is missing or not a string")
        if arch not in FAMILIES:
            raise ModelFormatError(
                f"{where}: general.architecture {arch!r} is not supported "
                f"(supported: {', '.join(FAMILIES)})"
            )
        r = _Reader(md, where)
        a = arch
        keys: dict[str, str] = {}

        def get(name: str, key: str, kind: type, default: Any = _MISSING) -> Any:
            keys[name] = key
            return r.get(key, kind, default)

        n_embd = get("n_embd", f"{a}.embedding_length", int)
        n_head = get("n_head", f"{a}.attention.head_count", int)
        if isinstance(n_head, int) and n_head <= 0:
            raise ModelFormatError(f"{where}: {a}.attention.head_count must be >= 1, got {n_head}")
        n_kv_head = get("n_kv_head", f"{a}.attention.head_count_kv", int, n_head)
        if n_head and n_embd % n_head and f"{a}.attention.key_length" not in md:
            raise ModelFormatError(
                f"{where}: {a}.attention.head_count ({n_head}) does not divide "
                f"{a}.embedding_length ({n_embd})"
            )
        head_dim = get("head_dim", f"{a}.attention.key_length", int, n_embd // n_head)
        value_dim = r.get(f"{a}.attention.value_length", int, head_dim)
        if value_dim != head_dim:
            raise ModelFormatError(
                f"{where}: {a}.attention.value_length ({value_dim}) differs "
                f"from {a}.attention.key_length ({head_dim}); not supported"
            )

        vocab = r.get(f"{a}.vocab_size", int, None)
        keys["vocab_size"] = f"{a}.vocab_size"
        if vocab is None:
            toks = md.get("tokenizer.ggml.tokens")
            if isinstance(toks, list) and toks:
                vocab, keys["vocab_size"] = len(toks), "tokenizer.ggml.tokens"
            elif "token_embd.weight" in tensors:
                vocab = int(tensors["token_embd.weight"].shape[0])
                keys["vocab_size"] = "token_embd.weight"
            else:
                raise ModelFormatError(f"{where}: {a}.vocab_size is missing")

        if a == "gpt2":
            eps = get("norm_eps", f"{a}.attention.layer_norm_epsilon", float)
        else:
            eps = get("norm_eps", f"{a}.attention.layer_norm_rms_epsilon", float)

        common = dict(
            family=a,
            vocab_size=vocab,
            n_layer=get("n_layer", f"{a}.block_count", int),
            n_head=n_head,
            n_kv_head=n_kv_head,
            n_embd=n_embd,
            head_dim=head_dim,
            n_ff=get("n_ff", f"{a}.feed_forward_length", int),
            max_position=get("max_position", f"{a}.context_length", int),
            norm_eps=eps,
            tied_embeddings="output.weight" not in tensors,
            keys=keys,
            source=where,
        )
        if a == "gpt2":
            return cls(
                **common,
                norm="layer",
                activation="gelu_tanh",
                position="learned",
                qkv_bias=True,
                o_bias=True,
                mlp_bias=True,
                norm_bias=True,
            )

        scaling = None
        kind = get("rope_scaling", f"{a}.rope.scaling.type", str, "none")
        if kind == "linear":
            keys["rope_scaling"] = f"{a}.rope.scaling.factor"
            scaling = {"type": "linear", "factor": r.get(f"{a}.rope.scaling.factor", float)}
        elif kind not in ("none", ""):
            raise ModelFormatError(
                f"{where}: {a}.rope.scaling.type {kind!r} is not supported "
                "(supported: none, linear)"
            )
        elif f"{a}.rope.scale_linear" in md:
            keys["rope_scaling"] = f"{a}.rope.scale_linear"
            scaling = {"type": "linear", "factor": r.get(f"{a}.rope.scale_linear", float)}
        if "rope_factors_long.weight" in tensors:  # Phi-3's LongRoPE
            # checked here, where the GGUF keys are known (validate() names rope_scaling)
            orig_key = f"{a}.rope.scaling.original_context_length"
            orig = _in_range(where, orig_key, r.get(orig_key, int), 1, _MAX_POSITION)
            factor = common["max_position"] / orig
            attn_key = f"{a}.rope.scaling.attn_factor"
            attn = r.get(attn_key, float, _longrope_attention(factor, orig))
            if not 0 < attn <= 1e3:
                raise ModelFormatError(f"{where}: {attn_key} must be in (0, 1000], got {attn!r}")
            scaling = {
                "type": "longrope",
                "original_max_position_embeddings": orig,
                "attention_factor": attn,
            }
        if "rope_freqs.weight" in tensors:
            if scaling is not None:
                raise ModelFormatError(
                    f"{where}: rope_freqs.weight together with "
                    f"{a}.rope.scaling.type={kind!r} is not supported"
                )
            scaling = {"type": "freq_factors"}
        return cls(
            **common,
            rope_theta=get("rope_theta", f"{a}.rope.freq_base", float, 10000.0),
            rotary_dim=get("rotary_dim", f"{a}.rope.dimension_count", int, head_dim),
            rope_scaling=scaling,
            # llama.cpp's converter permutes Llama/Mistral Q and K rows for its "normal" (adjacent
            # pair) RoPE; Qwen2/Qwen3 are stored unpermuted and use NeoX (pyllm/model/loader.py).
            rope_layout="neox" if a in ("qwen2", "qwen3", "gemma3", "phi3") else "normal",
            qk_norm="blk.0.attn_q_norm.weight" in tensors,
            **(
                _gemma3_gguf(
                    r, a, n_embd, n_head, head_dim, get("n_layer", f"{a}.block_count", int)
                )
                if a == "gemma3"
                else {}
            ),
            qkv_bias="blk.0.attn_q.bias" in tensors,
            o_bias="blk.0.attn_output.bias" in tensors,
            mlp_bias="blk.0.ffn_up.bias" in tensors,
            sliding_window=get("sliding_window", f"{a}.attention.sliding_window", int, 0),
        )

    # ------------------------------------------------------------------ Hugging Face

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
        """Read a Hugging Face config.json (model_type gpt2, llama, mistral, qwen2, qwen3,
        gemma3_text or phi3)."""
        r = _Reader(config, where)
        mt = config.get("model_type")
        if mt == "gemma3":  # Gemma3ForConditionalGeneration: the text model sits in text_config
            raise ModelFormatError(
                f"{where}: model_type 'gemma3' is the multimodal Gemma 3; only the text model "
                "(model_type gemma3_text, Gemma3ForCausalLM) is supported"
            )
        mt = _HF_MODEL_TYPES.get(mt, mt) if isinstance(mt, str) else mt
        if mt not in FAMILIES:
            raise ModelFormatError(
                f"{where}: model_type {mt!r} is not supported (supported: {', '.join(FAMILIES)})"
            )
        if mt == "gpt2":
            return cls._from_hf_gpt2(r, where)
        if mt == "gemma3":
            return cls._from_hf_gemma3(config, r, where)
        keys = dict(_HF_DECODER_KEYS, activation="hidden_act")
        act = r.get("hidden_act", str, "silu")
        if act != "silu":
            raise ModelFormatError(f"{where}: hidden_act {act!r} is not supported (silu)")
        n_embd = r.get("hidden_size", int)
        n_head = r.get("num_attention_heads", int)
        if n_head <= 0:
            raise ModelFormatError(f"{where}: num_attention_heads must be >= 1, got {n_head}")
        head_dim = r.get("head_dim", int, None)
        if head_dim is None:
            if n_embd % n_head:
                raise ModelFormatError(
                    f"{where}: num_attention_heads ({n_head}) does not divide "
                    f"hidden_size ({n_embd})"
                )
            head_dim = n_embd // n_head
        theta, scaling = _hf_rope(config, r, where)
        rotary_dim = head_dim
        params = config.get("rope_parameters")
        partial = config.get("partial_rotary_factor")
        if isinstance(params, Mapping) and "partial_rotary_factor" in params:
            partial = params["partial_rotary_factor"]
        if partial is not None:
            if not _finite(partial) or not 0 < partial <= 1:
                raise ModelFormatError(
                    f"{where}: partial_rotary_factor must be in (0, 1], got {partial!r}"
                )
            rotary_dim = int(head_dim * partial)
        if mt in ("qwen2", "qwen3"):
            # Qwen2 always has QKV biases; Qwen3 has none unless attention_bias says so.
            if mt == "qwen2":
                qkv_bias, o_bias = True, False
            else:
                qkv_bias = o_bias = bool(config.get("attention_bias", False))
            window, window_layers = 0, None
            if config.get("use_sliding_window"):
                window = r.get("sliding_window", int, 0) or 0
                types = config.get("layer_types")
                if isinstance(types, list):
                    window_layers = tuple(
                        i for i, t in enumerate(types) if t == "sliding_attention"
                    )
                else:
                    start = r.get("max_window_layers", int, 0)
                    window_layers = tuple(range(start, r.get("num_hidden_layers", int)))
        else:
            qkv_bias = o_bias = bool(config.get("attention_bias", False))
            window = (r.get("sliding_window", int, 0) or 0) if mt in ("mistral", "phi3") else 0
            window_layers = None
        return cls(
            family=mt,
            vocab_size=r.get("vocab_size", int),
            n_layer=r.get("num_hidden_layers", int),
            n_head=n_head,
            n_kv_head=r.get("num_key_value_heads", int, n_head),
            n_embd=n_embd,
            head_dim=head_dim,
            n_ff=r.get("intermediate_size", int),
            max_position=r.get("max_position_embeddings", int),
            norm_eps=r.get("rms_norm_eps", float, 1e-6),
            rope_theta=theta,
            rotary_dim=rotary_dim,
            rope_scaling=scaling,
            rope_layout="neox",
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            sliding_window=window,
            window_layers=window_layers,
            qk_norm=mt == "qwen3",
            keys=keys,
            source=where,
        )

    @classmethod
    def _from_hf_gemma3(cls, config: Mapping[str, Any], r: _Reader, where: str) -> ModelConfig:
        """Gemma 3's text model (model_type gemma3_text, Gemma3ForCausalLM)."""
        act = r.get("hidden_activation", str, "gelu_pytorch_tanh")
        if act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise ModelFormatError(
                f"{where}: hidden_activation {act!r} is not supported (gelu_pytorch_tanh)"
            )
        if config.get("use_bidirectional_attention"):
            raise ModelFormatError(f"{where}: use_bidirectional_attention=true is not supported")
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if config.get(key) is not None:
                raise ModelFormatError(
                    f"{where}: {key}={config[key]!r} is not supported (softcapping)"
                )
        n_embd, n_head = r.get("hidden_size", int), r.get("num_attention_heads", int)
        n_layer = r.get("num_hidden_layers", int)
        head_dim = r.get("head_dim", int, 256)
        theta, scaling = _hf_rope(config, r, where)
        params = config.get("rope_parameters")
        local = params.get("sliding_attention") if isinstance(params, Mapping) else None
        if isinstance(local, Mapping):
            if local.get("rope_type", "default") != "default":
                raise ModelFormatError(
                    f"{where}: rope_parameters.sliding_attention rope_type "
                    f"{local.get('rope_type')!r} is not supported (default)"
                )
            local_theta = _Reader(local, f"{where} rope_parameters.sliding_attention").get(
                "rope_theta", float, 10000.0
            )
        else:
            local_theta = r.get("rope_local_base_freq", float, 10000.0)
        types = config.get("layer_types")
        if isinstance(types, list):
            window_layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
        else:
            pattern = r.get("sliding_window_pattern", int, 6)
            window_layers = tuple(i for i in range(n_layer) if (i + 1) % max(pattern, 1))
        scalar = r.get("query_pre_attn_scalar", float, float(head_dim))
        if scalar <= 0:
            raise ModelFormatError(f"{where}: query_pre_attn_scalar must be > 0, got {scalar}")
        keys = dict(
            _HF_DECODER_KEYS,
            rope_local_theta="rope_local_base_freq",
            attn_scale="query_pre_attn_scalar",
        )
        return cls(
            family="gemma3",
            vocab_size=r.get("vocab_size", int),
            n_layer=n_layer,
            n_head=n_head,
            n_kv_head=r.get("num_key_value_heads", int, n_head),
            n_embd=n_embd,
            head_dim=head_dim,
            n_ff=r.get("intermediate_size", int),
            max_position=r.get("max_position_embeddings", int),
            norm_eps=r.get("rms_norm_eps", float, 1e-6),
            activation="geglu",
            rope_theta=theta,
            rope_scaling=scaling,
            rope_layout="neox",
            qkv_bias=bool(config.get("attention_bias", False)),
            o_bias=bool(config.get("attention_bias", False)),
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),
            sliding_window=r.get("sliding_window", int, 0) or 0,
            window_layers=window_layers,
            qk_norm=True,
            post_norms=True,
            embed_scale=math.sqrt(n_embd) if isinstance(n_embd, int) and n_embd > 0 else 1.0,
            attn_scale=scalar**-0.5,
            rope_local_theta=local_theta,
            keys=keys,
            source=where,
        )

    @classmethod
    def _from_hf_gpt2(cls, r: _Reader, where: str) -> ModelConfig:
        act = r.get("activation_function", str, "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ModelFormatError(
                f"{where}: activation_function {act!r} is not supported "
                "(gelu_new, gelu_pytorch_tanh)"
            )
        for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if r.get(flag, bool, False):
                raise ModelFormatError(f"{where}: {flag}=true is not supported")
        if not r.get("scale_attn_weights", bool, True):
            raise ModelFormatError(f"{where}: scale_attn_weights=false is not supported")
        n_embd, n_head = r.get("n_embd", int), r.get("n_head", int)
        if n_head <= 0 or n_embd % n_head:
            raise ModelFormatError(f"{where}: n_head ({n_head}) must divide n_embd ({n_embd})")
        n_inner = r.get("n_inner", int, None)
        keys = {
            "vocab_size": "vocab_size",
            "n_layer": "n_layer",
            "n_head": "n_head",
            "n_kv_head": "n_head",
            "n_embd": "n_embd",
            "head_dim": "n_embd",
            "n_ff": "n_inner",
            "max_position": "n_positions",
            "norm_eps": "layer_norm_epsilon",
        }
        return cls(
            family="gpt2",
            vocab_size=r.get("vocab_size", int),
            n_layer=r.get("n_layer", int),
            n_head=n_head,
            n_kv_head=n_head,
            n_embd=n_embd,
            head_dim=n_embd // n_head,
            n_ff=n_inner if n_inner else 4 * n_embd,
            max_position=r.get("n_positions", int),
            norm="layer",
            norm_eps=r.get("layer_norm_epsilon", float, 1e-5),
            activation="gelu_tanh",
            position="learned",
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            norm_bias=True,
            tied_embeddings=r.get("tie_word_embeddings", bool, True),
            keys=keys,
            source=where,
        )


# ---------------------------------------------------------------------- helpers

_MISSING = object()


def _gemma3_gguf(
    r: _Reader, a: str, n_embd: int, n_head: int, head_dim: int, n_layer: int
) -> dict[str, Any]:
    """Gemma 3's extra hyper-parameters in a GGUF. llama.cpp does not store the softmax scale,
    the local RoPE base or (in most files) the layer pattern: it uses 1/sqrt(head_dim) (for the
    62-layer 27B model 1/sqrt(n_embd / n_head), its query_pre_attn_scalar), 10000 and every
    sixth layer global, and so does this."""
    pattern = r.get(f"{a}.attention.sliding_window_pattern", int, 6)
    _in_range(r.where, f"{a}.attention.sliding_window_pattern", pattern, 1, None)
    scalar = n_embd / n_head if n_layer == 62 and n_head > 0 else head_dim
    return dict(
        activation="geglu",
        post_norms=True,
        embed_scale=math.sqrt(n_embd) if n_embd > 0 else 1.0,
        attn_scale=1.0 / math.sqrt(scalar) if scalar > 0 else 0.0,
        rope_local_theta=10000.0,
        window_layers=tuple(i for i in range(n_layer) if (i + 1) % max(pattern, 1)),
    )


def _in_range(where: str, key: str, value: Any, lo: Any, hi: Any) -> Any:
    """value if lo <= value <= hi (None: unbounded), else a ModelFormatError naming key."""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ModelFormatError(f"{where}: {key} must be {bounds}, got {value!r}")
    return value


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _Reader:
    """Typed access to a metadata mapping; errors name the key and the file."""

    def __init__(self, md: Mapping[str, Any], where: str) -> None:
        self.md, self.where = md, where

    def get(self, key: str, kind: type, default: Any = _MISSING) -> Any:
        if key not in self.md or self.md[key] is None:
            if default is _MISSING:
                raise ModelFormatError(f"{self.where}: {key} is missing")
            return default
        value = self.md[key]
        if kind is int:
            value = _as_int(value)
            if value is None:
                raise ModelFormatError(
                    f"{self.where}: {key} must be an integer, got {self.md[key]!r}"[:300]
                )
        elif kind is float:
            try:
                ok = not isinstance(value, (bool, str)) and math.isfinite(float(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ModelFormatError(
                    f"{self.where}: {key} must be a finite number, got {self.md[key]!r}"[:300]
                )
            value = float(value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ModelFormatError(f"{self.where}: {key} must be true or false, got {value!r}")
        elif kind is str:  # noqa: SIM102 - one branch per kind, shaped like the ones above
            if not isinstance(value, str):
                raise ModelFormatError(f"{self.where}: {key} must be a string, got {value!r}"[:300])
        return value


def _as_int(value: Any) -> int | None:
    """An int from an int, a numpy integer, or a one-valued per-layer array; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (list, np.ndarray)) and len(value) > 0:
        # Per-layer hyper-parameters (some GGUFs store head counts per layer): accept them only
        # when every layer agrees.
        items = {(_as_int(v) if not isinstance(v, (list, np.ndarray)) else None) for v in value}
        if len(items) == 1 and None not in items:
            return items.pop()
    return None


def _hf_rope(config: Mapping[str, Any], r: _Reader, where: str) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either transformers 5's `rope_parameters` or the older
    top-level `rope_theta` / `rope_scaling`."""
    params = config.get("rope_parameters")
    if isinstance(params, Mapping) and "full_attention" in params:  # per-layer-type dicts
        params = params["full_attention"]
    if isinstance(params, Mapping):
        rp = _Reader(params, f"{where} rope_parameters")
        theta = rp.get("rope_theta", float, config.get("rope_theta", 10000.0))
        scaling_src: Mapping[str, Any] | None = params
    else:
        theta = r.get("rope_theta", float, 10000.0)
        scaling_src = config.get("rope_scaling")
    if not scaling_src:
        return theta, None
    if not isinstance(scaling_src, Mapping):
        raise ModelFormatError(f"{where}: rope_scaling must be an object, got {scaling_src!r}")
    kind = scaling_src.get("rope_type", scaling_src.get("type", "default"))
    sr = _Reader(scaling_src, f"{where} rope scaling")
    if kind in ("default", None):
        return theta, None
    if kind == "linear":
        return theta, {"type": "linear", "factor": sr.get("factor", float)}
    if kind == "llama3":
        return theta, {
            "type": "llama3",
            "factor": sr.get("factor", float),
            "low_freq_factor": sr.get("low_freq_factor", float),
            "high_freq_factor": sr.get("high_freq_factor", float),
            "original_max_position_embeddings": sr.get("original_max_position_embeddings", int),
        }
    if kind in ("longrope", "su"):
        orig = sr.get(
            "original_max_position_embeddings",
            int,
            r.get("original_max_position_embeddings", int, None),
        )
        if orig is None or orig <= 0:
            raise ModelFormatError(
                f"{where}: longrope needs original_max_position_embeddings (a positive integer)"
            )
        for name in ("short_factor", "long_factor"):
            if scaling_src.get(name) is None:
                raise ModelFormatError(f"{where}: longrope needs {name}")
        factor = sr.get("factor", float, r.get("max_position_embeddings", int) / orig)
        return theta, {
            "type": "longrope",
            "short_factor": scaling_src.get("short_factor"),
            "long_factor": scaling_src.get("long_factor"),
            "original_max_position_embeddings": orig,
            "attention_factor": sr.get(
                "attention_factor", float, _longrope_attention(factor, orig)
            ),
        }
    raise ModelFormatError(
        f"{where}: rope scaling type {kind!r} is not supported "
        "(supported: default, linear, llama3, longrope)"
    )


def _longrope_attention(factor: float, original: int) -> float:
    """LongRoPE's default scale of cos and sin: sqrt(1 + ln(factor) / ln(original context))."""
    if factor <= 1.0 or original <= 1:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original))
