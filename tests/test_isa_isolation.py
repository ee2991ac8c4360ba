"""A build made on an AVX-512 machine must still run on a CPU without it.

The *_avx2.cpp / *_avx512.cpp files are compiled with wider instruction sets. If one of them
instantiates an inline function or template that baseline code also uses (std::vector<float>'s
members, a helper from a shared header), the linker keeps ONE copy of that weak symbol — possibly
the AVX-512 one — and baseline code then executes AVX-512 instructions: SIGILL on an older CPU,
even though dispatch never chose the AVX-512 path. So no weak symbol may be defined both in an
ISA-specific object and in a baseline one. Checked on the object files of the installed build.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

import pyllm

ROOT = Path(pyllm.__file__).resolve().parent.parent


def _object_dirs() -> list[Path]:
    return [d for d in (ROOT / "build").glob("*/CMakeFiles/_C.dir") if d.parent.parent.name != "asan"]


def _is_isa_object(name: str) -> bool:
    return "_avx2.cpp" in name or "_avx512.cpp" in name


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils' nm is not installed")
def test_no_weak_symbol_shared_between_isa_and_baseline_objects():
    dirs = _object_dirs()
    if not dirs:
        pytest.skip("no build tree with object files next to the package (not an editable build)")
    for d in dirs:
        owners: dict[str, set[str]] = defaultdict(set)
        objects = sorted(d.rglob("*.cpp.o"))
        assert objects, f"no object files in {d}"
        for obj in objects:
            out = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True,
                                 text=True, check=True).stdout
            for line in out.splitlines():
                parts = line.split()
                # W/V: weak symbols (inline functions, template instantiations) that the linker
                # deduplicates; u: unique global symbols (static locals of inline functions).
                if len(parts) == 3 and parts[1] in ("W", "V", "u") and parts[1] != "DW":
                    if not parts[2].startswith("DW.ref."):
                        owners[parts[2]].add(obj.name)
        shared = sorted(sym for sym, objs in owners.items()
                        if any(_is_isa_object(o) for o in objs) and any(not _is_isa_object(o) for o in objs))
        demangled = subprocess.run(["c++filt"], input="\n".join(shared), capture_output=True,
                                   text=True).stdout.splitlines() if shared else []
        assert not shared, ("weak symbols defined in both ISA-specific and baseline objects "
                            f"(make them static / anonymous-namespace, or keep std containers "
                            f"out of ISA files): {demangled[:10]}")
