"""A real VictoriaMetrics for the export tests (Debian's /usr/bin/victoria-metrics).

``VictoriaMetrics(tmp, ns=None)`` runs ``victoria-metrics -storageDataPath TMP
-httpListenAddr 127.0.0.1:PORT -retentionPeriod 100y`` either in the root namespace (a
free port) or inside a test network namespace (``ip netns exec NS``; the agent running
in that namespace then reaches it at 127.0.0.1). ``start()`` waits, bounded, for
``/health``; the process is always killed (context manager, or the ``victoria_metrics``
fixture). HTTP to a namespaced instance goes through ``ip netns exec NS curl``.

Queries: :meth:`export` (``/internal/force_flush`` first, then ``/api/v1/export``, so
what was accepted is searchable) and :meth:`query` (``/api/v1/query``).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BINARY = "/usr/bin/victoria-metrics"
VMAGENT = "/usr/bin/vmagent"  # the same Debian package
HTTP_TIMEOUT = 10.0  # seconds for any one HTTP call
START_TIMEOUT = 15.0  # seconds for /health to answer
DEFAULT_NS_PORT = 8428  # a fresh namespace has every port free
VMAGENT_NS_PORT = 8429


def free_port() -> int:
    """A TCP port free on 127.0.0.1 in this (root) namespace right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ns_prefix(ns: str | None) -> list[str]:
    return ["ip", "netns", "exec", ns] if ns else []


def http(ns: str | None, method: str, url: str, params: dict[str, str] | list[tuple[str, str]] | None = None,
         body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes]:
    """(status, body) of one request; inside `ns` via curl, else urllib. Status 0: no connection."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    if ns:
        cmd = [*_ns_prefix(ns), "curl", "-sS", "-m", str(timeout), "-X", method, "-o", "-", "-w", "\n%{http_code}"]
        for k, v in (headers or {}).items():
            cmd += ["-H", f"{k}: {v}"]
        if body is not None:
            cmd += ["--data-binary", "@-"]
        p = subprocess.run([*cmd, url], input=body, capture_output=True, timeout=timeout + 5)
        out, _, code = p.stdout.rpartition(b"\n")
        return (int(code) if code.strip().isdigit() else 0), out
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class VictoriaMetrics:
    """One victoria-metrics process; restartable on the same data directory and port."""

    def __init__(self, data_dir: Path, ns: str | None = None, port: int | None = None) -> None:
        if not Path(BINARY).exists():
            raise AssertionError(f"{BINARY} is missing: install Debian's victoria-metrics package")
        self.data_dir = Path(data_dir)
        self.ns = ns
        self.port = port or (DEFAULT_NS_PORT if ns else free_port())
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [BINARY, "-storageDataPath", str(self.data_dir), "-httpListenAddr", f"127.0.0.1:{self.port}",
                "-retentionPeriod", "100y"]

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> VictoriaMetrics:
        """Start and wait (bounded) until /health says OK; fails with the log's tail."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([*_ns_prefix(self.ns), *self.command()],
                                         stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(1000):
            if self.proc.poll() is not None:
                break
            status, body = http(self.ns, "GET", self.url("/health"), timeout=2)
            if status == 200 and body.strip() == b"OK":
                return self
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.kill()
        raise AssertionError(f"{self.command()[0]} did not become healthy on {self.base}: {tail}")

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM: VictoriaMetrics flushes what it accepted), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- queries ----------------------------------------------------------------

    def get(self, path: str, params: dict[str, str] | list[tuple[str, str]] | None = None) -> bytes:
        status, body = http(self.ns, "GET", self.url(path), params)
        if status != 200:
            raise AssertionError(f"GET {path} {params}: HTTP {status}: {body[:500]!r}")
        return body

    def flush(self) -> None:
        """Make every accepted sample searchable now."""
        self.get("/internal/force_flush")

    def export(self, match: str = '{__name__=~".+"}') -> list[dict[str, object]]:
        """Every series matching `match`, all samples: [{'metric': {...}, 'values': [...], 'timestamps': [...]}]."""
        self.flush()
        body = self.get("/api/v1/export", {"match[]": match, "start": "0"})
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def query(self, q: str) -> list[dict[str, object]]:
        self.flush()
        doc = json.loads(self.get("/api/v1/query", {"query": q}))
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def wait_export(self, match: str, done: Callable[[list[dict[str, object]]], bool],
                    timeout: float = 15.0) -> list[dict[str, object]]:
        """Export (bounded, repeated) until `done(series)`; returns the last export either way."""
        deadline = time.monotonic() + timeout
        series: list[dict[str, object]] = []
        for _ in range(int(timeout / 0.05) + 1):  # bounded; the deadline ends it first (exports take time)
            series = self.export(match)
            if done(series) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return series

    def __enter__(self) -> VictoriaMetrics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class VmAgent(VictoriaMetrics):
    """vmagent (the fleet's relay): accepts remote write and text import like VictoriaMetrics,
    forwards to `target` by remote write, buffers on disk (`data_dir`) while the target is down."""

    def __init__(self, data_dir: Path, target: VictoriaMetrics, ns: str | None = None,
                 port: int | None = None) -> None:
        if not Path(VMAGENT).exists():
            raise AssertionError(f"{VMAGENT} is missing: install Debian's victoria-metrics package")
        super().__init__(data_dir, ns=ns, port=port or (VMAGENT_NS_PORT if ns else free_port()))
        self.target = target

    def command(self) -> list[str]:
        return [VMAGENT, "-httpListenAddr", f"127.0.0.1:{self.port}",
                "-remoteWrite.url", self.target.url("/api/v1/write"),
                "-remoteWrite.tmpDataPath", str(self.data_dir), "-remoteWrite.flushInterval", "200ms"]

    def metric(self, name: str) -> float:
        """Sum of one of vmagent's own /metrics counters (all label sets)."""
        status, body = http(self.ns, "GET", self.url("/metrics"))
        assert status == 200, status
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def last_value(series: dict[str, object]) -> float:
    """The value at the largest timestamp of one exported series."""
    ts, vals = series["timestamps"], series["values"]
    assert isinstance(ts, list) and isinstance(vals, list) and ts
    return float(vals[max(range(len(ts)), key=ts.__getitem__)])


def by_name(series: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [s for s in series if s["metric"]["__name__"] == name]  # type: ignore[index]


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[Callable[..., VictoriaMetrics]]:
    """Factory ``victoria_metrics(ns=None, start=True)``; every instance is killed at teardown."""
    made: list[VictoriaMetrics] = []

    def make(ns: str | None = None, start: bool = True) -> VictoriaMetrics:
        v = VictoriaMetrics(tmp_path / f"vm{len(made)}", ns=ns)
        made.append(v)
        return v.start() if start else v

    try:
        yield make
    finally:
        for v in made:
            v.kill()
        for v in made:
            shutil.rmtree(v.data_dir, ignore_errors=True)
