"""XDP: attach through a BPF link or netlink (UPDATE_IF_NOEXIST), detach only our own program."""

from __future__ import annotations

import errno
import logging
import os

from ..errors import AttachError, HookBusyError, LibbpfError, NativeXdpRefused
from ..kernel import libbpf
from ..kernel.uapi import BPF_XDP
from ..notify import Notify
from ..settings import XdpMode
from .links import LinkHolder
from .names import OUR_PROG_NAMES, Interface, prog_name
from .netlink import IPRoute, NetlinkError, netlink_errno, netlink_reason, xdp_attrs
from .policy import NO_LINK_ERRNOS
from .state import recorded_xdp_id, write_record, xdp_state_file

log = logging.getLogger(__name__)


XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0


XDP_FLAGS_SKB_MODE = 1 << 1


XDP_FLAGS_DRV_MODE = 1 << 2


XDP_FLAGS_REPLACE = 1 << 4


# What a driver answers when it will not run this program natively (no native XDP, an MTU
# above what a non-frags program may see, too many queues, ...): --xdp-mode auto then goes
# generic. 524 is the kernel's ENOTSUPP (not in userspace's errno table).
ENOTSUPP = 524
NATIVE_REFUSALS = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ERANGE, errno.E2BIG, errno.ENOMEM, ENOTSUPP})


