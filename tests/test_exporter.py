"""The pusher against real HTTP servers on 127.0.0.1 (written here, in threads) and
against a real VictoriaMetrics: retries, refusals, timeouts, outages, the bounded
buffer, headers, credentials. No root needed.

Backoff is shrunk to milliseconds; every wait is a bounded poll for a count (requests
received, samples sent), never a sleep standing in for an event.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_metrics import A4, B4, T0, interval, key, table
from vm import VictoriaMetrics, free_port, victoria_metrics  # noqa: F401 (fixture)

from xtrace_catch.export import push
from xtrace_catch.export.push import Pusher, PushFormat
from xtrace_catch.export.remote_write import RemoteWriteEncoder, messages, unsnappy_block
from xtrace_catch.export.series import Batch, SeriesTable, render_text
from xtrace_catch.flows.collector import Interval
from xtrace_catch.kernel.layout import STATS_FIELDS, TrafficType
from xtrace_catch.settings import Credentials, ExportSettings, Settings

TEXT_PATH = "/api/v1/import/prometheus"
RW_PATH = "/api/v1/write"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05}
WAIT = 10.0  # bound for any one wait, seconds


# -- a scripted HTTP server ---------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


class Server:
    """POSTs are answered from `script`: a list of (status, delay seconds, body); the last
    entry repeats. Records every request (also those whose answer came too late)."""

    def __init__(self, script: list[tuple[int, float, bytes]], port: int = 0) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    n = len(outer.requests)
                    outer.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status, delay, reply = outer.script[min(n, len(outer.script) - 1)]
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up (timeout): what it is for

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)


# -- batches and running the pusher ----------------------------------------------------


def batch(t: SeriesTable, seq: int, n_flows: int = 3, health: int = 0) -> Batch:
    flows = [(key(A4, B4, 40000 + i, 5000), (1 + i, 100 * (1 + i)), (seq * (1 + i), seq * 100 * (1 + i)))
             for i in range(n_flows)]
    b = t.batch(interval(seq, flows))
    b = b.with_health([(f"xtrace_agent_h{i}", "gauge", "h", {"interface": "xta0"}, i) for i in range(health)])
    return b


def text_of(b: Batch) -> bytes:
    return render_text(b, with_timestamps=True, with_meta=False).encode()


async def run_until(p: Pusher, cond: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Run the pusher's sender until `cond()` (bounded); stop it; True if `cond` held."""
    stop = asyncio.Event()
    task = asyncio.create_task(p.run(stop))
    deadline = time.monotonic() + timeout
    ok = False
    try:
        for _ in range(int(timeout / 0.005) + 1):
            if cond():
                ok = True
                break
            if time.monotonic() > deadline or task.done():
                break
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
    return ok


def pusher(url: str, **kw: object) -> Pusher:
    args: dict[str, object] = {**FAST, "timeout": 5.0}
    args.update(kw)
    return Pusher(url, **args)  # type: ignore[arg-type]


# -- retries ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retryable_status_is_retried_and_delivered_once(status: int) -> None:
    async def main() -> None:
        t = table()
        b = batch(t, 1)
        with Server([(status, 0, b"try later"), (status, 0, b"try later"), (204, 0, b"")]) as srv:
            p = pusher(srv.url(TEXT_PATH))
            try:
                p.enqueue(b)
                assert await run_until(p, lambda: p.stats.successes == 1)
            finally:
                await p.aclose()
            assert srv.count == 3
            assert {r.body for r in srv.requests} == {text_of(b)}
            assert p.stats.successes == 1 and p.stats.failures == 2 and p.stats.retries == 2
            assert p.stats.samples_sent == b.samples == 12 and p.stats.samples_dropped == 0
            assert p.queued_samples == 0 and p.oldest_seq is None
            assert p.stats.last_error == f"HTTP {status}: try later" and p.stats.last_error_kind == "http"

    asyncio.run(main())


