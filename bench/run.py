"""Run xtrace-catch's benchmarks: ``make bench``, or ``.venv/bin/python bench/run.py [--only NAME] [--quick]``.

Each benchmark is a module in bench/ listed in MODULES, with ``run(*, quick: bool = False) -> str``
returning a markdown section. Sections go to stdout and to bench/results/<name>.md (gitignored),
each under a header naming the machine and the commit; progress goes to stderr.
The process is pinned to one CPU (``--cpu``, default the last allowed one) so a run is not
migrated mid-measurement. See bench/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# Benchmark modules, in the order they run. Add new ones here.
MODULES = ["datapath", "variants", "collector", "export", "agent", "iperf"]

sys.path.insert(0, str(BENCH_DIR))

from xtrace_catch.kernel import libbpf  # noqa: E402
from xtrace_catch.kernel.caps import check_bpf_privileges  # noqa: E402
from xtrace_catch.errors import XtraceError  # noqa: E402


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _header(name: str, quick: bool, cpu: int) -> str:
    lib = libbpf.get()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<!-- bench/run.py {name}{' --quick' if quick else ''} -->\n"
        f"_{now}; commit {_git_commit()}; Linux {platform.release()}; {_cpu_model()}, "
        f"{os.cpu_count()} CPUs, pinned to CPU {cpu}; libbpf {lib.version_string}; "
        f"{'quick' if quick else 'full'} run._\n\n"
    )


def _pin(cpu: int | None) -> int:
    allowed = sorted(os.sched_getaffinity(0))
    if cpu is None:
        cpu = allowed[-1]
    elif cpu not in allowed:
        raise SystemExit(f"bench: CPU {cpu} is not available to this process (allowed: {allowed}); pick one of those")
    os.sched_setaffinity(0, {cpu})
    return cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--only", choices=MODULES, action="append", metavar="NAME",
                    help=f"run only this benchmark (repeatable); one of: {', '.join(MODULES)}")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and flows: a smoke run, not for numbers")
    ap.add_argument("--cpu", type=int, help="CPU to pin to (default: the last allowed one)")
    args = ap.parse_args(argv)

    try:
        check_bpf_privileges(need_net_admin=False)
    except XtraceError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    cpu = _pin(args.cpu)
    RESULTS_DIR.mkdir(exist_ok=True)

    failed = []
    for name in args.only or MODULES:
        module = importlib.import_module(name)
        try:
            section = module.run(quick=args.quick)
        except XtraceError as exc:
            print(f"bench: {name} failed: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        text = _header(name, args.quick, cpu) + section
        (RESULTS_DIR / f"{name}.md").write_text(text)
        print(text, flush=True)
        print(f"[{name}] written to {(RESULTS_DIR / f'{name}.md').relative_to(REPO)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
