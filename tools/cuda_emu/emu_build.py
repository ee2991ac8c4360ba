"""Build pyllm_cuda_emu: csrc's CUDA kernels and their pyllm._C entries on the CUDA emulator.

Every csrc/**/*.cu and *.cuh file goes through rewrite.py, then g++ compiles them with the shim
headers of include/ and runtime.cpp into one Python extension module. The result is cached under
build/cuda_emu/<hash of every input>/, so an unchanged tree reuses it.

    python tools/cuda_emu/emu_build.py [--sanitize]   # prints the module's path
    EMU_CXXFLAGS="-g -O0" python tools/cuda_emu/emu_build.py   # a build to debug a kernel in
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CSRC = ROOT / "csrc"
MODULE = "pyllm_cuda_emu"

sys.path.insert(0, str(HERE))
from rewrite import rewrite  # noqa: E402

_FLAGS = ["-std=c++17", "-O2", "-g0", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off", "-Wall",
          "-Wno-unknown-pragmas", "-Wno-unused-parameter", "-Wno-unused-function", "-DPYLLM_WITH_CUDA=1",
          "-Dpyllm=pyllm_emu"]  # its own C++ types, apart from pyllm._C's (module.cpp)
_SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]


class BuildError(RuntimeError):
    """The emulator module could not be built (the compiler's output is in the message)."""


class ToolchainMissing(BuildError):
    """No C++ compiler, no pybind11 or not x86-64: the emulator cannot be built here at all."""


def _inputs() -> list[Path]:
    files = [p for p in CSRC.rglob("*") if p.suffix in {".cu", ".cuh", ".h", ".cpp"}]
    files += [p for p in HERE.rglob("*") if p.suffix in {".h", ".cpp", ".cu", ".py"}]
    return sorted(files)


def _key(flags: list[str]) -> str:
    h = hashlib.sha256(" ".join(flags + [sys.version, _compiler()]).encode())
    for p in _inputs():
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _pybind11_include() -> str:
    try:
        import pybind11
    except ImportError as e:
        raise ToolchainMissing("the CUDA emulator needs pybind11 (pip install pybind11)") from e
    return pybind11.get_include()


def module_path(sanitize: bool = False) -> Path:
    """Build the module if this tree has not been built yet; return the path of its .so."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise ToolchainMissing(f"the emulator's fiber switch is x86-64 assembly (this is {platform.machine()})")
    if shutil.which(_compiler()) is None:
        raise ToolchainMissing(f"no C++ compiler ({_compiler()!r}; set CXX)")
    # EMU_CXXFLAGS: more compiler flags (e.g. "-g -O0" to step through a kernel in gdb); they
    # are part of the cache key like the rest.
    flags = _FLAGS + (_SANITIZE if sanitize else []) + shlex.split(os.environ.get("EMU_CXXFLAGS", ""))
    out = ROOT / "build" / "cuda_emu" / _key(flags)
    target = out / (MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    if target.exists():
        return target
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per tree at a time (pytest -n, two runs)
        if not target.exists():
            _build(out, target, flags)
            _prune(out.parent, keep=out)
    return target


def _prune(cache: Path, keep: Path, newest: int = 6) -> None:
    """Remove all but the newest builds (each edit of a kernel makes a new one)."""
    builds = sorted((d for d in cache.iterdir() if d.is_dir() and d != keep),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for old in builds[newest - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def _build(out: Path, target: Path, flags: list[str]) -> None:
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    units = [HERE / "runtime.cpp", HERE / "module.cpp", CSRC / "bind_common.cpp",
             *sorted(CSRC.glob("*/bind_cuda.cpp"))]
    for p in sorted(CSRC.rglob("*.cu")) + sorted(CSRC.rglob("*.cuh")) + [HERE / "selftest.cu"]:
        rel = p.relative_to(CSRC) if p.is_relative_to(CSRC) else Path("cuda_emu") / p.name
        dst = src / (str(rel) + ".cpp" if p.suffix == ".cu" else rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(rewrite(p.read_text(), str(p.relative_to(ROOT))))
        if p.suffix == ".cu":
            units.append(dst)
    includes = [f"-I{src}", f"-I{HERE / 'include'}", f"-I{HERE}", f"-I{CSRC}",
                f"-I{sysconfig.get_paths()['include']}", f"-I{_pybind11_include()}"]

    def compile_one(unit: Path) -> Path:
        rel = unit.relative_to(src) if unit.is_relative_to(src) else unit.relative_to(ROOT)
        obj = out / "obj" / (str(rel).replace("/", "__") + ".o")
        obj.parent.mkdir(parents=True, exist_ok=True)
        cmd = [_compiler(), *flags, *includes, "-c", str(unit), "-o", str(obj)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"{shlex.join(cmd)}\n{done.stderr}")
        return obj

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, units))
    partial = target.with_suffix(".partial")
    cmd = [_compiler(), "-shared", *flags, *map(str, objects), "-o", str(partial)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"{shlex.join(cmd)}\n{done.stderr}")
    os.replace(partial, target)  # whole or absent: an interrupted build is rebuilt


def load(sanitize: bool = False):
    """Build (if needed) and import the module."""
    import importlib.util

    path = module_path(sanitize)
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sanitize", action="store_true", help="build with ASan and UBSan")
    args = parser.parse_args()
    try:
        print(module_path(args.sanitize))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
