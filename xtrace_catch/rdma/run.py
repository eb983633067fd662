"""The counter modes (-m rdma, -m nccl) as a run: the reader, its renderers and the export each interval."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TextIO

from ..attach.interfaces import get_interface, host_ip_by_name
from ..errors import UsageError, XtraceError
from ..export.health import Export, metrics_listener
from ..export.series import Batch
from ..flows import output
from ..loop import interval_loop
from ..notify import Notify
from ..settings import Mode, Output, Settings
from .bypass import BypassTracker
from .devices import check_interval, netdev_links, select_devices
from .metrics import interval_metrics
from .reader import RdmaReader
from .records import RdmaInterval
from .render import health_line, json_record, text_line


def bypass_tracker(settings: Settings, found: tuple[str, int] | None, notify: Notify) -> BypassTracker | None:
    """The NIC-vs-kernel comparison for the RDMA port behind the interface (or --rdma-device)."""
    if found is None:
        return None
    device, port = found
    notify(f"comparing with RDMA {device} port {port}: NIC bytes the kernel did not see are reported as bypass")
    return BypassTracker(settings.sysfs_root, device, port)


def run_counters(settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`-m rdma` / `-m nccl`: read the RDMA NIC's sysfs counters every interval. No root needed."""
    def notify(msg: str) -> None:
        print(f"xtrace-catch: {msg}", file=err, flush=True)

    nccl = settings.mode is Mode.NCCL
    sel = select_devices(settings.sysfs_root, settings.device, settings.interface)
    if settings.interface_given:
        _check_counter_interface(settings.sysfs_root, settings.interface)
    reader = RdmaReader(settings.sysfs_root, sel.reader_devices, nccl=nccl)
    reader.poll()  # baseline
    if nccl:
        check_interval(settings.interval_ms, reader.max_lifespan_ms)
    notify(f"reading {'hw_counters and port counters' if nccl else 'port counters'} of {sel.why} "
           f"under {settings.sysfs_root}")
    host_ip = host_ip_by_name(settings.interface)
    with metrics_listener(settings) as listener:
        export = Export(settings, settings.interface, host_ip, listener=listener) if settings.export.any else None
        _run_counter_loop(settings, reader, export, host_ip, notify, out)
    return 0


def _run_counter_loop(settings: Settings, reader: RdmaReader, export: Export | None, host_ip: str,
                      notify: Notify, out: TextIO) -> None:
    extra = {"interface": settings.interface, "host_ip": host_ip, "collect_agg": settings.export.collect_agg}

    def step() -> tuple[RdmaInterval, Batch | None]:
        iv = reader.poll()
        b = export.samples_batch(iv.seq, iv.time, interval_metrics(iv, extra)) if export is not None else None
        return iv, b

    def emit(iv: RdmaInterval) -> None:
        lines: list[str] = []
        for d in iv.ports:
            if settings.output is Output.JSON:
                lines.append(output.dumps(json_record(d)))
            else:
                lines.append(text_line(d))
                if d.nccl:
                    lines.append(health_line(d))
        for m in iv.missing:
            lines.append(output.dumps({"record": "rdma_missing", "time": output.rfc3339(iv.time), "device": m})
                         if settings.output is Output.JSON
                         else f"--- {m}: not readable this interval")
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()

    asyncio.run(interval_loop(settings, step, emit, export, notify))


def _check_counter_interface(root: str, name: str) -> None:
    """A named -i must exist: as a netdev here, or under the sysfs root the counters come from
    (a container reading the host's /host/sys). A typo would otherwise label every sample."""
    try:
        get_interface(name)
        return
    except XtraceError:
        pass
    if os.path.isdir(os.path.join(root, "class", "net", name)) or any(x.netdev == name for x in netdev_links(root)):
        return
    raise UsageError(f"interface {name!r} not found (nor under {root}/class/net); list interfaces with "
                     "'xtrace-catch -l', or leave -i out to read every RDMA device")
