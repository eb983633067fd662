"""The `run` loop: load, attach, collect every interval, emit; detach on exit or signal.

Collecting (blocking map reads) runs in a worker thread so the asyncio loop stays free
for exporters. SIGINT/SIGTERM emit the last interval, detach and return 0.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import TextIO

from . import attach
from .attach.interfaces import host_ip_for
from .attach.watch import Watch
from .export.health import Export, metrics_listener
from .export.series import Batch
from .flows.collector import Collector
from .flows.emit import Emitter, FlowResult
from .kernel.caps import check_bpf_privileges
from .kernel.datapath import PROG_XDP, TC_PROGS, Datapath, DatapathConfig, default_dns_servers
from .kernel.layout import LinkType
from .kernel.process import tune_malloc
from .loop import interval_loop, stop_signals_held
from .rdma.bypass import kernel_roce_bytes, resolve_port
from .rdma.run import bypass_tracker
from .settings import Mode, Settings

__all__ = ["run"]


log = logging.getLogger(__name__)






def run(settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the agent until --count intervals, SIGINT or SIGTERM. Raises XtraceError subclasses.

    Set-up and teardown (netlink, BPF load) are synchronous; only the interval loop runs
    in asyncio (pyroute2's synchronous API cannot be used inside a running loop)."""
    assert settings.mode in (Mode.XDP, Mode.TC)
    tune_malloc()
    iface = attach.get_interface(settings.interface)
    check_bpf_privileges()
    # Everything a user can get wrong is found before any program touches the interface.
    bypass_port = resolve_port(settings.sysfs_root, iface.name, settings.rdma_device)
    with metrics_listener(settings) as listener:
        return _run(settings, iface, bypass_port, listener, out, err)


def _run(settings: Settings, iface: attach.Interface, bypass_port: tuple[str, int] | None,
         listener: socket.socket | None, out: TextIO, err: TextIO) -> int:

    def notify(msg: str) -> None:
        print(f"xtrace-catch: {msg}", file=err, flush=True)

    if not iface.state.passes_traffic:
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
        with stop_signals_held(), Watch(settings, dp, iface, notify) as watch:
            collector = Collector(dp, idle_timeout=settings.idle_timeout_s)
            fmap = dp.flow_map_info()
            log.info("flow map: %d flows, %d bytes of kernel memory, read by %s", fmap.capacity, fmap.memory_bytes,
                     fmap.reads)
            if settings.mode is Mode.XDP:
                log.info("XDP program: %s", dp.xdp_variant)
            export = Export(settings, iface.name, host_ip, collector, fmap, listener) if settings.export.any else None
            emitter = Emitter(settings, iface.name, host_ip, fmap, out, notify, export)
            tracker = bypass_tracker(settings, bypass_port, notify)
            extra = {"interface": iface.name, "host_ip": host_ip, "collect_agg": settings.export.collect_agg}

            def step() -> tuple[FlowResult, Batch | None]:
                iv = collector.collect()
                watch.check()
                bp = tracker.update(kernel_roce_bytes(iv)) if tracker is not None else None
                batch = export.batch(iv, bp.samples(extra) if bp is not None else ()) if export is not None else None
                return (iv, bp), batch

            try:
                asyncio.run(interval_loop(settings, step, emitter.emit, export, notify))
            finally:
                emitter.close()
    return 0


