"""Run GGUF cases in a process whose address space is capped, each under a wall-clock alarm.

    python tests/bounded_runner.py CASES.json MEMORY_BYTES SECONDS

CASES.json is a list of {"kind": "model" | "template", "path": ...}. A "model" case loads the
file as a model (pyllm.model.loader.load_model); a "template" case reads its metadata, builds
the chat template the way pyllm.load does and renders one conversation. Prints one JSON line per
case: {"path", "outcome": "ok" | "refused" | "failed", "seconds", "detail"}, where "refused"
is the documented error (ModelFormatError, ChatTemplateError) and "failed" anything else,
including going past the alarm. The address-space limit makes a case that needs more memory
fail with an allocation error instead of swapping the machine.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time


class CaseTimeout(BaseException):  # not an Exception: the code under test cannot swallow it
    pass


def _alarm(signum, frame):
    raise CaseTimeout


def run_case(case: dict) -> tuple[str, str]:
    from pyllm.chat import ChatTemplate, ChatTemplateError
    from pyllm.errors import ModelFormatError

    if case["kind"] == "model":
        from pyllm.model.loader import load_model

        try:
            m = load_model(case["path"])
        except ModelFormatError as e:
            return "refused", str(e)[:200]
        return "ok", f"context {m.config.max_position} of {m.config.trained_context}"
    from pyllm.weights.gguf import load_gguf

    try:
        md = load_gguf(case["path"]).metadata
    except ModelFormatError as e:
        return "refused", str(e)[:200]
    template = ChatTemplate.from_gguf_metadata(md)
    if "max_seconds" in case:
        template.max_seconds = case["max_seconds"]
    try:
        out = template.render([{"role": "user", "content": "hi"}])
    except ChatTemplateError as e:
        return "refused", str(e)[:200]
    return "ok", f"{len(out)} characters"


def main() -> None:
    cases_file, memory, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    import pyllm.model.loader  # noqa: F401  (imports are not part of any case's time)

    signal.signal(signal.SIGALRM, _alarm)
    with open(cases_file) as fh:
        cases = json.load(fh)
    for case in cases:
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            outcome, detail = run_case(case)
        except CaseTimeout:
            outcome, detail = "failed", f"took longer than {seconds} s"
        except Exception as e:  # noqa: BLE001 - reported, the test fails on it
            outcome, detail = "failed", f"{type(e).__name__}: {str(e)[:200]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print(json.dumps({"path": case["path"], "outcome": outcome, "detail": detail,
                          "seconds": round(time.perf_counter() - start, 3)}), flush=True)


if __name__ == "__main__":
    main()
