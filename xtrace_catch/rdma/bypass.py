"""The unified RoCE view: bytes the RDMA NIC counted vs RoCE bytes the kernel datapath saw.

On ConnectX-class NICs hardware RoCE never passes the kernel, so XDP/TC see only soft-RoCE or
mirrored traffic. Per port and direction (ingress = NIC rx, egress = NIC tx), each interval:
NIC bytes (``port_*_data`` x4) minus the RoCE v1/v2 bytes our programs counted is the traffic
that bypassed the kernel. A negative difference (the kernel saw more, e.g. framing differences
or counters refreshed at another moment) counts as 0 bypassed, so the total never goes back.
The NIC's port counters may include other traffic of that port: the difference is an upper
bound of RDMA traffic the kernel did not see.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..export.sample import Sample
from ..flows.collector import Interval, V
from ..kernel.layout import Direction, TrafficType
from .counters import DATA_WORD, counter_step
from .devices import list_devices, netdev_links
from .reader import RdmaReader

__all__ = [
    "BypassPort", "BypassTracker", "kernel_roce_bytes", "resolve_port",
]

log = logging.getLogger(__name__)
_ROCE = (int(TrafficType.ROCE_V1), int(TrafficType.ROCE_V2))


def kernel_roce_bytes(iv: Interval) -> dict[Direction, int]:
    """RoCE v1+v2 bytes the datapath counted in this interval, per direction (overflow included)."""
    out = {d: 0 for d in Direction}
    if len(iv.keys):
        tt = iv.keys["traffic_type"]
        dirs = iv.keys["direction"]
        roce = np.isin(tt, _ROCE)
        for d in Direction:
            m = roce & (dirs == int(d))
            out[d] = int(iv.delta[m, V["bytes"]].sum())
    for d in Direction:
        for t in _ROCE:
            out[d] += int(iv.overflow_delta[int(d), t, V["bytes"]])
    return out


@dataclass(frozen=True)
class BypassPort:
    """One interval of one port."""

    device: str
    port: int
    nic: dict[Direction, int | None]  # NIC bytes this interval (None: unreadable)
    kernel: dict[Direction, int]  # RoCE bytes the kernel saw this interval
    bypass: dict[Direction, int]  # max(0, nic - kernel)
    bypass_total: dict[Direction, int]  # since start

    def record(self, time: str, interface: str) -> dict[str, object]:
        """The JSON record (`"record": "kernel_bypass"`): `time` as the interval's records give it."""
        rec: dict[str, object] = {"record": "kernel_bypass", "time": time, "interface": interface,
                                  "device": self.device, "port": self.port}
        for d in Direction:
            rec[d.label] = {"nic_bytes": self.nic[d], "kernel_roce_bytes": self.kernel[d],
                            "bypass_bytes": self.bypass[d], "bypass_bytes_total": self.bypass_total[d]}
        return rec

    def text(self) -> str:
        parts = []
        for d in Direction:
            nic = "?" if self.nic[d] is None else str(self.nic[d])
            parts.append(f"{d.label} nic={nic} kernel_roce={self.kernel[d]} bypassed={self.bypass[d]}")
        return f"--- kernel bypass {self.device}/{self.port}: " + "; ".join(parts)

    def samples(self, extra: dict[str, str]) -> list[Sample]:
        return [Sample("xtrace_rdma_kernel_bypass_bytes_total", "counter",
                 "Bytes the RDMA NIC counted that the kernel datapath did not see as RoCE (hardware RoCE).",
                 {"device": self.device, "port": str(self.port), "direction": d.label, **extra},
                 self.bypass_total[d]) for d in Direction]


def resolve_port(root: str, interface: str, device: str | None) -> tuple[str, int] | None:
    """(device, port) for the interface: `device` if given (its port linked to the interface,
    else 1), else the RDMA device behind the interface; None when there is none."""
    if not os.path.isdir(os.path.join(root, "class", "infiniband")):
        if device:
            raise UsageError(f"--rdma-device {device}: no {root}/class/infiniband; check --sysfs-root")
        return None
    links = [x for x in netdev_links(root) if x.netdev == interface]
    if device:
        if device not in list_devices(root):
            raise UsageError(f"unknown RDMA device {device!r}; devices found: {', '.join(list_devices(root)) or 'none'}")
        port = next((x.port for x in links if x.device == device), 1)
        return device, port
    if links:
        return links[0].device, links[0].port
    return None


class BypassTracker:
    """Compares the NIC's byte counters of one port with the kernel's RoCE bytes each interval."""

    def __init__(self, root: str, device: str, port: int) -> None:
        self.root, self.device, self.port = root, device, port
        self.reader = RdmaReader(root, [device])
        self._last = self._read()
        self._total = {d: 0 for d in Direction}
        self._pending = {d: 0 for d in Direction}  # kernel RoCE bytes not yet matched with a NIC reading

    def _read(self) -> dict[Direction, int | None]:
        nb = self.reader.nic_bytes().get((self.device, self.port))
        if nb is None:
            return {Direction.INGRESS: None, Direction.EGRESS: None}
        return {Direction.INGRESS: nb.rx_bytes, Direction.EGRESS: nb.tx_bytes}

    def update(self, kernel: dict[Direction, int]) -> BypassPort:
        """One interval: `kernel` is the RoCE bytes the datapath counted in it, per direction.

        While the NIC counter is unreadable, the kernel's bytes are kept and subtracted from
        the NIC's change once it reads again (that change spans the whole gap). Backwards
        steps follow counter_step on the 4-byte words: a 32-bit wrap counts the distance,
        anything else is a reset (the new value is what was counted since)."""
        now = self._read()
        nic: dict[Direction, int | None] = {}
        bypass: dict[Direction, int] = {}
        for d in Direction:
            old, new = self._last[d], now[d]
            self._pending[d] += kernel[d]
            if old is None or new is None:
                nic[d] = None
                bypass[d] = 0
                if new is not None:  # first good reading after an unreadable start: a new baseline
                    self._pending[d] = 0
                continue
            words, _step = counter_step(old // DATA_WORD, new // DATA_WORD, None)
            nic[d] = words * DATA_WORD
            bypass[d] = max(0, nic[d] - self._pending[d])
            self._pending[d] = 0
            self._total[d] += bypass[d]
        self._last = {d: (now[d] if now[d] is not None else self._last[d]) for d in Direction}
        return BypassPort(self.device, self.port, nic, dict(kernel), bypass, dict(self._total))
