"""Push to VictoriaMetrics (text import or remote write) without ever blocking collection.
The only module that imports httpx.

Batches wait in a bounded FIFO (bounded in samples); when it overflows the oldest are
dropped and counted. One sender task posts the oldest chunk; connection errors, timeouts,
5xx and 429 are retried with exponential backoff and full jitter (bounded delay); other
4xx drop the chunk and log the response body once per status.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from .errors import UsageError
from .settings import Credentials
from .metrics import Batch, SeriesTable, render_text
from .remote_write import HEADERS as RW_HEADERS
from .remote_write import RemoteWriteEncoder

__all__ = ["PushFormat", "classify_url", "redact_url", "PushStats", "Pusher"]

log = logging.getLogger(__name__)

_RW_PATH = re.compile(r"(^|/)api/v1/write/?$")
_TEXT_PATH = re.compile(r"(^|/)api/v1/import/prometheus/?$")
# Flow series per request: 10,000 samples (4 per series), vmagent's default block size. A
# body is encoded when it is sent, so this also bounds the memory one push takes (~2.5 MB).
SERIES_PER_REQUEST = 2_500


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


@dataclass
class PushStats:
    """What the pusher did; exported as xtrace_agent_push_* metrics."""

    successes: int = 0
    failures: int = 0
    retries: int = 0
    samples_sent: int = 0
    samples_dropped: int = 0
    last_success: float = 0.0  # wall clock
    last_error: str = ""


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

    def __init__(self, url: str, table: SeriesTable, credentials: Credentials | None = None,
                 insecure: bool = False, timeout: float = 10.0, buffer_samples: int = 3_000_000,
                 backoff_base: float = 0.5, backoff_max: float = 30.0) -> None:
        self.format = classify_url(url)
        # user:password@ in the URL becomes basic auth (as httpx would do itself) and leaves
        # the URL: httpx logs the request URL (shown with -v), and the password must not be in it.
        u = httpx.URL(url.strip())
        url_auth = httpx.BasicAuth(u.username, u.password) if u.userinfo else None
        self.url = str(u.copy_with(username=None, password=None)) if u.userinfo else url.strip()
        self.table = table
        self.encoder = RemoteWriteEncoder(table) if self.format is PushFormat.REMOTE_WRITE else None
        self.creds = credentials or Credentials()
        self.buffer_samples = buffer_samples
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.stats = PushStats()
        self._queue: deque[_Pending] = deque()
        self._queued_samples = 0
        self._wakeup = asyncio.Event()
        self._logged_status: set[int] = set()
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
        b = p.batch
        lo = p.next_chunk * SERIES_PER_REQUEST
        part = Batch(seq=b.seq, ts_ms=b.ts_ms, ids=b.ids[lo:lo + SERIES_PER_REQUEST],
                     values=b.values[lo:lo + SERIES_PER_REQUEST],
                     health=b.health if p.next_chunk == p.chunks() - 1 else [])
        if self.encoder is not None:
            return self.encoder.body(part), dict(RW_HEADERS), part.samples
        text = render_text(self.table, part, with_timestamps=True, with_meta=False)
        return text.encode(), {"Content-Type": "text/plain"}, part.samples

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[bool, bool]:
        """(delivered, retryable)."""
        try:
            r = await self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            self.stats.last_error = f"timeout: {exc!r}"
            return False, True
        except httpx.TransportError as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            return False, True
        if 200 <= r.status_code < 300:
            return True, False
        self.stats.last_error = f"HTTP {r.status_code}"
        if r.status_code == 429 or r.status_code >= 500:
            return False, True
        if r.status_code not in self._logged_status:
            self._logged_status.add(r.status_code)
            hint = " (check the credentials)" if r.status_code in (401, 403) else ""
            body = " ".join(r.text[:2000].split())[:500]  # one log line, whatever the body's layout
            log.error("VictoriaMetrics refused a push with HTTP %d%s: %s", r.status_code, hint, body)
        return False, False

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
        else:
            self.stats.failures += 1
            self.stats.samples_dropped += samples
        p.next_chunk += 1
        if p.next_chunk >= p.chunks() and self._queue and self._queue[0] is p:
            self._queue.popleft()
            self._queued_samples -= p.batch.samples
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
            log.warning("exiting with %d samples not delivered to VictoriaMetrics", left)

    async def aclose(self) -> None:
        await self._client.aclose()
