"""pyllm.distributed: the batch callable, and `pyllm generate --ray` on a local Ray cluster
(two CPUs). The Ray tests skip, saying why, where Ray Data is not installed; scripts/ray_tests.sh
installs it and runs this file."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

N_RECORDS = 200
MAX_TOKENS = 6


# ------------------------------------------------------------------ a tiny model and its records


def _byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for the
    code points from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = [b for b in range(256) if b not in printable]
    symbol = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [symbol[b] for b in range(256)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer random Llama (scripts/make_random_llama.py's tiny shape) with a byte-level BPE
    tokenizer of its 256 tokens, so pyllm.load takes it like any GGUF."""
    import gguf_builder as B
    import make_random_llama as M

    tokenizer = [
        {"key": "tokenizer.ggml.model", "types": [B.STRING], "value": "gpt2"},
        {"key": "tokenizer.ggml.pre", "types": [B.STRING], "value": "gpt2"},
        {"key": "tokenizer.ggml.tokens", "types": [B.ARRAY, B.STRING], "value": _byte_symbols()},
        {"key": "tokenizer.ggml.token_type", "types": [B.ARRAY, B.INT32], "value": [1] * 256},
        {"key": "tokenizer.ggml.merges", "types": [B.ARRAY, B.STRING], "value": []},
    ]
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    M.write_random_llama(path, M.SHAPES["tiny"], metadata=tokenizer, scale=0.2, embed_scale=0.5)
    return str(path)


def _records(n: int = N_RECORDS) -> list[dict]:
    """Greedy and seeded records (text and chat), the kinds whose text must not depend on
    which worker or batch runs them."""
    out = []
    for i in range(n):
        rec: dict = {"id": f"r{i}"}
        if i % 3 == 2:
            rec["messages"] = [{"role": "user", "content": f"question {i}?"}]
        else:
            rec["prompt"] = f"prompt number {i}: " + "ab" * (i % 7)
        if i % 2:
            rec.update(temperature=0.9, seed=1000 + i, top_k=40)
        else:
            rec["temperature"] = 0
        out.append(rec)
    return out


BAD_LINES = [
    "{not json",  # invalid_json, keyed by its line
    '{"id": "r0", "prompt": "again"}',  # duplicate id
    '{"id": "too-long", "prompt": "' + "x" * 600 + '"}',  # over the context length
    '{"id": "bad-param", "prompt": "hi", "top_k": "many"}',  # a bad sampling field
    '{"id": "no-prompt"}',
]


def _write_input(path: Path, records: list[dict], bad: list[str] = ()) -> Path:
    lines = [json.dumps(r) for r in records]
    for i, text in enumerate(bad):  # spread the bad lines through the file
        lines.insert(min(len(lines), 7 + 31 * i), text)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _by_key(lines: list[str]) -> dict:
    from pyllm.jobs import output_key

    out: dict = {}
    for line in lines:
        key = output_key(json.loads(line))
        assert key not in out, f"key {key!r} written twice"
        out[key] = line
    return out


@pytest.fixture(scope="module")
def single_process(tiny_model, tmp_path_factory) -> tuple[Path, dict]:
    """The input with bad lines, and `pyllm generate`'s own output for it (one process)."""
    from pyllm.generate_job import run_job
    from pyllm.sampling_params import SamplingParams

    folder = tmp_path_factory.mktemp("single")
    src = _write_input(folder / "in.jsonl", _records(), BAD_LINES)
    out = folder / "out.jsonl"
    run_job(
        src,
        out,
        model=tiny_model,
        base_params=SamplingParams(max_tokens=MAX_TOKENS),
        max_num_seqs=16,
    )
    return src, _by_key(_lines(out))


# ------------------------------------------------------------------ the batch callable, no Ray


@pytest.fixture(scope="module")
def generator(tiny_model):
    from pyllm.distributed import GenerateBatch

    return GenerateBatch(tiny_model, {"max_tokens": MAX_TOKENS}, max_num_seqs=8)


def test_callable_answers_every_batch_shape_like_the_single_process_job(generator, single_process):
    """A dict of columns, a pandas DataFrame and a pyarrow Table of the same records give the
    same output records as `pyllm generate` wrote, row for row, bad records included."""
    pa = pytest.importorskip("pyarrow")
    pd = pytest.importorskip("pandas")
    _, expected = single_process
    records = [*_records(12), {"id": "no-prompt"}]
    columns = {
        name: [r.get(name) for r in records]
        for name in ("id", "prompt", "messages", "temperature", "seed", "top_k")
    }
    want = [json.loads(expected[r["id"]]) for r in records]
    want[-1]["line"] = len(records)  # without a "line" column, a row's number is its position
    for batch in (columns, pd.DataFrame(columns), pa.Table.from_pydict(columns)):
        out = generator(batch)
        got = (
            out["result"]
            if isinstance(out, dict)
            else out.column("result").to_pylist()
            if hasattr(out, "column")
            else list(out["result"])
        )
        assert [json.loads(g) for g in got] == want
        texts = list(out["text"]) if not hasattr(out, "column") else out.column("text").to_pylist()
        assert texts[:-1] == [w["text"] for w in want[:-1]] and texts[-1] is None
        errors = (
            list(out["error"]) if not hasattr(out, "column") else out.column("error").to_pylist()
        )
        assert errors[-1].startswith("invalid_record: ") and errors[0] is None