def test_client_error_is_not_retried_body_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        t = table()
        b1, b2 = batch(t, 1), batch(t, 2, n_flows=2)
        with Server([(400, 0, b"cannot parse line 'xyz'\n  at  line 1\n")]) as srv:
            p = pusher(srv.url(TEXT_PATH))
            try:
                p.enqueue(b1)
                p.enqueue(b2)
                assert await run_until(p, lambda: p.queued_samples == 0)
            finally:
                await p.aclose()
            assert [r.body for r in srv.requests] == [text_of(b1), text_of(b2)]
        assert p.stats.samples_dropped == b1.samples + b2.samples == 12 + 8
        assert p.stats.samples_sent == 0 and p.stats.successes == 0
        assert p.stats.failures == 2 and p.stats.retries == 0

    asyncio.run(main())
    logged = [r for r in caplog.records if "cannot parse line 'xyz'" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert logged[0].getMessage() == "VictoriaMetrics refused a push with HTTP 400: cannot parse line 'xyz' at line 1"



def test_timeout_is_retried() -> None:
    async def main() -> None:
        t = table()
        b = batch(t, 1)
        with Server([(204, 1.5, b""), (204, 0, b"")]) as srv:
            p = pusher(srv.url(TEXT_PATH), timeout=0.3)
            try:
                p.enqueue(b)
                assert await run_until(p, lambda: p.stats.successes == 1)
            finally:
                await p.aclose()
            assert [r.body for r in srv.requests] == [text_of(b)] * 2
        assert p.stats.last_error_kind == "timeout"
        assert "accepted the connection but sent no response within 0.3 s" in p.stats.last_error
        assert p.stats.failures == 1 and p.stats.retries == 1 and p.stats.samples_sent == 12

    asyncio.run(main())


def test_connection_refused_until_a_server_appears(caplog: pytest.LogCaptureFixture) -> None:
    """Said at once with its reason, not again within the minute, and the recovery with the
    samples delivered late (both batches: queued while nothing listened)."""
    caplog.set_level(logging.WARNING, logger="xtrace_catch.export.push")

    async def main() -> None:
        t = table()
        b1, b2 = batch(t, 1), batch(t, 2)
        port = free_port()
        p = pusher(f"http://127.0.0.1:{port}{TEXT_PATH}")
        stop = asyncio.Event()
        task = asyncio.create_task(p.run(stop))
        try:
            p.enqueue(b1)
            for _ in range(2000):
                if p.stats.failures >= 3 or task.done():
                    break
                await asyncio.sleep(0.005)
            assert p.stats.failures >= 3 and p.stats.successes == 0
            assert p.stats.last_error_kind == "refused" and p.stats.consecutive_failures == p.stats.failures
            assert f"connection to 127.0.0.1:{port} refused: nothing listens there" in p.stats.last_error
            assert [r.getMessage() for r in caplog.records] == [
                f"pushing to http://127.0.0.1:{port}{TEXT_PATH} failed: {p.stats.last_error}; retrying with backoff, "
                "samples stay buffered"]
            p.enqueue(b2)
            with Server([(204, 0, b"")], port=port) as srv:
                for _ in range(2000):
                    if p.stats.successes == 2 or task.done():
                        break
                    await asyncio.sleep(0.005)
                assert [r.body for r in srv.requests] == [text_of(b1), text_of(b2)]
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)
            await p.aclose()
        assert p.stats.samples_sent == 24 and p.stats.samples_dropped == 0
        assert p.stats.retries == p.stats.failures
        assert p.stats.samples_late == 24 and p.stats.consecutive_failures == 0 and not p.failing
        msgs = [r.getMessage() for r in caplog.records]
        assert len(msgs) == 2 and re.fullmatch(
            rf"pushing to http://127.0.0.1:{port}{TEXT_PATH} recovered after \d+ s \({p.stats.failures} failed "
            r"attempts\): 24 samples delivered late, 0 dropped", msgs[1]), msgs

    asyncio.run(main())


