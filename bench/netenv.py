"""What the benchmarks that run the agent need beyond the tests' helpers (root only): processes with
every CPU, their CPU time and memory from /proc, and VictoriaMetrics in a namespace.

Namespaces, veth pairs and processes in them are tests/netns.py's (``veth_pair(prefix="xb...")``,
``Proc``), VictoriaMetrics is tests/vm.py's, with their rules: only namespaces made there are
touched (never the root namespace's interfaces), addresses only from the documentation ranges, every
loop bounded and every command with a timeout, namespaces and processes removed in ``finally``.

Children get every CPU back (bench/run.py pins itself, and children would inherit that): a
benchmark that wants a CPU for a child pins it itself (e.g. iperf3 -A).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import common  # noqa: F401 - first: puts tests/ (netns, vm) on the import path
import netns
import vm

__all__ = ["all_cpus", "unpinned", "proc", "cpu_seconds", "status_kib", "CLK_TCK", "victoria_metrics",
           "series_count", "last_values"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def all_cpus() -> None:
    """preexec_fn: undo bench/run.py's pinning in the child."""
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except OSError:
        pass


@contextmanager
def unpinned() -> Iterator[None]:
    """Children started inside get every CPU (this thread's mask is restored after)."""
    mask = os.sched_getaffinity(0)
    all_cpus()
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


def proc(ns: str, cmd: Sequence[str], **kw: object) -> netns.Proc:
    """A :class:`netns.Proc` whose child runs on every CPU."""
    return netns.Proc(ns, cmd, preexec_fn=all_cpus, **kw)  # type: ignore[arg-type]


def cpu_seconds(pid: int, system: bool = True) -> float:
    """utime + stime of a process (all its threads), seconds; utime alone without `system`."""
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + (int(rest[12]) if system else 0)) / CLK_TCK  # fields 14 and 15 of stat(5)


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmHWM, VmRSS), 0 if absent."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@contextmanager
def victoria_metrics(ns: str) -> Iterator[vm.VictoriaMetrics]:
    """tests/vm.py's VictoriaMetrics on 127.0.0.1:8428 inside `ns` (lo brought up there), on every CPU,
    data in a temporary directory; killed and its data removed on exit."""
    netns.in_ns(ns, ["ip", "link", "set", "lo", "up"])
    with tempfile.TemporaryDirectory(prefix="xb-vm-") as tmp:
        v = vm.VictoriaMetrics(Path(tmp) / "data", ns=ns)
        try:
            with unpinned():
                v.start()
            yield v
        finally:
            v.kill()


def series_count(v: vm.VictoriaMetrics, match: str) -> int | None:
    """How many series match (all time); None on an error."""
    try:
        return len(v.export(match))
    except (AssertionError, ValueError, OSError, subprocess.SubprocessError):
        return None


def last_values(v: vm.VictoriaMetrics, match: str) -> dict[str, float]:
    """{metric name: value at its latest timestamp} of the matching series (the largest if several);
    empty on an error."""
    out: dict[str, float] = {}
    try:
        series = v.export(match)
    except (AssertionError, ValueError, OSError, subprocess.SubprocessError):
        return out
    for s in series:
        name = str(s["metric"]["__name__"])  # type: ignore[index]
        val = vm.last_value(s)
        out[name] = max(val, out.get(name, val))
    return out
