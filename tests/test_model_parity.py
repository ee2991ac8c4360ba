"""pyllm's GPT against Hugging Face transformers on tiny random models of every family.

Each model is made with transformers (random init, then every weight — norms and biases
included — redrawn so nothing is a trivial 0 or 1), saved as safetensors, loaded by pyllm from the
folder, and run on the same token ids: logits must agree to 1e-4. Decoding token by token with the
KV cache, and batching sequences of different lengths into one flattened forward, must give the
full forward's logits. The config readers are tested for the errors they promise.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pyllm.errors import ModelFormatError  # noqa: E402
from pyllm.model.batch import ContiguousKVCache, build_metadata  # noqa: E402
from pyllm.model.config import ModelConfig  # noqa: E402
from pyllm.model.loader import load_model  # noqa: E402

VOCAB = 160
TOL = 1e-4

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5)

CASES = {
    # GPT-2: learned positions, LayerNorm with bias, GELU (tanh), Conv1D weights, tied head.
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                            n_positions=64, n_inner=96),
    # Llama with GQA (4 query heads, 2 KV heads), separate head, RoPE theta 10000.
    "llama-gqa": lambda: transformers.LlamaConfig(**COMMON, num_key_value_heads=2,
                                                  tie_word_embeddings=False),
    # Llama, MQA, tied head, head_dim != hidden/heads, llama3 RoPE scaling, bias everywhere.
    "llama-mqa-llama3": lambda: transformers.LlamaConfig(
        **{**COMMON, "max_position_embeddings": 128}, num_key_value_heads=1, head_dim=32,
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}),
    # Llama with linear RoPE scaling.
    "llama-linear": lambda: transformers.LlamaConfig(
        **COMMON, num_key_value_heads=4,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    # Qwen2: QKV bias (no output bias), GQA, tied head, theta 1e6.
    "qwen2": lambda: transformers.Qwen2Config(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # Qwen3: per-head RMSNorm of q and k before RoPE (QK-norm), no QKV bias, GQA, tied head,
    # head_dim (32) != hidden / heads (16).
    "qwen3": lambda: transformers.Qwen3Config(
        **COMMON, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # Gemma 3: QK-norm, (1 + w) RMSNorms before and after attention and MLP, GeGLU, embeddings
    # times sqrt(C), a sliding-window layer (base 10000) and a global one (base 1e6, linear
    # scaling), softmax scale 1/sqrt(query_pre_attn_scalar), head_dim != hidden / heads.
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **COMMON, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=5,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1000000.0}}),
    # Phi-3: fused qkv_proj and gate_up_proj, LongRoPE (short/long factors, original context 16:
    # the 23-token inputs take the long ones) on half of each head (partial_rotary_factor 0.5).
    "phi3": lambda: transformers.Phi3Config(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, original_max_position_embeddings=16,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.3, 2.1, 3.7],
                         "long_factor": [1.1, 2.5, 6.0, 17.0],
                         "original_max_position_embeddings": 16}),
    # Mistral: GQA and a sliding window shorter than the test sequence.
    "mistral-window": lambda: transformers.MistralConfig(**COMMON, num_key_value_heads=2,
                                                         head_dim=16, sliding_window=7),
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter: matrices ~ N(0, 0.15), norm weights ~ U(0.5, 1.5), biases
    ~ N(0, 0.2) — logits of order 1-10, where a wrong op would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def _make(case: str, folder: Path, dtype: torch.dtype = torch.float32):
    """A random transformers model saved to `folder`; returns it in float32, eval mode."""
    cfg = CASES[case]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    _randomize(model, seed=sum(map(ord, case)))
    if dtype != torch.float32:
        # Reload rather than cast back: casting would also round buffers such as RoPE's inv_freq.
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager").eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """case -> (transformers model, pyllm LoadedModel), built once per module."""
    out = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp(case)
        out[case] = (_make(case, folder), load_model(folder))
        FOLDERS[case] = folder
    return out


FOLDERS: dict[str, Path] = {}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def _hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids[None]).logits[0].float()


def _full_forward(loaded, ids: torch.Tensor) -> torch.Tensor:
    """Logits at every position, computed on the model's device, returned on the CPU."""
    cfg, device = loaded.config, loaded.model.device
    cache = ContiguousKVCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1, len(ids), block_size=8,
                              device=device)
    with torch.inference_mode():
        return loaded.model(ids.to(device), cache.metadata([0], [0], [len(ids)]),
                            cache.kv_caches).cpu()