class _LinkRefused(Exception):
    """An XDP link in native mode was refused with `code` (the kernel gives links no reason)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def attached_xdp_id(ipr: IPRoute, index: int) -> int:
    """The id of the XDP program attached to `index`, 0 when none."""
    return int(xdp_attrs(ipr.get_links(index)[0]).get("IFLA_XDP_PROG_ID") or 0)  # type: ignore[call-overload]


def xdp_is_ours(ifname: str, index: int, prog_id: int, name: str) -> bool:
    """Whether XDP program `prog_id` on the interface is one of ours (by name, or, when the name
    cannot be read, by the id a run of ours recorded)."""
    if name in OUR_PROG_NAMES:
        return True
    return name == "?" and prog_id != 0 and recorded_xdp_id(ifname, index) == prog_id


class XdpAttachment(LinkHolder):
    def __init__(self, ipr: IPRoute, iface: Interface, prog_fd: int, mode: XdpMode, notify: Notify,
                 policy: str = "auto") -> None:
        self.ipr, self.iface, self.fd = ipr, iface, prog_fd
        self.mode_flag = 0
        self.link_fd: int | None = None
        self.use_link = policy != "netlink"
        self.need_link = policy == "link"
        self._attach(mode, notify)

    @property
    def path(self) -> str:
        return "link" if self.link_fd is not None else "netlink"

    def _try_link(self, flag: int) -> bool:
        """Attach through an XDP link in `flag`'s mode. False where the kernel has no XDP links;
        _LinkRefused when the driver refuses native mode (netlink can then say why)."""
        try:
            self.link_fd = libbpf.get().link_create(self.fd, self.iface.index, BPF_XDP, flags=flag)
            return True
        except LibbpfError as exc:
            code = exc.errno
            if code in (errno.EBUSY, errno.EEXIST):
                raise NetlinkError(code, str(exc)) from exc  # another program holds the hook: refused below
            if flag == XDP_FLAGS_DRV_MODE and code in NATIVE_REFUSALS:
                raise _LinkRefused(code) from exc
            if code not in NO_LINK_ERRNOS or self.need_link:
                raise AttachError(f"attaching XDP to {self.iface.name} through a BPF link failed: "
                                  f"{libbpf.errno_name(code)}") from exc
            log.info("XDP link on %s refused (%s): using netlink", self.iface.name, libbpf.errno_name(exc.errno))
            return False

    def _set(self, flags: int, fd: int, expected: int | None = None) -> None:
        attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]
        if expected is not None:
            attrs.append(("IFLA_XDP_EXPECTED_FD", expected))
        self.ipr.link("set", index=self.iface.index, xdp={"attrs": attrs})

    def _current(self) -> tuple[int, str]:
        pid = attached_xdp_id(self.ipr, self.iface.index)
        return pid, (prog_name(pid) if pid else "")

    def _attach(self, mode: XdpMode, notify: Notify) -> None:
        mode = XdpMode(mode)
        modes = {XdpMode.AUTO: [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE], XdpMode.NATIVE: [XDP_FLAGS_DRV_MODE],
                 XdpMode.GENERIC: [XDP_FLAGS_SKB_MODE]}[mode]
        name = self.iface.name
        pid, pname = self._current()
        if pid:
            if not xdp_is_ours(name, self.iface.index, pid, pname):
                raise HookBusyError(
                    f"{name} already has XDP program id {pid} ({pname}); xtrace-catch never replaces another "
                    f"program: see it with 'ip link show {name}' or 'bpftool net show dev {name}', detach it, "
                    "or use -m tc"
                )
            # Ours, left by a killed run: remove it (only if it is still that program), then attach anew.
            detach_xdp_prog(self.ipr, self.iface.index, pid)
            notify(f"replacing a stale xtrace-catch XDP program (id {pid}) on {name}")
        refusal = ""  # the kernel's reason for refusing native mode, once known
        last_exc: NetlinkError | None = None
        for flag in modes:
            try:
                if self.use_link:
                    try:
                        if self._try_link(flag):
                            self.mode_flag = flag
                            xdp_state_file(name).unlink(missing_ok=True)
                            self._fell_back(flag, mode, refusal, notify)
                            return
                    except _LinkRefused as r:
                        if self.need_link:
                            raise NetlinkError(r.code, os.strerror(r.code)) from None
                        # A link gets no reason from the kernel; netlink's extended ack has it.
                        log.info("native XDP link on %s refused (%s); asking netlink why", name,
                                 libbpf.errno_name(r.code))
                self._set(XDP_FLAGS_UPDATE_IF_NOEXIST | flag, self.fd)
                self.mode_flag = flag
                self._record()
                self._fell_back(flag, mode, refusal, notify)
                return
            except NetlinkError as exc:
                last_exc = exc
                code = netlink_errno(exc)
                if code in (errno.EBUSY, errno.EEXIST):
                    pid, pname = self._current()
                    raise HookBusyError(
                        f"{name} already has XDP program id {pid} ({pname}); xtrace-catch never replaces another "
                        f"program: see it with 'ip link show {name}', detach it, or use -m tc"
                    ) from exc
                if flag == XDP_FLAGS_DRV_MODE and code in NATIVE_REFUSALS:
                    refusal = f"{netlink_reason(exc) or 'no reason given'} ({errno.errorcode.get(code, code)})"
                    if mode is XdpMode.NATIVE:
                        raise NativeXdpRefused(
                            f"{name} refused native XDP: {refusal}; use --xdp-mode auto or generic, or -m tc"
                        ) from exc
                    continue
                break
        assert last_exc is not None
        code = netlink_errno(last_exc)
        reason = netlink_reason(last_exc)
        hint = "run as root or grant CAP_NET_ADMIN" if code == errno.EPERM else "run with -v for details"
        raise AttachError(f"attaching XDP to {name} failed: {libbpf.errno_name(code)}"
                          + (f" ({reason})" if reason else "") + f"; {hint}") from last_exc

    def _fell_back(self, flag: int, mode: XdpMode, refusal: str, notify: Notify) -> None:
        if flag == XDP_FLAGS_SKB_MODE and mode is XdpMode.AUTO:
            notify(f"{self.iface.name} refused native XDP: {refusal or 'the driver lacks it'}; using generic "
                   "(SKB) mode, which is slower")

    def _record(self) -> None:
        write_record(xdp_state_file(self.iface.name), {"ifindex": self.iface.index,
                      "prog_id": attached_xdp_id(self.ipr, self.iface.index)}, "the XDP program id")

    @property
    def mode(self) -> XdpMode:
        """The mode attached: GENERIC or NATIVE."""
        return XdpMode.GENERIC if self.mode_flag == XDP_FLAGS_SKB_MODE else XdpMode.NATIVE

    def detach(self) -> None:
        if self.close_link():
            self.mode_flag = 0
            return
        if self.mode_flag == 0:
            return
        flag, self.mode_flag = self.mode_flag, 0
        xdp_state_file(self.iface.name).unlink(missing_ok=True)
        try:
            self._set(XDP_FLAGS_REPLACE | flag, -1, expected=self.fd)
        except NetlinkError as exc:
            if netlink_errno(exc) in (errno.ENODEV, errno.EEXIST, errno.ENOENT):
                # Interface gone, or someone replaced our program: nothing of ours to remove.
                log.info("XDP on %s: nothing of ours to detach (%s)", self.iface.name, exc)
                return
            raise AttachError(f"detaching XDP from {self.iface.name} failed: {exc}") from exc


def detach_xdp_prog(ipr: IPRoute, index: int, prog_id: int) -> bool:
    """Detach XDP program `prog_id` from `index` only if it is still the attached one.

    With CAP_SYS_ADMIN the kernel checks that (XDP_FLAGS_REPLACE + its fd as expected fd);
    without it no fd can be had by id, so we check the attached id just before detaching
    (we hold the hook's lock, so no other agent of ours attaches in between)."""
    lib = libbpf.get()
    try:
        fd: int | None = lib.prog_fd_by_id(prog_id)
    except LibbpfError:
        fd = None
    try:
        for flag in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
            try:
                if fd is not None:
                    ipr.link("set", index=index, xdp={"attrs": [
                        ("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", XDP_FLAGS_REPLACE | flag),
                        ("IFLA_XDP_EXPECTED_FD", fd)]})
                else:
                    if attached_xdp_id(ipr, index) != prog_id:
                        return False
                    ipr.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", flag)]})
                    if attached_xdp_id(ipr, index) == prog_id:
                        continue  # attached in the other mode
                return True
            except NetlinkError:
                continue
        return False
    finally:
        if fd is not None:
            os.close(fd)
