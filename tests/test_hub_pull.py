"""`pyllm pull hf.co/ORG/REPO[:QUANT]` against a local server in the Hub's URL layout
(HF_ENDPOINT): the listing with LFS hashes at /api/models/ORG/REPO, files at
/ORG/REPO/resolve/COMMIT/FILE with Range requests. A pull killed halfway resumes; a hash
mismatch keeps nothing; the pulled model is listed, shown, run by name and removed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf_builder as B
import numpy as np
import pytest
from click.testing import CliRunner

from pyllm.cli.main import cli
from pyllm.weights import hub
from pyllm.weights import pull as P

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_model(seed: int) -> bytes:
    """A small valid GGUF with a chat template and a 1 MB tensor (so a download has a middle)."""
    kvs = B.tiny_kvs() + [("tokenizer.chat_template", B.STRING, "{{ messages[0].content }}")]
    big = np.random.default_rng(seed).standard_normal(256 * 1024).astype(np.float32).tobytes()
    tensors = B.tiny_tensors(seed) + [B.Tensor("big.weight", (1024, 256), 0, big)]
    return B.build(kvs, tensors).data


class FakeHub:
    """Repositories served in the Hub's layout; records each request (path, Range header)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.listed_sha256: dict[str, str] = {}  # path -> a (wrong) sha256 to list instead
        self.requests: list[tuple[str, str | None]] = []
        self.stall_after: int | None = None  # send this many bytes, then hang
        self.drop_after: int | None = None  # send this many bytes, then close the connection
        self.release = threading.Event()

    def listing(self, repo_id: str) -> dict:
        siblings = []
        for path, data in self.repos[repo_id].items():
            sha = self.listed_sha256.get(path, hashlib.sha256(data).hexdigest())
            siblings.append({"rfilename": path, "size": len(data), "blobId": "b" * 40,
                             "lfs": {"sha256": sha, "size": len(data), "pointerSize": 134}})
        siblings.append({"rfilename": "README.md", "size": 5, "blobId": "c" * 40})
        return {"id": repo_id, "sha": COMMIT, "siblings": siblings}


