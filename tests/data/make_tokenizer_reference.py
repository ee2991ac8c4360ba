"""Record llama.cpp's token ids for the tokenizer parity corpus.

    python tests/data/make_tokenizer_reference.py [MODEL.gguf]

writes tests/data/smollm2_tokenizer_reference.json: the corpus texts and, for each, the ids that
llama.cpp (through llama-cpp-python) gives with ``add_bos=False, special=False``. The parity test
(tests/test_tokenizers.py) compares pyllm against llama.cpp live when llama-cpp-python is
installed and against this recording otherwise (CI cannot afford to compile llama.cpp).
The ids in the JSON come from llama.cpp, never from pyllm and never by hand.

Without MODEL the default model is pulled through pyllm (pyllm.weights.pull).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "smollm2_tokenizer_reference.json"

# English, Chinese, Arabic, code, emoji with ZWJ, whitespace runs, digits, special-token strings.
CORPUS: list[str] = [
    "",
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine, but we've seen what you'd do. DON'T, WE'LL, I'D.",
    "naïve café, résumé, Straße, Ångström, coöperate",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "機械学習は楽しいです。カタカナとひらがな。",
    "안녕하세요, 세계!",
    "مرحبا بالعالم! كيف حالك اليوم؟",
    "Привет, мир! Как дела?",
    "नमस्ते दुनिया",
    "Γειά σου Κόσμε",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🧑‍💻 coder, ❤️‍🔥",
    "😀😃😄😁 emoji run🎉🎉",
    "a    b\t\t c\n\n\n  d   ",
    "   leading spaces",
    "trailing spaces   ",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    "line one\r\nline two\r\n",
    "   3.",
    "12345",
    "3.14159 and 2.71828",
    "1,000,000 people in 2024-11-22 at 10:30",
    "x² + y³ = z⁴, ½ + ¼",
    "٣٤٥ and ١٢",
    "version 1.2.3-rc4",
    "<|im_start|>user\nHello<|im_end|>",
    "<|endoftext|> and <file_sep> are text here",
    "Mixed: Hello世界123abc😀!?",
    "zero\u200bwidth\u200djoiner and combining e\u0301",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "!!!??? ... --- *** ~~~ ```python\nprint('x')\n```",
    "The year was 1999. Prices: $12.50, €7, £3.99, ¥1000.",
    "https://example.com/path?query=1&other=two#frag",
    "email: someone@example.org, phone +1 (555) 123-4567",
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
]


# Texts tokenized with special=True (special-token strings become their ids).
SPECIAL_CORPUS: list[str] = [
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<file_sep>more<|im_end|><|im_end|>",
    "no specials here 123",
]

# Other byte-level BPE families' pre-tokenizers, checked on the same vocabulary: a copy of the
# model's metadata (no tensors) with tokenizer.ggml.pre replaced. The ids differ from the real
# families' (the vocabulary is SmolLM2's) but the word splitting is theirs.
PRE_VARIANTS = ["default", "gpt-2", "llama-bpe", "qwen2"]


def llama_cpp_ids(model: Path, texts: list[str], *, special: bool = False) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    return [
        [int(i) for i in llm.tokenize(t.encode("utf-8"), add_bos=False, special=special)]
        for t in texts
    ]


def write_variant(src: Path, dst: Path, pre: str) -> None:
    """Copy src's metadata (not its tensors) to dst with tokenizer.ggml.pre = pre."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = GGUFWriter(dst, arch=arch)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = f.types[0]
        if key == "tokenizer.ggml.pre":
            writer.add_string(key, pre)
        elif kind == GGUFValueType.ARRAY and f.types[1] == GGUFValueType.STRING:
            writer.add_array(key, [bytes(f.parts[i]).decode() for i in f.data])
        elif kind == GGUFValueType.ARRAY:
            writer.add_array(key, [f.parts[i][0].item() for i in f.data])
        elif kind == GGUFValueType.STRING:
            writer.add_string(key, bytes(f.parts[-1]).decode())
        else:
            writer.add_key_value(key, f.parts[-1][0].item(), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def record(model: Path) -> dict:
    import llama_cpp

    cases = [{"text": t, "ids": ids} for t, ids in zip(CORPUS, llama_cpp_ids(model, CORPUS))]
    special_ids = llama_cpp_ids(model, SPECIAL_CORPUS, special=True)
    special_cases = [{"text": t, "ids": ids} for t, ids in zip(SPECIAL_CORPUS, special_ids)]
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_VARIANTS:
            dst = Path(tmp) / f"{pre}.gguf"
            write_variant(model, dst, pre)
            variants[pre] = llama_cpp_ids(dst, CORPUS)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    return {
        "model": model.name,
        "model_sha256": digest,
        "reference": f"llama-cpp-python {llama_cpp.__version__}: "
                     "Llama(vocab_only=True).tokenize(text, add_bos=False, special=False)",
        "cases": cases,
        "special_cases": special_cases,
        "pre_variants": variants,
    }


def main() -> None:
    if len(sys.argv) > 1:
        model = Path(sys.argv[1])
    else:
        from pyllm.weights.pull import ensure_default_model

        model = ensure_default_model(progress=True)
    data = record(model)
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(data['cases'])} cases)")


if __name__ == "__main__":
    main()
