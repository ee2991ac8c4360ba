"""How long `pyllm --help` takes with ten third-party plugins installed.

    python bench/cli_startup.py [--runs 9]

Makes ten trivial plugin distributions (a module registering a CLI command and a sampler step,
plus a .dist-info with a `pyllm` entry point) in a temporary folder put on PYTHONPATH, then times
the installed `pyllm` console script in fresh processes: `pyllm --help` with no extra plugins, with
the ten, and with the ten excluded by PYLLM_PLUGINS=builtin; `python -c pass` is the floor.
Prints the median and minimum wall time of each and the median CPU time (user + sys), which is
steadier than wall time when the machine is busy.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLUGIN_SOURCE = '''\
import click
from pyllm.hookspecs import hookimpl


class Step:
    name = "bench_step_{i}"

    def __call__(self, logits, context):
        return logits


@hookimpl
def register_commands(register):
    @click.command(name="bench-{i}")
    def cmd():
        """Benchmark plugin command {i}."""

    register(cmd)


@hookimpl
def register_samplers(register):
    register("bench_step_{i}", Step())
'''


def make_plugins(root: Path, count: int) -> None:
    for i in range(count):
        (root / f"pyllm_bench{i}.py").write_text(PLUGIN_SOURCE.format(i=i))
        info = root / f"pyllm_bench{i}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: pyllm-bench{i}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[pyllm]\nbench{i} = pyllm_bench{i}\n")


def time_command(cmd: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall times and CPU times (user + sys of the child; steadier on a busy machine)."""
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--plugins", type=int, default=10)
    args = parser.parse_args()

    pyllm = str(Path(sys.executable).with_name("pyllm"))
    base_env = {k: v for k, v in os.environ.items() if k != "PYLLM_PLUGINS"}
    with tempfile.TemporaryDirectory() as tmp:
        make_plugins(Path(tmp), args.plugins)
        with_plugins = {**base_env, "PYTHONPATH": tmp}
        check = subprocess.run([pyllm, "--help"], env=with_plugins, capture_output=True,
                               text=True)
        listed = sum(f"bench-{i}" in check.stdout for i in range(args.plugins))
        assert listed == args.plugins, f"only {listed} plugin commands in --help"
        cases = [
            ("python -c pass (floor)", [sys.executable, "-c", "pass"], base_env),
            ("pyllm --help, built-ins only", [pyllm, "--help"], base_env),
            (f"pyllm --help, {args.plugins} plugins", [pyllm, "--help"], with_plugins),
            (f"pyllm --help, {args.plugins} installed, PYLLM_PLUGINS=builtin", [pyllm, "--help"],
             {**with_plugins, "PYLLM_PLUGINS": "builtin"}),
            (f"pyllm plugins, {args.plugins} plugins", [pyllm, "plugins"], with_plugins),
        ]
        print(f"{'command':<58} {'wall median':>11} {'wall min':>9} {'cpu median':>11}"
              f"   ({args.runs} runs each, load average {os.getloadavg()[0]:.1f})")
        for label, cmd, env in cases:
            wall, cpu = time_command(cmd, env, args.runs)
            print(f"{label:<58} {statistics.median(wall) * 1000:9.0f}ms {min(wall) * 1000:7.0f}ms "
                  f"{statistics.median(cpu) * 1000:9.0f}ms")


if __name__ == "__main__":
    main()
