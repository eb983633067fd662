"""Namespaces, veth, processes and VictoriaMetrics for the benchmarks that run the agent (root only).

Small copies of what tests/netns.py and tests/vm.py do, without pytest. The rules that protect the
host: only namespaces made here are touched (never the root namespace's interfaces), addresses
only from 198.51.100.0/24 (and 127.0.0.1 inside a namespace), every loop bounded in count and
time, every command with a timeout, and namespaces and processes removed in ``finally``.

Child processes get every CPU back (bench/run.py pins itself, and children would inherit that):
a benchmark that wants a CPU for a child pins it itself (e.g. iperf3 -A).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AGENT_IP4", "PEER_IP4", "AGENT_MAC", "PEER_MAC", "Pair", "veth_pair", "in_ns", "run_cmd", "Proc",
           "VictoriaMetrics", "xtrace_cmd", "cpu_seconds", "status_kib", "CLK_TCK"]

CMD_TIMEOUT = 20.0
AGENT_IP4 = "198.51.100.1"
PEER_IP4 = "198.51.100.2"
AGENT_MAC = "02:00:00:00:01:01"
PEER_MAC = "02:00:00:00:01:02"
VM_BINARY = "/usr/bin/victoria-metrics"
VM_PORT = 8428  # a fresh namespace has every port free
CLK_TCK = os.sysconf("SC_CLK_TCK")

_seq = itertools.count()


def _all_cpus() -> None:
    """preexec_fn: undo bench/run.py's pinning in the child."""
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except OSError:
        pass


def xtrace_cmd() -> list[str]:
    """The CLI next to the running interpreter (the venv), else `python -m xtrace_catch`."""
    script = Path(sys.executable).parent / "xtrace-catch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "xtrace_catch"]