# -- failures are said, with their reason --------------------------------------------------


def test_https_to_a_plain_http_server_names_the_cause(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="xtrace_catch.export.push")

    async def main() -> Pusher:
        t = table()
        with Server([(204, 0, b"")]) as srv:
            p = pusher(srv.url(TEXT_PATH).replace("http://", "https://"))
            try:
                p.enqueue(batch(t, 1))
                assert not await p.send_one()
            finally:
                await p.aclose()
        return p

    p = asyncio.run(main())
    assert p.stats.last_error_kind == "tls" and p.failing
    assert "the server speaks plain HTTP, not HTTPS; use http:// in the URL" in p.stats.last_error
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "TLS handshake with 127.0.0.1:" in msg and "plain HTTP" in msg


def test_a_hanging_server_is_a_timeout_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """A server that accepts and never answers: each attempt times out; one line for the run."""
    caplog.set_level(logging.WARNING, logger="xtrace_catch.export.push")

    async def main() -> Pusher:
        t = table()
        with Server([(204, 2.0, b"")]) as srv:
            p = pusher(srv.url(RW_PATH), timeout=0.2)
            try:
                p.enqueue(batch(t, 1))
                for _ in range(3):
                    assert not await p.send_one()
            finally:
                await p.aclose()
        return p

    p = asyncio.run(main())
    assert p.stats.consecutive_failures == 3 and p.stats.last_error_kind == "timeout"
    assert p.stats.last_error.endswith("accepted the connection but sent no response within 0.2 s")
    assert len(caplog.records) == 1 and "sent no response within 0.2 s" in caplog.records[0].getMessage()


def test_while_failing_one_line_per_period(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="xtrace_catch.export.push")
    monkeypatch.setattr(push, "FAILURE_LOG_EVERY_S", 0.2)

    async def main() -> tuple[Pusher, float]:
        t = table()
        p = pusher(f"http://127.0.0.1:{free_port()}{TEXT_PATH}")
        t0 = time.monotonic()
        try:
            p.enqueue(batch(t, 1))
            for _ in range(400):  # ~1 s of attempts, a few ms apart
                await p.send_one()
                await asyncio.sleep(0.0025)
                if time.monotonic() - t0 > 1.0:
                    break
        finally:
            await p.aclose()
        return p, time.monotonic() - t0

    p, elapsed = asyncio.run(main())
    msgs = [r.getMessage() for r in caplog.records]
    assert p.stats.failures > 20, p.stats
    assert "failed: connection to" in msgs[0]
    later = msgs[1:]
    assert later and all("still failing after" in m and "12 samples waiting, 0 dropped" in m for m in later), msgs
    assert len(later) <= elapsed / 0.2 + 1, (len(later), elapsed)


def test_summary_record_and_metrics_carry_the_push_state() -> None:
    """What the summary record and /metrics say while a push is failing."""
    from xtrace_catch.export.health import Export

    async def main() -> tuple[dict[str, object], list[tuple[str, str, str, dict[str, str], float]]]:
        port = free_port()
        settings = Settings(interface="xta0", export=ExportSettings(
            vm_enabled=True, vm_url=f"http://127.0.0.1:{port}{TEXT_PATH}"))
        ex = Export(settings, "xta0", "198.51.100.1")
        notes: list[str] = []
        await ex.start(notes.append)
        assert ex.pusher is not None
        ex.pusher.enqueue(batch(ex.table, 1))
        for _ in range(2000):
            if ex.pusher.stats.consecutive_failures >= 2:
                break
            await asyncio.sleep(0.005)
        summ, health = ex.push_summary(), ex._push_health()
        await ex.stop(deadline_s=0.5)
        return summ, health

    summ, health = asyncio.run(main())
    assert summ["push_consecutive_failures"] >= 2 and summ["push_successes"] == 0
    assert "refused: nothing listens there" in str(summ["push_last_error"])
    assert str(summ["push_last_error_time"]).endswith("Z") and summ["push_buffer_samples"] == 12
    by = {h[0]: h for h in health}
    assert by["xtrace_agent_push_consecutive_failures"][4] >= 2
    last = by["xtrace_agent_push_last_error_timestamp_seconds"]
    assert last[3]["reason"] == "refused" and abs(last[4] - time.time()) < 60