# ---------------------------------------------------------------------- parity


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(models, case):
    hf, loaded = models[case]
    ids = _ids(23, seed=1)
    ref = _hf_logits(hf, ids)
    ours = _full_forward(loaded, ids)
    assert ref.abs().max() > 1.0, "the random model's logits are too small to test anything"
    assert (ours - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_decode_with_cache_equals_full_forward(models, case):
    """Prefill 9 tokens, then feed the rest one at a time through the cache."""
    hf, loaded = models[case]
    cfg = loaded.config
    ids = _ids(21, seed=2)
    full = _full_forward(loaded, ids)
    cache = ContiguousKVCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1, len(ids), block_size=4)
    rows = []
    with torch.inference_mode():
        rows.append(loaded.model(ids[:9], cache.metadata([0], [0], [9]), cache.kv_caches))
        for t in range(9, len(ids)):
            rows.append(loaded.model(ids[t:t + 1], cache.metadata([0], [t], [1]),
                                     cache.kv_caches))
    stepped = torch.cat(rows)
    assert (stepped - full).abs().max().item() <= TOL
    assert (stepped - _hf_logits(hf, ids)).abs().max().item() <= TOL


@pytest.mark.parametrize("case", ["llama-gqa", "gpt2", "mistral-window", "qwen3", "gemma3", "phi3"])
def test_flattened_batch_equals_separate_sequences(models, case):
    """Three sequences of different lengths in one forward (shuffled, non-contiguous blocks),
    with logits only at each sequence's last token, equal each sequence run alone."""
    _, loaded = models[case]
    cfg = loaded.config
    seqs = [_ids(n, seed=10 + n) for n in (5, 17, 1)]
    block = 4
    tables = [[7, 2], [0, 5, 3, 9, 1], [4]]  # blocks scattered through the pool
    caches = ContiguousKVCache(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1, 10 * block,
                               block_size=block).kv_caches
    meta = build_metadata([0, 0, 0], [len(s) for s in seqs], tables, block)
    with torch.inference_mode():
        batched = loaded.model(torch.cat(seqs), meta, caches, meta.last_token_rows())
    for i, s in enumerate(seqs):
        alone = _full_forward(loaded, s)[-1]
        assert (batched[i] - alone).abs().max().item() <= TOL


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("family", ["general", "tuned"])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_logits_match_transformers(models, case, family):
    """The same folders on the GPU (every op on its CUDA kernel, of either family)."""
    from pyllm import ops

    hf, _ = models[case]
    loaded = load_model(FOLDERS[case], device="cuda")
    assert loaded.model.device.type == "cuda"
    ids = _ids(23, seed=1)
    with ops.using_cuda_kernels(family):
        assert (_full_forward(loaded, ids) - _hf_logits(hf, ids)).abs().max().item() <= TOL


def test_phi3_short_factors_within_the_original_context(models, tmp_path):
    """Phi-3 run with a context no longer than the original one takes the short factors, as
    transformers does on an input that stays within it."""
    hf, _ = models["phi3"]
    loaded = load_model(FOLDERS["phi3"], context_length=16)
    ids = _ids(14, seed=5)
    assert (_full_forward(loaded, ids) - _hf_logits(hf, ids)).abs().max().item() <= TOL
    long = load_model(FOLDERS["phi3"])  # context 64: the long factors, which differ here
    assert (_full_forward(long, ids) - _hf_logits(hf, ids)).abs().max().item() > 1e-2


def test_bf16_checkpoint_matches_transformers(tmp_path):
    """Weights kept in bfloat16 (computed on by ops.linear) give transformers' float32 result
    on the same bf16-rounded weights."""
    hf = _make("llama-gqa", tmp_path, dtype=torch.bfloat16)
    loaded = load_model(tmp_path)
    assert loaded.model.gpt.blocks[0].attn.qkv.weight.qtype == "bf16"
    ids = _ids(19, seed=3)
    assert (_full_forward(loaded, ids) - _hf_logits(hf, ids)).abs().max().item() <= TOL


def test_missing_tensor_and_bad_shape_are_named(tmp_path, models):
    from safetensors.torch import load_file, save_file

    _make("llama-gqa", tmp_path)
    (st,) = tmp_path.glob("*.safetensors")
    tensors = load_file(st)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, st, metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="model.layers.1.mlp.up_proj.weight"):
        load_model(tmp_path)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(96, 60)
    save_file(tensors, st, metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match=r"up_proj.weight.*\[96, 60\]"):
        load_model(tmp_path)