def run_cmd(cmd: Sequence[str], *, timeout: float = CMD_TIMEOUT, check: bool = True,
            input_: str | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input_,
                       preexec_fn=_all_cpus)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def in_ns(ns: str, cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return run_cmd(["ip", "netns", "exec", ns, *cmd], **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Pair:
    """The agent's namespace `ns` (interface `ifname`, AGENT_IP4) and the peer's (`peer_if`, PEER_IP4)."""

    ns: str
    peer_ns: str
    ifname: str
    peer_if: str


def _wait_up(ns: str, ifname: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(500):
        if json.loads(run_cmd(["ip", "-j", "-n", ns, "link", "show", ifname]).stdout)[0].get("operstate") == "UP":
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    raise RuntimeError(f"{ifname} in {ns} did not come up within {timeout} s")


@contextmanager
def veth_pair(tag: str = "b") -> Iterator[Pair]:
    """Fresh namespaces `xb<tag><pid>-<n>a/b` joined by a veth pair: up, addressed, static neighbours
    (no ARP), IPv6 off (the kernel sends nothing by itself), lo up. Deleted in `finally`."""
    n = next(_seq)
    base = f"xb{tag}{os.getpid()}-{n}"
    ns, peer_ns = base + "a", base + "b"
    ifname, peer_if = f"xb{tag}a{n}", f"xb{tag}b{n}"
    made: list[str] = []
    try:
        for name in (ns, peer_ns):
            run_cmd(["ip", "netns", "add", name])
            made.append(name)
            in_ns(name, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1"])
            run_cmd(["ip", "-n", name, "link", "set", "lo", "up"])
        run_cmd(["ip", "-n", ns, "link", "add", ifname, "address", AGENT_MAC, "type", "veth",
                 "peer", "name", peer_if, "address", PEER_MAC, "netns", peer_ns])
        run_cmd(["ip", "-n", ns, "addr", "add", f"{AGENT_IP4}/24", "dev", ifname])
        run_cmd(["ip", "-n", peer_ns, "addr", "add", f"{PEER_IP4}/24", "dev", peer_if])
        for name, dev, ip, mac in ((ns, ifname, PEER_IP4, PEER_MAC), (peer_ns, peer_if, AGENT_IP4, AGENT_MAC)):
            run_cmd(["ip", "-n", name, "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent"])
        run_cmd(["ip", "-n", ns, "link", "set", ifname, "up"])
        run_cmd(["ip", "-n", peer_ns, "link", "set", peer_if, "up"])
        _wait_up(ns, ifname)
        _wait_up(peer_ns, peer_if)
        yield Pair(ns, peer_ns, ifname, peer_if)
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=CMD_TIMEOUT)


# -- processes ------------------------------------------------------------------------------------


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


def _kill(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL a process still running and reap it (bounded)."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Proc:
    """A command inside a namespace (``ip netns exec`` execs it: the pid is the command's own), its
    stdout and stderr collected by threads. Context manager: killed and reaped on exit.
    `on_line(line, pid)` runs in the stdout thread for every line (e.g. to sample /proc); a line
    for which it returns False is not kept in `out`."""

    ns: str
    cmd: Sequence[str]
    on_line: object = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[str] | None = None
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Proc:
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *self.cmd], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=_all_cpus, env=self.env)
        for stream, sink, hook in ((self.proc.stdout, self.out, self.on_line), (self.proc.stderr, self.err, None)):
            t = threading.Thread(target=self._pump, args=(stream, sink, hook), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _pump(self, stream: object, sink: list[str], hook: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            line = line.rstrip("\n")
            if hook is not None and hook(line, self.pid) is False:  # type: ignore[operator]
                continue
            with self._cond:
                sink.append(line)
                self._cond.notify_all()

    def wait_stderr(self, text: str, timeout: float = 20.0) -> str:
        """The first stderr line containing `text`; RuntimeError if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            for _ in range(100_000):
                for line in self.err:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                assert self.proc is not None
                if left <= 0 or self.proc.poll() is not None:
                    break
                self._cond.wait(min(left, 0.1))
        raise RuntimeError(f"no stderr line with {text!r} within {timeout} s; stderr: {self.err[-10:]}")

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout)
        return rc

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if it hangs; the exit code (None if killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def __exit__(self, *exc: object) -> None:
        _kill(self.proc)
        for t in self._threads:
            t.join(5)
        for s in (self.proc.stdout, self.proc.stderr) if self.proc else ():
            if s:
                s.close()


# -- VictoriaMetrics --------------------------------------------------------------------------------


class VictoriaMetrics:
    """Debian's victoria-metrics on 127.0.0.1:8428 inside `ns`, data in a temporary directory.
    Context manager: killed and its data removed on exit. HTTP goes through ``ip netns exec NS curl``."""

    def __init__(self, ns: str) -> None:
        if not Path(VM_BINARY).exists():
            raise RuntimeError(f"{VM_BINARY} is missing: install Debian's victoria-metrics package (make deps)")
        self.ns = ns
        self.base = f"http://127.0.0.1:{VM_PORT}"
        self.dir = Path(tempfile.mkdtemp(prefix="xb-vm-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> VictoriaMetrics:
        try:
            log = open(self.dir / "vm.log", "wb")
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, VM_BINARY, "-storageDataPath", str(self.dir / "data"),
                 "-httpListenAddr", f"127.0.0.1:{VM_PORT}", "-retentionPeriod", "100y"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_all_cpus)
            log.close()
            deadline = time.monotonic() + 20
            for _ in range(400):
                if self.proc.poll() is not None:
                    break
                code, body = self.get("/health", timeout=2)
                if code == 200 and body.strip() == "OK":
                    return self
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            tail = (self.dir / "vm.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"victoria-metrics did not become healthy: {tail}")
        except BaseException:
            self.__exit__()
            raise

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        p = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-sS", "-m", str(timeout), "-o", "-",
                            "-w", "\n%{http_code}", self.base + path],
                           capture_output=True, text=True, timeout=timeout + 5)
        out, _, code = p.stdout.rpartition("\n")
        return (int(code) if code.strip().isdigit() else 0), out

    def _get_json(self, path: str, params: list[tuple[str, str]]) -> str | None:
        from urllib.parse import urlencode

        self.get("/internal/force_flush")  # what was accepted becomes searchable
        code, body = self.get(f"{path}?{urlencode(params)}", timeout=30)
        return body if code == 200 else None

    def series_count(self, match: str) -> int | None:
        """How many series match (all time); None on an error."""
        body = self._get_json("/api/v1/series", [("match[]", match), ("start", "0")])
        try:
            return len(json.loads(body)["data"]) if body is not None else None
        except (ValueError, KeyError):
            return None

    def last_values(self, match: str) -> dict[str, float]:
        """{metric name: value at its latest timestamp} of the matching series (the largest if several)."""
        body = self._get_json("/api/v1/export", [("match[]", match), ("start", "0")])
        out: dict[str, float] = {}
        for line in (body or "").splitlines():
            try:
                s = json.loads(line)
                name = s["metric"]["__name__"]
                ts, vals = s["timestamps"], s["values"]
                v = float(vals[max(range(len(ts)), key=ts.__getitem__)])
            except (ValueError, KeyError, TypeError):
                continue
            out[name] = max(v, out.get(name, v))
        return out

    def __exit__(self, *exc: object) -> None:
        _kill(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