# -- the bounded buffer -----------------------------------------------------------------------


def test_buffer_overflow_drops_oldest_and_counts_exactly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def main() -> None:
        t = table()
        with Server([(204, 0, b"")]) as srv:
            p = pusher(srv.url(TEXT_PATH), buffer_samples=30)
            try:
                bs = [batch(t, seq) for seq in range(1, 6)]  # 12 samples each
                for b in bs:
                    p.enqueue(b)
                # 60 queued > 30: the three oldest (36 samples) went
                assert p.stats.samples_dropped == 36
                assert p.queued_samples == 24 and p.oldest_seq == 4
                assert await run_until(p, lambda: p.queued_samples == 0)
            finally:
                await p.aclose()
            assert [r.body for r in srv.requests] == [text_of(bs[3]), text_of(bs[4])]
        assert p.stats.samples_sent == 24 and p.stats.samples_dropped == 36

    asyncio.run(main())
    assert len([r for r in caplog.records if "push buffer full" in r.getMessage()]) == 3


def test_buffer_keeps_the_newest_batch_even_if_larger_than_the_bound() -> None:
    async def main() -> None:
        t = table()
        p = pusher("http://127.0.0.1:9/api/v1/write", buffer_samples=10)
        try:
            p.enqueue(batch(t, 1, n_flows=1))  # 4
            p.enqueue(batch(t, 2, n_flows=4))  # 16 > 10: the older one goes, this one stays
            assert p.stats.samples_dropped == 4 and p.queued_samples == 16 and p.oldest_seq == 2
        finally:
            await p.aclose()

    asyncio.run(main())


def test_large_batches_go_in_chunks_retried_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(push, "SERIES_PER_REQUEST", 2)

    async def main() -> None:
        t = table()
        b = batch(t, 1, n_flows=5, health=2)
        with Server([(204, 0, b""), (503, 0, b""), (204, 0, b"")]) as srv:
            p = pusher(srv.url(TEXT_PATH))
            try:
                p.enqueue(b)
                assert await run_until(p, lambda: p.queued_samples == 0)
            finally:
                await p.aclose()
            bodies = [r.body.decode() for r in srv.requests]
        assert len(bodies) == 4 and bodies[1] == bodies[2]  # only the refused chunk again
        sent = [bodies[0], bodies[2], bodies[3]]
        assert [s.count("\n") for s in sent] == [2 * 4, 2 * 4, 1 * 4 + 2]
        assert "xtrace_agent_h" not in sent[0] + sent[1]
        assert "".join(sorted(sent[0].splitlines(True) + sent[1].splitlines(True) + sent[2].splitlines(True))) == \
            "".join(sorted(text_of(b).decode().splitlines(True)))
        assert p.stats.samples_sent == b.samples == 22 and p.stats.successes == 3 and p.stats.retries == 1

    asyncio.run(main())


def test_drain_sends_what_is_queued_then_stops_at_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def main() -> None:
        t = table()
        bs = [batch(t, seq) for seq in (1, 2, 3)]
        with Server([(204, 0, b""), (204, 0, b""), (503, 0, b"")]) as srv:
            p = pusher(srv.url(TEXT_PATH))
            try:
                for b in bs:
                    p.enqueue(b)
                await p.drain(deadline_s=5.0)
            finally:
                await p.aclose()
            assert srv.count == 3  # no retry loop at exit
        assert p.stats.samples_sent == 24 and p.queued_samples == 12 and p.oldest_seq == 3

    asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if "exiting with" in r.getMessage()] == [
        "exiting with 12 samples not delivered to VictoriaMetrics (last error: HTTP 503)"]


