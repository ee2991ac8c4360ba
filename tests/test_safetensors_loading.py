"""Hugging Face folders: config.json validation and safetensors loading (single, sharded)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from pyllm.errors import ModelFormatError
from pyllm.weights.safetensors import load_hf_config, load_hf_folder, load_safetensors_folder

CONFIG = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "vocab_size": 16, "rms_norm_eps": 1e-5}


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"embed.weight": torch.randn(16, 8, generator=g),
            "norm.weight": torch.randn(8, generator=g).to(torch.bfloat16),
            "lm_head.weight": torch.randn(16, 8, generator=g).half()}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    save_file(tensors(), str(tmp_path / "model.safetensors"))
    (tmp_path / "tokenizer.json").write_text("{}")
    return tmp_path


def test_single_file(folder):
    hf = load_hf_folder(folder)
    assert hf.config == CONFIG
    assert hf.tokenizer_json == folder / "tokenizer.json"
    assert hf.tokenizer_config is None
    want = tensors()
    assert set(hf.tensors) == set(want)
    for k, v in want.items():
        assert hf.tensors[k].dtype == v.dtype
        assert torch.equal(hf.tensors[k], v)


def test_sharded_with_index(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    t = tensors()
    save_file({"embed.weight": t["embed.weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: t[k] for k in ("norm.weight", "lm_head.weight")},
              str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {"embed.weight": "model-00001-of-00002.safetensors",
          "norm.weight": "model-00002-of-00002.safetensors",
          "lm_head.weight": "model-00002-of-00002.safetensors"}
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    got = load_safetensors_folder(tmp_path)
    assert all(torch.equal(got[k], v) for k, v in t.items())

    # a stray file that the index does not name is ignored
    save_file({"junk": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    assert "junk" not in load_safetensors_folder(tmp_path)

    # the index names a tensor in the wrong shard
    index.write_text(json.dumps({"weight_map": {**wm, "embed.weight": wm["norm.weight"]}}))
    with pytest.raises(ModelFormatError, match=r"weight_map\['embed.weight'\]: tensor not found"):
        load_safetensors_folder(tmp_path)
    # a path outside the folder
    index.write_text(json.dumps({"weight_map": {**wm, "embed.weight": "../x.safetensors"}}))
    with pytest.raises(ModelFormatError, match="not a file name in the folder"):
        load_safetensors_folder(tmp_path)
    # a missing shard
    index.write_text(json.dumps({"weight_map": {**wm, "embed.weight": "gone.safetensors"}}))
    with pytest.raises(ModelFormatError, match="shard gone.safetensors is missing"):
        load_safetensors_folder(tmp_path)
    # a tensor the index does not list
    index.write_text(json.dumps({"weight_map": {k: v for k, v in wm.items()
                                                if k != "lm_head.weight"}}))
    with pytest.raises(ModelFormatError, match="does not list tensors lm_head.weight"):
        load_safetensors_folder(tmp_path)


def test_duplicate_tensor_across_files(folder):
    save_file({"norm.weight": torch.zeros(8)}, str(folder / "extra.safetensors"))
    with pytest.raises(ModelFormatError, match="tensor 'norm.weight' also in"):
        load_safetensors_folder(folder)


def test_pickle_only_folder_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelFormatError, match="pickled.*never unpickles"):
        load_hf_folder(tmp_path)


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(ModelFormatError, match="no \\*.safetensors"):
        load_hf_folder(tmp_path)


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1])
def test_damaged_safetensors(folder, cut):
    p = folder / "model.safetensors"
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data[:cut] if cut >= 0 else data[:8] + b"\xff" * 40 + data[48:])
    with pytest.raises(ModelFormatError, match="model.safetensors: not a valid safetensors"):
        load_safetensors_folder(folder)


@pytest.mark.parametrize("text,match", [
    ("{", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"model_type": "llama", "model_type": "gpt2"}', "model_type: duplicate key"),
    ('{"model_type": "llama", "rope_theta": NaN}', "NaN is not valid JSON"),
    ('{"hidden_size": 8}', "model_type: required"),
    ('{"model_type": 3}', "model_type: required"),
    ('{"model_type": "llama", "hidden_size": -8}', "hidden_size: expected a positive integer"),
    ('{"model_type": "llama", "hidden_size": true}', "hidden_size: expected a positive integer"),
    ('{"model_type": "llama", "num_hidden_layers": 2.5}', "num_hidden_layers: expected"),
    ('{"model_type": "llama", "rms_norm_eps": 0}', "rms_norm_eps: expected a positive number"),
    ('{"model_type": "llama", "rope_theta": "1e4"}', "rope_theta: expected a positive number"),
    ("[" * 100_000, "invalid JSON"),
])
def test_bad_config(tmp_path, text, match):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelFormatError, match=match) as ei:
        load_hf_config(tmp_path)
    assert "config.json" in str(ei.value)


def test_missing_config(tmp_path):
    with pytest.raises(ModelFormatError, match="config.json: file is missing"):
        load_hf_config(tmp_path)


def test_transformers_saved_model_loads(tmp_path):
    # an independent writer: transformers' save_pretrained (safetensors by default)
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(tmp_path)
    hf = load_hf_folder(tmp_path)
    assert hf.config["model_type"] == "gpt2" and hf.config["n_embd"] == 16
    sd = model.state_dict()
    for name, t in hf.tensors.items():
        assert torch.equal(t, sd[name]), name