# ---------------------------------------------------------------------- config validation


def _gguf(**overrides):
    """A stand-in GGUFFile (metadata + tensor names) for a small llama."""
    md = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 64,
          "llama.embedding_length": 64, "llama.feed_forward_length": 96,
          "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
          "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": VOCAB}
    for k, v in overrides.items():
        if v is None:
            md.pop(k, None)
        else:
            md[k] = v
    return SimpleNamespace(path="x.gguf", metadata=md,
                           tensors={"token_embd.weight": SimpleNamespace(shape=(VOCAB, 64))})


def test_config_from_gguf_reads_llama():
    cfg = ModelConfig.from_gguf(_gguf())
    assert (cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.head_dim) == (2, 4, 2, 16)
    assert cfg.rope_layout == "normal" and cfg.tied_embeddings and cfg.rope_theta == 10000.0


@pytest.mark.parametrize("key,value,match", [
    ("llama.block_count", None, "llama.block_count is missing"),
    ("llama.block_count", 2**40, "llama.block_count must be an integer in"),
    ("llama.block_count", "2", "llama.block_count must be an integer"),
    ("llama.embedding_length", 0, "llama.embedding_length"),
    ("llama.attention.head_count", 5, "head_count \\(5\\) does not divide"),
    ("llama.attention.head_count", 0, "head_count must be >= 1"),
    ("llama.attention.head_count_kv", 3, "head_count_kv \\(3\\) must divide"),
    ("llama.attention.layer_norm_rms_epsilon", float("nan"), "layer_norm_rms_epsilon"),
    ("llama.attention.layer_norm_rms_epsilon", 5.0, "layer_norm_rms_epsilon must be in"),
    ("llama.rope.freq_base", -1.0, "llama.rope.freq_base"),
    ("llama.rope.dimension_count", 7, "llama.rope.dimension_count must be even"),
    ("llama.rope.dimension_count", 64, "llama.rope.dimension_count must be even"),
    ("llama.rope.scaling.type", "yarn", "yarn"),
    ("llama.context_length", -5, "llama.context_length"),
    ("llama.vocab_size", 2**40, "llama.vocab_size"),
    ("general.architecture", "bert", "'bert' is not supported"),
])
def test_config_from_gguf_names_the_bad_key(key, value, match):
    with pytest.raises(ModelFormatError, match=match):
        ModelConfig.from_gguf(_gguf(**{key: value}))


@pytest.mark.parametrize("case", list(CASES))
def test_config_from_hf_families(case):
    d = CASES[case]().to_dict()
    cfg = ModelConfig.from_hf(d)
    assert cfg.family == {"gemma3_text": "gemma3"}.get(d["model_type"], d["model_type"])
    assert cfg.vocab_size == VOCAB
    assert cfg.rope_layout == "neox"


@pytest.mark.parametrize("key,value,match", [
    ("num_attention_heads", 5, "num_attention_heads \\(5\\) does not divide hidden_size"),
    ("num_key_value_heads", 3, "num_key_value_heads \\(3\\) must divide"),
    ("hidden_act", "relu", "hidden_act 'relu'"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}, "'yarn'"),
    ("num_hidden_layers", "two", "num_hidden_layers must be an integer"),
    ("model_type", "t5", "'t5' is not supported"),
])
def test_config_from_hf_names_the_bad_key(key, value, match):
    d = CASES["llama-gqa"]().to_dict()
    d.pop("head_dim")  # derived from hidden_size / num_attention_heads, so it must divide
    d[key] = value
    with pytest.raises(ModelFormatError, match=match):
        ModelConfig.from_hf(d)


@pytest.mark.parametrize("case,key,value,match", [
    ("gemma3", "final_logit_softcapping", 30.0, "final_logit_softcapping=30.0 is not supported"),
    ("gemma3", "attn_logit_softcapping", 50.0, "attn_logit_softcapping=50.0 is not supported"),
    ("gemma3", "hidden_activation", "relu", "hidden_activation 'relu'"),
    ("gemma3", "query_pre_attn_scalar", -4, "query_pre_attn_scalar must be > 0"),
    ("gemma3", "model_type", "gemma3", "only the text model"),
    ("phi3", "rope_parameters", {"rope_type": "longrope", "rope_theta": 1e4,
                                 "partial_rotary_factor": 0.5, "short_factor": [1.0, 2.0],
                                 "long_factor": [1.0, 2.0, 3.0, 4.0],
                                 "original_max_position_embeddings": 16},
     "short_factor must be 4 positive numbers"),
    ("phi3", "rope_parameters", {"rope_type": "longrope", "rope_theta": 1e4,
                                 "long_factor": [1.0] * 8,
                                 "original_max_position_embeddings": 16},
     "longrope needs short_factor"),
    ("phi3", "partial_rotary_factor", 1.5, "partial_rotary_factor must be in"),
])
def test_config_from_hf_new_families_name_the_bad_key(case, key, value, match):
    d = CASES[case]().to_dict()
    if key == "partial_rotary_factor":
        d["rope_parameters"].pop(key)
    d[key] = value
    with pytest.raises(ModelFormatError, match=match):
        ModelConfig.from_hf(d)