def test_callable_keeps_a_record_line_and_its_number(generator):
    rows = {
        "id": ["a", "b"],
        "line": [41, 42],
        "record": ['{"id": "a", "prompt": "hi", "metadata": {"k": 1}}', '{"id": "b", "prompt": 5}'],
    }
    out = [json.loads(r) for r in generator(rows)["result"]]
    assert out[0]["metadata"] == {"k": 1} and len(out[0]["token_ids"]) == MAX_TOKENS
    assert out[1]["line"] == 42 and out[1]["error"]["type"] == "invalid_record"


def test_callable_answers_openai_batch_requests_in_their_format(generator):
    request = {
        "custom_id": "q1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    }
    (line,) = generator({"record": [json.dumps(request)]})["result"]
    out = json.loads(line)
    assert out["custom_id"] == "q1" and out["response"]["status_code"] == 200
    assert out["response"]["body"]["usage"]["completion_tokens"] == 3


def test_unknown_model_is_refused_before_any_cluster_starts(monkeypatch, tmp_path):
    from pyllm.distributed import run_ray_job
    from pyllm.weights.resolve import ModelNotFoundError

    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray needed to be told
    src = _write_input(tmp_path / "in.jsonl", _records(2))
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        run_ray_job(str(src), str(tmp_path / "out.jsonl"), model="no-such-model")
    assert not (tmp_path / "out.jsonl").exists()


def test_parquet_parts_keep_every_record_and_resume_from_them(tmp_path):
    """A Parquet output keeps each record whole (its `result` column) beside the usual columns,
    and a second store on the same folder knows every key written by the first."""
    pq = pytest.importorskip("pyarrow.parquet")
    from pyllm.distributed.outputs import open_output

    records = [
        {
            "id": "a",
            "metadata": {"k": 1},
            "text": "x",
            "token_ids": [1],
            "finish_reason": "length",
            "usage": {"prompt_tokens": 2, "completion_tokens": 1},
        },
        {"id": None, "line": 7, "error": {"type": "invalid_json", "message": "line 7: ..."}},
        {
            "id": "batch_req_1",
            "custom_id": "q1",
            "response": None,
            "error": {"code": "invalid_record", "message": "..."},
        },
    ]
    store = open_output(str(tmp_path / "out.parquet"))
    for r in records:
        assert store.write(r)
    assert not store.write(records[0])  # a key already written is not written again
    store.close()
    assert open_output(str(tmp_path / "out.parquet")).done == {"a", 7, "q1"}
    (part,) = (tmp_path / "out.parquet").glob("part-*.parquet")
    table = pq.read_table(part)
    assert [json.loads(t) for t in table.column("result").to_pylist()] == records
    assert table.column("text").to_pylist() == ["x", None, None]


def test_retry_errors_is_refused_for_part_files():
    from pyllm.distributed.outputs import open_output

    with pytest.raises(ValueError, match="--retry-errors needs a local JSONL output"):
        open_output("s3://bucket/out/", retry_errors=True)


def test_ray_missing_is_one_clear_error(monkeypatch):
    from pyllm.distributed import RayMissingError, run_ray_job

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayMissingError, match=r'pip install "pyllm\[ray\]"'):
        run_ray_job("in.jsonl", "out.jsonl")


