"""What every benchmark shares: the import path, progress lines, the report's tail, the command line and
the results on disk.

Imported first by every bench module (its name sorts before the helpers it makes importable): it puts
bench/ and tests/ on ``sys.path``, so ``frames``, ``netns`` and ``vm`` are the tests' own frame builder,
namespace helper and VictoriaMetrics, and bench adds only what they lack (traffic.py, netenv.py,
empty.py).

``main`` is the command line of ``bench/run.py`` and of each benchmark run alone
(``.venv/bin/python bench/datapath.py --quick``): the privilege check, the CPU pin, then each
benchmark's markdown section under a header naming the machine and the commit, to stdout and to
bench/results/<name>.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TESTS_DIR = REPO / "tests"
RESULTS_DIR = BENCH_DIR / "results"

for _dir in (BENCH_DIR, TESTS_DIR):
    if str(_dir) not in sys.path:
        sys.path.insert(1, str(_dir))

# What a failed set-up raises: the tests' helpers assert (AssertionError), ours raise RuntimeError.
SETUP_ERRORS: tuple[type[BaseException], ...] = (AssertionError, RuntimeError, OSError, subprocess.SubprocessError)

T = TypeVar("T")


def progress(name: str, msg: str) -> None:
    print(f"[{name}] {msg}", file=sys.stderr, flush=True)


def status(ok: bool) -> str:
    return "ok" if ok else "**over**"


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def finish(section: str, anomalies: list[str], name: str, seconds: float) -> str:
    """A benchmark's markdown section, then its anomalies (or "none") and how long it took."""
    return "\n".join([section.rstrip("\n"), "", "### Anomalies", "", *([f"- {a}" for a in anomalies] or ["- none"]),
                      "", f"_{name} benchmark took {seconds:.0f} s._", ""])


# -- results ----------------------------------------------------------------------------------------


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


def header(command: str, cpu: int | None, quick: bool = False) -> str:
    """The line above a result: date, commit, kernel, CPU, libbpf, and how it was run."""
    from xtrace_catch.kernel import libbpf

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pinned = f"pinned to CPU {cpu}" if cpu is not None else "not pinned"
    return (
        f"<!-- {command}{' --quick' if quick else ''} -->\n"
        f"_{now}; commit {_git_commit()}; Linux {platform.release()}; {_cpu_model()}, "
        f"{os.cpu_count()} CPUs, {pinned}; libbpf {libbpf.get().version_string}; "
        f"{'quick' if quick else 'full'} run._\n\n"
    )


def publish(name: str, text: str) -> Path:
    """Write bench/results/<name>.md (gitignored) and print it; progress names the file."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(text)
    print(text, flush=True)
    progress(name, f"written to {path.relative_to(REPO)}")
    return path


def pin(cpu: int | None) -> int:
    """Pin this process to `cpu` (default: the last one allowed), so a run is not migrated halfway."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu is None:
        cpu = allowed[-1]
    elif cpu not in allowed:
        raise SystemExit(f"bench: CPU {cpu} is not available to this process (allowed: {allowed}); pick one of those")
    os.sched_setaffinity(0, {cpu})
    return cpu


# -- the command line -------------------------------------------------------------------------------


def main(names: Sequence[str], doc: str | None, argv: list[str] | None = None) -> int:
    """Run the benchmark modules `names`, or those of them picked with --only; 2 without the
    privileges, 1 if one failed. Each module has parameters FULL and QUICK and
    ``run(p, anomalies) -> str``, which returns its markdown section and adds to `anomalies`
    whatever missed a target or looked wrong; the anomalies and the time taken end the section."""
    from xtrace_catch.errors import XtraceError
    from xtrace_catch.kernel.caps import check_bpf_privileges

    ap = argparse.ArgumentParser(description=(doc or "").split("\n", 1)[0])
    if len(names) > 1:
        ap.add_argument("--only", choices=names, action="append", metavar="NAME",
                        help=f"run only this benchmark (repeatable); one of: {', '.join(names)}")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and flows: a smoke run, not for numbers")
    ap.add_argument("--cpu", type=int, help="CPU to pin to (default: the last allowed one)")
    args = ap.parse_args(argv)
    try:
        check_bpf_privileges(need_net_admin=False)
    except XtraceError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    cpu = pin(args.cpu)
    failed = []
    for name in getattr(args, "only", None) or names:
        module = importlib.import_module(name)
        anomalies: list[str] = []
        t0 = time.monotonic()
        try:
            section = module.run(module.QUICK if args.quick else module.FULL, anomalies)
        except XtraceError as exc:
            print(f"bench: {name} failed: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        section = finish(section, anomalies, name, time.monotonic() - t0)
        command = f"bench/{Path(sys.argv[0]).name}" + (f" --only {name}" if len(names) > 1 else "")
        publish(name, header(command, cpu, args.quick) + section)
    return 1 if failed else 0
