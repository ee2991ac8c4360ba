"""What `pyllm generate` runs: a JSONL file of generation records through the engine, on the
file rules of pyllm/jobs.py (ids and keys, resume, error lines, retrying errors).

A record is pyllm's own or a request in OpenAI's batch format (pyllm/openai_batch.py). Its own::

    {"id": "a", "prompt": "text"}    or    {"id": "b", "messages": [{"role": ..., "content": ...}]}

Sampling fields (any `SamplingParams` name) sit at the top level or under ``"params"`` (not both
for one name; unknown names under ``"params"`` are refused). Every other field (``"metadata"``,
anything else) is carried to the output line untouched, except the names that line uses itself
(``text``, ``token_ids``, ``finish_reason``, ``usage``, ``outputs``, ``line``, ``error``), which are
refused. Output::

    {"id", ...carried fields, "text", "token_ids", "finish_reason", "usage"}  (n > 1: + "outputs")
    {"id", "line", ...carried fields, "error": {"type", "message"}}           (a failed record)
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyllm import openai_batch
from pyllm.jobs import (
    BadRecord,
    JsonlWriter,
    check_job_files,
    json_type,
    prepare_output,
    read_objects,
    readable_input,
)

log = logging.getLogger("pyllm")

ID_FIELDS = ("id", "custom_id")
PROMPT_FIELDS = ("prompt", "messages")
PARAMS_FIELD = "params"
_RECORD_FIELDS = frozenset({"id", PARAMS_FIELD, *PROMPT_FIELDS})  # read, not carried
OUTPUT_FIELDS = {
    "id",
    "line",
    "error",
    "text",
    "token_ids",
    "finish_reason",
    "usage",
    "outputs",
    "custom_id",
    "response",
    "incomplete",
}


@dataclass
class JobRecord:
    """One input record with a usable id. `problem` is ``(error type, message)`` when it cannot
    run; `style` is ``"pyllm"`` or ``"openai"`` (which output format answers it)."""

    key: str
    line: int
    prompt: Any = None  # str or a list of messages
    overrides: dict[str, Any] = field(default_factory=dict)
    carried: dict[str, Any] = field(default_factory=dict)
    style: str = "pyllm"
    endpoint: str = "chat"  # OpenAI requests: "chat" or "completions"
    problem: tuple[str, str] | None = None

    def failure(self, error_type: str, message: str) -> dict[str, Any]:
        """The output line saying this record failed."""
        if self.style == "openai":
            return openai_batch.failure_line(self.key, error_type, message, self.carried)
        return {
            "id": self.key,
            "line": self.line,
            **self.carried,
            "error": {"type": error_type, "message": message},
        }

    def result(self, model: str, prompt_ids: list[int], completions: list[Any]) -> dict[str, Any]:
        """The output line of this record's completions."""
        if self.style == "openai":
            return openai_batch.response_line(
                self.key, self.endpoint, model, len(prompt_ids), completions, self.carried
            )
        first = completions[0]
        line: dict[str, Any] = {
            "id": self.key,
            **self.carried,
            "text": first.text,
            "token_ids": first.token_ids,
            "finish_reason": first.finish_reason,
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": sum(len(c.token_ids) for c in completions),
            },
        }
        if getattr(first, "incomplete", False):  # a constrained output cut before it was done
            line["incomplete"] = True
        if first.logprobs is not None:  # asked for with "logprobs": N
            from pyllm.completion_json import logprobs_json

            line["logprobs"] = logprobs_json(first.logprobs)
        if len(completions) > 1:
            line["outputs"] = [
                {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}
                for c in completions
            ]
        return line


def read_records(path: Path) -> Iterator[JobRecord | BadRecord]:
    """Every input line's record: a JobRecord (`problem` set when it cannot run) for a record
    with a usable id, a BadRecord (keyed by its line) for a line without one. Never raises for a
    bad line."""
    from pyllm.sampling_params import SamplingParams

    sampling = frozenset(SamplingParams.field_names())
    for item in read_objects(path, ID_FIELDS):
        if isinstance(item, BadRecord):
            yield item
            continue
        line_no, rid, obj = item
        if openai_batch.is_request(obj):
            yield _openai_record(rid, line_no, obj)
        else:
            yield _pyllm_record(rid, line_no, obj, sampling)


