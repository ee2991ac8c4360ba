"""scripts/check_suppressions.py: a noqa / type: ignore passes only with a reason on its line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_suppressions.py"
_spec = importlib.util.spec_from_file_location("check_suppressions", _SCRIPT)
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


@pytest.mark.parametrize(
    "line",
    [
        "x = 1  # noqa: E731 - a one-line callback",
        "import a  # noqa: F401 (re-exported)",
        "def f(self):  # type: ignore[override]  # a property over a class attribute",
        "y = g()  # type: ignore[attr-defined, misc]  # protobuf-generated: no stubs",
        "z = 2  # plain comment, nothing suppressed",
        's = "# noqa: E501"  # the text in a string is not a comment',
    ],
)
def test_accepted(tmp_path: Path, line: str) -> None:
    path = tmp_path / "ok.py"
    path.write_text(line + "\n", encoding="utf-8")
    assert list(check.unexplained(path)) == []


@pytest.mark.parametrize(
    "line",
    [
        "x = 1  # noqa: E731",
        "x = 1  # noqa",
        "x = 1  # noqa: E731, F401 -",
        "y = g()  # type: ignore[attr-defined]",
        "y = g()  # type: ignore",
    ],
)
def test_refused(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text("a = 0\n" + line + "\n", encoding="utf-8")
    assert [n for n, _ in check.unexplained(path)] == [2]


def test_main_counts_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1  # noqa: E731\n", encoding="utf-8")
    (tmp_path / "pkg" / "b.py").write_text("x = 1  # noqa: E731 - why\n", encoding="utf-8")
    assert check.main([str(tmp_path / "pkg")]) == 1
    out = capsys.readouterr().out
    assert "a.py:1:" in out and "b.py" not in out
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n", encoding="utf-8")
    assert check.main([str(tmp_path / "pkg")]) == 0