def test_cli_without_ray_installed_says_how_to_install(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    monkeypatch.setitem(sys.modules, "ray", None)
    src = _write_input(tmp_path / "in.jsonl", _records(2))
    result = CliRunner().invoke(
        cli, ["generate", "--ray", "-i", str(src), "-o", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 2
    assert 'pip install "pyllm[ray]"' in result.output


def test_worker_plan_follows_the_cluster():
    from pyllm.distributed.ray_job import plan_workers

    gpu = plan_workers({"CPU": 32, "GPU": 4}, device="auto", int8=False, workers=None)
    assert (gpu.workers, gpu.device, gpu.ray_args["num_gpus"]) == (4, "cuda", 1)
    nodes = plan_workers({"CPU": 32, "pyllm_node": 2}, device="auto", int8=False, workers=None)
    assert (nodes.workers, nodes.ray_args["resources"], nodes.threads) == (2, {"pyllm_node": 1}, 0)
    cpus = plan_workers({"CPU": 8}, device="auto", int8=False, workers=2)
    assert (cpus.workers, cpus.device, cpus.threads) == (2, "cpu", 4)
    assert (
        plan_workers({"CPU": 8, "GPU": 1}, device="auto", int8=True, workers=None).device == "cpu"
    )
    with pytest.raises(ValueError, match="no GPUs"):
        plan_workers({"CPU": 8}, device="cuda", int8=False, workers=None)


# ------------------------------------------------------------------ on a local Ray cluster


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "pyllm[ray]")')
    pytest.importorskip("ray.data", reason='Ray Data is not installed (pip install "pyllm[ray]")')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _run(src, out, model, **kw):
    from pyllm.distributed import run_ray_job
    from pyllm.sampling_params import SamplingParams

    kw.setdefault("workers", 2)
    kw.setdefault("batch_size", 32)
    return run_ray_job(
        str(src),
        str(out),
        model=model,
        base_params=SamplingParams(max_tokens=MAX_TOKENS),
        max_num_seqs=16,
        device="cpu",
        **kw,
    )


def test_ray_job_matches_single_process_byte_for_byte(
    ray_cluster, tiny_model, single_process, tmp_path
):
    src, expected = single_process
    out = tmp_path / "out.jsonl"
    summary = _run(src, out, tiny_model)
    got = _by_key(_lines(out))
    assert got == expected  # every key once, each line byte for byte the single process's
    assert summary.total == N_RECORDS + len(BAD_LINES)
    assert summary.errors == len(BAD_LINES) and summary.completed == N_RECORDS
    assert summary.generated_tokens == N_RECORDS * MAX_TOKENS


def test_ray_job_resumes_a_partial_output(ray_cluster, tiny_model, single_process, tmp_path):
    """An output holding part of the job (here: written by the single-process job, and torn
    by a kill mid-line) is finished, each key once; the done keys are not run again."""
    src, expected = single_process
    lines = list(expected.values())
    out = tmp_path / "out.jsonl"
    out.write_text("".join(line + "\n" for line in lines[:60]) + lines[60][:25], encoding="utf-8")
    summary = _run(src, out, tiny_model)
    assert summary.skipped == 60 and summary.completed + summary.errors == len(lines) - 60
    assert _by_key(_lines(out)) == expected
    again = _run(src, out, tiny_model)
    assert again.skipped == len(lines) and again.completed == 0


def _map_worker_pids() -> list[int]:
    """Processes of Ray Data's actors (their process title names the map worker), newest first
    (an earlier run's actors may still be exiting)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            started = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            continue
        if b"MapWorker" in title and b"GenerateBatch" in title:
            found.append((started, int(entry.name)))
    return [pid for _, pid in sorted(found, reverse=True)]


def test_ray_job_survives_a_killed_worker(ray_cluster, tiny_model, single_process, tmp_path):
    """SIGKILL one actor's process once results flow: Ray restarts it and runs its batches
    again; the output still has every key exactly once, with the single process's text."""
    src, expected = single_process
    out = tmp_path / "out.jsonl"
    killed: list[int] = []

    def kill_one(obj: dict) -> None:
        if killed:
            return
        pids = _map_worker_pids()
        assert pids, "no actor process found to kill"
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    _run(src, out, tiny_model, batch_size=8, on_result=kill_one)
    assert killed
    assert _by_key(_lines(out)) == expected


def test_parquet_in_url_out_and_cli(ray_cluster, tiny_model, single_process, tmp_path):
    """Parquet input and a URL output (fsspec's in-memory filesystem: a folder of JSONL parts);
    then the same job through `pyllm generate --ray` into a local file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from pyllm.cli.main import cli

    _, expected = single_process
    records = _records(40)
    src = tmp_path / "in.parquet"
    names = ("id", "prompt", "messages", "temperature", "seed", "top_k")
    pq.write_table(pa.table({n: [r.get(n) for r in records] for n in names}), src)
    url = "memory://pyllm-test/out"
    first = _run(src, url, tiny_model)
    assert first.completed == 40
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    parts = [p for p in fs.find(root) if "/part-" in p]
    lines = [line for p in parts for line in fs.cat(p).decode().splitlines()]
    assert _by_key(lines) == {r["id"]: expected[r["id"]] for r in records}
    assert _run(src, url, tiny_model).skipped == 40  # resumed from the parts

    out = tmp_path / "cli.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "generate",
            "--ray",
            "--ray-workers",
            "1",
            "-i",
            str(src),
            "-o",
            str(out),
            "-m",
            tiny_model,
            "--max-tokens",
            str(MAX_TOKENS),
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _by_key(_lines(out)) == {r["id"]: expected[r["id"]] for r in records}
