"""REPL commands for the tasks: /classify, /qa, /translate (registered by the plugin).

Each parses its line, runs the adapter on the session's model (``session.llm``) and prints the
result; a mistake in the line prints a usage message, never a traceback.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

CLASSIFY_HELP = (
    "Classify TEXT: /classify LABEL1,LABEL2,... TEXT (quote labels with spaces; "
    "--no-calibrate, --multi-label)."
)
QA_HELP = (
    "Answer a question: /qa [--extractive] @FILE QUESTION (context from FILE) or "
    "/qa [--extractive] QUESTION (context: the last reply)."
)
TRANSLATE_HELP = "Translate TEXT: /translate [FROM:]TO TEXT, e.g. /translate en:fr Good morning."


def _llm(session: Any) -> Any:
    llm = session.llm
    if llm is None:
        session.error("this command needs a loaded model")
    return llm


def _flags(words: list[str], known: tuple[str, ...]) -> tuple[set[str], list[str]]:
    flags = set()
    while words and words[0] in known:
        flags.add(words.pop(0))
    return flags, words


def _task(name: str) -> Any:
    from pyllm.tasks import get

    return get(name)


def classify(session: Any, arg: str) -> None:
    try:
        words = shlex.split(arg)
    except ValueError as e:
        session.error(f"/classify: {e}")
        return
    flags, words = _flags(words, ("--no-calibrate", "--multi-label"))
    if len(words) < 2:
        session.error("usage: /classify LABEL1,LABEL2,... TEXT")
        return
    llm = _llm(session)
    if llm is None:
        return
    labels, text = words[0], " ".join(words[1:])
    try:
        res = _task("classify").run(
            llm,
            [{"text": text}],
            labels=labels,
            calibrate="--no-calibrate" not in flags,
            multi_label="--multi-label" in flags,
        )[0]
    except ValueError as e:
        session.error(f"/classify: {e}")
        return
    chosen = ", ".join(res["labels"]) if "labels" in res else res["label"]
    session.echo(f"{chosen or '(no label)'}")
    for label, p in sorted(res["scores"].items(), key=lambda kv: -kv[1]):
        session.echo(f"  {label:<20} {p:.3f}")


def _last_reply(session: Any) -> str | None:
    for m in reversed(session.conversation.messages):
        if m.get("role") == "assistant" and m.get("content"):
            return m["content"]
    return None


def qa(session: Any, arg: str) -> None:
    words = arg.split()
    flags, words = _flags(words, ("--extractive", "-x"))
    context = None
    if words and words[0].startswith("@"):
        path = Path(words.pop(0)[1:]).expanduser()
        try:
            context = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            session.error(f"/qa: cannot read {path}: {getattr(e, 'strerror', None) or e}")
            return
    question = " ".join(words)
    if not question:
        session.error(f"usage: {QA_HELP}")
        return
    if context is None:
        context = _last_reply(session)
        if context is None:
            session.error("/qa: no context: give @FILE, or ask after a reply")
            return
    llm = _llm(session)
    if llm is None:
        return
    try:
        res = _task("qa").run(
            llm, [{"context": context, "question": question}], extractive=bool(flags)
        )[0]
    except ValueError as e:
        session.error(f"/qa: {e}")
        return
    session.echo(res["answer"] or "(no answer)")
    if "start" in res:
        session.notice(f"characters {res['start']}-{res['end']} of the context")


def translate(session: Any, arg: str) -> None:
    langs, _, text = arg.strip().partition(" ")
    if not langs or not text.strip():
        session.error(f"usage: {TRANSLATE_HELP}")
        return
    src, _, tgt = langs.rpartition(":")
    llm = _llm(session)
    if llm is None:
        return
    try:
        res = _task("translate").run(llm, [{"text": text.strip()}], src=src or None, tgt=tgt)[0]
    except ValueError as e:
        session.error(f"/translate: {e}")
        return
    session.echo(res["translation"])
