"""Turn a .cu file into C++ for the CUDA emulator (see include/emu/device.h).

Three source changes, each kept on its own line so compiler messages and the barrier sites the
emulator reports keep the .cu file's line numbers (a ``#line`` directive names the original):

- ``kernel<<<grid, block, shared, stream>>>(args)`` becomes
  ``::emu::launch(kernel, grid, block, shared, stream)(args)``;
- ``extern __shared__ T name[];`` (dynamic shared memory) becomes a pointer to the launch's buffer,
  and ``__shared__ T a[N], b;`` becomes ``static T a[N], b;`` plus a call that poisons each
  variable when a block first reaches it (blocks run one at a time, so a static is per block);
- ``__launch_bounds__(N)`` adds a check of the block size as the kernel's first statement.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w\s:]*?)\s+(\w+)\s*\[\s*\]\s*;")
_SHARED = re.compile(r"__shared__\s+([^;]+);")
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
_IDENT = re.compile(r"[A-Za-z_]\w*")


class RewriteError(ValueError):
    """A construct the rewriter does not understand (the emulator build stops with it)."""


def _kernel_start(text: str, end: int) -> int:
    """Where the kernel expression ending at `end` (just before ``<<<``) starts: an identifier,
    possibly qualified, possibly with template arguments."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if i > 0 and text[i - 1] == ">":  # template arguments: back to the matching '<'
        depth = 0
        while i > 0:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
        else:
            raise RewriteError("unbalanced template arguments before <<<")
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def _rewrite_launches(text: str) -> str:
    out, pos = [], 0
    while (start := text.find("<<<", pos)) >= 0:
        close = text.find(">>>", start)
        if close < 0:
            raise RewriteError("<<< without >>>")
        k0 = _kernel_start(text, start)
        kernel = text[k0:start].strip()
        if not kernel:
            raise RewriteError(f"no kernel before <<< at offset {start}")
        config = text[start + 3:close]
        out.append(text[pos:k0])
        out.append(f"::emu::launch({kernel}, {config})")
        pos = close + 3
    out.append(text[pos:])
    return "".join(out)


def _declarator_names(decl: str) -> list[str]:
    """``float a[N][M], b[K]`` -> ["a", "b"]: the names, split at top-level commas."""
    parts, depth, cur = [], 0, []
    for ch in decl:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    names = []
    for part in parts:
        idents = _IDENT.findall(part.split("[", 1)[0].split("=", 1)[0])
        if not idents:
            raise RewriteError(f"cannot find the name in __shared__ declarator {part!r}")
        names.append(idents[-1])
    return names


def _rewrite_shared(text: str) -> str:
    text = _DYNAMIC_SHARED.sub(
        lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(::emu::dynamic_shared());",
        text)

    def static(m: re.Match) -> str:
        decl = m.group(1)
        names = _declarator_names(decl)
        poison = " ".join(f"::emu::shared_declared(&{n}, sizeof({n}));" for n in names)
        return f"static {decl}; {poison}"

    return _SHARED.sub(static, text)


def _rewrite_launch_bounds(text: str) -> str:
    out, pos = [], 0
    for m in _LAUNCH_BOUNDS.finditer(text):
        body = text.find("{", m.end())
        if body < 0:
            raise RewriteError("__launch_bounds__ without a function body")
        out.append(text[pos:m.start()])
        out.append(text[m.end():body + 1])
        out.append(f" ::emu::check_launch_bounds({m.group(1)});")
        pos = body + 1
    out.append(text[pos:])
    return "".join(out)


def rewrite(text: str, origin: str) -> str:
    """C++ for the emulator from the text of a .cu file (origin: its path, for #line)."""
    body = _rewrite_launch_bounds(_rewrite_shared(_rewrite_launches(text)))
    if body.count("\n") != text.count("\n"):
        raise RewriteError(f"{origin}: the rewrite changed the line count")
    return f'#line 1 "{origin}"\n' + body


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: rewrite.py FILE.cu OUT.cpp", file=sys.stderr)
        return 2
    src, dst = Path(argv[1]), Path(argv[2])
    dst.write_text(rewrite(src.read_text(), str(src)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
