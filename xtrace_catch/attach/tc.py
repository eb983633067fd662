"""TC: a TCX link (Linux >= 6.6, libbpf >= 1.3) or a clsact qdisc with our cls_bpf filter
(added only when absent, removed only if we added it)."""

from __future__ import annotations

import errno
import logging

from ..errors import AttachError, HookBusyError, LibbpfError
from ..kernel import libbpf
from ..kernel.layout import Direction
from ..notify import Notify
from .links import LinkHolder
from .names import PARENT, TC_HANDLE, TC_NAMES, TC_PRIO, Interface, prog_name
from .netlink import IPRoute, NetlinkError, boundary, netlink_errno
from .policy import NO_LINK_ERRNOS, TCX_PLACE, TCX_TYPE

log = logging.getLogger(__name__)


def has_clsact(ipr: IPRoute, index: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def _filters(ipr: IPRoute, index: int, direction: Direction) -> list[object]:
    try:
        return list(ipr.get_filters(index=index, parent=PARENT[direction]))
    except NetlinkError as exc:
        if netlink_errno(exc) in (errno.EINVAL, errno.ENOENT):
            return []
        raise


def _filter_name(f: object) -> str:
    opts = f.get_attr("TCA_OPTIONS")  # type: ignore[attr-defined]
    if not opts:
        return ""
    return dict(opts["attrs"]).get("TCA_BPF_NAME", "") or ""


def _filter_prio(f: object) -> int:
    return (f["info"] >> 16) & 0xFFFF  # type: ignore[index]


def del_our_filter(ipr: IPRoute, index: int, direction: Direction) -> None:
    """Delete the filter at our handle and prio (raises NetlinkError)."""
    ipr.tc("del-filter", "bpf", index, handle=TC_HANDLE, parent=PARENT[direction], prio=TC_PRIO)


def our_filter(ipr: IPRoute, index: int, direction: Direction) -> tuple[object | None, bool]:
    """(filter with our handle and prio or None, whether its name is ours)."""
    for f in _filters(ipr, index, direction):
        if f["handle"] == TC_HANDLE and _filter_prio(f) == TC_PRIO:  # type: ignore[index]
            name = _filter_name(f)
            return f, name in TC_NAMES.values()
    return None, False


class TcAttachment:
    path = "netlink"

    def __init__(self, ipr: IPRoute, iface: Interface, direction: Direction, prog_fd: int, notify: Notify) -> None:
        self.ipr, self.iface, self.direction, self.fd = ipr, iface, direction, prog_fd
        self.attached = False
        self._attach(notify)

    def _attach(self, notify: Notify) -> None:
        d, name = self.direction, self.iface.name
        existing, ours = our_filter(self.ipr, self.iface.index, d)
        if existing is not None:
            if not ours:
                raise HookBusyError(
                    f"{name} {d.label} already has a filter with xtrace-catch's handle {TC_HANDLE:#x} and prio "
                    f"{TC_PRIO} ({_filter_name(existing) or 'unnamed'}); see 'tc filter show dev {name} {d.label}'"
                )
            notify(f"replacing a stale xtrace-catch TC filter on {name} {d.label}")
        cmd = "replace-filter" if existing is not None else "add-filter"
        try:
            self.ipr.tc(cmd, "bpf", self.iface.index, handle=TC_HANDLE, fd=self.fd, name=TC_NAMES[d],
                        parent=PARENT[d], classid=1, direct_action=True, prio=TC_PRIO)
        except NetlinkError as exc:
            code = netlink_errno(exc)
            hint = "run as root or grant CAP_NET_ADMIN" if code == errno.EPERM else (
                f"another filter uses prio {TC_PRIO} with another protocol; see 'tc filter show dev {name} {d.label}'"
                if code == errno.EINVAL else "run with -v for details")
            raise AttachError(f"attaching TC {d.label} to {name} failed: {libbpf.errno_name(code)}; {hint}") from exc
        self.attached = True

    def detach(self) -> None:
        if not self.attached:
            return
        self.attached = False
        f, ours = our_filter(self.ipr, self.iface.index, self.direction)
        if f is None or not ours:
            return
        try:
            del_our_filter(self.ipr, self.iface.index, self.direction)
        except NetlinkError as exc:
            if netlink_errno(exc) in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return
            raise AttachError(f"removing our TC filter from {self.iface.name} failed: {exc}") from exc


class TcxAttachment(LinkHolder):
    """Our TC program in the interface's TCX chain through a link (Linux >= 6.6, libbpf >= 1.3)."""

    path = "link"

    def __init__(self, iface: Interface, direction: Direction, link_fd: int) -> None:
        self.iface, self.direction, self.link_fd = iface, direction, link_fd

    def detach(self) -> None:
        self.close_link()


def tcx_link(iface: Interface, direction: Direction, prog_fd: int, need: bool) -> int | None:
    """A TCX link for `prog_fd` (first on ingress, last on egress), or None where the kernel or
    libbpf has no TCX and `need` is False."""
    lib = libbpf.get()
    if not lib.has_tcx:
        if need:
            raise AttachError(f"XTRACE_ATTACH=link: libbpf {lib.version_string.lstrip('v')} at {lib.path} has no "
                              "TCX support (needs >= 1.3: run 'make libbpf' or set XTRACE_LIBBPF)")
        return None
    try:
        return lib.link_create(prog_fd, iface.index, TCX_TYPE[direction], flags=TCX_PLACE[direction])
    except LibbpfError as exc:
        if exc.errno in NO_LINK_ERRNOS and not need:
            log.info("TCX link on %s %s refused (%s): using a netlink clsact filter", iface.name, direction.label,
                     libbpf.errno_name(exc.errno))
            return None
        hint = ("this kernel has no TCX (Linux >= 6.6); unset XTRACE_ATTACH=link" if exc.errno in NO_LINK_ERRNOS
                else "run as root or grant CAP_NET_ADMIN and CAP_BPF" if exc.errno == errno.EPERM
                else "run with -v for details")
        raise AttachError(f"attaching TC {direction.label} to {iface.name} through a TCX link failed: "
                          f"{libbpf.errno_name(exc.errno)}; {hint}") from exc


@boundary("listing the TCX programs")
def tcx_programs(iface: Interface) -> dict[Direction, list[tuple[int, str]]]:
    """(id, name) of the programs in the interface's TCX chains, per direction (none before 6.6)."""
    lib = libbpf.get()
    out: dict[Direction, list[tuple[int, str]]] = {}
    for d in Direction:
        try:
            ids = lib.prog_query(iface.index, TCX_TYPE[d])
        except LibbpfError as exc:  # e.g. EPERM: listing without CAP_NET_ADMIN/CAP_BPF
            log.info("cannot list TCX programs of %s (%s)", iface.name, exc)
            ids = []
        out[d] = [(pid, prog_name(pid)) for pid in ids]
    return out


def remove_clsact_if_unused(ipr: IPRoute, index: int) -> bool:
    try:
        if not has_clsact(ipr, index):
            return False
        if any(_filters(ipr, index, d) for d in Direction):
            return False
        ipr.tc("del", "clsact", index)
        return True
    except NetlinkError as exc:
        if netlink_errno(exc) in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
            return False
        raise
