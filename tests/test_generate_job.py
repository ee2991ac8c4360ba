"""`pyllm generate`: JSONL in/out, bad records, resume, and SIGKILL at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyllm.generate_job import read_records
from pyllm.jobs import repair_and_scan


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _outputs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_records_are_parsed_and_bad_ones_named(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, ['{"id": "a", "prompt": "x"}', "{oops", '{"id": "a", "prompt": "again"}',
                 '{"prompt": "no id"}', '{"id": "b", "messages": [{"role": "user"}]}',
                 '[1, 2]', '{"id": "c", "messages": [{"role": "user", "content": "hi"}], "top_k": 3}'])
    recs = list(read_records(src))
    kinds = [getattr(r, "error_type", None) or (r.problem and r.problem[0]) or "ok" for r in recs]
    assert kinds == ["ok", "invalid_json", "duplicate_id", "missing_id", "invalid_record",
                     "invalid_record", "ok"]
    assert recs[-1].overrides == {"top_k": 3}
    assert [r.key for r in recs] == ["a", 2, 3, 4, "b", 6, "c"]


def test_torn_last_line_is_repaired(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "a", "text": "x"}\n{"id": null, "line": 2, "error": {"type": '
                    b'"invalid_json"}}\n{"id": "b", "te')
    done = repair_and_scan(out)
    assert done == {"a", 2}
    assert out.read_bytes().endswith(b"}}\n")


@pytest.fixture(scope="module")
def llm(smollm2_path):
    import pyllm

    return pyllm.load(str(smollm2_path), progress=False)


def test_job_writes_results_and_errors_then_resumes(tmp_path, llm):
    from pyllm.generate_job import run_job
    from pyllm.sampling_params import SamplingParams

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    long_prompt = "word " * (llm.context_length + 10)
    _write(src, [json.dumps({"id": "p1", "prompt": "The capital of France is"}),
                 json.dumps({"id": "p2", "messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 3}),
                 json.dumps({"id": "long", "prompt": long_prompt}),
                 json.dumps({"id": "bad", "prompt": "x", "temperature": -1}),
                 "not json"])
    base = SamplingParams(max_tokens=6, temperature=0)
    first = run_job(src, out, model=llm, base_params=base)
    assert (first.completed, first.errors) == (2, 3)
    lines = {o.get("id") or f"line:{o['line']}": o for o in _outputs(out)}
    assert lines["p1"]["finish_reason"] == "length" and len(lines["p1"]["token_ids"]) == 6
    assert lines["p1"]["text"] == llm.tokenizer.decode(lines["p1"]["token_ids"])
    assert lines["p1"]["usage"]["completion_tokens"] == 6
    assert len(lines["p2"]["token_ids"]) <= 3
    assert lines["long"]["error"]["type"] == "context_length"
    assert "temperature" in lines["bad"]["error"]["message"]
    assert lines["line:5"]["error"]["type"] == "invalid_json"
    again = run_job(src, out, model=llm, base_params=base)
    assert (again.completed, again.errors, again.skipped) == (0, 0, 5)
    assert len(_outputs(out)) == 5


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path, smollm2_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"r{i}" for i in range(24)]
    _write(src, [json.dumps({"id": i, "prompt": f"Count to {n}:", "max_tokens": 4 + n % 5})
                 for n, i in enumerate(ids)] + ["{broken"])
    cmd = [sys.executable, "-m", "pyllm.cli.main", "generate", "-i", str(src), "-o", str(out),
           "--model", str(smollm2_path), "--temperature", "0", "--max-num-seqs", "4",
           "--no-progress"]
    rng = random.Random(1234)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Wait until the run has written something (or a random moment), then kill it hard.
        deadline = time.monotonic() + 120
        target = rng.uniform(0.0, 2.5)
        written_at = None
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > 0 and written_at is None:
                written_at = time.monotonic()
            if written_at is not None and time.monotonic() - written_at >= target:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    # 3: the run that reached "{broken" wrote its error line (documented exit status)
    assert final.returncode in (0, 3), final.stderr
    lines = _outputs(out)
    keys = [o["id"] if "error" not in o else f"line:{o['line']}" for o in lines]
    assert sorted(keys) == sorted(ids + ["line:25"])  # every record exactly once
    assert kills >= 1


def test_sigint_stops_gracefully_after_flushing(tmp_path, smollm2_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [json.dumps({"id": f"s{i}", "prompt": "Tell me a long story.", "max_tokens": 40})
                 for i in range(40)])
    cmd = [sys.executable, "-m", "pyllm.cli.main", "generate", "-i", str(src), "-o", str(out),
           "--model", str(smollm2_path), "--max-num-seqs", "2", "--no-progress", "--seed", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out.exists() and out.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    data = out.read_bytes()
    assert data.endswith(b"\n")  # nothing torn: the flush completed
    assert 0 < len(_outputs(out)) < 40


def test_int8_flag_reaches_the_model(tmp_path, smollm2_path, monkeypatch):
    """`pyllm generate --int8` loads the model with int8 activations and still writes every record."""
    import pyllm
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    loaded = []
    real_load = pyllm.load

    def spy(*args, **kwargs):
        llm = real_load(*args, **kwargs)
        loaded.append(llm)
        return llm

    monkeypatch.setattr(pyllm, "load", spy)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [json.dumps({"id": f"r{i}", "prompt": f"Name a colour number {i}."}) for i in range(5)])
    res = CliRunner().invoke(cli, ["generate", "-i", str(src), "-o", str(out), "--model", str(smollm2_path),
                                    "--int8", "--max-tokens", "6", "--temperature", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(loaded) == 1 and loaded[0].model.int8_activations
    outs = _outputs(out)
    assert sorted(o["id"] for o in outs) == [f"r{i}" for i in range(5)]
    assert all(len(o["token_ids"]) == 6 for o in outs)


# ---------------------------------------------------------------------- lose nothing


def _cli(llm, monkeypatch, args, stdin=None):
    """`pyllm generate ARGS` on the already loaded model (no second load)."""
    import pyllm
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    monkeypatch.setattr(pyllm, "load", lambda *a, **k: llm)
    return CliRunner().invoke(cli, ["generate", *args, "--temperature", "0", "--no-progress"],
                              input=stdin)


def test_a_real_id_named_like_a_line_key_still_runs_after_a_kill(tmp_path, llm):
    from pyllm.generate_job import run_job
    from pyllm.sampling_params import SamplingParams

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [json.dumps({"id": "line:2", "prompt": "Hello"}), "{bad", "{bad"])
    # As a kill leaves it: the two error lines flushed, "line:2" not finished.
    _write(out, ['{"id": null, "line": 2, "error": {"type": "invalid_json", "message": "m"}}',
                 '{"id": null, "line": 3, "error": {"type": "invalid_json", "message": "m"}}'])
    s = run_job(src, out, model=llm, base_params=SamplingParams(max_tokens=2, temperature=0))
    assert (s.completed, s.skipped) == (1, 2)
    assert [o["id"] for o in _outputs(out) if "error" not in o] == ["line:2"]


def test_fields_ids_and_params_reach_the_output(tmp_path, llm):
    from pyllm.generate_job import run_job
    from pyllm.sampling_params import SamplingParams

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [json.dumps({"id": 7, "prompt": "One, two,", "metadata": {"row": 7, "tags": ["a"]},
                             "source": "s1", "params": {"max_tokens": 3}}),
                 json.dumps({"id": "dup", "prompt": "x", "max_tokens": 2}),
                 json.dumps({"id": "dup", "prompt": "y"}),
                 json.dumps({"id": "bad", "prompt": "x", "metadata": 1, "params": {"temprature": 0}})])
    s = run_job(src, out, model=llm, base_params=SamplingParams(max_tokens=6, temperature=0))
    assert (s.completed, s.errors) == (2, 2)
    lines = _outputs(out)
    by_id = {o["id"]: o for o in lines if o["id"] is not None}
    assert by_id["7"]["metadata"] == {"row": 7, "tags": ["a"]} and by_id["7"]["source"] == "s1"
    assert len(by_id["7"]["token_ids"]) == 3
    assert [o["id"] for o in lines].count("dup") == 1  # the duplicate's error line has "id": null
    assert [o["error"]["type"] for o in lines if o["id"] is None] == ["duplicate_id"]
    assert "did you mean 'temperature'" in by_id["bad"]["error"]["message"]
    assert by_id["bad"]["metadata"] == 1


def test_openai_batch_requests_are_answered_in_openais_format(tmp_path, llm):
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    from pyllm.generate_job import run_job
    from pyllm.sampling_params import SamplingParams

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [json.dumps({"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"model": "gpt-4o-mini", "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "Say hi"}]}}),
                 json.dumps({"custom_id": "comp-1", "method": "POST", "url": "/v1/completions",
                             "body": {"model": "x", "prompt": "Once upon a time", "max_tokens": 3, "n": 2}}),
                 json.dumps({"custom_id": "bad-1", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"messages": [{"role": "user", "content": "x"}], "temperature": -1}})])
    base = SamplingParams(max_tokens=6, temperature=0)
    s = run_job(src, out, model=llm, base_params=base)
    assert (s.completed, s.errors) == (2, 1)
    lines = {o["custom_id"]: o for o in _outputs(out)}
    chat = lines["chat-1"]
    assert chat["id"].startswith("batch_req_") and chat["error"] is None
    assert chat["response"]["status_code"] == 200
    body = ChatCompletion.model_validate(chat["response"]["body"])
    assert body.choices[0].message.role == "assistant" and body.usage.completion_tokens <= 4
    comp = Completion.model_validate(lines["comp-1"]["response"]["body"])
    assert len(comp.choices) == 2 and comp.usage.completion_tokens <= 6
    bad = lines["bad-1"]
    assert bad["response"] is None and "temperature" in bad["error"]["message"]
    again = run_job(src, out, model=llm, base_params=base)
    assert (again.completed, again.skipped) == (0, 3)


def test_failed_records_exit_3_and_retry_errors_runs_them_again(tmp_path, llm, monkeypatch):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [json.dumps({"id": "ok", "prompt": "Hi", "max_tokens": 2}),
                 json.dumps({"id": "fix", "prompt": "Hi", "max_tokens": 0})])
    args = ["-i", str(src), "-o", str(out)]
    first = _cli(llm, monkeypatch, args)
    assert first.exit_code == 3, first.output
    _write(src, [json.dumps({"id": "ok", "prompt": "Hi", "max_tokens": 2}),
                 json.dumps({"id": "fix", "prompt": "Hi", "max_tokens": 2})])
    plain = _cli(llm, monkeypatch, args)
    assert plain.exit_code == 0 and "1 of them failed" in plain.output, plain.output
    retried = _cli(llm, monkeypatch, [*args, "--retry-errors"])
    assert retried.exit_code == 0, retried.output
    lines = _outputs(out)
    assert sorted(o["id"] for o in lines) == ["fix", "ok"]
    assert not any("error" in o for o in lines)


def test_stdin_input_runs_and_resumes(tmp_path, llm, monkeypatch):
    out = tmp_path / "out.jsonl"
    data = "".join(json.dumps({"id": f"s{i}", "prompt": "Hi", "max_tokens": 2}) + "\n" for i in range(3))
    first = _cli(llm, monkeypatch, ["-i", "-", "-o", str(out)], stdin=data)
    assert first.exit_code == 0, first.output
    assert sorted(o["id"] for o in _outputs(out)) == ["s0", "s1", "s2"]
    more = data + json.dumps({"id": "s3", "prompt": "Hi", "max_tokens": 2}) + "\n"
    second = _cli(llm, monkeypatch, ["-i", "-", "-o", str(out)], stdin=more)
    assert "1 completed" in second.output and "3 already done" in second.output
    assert sorted(o["id"] for o in _outputs(out)) == ["s0", "s1", "s2", "s3"]


# ---------------------------------------------------------------------- model options


def test_with_system_fills_in_only_a_missing_system_message():
    from pyllm.generate_job import with_system

    user = [{"role": "user", "content": "Hi"}]
    own = [{"role": "system", "content": "Mine."}, *user]
    assert with_system(user, "Be brief.") == [{"role": "system", "content": "Be brief."}, *user]
    assert with_system(own, "Be brief.") == own
    assert with_system("plain text", "Be brief.") == "plain text"
    assert with_system([1, 2, 3], "Be brief.") == [1, 2, 3]  # token ids
    assert with_system(user, None) is user


def test_system_option_is_the_system_message_of_chat_records_without_one(tmp_path, llm,
                                                                         monkeypatch):
    system = "You answer in one word."
    user = [{"role": "user", "content": "Name a colour."}]
    own = [{"role": "system", "content": "Answer in French."}, *user]
    src, ref = tmp_path / "in.jsonl", tmp_path / "ref.jsonl"
    _write(src, [json.dumps({"id": "m", "messages": user}),
                 json.dumps({"id": "own", "messages": own}),
                 json.dumps({"id": "p", "prompt": "Name a colour."})])
    with_own = [{"role": "system", "content": system}, *user]
    _write(ref, [json.dumps({"id": "m", "messages": with_own}),
                 json.dumps({"id": "own", "messages": own}),
                 json.dumps({"id": "p", "prompt": "Name a colour."})])
    out, ref_out = tmp_path / "out.jsonl", tmp_path / "ref_out.jsonl"
    res = _cli(llm, monkeypatch,
               ["-i", str(src), "-o", str(out), "-s", system, "--max-tokens", "2"])
    assert res.exit_code == 0, res.output
    res = _cli(llm, monkeypatch, ["-i", str(ref), "-o", str(ref_out), "--max-tokens", "2"])
    assert res.exit_code == 0, res.output
    got = {o["id"]: (o["usage"], o["token_ids"]) for o in _outputs(out)}
    assert got == {o["id"]: (o["usage"], o["token_ids"]) for o in _outputs(ref_out)}


def test_ctx_option_caps_the_context_the_model_loads_with(tmp_path, llm, monkeypatch):
    from click.testing import CliRunner

    import pyllm
    from pyllm.cli.main import cli

    calls = []
    monkeypatch.setattr(pyllm, "load", lambda *a, **k: calls.append(k) or llm)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [json.dumps({"id": "a", "prompt": "Hi", "max_tokens": 1})])
    res = CliRunner().invoke(cli, ["generate", "-i", str(src), "-o", str(out), "--ctx", "64",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [c.get("context_length") for c in calls] == [64]
    res = CliRunner().invoke(cli, ["generate", "-i", str(src), "-o", str(out), "--ctx", "64",
                                   "--ray", "auto"])
    assert res.exit_code == 2 and "--ctx and --system apply to local runs" in res.stderr
    from pyllm.generate_job import run_job
    from pyllm.sampling_params import SamplingParams

    with pytest.raises(ValueError, match="context_length applies when the model is loaded here"):
        run_job(src, out, model=llm, base_params=SamplingParams(), context_length=64)
