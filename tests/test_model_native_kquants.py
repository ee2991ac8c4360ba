"""A Llama GGUF whose matrices are Q4_K, Q5_K, Q6_K, Q5_0 and Q5_1 (the mix a Q4_K_M / Q5_K_M
file holds) loads with those tensors kept in their blocks, runs on the fused CPU runner (and op by
op) and gives the logits of the same model stored as the dequantized float32 values; with int8
activations it stays within the int8 path's error of them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyllm.model.batch import allocate_kv_caches, build_metadata
from pyllm.model import layers
from pyllm.model.layers import ConcatLinear, Linear
from pyllm.model.loader import load_model
from pyllm.ops import _library as L
from pyllm.ops.qlinear import QWeight
from pyllm.weights import quant

import gguf_builder as B

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_random_llama as M  # noqa: E402

pytestmark = pytest.mark.skipif(
    not L.native(), reason="the CPU-only block types need the native kernels"
)

SHAPE = dict(M.SHAPES["tiny"], n_embd=256, n_ff=512, n_head=4, n_kv_head=2, vocab=160)
# fp16 scale fields of each block and the spread of the random scales written there (small
# enough for weights of order 0.1).
SCALES = {
    "q4_k": ([0, 2], 2e-3),
    "q5_k": ([0, 2], 1e-3),
    "q6_k": ([208], 2e-4),
    "q5_0": ([0], 5e-3),
    "q5_1": ([0, 2], 5e-3),
}
MATRICES = {  # name: (rows, cols, qtype)
    "token_embd.weight": (SHAPE["vocab"], 256, "q6_k"),
    "attn_q.weight": (256, 256, "q4_k"),
    "attn_k.weight": (128, 256, "q4_k"),
    "attn_v.weight": (128, 256, "q6_k"),
    "attn_output.weight": (256, 256, "q5_0"),
    "ffn_gate.weight": (512, 256, "q5_k"),
    "ffn_up.weight": (512, 256, "q5_1"),
    "ffn_down.weight": (256, 512, "q6_k"),
}


def random_blocks(rng: np.random.Generator, qtype: str, rows: int, cols: int) -> np.ndarray:
    t = quant.ggml_type(qtype)
    raw = rng.integers(0, 256, (rows * cols // t.block_size, t.block_bytes), dtype=np.uint8)
    offsets, spread = SCALES[qtype]
    for off in offsets:
        scale = (np.abs(rng.standard_normal(raw.shape[0])) * spread).astype(np.float16)
        raw[:, off : off + 2] = scale.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def write_pair(folder: Path) -> tuple[Path, Path]:
    """The quantized file and the same weights dequantized to F32."""
    rng = np.random.default_rng(11)
    native, dense = [], []

    def add(name: str, rows: int, cols: int, qtype: str) -> None:
        raw = random_blocks(rng, qtype, rows, cols)
        native.append(B.Tensor(name, (cols, rows), quant.ggml_type(qtype).id, raw.tobytes()))
        f32 = quant.dequantize(torch.from_numpy(raw.copy()), qtype, cols).numpy()
        dense.append(B.Tensor(name, (cols, rows), 0, f32.tobytes()))

    def vector(name: str, n: int) -> None:
        v = (rng.random(n) * 0.5 + 0.75).astype(np.float32).tobytes()
        native.append(B.Tensor(name, (n,), 0, v))
        dense.append(B.Tensor(name, (n,), 0, v))

    add("token_embd.weight", *MATRICES["token_embd.weight"])
    vector("output_norm.weight", SHAPE["n_embd"])
    for i in range(SHAPE["n_layer"]):
        vector(f"blk.{i}.attn_norm.weight", SHAPE["n_embd"])
        vector(f"blk.{i}.ffn_norm.weight", SHAPE["n_embd"])
        for name, (rows, cols, qtype) in MATRICES.items():
            if name != "token_embd.weight":
                add(f"blk.{i}.{name}", rows, cols, qtype)
    kvs = M._kvs(SHAPE, None)
    paths = folder / "kquants.gguf", folder / "dense.gguf"
    B.build(kvs, native).write(paths[0])
    B.build(kvs, dense).write(paths[1])
    return paths


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    caches = allocate_kv_caches(cfg.n_layer, 4, 16, cfg.n_kv_head, cfg.head_dim, torch.float32)
    meta = build_metadata([0], [len(ids)], [[0, 1, 2, 3]], 16)
    with torch.inference_mode():
        return model(ids, meta, caches, torch.arange(len(ids)))


def linears(module) -> list[Linear]:
    out = []
    for m in module.modules():
        if isinstance(m, Linear):
            out.append(m)
    return out


def test_native_k_quants_match_the_dequantized_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PYLLM_NATIVE_KQUANTS", raising=False)
    kq_path, dense_path = write_pair(tmp_path)
    kq = load_model(kq_path).model
    assert "converting" not in capsys.readouterr().err  # nothing converted at load
    kinds = {m.weight.qtype for m in linears(kq.gpt)}
    assert {"q4_k", "q5_k", "q6_k", "q5_0", "q5_1"} <= kinds
    assert kq.gpt.wte.weight.qtype == "q6_k"  # the runner's embedding rows decode Q6_K
    assert any(isinstance(m, ConcatLinear) for m in kq.gpt.modules())  # Q4_K q/k with a Q6_K v
    dense = load_model(dense_path).model
    ids = torch.randint(0, SHAPE["vocab"], (12,), generator=torch.Generator().manual_seed(2))
    want = logits(dense, ids)
    assert torch.isfinite(want).all() and want.std() > 1e-3
    tol = dict(rtol=1e-4, atol=1e-4 * want.abs().max().item())
    got = logits(kq, ids)
    assert kq._fast, "the fused CPU runner took the model"
    torch.testing.assert_close(got, want, **tol)
    kq.fast_path = False  # op by op: the same logits
    torch.testing.assert_close(logits(kq, ids), want, **tol)
    kq.fast_path = True
    kq.int8_activations = True  # int8 activations: close, not equal
    approx = logits(kq, ids)
    rel = ((approx - want).norm() / want.norm()).item()
    assert 0 < rel < 0.05
    assert capsys.readouterr().err == ""


def test_cpu_only_blocks_become_q8_0_off_the_cpu(capsys, monkeypatch):
    monkeypatch.setattr(layers, "_told_off_cpu", False)  # the notice is once a process
    rng = np.random.default_rng(4)
    raw = torch.from_numpy(random_blocks(rng, "q4_k", 8, 512))
    layer = Linear(QWeight(raw, "q4_k", 8, 512))
    layer.to("cpu")
    assert layer.weight.qtype == "q4_k" and layer.weight.data is raw  # the CPU computes on it
    layer.to("meta")  # any other device: the kernels there take q4_0/q4_1/q8_0
    w = layer.weight
    assert (w.qtype, w.data.device.type, tuple(w.data.shape)) == ("q8_0", "meta", (8, 16 * 34))
    assert "q4_k weights are converted to q8_0 for meta" in capsys.readouterr().err