def with_stats(iv: Interval) -> Interval:
    iv.stats_total = dict.fromkeys(STATS_FIELDS, 0)
    iv.stats_delta = dict.fromkeys(STATS_FIELDS, 0)
    return iv


def test_buffered_batches_keep_their_labels_while_flows_come_and_go() -> None:
    """While VictoriaMetrics is down the agent keeps collecting: label sets of flows that
    are gone from later intervals must survive pruning until their batch is sent."""
    from xtrace_catch.export.health import Export

    class NoCollector:
        evicted_total = 0

    async def main() -> None:
        x = ExportSettings(vm_enabled=True, collect_agg="e2e", push_buffer_samples=10_000)
        settings = Settings(interface="xta0", export=x)
        ex = Export(settings, "xta0", "198.51.100.1", NoCollector())  # type: ignore[arg-type]
        port = free_port()
        ex.pusher = pusher(f"http://127.0.0.1:{port}{RW_PATH}")
        p = ex.pusher
        try:
            ivs = [interval(seq, [(key(A4, B4, 40000 + seq, 5000), (seq, 100 * seq), (seq, 100 * seq))])
                   for seq in range(1, 6)]  # a new flow each interval, the previous one gone
            for iv in ivs:
                ex.publish(ex.batch(with_stats(iv)))
            assert p.queued_samples == 5 * (4 + len(ex.latest.health))  # type: ignore[union-attr]
            with Server([(204, 0, b"")], port=port) as srv:
                assert await run_until(p, lambda: p.queued_samples == 0)
                bodies = [messages()["WriteRequest"].FromString(unsnappy_block(r.body)) for r in srv.requests]
        finally:
            await p.aclose()
        assert len(bodies) == 5
        for seq, wr in enumerate(bodies, 1):
            ports = {lab.value for ts in wr.timeseries for lab in ts.labels if lab.name == "src_port"}
            assert ports == {str(40000 + seq)}
            flow = [ts for ts in wr.timeseries if ts.labels[0].value == "xtrace_network_bytes_total"]
            assert [ts.samples[0].value for ts in flow] == [100.0 * seq]
        ex.publish(ex.batch(with_stats(interval(6, []))))
        assert len(ex.table) == 0  # and once sent, they are forgotten

    asyncio.run(main())


# -- headers and credentials --------------------------------------------------------------


def test_remote_write_request_headers_basic_auth_and_body() -> None:
    async def main() -> None:
        t = table()
        b = batch(t, 1, health=1)
        with Server([(204, 0, b"")]) as srv:
            p = pusher(srv.url(RW_PATH), credentials=Credentials(username="alice", password="pa:ss wörd"))
            assert p.format is PushFormat.REMOTE_WRITE
            try:
                p.enqueue(b)
                assert await run_until(p, lambda: p.stats.successes == 1)
            finally:
                await p.aclose()
            (req,) = srv.requests
        assert req.path == RW_PATH
        h = req.headers
        assert h["content-type"] == "application/x-protobuf"
        assert h["content-encoding"] == "snappy"
        assert h["x-prometheus-remote-write-version"] == "0.1.0"
        assert h["authorization"] == "Basic " + base64.b64encode("alice:pa:ss wörd".encode()).decode()
        raw = unsnappy_block(req.body)
        assert raw == RemoteWriteEncoder().encode(b)
        wr = messages()["WriteRequest"].FromString(raw)
        assert len(wr.timeseries) == 3 * 4 + 1
        assert all(s.timestamp == b.ts_ms for ts in wr.timeseries for s in ts.samples)

    asyncio.run(main())