def _pyllm_record(
    rid: str, line_no: int, obj: dict[str, Any], sampling: frozenset[str]
) -> JobRecord:
    rec = JobRecord(rid, line_no)
    rec.carried = {k: v for k, v in obj.items() if k not in _RECORD_FIELDS and k not in sampling}
    top = {k: v for k, v in obj.items() if k in sampling}
    params = obj.get(PARAMS_FIELD)
    params = {} if params is None else params
    clash = sorted(set(rec.carried) & OUTPUT_FIELDS)
    twice = sorted(set(top) & set(params)) if isinstance(params, dict) else []
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if clash:
        rec.carried = {k: v for k, v in rec.carried.items() if k not in OUTPUT_FIELDS}
        why = (
            '"custom_id" belongs to OpenAI\'s batch format, which has no "id"'
            if clash[0] == "custom_id"
            else f"the output line uses {clash[0]!r} itself"
        )
        rec.problem = (
            "invalid_record",
            (
                f"record {rid!r}: field {clash[0]!r} cannot be carried to "
                f'the output: {why} (put it under "metadata")'
            ),
        )
    elif not isinstance(params, dict):
        rec.problem = (
            "invalid_record",
            (
                f'record {rid!r}: "params" must be an object of sampling '
                f"fields, got {json_type(params)}"
            ),
        )
    elif twice:
        rec.problem = (
            "invalid_record",
            (f'record {rid!r}: {twice[0]!r} is given both at the top level and under "params"'),
        )
    elif has_prompt == has_messages:
        rec.problem = (
            "invalid_record",
            f'record {rid!r}: give exactly one of "prompt" or "messages"',
        )
    else:
        rec.prompt = obj["prompt"] if has_prompt else obj["messages"]
        rec.overrides = {**top, **params}
        problem = check_prompt(rec.prompt, has_prompt)
        if problem:
            rec.problem = ("invalid_record", f"record {rid!r}: {problem}")
    return rec


def _openai_record(rid: str, line_no: int, obj: dict[str, Any]) -> JobRecord:
    carried = {k: v for k, v in obj.items() if k not in openai_batch.REQUEST_FIELDS}
    rec = JobRecord(
        rid,
        line_no,
        style="openai",
        carried={k: v for k, v in carried.items() if k not in openai_batch.OUTPUT_FIELDS},
    )
    clash = sorted(set(carried) & openai_batch.OUTPUT_FIELDS)
    if clash:
        rec.problem = (
            "invalid_record",
            (
                f"request {rid!r}: field {clash[0]!r} cannot be carried to "
                f"the output, which uses it itself"
            ),
        )
        return rec
    try:
        rec.endpoint, rec.prompt, rec.overrides = openai_batch.parse_request(obj)
    except ValueError as exc:
        rec.problem = ("invalid_record", f"request {rid!r}: {exc}")
    return rec


def check_prompt(prompt: Any, is_text: bool) -> str | None:
    """What is wrong with a record's "prompt" (`is_text`) or "messages", or None."""
    if is_text:
        return None if isinstance(prompt, str) else '"prompt" must be a string'
    if not isinstance(prompt, list) or not prompt:
        return '"messages" must be a non-empty list'
    for i, m in enumerate(prompt):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            return f'messages[{i}] must be an object with string "role" and "content"'
    return None


def _warn_near_misses(names: set[str]) -> None:
    """A carried field spelled like a sampling parameter is most likely a typo: say so once."""
    from pyllm.sampling_params import SamplingParams

    sampling = SamplingParams.field_names()
    for name in sorted(names):
        near = difflib.get_close_matches(name, sampling, n=1, cutoff=0.85)
        if near:
            log.warning(
                "field %r is not a sampling parameter (did you mean %r?); it is carried to "
                "the output unchanged",
                name,
                near[0],
            )


# ---------------------------------------------------------------------- running a job


@dataclass
class JobSummary:
    total: int = 0
    skipped: int = 0  # already in the output from an earlier run
    completed: int = 0
    errors: int = 0  # records that failed in this run
    earlier_errors: int = 0  # failed in an earlier run and skipped (retry_errors runs them again)
    generated_tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def describe(self) -> str:
        rate = self.generated_tokens / self.seconds if self.seconds > 0 else 0.0
        state = "interrupted (re-run the same command to resume)" if self.interrupted else "done"
        earlier = (
            f" ({self.earlier_errors} of them failed: --retry-errors runs them again)"
            if self.earlier_errors
            else ""
        )
        return (
            f"{state}: {self.completed} completed, {self.errors} errors, {self.skipped} "
            f"already done{earlier}, of {self.total} records; {self.generated_tokens} tokens in "
            f"{self.seconds:.1f} s ({rate:.1f} tokens/s)"
        )


