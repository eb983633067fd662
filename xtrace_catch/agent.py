"""The `run` loop: load, attach, collect every interval, emit; detach on exit or signal.

Collecting (blocking map reads) runs in a worker thread so the asyncio loop stays free
for exporters. SIGINT/SIGTERM emit the last interval, detach and return 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO, TypeVar

import numpy as np

from . import attach
from .kernel import libbpf
from .flows import output
from .rdma.bypass import BypassPort, BypassTracker, kernel_roce_bytes, resolve_port
from .kernel.caps import check_bpf_privileges
from .flows.collector import Collector, FlowMapInfo, Interval
from .export.series import Batch, MetricsConfig, SeriesTable, render_text
from .kernel.datapath import PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP, Datapath, DatapathConfig, default_dns_servers
from .kernel.layout import Direction, LinkType
from .errors import UsageError, XtraceError
from .settings import Mode, Output, Settings

if TYPE_CHECKING:
    from . import rdma
    from .export.push import Pusher
    from .flows.live import LiveView
    from .export.server import MetricsServer

__all__ = ["run", "run_counters", "host_ip_for"]

log = logging.getLogger(__name__)
TC_PROGS = {Direction.INGRESS: PROG_TC_INGRESS, Direction.EGRESS: PROG_TC_EGRESS}
Notify = Callable[[str], None]
Sample = tuple[str, str, str, dict[str, str], float]
T = TypeVar("T")
FlowResult = tuple[Interval, "BypassPort | None"]


def host_ip_for(iface: attach.Interface | None) -> str:
    """The interface's primary IPv4, else the first non-loopback IPv4 of the host, else ''."""
    ip = iface.primary_ipv4() if iface is not None else None
    if ip:
        return ip
    for other in attach.list_interfaces():
        if other.link_type == "loopback":
            continue
        ip = other.primary_ipv4()
        if ip:
            return ip
    return ""


