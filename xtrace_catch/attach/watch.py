"""Watch: notices, between intervals, an interface that went away, went down or lost our hook."""

from __future__ import annotations

import logging

from ..errors import XtraceError
from ..kernel.datapath import PROG_XDP, TC_PROGS, Datapath
from ..notify import Notify
from ..settings import Mode, Settings, XdpMode
from .hooks import Attachments
from .interfaces import find_interface
from .names import Interface

log = logging.getLogger(__name__)


class Watch:
    """Our attachments to the watched interface, kept alive across its deletion and return.

    When the interface disappears the kernel removes our programs with it: we say so and
    keep running; when an interface of that name comes back (a new ifindex) we attach
    again. Link down/up needs nothing: programs stay attached and counting resumes."""

    def __init__(self, settings: Settings, dp: Datapath, iface: Interface, notify: Notify) -> None:
        self.s, self.dp, self.notify = settings, dp, notify
        self.iface = iface
        self._state = iface.state
        self.att: Attachments | None = None
        self._attach(iface)

    def _attach(self, iface: Interface) -> None:
        att = Attachments(iface, self.notify)
        try:
            if self.s.mode is Mode.XDP:
                mode = att.attach_xdp(self.dp.prog_fd(PROG_XDP), self.s.xdp_mode)
                self.notify(f"XDP program loaded on {iface.name}" + (" (generic mode)" if mode is XdpMode.GENERIC else ""))
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
        now = find_interface(self.iface.name)
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
            self._state = now.state
            self.notify(f"{now.name} is back (ifindex {now.index}): attached again")
            return
        state = now.state
        if state is not self._state:
            self._state = state
            if not state.passes_traffic:
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
