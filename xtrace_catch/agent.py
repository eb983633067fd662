"""The `run` loop: load, attach, collect every interval, emit; detach on exit or signal.

Collecting (blocking map reads) runs in a worker thread so the asyncio loop stays free
for exporters. SIGINT/SIGTERM emit the last interval, detach and return 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TextIO

from . import attach, output
from .caps import check_bpf_privileges
from .collector import Collector, Interval
from .datapath import PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP, Datapath, DatapathConfig, default_dns_servers
from .layout import Direction, LinkType
from .settings import Mode, Output, Settings

__all__ = ["run", "host_ip_for"]

log = logging.getLogger(__name__)
TC_PROGS = {Direction.INGRESS: PROG_TC_INGRESS, Direction.EGRESS: PROG_TC_EGRESS}


def host_ip_for(iface: attach.Interface) -> str:
    """The interface's primary IPv4, else the first global IPv4 of the host, else ''."""
    ip = iface.primary_ipv4()
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
    """Writes intervals as text or JSON lines."""

    def __init__(self, settings: Settings, iface: str, host_ip: str, capacity: int, out: TextIO) -> None:
        self.s, self.iface, self.host_ip, self.capacity, self.out = settings, iface, host_ip, capacity, out

    def emit(self, iv: Interval) -> None:
        rows = output.decode_flows(iv.keys, iv.delta, iv.totals)
        summ = output.summary(iv, self.iface, self.capacity)
        lines: list[str] = []
        if self.s.output is Output.JSON:
            lines.extend(output.dumps(output.json_record(r, iv.time, self.iface, self.host_ip)) for r in rows)
            lines.append(output.dumps(summ))
        else:
            lines.extend(output.text_line(r, self.host_ip) for r in rows)
            lines.append(output.summary_text(summ))
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()


def run(settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the agent until --count intervals, SIGINT or SIGTERM. Raises XtraceError subclasses.

    Set-up and teardown (netlink, BPF load) are synchronous; only the interval loop runs
    in asyncio (pyroute2's synchronous API cannot be used inside a running loop)."""
    assert settings.mode in (Mode.XDP, Mode.TC)
    iface = attach.get_interface(settings.interface)
    check_bpf_privileges()

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
        with attach.Attachments(iface, notify) as att:
            if settings.mode is Mode.XDP:
                mode = att.attach_xdp(dp.prog_fd(PROG_XDP), settings.xdp_mode)
                notify(f"XDP program loaded on {iface.name}" + (" (generic mode)" if mode == "generic" else ""))
            else:
                for d in settings.direction.directions:
                    att.attach_tc(d, dp.prog_fd(TC_PROGS[d]))
                dirs = ", ".join(d.label for d in settings.direction.directions)
                notify(f"TC program attached to {iface.name} ({dirs})")
            if iface.is_infiniband:
                notify(f"{iface.name} is IPoIB: its IP traffic is reported as IPoIB; native InfiniBand and "
                       "hardware RoCE bypass the kernel: use -m rdma for the NIC's counters")
            collector = Collector(dp, idle_timeout=settings.idle_timeout_s)
            emitter = Emitter(settings, iface.name, host_ip, settings.max_flows, out)
            asyncio.run(_loop(settings, collector, emitter))
    return 0


async def _loop(settings: Settings, collector: Collector, emitter: Emitter) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        period = settings.interval_ms / 1000.0
        next_at = loop.time() + period
        done = 0
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - loop.time()))
            except TimeoutError:
                pass
            iv = await asyncio.to_thread(collector.collect)
            emitter.emit(iv)
            done += 1
            if stop.is_set() or (settings.count is not None and done >= settings.count):
                return
            next_at += period
            if next_at < loop.time():  # fell behind (slow terminal, huge map): skip, do not burst
                next_at = loop.time() + period
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
