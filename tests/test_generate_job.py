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

from pyllm.jobs import read_records, repair_and_scan


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
    kinds = [getattr(r, "error_type", "ok") for r in recs]
    assert kinds == ["ok", "invalid_json", "duplicate_id", "missing_id", "invalid_record",
                     "invalid_record", "ok"]
    assert recs[-1].overrides == {"top_k": 3}
    assert [r.key for r in recs] == ["a", "line:2", "line:3", "line:4", "b", "line:6", "c"]


def test_torn_last_line_is_repaired(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "a", "text": "x"}\n{"id": "line", "line": 2, "error": {"type": '
                    b'"invalid_json"}}\n{"id": "b", "te')
    done = repair_and_scan(out)
    assert done == {"a", "line:2"}
    assert out.read_bytes().endswith(b"}}\n")


@pytest.fixture(scope="module")
def llm(smollm2_path):
    import pyllm

    return pyllm.load(str(smollm2_path), progress=False)


def test_job_writes_results_and_errors_then_resumes(tmp_path, llm):
    from pyllm.jobs import run_job
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
    assert final.returncode == 0, final.stderr
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
