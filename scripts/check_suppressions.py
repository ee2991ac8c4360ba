"""Fail when a `# noqa` or `# type: ignore` comment does not say why on its line.

    python scripts/check_suppressions.py pyllm plugins scripts

A suppression is accepted when some words follow its codes on the same line, as in
`# noqa: BLE001 - a broken source must not hide the others` or
`# type: ignore[override]  # a property over a class attribute`. Run by scripts/lint.sh.
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

# The suppression and its codes, then whatever follows on the line.
_SUPPRESSION = re.compile(
    r"#\s*(?:noqa(?::\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(?:\[[^\]]*\])?)(.*)"
)
_REASON = re.compile(r"[A-Za-z]{3,}")


def unexplained(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, comment) of each suppression in `path` with no reason after its codes."""
    source = path.read_text(encoding="utf-8")
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        match = _SUPPRESSION.search(tok.string)
        if match and not _REASON.search(match.group(1)):
            yield tok.start[0], tok.string


def main(roots: list[str]) -> int:
    found = 0
    for root in roots:
        base = Path(root)
        files = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in files:
            for line, comment in unexplained(path):
                print(f"{path}:{line}: say why on the line: {comment}")
                found += 1
    if found:
        print(f"{found} suppression(s) without a reason", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["pyllm", "plugins", "scripts"]))
