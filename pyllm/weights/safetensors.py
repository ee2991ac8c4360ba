"""Hugging Face model folders: config.json + *.safetensors (sharded or not) + tokenizer.json.

Weights are read with the `safetensors` library only; pickled checkpoints (`*.bin`, `*.pt`,
`*.pth`, `*.ckpt`) are never opened: a folder that has nothing else is refused. Every problem is
a :class:`pyllm.ModelFormatError` naming the file and the key or tensor at fault.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyllm.errors import ModelFormatError

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class HFFolder:
    path: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    tokenizer_json: Path | None  # tokenizer.json when present
    tokenizer_config: dict[str, Any] | None  # tokenizer_config.json (chat template, specials)


def load_hf_folder(folder: str | Path) -> HFFolder:
    """config.json (validated), every tensor, and where the tokenizer files are."""
    folder = Path(folder)
    config = load_hf_config(folder)
    tensors = load_safetensors_folder(folder)
    tok = folder / "tokenizer.json"
    tok_cfg = folder / "tokenizer_config.json"
    return HFFolder(
        folder,
        config,
        tensors,
        tok if tok.is_file() else None,
        read_json(tok_cfg) if tok_cfg.is_file() else None,
    )


# ------------------------------------------------------------------ JSON


def _no_duplicates(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ModelFormatError(f"{path}: {k}: duplicate key")
            out[k] = v
        return out

    return hook


def _reject_constant(path: Path):
    def hook(name: str) -> Any:
        raise ModelFormatError(f"{path}: {name} is not valid JSON (non-finite numbers are refused)")

    return hook


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; no duplicate keys, no NaN/Infinity."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: file is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: cannot read: {e}") from e
    try:
        data = json.loads(
            text, object_pairs_hook=_no_duplicates(path), parse_constant=_reject_constant(path)
        )
    except json.JSONDecodeError as e:
        raise ModelFormatError(
            f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except RecursionError:
        raise ModelFormatError(f"{path}: invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_hf_config(folder: str | Path) -> dict[str, Any]:
    """config.json as a dict, with the keys every model reads checked for type and range.

    Family-specific hyper-parameters are checked by the model's config (ModelConfig.from_hf);
    here: model_type is a string, and the common size keys, when present, are positive integers
    and the epsilon/theta values positive finite numbers.
    """
    path = Path(folder) / CONFIG
    config = read_json(path)
    mt = config.get("model_type")
    if not isinstance(mt, str) or not mt:
        raise ModelFormatError(f"{path}: model_type: required string is missing or not a string")
    for key in _POSITIVE_INTS:
        if key in config and config[key] is not None:
            v = config[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ModelFormatError(
                    f"{path}: {key}: expected a positive integer, got {v!r}"[:300]
                )
    for key in _POSITIVE_FLOATS:
        if key in config and config[key] is not None:
            v = config[key]
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not (math.isfinite(v) and v > 0)
            ):
                raise ModelFormatError(
                    f"{path}: {key}: expected a positive number, got {v!r}"[:300]
                )
    return config


_POSITIVE_INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "head_dim",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "n_inner",
)
_POSITIVE_FLOATS = ("rms_norm_eps", "layer_norm_epsilon", "rope_theta")


# ------------------------------------------------------------------ weights


def safetensors_files(folder: str | Path) -> list[Path]:
    """The weight files of a folder: the shards named by the index, else every *.safetensors.

    Raises ModelFormatError for a folder with only pickled weights, or none at all.
    """
    folder = Path(folder)
    index = folder / INDEX
    if index.is_file():
        return sorted(set(_index_map(index).values()))
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelFormatError(
            f"{folder}: only pickled PyTorch weights ({', '.join(pickled[:3])}); pyllm never "
            f"unpickles weights. Convert them to safetensors (transformers: "
            f"model.save_pretrained(dir, safe_serialization=True)) or use a GGUF file"
        )
    raise ModelFormatError(f"{folder}: no *.safetensors weights")


def _index_map(index: Path) -> dict[str, Path]:
    """tensor name -> shard path, from model.safetensors.index.json."""
    data = read_json(index)
    wm = data.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise ModelFormatError(f"{index}: weight_map: expected a non-empty object")
    out: dict[str, Path] = {}
    for name, fname in wm.items():
        if not isinstance(fname, str) or Path(fname).name != fname or fname in ("", ".", ".."):
            raise ModelFormatError(
                f"{index}: weight_map[{name!r}]: {fname!r} is not a file name in the folder"
            )
        shard = index.parent / fname
        if not shard.is_file():
            raise ModelFormatError(f"{index}: weight_map[{name!r}]: shard {fname} is missing")
        out[name] = shard
    return out


def load_safetensors_folder(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files: name -> tensor (as stored)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    index = folder / INDEX
    expected = _index_map(index) if index.is_file() else None
    tensors: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    for path in safetensors_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if name in tensors:
                        raise ModelFormatError(
                            f"{path}: tensor {name!r} also in {where[name].name}"
                        )
                    tensors[name] = f.get_tensor(name)
                    where[name] = path
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ModelFormatError(f"{path}: not a valid safetensors file: {e}") from e
    if expected is not None:
        for name, shard in expected.items():
            if where.get(name) != shard:
                raise ModelFormatError(
                    f"{index}: weight_map[{name!r}]: tensor not found in {shard.name}"
                )
        extra = sorted(set(tensors) - set(expected))
        if extra:
            raise ModelFormatError(
                f"{index}: weight_map does not list tensors {', '.join(extra[:5])}"
            )
    return tensors


# The name the model loader imports.
load_folder = load_safetensors_folder
