"""Export: one owner for the series table, the pusher and the /metrics server of a run, and the
agent's own health samples (push state, map fill, drops)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..export.series import Batch, MetricsConfig, SeriesTable, render_text
from ..flows import output
from ..flows.collector import Collector, Interval
from ..kernel.datapath import FlowMapInfo
from ..notify import Notify
from ..settings import Settings
from .sample import Sample

if TYPE_CHECKING:
    from ..export.push import Pusher
    from ..export.server import MetricsServer


# The kernel's ledger, packets and bytes: seen = counted + filtered + truncated + overflowed.
# (metric, STATS field, help)
LEDGER_METRICS = (
    ("xtrace_agent_packets_seen_total", "seen", "Packets the programs saw."),
    ("xtrace_agent_packets_counted_total", "counted", "Packets counted in flows."),
    ("xtrace_agent_packets_filtered_total", "filtered", "Packets left out by the filter or DNS exclusion."),
    ("xtrace_agent_packets_truncated_total", "truncated", "Packets with truncated or unparsable headers."),
    ("xtrace_agent_packets_overflowed_total", "overflowed", "Packets counted in the overflow table (map full)."),
    ("xtrace_agent_bytes_seen_total", "seen_bytes", "Wire bytes the programs saw."),
    ("xtrace_agent_bytes_counted_total", "counted_bytes", "Wire bytes counted in flows."),
    ("xtrace_agent_bytes_filtered_total", "filtered_bytes", "Wire bytes left out by the filter or DNS exclusion."),
    ("xtrace_agent_bytes_truncated_total", "truncated_bytes", "Wire bytes of packets with truncated headers."),
    ("xtrace_agent_bytes_overflowed_total", "overflowed_bytes", "Wire bytes counted in the overflow table."),
)


class Export:
    """Metric series for push and pull, fed once per interval."""

    def __init__(self, settings: Settings, iface: str, host_ip: str, collector: Collector | None = None,
                 fmap: FlowMapInfo | None = None, listener: socket.socket | None = None) -> None:
        x = settings.export
        self._listener = listener  # --metrics-addr, bound before anything was attached
        self.settings, self.collector = settings, collector
        self.fmap = fmap or FlowMapInfo(capacity=settings.max_flows)
        self.labels = {"interface": iface, "host_ip": host_ip, "collect_agg": x.collect_agg}
        self.table = SeriesTable(MetricsConfig(interface=iface, host_ip=host_ip, collect_agg=x.collect_agg,
                                               max_series=x.max_series, drop_ephemeral_ports=x.drop_ephemeral_ports))
        self.latest: Batch | None = None
        self.pusher: Pusher | None = None
        self.server: MetricsServer | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, notify: Notify) -> None:
        x = self.settings.export
        if x.vm_enabled:
            from ..export.push import Pusher, redact_url

            self.pusher = Pusher(x.vm_url, x.credentials, insecure=x.insecure,
                                 timeout=x.push_timeout_s, buffer_samples=x.push_buffer_samples)
            self._task = asyncio.create_task(self.pusher.run(self._stop))
            notify(f"pushing metrics to {redact_url(x.vm_url)} ({self.pusher.format.value})")
        if x.metrics_addr is not None:
            from ..export.server import MetricsServer

            self.server = MetricsServer(x.metrics_addr[0], x.metrics_addr[1], self.render, sock=self._listener)
            await self.server.start()
            notify(f"serving /metrics on {x.metrics_addr[0]}:{self.server.port}")

    def render(self) -> str:
        if self.latest is None:
            return ""
        return render_text(self.latest, with_timestamps=False, with_meta=True)

    def batch(self, iv: Interval, extra: Iterable[Sample] = ()) -> Batch:
        """Flow modes; runs in the worker thread (the series table's one owner), right after
        collect(). `extra`: more samples for this interval (the kernel-bypass comparison)."""
        return self.table.batch(iv, health=[*self._health(iv), *self._push_health(), *extra])

    def samples_batch(self, seq: int, ts: float, samples: list[Sample]) -> Batch:
        """Counter modes: a batch of ready samples (no flow series)."""
        return Batch(seq=seq, ts_ms=int(ts * 1000), ids=np.zeros(0, np.int64), values=np.zeros((0, 4), np.uint64),
                     health=(*samples, *self._push_health()))

    def publish(self, b: Batch) -> None:
        """On the event loop: the batch is immutable and carries its labels, so /metrics and
        the pusher use it without the series table."""
        self.latest = b
        if self.pusher is not None:
            self.pusher.enqueue(b)

    def status_line(self) -> str:
        """The push state in a few words for the live table ('' when not pushing)."""
        if self.pusher is None:
            return ""
        ps = self.pusher.stats
        return f"push {ps.successes} ok / {ps.failures} failed, buffer {self.pusher.queued_samples}"

    def push_summary(self) -> dict[str, object]:
        """The pusher's state for the summary record (empty when not pushing)."""
        if self.pusher is None:
            return {}
        ps = self.pusher.stats
        return {"push_successes": ps.successes, "push_failures": ps.failures,
                "push_consecutive_failures": ps.consecutive_failures,
                "push_last_error": ps.last_error or None,
                "push_last_error_time": output.rfc3339(ps.last_error_time) if ps.last_error_time else None,
                "push_buffer_samples": self.pusher.queued_samples, "push_samples_dropped": ps.samples_dropped,
                "push_samples_late": ps.samples_late}

    def _push_health(self) -> list[Sample]:
        if self.pusher is None:
            return []
        L, ps = self.labels, self.pusher.stats
        return [
            ("xtrace_agent_push_consecutive_failures", "gauge", "Failed push attempts since the last success.", L,
             ps.consecutive_failures),
            ("xtrace_agent_push_last_error_timestamp_seconds", "gauge",
             "Wall-clock time of the last failed push; label reason: refused, dns, tls, timeout, reset, "
             "unreachable, http, other (none before any failure).", {**L, "reason": ps.last_error_kind or "none"},
             round(ps.last_error_time, 3)),
            ("xtrace_agent_samples_late_total", "counter", "Samples delivered late, from the backlog of an outage.",
             L, ps.samples_late),
            ("xtrace_agent_push_successes_total", "counter", "Successful pushes.", L, ps.successes),
            ("xtrace_agent_push_failures_total", "counter", "Failed push attempts.", L, ps.failures),
            ("xtrace_agent_push_retries_total", "counter", "Push retries after a failure.", L, ps.retries),
            ("xtrace_agent_samples_dropped_total", "counter", "Samples dropped (buffer full or refused).", L,
             ps.samples_dropped),
            ("xtrace_agent_push_buffer_samples", "gauge", "Samples waiting to be pushed.", L,
             self.pusher.queued_samples),
            ("xtrace_agent_last_push_timestamp_seconds", "gauge", "Wall-clock time of the last successful push.",
             L, round(ps.last_success, 3)),
        ]

    def _health(self, iv: Interval) -> list[Sample]:
        L = self.labels
        st = iv.stats_total
        assert self.collector is not None
        h: list[Sample] = [
            ("xtrace_agent_flows_tracked", "gauge", "Flows in the kernel map.", L, iv.flows_tracked),
            ("xtrace_agent_map_capacity", "gauge", "Capacity of the kernel flow map.", L, self.fmap.capacity),
            ("xtrace_agent_map_memory_bytes", "gauge", "Kernel memory of the flow map (bpftool's memlock).", L,
             self.fmap.memory_bytes),
            ("xtrace_agent_map_full", "gauge", "1 when packets overflowed the flow map in the last interval.", L,
             1 if iv.stats_delta["overflowed"] else 0),
            *((name, "counter", help_, L, st[field]) for name, field, help_ in LEDGER_METRICS),
            ("xtrace_agent_flows_evicted_total", "counter", "Idle flows removed from the kernel map.", L,
             self.collector.evicted_total),
            ("xtrace_agent_collect_duration_seconds", "gauge", "Time the last collection took.", L,
             round(iv.collect_seconds, 6)),
            ("xtrace_agent_series", "gauge", "Metric series held by the agent.", L, len(self.table)),
        ]
        return h

    async def stop(self, deadline_s: float = 5.0) -> None:
        """Stop pushing and serving. The last push attempts take at most `deadline_s` in all:
        a push in flight to a server that never answers would otherwise hold the exit (and
        our attachments) for its whole HTTP timeout before drain() even starts."""
        self._stop.set()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=deadline_s)
            except TimeoutError:
                pass  # the hung push was cancelled; drain() retries it with the time left
        if self.pusher is not None:
            await self.pusher.drain(deadline_s=max(0.0, end - loop.time()))
            await self.pusher.aclose()
        if self.server is not None:
            await self.server.close()


@contextlib.contextmanager
def metrics_listener(settings: Settings) -> Iterator[socket.socket | None]:
    """--metrics-addr's socket, bound now (a busy port is an error before anything starts)."""
    addr = settings.export.metrics_addr
    if addr is None:
        yield None
        return
    from ..export.server import listen

    sock = listen(*addr)
    try:
        yield sock
    finally:
        sock.close()  # the server has closed it already when it ran; closing twice is harmless
