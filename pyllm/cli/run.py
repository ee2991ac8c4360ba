"""`pyllm run [MODEL] [PROMPT]`: generate once and stream the text to stdout (ollama's `run`).

The prompt comes from PROMPT, or from standard input when that is not a terminal; with neither
(a terminal and no PROMPT) the chat opens, as `ollama run MODEL` does."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from pyllm import logs, settings
from pyllm.cli.options import (
    SAMPLING_DEFAULTS,
    load_llm,
    load_options,
    model_option,
    pick_model,
    pop_sampling_params,
    sampling_options,
    stdin_text,
    system_option,
)
from pyllm.constraints.cli import structured_options, structured_overrides


@click.command("run")
@click.argument("model", required=False, metavar="[MODEL]")
@click.argument("prompt", required=False, metavar="[PROMPT]")
@model_option()
@system_option()
@click.option(
    "--chat", is_flag=True, help="Send PROMPT as a user message through the model's chat template."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print one JSON object {"text", "token_ids", "finish_reason"} instead of '
    'streaming text; with --set logprobs=N also "logprobs", with n > 1 also '
    '"outputs" (every completion).',
)
@click.option(
    "--truncate",
    type=click.Choice(["none", "left"]),
    default="none",
    show_default=True,
    help="A prompt longer than the context is an error (none) or keeps its end (left).",
)
@click.option(
    "-c",
    "--continue",
    "continue_",
    is_flag=True,
    help="Continue the last logged conversation (pyllm logs): PROMPT is the next user "
    "message, with that conversation's model unless one is named.",
)
@click.option(
    "--no-log",
    is_flag=True,
    help="Do not log the prompt and reply in $PYLLM_HOME/logs.db (PYLLM_LOG=0 too).",
)
@sampling_options(SAMPLING_DEFAULTS)
@structured_options()
@load_options()
def run(
    model: str | None,
    prompt: str | None,
    model_option: str | None,
    system: str | None,
    chat: bool,
    as_json: bool,
    truncate: str,
    continue_: bool,
    no_log: bool,
    int8: bool,
    kv_dtype: str,
    device: str,
    ctx: int | None,
    **kwargs: Any,
) -> None:
    """Generate a continuation of PROMPT with MODEL (a .gguf file, a Hugging Face folder, an
    alias, or a name such as smollm2, pulled on first use; default: the one `pyllm models
    default` set, else smollm2).

    PROMPT '-', or no PROMPT with a pipe or file on stdin, reads the prompt from stdin. No
    PROMPT in a terminal opens the chat (pyllm chat). With n > 1 (--set n=3) every completion
    is printed under a "--- completion i of n ---" line. Prompts and replies are logged
    (pyllm logs); `pyllm run -c "PROMPT"` continues the last conversation.
    """
    model, (prompt,) = pick_model(model_option, [model, prompt])
    if continue_ and prompt is None and model is not None:
        model, prompt = None, model  # `pyllm run -c "and then?"`: the model is the conversation's
    if (
        prompt is None
        and model is not None
        and " " in model.strip()
        and not Path(model).expanduser().exists()
    ):
        _missing_prompt(model)  # `pyllm run "some text"`, as `llm` users may type it
    params = pop_sampling_params(kwargs, SAMPLING_DEFAULTS)
    structured = structured_overrides(kwargs)
    if structured:
        params = params.replace(**structured)
    load: dict[str, Any] = {"int8": int8, "kv_dtype": kv_dtype, "device": device, "ctx": ctx}
    if prompt is None or prompt == "-":
        text = stdin_text()
        if text is None and prompt is None:  # a terminal: talk instead
            from pyllm.cli.chat import start_chat

            start_chat(model, params, system=system, continue_=continue_, log=not no_log, **load)
            return
        prompt = sys.stdin.read() if text is None else text
        if not prompt.strip():
            _missing_prompt(model)
    last = None
    if continue_:
        from pyllm.cli.chat import last_conversation

        last = last_conversation()
        model = model or last.model
    llm = load_llm(model, **load)
    request: Any = prompt
    if last is not None:  # the conversation so far, then PROMPT
        so_far = last.conversation()
        if system is not None:
            so_far = [
                {"role": "system", "content": system},
                *(m for m in so_far if m["role"] != "system"),
            ]
        request = [*so_far, {"role": "user", "content": prompt}]
    elif chat or system is not None:
        messages = [{"role": "system", "content": system}] if system is not None else []
        request = [*messages, {"role": "user", "content": prompt}]
    policy = None if truncate == "none" else truncate
    start = time.perf_counter()
    first: float | None = None
    completion: Any = None
    if as_json or params.n > 1:
        result = llm.generate([request], params, truncate=policy)[0]
        if as_json:
            click.echo(json.dumps(_record(result, llm.tokenizer), ensure_ascii=False))
        else:
            for i, completion in enumerate(result.outputs, 1):
                click.echo(f"--- completion {i} of {len(result.outputs)} ---", err=False)
                click.echo(completion.text)
        completion = result.outputs[0]  # the one a later --continue goes on from
    else:
        wrapper = None
        if sys.stdout.isatty():  # break lines between words, as the chat does
            import shutil

            from pyllm.repl.render import WordWrapper

            wrapper = WordWrapper(shutil.get_terminal_size().columns)
        events = llm.stream_events(request, params, truncate=policy)
        try:
            for event in events:
                if event.delta:
                    first = first if first is not None else time.perf_counter() - start
                    click.echo(wrapper.feed(event.delta) if wrapper else event.delta, nl=False)
                    sys.stdout.flush()
                completion = event.completion
        finally:
            events.close()  # Ctrl-C or a closed pipe: the engine drops the request
        click.echo(wrapper.flush() if wrapper else "")
    if completion is not None and getattr(completion, "incomplete", False):
        click.echo(
            f"warning: the output stopped ({completion.finish_reason}) before it satisfied "
            "the constraint, so it will not parse; raise --max-tokens",
            err=True,
        )
    if logs.enabled(no_log) and completion is not None:
        logs.record(
            conversation_id=last.conversation_id if last else logs.new_conversation_id(),
            model=settings.model_spec(model),
            prompt=prompt,
            reply=completion.text,
            messages=request if not isinstance(request, str) else None,
            settings=_changed(params),
            prompt_tokens=len(llm.encode_prompt(request)),
            completion_tokens=len(completion.token_ids),
            seconds=time.perf_counter() - start,
            first_token_seconds=first,
            finish_reason=completion.finish_reason,
        )


def _changed(params: Any) -> dict[str, Any]:
    from pyllm.repl.commands import changed_params

    return changed_params(params)


def _record(result: Any, tokenizer: Any) -> dict[str, Any]:
    from pyllm.completion_json import completion_json

    record = completion_json(result.outputs[0], tokenizer)
    if len(result.outputs) > 1:
        record["outputs"] = [completion_json(c, tokenizer) for c in result.outputs]
    return record


def _missing_prompt(model: str | None) -> None:
    example = (
        shlex.quote(model) if model and " " in model.strip() else "'Write a haiku about the sea'"
    )
    raise click.UsageError(
        f"Missing argument 'PROMPT': the model comes first, then the prompt, "
        f"e.g. pyllm run smollm2 {example} (or pipe the prompt on stdin)"
    )
