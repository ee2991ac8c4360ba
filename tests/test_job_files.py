"""The batch-job file rules (pyllm/jobs.py) and record parsing (pyllm/generate_job.py), without a
model: same-file and device outputs refused, the two key spaces, deep nesting, BOM, UTF-8, ids,
carried fields, OpenAI requests, --retry-errors on the output file, the task jobs' share."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyllm import jobs, tasks
from pyllm.cli.main import cli
from pyllm.generate_job import JobRecord, read_records
from pyllm.jobs import BadRecord, JsonlWriter, prepare_output, read_objects, repair_and_scan

DEEP = "[" * 1000 + "]" * 1000


def _write(path: Path, lines: list[str | bytes]) -> None:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))


def _generate(*args: str) -> object:
    # A model that does not exist: every refusal tested here must come before the model loads.
    return CliRunner().invoke(cli, ["generate", *args, "--model", "/nonexistent/model.gguf",
                                    "--no-progress"])


# ---------------------------------------------------------------------- the two files


@pytest.mark.parametrize("how", ["same", "dot", "symlink", "hardlink"])
@pytest.mark.parametrize("final_newline", [True, False])
def test_input_as_output_is_refused_before_anything_is_touched(tmp_path, monkeypatch, how, final_newline):
    monkeypatch.chdir(tmp_path)
    data = b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}' + (b"\n" if final_newline else b"")
    Path("in.jsonl").write_bytes(data)
    out = {"same": "in.jsonl", "dot": "./in.jsonl", "symlink": "link.jsonl", "hardlink": "hard.jsonl"}[how]
    if how == "symlink":
        os.symlink("in.jsonl", "link.jsonl")
    elif how == "hardlink":
        os.link("in.jsonl", "hard.jsonl")
    res = _generate("-i", "in.jsonl", "-o", out)
    assert res.exit_code == 2, res.output
    assert "same file" in res.output
    assert Path("in.jsonl").read_bytes() == data  # nothing truncated, nothing appended


@pytest.mark.parametrize("target", ["/dev/null", "/dev/full", "/dev/stdout", "fifo"])
def test_outputs_that_are_not_regular_files_are_refused(tmp_path, target):
    src = tmp_path / "in.jsonl"
    _write(src, ['{"id": "a", "prompt": "x"}'])
    if target == "fifo":
        target = str(tmp_path / "pipe")
        os.mkfifo(target)
    res = _generate("-i", str(src), "-o", target)
    assert res.exit_code == 2
    assert "must be a regular file" in res.output, res.output


def test_a_directory_as_output_is_refused_by_the_library_too(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, ['{"id": "a", "prompt": "x"}'])
    with pytest.raises(ValueError, match="is a directory: a job's output must be a regular file"):
        jobs.check_job_files(src, tmp_path)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_a_regular_file_under_dev_shm_is_a_fine_output(tmp_path):
    src, out = tmp_path / "in.jsonl", Path(f"/dev/shm/pyllm-test-{os.getpid()}.jsonl")
    _write(src, ['{"id": "a", "prompt": "x"}'])
    try:
        out.write_text('{"id": "a", "text": "x"}\n')
        jobs.check_job_files(src, out)  # no error
    finally:
        out.unlink(missing_ok=True)


def test_a_huge_line_of_brackets_is_refused_quickly(tmp_path):
    import time

    src = tmp_path / "in.jsonl"
    _write(src, ["[" * 10_000_000, '{"id": "a", "prompt": "x"}'])
    start = time.monotonic()
    recs = list(read_records(src))
    assert [getattr(r, "error_type", "ok") for r in recs] == ["too_deep", "ok"]
    assert time.monotonic() - start < 5


def test_stdin_redirected_from_the_output_is_the_same_file(tmp_path):
    out = tmp_path / "out.jsonl"
    _write(out, ['{"id": "a", "text": "done"}'])
    with open(out, "rb") as f, pytest.raises(ValueError, match="standard input and the output"):
        import sys

        real = sys.stdin
        sys.stdin = os.fdopen(os.dup(f.fileno()), "r")
        try:
            jobs.check_job_files("-", out)
        finally:
            sys.stdin.close()
            sys.stdin = real


def test_a_pipe_as_input_is_read_once_into_a_copy(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    import threading

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n')

    t = threading.Thread(target=feed)
    t.start()
    with jobs.readable_input(fifo) as src:
        twice = [[r.key for r in read_records(src)] for _ in range(2)]
    t.join()
    assert twice == [["a", "b"], ["a", "b"]]
    assert not src.exists()


# ---------------------------------------------------------------------- keys


def test_real_ids_and_line_keys_cannot_collide(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, ['{"id": "line:2", "prompt": "x"}', "{bad", '{"id": 2, "prompt": "y"}', "{bad"])
    recs = list(read_records(src))
    assert [r.key for r in recs] == ["line:2", 2, "2", 4]
    # Killed after the error lines were flushed, before "line:2" finished:
    _write(out, [json.dumps(r.to_json()) for r in recs if isinstance(r, BadRecord)])
    done = prepare_output(out).done
    assert done == {2, 4}
    assert "line:2" not in done and "2" not in done


def test_error_lines_of_the_earlier_format_still_resume_by_line(tmp_path):
    out = tmp_path / "out.jsonl"
    _write(out, ['{"id": "a", "text": "x"}',
                 '{"id": "a", "line": 3, "error": {"type": "duplicate_id", "message": "m"}}',
                 '{"id": null, "line": 4, "error": {"type": "invalid_json", "message": "m"}}',
                 '{"id": 5, "line": 5, "error": {"type": "missing_id", "message": "m"}}',
                 '{"id": "b", "line": 6, "error": {"type": "context_length", "message": "m"}}'])
    assert repair_and_scan(out) == {"a", 3, 4, 5, "b"}


def test_a_duplicate_ids_error_line_does_not_carry_the_id(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, ['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "again"}'])
    first, dup = read_records(src)
    assert first.key == "a" and isinstance(first, JobRecord)
    assert dup.key == 2 and dup.error_type == "duplicate_id" and "line 1" in dup.message
    assert dup.to_json()["id"] is None and dup.to_json()["line"] == 2


def test_ids_integers_are_strings_and_other_types_are_refused(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, ['{"id": 7, "prompt": "x"}', '{"id": "7", "prompt": "x"}', '{"id": 1.5, "prompt": "x"}',
                 '{"id": true, "prompt": "x"}', '{"id": [1], "prompt": "x"}', '{"id": "", "prompt": "x"}',
                 '{"id": null, "prompt": "x"}', '{"prompt": "x"}'])
    recs = list(read_records(src))
    assert recs[0].key == "7" and isinstance(recs[0], JobRecord)
    kinds = [r.error_type for r in recs[1:]]
    assert kinds == ["duplicate_id", "invalid_id", "invalid_id", "invalid_id", "invalid_id",
                     "missing_id", "missing_id"]
    assert "float" not in recs[2].message and "1.5" in recs[2].message and '"id"' in recs[2].message


# ---------------------------------------------------------------------- what a line may hold


def test_deep_nesting_is_one_bad_record_in_the_input_and_harmless_in_the_output(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    deep_field = '{"id": "d", "prompt": "x", "metadata": ' + "[" * 150 + "]" * 150 + "}"
    _write(src, [DEEP, '{"id": "a", "prompt": "x"}', deep_field, "{" * 5000])
    recs = list(read_records(src))
    assert [getattr(r, "error_type", "ok") for r in recs] == ["too_deep", "ok", "too_deep", "too_deep"]
    assert recs[0].key == 1
    _write(out, [DEEP, '{"id": "a", "text": "x"}'])
    assert prepare_output(out).done == {"a"}


def test_an_int_too_long_to_parse_is_invalid_json(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, ['{"id": ' + "1" * 5000 + ', "prompt": "x"}', '{"id": "a", "prompt": "x"}'])
    assert [getattr(r, "error_type", "ok") for r in read_records(src)] == ["invalid_json", "ok"]


def test_a_bom_is_skipped_and_invalid_utf8_is_an_error(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, [b'\xef\xbb\xbf{"id": "a", "prompt": "x"}', b'{"id": "b", "prompt": "caf\xe9"}',
                 '{"id": "c", "prompt": "café"}'])
    a, b, c = read_records(src)
    assert a.key == "a" and a.problem is None
    assert (b.key, b.error_type) == (2, "invalid_utf8")
    assert c.prompt == "café"


def test_a_lone_surrogate_is_written_escaped(tmp_path):
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out) as w:
        w.write({"id": "a", "metadata": "\ud800x"})
        w.write({"id": "b", "metadata": "é"})
    assert [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] == [
        {"id": "a", "metadata": "\ud800x"}, {"id": "b", "metadata": "é"}]


def test_other_fields_are_carried_and_sampling_fields_may_sit_under_params(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, [json.dumps({"id": "a", "prompt": "x", "metadata": {"k": [1]}, "source": "web",
                             "max_tokens": 3, "params": {"temperature": 0, "top_k": 5}}),
                 json.dumps({"id": "b", "prompt": "x", "text": "mine"}),
                 json.dumps({"id": "c", "prompt": "x", "top_k": 1, "params": {"top_k": 2}}),
                 json.dumps({"id": "d", "prompt": "x", "params": []}),
                 json.dumps({"id": "e", "custom_id": "e", "prompt": "x"})])
    a, b, c, d, e = read_records(src)
    assert a.problem is None
    assert a.overrides == {"max_tokens": 3, "temperature": 0, "top_k": 5}
    assert a.carried == {"metadata": {"k": [1]}, "source": "web"}
    assert "'text'" in b.problem[1] and "metadata" in b.problem[1]
    assert "'top_k'" in c.problem[1] and "params" in c.problem[1]
    assert '"params" must be an object of sampling fields, got an array' in d.problem[1]
    assert "custom_id" in e.problem[1]
    assert b.failure(*b.problem) == {"id": "b", "line": 2, "error": {"type": "invalid_record",
                                                                     "message": b.problem[1]}}


def test_openai_requests_are_parsed(tmp_path):
    src = tmp_path / "in.jsonl"
    chat = {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-x", "messages": [{"role": "system", "content": "Be short."},
                                                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                     "max_completion_tokens": 5, "temperature": 0, "stop": "\n", "top_k": 3,
                     "stream": False}}
    comp = {"custom_id": 2, "url": "/v1/completions", "body": {"prompt": "Once", "max_tokens": 4}}
    bad = [{"custom_id": "b1", "url": "/v1/embeddings", "body": {"input": "x"}},
           {"custom_id": "b2", "body": {"messages": [{"role": "user", "content": "x"}], "tools": []}},
           {"custom_id": "b3", "body": {"messages": [{"role": "user", "content": "x"}], "stream": True}},
           {"custom_id": "b4", "method": "GET", "body": {"prompt": "x"}},
           {"custom_id": "b5", "body": {"prompt": "x"}, "response": 1}]
    _write(src, [json.dumps(x) for x in [chat, comp, *bad]])
    c1, c2, *errs = read_records(src)
    assert (c1.key, c1.style, c1.endpoint, c1.problem) == ("c1", "openai", "chat", None)
    assert c1.prompt == [{"role": "system", "content": "Be short."}, {"role": "user", "content": "Hi"}]
    assert c1.overrides == {"max_tokens": 5, "temperature": 0, "stop": ["\n"], "top_k": 3}
    assert (c2.key, c2.endpoint, c2.prompt, c2.overrides) == ("2", "completions", "Once", {"max_tokens": 4})
    messages = [e.problem[1] for e in errs]
    for needle, msg in zip(["/v1/embeddings", "body.tools", "body.stream", "POST", "'response'"], messages):
        assert needle in msg, msg
    line = errs[0].failure(*errs[0].problem)
    assert line["custom_id"] == "b1" and line["response"] is None
    assert line["error"]["code"] == "invalid_record"
    assert jobs.output_key(line) == "b1" and jobs.is_error_line(line)


# ---------------------------------------------------------------------- retrying errors


def test_retry_errors_removes_error_lines_and_keeps_everything_else(tmp_path):
    out = tmp_path / "out.jsonl"
    real = tmp_path / "real.jsonl"
    lines = ['{"id": "a", "text": "x"}', '{"id": "b", "line": 2, "error": {"type": "context_length", "message": "m"}}',
             "not ours", '{"id": null, "line": 4, "error": {"type": "invalid_json", "message": "m"}}',
             '{"id": "c1", "custom_id": "c", "response": null, "error": {"code": "x", "message": "m"}}',
             '{"id": "batch_req_1", "custom_id": "d", "response": {"status_code": 200, "body": {}}, "error": null}']
    _write(real, lines)
    os.symlink(real, out)
    kept = prepare_output(out)
    assert kept.done == {"a", "b", 4, "c", "d"} and kept.earlier_errors == 3
    assert real.read_text().splitlines() == lines
    again = prepare_output(out, retry_errors=True)
    assert again.done == {"a", "d"} and again.retried == 3
    assert out.is_symlink()  # the link's target was rewritten, the link kept
    assert real.read_text().splitlines() == [lines[0], lines[2], lines[5]]


def test_task_jobs_share_the_rules(tmp_path):
    class Echo:
        name, description, input_fields = "echo-rules", "", ("text",)

        def run(self, llm, records, **options):
            if any(r["text"] == "bad" for r in records):
                raise ValueError("bad text")
            return [{"out": r["text"].upper()} for r in records]

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, ['{"id": "line:2", "text": "a"}', "{bad", '{"id": 3, "text": "bad"}'])
    with pytest.raises(ValueError, match="same file"):
        tasks.run_jsonl(Echo(), None, src, src, {})
    s = tasks.run_jsonl(Echo(), None, src, out, {})
    assert (s.completed, s.errors) == (1, 2)
    _write(src, ['{"id": "line:2", "text": "a"}', "{bad", '{"id": 3, "text": "fixed"}'])
    s = tasks.run_jsonl(Echo(), None, src, out, {}, retry_errors=True)
    assert (s.completed, s.errors, s.skipped) == (1, 1, 1)
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r.get("out") for r in results if "error" not in r] == ["A", "FIXED"]
    assert [r["line"] for r in results if "error" in r] == [2]


def test_read_objects_takes_the_first_id_field_present(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, ['{"custom_id": "x"}', '{"id": "y", "custom_id": "z"}'])
    assert [i[1] for i in read_objects(src, ("id", "custom_id"))] == ["x", "y"]
    first = next(iter(read_objects(src)))
    assert isinstance(first, BadRecord) and first.error_type == "missing_id"


def test_a_carried_field_spelled_like_a_sampling_parameter_is_warned_about(caplog):
    from pyllm.generate_job import _warn_near_misses

    with caplog.at_level("WARNING", logger="pyllm"):
        _warn_near_misses({"temprature", "metadata"})
    assert len(caplog.records) == 1
    assert "'temprature'" in caplog.text and "did you mean 'temperature'" in caplog.text
