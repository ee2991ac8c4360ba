"""docs/cli.md is generated from the commands' --help (scripts/gen_cli_docs.py): this fails when
a command changed and the file was not regenerated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gen_cli_docs.py"


def gen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_docs_cli_md_is_up_to_date() -> None:
    result = gen("--check")
    assert result.returncode == 0, result.stderr


def test_check_catches_a_stale_file(tmp_path: Path) -> None:
    doc = tmp_path / "cli.md"
    assert gen("--doc", str(doc)).returncode == 0
    text = doc.read_text()
    assert "## `pyllm run`" in text and "## `pyllm aliases set`" in text
    assert "--temperature FLOAT" in text
    assert gen("--check", "--doc", str(doc)).returncode == 0
    doc.write_text(text.replace("0 = greedy", "0 = very greedy"))
    stale = gen("--check", "--doc", str(doc))
    assert stale.returncode == 1
    assert "is stale: run `python scripts/gen_cli_docs.py`" in stale.stderr
