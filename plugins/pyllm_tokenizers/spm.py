"""SentencePiece tokenizers: from a ``.model`` file, or from a GGUF ``llama`` vocabulary.

For a GGUF vocabulary (pieces, scores, token types) we rebuild a SentencePiece ``ModelProto`` and
let the `sentencepiece` library tokenize with it, rather than re-deriving BPE merges from the
scores for the `tokenizers` library: Llama-family GGUF vocabularies are SentencePiece BPE models
converted field by field, so the rebuilt model runs the very algorithm the vocabulary was trained
with (highest-score pair first, byte fallback for unknown characters, the dummy space prefix), and
there is no approximate score-to-merge-rank conversion to get wrong. The cost is the `protobuf`
package, imported only when such a model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyllm.errors import ModelFormatError

from .base import BaseTokenizer
from .gguf_vocab import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, read_vocab

TRAINER_MODEL_BPE = 2  # sentencepiece TrainerSpec.ModelType.BPE


def _model_proto() -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb2
    except ImportError as e:  # protobuf missing
        raise ModelFormatError(
            f"SentencePiece models need the 'protobuf' package ({e}); pip install protobuf"
        ) from None
    return pb2.ModelProto()  # type: ignore[attr-defined]  # protobuf-generated: no stubs


def _piece_bytes(piece: str, kind: int) -> bytes:
    if kind == BYTE:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        return piece.encode("utf-8")
    if kind == NORMAL:
        return piece.replace("\u2581", " ").encode("utf-8")
    return piece.encode("utf-8")


class SentencePieceTokenizer(BaseTokenizer):
    """Encoding by `sentencepiece`; decoding by the shared byte table (``▁`` is a space,
    ``<0xXX>`` pieces are single bytes)."""

    kind = "sentencepiece"

    def __init__(self, processor: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sp = processor

    def _encode_text(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)


def _from_proto(
    proto: Any, source: str, metadata: Mapping[str, Any], *, default_add_bos: bool, kind: str
) -> SentencePieceTokenizer:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto.SerializeToString())
    except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError variants
        raise ModelFormatError(f"{source}: sentencepiece rejected the model ({e})") from None
    pieces = [p.piece for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]

    def known(i: int | None) -> int | None:
        return i if i is not None and 0 <= i < len(pieces) else None

    bos = known(metadata.get("tokenizer.ggml.bos_token_id", sp.bos_id()))
    eos = known(metadata.get("tokenizer.ggml.eos_token_id", sp.eos_id()))
    unk = known(metadata.get("tokenizer.ggml.unknown_token_id", sp.unk_id()))
    pad = known(metadata.get("tokenizer.ggml.padding_token_id", sp.pad_id()))
    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    add_bos = default_add_bos if add_bos is None else bool(add_bos)
    special = [i for i, t in enumerate(types) if t in (CONTROL, UNKNOWN)]
    tok = SentencePieceTokenizer(
        sp,
        pieces=pieces,
        token_bytes=[_piece_bytes(p, t) for p, t in zip(pieces, types)],
        special_ids=special,
        bos_id=bos,
        eos_id=eos,
        unk_id=unk,
        pad_id=pad,
        add_bos=add_bos and bos is not None,
        strip_leading_space=bool(proto.normalizer_spec.add_dummy_prefix),
    )
    tok.kind = kind
    return tok


def from_model_file(metadata: Mapping[str, Any], path: Path | None) -> SentencePieceTokenizer:
    """The ``sentencepiece`` tokenizer: a SentencePiece ``.model`` file at ``path``."""
    if path is None:
        raise ModelFormatError("sentencepiece tokenizer: no .model path given")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: tokenizer file not found") from None
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read tokenizer file ({e})") from None
    proto = _model_proto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelFormatError(f"{path}: not a SentencePiece model ({type(e).__name__})") from None
    if not proto.pieces:
        raise ModelFormatError(f"{path}: not a SentencePiece model (no pieces)")
    return _from_proto(proto, str(path), metadata, default_add_bos=True, kind="sentencepiece")


def from_gguf(metadata: Mapping[str, Any], path: Path | None = None) -> SentencePieceTokenizer:
    """The ``llama`` tokenizer: SentencePiece BPE from ``tokenizer.ggml.{tokens,scores,
    token_type}`` (byte fallback when the vocabulary has ``<0xXX>`` byte tokens)."""
    vocab = read_vocab(metadata, expect_model="llama")
    if vocab.scores is None:
        raise ModelFormatError("tokenizer.ggml.scores: missing (a llama vocabulary needs scores)")
    types = list(vocab.token_types)
    if vocab.unk_id is not None and types[vocab.unk_id] == NORMAL:
        types[vocab.unk_id] = UNKNOWN
    if UNKNOWN not in types:
        raise ModelFormatError(
            "tokenizer.ggml.token_type: no unknown token (SentencePiece needs exactly one; "
            "set tokenizer.ggml.unknown_token_id)"
        )
    if types.count(UNKNOWN) > 1:
        raise ModelFormatError("tokenizer.ggml.token_type: more than one unknown token")
    seen: dict[str, int] = {}
    for i, piece in enumerate(vocab.tokens):
        if not piece:
            raise ModelFormatError(f"tokenizer.ggml.tokens[{i}]: empty token")
        if piece in seen:
            raise ModelFormatError(
                f"tokenizer.ggml.tokens[{i}]: {piece!r} repeats token {seen[piece]}"
            )
        seen[piece] = i

    proto = _model_proto()
    for piece, score, t in zip(vocab.tokens, vocab.scores, types):
        p = proto.pieces.add()
        p.piece = piece
        p.score = score
        p.type = t if t in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
    spec = proto.trainer_spec
    spec.model_type = TRAINER_MODEL_BPE
    spec.vocab_size = len(vocab.tokens)
    spec.byte_fallback = BYTE in types
    spec.unk_id = types.index(UNKNOWN)
    spec.bos_id = vocab.bos_id if vocab.bos_id is not None else -1
    spec.eos_id = vocab.eos_id if vocab.eos_id is not None else -1
    spec.pad_id = vocab.pad_id if vocab.pad_id is not None else -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True if vocab.add_space_prefix is None else vocab.add_space_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    tok = _from_proto(
        proto, "tokenizer.ggml.tokens", _ids_only(metadata), default_add_bos=True, kind="llama"
    )
    extra = set(tok.eos_ids) | set(vocab.eot_ids)
    tok.eos_ids = frozenset(extra)
    return tok


def _ids_only(metadata: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "add_bos_token")
    out = {}
    for k in keys:
        v = metadata.get("tokenizer.ggml." + k)
        if v is not None:
            out["tokenizer.ggml." + k] = bool(v) if k == "add_bos_token" else int(v)
    return out
