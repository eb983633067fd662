"""RDMA devices and ports under a sysfs root, the netdev mapping (as ibdev2netdev prints it),
and which devices a run reads."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .counters import DEFAULT_ROOT

__all__ = [
    "NetdevLink", "Selection", "list_devices", "netdev_links", "mapping_lines", "devices_for_interface",
    "select_devices", "check_interval", "ib_dir", "check_root", "read_attr",
]


def ib_dir(root: str | os.PathLike[str]) -> Path:
    """``<root>/class/infiniband``."""
    return Path(root) / "class" / "infiniband"


def check_root(root: str | os.PathLike[str]) -> Path:
    """The sysfs root as a Path; UsageError naming it (and /host/sys) when it is not a directory."""
    r = Path(root)
    if not r.is_dir():
        raise UsageError(f"sysfs root {str(r)!r} does not exist; give the directory where sysfs is mounted "
                         "(/sys on the host; in the container mount the host's /sys, e.g. at /host/sys)")
    return r


def list_devices(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[str]:
    """RDMA device names under ``<root>/class/infiniband``, sorted; [] if there are none."""
    try:
        return sorted(p.name for p in ib_dir(root).iterdir() if p.is_dir())
    except OSError:
        return []


def read_attr(path: Path) -> str:
    """One sysfs attribute's text, stripped (at most 4 KiB: sysfs attributes are a page)."""
    with open(path, "rb") as f:
        return f.read(4096).decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class NetdevLink:
    """A netdev and the RDMA device/port behind it, as ``ibdev2netdev`` shows it."""

    device: str
    port: int
    netdev: str
    up: bool

    def __str__(self) -> str:
        return f"{self.device} port {self.port} ==> {self.netdev} ({'Up' if self.up else 'Down'})"


def netdev_links(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[NetdevLink]:
    """Every netdev with an RDMA device behind it (``<root>/class/net/<if>/device/infiniband/<dev>``),
    sorted by device and port. The port is ``dev_port + 1`` (dev_port missing: 0); up means
    ``operstate`` is ``up``."""
    links: list[NetdevLink] = []
    try:
        nets = sorted((Path(root) / "class" / "net").iterdir())
    except OSError:
        return []
    for nd in nets:
        try:
            devs = sorted(p.name for p in (nd / "device" / "infiniband").iterdir())
        except OSError:
            continue
        try:
            port = int(read_attr(nd / "dev_port") or 0) + 1
        except (OSError, ValueError):
            port = 1
        try:
            up = read_attr(nd / "operstate").lower() == "up"
        except OSError:
            up = False
        links += [NetdevLink(dev, port, nd.name, up) for dev in devs]
    return sorted(links, key=lambda x: (x.device, x.port, x.netdev))


def mapping_lines(links: Iterable[NetdevLink]) -> list[str]:
    """``ibdev2netdev``-style lines: ``mlx5_0 port 1 ==> eth2 (Up)``."""
    return [str(x) for x in links]


def devices_for_interface(root: str | os.PathLike[str], interface: str) -> list[str]:
    """The RDMA device(s) behind a netdev (``<root>/class/net/<if>/device/infiniband/``); [] if none."""
    try:
        return sorted(p.name for p in (Path(root) / "class" / "net" / interface / "device" / "infiniband").iterdir())
    except OSError:
        return []


@dataclass(frozen=True)
class Selection:
    """Which devices to read. ``follow_all``: every device, including ones that appear later
    (pass ``devices=None`` to :class:`RdmaReader`); ``why`` says how they were chosen."""

    devices: tuple[str, ...]
    follow_all: bool
    why: str

    @property
    def reader_devices(self) -> tuple[str, ...] | None:
        return None if self.follow_all else self.devices


def _no_devices(root: Path) -> UsageError:
    return UsageError(f"no RDMA devices under {ib_dir(root)}; check with 'ls /sys/class/infiniband' (or "
                      "'rdma link'), load the RDMA driver (e.g. 'modprobe mlx5_ib', 'modprobe ib_uverbs'), "
                      "and in a container mount the host's /sys (e.g. at /host/sys)")


def select_devices(root: str | os.PathLike[str] = DEFAULT_ROOT, device: str | None = None,
                   interface: str | None = None) -> Selection:
    """Choose the RDMA devices: ``device`` if given; else the device(s) behind ``interface``; else all.

    Raises UsageError if the sysfs root is missing, there are no RDMA devices at all, or ``device``
    is unknown (the message lists the devices found)."""
    r = check_root(root)
    found = list_devices(r)
    if not found:
        raise _no_devices(r)
    if device:
        if device not in found:
            raise UsageError(f"unknown RDMA device {device!r}; devices found: {', '.join(found)} "
                             f"(see 'ls {ib_dir(r)}' or 'ibdev2netdev')")
        return Selection((device,), False, f"{device}")
    if interface:
        behind = [d for d in devices_for_interface(r, interface) if d in found]
        if behind:
            return Selection(tuple(behind), False, f"{', '.join(behind)} (behind {interface})")
    return Selection(tuple(found), True, "all RDMA devices" + (f" (none behind {interface})" if interface else ""))


def check_interval(interval_ms: int, lifespan_ms: int | None) -> None:
    """Raise UsageError if ``interval_ms`` is shorter than the hw_counters lifespan: the driver would
    return the same cached values and the interval would show stale zeros."""
    if lifespan_ms is not None and interval_ms < lifespan_ms:
        raise UsageError(f"interval {interval_ms} ms is shorter than the hw_counters lifespan ({lifespan_ms} ms): "
                         f"the counters would repeat cached values; use -t {lifespan_ms} or more, or lower the "
                         "lifespan (echo 10 > /sys/class/infiniband/<dev>/ports/<n>/hw_counters/lifespan)")