def test_text_request_headers_bearer_token() -> None:
    async def main() -> None:
        t = table()
        b = batch(t, 1)
        with Server([(204, 0, b"")]) as srv:
            p = pusher(srv.url(TEXT_PATH), credentials=Credentials(bearer_token="tok-123"))
            assert p.format is PushFormat.TEXT
            try:
                p.enqueue(b)
                assert await run_until(p, lambda: p.stats.successes == 1)
            finally:
                await p.aclose()
            (req,) = srv.requests
        assert req.headers["authorization"] == "Bearer tok-123"
        assert req.headers["content-type"] == "text/plain"
        assert "content-encoding" not in req.headers
        assert req.body == text_of(b)

    asyncio.run(main())


def test_no_credentials_no_authorization_header() -> None:
    async def main() -> None:
        t = table()
        with Server([(204, 0, b"")]) as srv:
            p = pusher(srv.url(TEXT_PATH))
            try:
                p.enqueue(batch(t, 1))
                assert await run_until(p, lambda: p.stats.successes == 1)
            finally:
                await p.aclose()
            assert "authorization" not in srv.requests[0].headers

    asyncio.run(main())


SECRET_PW = "pw-s3cr3t-9f1"
SECRET_TOKEN = "tok-s3cr3t-7c2"


@pytest.mark.parametrize("creds", [Credentials(username="alice", password=SECRET_PW),
                                   Credentials(bearer_token=SECRET_TOKEN)], ids=["basic", "bearer"])
