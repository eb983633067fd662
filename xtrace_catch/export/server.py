"""`--metrics-addr HOST:PORT`: serve the latest metrics at /metrics (Prometheus text, no framework)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from ..errors import UsageError

__all__ = ["parse_addr", "listen", "MetricsServer", "CONTENT_TYPE"]

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_addr(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' (127.0.0.1) -> (host, port)."""
    t = text.strip()
    host, sep, port_s = t.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise UsageError(f"--metrics-addr {text!r}: give HOST:PORT with a port 1..65535, e.g. 127.0.0.1:9435")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"--metrics-addr {text!r}: write IPv6 hosts in brackets, e.g. [::1]:9435")
    return host or "127.0.0.1", int(port_s)  # only what the user names is exposed


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, made before the agent attaches anything: a port in use or
    an address not on this host is a usage error then, not after the programs are in place."""
    try:
        family, type_, proto, _name, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--metrics-addr {host}:{port}: cannot listen ({exc.strerror}); "
                         "choose a free port or another address") from None
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise UsageError(f"--metrics-addr {host}:{port}: cannot listen ({exc.strerror}); "
                         "choose a free port or another address") from None
    return sock


class MetricsServer:
    """A minimal HTTP/1.1 server: GET /metrics renders `render()`; anything else is 404."""

    def __init__(self, host: str, port: int, render: Callable[[], str], sock: socket.socket | None = None) -> None:
        self.host, self.port, self.render = host, port, render
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        sock = self._sock if self._sock is not None else listen(self.host, self.port)
        self._server = await asyncio.start_server(self._handle, sock=sock)
        self.port = sock.getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            parts = head.split(b"\r\n", 1)[0].split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
            if method in (b"GET", b"HEAD") and path.split(b"?", 1)[0] == b"/metrics":
                body = self.render().encode()
                status, ctype = "200 OK", CONTENT_TYPE
            else:
                body, status, ctype = b"not found: try /metrics\n", "404 Not Found", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + (body if method != b"HEAD" else b""))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
