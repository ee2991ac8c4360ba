"""Byte-level BPE tokenizers (GPT-2 style) on the `tokenizers` library: from a GGUF vocabulary
(``tokenizer.ggml.model = gpt2``) or from a Hugging Face ``tokenizer.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer
from tokenizers import decoders as tk_decoders
from tokenizers import models as tk_models

from pyllm.errors import ModelFormatError

from .base import BaseTokenizer
from .bytelevel import piece_to_bytes
from .gguf_vocab import CONTROL, UNKNOWN, USER_DEFINED, check_merges_in_vocab, read_vocab
from .pretokenizers import pre_tokenizer_for


class TokenizersBPE(BaseTokenizer):
    """Encoding by a `tokenizers.Tokenizer`; decoding by the shared byte table.

    The backend never matches special (control) tokens in text (``encode_special_tokens``), so
    ``"<|im_end|>"`` typed by a user is split into ordinary tokens; with ``parse_special=True``
    the text is first cut at special-token strings and each piece encoded on its own (as
    llama.cpp does). User-defined tokens are matched in both cases, as in llama.cpp.
    """

    kind = "gpt2"

    def __init__(self, backend: Tokenizer, *, unknown_id: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backend.encode_special_tokens = True
        self._backend = backend
        self._unknown_id = unknown_id

    @property
    def lost_text_fate(self) -> str:  # type: ignore[override]  # property over a class attribute
        if self._unknown_id is not None:
            return "dropped, as llama.cpp drops them (the vocabulary has no token for a byte)"
        return "encoded as the unknown token"

    def _encode_text(self, text: str) -> list[int]:
        return self._encode_piece(text)[0]

    def _encode_piece(self, text: str) -> tuple[list[int], bool]:
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if self._unknown_id is not None and self._unknown_id in ids:
            return [i for i in ids if i != self._unknown_id], True
        return ids, self.unk_id is not None and self.unk_id in ids


def from_gguf(metadata: Mapping[str, Any], path: Path | None = None) -> TokenizersBPE:
    """The ``gpt2`` tokenizer: byte-level BPE from ``tokenizer.ggml.{tokens,merges,token_type}``
    with the pre-tokenizer named by ``tokenizer.ggml.pre``."""
    vocab = read_vocab(metadata, expect_model="gpt2")
    if vocab.merges is None:
        raise ModelFormatError("tokenizer.ggml.merges: missing (a gpt2 vocabulary needs merges)")
    pre, ignore_merges = pre_tokenizer_for(vocab.pre)

    token_to_id: dict[str, int] = {}
    for i, tok in enumerate(vocab.tokens):
        token_to_id.setdefault(tok, i)  # a duplicated string keeps its first id
    check_merges_in_vocab(vocab, token_to_id)

    # A byte with no token of its own (SmolLM2 has none for six control characters, e.g. 0x16)
    # is dropped, as llama.cpp drops it, but only after merging: it still stands between its
    # neighbours ("/\x16/" is "/" "/", not "//"). The `tokenizers` BPE would skip it before
    # merging; as its unknown token, an id past the vocabulary that encoding removes, it stays.
    unknown_id = len(vocab.tokens)
    backend = Tokenizer(
        tk_models.BPE(
            vocab={**token_to_id, _UNKNOWN_BYTE: unknown_id},
            merges=vocab.merges,
            ignore_merges=ignore_merges,
            unk_token=_UNKNOWN_BYTE,
        )
    )
    backend.pre_tokenizer = pre
    backend.decoder = tk_decoders.ByteLevel()  # unused by us; makes backend.to_str() complete
    special_ids = [i for i, t in enumerate(vocab.token_types) if t in (CONTROL, UNKNOWN)]
    for end_id in (vocab.bos_id, vocab.eos_id):
        if (
            end_id is not None
            and end_id not in special_ids
            and vocab.token_types[end_id] != USER_DEFINED
        ):
            special_ids.append(end_id)
    user_ids = [i for i, t in enumerate(vocab.token_types) if t == USER_DEFINED]
    _add_tokens(backend, vocab.tokens, special_ids, user_ids)

    def token_bytes() -> list[bytes]:  # built on first decode (see base.py)
        return [
            tok.encode("utf-8") if t in (CONTROL, USER_DEFINED, UNKNOWN) else piece_to_bytes(tok)
            for tok, t in zip(vocab.tokens, vocab.token_types)
        ]

    return TokenizersBPE(
        backend,
        unknown_id=unknown_id,
        pieces=vocab.tokens,
        token_bytes=token_bytes,
        special_ids=special_ids,
        bos_id=vocab.bos_id,
        eos_id=vocab.eos_id,
        unk_id=vocab.unk_id,
        pad_id=vocab.pad_id,
        extra_eos_ids=vocab.eot_ids,
        add_bos=bool(vocab.add_bos),  # byte-level BPE models add no BOS unless they say so
    )


_UNKNOWN_BYTE = "\u0000<pyllm: a byte with no token>"


def _add_tokens(
    backend: Tokenizer, tokens: list[str], special_ids: list[int], user_ids: list[int]
) -> None:
    if special_ids:
        backend.add_special_tokens(
            [AddedToken(tokens[i], special=True, normalized=False) for i in special_ids]
        )
    if user_ids:
        backend.add_tokens(
            [AddedToken(tokens[i], special=False, normalized=False) for i in user_ids]
        )


# --------------------------------------------------------------------------------------------
# tokenizer.json
# --------------------------------------------------------------------------------------------


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _decoder_style(spec: Mapping[str, Any] | None) -> str:
    """How pieces map to bytes: 'bytelevel' (GPT-2 alphabet), 'metaspace' (▁ + <0xXX> byte
    fallback, SentencePiece-like), or 'generic' (ask the tokenizer to decode each token)."""
    if not spec:
        return "generic"
    kinds = {spec.get("type")}
    for sub in spec.get("decoders") or ():
        if isinstance(sub, Mapping):
            kinds.add(sub.get("type"))
    if "ByteLevel" in kinds:
        return "bytelevel"
    if kinds & {"Metaspace", "ByteFallback", "Replace"}:
        return "metaspace"
    return "generic"


def _metaspace_bytes(piece: str) -> bytes:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode("utf-8")


def from_tokenizer_json(metadata: Mapping[str, Any], path: Path | None) -> TokenizersBPE:
    """The ``hf-json`` tokenizer: a Hugging Face ``tokenizer.json`` at ``path`` (a file, or a
    folder holding one). BOS/EOS come from ``metadata`` (GGUF-style ``tokenizer.ggml.*_id`` keys
    or tokenizer_config.json-style ``bos_token``/``eos_token``/``add_bos_token``), else from a
    ``tokenizer_config.json`` beside the file."""
    if path is None:
        raise ModelFormatError("hf-json tokenizer: no tokenizer.json path given")
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: tokenizer file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: cannot read tokenizer file ({e})") from None
    try:
        spec = json.loads(text)
        backend = Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 - json and tokenizers raise various types
        raise ModelFormatError(
            f"{path}: not a valid tokenizer.json ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(spec, dict):
        raise ModelFormatError(f"{path}: not a valid tokenizer.json (top level is not an object)")

    config: dict[str, Any] = dict(metadata)
    if not any(k in config for k in ("bos_token", "eos_token", "tokenizer.ggml.eos_token_id")):
        cfg_path = path.with_name("tokenizer_config.json")
        if cfg_path.is_file():
            try:
                config.update(json.loads(cfg_path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as e:
                raise ModelFormatError(f"{cfg_path}: not valid JSON ({e})") from None

    n = backend.get_vocab_size(with_added_tokens=True)
    pieces: list[str] = []
    for i in range(n):
        piece = backend.id_to_token(i)
        if piece is None:
            raise ModelFormatError(f"{path}: token id {i} is missing (ids must be 0..{n - 1})")
        pieces.append(piece)

    added = {int(t["id"]): t for t in spec.get("added_tokens") or () if "id" in t}
    special_ids = [i for i, t in added.items() if t.get("special")]
    style = _decoder_style(spec.get("decoder"))
    token_bytes: list[bytes] = []
    for i, piece in enumerate(pieces):
        if i in added:
            token_bytes.append(piece.encode("utf-8"))
        elif style == "bytelevel":
            token_bytes.append(piece_to_bytes(piece))
        elif style == "metaspace":
            token_bytes.append(_metaspace_bytes(piece))
        else:
            token_bytes.append(backend.decode([i], skip_special_tokens=False).encode("utf-8"))

    def find_id(gguf_key: str, config_key: str) -> int | None:
        if config.get(gguf_key) is not None:
            i = int(config[gguf_key])
            if not 0 <= i < n:
                raise ModelFormatError(f"{gguf_key}: token id {i} is outside the vocabulary")
            return i
        content = _token_content(config.get(config_key))
        if content is None:
            return None
        found = backend.token_to_id(content)
        if found is None:
            raise ModelFormatError(f"{path}: {config_key} {content!r} is not in the vocabulary")
        return found

    bos_id = find_id("tokenizer.ggml.bos_token_id", "bos_token")
    eos_id = find_id("tokenizer.ggml.eos_token_id", "eos_token")
    unk_id = find_id("tokenizer.ggml.unknown_token_id", "unk_token")
    pad_id = find_id("tokenizer.ggml.padding_token_id", "pad_token")
    add_bos = config.get("tokenizer.ggml.add_bos_token", config.get("add_bos_token"))
    if add_bos is None:
        add_bos = _post_processor_adds_bos(spec.get("post_processor"), pieces, bos_id)

    tok = TokenizersBPE(
        backend,
        pieces=pieces,
        token_bytes=token_bytes,
        special_ids=special_ids,
        bos_id=bos_id,
        eos_id=eos_id,
        unk_id=unk_id,
        pad_id=pad_id,
        add_bos=bool(add_bos) and bos_id is not None,
        strip_leading_space=_decoder_strips_leading_space(spec.get("decoder")),
    )
    tok.kind = "hf-json"
    return tok


def _post_processor_adds_bos(spec: Any, pieces: list[str], bos_id: int | None) -> bool:
    """Whether a TemplateProcessing post-processor starts single sequences with BOS."""
    if bos_id is None or not isinstance(spec, Mapping):
        return False
    procs = [spec] + [p for p in spec.get("processors") or () if isinstance(p, Mapping)]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            if single and isinstance(single[0], Mapping):
                first = single[0].get("SpecialToken", {}).get("id")
                return first == pieces[bos_id]
    return False


def _decoder_strips_leading_space(spec: Any) -> bool:
    """Whether the tokenizer.json decoder drops the space a SentencePiece-style normalizer
    prepended (a ``Strip`` of one leading space, or a ``Metaspace`` that prepends)."""
    if not isinstance(spec, Mapping):
        return False
    for d in [spec, *(spec.get("decoders") or ())]:
        if not isinstance(d, Mapping):
            continue
        if d.get("type") == "Strip" and d.get("content") == " " and int(d.get("start", 0)) > 0:
            return True
        if d.get("type") == "Metaspace" and (
            d.get("prepend_scheme") in ("always", "first") or d.get("add_prefix_space")
        ):
            return True
    return False