def run_job(
    input_path: Path | str,
    output_path: Path,
    *,
    model: Any,
    base_params: Any,
    max_num_seqs: int = 64,
    progress: bool = False,
    int8_activations: bool = False,
    kv_dtype: str = "float32",
    device: str = "cpu",
    retry_errors: bool = False,
    context_length: int | None = None,
    system: str | None = None,
) -> JobSummary:
    """Run (or resume) a JSONL job. `input_path` may be ``"-"`` (standard input); `model` is a
    name/path or a loaded `pyllm.LLM` (`int8_activations`, `kv_dtype`, `device` and
    `context_length` apply when it is a name or path: see `pyllm.load`); `retry_errors` runs the
    records whose output line is an error again (that line is removed first); `system` is the
    system message of every chat record without one (:func:`with_system`)."""
    check_job_files(input_path, output_path)
    with readable_input(input_path) as source:
        state = prepare_output(output_path, retry_errors=retry_errors)
        summary = JobSummary(earlier_errors=state.earlier_errors)
        carried_names: set[str] = set()
        for rec in read_records(source):
            summary.total += 1
            if isinstance(rec, JobRecord) and rec.style == "pyllm":
                carried_names.update(rec.carried)
        _warn_near_misses(carried_names)
        llm = _load(model, device, int8_activations, kv_dtype, context_length)
        _run(
            llm,
            source,
            output_path,
            state.done,
            summary,
            base_params,
            max_num_seqs,
            progress,
            system,
        )
    return summary


def _load(
    model: Any, device: str, int8_activations: bool, kv_dtype: str, context_length: int | None
) -> Any:
    if isinstance(model, (str, Path)) or model is None:
        import pyllm

        return pyllm.load(
            model,
            device,
            int8_activations=int8_activations,
            kv_dtype=kv_dtype,
            context_length=context_length,
        )
    if context_length is not None:
        raise ValueError(
            "context_length applies when the model is loaded here (a name or "
            "path); pass it to pyllm.load for a loaded model"
        )
    return model


def with_system(prompt: Any, system: str | None) -> Any:
    """A chat prompt (a list of messages) with `system` as its first message when it has no
    system message of its own; a text prompt or token ids, or no `system`, as it is."""
    from pyllm.chat import is_messages

    if system is None or not is_messages(prompt):
        return prompt
    if any(m.get("role") == "system" for m in prompt):
        return prompt
    return [{"role": "system", "content": system}, *prompt]


def _run(
    llm: Any,
    source: Path,
    output_path: Path,
    done: set[Any],
    summary: JobSummary,
    base_params: Any,
    max_num_seqs: int,
    progress: bool,
    system: str | None = None,
) -> None:
    import signal

    from tqdm import tqdm

    from pyllm.engine.llm_engine import LLMEngine
    from pyllm.errors import ContextLengthError
    from pyllm.sampling_params import SamplingParams

    engine = LLMEngine(llm.model, llm.tokenizer, llm.engine_config(max_num_seqs=max_num_seqs))
    interrupted = {"flag": False}

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted["flag"] = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    start = time.monotonic()
    running: dict[str, tuple[JobRecord, list[int], int]] = {}  # key -> (record, prompt ids, n)
    partial: dict[str, dict[int, Any]] = {}
    bar = tqdm(
        total=summary.total, unit="rec", disable=not progress, dynamic_ncols=True, desc="generate"
    )
    try:
        with JsonlWriter(output_path) as writer:

            def failed(line: dict[str, Any]) -> None:
                writer.write(line)
                summary.errors += 1
                bar.update(1)

            def requests() -> Iterator[tuple[str, list[int], Any]]:
                for rec in read_records(source):
                    if interrupted["flag"]:
                        return
                    if rec.key in done:
                        summary.skipped += 1
                        bar.update(1)
                        continue
                    if isinstance(rec, BadRecord):
                        failed(rec.to_json())
                        continue
                    if rec.problem is not None:
                        failed(rec.failure(*rec.problem))
                        continue
                    try:
                        params = SamplingParams.from_mapping(rec.overrides, base=base_params)
                        ids = llm.encode_prompt(with_system(rec.prompt, system))
                        engine.check_request(ids, params)
                    except (ValueError, TypeError, ContextLengthError) as exc:
                        kind = (
                            "context_length"
                            if isinstance(exc, ContextLengthError)
                            else "invalid_record"
                        )
                        failed(rec.failure(kind, str(exc)))
                        continue
                    running[rec.key] = (rec, ids, params.n)
                    yield rec.key, ids, params

            for event in engine.run(requests(), lookahead=2 * max_num_seqs):
                if event.finished:
                    summary.generated_tokens += len(event.completion.token_ids)
                    key = str(event.request)
                    got = partial.setdefault(key, {})
                    got[event.output] = event.completion
                    rec, ids, n = running[key]
                    if len(got) == n:
                        writer.write(rec.result(llm.name, ids, [got[i] for i in sorted(got)]))
                        del partial[key], running[key]
                        summary.completed += 1
                        bar.update(1)
                        elapsed = time.monotonic() - start
                        bar.set_postfix_str(
                            f"{summary.generated_tokens / max(elapsed, 1e-9):.1f} tok/s"
                        )
                if interrupted["flag"]:
                    break
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    summary.interrupted = interrupted["flag"]
    summary.seconds = time.monotonic() - start