class Emitter:
    """Writes intervals as text or JSON lines, or redraws the live table."""

    def __init__(self, settings: Settings, iface: str, host_ip: str, fmap: FlowMapInfo, out: TextIO,
                 notify: Notify | None = None, export: Export | None = None) -> None:
        self.s, self.iface, self.host_ip, self.fmap, self.out = settings, iface, host_ip, fmap, out
        self.export = export
        self.live: LiveView | None = None
        if settings.output is Output.TABLE:
            from rich.console import Console

            from .flows.live import LiveView

            lv = LiveView(Console(file=out))
            if lv.is_terminal:
                self.live = lv
            elif notify is not None:
                notify("stdout is not a terminal: writing text lines instead of the live table")
        self.writer = output.LineWriter(iface, host_ip, as_json=settings.output is Output.JSON)
        dirs = "+".join(d.label for d in settings.direction.directions)
        self.mode_desc = f"{settings.mode.value} {dirs}"

    def _export_status(self) -> str:
        if self.export is None or self.export.pusher is None:
            return ""
        ps = self.export.pusher.stats
        return f"push {ps.successes} ok / {ps.failures} failed, buffer {self.export.pusher.queued_samples}"

    def emit(self, res: FlowResult) -> None:
        iv, bp = res
        if self.live is not None:
            from .flows.live import ViewState

            rows = output.decode_flows(iv.keys, iv.delta, iv.totals)
            self.live.update(ViewState(interface=self.iface, mode=self.mode_desc, iv=iv, rows=rows,
                                       capacity=self.fmap.capacity, export=self._export_status(), bypass=bp))
            return
        summ = output.summary(iv, self.iface, self.fmap)
        if self.export is not None:
            summ.update(self.export.push_summary())
        for chunk in self.writer.chunks(iv):  # a big interval goes out in slices, never whole in memory
            self.out.write("\n".join(chunk) + "\n")
        tail: list[str] = []
        if self.s.output is Output.JSON:
            if bp is not None:
                tail.append(output.dumps(bp.record(summ["time"], self.iface)))
            tail.append(output.dumps(summ))
        else:
            if bp is not None:
                tail.append(bp.text())
            tail.append(output.summary_text(summ))
        self.out.write("\n".join(tail) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.live is not None:
            self.live.close()


def run(settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the agent until --count intervals, SIGINT or SIGTERM. Raises XtraceError subclasses.

    Set-up and teardown (netlink, BPF load) are synchronous; only the interval loop runs
    in asyncio (pyroute2's synchronous API cannot be used inside a running loop)."""
    assert settings.mode in (Mode.XDP, Mode.TC)
    libbpf.tune_malloc()
    iface = attach.get_interface(settings.interface)
    check_bpf_privileges()
    # Everything a user can get wrong is found before any program touches the interface.
    bypass_port = resolve_port(settings.sysfs_root, iface.name, settings.rdma_device)
    with _metrics_listener(settings) as listener:
        return _run(settings, iface, bypass_port, listener, out, err)


def _run(settings: Settings, iface: attach.Interface, bypass_port: tuple[str, int] | None,
         listener: socket.socket | None, out: TextIO, err: TextIO) -> int:

    def notify(msg: str) -> None:
        print(f"xtrace-catch: {msg}", file=err, flush=True)

    if iface.state.upper() not in ("UP", "UNKNOWN"):
        notify(f"warning: {iface.name} is {iface.state}; counting continues and starts when it comes up")
    if settings.mode is Mode.XDP:
        programs = frozenset({PROG_XDP})
    else:
        programs = frozenset(TC_PROGS[d] for d in settings.direction.directions)
    cfg = DatapathConfig(
        filter=settings.filter, exclude_dns=settings.exclude_dns,
        link_type=LinkType.INFINIBAND if iface.is_infiniband else LinkType.ETHERNET,
        max_flows=settings.max_flows, programs=programs,
    )
    host_ip = host_ip_for(iface)
    with Datapath(cfg) as dp:
        if settings.exclude_dns:
            servers = dp.set_dns_servers([*default_dns_servers(), *settings.dns_servers])
            log.info("excluding DNS: port 53 and %d server addresses", len(servers))
        with Watch(settings, dp, iface, notify) as watch:
            collector = Collector(dp, idle_timeout=settings.idle_timeout_s)
            fmap = dp.flow_map_info()
            log.info("flow map: %d flows, %d bytes of kernel memory, read by %s", fmap.capacity, fmap.memory_bytes,
                     fmap.reads)
            export = Export(settings, iface.name, host_ip, collector, fmap, listener) if settings.export.any else None
            emitter = Emitter(settings, iface.name, host_ip, fmap, out, notify, export)
            tracker = _bypass_tracker(settings, bypass_port, notify)
            extra = {"interface": iface.name, "host_ip": host_ip, "collect_agg": settings.export.collect_agg}

            def step() -> tuple[FlowResult, Batch | None]:
                iv = collector.collect()
                watch.check()
                bp = tracker.update(kernel_roce_bytes(iv)) if tracker is not None else None
                batch = export.batch(iv) if export is not None else None
                if batch is not None and bp is not None:
                    batch.health.extend(bp.samples(extra))
                return (iv, bp), batch

            try:
                asyncio.run(_loop(settings, step, emitter.emit, export, notify))
            finally:
                emitter.close()
    return 0


class Watch:
    """Our attachments to the watched interface, kept alive across its deletion and return.

    When the interface disappears the kernel removes our programs with it: we say so and
    keep running; when an interface of that name comes back (a new ifindex) we attach
    again. Link down/up needs nothing: programs stay attached and counting resumes."""

    def __init__(self, settings: Settings, dp: Datapath, iface: attach.Interface, notify: Notify) -> None:
        self.s, self.dp, self.notify = settings, dp, notify
        self.iface = iface
        self._state = iface.state.upper()
        self.att: attach.Attachments | None = None
        self._attach(iface)

    def _attach(self, iface: attach.Interface) -> None:
        att = attach.Attachments(iface, self.notify)
        try:
            if self.s.mode is Mode.XDP:
                mode = att.attach_xdp(self.dp.prog_fd(PROG_XDP), self.s.xdp_mode)
                self.notify(f"XDP program loaded on {iface.name}" + (" (generic mode)" if mode == "generic" else ""))
            else:
                for d in self.s.direction.directions:
                    att.attach_tc(d, self.dp.prog_fd(TC_PROGS[d]))
                dirs = ", ".join(d.label for d in self.s.direction.directions)
                self.notify(f"TC program attached to {iface.name} ({dirs})")
        except BaseException:
            att.detach()
            raise
        self.att, self.iface = att, iface
        log.info("attach paths on %s: %s", iface.name, ", ".join(f"{h} {p}" for h, p in att.paths.items()))
        if iface.is_infiniband:
            self.notify(f"{iface.name} is IPoIB: its IP traffic is reported as IPoIB; native InfiniBand and "
                        "hardware RoCE bypass the kernel: use -m rdma for the NIC's counters")

    def check(self) -> None:
        """Once per interval (worker thread): follow the interface's deletion, return and state."""
        now = attach.find_interface(self.iface.name)
        if self.att is not None and (now is None or now.index != self.iface.index):
            self.att.forget()  # the kernel removed our programs with the device
            self.att = None
            self.notify(f"{self.iface.name} disappeared; still running, will attach again when it returns")
        if now is None:
            return
        if self.att is None:
            try:
                self._attach(now)
            except XtraceError as exc:
                self.notify(f"{now.name} is back but attaching failed: {exc}; will retry")
                return
            self._state = now.state.upper()
            self.notify(f"{now.name} is back (ifindex {now.index}): attached again")
            return
        state = now.state.upper()
        if state != self._state:
            self._state = state
            if state not in ("UP", "UNKNOWN"):
                self.notify(f"{now.name} is {now.state}; programs stay attached, counting resumes when it is up")
            else:
                self.notify(f"{now.name} is {now.state} again")

    def close(self) -> None:
        if self.att is not None:
            att, self.att = self.att, None
            att.detach()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
            from .export.push import Pusher, redact_url

            self.pusher = Pusher(x.vm_url, self.table, x.credentials, insecure=x.insecure,
                                 timeout=x.push_timeout_s, buffer_samples=x.push_buffer_samples)
            self._task = asyncio.create_task(self.pusher.run(self._stop))
            notify(f"pushing metrics to {redact_url(x.vm_url)} ({self.pusher.format.value})")
        if x.metrics_addr is not None:
            from .export.server import MetricsServer

            self.server = MetricsServer(x.metrics_addr[0], x.metrics_addr[1], self.render, sock=self._listener)
            await self.server.start()
            notify(f"serving /metrics on {x.metrics_addr[0]}:{self.server.port}")

    def render(self) -> str:
        if self.latest is None:
            return ""
        return render_text(self.table, self.latest, with_timestamps=False, with_meta=True)

    def batch(self, iv: Interval) -> Batch:
        """Flow modes; runs in the worker thread, right after collect()."""
        b = self.table.batch(iv)
        b.health = self._health(iv) + self._push_health()
        return b

    def samples_batch(self, seq: int, ts: float, samples: list[Sample]) -> Batch:
        """Counter modes: a batch of ready samples (no flow series)."""
        return Batch(seq=seq, ts_ms=int(ts * 1000), ids=np.zeros(0, np.int64), values=np.zeros((0, 4), np.uint64),
                     health=samples + self._push_health())

    def publish(self, b: Batch) -> None:
        self.latest = b
        oldest = b.seq
        if self.pusher is not None:
            self.pusher.enqueue(b)
            oldest = min(oldest, self.pusher.oldest_seq or oldest)
        self.table.prune(oldest)

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
            ("xtrace_agent_packets_seen_total", "counter", "Packets the programs saw.", L, st["seen"]),
            ("xtrace_agent_packets_counted_total", "counter", "Packets counted in flows.", L, st["counted"]),
            ("xtrace_agent_packets_filtered_total", "counter", "Packets dropped by filter or DNS exclusion.", L,
             st["filtered"]),
            ("xtrace_agent_packets_truncated_total", "counter", "Packets with truncated/unparsable headers.", L,
             st["truncated"]),
            ("xtrace_agent_packets_overflowed_total", "counter", "Packets counted in the overflow table (map full).",
             L, st["overflowed"]),
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


async def _loop(settings: Settings, step: Callable[[], tuple[T, Batch | None]], emit: Callable[[T], None],
                export: Export | None, notify: Notify) -> None:
    """Every interval: `step` in a worker thread (blocking reads), publish its batch, `emit` its result.
    Ends after --count intervals or at SIGINT/SIGTERM (after one last interval)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if export is not None:
        await export.start(notify)
    try:
        period = settings.interval_ms / 1000.0
        next_at = loop.time() + period
        done = 0
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - loop.time()))
            except TimeoutError:
                pass
            result, batch = await asyncio.to_thread(step)
            if export is not None and batch is not None:
                export.publish(batch)
            emit(result)
            done += 1
            if stop.is_set() or (settings.count is not None and done >= settings.count):
                return
            next_at += period
            if next_at < loop.time():  # fell behind (slow terminal, huge map): skip, do not burst
                next_at = loop.time() + period
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if export is not None:
            await export.stop()


@contextlib.contextmanager
def _metrics_listener(settings: Settings) -> Iterator[socket.socket | None]:
    """--metrics-addr's socket, bound now (a busy port is an error before anything starts)."""
    addr = settings.export.metrics_addr
    if addr is None:
        yield None
        return
    from .export.server import listen

    sock = listen(*addr)
    try:
        yield sock
    finally:
        sock.close()  # the server has closed it already when it ran; closing twice is harmless


def _bypass_tracker(settings: Settings, found: tuple[str, int] | None, notify: Notify) -> BypassTracker | None:
    """The NIC-vs-kernel comparison for the RDMA port behind the interface (or --rdma-device)."""
    if found is None:
        return None
    device, port = found
    notify(f"comparing with RDMA {device} port {port}: NIC bytes the kernel did not see are reported as bypass")
    return BypassTracker(settings.sysfs_root, device, port)


def run_counters(settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`-m rdma` / `-m nccl`: read the RDMA NIC's sysfs counters every interval. No root needed."""
    from . import rdma

    def notify(msg: str) -> None:
        print(f"xtrace-catch: {msg}", file=err, flush=True)

    nccl = settings.mode is Mode.NCCL
    sel = rdma.select_devices(settings.sysfs_root, settings.device, settings.interface)
    if settings.interface_given:
        _check_counter_interface(settings.sysfs_root, settings.interface)
    reader = rdma.RdmaReader(settings.sysfs_root, sel.reader_devices, nccl=nccl)
    reader.poll()  # baseline
    if nccl:
        rdma.check_interval(settings.interval_ms, reader.max_lifespan_ms)
    notify(f"reading {'hw_counters and port counters' if nccl else 'port counters'} of {sel.why} "
           f"under {settings.sysfs_root}")
    host_ip = _host_ip_by_name(settings.interface)
    with _metrics_listener(settings) as listener:
        export = Export(settings, settings.interface, host_ip, listener=listener) if settings.export.any else None
        _run_counter_loop(settings, reader, export, host_ip, notify, out)
    return 0


def _run_counter_loop(settings: Settings, reader: rdma.RdmaReader, export: Export | None, host_ip: str,
                      notify: Notify, out: TextIO) -> None:
    from . import rdma

    extra = {"interface": settings.interface, "host_ip": host_ip, "collect_agg": settings.export.collect_agg}

    def step() -> tuple[rdma.RdmaInterval, Batch | None]:
        iv = reader.poll()
        b = export.samples_batch(iv.seq, iv.time, rdma.interval_metrics(iv, extra)) if export is not None else None
        return iv, b

    def emit(iv: rdma.RdmaInterval) -> None:
        lines: list[str] = []
        for d in iv.ports:
            if settings.output is Output.JSON:
                lines.append(output.dumps(rdma.json_record(d)))
            else:
                lines.append(rdma.text_line(d))
                if d.nccl:
                    lines.append(rdma.health_line(d))
        for m in iv.missing:
            lines.append(output.dumps({"record": "rdma_missing", "time": output.rfc3339(iv.time), "device": m})
                         if settings.output is Output.JSON
                         else f"--- {m}: not readable this interval")
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()

    asyncio.run(_loop(settings, step, emit, export, notify))


def _check_counter_interface(root: str, name: str) -> None:
    """A named -i must exist: as a netdev here, or under the sysfs root the counters come from
    (a container reading the host's /host/sys). A typo would otherwise label every sample."""
    from . import rdma

    try:
        attach.get_interface(name)
        return
    except XtraceError:
        pass
    if os.path.isdir(os.path.join(root, "class", "net", name)) or any(x.netdev == name for x in rdma.netdev_links(root)):
        return
    raise UsageError(f"interface {name!r} not found (nor under {root}/class/net); list interfaces with "
                     "'xtrace-catch -l', or leave -i out to read every RDMA device")


def _host_ip_by_name(name: str) -> str:
    """host_ip_for() by name; the counter modes do not need the interface to exist."""
    try:
        iface: attach.Interface | None = attach.get_interface(name)
    except XtraceError:
        iface = None
    return host_ip_for(iface)