def test_config_from_gguf_reads_new_families():
    """qwen3 and gemma3 are NeoX-rotated with QK-norm (seen from the tensors); gemma3 gets its
    layer pattern, softmax scale, sqrt(d) embedding scale and local RoPE base."""
    tensors = {"token_embd.weight": SimpleNamespace(shape=(VOCAB, 64)),
               "blk.0.attn_q_norm.weight": SimpleNamespace(shape=(32,))}

    def file(arch: str, extra_tensors: dict | None = None, **extra) -> SimpleNamespace:
        md = {f"{arch}.{k[6:]}" if k.startswith("llama.") else k: v
              for k, v in _gguf().metadata.items()}
        md.update({"general.architecture": arch, f"{arch}.attention.key_length": 32,
                   f"{arch}.attention.value_length": 32, **extra})
        return SimpleNamespace(path="x.gguf", metadata=md,
                               tensors={**tensors, **(extra_tensors or {})})

    q = ModelConfig.from_gguf(file("qwen3"))
    assert (q.family, q.rope_layout, q.qk_norm, q.head_dim, q.post_norms) == (
        "qwen3", "neox", True, 32, False)
    g = ModelConfig.from_gguf(file("gemma3", **{"gemma3.attention.sliding_window": 8,
                                                "gemma3.attention.sliding_window_pattern": 2}))
    assert g.post_norms and g.activation == "geglu" and g.window_layers == (0,)
    assert (g.window(0), g.window(1)) == (8, 0) and g.rope_local_theta == 10000.0
    assert math.isclose(g.embed_scale, 8.0) and math.isclose(g.attn_scale, 32 ** -0.5)
    big = ModelConfig.from_gguf(file("gemma3", **{"gemma3.block_count": 62}))  # llama.cpp's 27B
    assert math.isclose(big.attn_scale, (64 / 4) ** -0.5)
    factors = {"rope_factors_long.weight": SimpleNamespace(shape=(16,))}
    with pytest.raises(ModelFormatError, match="original_context_length is missing"):
        ModelConfig.from_gguf(file("phi3", factors))
    p = ModelConfig.from_gguf(file("phi3", factors,
                                   **{"phi3.rope.scaling.original_context_length": 16}))
    assert p.rope_scaling is not None and p.rope_scaling["type"] == "longrope"
    assert math.isclose(p.rope_scaling["attention_factor"], math.sqrt(1 + math.log(4) / math.log(16)))


def test_config_old_style_rope_keys():
    """transformers 4.x configs: top-level rope_theta and rope_scaling."""
    d = {"model_type": "llama", **COMMON, "num_key_value_heads": 2, "rope_theta": 5e5,
         "rope_scaling": {"type": "linear", "factor": 4.0}}
    cfg = ModelConfig.from_hf(d)
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling == {"type": "linear", "factor": 4.0}
    assert math.isclose(cfg.norm_eps, 1e-5)


# ---------------------------------------------------------------------- GGUF files


