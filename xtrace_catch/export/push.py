"""Push to VictoriaMetrics (text import or remote write) without ever blocking collection.
The only module that imports httpx.

Batches wait in a bounded FIFO (bounded in samples); when it overflows the oldest are
dropped and counted. One sender task posts the oldest chunk; connection errors, timeouts,
5xx and 429 are retried with exponential backoff and full jitter (bounded delay); other
4xx drop the chunk and log the response body once per status.

A failure is never silent: the first one logs a line with its reason (connection refused, DNS,
TLS handshake with its likely cause, timeout, ...), then at most one line a minute while the
failures last, and one line when pushes recover, with the samples that were delivered late.
PushStats keeps the last error, its time and the failures in a row for the summary and /metrics.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import random
import re
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ..errors import UsageError
from ..settings import Credentials
from .remote_write import HEADERS as RW_HEADERS
from .remote_write import RemoteWriteEncoder
from .series import Batch, render_text

__all__ = ["PushFormat", "classify_url", "redact_url", "PushFailure", "describe_failure", "PushStats", "Pusher"]

log = logging.getLogger(__name__)

_RW_PATH = re.compile(r"(^|/)api/v1/write/?$")
_TEXT_PATH = re.compile(r"(^|/)api/v1/import/prometheus/?$")
# Flow series per request: 10,000 samples (4 per series), vmagent's default block size. A
# body is encoded when it is sent, so this also bounds the memory one push takes.
SERIES_PER_REQUEST = 2_500
# While pushes keep failing, one log line per this many seconds (the first failure logs at once).
FAILURE_LOG_EVERY_S = 60.0


_URL_PASSWORD = re.compile(r"(://[^/?#@:]*:)[^/?#]*@")


def redact_url(url: str) -> str:
    """The URL for messages: a password in it (http://user:PASSWORD@host/...) becomes ***."""
    return _URL_PASSWORD.sub(r"\1***@", url)


class PushFormat(str, enum.Enum):
    REMOTE_WRITE = "remote_write"
    TEXT = "text"


def classify_url(url: str) -> PushFormat:
    """The push format a URL asks for; UsageError naming the accepted forms otherwise."""
    accepted = ("accepted: http(s)://HOST:PORT/api/v1/write (remote write; also /prometheus/api/v1/write and "
                "/insert/<tenant>/prometheus/api/v1/write) or http(s)://HOST:PORT/api/v1/import/prometheus "
                "(text; also /insert/<tenant>/prometheus/api/v1/import/prometheus)")
    try:
        u = urlsplit(url.strip())
        _ = u.port  # raises ValueError on a bad port
    except ValueError:
        raise UsageError(f"VictoriaMetrics URL {redact_url(url)!r} is not a valid URL; {accepted}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"VictoriaMetrics URL {redact_url(url)!r} needs http:// or https:// and a host; {accepted}")
    try:
        httpx.Request("POST", url.strip())  # what the client will refuse (control characters, bad IDNA labels)
    except (httpx.InvalidURL, ValueError):
        raise UsageError(f"VictoriaMetrics URL {redact_url(url)!r} is not a valid URL (control characters or a "
                         f"malformed host name); {accepted}") from None
    if _RW_PATH.search(u.path):
        return PushFormat.REMOTE_WRITE
    if _TEXT_PATH.search(u.path):
        return PushFormat.TEXT
    raise UsageError(f"VictoriaMetrics URL path {u.path or '/'!r} is neither form; {accepted}")


@dataclass(frozen=True)
class PushFailure:
    """Why one push failed: `kind` is a fixed word (a metric label), `reason` one line for people."""

    kind: str  # refused, dns, tls, timeout, reset, unreachable, http, other
    reason: str


# OpenSSL's reasons when a TLS client meets a server that answers in plain HTTP.
_PLAIN_HTTP_SSL = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG",
                   "UNKNOWN_PROTOCOL", "UNEXPECTED_EOF_WHILE_READING")


def _causes(exc: BaseException) -> list[BaseException]:
    """exc and what it wraps (httpx -> httpcore -> the socket's OSError), outermost first."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain and len(chain) < 16:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def describe_failure(exc: BaseException, url: str, timeout_s: float) -> PushFailure:
    """A transport-level push failure (an httpx exception) in words an operator can act on."""
    u = urlsplit(url)
    host = u.hostname or "?"
    where = f"{host}:{u.port or (443 if u.scheme == 'https' else 80)}"
    chain = _causes(exc)
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return PushFailure("tls", f"TLS handshake with {where} failed: the server's certificate is not trusted "
                                      f"({e.verify_message or e.reason}); add its CA to the system's trust store, "
                                      "or --insecure to skip verification")
        if isinstance(e, ssl.SSLError):
            why = e.reason or type(e).__name__
            if why in _PLAIN_HTTP_SSL:
                return PushFailure("tls", f"TLS handshake with {where} failed ({why}): the server speaks plain "
                                          "HTTP, not HTTPS; use http:// in the URL")
            return PushFailure("tls", f"TLS handshake with {where} failed: {e}")
        if isinstance(e, socket.gaierror):
            if e.errno in (socket.EAI_AGAIN,):
                return PushFailure("dns", f"DNS lookup of {host} failed: no DNS server answered ({e.strerror})")
            return PushFailure("dns", f"DNS lookup of {host} failed: {e.strerror or e}")
        if isinstance(e, ConnectionRefusedError):
            return PushFailure("refused", f"connection to {where} refused: nothing listens there "
                                          "(is VictoriaMetrics running, and is the port right?)")
        if isinstance(e, ConnectionResetError):
            return PushFailure("reset", f"{where} reset the connection"
                                        + (" (if it serves HTTPS, use https://)" if u.scheme == "http" else ""))
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
            return PushFailure("unreachable", f"{where} is unreachable: {e.strerror}")
    if isinstance(exc, httpx.ConnectTimeout):
        return PushFailure("timeout", f"no answer connecting to {where} within {timeout_s:g} s "
                                      "(host down, or a firewall dropping packets)")
    if isinstance(exc, httpx.TimeoutException):
        return PushFailure("timeout", f"{where} accepted the connection but sent no response within {timeout_s:g} s")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        hint = " (if it serves HTTPS, use https://)" if u.scheme == "http" else ""
        return PushFailure("reset", f"{where} closed the connection without an HTTP response{hint}: {exc}")
    return PushFailure("other", f"{type(exc).__name__}: {exc}")


@dataclass
class PushStats:
    """What the pusher did; exported as xtrace_agent_push_* metrics and in the summary record."""

    successes: int = 0
    failures: int = 0
    retries: int = 0
    samples_sent: int = 0
    samples_dropped: int = 0
    samples_late: int = 0  # delivered after an outage, from the backlog it left
    last_success: float = 0.0  # wall clock
    last_error: str = ""
    last_error_kind: str = ""
    last_error_time: float = 0.0  # wall clock
    consecutive_failures: int = 0


@dataclass
class _Outage:
    """A run of failed pushes, until the backlog it left is delivered."""

    start: float  # monotonic
    last_log: float
    attempts: int = 0
    dropped_before: int = 0
    backlog_seq: int | None = None  # set on the first success: the newest batch queued then
    late: int = 0


def _basic_auth(c: Credentials) -> httpx.BasicAuth | None:
    if c.username is not None and not c.bearer_token:
        return httpx.BasicAuth(c.username, c.password or "")
    return None


def _auth_headers(c: Credentials) -> dict[str, str]:
    return {"Authorization": f"Bearer {c.bearer_token}"} if c.bearer_token else {}


@dataclass
class _Pending:
    batch: Batch
    next_chunk: int = 0

    def chunks(self) -> int:
        return max(1, -(-len(self.batch.ids) // SERIES_PER_REQUEST))


class Pusher:
    """Owns one httpx.AsyncClient. enqueue() is synchronous and never blocks; run() sends."""

    def __init__(self, url: str, credentials: Credentials | None = None,
                 insecure: bool = False, timeout: float = 10.0, buffer_samples: int = 3_000_000,
                 backoff_base: float = 0.5, backoff_max: float = 30.0) -> None:
        self.format = classify_url(url)
        # user:password@ in the URL becomes basic auth (as httpx would do itself) and leaves
        # the URL: httpx logs the request URL (shown with -v), and the password must not be in it.
        u = httpx.URL(url.strip())
        url_auth = httpx.BasicAuth(u.username, u.password) if u.userinfo else None
        self.url = str(u.copy_with(username=None, password=None)) if u.userinfo else url.strip()
        self.encoder = RemoteWriteEncoder() if self.format is PushFormat.REMOTE_WRITE else None
        self.creds = credentials or Credentials()
        self.buffer_samples = buffer_samples
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.stats = PushStats()
        self._queue: deque[_Pending] = deque()
        self._queued_samples = 0
        self._wakeup = asyncio.Event()
        self._logged_status: set[int] = set()
        self._timeout = timeout
        self._outage: _Outage | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)), verify=not insecure,
            auth=_basic_auth(self.creds) or url_auth, headers=_auth_headers(self.creds),
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
        )

    # -- producer side ---------------------------------------------------------

    def enqueue(self, batch: Batch) -> None:
        """Queue a batch; drop the oldest queued ones if the buffer would exceed its bound."""
        self._queue.append(_Pending(batch))
        self._queued_samples += batch.samples
        while self._queued_samples > self.buffer_samples and len(self._queue) > 1:
            old = self._queue.popleft()
            self._queued_samples -= old.batch.samples
            self.stats.samples_dropped += old.batch.samples
            log.warning("push buffer full (%d samples): dropped the oldest interval", self.buffer_samples)
        self._wakeup.set()

    @property
    def queued_samples(self) -> int:
        return self._queued_samples

    @property
    def oldest_seq(self) -> int | None:
        return self._queue[0].batch.seq if self._queue else None

    # -- sender side -------------------------------------------------------------

    def _payload(self, p: _Pending) -> tuple[bytes, dict[str, str], int]:
        lo = p.next_chunk * SERIES_PER_REQUEST
        part = p.batch.part(lo, lo + SERIES_PER_REQUEST, with_health=p.next_chunk == p.chunks() - 1)
        if self.encoder is not None:
            return self.encoder.body(part), dict(RW_HEADERS), part.samples
        text = render_text(part, with_timestamps=True, with_meta=False)
        return text.encode(), {"Content-Type": "text/plain"}, part.samples

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[bool, bool]:
        """(delivered, retryable)."""
        try:
            r = await self._client.post(self.url, content=body, headers=headers)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            self._failed(describe_failure(exc, self.url, self._timeout))
            return False, True
        if 200 <= r.status_code < 300:
            return True, False
        body_text = " ".join(r.text[:2000].split())[:500]  # one log line, whatever the body's layout
        hint = " (check the credentials)" if r.status_code in (401, 403) else ""
        retryable = r.status_code == 429 or r.status_code >= 500
        reason = f"HTTP {r.status_code}{hint}: {body_text}" if body_text else f"HTTP {r.status_code}{hint}"
        if not retryable and r.status_code not in self._logged_status:
            self._logged_status.add(r.status_code)
            log.error("VictoriaMetrics refused a push with HTTP %d%s: %s", r.status_code, hint, body_text)
            self._failed(PushFailure("http", reason), logged=True)
        else:
            self._failed(PushFailure("http", reason))
        return False, retryable

    def _failed(self, f: PushFailure, logged: bool = False) -> None:
        """Count a failed attempt; log the first of a run at once, then at most once a minute."""
        st = self.stats
        now = time.monotonic()
        st.last_error, st.last_error_kind, st.last_error_time = f.reason, f.kind, time.time()
        st.consecutive_failures += 1
        o = self._outage
        if o is None:
            o = self._outage = _Outage(start=now, last_log=now, dropped_before=st.samples_dropped)
            if not logged:
                # Retried with the samples kept: a warning. It becomes an error once samples are lost.
                log.warning("pushing to %s failed: %s; retrying with backoff, samples stay buffered",
                          redact_url(self.url), f.reason)
        elif now - o.last_log >= FAILURE_LOG_EVERY_S and not logged:
            o.last_log = now
            lost = st.samples_dropped - o.dropped_before
            log.log(logging.ERROR if lost else logging.WARNING, "pushing to %s still failing after %.0f s (%d failed attempts): %s; %d samples waiting, "
                      "%d dropped", redact_url(self.url), now - o.start, o.attempts + 1, f.reason,
                      self._queued_samples, lost)
        o.attempts += 1
        o.backlog_seq = None  # failing again: the backlog is whatever is queued when it next recovers

    def _delivered(self, p: _Pending, samples: int) -> None:
        self.stats.consecutive_failures = 0
        o = self._outage
        if o is None:
            return
        if o.backlog_seq is None:
            o.backlog_seq = self._queue[-1].batch.seq
        if p.batch.seq <= o.backlog_seq:
            o.late += samples
            self.stats.samples_late += samples

    def _maybe_recovered(self) -> None:
        """Once the backlog an outage left is delivered (or dropped), say so in one line."""
        o = self._outage
        if o is None or o.backlog_seq is None or (self._queue and self._queue[0].batch.seq <= o.backlog_seq):
            return
        self._outage = None
        log.warning("pushing to %s recovered after %.0f s (%d failed attempts): %d samples delivered late, "
                    "%d dropped", redact_url(self.url), time.monotonic() - o.start, o.attempts, o.late,
                    self.stats.samples_dropped - o.dropped_before)

    @property
    def failing(self) -> bool:
        return self.stats.consecutive_failures > 0

    async def send_one(self) -> bool:
        """Try the oldest chunk once. True when the queue advanced."""
        if not self._queue:
            return False
        p = self._queue[0]
        body, headers, samples = await asyncio.to_thread(self._payload, p)  # encoding stays off the loop
        ok, retryable = await self._post(body, headers)
        if not ok and retryable:
            self.stats.failures += 1
            return False
        if ok:
            self.stats.successes += 1
            self.stats.samples_sent += samples
            self.stats.last_success = time.time()
            self._delivered(p, samples)
        else:
            self.stats.failures += 1
            self.stats.samples_dropped += samples
        p.next_chunk += 1
        if p.next_chunk >= p.chunks() and self._queue and self._queue[0] is p:
            self._queue.popleft()
            self._queued_samples -= p.batch.samples
        if ok:
            self._maybe_recovered()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop` is set (then return; call drain() for a last attempt)."""
        delay = 0.0
        while not stop.is_set():
            if not self._queue:
                self._wakeup.clear()
                waiter = asyncio.ensure_future(self._wakeup.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            if await self.send_one():
                delay = 0.0
                continue
            delay = min(self.backoff_max, max(self.backoff_base, delay * 2))
            self.stats.retries += 1
            sleep = random.uniform(delay / 2, delay)  # jitter: no thundering herd from a fleet
            try:
                await asyncio.wait_for(stop.wait(), timeout=sleep)
            except TimeoutError:
                pass

    async def drain(self, deadline_s: float) -> None:
        """Last attempts at exit: send what is queued until done, a failure, or the deadline."""
        end = time.monotonic() + deadline_s
        while self._queue and time.monotonic() < end:
            try:
                advanced = await asyncio.wait_for(self.send_one(), timeout=max(0.1, end - time.monotonic()))
            except TimeoutError:
                break
            if not advanced:
                break
        if self._queue:
            left = self._queued_samples
            why = f" (last error: {self.stats.last_error})" if self.stats.last_error else ""
            log.warning("exiting with %d samples not delivered to VictoriaMetrics%s", left, why)

    async def aclose(self) -> None:
        await self._client.aclose()
