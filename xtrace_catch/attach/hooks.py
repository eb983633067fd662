"""Attachments: the hooks of one interface, owned once, detached in reverse order."""

from __future__ import annotations

import errno
import logging
from types import TracebackType

from ..errors import AttachError
from ..kernel import libbpf
from ..kernel.layout import Direction
from ..notify import Notify
from ..settings import XdpMode
from .links import LinkHolder
from .names import Interface
from .netlink import NetlinkError, boundary, netlink_errno, open_ipr
from .policy import attach_policy
from .state import HookLock, stale_state_is_ours, state_file, write_record
from .tc import (
    TcAttachment,
    TcxAttachment,
    del_our_filter,
    has_clsact,
    our_filter,
    remove_clsact_if_unused,
    tcx_link,
)
from .xdp import XdpAttachment

log = logging.getLogger(__name__)


class Attachments:
    """Everything we attached to one interface; detaches in reverse order, once.

    Use as a context manager. `notify` receives user-facing notes (stderr).
    """

    def __init__(self, iface: Interface, notify: Notify | None = None) -> None:
        self.iface = iface
        self.notify: Notify = notify or (lambda msg: log.warning("%s", msg))
        self.ipr = open_ipr()
        self._items: list[XdpAttachment | TcAttachment | TcxAttachment] = []
        self._locks: list[HookLock] = []
        self._created_qdisc = False
        self.policy = attach_policy()

    def _lock(self, hook: str) -> None:
        lk = HookLock(self.iface.name, hook)
        lk.acquire()
        self._locks.append(lk)

    @boundary("attaching XDP")
    def attach_xdp(self, prog_fd: int, mode: XdpMode = XdpMode.AUTO) -> XdpMode:
        """Attach XDP; returns the mode used ('native' or 'generic')."""
        self._lock("xdp")
        att = XdpAttachment(self.ipr, self.iface, prog_fd, mode, self.notify, self.policy)
        self._items.append(att)
        return att.mode

    @property
    def paths(self) -> dict[str, str]:
        """hook -> 'link' or 'netlink', for what is attached now."""
        out = {}
        for it in self._items:
            hook = "xdp" if isinstance(it, XdpAttachment) else f"tc-{it.direction.label}"
            out[hook] = it.path
        return out

    @boundary("attaching TC")
    def attach_tc(self, direction: Direction, prog_fd: int) -> None:
        self._lock(f"tc-{direction.label}")
        if self.policy != "netlink":
            link_fd = tcx_link(self.iface, direction, prog_fd, need=self.policy == "link")
            if link_fd is not None:
                self._items.append(TcxAttachment(self.iface, direction, link_fd))
                self._remove_stale_filter(direction)
                return
        if not self._created_qdisc and not has_clsact(self.ipr, self.iface.index):
            try:
                self.ipr.tc("add", "clsact", self.iface.index)
                self._created_qdisc = True
                self._save_state()
            except NetlinkError as exc:
                if netlink_errno(exc) != errno.EEXIST:
                    raise AttachError(
                        f"adding a clsact qdisc to {self.iface.name} failed: {libbpf.errno_name(netlink_errno(exc))}; "
                        "run as root or grant CAP_NET_ADMIN"
                    ) from exc
        elif not self._created_qdisc and stale_state_is_ours(self.iface):
            # A killed run of ours created this clsact: take it over, so it goes at our exit.
            self._created_qdisc = True
            self._save_state()
        self._items.append(TcAttachment(self.ipr, self.iface, direction, prog_fd, self.notify))

    def _remove_stale_filter(self, direction: Direction) -> None:
        """A killed netlink-path run's filter would go on running beside our link: remove it."""
        try:
            f, ours = our_filter(self.ipr, self.iface.index, direction)
            if f is None or not ours:
                return
            del_our_filter(self.ipr, self.iface.index, direction)
        except NetlinkError as exc:
            log.info("could not remove a stale filter on %s %s: %s", self.iface.name, direction.label, exc)
            return
        self.notify(f"removed a stale xtrace-catch TC filter on {self.iface.name} {direction.label}")
        if stale_state_is_ours(self.iface) and remove_clsact_if_unused(self.ipr, self.iface.index):
            state_file(self.iface.name).unlink(missing_ok=True)

    @boundary("forgetting our hooks")
    def forget(self) -> None:
        """The interface is gone and our attachments with it: drop them without netlink calls."""
        for it in self._items:
            if isinstance(it, LinkHolder):
                it.close_link()
        self._items.clear()
        if self._created_qdisc:
            self._created_qdisc = False
            state_file(self.iface.name).unlink(missing_ok=True)
        self.ipr.close()
        while self._locks:
            self._locks.pop().release()

    def _save_state(self) -> None:
        write_record(state_file(self.iface.name), {"ifindex": self.iface.index, "created_clsact": True},
                      "that we created the clsact qdisc (a crash would leave it)")

    @boundary("detaching")
    def detach(self) -> None:
        """Remove what we attached, in reverse order; then our clsact qdisc if nothing else uses it."""
        errors: list[Exception] = []
        while self._items:
            item = self._items.pop()
            try:
                item.detach()
            except (AttachError, NetlinkError, OSError) as exc:
                errors.append(exc)
        if self._created_qdisc:
            self._created_qdisc = False
            try:
                remove_clsact_if_unused(self.ipr, self.iface.index)
                state_file(self.iface.name).unlink(missing_ok=True)
            except (NetlinkError, OSError) as exc:
                errors.append(exc)
        self.ipr.close()
        while self._locks:
            self._locks.pop().release()
        if errors:
            raise AttachError(f"detaching from {self.iface.name}: {errors[0]}") from errors[0]

    def __enter__(self) -> Attachments:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.detach()