def test_credentials_never_in_repr_or_logs(creds: Credentials, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx/httpcore included
    x = ExportSettings(vm_enabled=True, credentials=creds)
    for text in (repr(creds), str(creds), repr(x), repr(Settings(export=x))):
        assert SECRET_PW not in text and SECRET_TOKEN not in text

    async def main() -> Pusher:
        t = table()
        with Server([(401, 0, b"unauthorized: bad credentials for alice")]) as srv:
            p = pusher(srv.url(TEXT_PATH), credentials=creds)
            try:
                p.enqueue(batch(t, 1))
                p.enqueue(batch(t, 2))
                assert await run_until(p, lambda: p.queued_samples == 0)
            finally:
                await p.aclose()
            assert srv.count == 2  # refused, not retried
        return p

    p = asyncio.run(main())
    for text in (caplog.text, repr(p), repr(p.stats), p.stats.last_error, repr(p.creds)):
        assert SECRET_PW not in text and SECRET_TOKEN not in text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "HTTP 401" in errors[0] and "credentials" in errors[0]
    assert p.stats.samples_dropped == 24


def test_start_line_hides_a_password_in_the_url() -> None:
    """The agent's "pushing metrics to URL" line on stderr shows no password."""
    from xtrace_catch.export.health import Export

    class NoCollector:
        evicted_total = 0

    lines: list[str] = []

    async def main() -> None:
        x = ExportSettings(vm_enabled=True, vm_url=f"http://alice:{SECRET_PW}@127.0.0.1:9/api/v1/write")
        ex = Export(Settings(interface="xta0", export=x), "xta0", "", NoCollector())  # type: ignore[arg-type]
        await ex.start(lines.append)
        await ex.stop()

    asyncio.run(main())
    assert lines == ["pushing metrics to http://alice:***@127.0.0.1:9/api/v1/write (remote_write)"]


def test_credentials_from_files_and_environment(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET_PW + "\n")
    tok = tmp_path / "tok"
    tok.write_text(f"  {SECRET_TOKEN}\n")
    c = Credentials.from_sources({}, "alice", str(pw), None)
    assert (c.username, c.password, c.bearer_token) == ("alice", SECRET_PW, None)
    c = Credentials.from_sources({"VM_USERNAME": "bob", "VM_PASSWORD": "x"}, None, None, None)
    assert (c.username, c.password) == ("bob", "x")
    c = Credentials.from_sources({"VM_PASSWORD_FILE": str(pw), "VM_USERNAME": "bob", "VM_PASSWORD": "x"},
                                 None, None, None)
    assert c.password == SECRET_PW  # the file wins over the variable
    c = Credentials.from_sources({"VM_BEARER_TOKEN_FILE": str(tok)}, None, None, None)
    assert (c.username, c.bearer_token) == (None, SECRET_TOKEN)
    assert Credentials.from_sources({}, None, None, None) is None
    assert SECRET_TOKEN not in repr(c)


# -- a real VictoriaMetrics (root namespace, 127.0.0.1) --------------------------------------


AGG = 'rack\\7 "gpu"\nrow ü'


@pytest.mark.parametrize("path", [TEXT_PATH, RW_PATH], ids=["text", "remote-write"])
def test_real_victoria_metrics_accepts_our_bodies(path: str, victoria_metrics: Callable[..., VictoriaMetrics]) -> None:
    """What VictoriaMetrics stores is exactly what we pushed: label values with backslash,
    quote, newline and non-ASCII survive both encodings; values and timestamps exact."""
    vm = victoria_metrics()
    t = table(collect_agg=AGG)
    rk = key(A4, B4, 49152, 4791, tt=TrafficType.ROCE_V2, qp=0xABCDE)
    b1 = t.batch(interval(1, [(key(A4, B4, 40000, 5000), (3, 426), (3, 426)), (rk, (2, 2200), (2, 2200))]))
    b2 = t.batch(interval(2, [(key(A4, B4, 40000, 5000), (1, 142), (4, 568)), (rk, (0, 0), (2, 2200))]))
    b2 = b2.with_health([("xtrace_agent_flows_tracked", "gauge", "h", {"interface": "xta0", "collect_agg": AGG}, 2)])

    async def main() -> Pusher:
        p = pusher(vm.url(path))
        try:
            p.enqueue(b1)
            p.enqueue(b2)
            assert await run_until(p, lambda: p.queued_samples == 0)
        finally:
            await p.aclose()
        return p

    p = asyncio.run(main())
    assert p.stats.successes == 2 and p.stats.samples_dropped == 0, p.stats
    series = vm.wait_export('{__name__=~"xtrace_.*"}', lambda s: len(s) == 9 and all(
        len(x["values"]) == (1 if x["metric"]["__name__"].startswith("xtrace_agent") else 2) for x in s))
    got = {(x["metric"]["__name__"], x["metric"].get("dst_qp", "")):
           (x["metric"], list(zip(x["timestamps"], x["values"]))) for x in series}
    assert len(got) == 9
    ts1, ts2 = int(T0 * 1000), int((T0 + 1) * 1000)
    udp_labels = {"src_ip": A4, "dst_ip": B4, "src_port": "40000", "dst_port": "5000", "protocol": "17",
                  "traffic_type": "UDP", "direction": "ingress", "interface": "xta0", "host_ip": "198.51.100.1",
                  "collect_agg": AGG}
    roce_labels = {**udp_labels, "src_port": "49152", "dst_port": "4791", "traffic_type": "RoCE_v2",
                   "dst_qp": "0x0abcde"}
    for name, udp, roce in (("xtrace_network_bytes_total", (426, 568), (2200, 2200)),
                            ("xtrace_network_packets_total", (3, 4), (2, 2)),
                            ("xtrace_network_flow_bytes", (426, 142), (2200, 0)),
                            ("xtrace_network_flow_packets", (3, 1), (2, 0))):
        assert got[(name, "")] == ({"__name__": name, **udp_labels}, [(ts1, udp[0]), (ts2, udp[1])])
        assert got[(name, "0x0abcde")] == ({"__name__": name, **roce_labels}, [(ts1, roce[0]), (ts2, roce[1])])
    assert got[("xtrace_agent_flows_tracked", "")] == (
        {"__name__": "xtrace_agent_flows_tracked", "interface": "xta0", "collect_agg": AGG}, [(ts2, 2)])