def _handler(fake: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            fake.requests.append((path, self.headers.get("Range")))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and "/".join(parts[2:4]) in fake.repos:
                return self._send(200, json.dumps(fake.listing("/".join(parts[2:4]))).encode(),
                                  "application/json")
            if len(parts) >= 5 and parts[2] == "resolve" and parts[3] == COMMIT:
                files = fake.repos.get("/".join(parts[:2]), {})
                data = files.get("/".join(parts[4:]))
                if data is not None:
                    return self._file(data)
            self._send(404, b'{"error": "not found"}', "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self, data: bytes) -> None:
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes="):-1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            cut = fake.drop_after if fake.drop_after is not None else fake.stall_after
            if cut is None or start:
                self.wfile.write(body)
                return
            self.wfile.write(body[:cut])
            self.wfile.flush()
            if fake.drop_after is not None:
                self.close_connection = True
                return
            fake.release.wait(30)  # hang until the test is done with the client

    return Handler


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    fake = FakeHub()
    fake.repos["org/tiny-GGUF"] = {
        "Tiny-Q4_K_M.gguf": tiny_model(1),
        "Tiny-Q8_0.gguf": tiny_model(2),
        "sub/tiny.q4_k.gguf": tiny_model(3),
        "mmproj-Tiny-Q4_K_M.gguf": b"not a model",
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    home = tmp_path / "home"
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    for k, v in {"PYLLM_HOME": str(home), "HF_ENDPOINT": endpoint,
                 "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("PYLLM_OFFLINE", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(k, raising=False)
    fake.home = home  # type: ignore[attr-defined]
    fake.endpoint = endpoint  # type: ignore[attr-defined]
    yield fake
    fake.release.set()
    server.shutdown()
    server.server_close()


def folder(fake: FakeHub) -> Path:
    return fake.home / "models" / "hf.co" / "org" / "tiny-GGUF"  # type: ignore[attr-defined]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------ names and file choice

@pytest.mark.parametrize(("spec", "name"), [
    ("hf.co/org/repo", "hf.co/org/repo:Q4_K_M"),
    ("hf.co/org/repo:q8_0", "hf.co/org/repo:Q8_0"),
    ("huggingface.co/org/repo:latest", "hf.co/org/repo:Q4_K_M"),
    ("https://hf.co/org/repo.x:IQ4_XS", "hf.co/org/repo.x:IQ4_XS"),
])
def test_parse_name(spec: str, name: str) -> None:
    assert hub.parse_name(spec).name == name


@pytest.mark.parametrize("spec", ["hf.co/org", "hf.co/org/repo/extra", "hf.co/org/re po",
                                  "hf.co/org/repo:Q4 K"])
def test_bad_names_are_refused(spec: str) -> None:
    with pytest.raises(hub.HubNameError, match="hf.co/ORG/REPO|quant"):
        hub.parse_name(spec)


def test_pick_file_matches_the_quant_as_a_whole_part() -> None:
    files = [hub.HubFile(p, 1, None, None) for p in
             ["a/Tiny-Q4_K_M.gguf", "Tiny-Q4_K_S.gguf", "tiny.q4_k.gguf", "Tiny-Q8_0.gguf",
              "mmproj-Tiny-Q4_K_M.gguf", "README.md"]]
    pick = lambda q: hub.pick_file(hub.parse_name(f"hf.co/o/r:{q}"), files).path
    assert pick("Q4_K_M") == "a/Tiny-Q4_K_M.gguf"
    assert pick("q4_k") == "tiny.q4_k.gguf"
    assert pick("Q8_0") == "Tiny-Q8_0.gguf"
    with pytest.raises(hub.HubNameError, match="no Q2_K GGUF file; it has: Q4_K, Q4_K_M, "
                                               "Q4_K_S, Q8_0"):
        pick("Q2_K")
    split = [hub.HubFile(f"T-Q8_0-0000{i}-of-00002.gguf", 1, None, None) for i in (1, 2)]
    with pytest.raises(hub.HubNameError, match="split into 2 files"):
        hub.pick_file(hub.parse_name("hf.co/o/r:Q8_0"), split)


# ------------------------------------------------------------------ the pull

def test_pull_picks_the_default_quant_and_checks_the_hash(fake_hub) -> None:
    r = CliRunner().invoke(cli, ["pull", "hf.co/org/tiny-GGUF", "-q"])
    assert r.exit_code == 0, r.output
    dest = folder(fake_hub) / "Tiny-Q4_K_M.gguf"
    assert dest.read_bytes() == fake_hub.repos["org/tiny-GGUF"]["Tiny-Q4_K_M.gguf"]
    assert f"hf.co/org/tiny-GGUF:Q4_K_M: pulled, sha256 verified: {dest}" in r.stdout
    assert sorted(p.name for p in folder(fake_hub).iterdir()) == \
        [".pull.lock", "Tiny-Q4_K_M.gguf", "Tiny-Q4_K_M.gguf.verified"]
    assert (f"/org/tiny-GGUF/resolve/{COMMIT}/Tiny-Q4_K_M.gguf", None) in fake_hub.requests
    # again: nothing downloaded
    n = len(fake_hub.requests)
    r = CliRunner().invoke(cli, ["pull", "hf.co/org/tiny-GGUF:q4_k_m", "-q"])
    assert r.exit_code == 0 and "already pulled" in r.stdout
    assert len(fake_hub.requests) == n


def test_hash_mismatch_is_refused_and_nothing_kept(fake_hub) -> None:
    fake_hub.listed_sha256["Tiny-Q8_0.gguf"] = "f" * 64
    r = CliRunner().invoke(cli, ["pull", "hf.co/org/tiny-GGUF:Q8_0", "-q"])
    assert r.exit_code == 2
    assert f"does not match the Hub's {'f' * 64}; nothing was kept" in r.stderr
    assert [p.name for p in folder(fake_hub).iterdir()] == [".pull.lock"]


def test_interrupted_download_resumes(fake_hub) -> None:
    data = fake_hub.repos["org/tiny-GGUF"]["Tiny-Q8_0.gguf"]
    fake_hub.drop_after = len(data) // 2
    with pytest.raises(P.PullError, match="interrupted .* are kept: pull again to resume"):
        hub.pull_gguf("hf.co/org/tiny-GGUF:Q8_0", progress=False)
    (part,) = folder(fake_hub).glob(f".*{P.PART_SUFFIX}")
    kept = part.stat().st_size
    assert 0 < kept <= len(data) // 2
    fake_hub.drop_after = None
    path, downloaded = hub.pull_gguf("hf.co/org/tiny-GGUF:Q8_0", progress=False)
    assert downloaded and path.read_bytes() == data
    assert fake_hub.requests[-1][1] == f"bytes={kept}-"
    assert not list(folder(fake_hub).glob(f".*{P.PART_SUFFIX}"))


def test_killed_pull_resumes_where_it_stopped(fake_hub) -> None:
    """SIGKILL `pyllm pull` halfway: the part it left counts as nothing, and the next pull asks
    only for the missing bytes."""
    data = fake_hub.repos["org/tiny-GGUF"]["Tiny-Q4_K_M.gguf"]
    fake_hub.stall_after = len(data) // 2
    child = subprocess.Popen([sys.executable, "-m", "pyllm.cli.main", "pull",
                              "hf.co/org/tiny-GGUF", "-q"], env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        parts: list[Path] = []
        while time.monotonic() < deadline:
            parts = list(folder(fake_hub).glob(f".*{P.PART_SUFFIX}")) \
                if folder(fake_hub).is_dir() else []
            if parts and parts[0].stat().st_size >= len(data) // 4:
                break
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the pull never wrote half of the file")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        child.stderr.close()
    kept = parts[0].stat().st_size
    assert not (folder(fake_hub) / "Tiny-Q4_K_M.gguf").exists()
    assert P.cached_models() == []  # a part is not a model
    fake_hub.stall_after = None
    fake_hub.release.set()
    path, downloaded = hub.pull_gguf("hf.co/org/tiny-GGUF", progress=False)
    assert downloaded and sha(path.read_bytes()) == sha(data)
    assert fake_hub.requests[-1] == (f"/org/tiny-GGUF/resolve/{COMMIT}/Tiny-Q4_K_M.gguf",
                                     f"bytes={kept}-")


def test_offline_is_a_clear_error_without_requests(fake_hub, monkeypatch) -> None:
    monkeypatch.setenv("PYLLM_OFFLINE", "1")
    r = CliRunner().invoke(cli, ["pull", "hf.co/org/tiny-GGUF", "-q"])
    assert r.exit_code == 2 and "PYLLM_OFFLINE is set" in r.stderr
    assert fake_hub.requests == []


def test_unknown_repo_and_quant(fake_hub) -> None:
    r = CliRunner().invoke(cli, ["pull", "hf.co/org/missing", "-q"])
    assert r.exit_code == 2 and "cannot list the files of org/missing" in r.stderr
    r = CliRunner().invoke(cli, ["pull", "hf.co/org/tiny-GGUF:Q2_K", "-q"])
    assert r.exit_code == 2 and "has no Q2_K GGUF file; it has: Q4_K, Q4_K_M, Q8_0" in r.stderr


# ------------------------------------------------------------------ models, show, run, rm

def test_pulled_model_is_listed_shown_run_and_removed(fake_hub) -> None:
    runner = CliRunner()
    name = "hf.co/org/tiny-GGUF:Q4_K_M"
    r = runner.invoke(cli, ["run", "hf.co/org/tiny-GGUF", "hi"])  # running never downloads
    assert r.exit_code == 2 and f"run `pyllm pull {name}` first" in r.stderr
    assert fake_hub.requests == []
    assert runner.invoke(cli, ["pull", "hf.co/org/tiny-GGUF", "-q"]).exit_code == 0
    rows = json.loads(runner.invoke(cli, ["models", "--json"]).stdout)
    assert [(r["name"], r["status"]) for r in rows] == [(name, "verified")]

    r = runner.invoke(cli, ["show", "hf.co/org/tiny-GGUF", "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["architecture"] == "llama" and shown["context_length"] == 64
    assert shown["quant_types"]["F32"] == 2 and shown["quant_types"]["Q4_K"] == 1
    assert shown["parameters"] == 8 + 32 + 12 + 128 + 96 + 128 + 512 + 256 + 256 * 1024
    assert shown["chat_template"] == "{{ messages[0].content }}"
    assert shown["sampling_defaults"]["temperature"] == 0.7
    r = runner.invoke(cli, ["show", name])
    assert "architecture:   llama" in r.stdout and "Q4_K (1 tensor)" in r.stdout

    from pyllm.weights.resolve import resolve_model

    assert resolve_model(name) == resolve_model("hf.co/org/tiny-GGUF:q4_k_m") \
        == folder(fake_hub) / "Tiny-Q4_K_M.gguf"

    r = runner.invoke(cli, ["rm", "hf.co/org/tiny-GGUF"])
    assert r.exit_code == 0 and f"removed {name}" in r.stdout
    assert not (fake_hub.home / "models" / "hf.co" / "org").exists()
    assert runner.invoke(cli, ["rm", name]).exit_code == 2  # gone: says what is there


def test_damaged_hub_file_says_how_to_fix_it(fake_hub) -> None:
    path, _ = hub.pull_gguf("hf.co/org/tiny-GGUF:Q8_0", progress=False)
    time.sleep(0.05)
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 64)
    from pyllm.weights.resolve import resolve_model

    with pytest.raises(P.DamagedModelError,
                       match=r"run `pyllm pull --force hf.co/org/tiny-GGUF:Q8_0`"):
        resolve_model("hf.co/org/tiny-GGUF:Q8_0")
    path2, downloaded = hub.pull_gguf("hf.co/org/tiny-GGUF:Q8_0", progress=False)
    assert downloaded and path2 == path
    assert path.read_bytes() == fake_hub.repos["org/tiny-GGUF"]["Tiny-Q8_0.gguf"]


def test_show_hf_folder(tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "max_position_embeddings": 2048}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.3, "top_p": 0.9, "bos_token_id": 1}))
    save_file({"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5)},
              str(tmp_path / "model.safetensors"))
    r = CliRunner().invoke(cli, ["show", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert (shown["architecture"], shown["parameters"], shown["context_length"]) == \
        ("llama", 17, 2048)
    assert shown["quant_types"] == {"BF16": 1, "F32": 1}
    assert shown["chat_template"] == "{{ x }}"
    assert shown["sampling_suggested_by_file"] == {"temperature": 0.3, "top_p": 0.9}
    r = CliRunner().invoke(cli, ["show", "no-such-model"])
    assert r.exit_code == 2 and "never downloads" in r.stderr