def _permute_for_normal_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What llama.cpp's converter does to Llama Q/K rows: within each head, the NeoX halves
    (x_0..x_{D/2-1}, y_0..y_{D/2-1}) become adjacent pairs (x_0, y_0, x_1, y_1, ...)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _write_gguf(hf, path: Path, arch: str, qtypes: dict[str, str]) -> None:
    """Write `hf` (a transformers Llama/Qwen2) as llama.cpp lays it out, quantizing matrices to
    qtypes[kind] with pyllm's quantizer, and put the dequantized values back into `hf` so the
    two compute on the same numbers."""
    gguf = pytest.importorskip("gguf")
    from pyllm.weights import quant

    cfg = hf.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
             "q4_1": gguf.GGMLQuantizationType.Q4_1}
    w = gguf.GGUFWriter(str(path), arch)
    a = arch
    w.add_uint32(f"{a}.block_count", cfg.num_hidden_layers)
    w.add_uint32(f"{a}.context_length", cfg.max_position_embeddings)
    w.add_uint32(f"{a}.embedding_length", cfg.hidden_size)
    w.add_uint32(f"{a}.feed_forward_length", cfg.intermediate_size)
    w.add_uint32(f"{a}.attention.head_count", n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", n_kv)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)  # Gemma 3: per layer type
    w.add_float32(f"{a}.rope.freq_base", rope["rope_theta"])
    phi3 = arch == "phi3"
    if phi3:  # LongRoPE: the factors as tensors, the original context and attention factor
        head_dim = cfg.hidden_size // n_head
        w.add_uint32(f"{a}.rope.dimension_count", int(head_dim * rope["partial_rotary_factor"]))
        orig = rope["original_max_position_embeddings"]
        w.add_uint32(f"{a}.rope.scaling.original_context_length", orig)
        factor = cfg.max_position_embeddings / orig
        w.add_float32(f"{a}.rope.scaling.attn_factor",
                      math.sqrt(1 + math.log(factor) / math.log(orig)))
        for kind in ("long", "short"):
            w.add_tensor(f"rope_factors_{kind}.weight",
                         torch.tensor(rope[f"{kind}_factor"], dtype=torch.float32).numpy())
    if rope.get("rope_type") == "linear":
        w.add_string(f"{a}.rope.scaling.type", "linear")
        w.add_float32(f"{a}.rope.scaling.factor", rope["factor"])
    gemma = arch == "gemma3"
    if gemma:
        w.add_uint32(f"{a}.attention.sliding_window", cfg.sliding_window)
        pattern = cfg.layer_types.index("full_attention") + 1
        w.add_uint32(f"{a}.attention.sliding_window_pattern", pattern)
    w.add_uint32(f"{a}.vocab_size", cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    if head_dim * n_head != cfg.hidden_size:
        w.add_uint32(f"{a}.attention.key_length", head_dim)
        w.add_uint32(f"{a}.attention.value_length", head_dim)

    def put(name: str, param: torch.nn.Parameter, kind: str, heads: int = 0) -> None:
        qtype = qtypes.get(kind, "f32") if param.dim() == 2 else "f32"
        data = param.detach().float()
        if gemma and kind == "norm":  # llama.cpp's converter stores Gemma's 1 + w
            stored = data + 1.0
            w.add_tensor(name, stored.numpy(), raw_dtype=types["f32"])
            return
        if qtype not in ("f32", "f16"):
            raw = quant.quantize(data, qtype)
            param.data.copy_(quant.dequantize(raw, qtype, data.shape[1]))
            stored = raw
        else:
            stored = data.to(torch.float16 if qtype == "f16" else torch.float32)
            param.data.copy_(stored.float())
        if heads and arch == "llama":  # llama.cpp permutes Llama Q/K (weights and biases)
            stored = _permute_for_normal_rope(stored, heads)
        w.add_tensor(name, stored.numpy(), raw_dtype=types[qtype])

    m = hf.model
    put("token_embd.weight", m.embed_tokens.weight, "embed")
    put("output_norm.weight", m.norm.weight, "norm")
    if not cfg.tie_word_embeddings:
        put("output.weight", hf.lm_head.weight, "head")
    for i, layer in enumerate(m.layers):
        at, mlp = layer.self_attn, layer.mlp
        put(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight, "norm")
        if gemma:
            put(f"blk.{i}.post_attention_norm.weight", layer.post_attention_layernorm.weight,
                "norm")
            put(f"blk.{i}.ffn_norm.weight", layer.pre_feedforward_layernorm.weight, "norm")
            put(f"blk.{i}.post_ffw_norm.weight", layer.post_feedforward_layernorm.weight, "norm")
        else:
            put(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight, "norm")
        if phi3:  # fused in the checkpoint and in llama.cpp's file ([gate; up] as ffn_up)
            put(f"blk.{i}.attn_qkv.weight", at.qkv_proj.weight, "q")
            put(f"blk.{i}.attn_output.weight", at.o_proj.weight, "o")
            put(f"blk.{i}.ffn_up.weight", mlp.gate_up_proj.weight, "up")
            put(f"blk.{i}.ffn_down.weight", mlp.down_proj.weight, "down")
            continue
        put(f"blk.{i}.attn_q.weight", at.q_proj.weight, "q", n_head)
        put(f"blk.{i}.attn_k.weight", at.k_proj.weight, "k", n_kv)
        put(f"blk.{i}.attn_v.weight", at.v_proj.weight, "v")
        put(f"blk.{i}.attn_output.weight", at.o_proj.weight, "o")
        if at.q_proj.bias is not None:
            put(f"blk.{i}.attn_q.bias", at.q_proj.bias, "bias", n_head)
            put(f"blk.{i}.attn_k.bias", at.k_proj.bias, "bias", n_kv)
            put(f"blk.{i}.attn_v.bias", at.v_proj.bias, "bias")
        if hasattr(at, "q_norm"):  # Qwen3's QK-norm
            put(f"blk.{i}.attn_q_norm.weight", at.q_norm.weight, "norm")
            put(f"blk.{i}.attn_k_norm.weight", at.k_norm.weight, "norm")
        put(f"blk.{i}.ffn_gate.weight", mlp.gate_proj.weight, "gate")
        put(f"blk.{i}.ffn_up.weight", mlp.up_proj.weight, "up")
        put(f"blk.{i}.ffn_down.weight", mlp.down_proj.weight, "down")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GGUF_CASES = {
    # Llama, Q/K permuted for normal RoPE, V kept finer than Q/K (q8_0 vs q4_1: the fused QKV
    # falls back to one linear per format), q8_0 tied embedding/head, q4_0 MLP.
    "llama": ("llama-gqa", "llama", {"q": "q4_1", "k": "q4_1", "v": "q8_0", "o": "q4_1",
                                     "gate": "q4_0", "up": "q4_0", "down": "q4_1",
                                     "embed": "q8_0"}),
    # Qwen2: NeoX RoPE on unpermuted weights, QKV biases, f16 and q8_0 matrices, untied head.
    "qwen2": ("qwen2", "qwen2", {"q": "q8_0", "k": "q8_0", "v": "q8_0", "o": "f16",
                                "gate": "q8_0", "up": "q8_0", "down": "q4_1", "embed": "f16",
                                "head": "q8_0"}),
    # Qwen3: NeoX RoPE, QK-norm vectors, no biases, head_dim from key_length, tied embedding.
    "qwen3": ("qwen3", "qwen3", {"q": "q8_0", "k": "q4_0", "v": "q8_0", "o": "q4_1",
                                "gate": "q8_0", "up": "q8_0", "down": "f16", "embed": "q8_0"}),
    # Phi-3: fused QKV and gate/up in the file, LongRoPE factors as tensors, untied head.
    "phi3": ("phi3", "phi3", {"q": "q8_0", "o": "q4_1", "up": "q8_0", "down": "q4_0",
                             "embed": "f16", "head": "q8_0"}),
    # Gemma 3: norms stored as 1 + w, post-norms, local/global layers, linear-scaled global RoPE.
    "gemma3": ("gemma3", "gemma3", {"q": "q8_0", "k": "q4_0", "v": "q8_0", "o": "q4_1",
                                   "gate": "q8_0", "up": "q4_0", "down": "f16", "embed": "q8_0"}),
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_gguf_quantized_model_matches_transformers(tmp_path, case):
    """A tiny model written as llama.cpp lays out a GGUF (blocks, permuted Q/K for Llama) gives
    transformers' logits on the dequantized weights."""
    hf_case, arch, qtypes = GGUF_CASES[case]
    cfg = CASES[hf_case]()
    if case == "qwen2":
        cfg.tie_word_embeddings = False
    if case == "gemma3":  # llama.cpp scales by 1/sqrt(head_dim): the file has no other scalar
        cfg.query_pre_attn_scalar = cfg.head_dim
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    _randomize(hf, seed=7)
    _write_gguf(hf, tmp_path / "tiny.gguf", arch, qtypes)
    loaded = load_model(tmp_path / "tiny.gguf")
    assert loaded.config.rope_layout == ("normal" if arch == "llama" else "neox")
    assert loaded.config.qk_norm == (arch in ("qwen3", "gemma3"))
    qkv = loaded.model.gpt.blocks[0].attn.qkv
    assert type(qkv).__name__ == ("Linear" if case in ("qwen2", "phi3") else "ConcatLinear")
    ids = _ids(23, seed=4)
    ref = _hf_logits(hf, ids)
    assert (_full_forward(loaded, ids) - ref).abs().max().item() <= TOL
    if torch.cuda.is_available():  # the blocks on the GPU: the CUDA qlinear kernels
        gpu = load_model(tmp_path / "tiny.gguf", device="cuda")
        assert (_full_forward(gpu, ids) - ref).abs().max().item() <= TOL
