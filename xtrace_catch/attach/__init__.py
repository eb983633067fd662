"""Attach our programs to an interface: XDP or TC. The only module that imports pyroute2.

Two paths (XTRACE_ATTACH=auto|link|netlink chooses; auto is the default):
- BPF links where the kernel has them: XDP links (Linux >= 5.9) and TCX links (Linux >= 6.6,
  libbpf >= 1.3). A link lives as long as the agent's fd, so a killed agent leaves nothing
  attached and no cleanup is needed. TCX links go first on ingress (we see every packet before
  another program may drop it) and last on egress (we count what leaves), beside any others.
- netlink (clsact + cls_bpf filter, XDP by ifindex): older kernels and libbpf 1.1, with the
  crash-state records and `cleanup` below.

Rules (DESIGN.md): never destroy what we did not create. XDP attaches with
XDP_FLAGS_UPDATE_IF_NOEXIST and detaches only our own program (XDP_FLAGS_REPLACE with
our fd as the expected one); TC adds a clsact qdisc only when absent and remembers that,
adds one filter per direction with our fixed handle and priority, and removes only those.
Leftovers of a killed run are recognised by program/filter name and replaced, with a
message. A small state file records whether a run created the clsact qdisc, so cleanup
after SIGKILL can remove it too.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ..kernel import libbpf
from ..errors import AttachError, HookBusyError, LibbpfError, UsageError
from ..kernel.layout import Direction



def _shallow_pyroute2() -> None:
    """Make ``import pyroute2.<sub>`` load only the modules asked for.

    pyroute2's package ``__init__`` imports all of pyroute2 (NDB, IPDB, nftables, WireGuard,
    nl80211, Plan 9, ...): 11 MB of RSS in every agent, which needs IPRoute alone (5.5 MB).
    So the package is registered without running its ``__init__``; the first time anything
    asks the package itself for a name (``from pyroute2 import NDB``), ``__init__`` runs then
    and the whole API is there, as usual. Nothing changes if pyroute2 is already imported."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    pkg = importlib.util.module_from_spec(spec)
    loading = False

    def whole(name: str) -> object:
        nonlocal loading
        if loading or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)  # a submodule (or __init__ running): the import system loads it
        loading = True
        del pkg.__dict__["__getattr__"]
        spec.loader.exec_module(pkg)  # type: ignore[union-attr]
        return getattr(pkg, name)

    pkg.__getattr__ = whole  # type: ignore[attr-defined]  # PEP 562
    sys.modules["pyroute2"] = pkg


_shallow_pyroute2()
from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = [
    "XdpMode",
    "attach_policy",
    "attach_paths",
    "Interface",
    "Attachments",
    "HookLock",
    "list_interfaces",
    "get_interface",
    "find_interface",
    "cleanup",
    "TC_HANDLE",
    "TC_PRIO",
    "OUR_PROG_NAMES",
]

log = logging.getLogger(__name__)

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

TC_HANDLE = 0x7874  # "xt"
TC_PRIO = 1  # run before other filters so a verdict of theirs cannot hide packets from us
PARENT = {Direction.INGRESS: 0xFFFFFFF2, Direction.EGRESS: 0xFFFFFFF3}
TC_NAMES = {Direction.INGRESS: "xtrace_tc_ingress", Direction.EGRESS: "xtrace_tc_egress"}
XDP_NAME = "xtrace_xdp"
# The kernel keeps 15 characters of a program's name.
OUR_PROG_NAMES = {n[:15] for n in (XDP_NAME, *TC_NAMES.values())}

ARPHRD = {1: "Ethernet", 32: "InfiniBand", 772: "loopback", 65534: "none", 768: "tunnel", 769: "tunnel6",
          776: "sit", 778: "gre", 823: "ip6gre", 65535: "void"}
ARPHRD_INFINIBAND = 32


ATTACH_POLICIES = ("auto", "link", "netlink")
TCX_TYPE = {Direction.INGRESS: libbpf.BPF_TCX_INGRESS, Direction.EGRESS: libbpf.BPF_TCX_EGRESS}
TCX_PLACE = {Direction.INGRESS: libbpf.BPF_F_BEFORE, Direction.EGRESS: libbpf.BPF_F_AFTER}
# What a kernel without the link type answers BPF_LINK_CREATE with.
_NO_LINK = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPROTONOSUPPORT)


def attach_policy() -> str:
    """XTRACE_ATTACH: 'auto' (links where the kernel has them), 'link' (links or fail) or 'netlink'."""
    v = os.environ.get("XTRACE_ATTACH", "auto").strip().lower() or "auto"
    if v not in ATTACH_POLICIES:
        raise UsageError(f"XTRACE_ATTACH={v!r} is not one of {', '.join(ATTACH_POLICIES)}")
    return v


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (major, minor)
    except (ValueError, IndexError):
        return False


def attach_paths() -> dict[str, str]:
    """The attach path each hook will take on this kernel with this libbpf (for --version)."""
    policy = attach_policy()
    lib = libbpf.get()
    if policy == "netlink":
        return {"xdp": "netlink (XTRACE_ATTACH=netlink)", "tc": "netlink clsact filter (XTRACE_ATTACH=netlink)"}
    xdp = "BPF link" if _kernel_at_least(5, 9) else "netlink (kernel < 5.9 has no XDP links)"
    if not lib.has_tcx:
        tc = f"netlink clsact filter (libbpf {lib.version_string.lstrip('v')} has no TCX; needs >= 1.3)"
    elif not _kernel_at_least(6, 6):
        tc = "netlink clsact filter (kernel < 6.6 has no TCX)"
    else:
        tc = "TCX link"
    return {"xdp": xdp, "tc": tc}


class XdpMode:
    AUTO = "auto"
    NATIVE = "native"
    GENERIC = "generic"
    ALL = (AUTO, NATIVE, GENERIC)


def _err(exc: NetlinkError) -> int:
    return int(exc.code)


def _state_dir() -> Path:
    return Path(os.environ.get("XTRACE_STATE_DIR", "/run/xtrace-catch"))


def _netns_id() -> str:
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "0"


def _state_file(ifname: str) -> Path:
    return _state_dir() / f"{_netns_id()}-{ifname}.json"


def _write_record(path: Path, data: dict[str, object], what: str) -> None:
    """A crash-state record (with our pid); failing to write one is logged, not fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**data, "pid": os.getpid()}))
    except OSError as exc:
        log.info("cannot record %s (%s)", what, exc)


def _attached_xdp_id(ipr: IPRoute, index: int) -> int:
    """The id of the XDP program attached to `index`, 0 when none."""
    return int(_xdp_attrs(ipr.get_links(index)[0]).get("IFLA_XDP_PROG_ID") or 0)  # type: ignore[call-overload]


def _xdp_state_file(ifname: str) -> Path:
    """Records the id of the XDP program we attached: without CAP_SYS_ADMIN a program's name
    cannot be read back (bpf_prog_get_fd_by_id), so a killed run's program is known by its id."""
    return _state_dir() / f"{_netns_id()}-{ifname}-xdp.json"


def _recorded_xdp_id(ifname: str, index: int) -> int:
    try:
        st = json.loads(_xdp_state_file(ifname).read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(st, dict) or st.get("ifindex") != index:
        return 0
    return int(st.get("prog_id") or 0)


def _xdp_is_ours(ifname: str, index: int, prog_id: int, name: str) -> bool:
    """Whether XDP program `prog_id` on the interface is one of ours (by name, or, when the name
    cannot be read, by the id a run of ours recorded)."""
    if name in OUR_PROG_NAMES:
        return True
    return name == "?" and prog_id != 0 and _recorded_xdp_id(ifname, index) == prog_id


@dataclass
class Interface:
    index: int
    name: str
    link_type: str
    arphrd: int
    state: str
    mtu: int
    addresses: list[str] = field(default_factory=list)
    xdp: str = ""  # e.g. "xdp id 12 xtrace_xdp"
    tc: list[str] = field(default_factory=list)  # our filters: "ingress", "egress"
    tcx: list[str] = field(default_factory=list)  # our TCX links: "ingress", "egress"

    @property
    def is_infiniband(self) -> bool:
        return self.arphrd == ARPHRD_INFINIBAND

    def primary_ipv4(self) -> str | None:
        for a in self.addresses:
            if ":" not in a:
                return a
        return None


def _ipr() -> IPRoute:
    try:
        return IPRoute()
    except OSError as exc:
        raise AttachError(f"cannot open a netlink socket: {exc}") from exc


def _xdp_attrs(link: object) -> dict[str, object]:
    x = link.get_attr("IFLA_XDP")  # type: ignore[attr-defined]
    return dict(x["attrs"]) if x else {}


def _prog_name(prog_id: int) -> str:
    lib = libbpf.get()
    try:
        fd = lib.prog_fd_by_id(prog_id)
    except LibbpfError:
        return "?"
    try:
        return lib.prog_info(fd)[1]
    finally:
        os.close(fd)


def _has_clsact(ipr: IPRoute, index: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def _filters(ipr: IPRoute, index: int, direction: Direction) -> list[object]:
    try:
        return list(ipr.get_filters(index=index, parent=PARENT[direction]))
    except NetlinkError as exc:
        if _err(exc) in (errno.EINVAL, errno.ENOENT):
            return []
        raise


def _filter_name(f: object) -> str:
    opts = f.get_attr("TCA_OPTIONS")  # type: ignore[attr-defined]
    if not opts:
        return ""
    return dict(opts["attrs"]).get("TCA_BPF_NAME", "") or ""


def _filter_prio(f: object) -> int:
    return (f["info"] >> 16) & 0xFFFF  # type: ignore[index]


def _del_our_filter(ipr: IPRoute, index: int, direction: Direction) -> None:
    """Delete the filter at our handle and prio (raises NetlinkError)."""
    ipr.tc("del-filter", "bpf", index, handle=TC_HANDLE, parent=PARENT[direction], prio=TC_PRIO)


def _our_filter(ipr: IPRoute, index: int, direction: Direction) -> tuple[object | None, bool]:
    """(filter with our handle and prio or None, whether its name is ours)."""
    for f in _filters(ipr, index, direction):
        if f["handle"] == TC_HANDLE and _filter_prio(f) == TC_PRIO:  # type: ignore[index]
            name = _filter_name(f)
            return f, name in TC_NAMES.values()
    return None, False


def _interface(ipr: IPRoute, link: object, with_attach: bool = True) -> Interface:
    index = link["index"]  # type: ignore[index]
    name = link.get_attr("IFLA_IFNAME")  # type: ignore[attr-defined]
    arphrd = link["ifi_type"]  # type: ignore[index]
    addrs = []
    for a in ipr.get_addr(index=index):
        addr = a.get_attr("IFA_ADDRESS")
        if a["family"] == socket.AF_INET:
            addr = a.get_attr("IFA_LOCAL") or addr
        if addr:
            addrs.append(addr)
    addrs.sort(key=lambda s: ":" in s)  # IPv4 first
    iface = Interface(
        index=index, name=name, arphrd=arphrd, link_type=ARPHRD.get(arphrd, f"type {arphrd}"),
        state=(link.get_attr("IFLA_OPERSTATE") or "UNKNOWN"), mtu=link.get_attr("IFLA_MTU") or 0,  # type: ignore[attr-defined]
        addresses=addrs,
    )
    if with_attach:
        x = _xdp_attrs(link)
        pid = x.get("IFLA_XDP_PROG_ID")
        if pid:
            iface.xdp = f"{x.get('IFLA_XDP_ATTACHED') or 'xdp'} id {pid} {_prog_name(int(pid))}"  # type: ignore[arg-type]
        if _has_clsact(ipr, index):
            for d in Direction:
                f, ours = _our_filter(ipr, index, d)
                if f is not None and ours:
                    iface.tc.append(d.label)
        for d, progs in tcx_programs(iface).items():
            if any(name in OUR_PROG_NAMES for _, name in progs):
                iface.tcx.append(d.label)
    return iface


def find_interface(name: str) -> Interface | None:
    """The interface named `name` now, or None when there is none (no attachment details).

    Opens its own netlink socket each call: a pyroute2 socket kept across calls from
    asyncio's worker threads leaves an event loop that fails noisily at exit."""
    with _ipr() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        try:
            return _interface(ipr, ipr.get_links(idx[0])[0], with_attach=False)
        except NetlinkError:
            return None


def list_interfaces() -> list[Interface]:
    """Every interface of this network namespace, with what is attached."""
    with _ipr() as ipr:
        return [_interface(ipr, link) for link in ipr.get_links()]


def get_interface(name: str) -> Interface:
    """One interface by name; UsageError when there is none (suggesting -l)."""
    if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
        raise UsageError(f"invalid interface name {name!r}: 1-15 characters, no '/' or spaces; see 'xtrace-catch -l'")
    with _ipr() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            raise UsageError(f"interface {name!r} not found; list interfaces with 'xtrace-catch -l'")
        return _interface(ipr, ipr.get_links(idx[0])[0], with_attach=False)


Notify = Callable[[str], None]


class _LinkHolder:
    """An attachment that may be a BPF link: closing its fd detaches it."""

    link_fd: int | None = None

    def close_link(self) -> bool:
        """Close our link (the kernel detaches the program). False when we hold none."""
        fd, self.link_fd = self.link_fd, None
        if fd is None:
            return False
        os.close(fd)
        return True


class _XdpAttachment(_LinkHolder):
    def __init__(self, ipr: IPRoute, iface: Interface, prog_fd: int, mode: str, notify: Notify,
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
        """Attach through an XDP link in `flag`'s mode. False where the kernel has no XDP links."""
        try:
            self.link_fd = libbpf.get().link_create(self.fd, self.iface.index, libbpf.BPF_XDP, flags=flag)
            return True
        except LibbpfError as exc:
            code = exc.errno
            if code in (errno.EBUSY, errno.EEXIST):
                raise NetlinkError(code, str(exc)) from exc  # another program holds the hook: refused below
            if code in _NO_LINK and self.need_link and flag == XDP_FLAGS_DRV_MODE:
                raise NetlinkError(code, str(exc)) from exc  # native refused: the caller tries generic
            if code not in _NO_LINK or self.need_link:
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
        pid = _attached_xdp_id(self.ipr, self.iface.index)
        return pid, (_prog_name(pid) if pid else "")

    def _attach(self, mode: str, notify: Notify) -> None:
        modes = {XdpMode.AUTO: [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE], XdpMode.NATIVE: [XDP_FLAGS_DRV_MODE],
                 XdpMode.GENERIC: [XDP_FLAGS_SKB_MODE]}[mode]
        name = self.iface.name
        pid, pname = self._current()
        if pid:
            if not _xdp_is_ours(name, self.iface.index, pid, pname):
                raise HookBusyError(
                    f"{name} already has XDP program id {pid} ({pname}); xtrace-catch never replaces another "
                    f"program: see it with 'ip link show {name}' or 'bpftool net show dev {name}', detach it, "
                    "or use -m tc"
                )
            # Ours, left by a killed run: remove it (only if it is still that program), then attach anew.
            _detach_xdp_prog(self.ipr, self.iface.index, pid)
            notify(f"replacing a stale xtrace-catch XDP program (id {pid}) on {name}")
        last_exc: NetlinkError | None = None
        for flag in modes:
            try:
                if self.use_link and self._try_link(flag):
                    self.mode_flag = flag
                    _xdp_state_file(name).unlink(missing_ok=True)
                    if flag == XDP_FLAGS_SKB_MODE and mode == XdpMode.AUTO:
                        notify(f"the driver of {name} lacks native XDP: using generic (SKB) mode, which is slower")
                    return
                self._set(XDP_FLAGS_UPDATE_IF_NOEXIST | flag, self.fd)
                self.mode_flag = flag
                self._record()
                if flag == XDP_FLAGS_SKB_MODE and mode == XdpMode.AUTO:
                    notify(f"the driver of {name} lacks native XDP: using generic (SKB) mode, which is slower")
                return
            except NetlinkError as exc:
                last_exc = exc
                code = _err(exc)
                if code in (errno.EBUSY, errno.EEXIST):
                    pid, pname = self._current()
                    raise HookBusyError(
                        f"{name} already has XDP program id {pid} ({pname}); xtrace-catch never replaces another "
                        f"program: see it with 'ip link show {name}', detach it, or use -m tc"
                    ) from exc
                if code in (errno.EOPNOTSUPP, errno.EINVAL) and flag == XDP_FLAGS_DRV_MODE:
                    continue
                break
        assert last_exc is not None
        code = _err(last_exc)
        hint = ("the driver does not support native XDP: try --xdp-mode generic"
                if code in (errno.EOPNOTSUPP, errno.EINVAL) and mode == XdpMode.NATIVE else
                "run as root or grant CAP_NET_ADMIN" if code == errno.EPERM else "run with -v for details")
        raise AttachError(f"attaching XDP to {name} failed: {libbpf.errno_name(code)}; {hint}") from last_exc

    def _record(self) -> None:
        _write_record(_xdp_state_file(self.iface.name), {"ifindex": self.iface.index,
                      "prog_id": _attached_xdp_id(self.ipr, self.iface.index)}, "the XDP program id")

    @property
    def mode_name(self) -> str:
        return "generic" if self.mode_flag == XDP_FLAGS_SKB_MODE else "native"

    def detach(self) -> None:
        if self.close_link():
            self.mode_flag = 0
            return
        if self.mode_flag == 0:
            return
        flag, self.mode_flag = self.mode_flag, 0
        _xdp_state_file(self.iface.name).unlink(missing_ok=True)
        try:
            self._set(XDP_FLAGS_REPLACE | flag, -1, expected=self.fd)
        except NetlinkError as exc:
            if _err(exc) in (errno.ENODEV, errno.EEXIST, errno.ENOENT):
                # Interface gone, or someone replaced our program: nothing of ours to remove.
                log.info("XDP on %s: nothing of ours to detach (%s)", self.iface.name, exc)
                return
            raise AttachError(f"detaching XDP from {self.iface.name} failed: {exc}") from exc


class _TcAttachment:
    path = "netlink"

    def __init__(self, ipr: IPRoute, iface: Interface, direction: Direction, prog_fd: int, notify: Notify) -> None:
        self.ipr, self.iface, self.direction, self.fd = ipr, iface, direction, prog_fd
        self.attached = False
        self._attach(notify)

    def _attach(self, notify: Notify) -> None:
        d, name = self.direction, self.iface.name
        existing, ours = _our_filter(self.ipr, self.iface.index, d)
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
            code = _err(exc)
            hint = "run as root or grant CAP_NET_ADMIN" if code == errno.EPERM else (
                f"another filter uses prio {TC_PRIO} with another protocol; see 'tc filter show dev {name} {d.label}'"
                if code == errno.EINVAL else "run with -v for details")
            raise AttachError(f"attaching TC {d.label} to {name} failed: {libbpf.errno_name(code)}; {hint}") from exc
        self.attached = True

    def detach(self) -> None:
        if not self.attached:
            return
        self.attached = False
        f, ours = _our_filter(self.ipr, self.iface.index, self.direction)
        if f is None or not ours:
            return
        try:
            _del_our_filter(self.ipr, self.iface.index, self.direction)
        except NetlinkError as exc:
            if _err(exc) in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return
            raise AttachError(f"removing our TC filter from {self.iface.name} failed: {exc}") from exc


class _TcxAttachment(_LinkHolder):
    """Our TC program in the interface's TCX chain through a link (Linux >= 6.6, libbpf >= 1.3)."""

    path = "link"

    def __init__(self, iface: Interface, direction: Direction, link_fd: int) -> None:
        self.iface, self.direction, self.link_fd = iface, direction, link_fd

    def detach(self) -> None:
        self.close_link()


def _tcx_link(iface: Interface, direction: Direction, prog_fd: int, need: bool) -> int | None:
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
        if exc.errno in _NO_LINK and not need:
            log.info("TCX link on %s %s refused (%s): using a netlink clsact filter", iface.name, direction.label,
                     libbpf.errno_name(exc.errno))
            return None
        hint = ("this kernel has no TCX (Linux >= 6.6); unset XTRACE_ATTACH=link" if exc.errno in _NO_LINK
                else "run as root or grant CAP_NET_ADMIN and CAP_BPF" if exc.errno == errno.EPERM
                else "run with -v for details")
        raise AttachError(f"attaching TC {direction.label} to {iface.name} through a TCX link failed: "
                          f"{libbpf.errno_name(exc.errno)}; {hint}") from exc


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
        out[d] = [(pid, _prog_name(pid)) for pid in ids]
    return out


class HookLock:
    """An exclusive lock per network namespace, interface and hook (xdp, tc-ingress, tc-egress).

    A second agent on the same hook would otherwise take our filter for a stale one and
    replace it. flock() dies with its process, so a SIGKILLed run leaves no lock behind."""

    def __init__(self, ifname: str, hook: str) -> None:
        self.path = _state_dir() / f"{_netns_id()}-{ifname}-{hook}.lock"
        self.ifname, self.hook = ifname, hook
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot create lock %s (%s): not guarding against a second agent", self.path, exc.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise HookBusyError(
                f"another xtrace-catch (pid {other}) is already watching {self.ifname} ({self.hook}); "
                f"stop it first (kill {other}), or watch another hook"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
            os.close(fd)


class Attachments:
    """Everything we attached to one interface; detaches in reverse order, once.

    Use as a context manager. `notify` receives user-facing notes (stderr).
    """

    def __init__(self, iface: Interface, notify: Notify | None = None) -> None:
        self.iface = iface
        self.notify: Notify = notify or (lambda msg: log.warning("%s", msg))
        self.ipr = _ipr()
        self._items: list[_XdpAttachment | _TcAttachment | _TcxAttachment] = []
        self._locks: list[HookLock] = []
        self._created_qdisc = False
        self.xdp_mode = ""
        self.policy = attach_policy()

    def _lock(self, hook: str) -> None:
        lk = HookLock(self.iface.name, hook)
        lk.acquire()
        self._locks.append(lk)

    def attach_xdp(self, prog_fd: int, mode: str = XdpMode.AUTO) -> str:
        """Attach XDP; returns the mode used ('native' or 'generic')."""
        self._lock("xdp")
        att = _XdpAttachment(self.ipr, self.iface, prog_fd, mode, self.notify, self.policy)
        self._items.append(att)
        self.xdp_mode = att.mode_name
        return att.mode_name

    @property
    def paths(self) -> dict[str, str]:
        """hook -> 'link' or 'netlink', for what is attached now."""
        out = {}
        for it in self._items:
            hook = "xdp" if isinstance(it, _XdpAttachment) else f"tc-{it.direction.label}"
            out[hook] = it.path
        return out

    def attach_tc(self, direction: Direction, prog_fd: int) -> None:
        self._lock(f"tc-{direction.label}")
        if self.policy != "netlink":
            link_fd = _tcx_link(self.iface, direction, prog_fd, need=self.policy == "link")
            if link_fd is not None:
                self._items.append(_TcxAttachment(self.iface, direction, link_fd))
                self._remove_stale_filter(direction)
                return
        if not self._created_qdisc and not _has_clsact(self.ipr, self.iface.index):
            try:
                self.ipr.tc("add", "clsact", self.iface.index)
                self._created_qdisc = True
                self._save_state()
            except NetlinkError as exc:
                if _err(exc) != errno.EEXIST:
                    raise AttachError(
                        f"adding a clsact qdisc to {self.iface.name} failed: {libbpf.errno_name(_err(exc))}; "
                        "run as root or grant CAP_NET_ADMIN"
                    ) from exc
        elif not self._created_qdisc and _stale_state_is_ours(self.iface):
            # A killed run of ours created this clsact: take it over, so it goes at our exit.
            self._created_qdisc = True
            self._save_state()
        self._items.append(_TcAttachment(self.ipr, self.iface, direction, prog_fd, self.notify))

    def _remove_stale_filter(self, direction: Direction) -> None:
        """A killed netlink-path run's filter would go on running beside our link: remove it."""
        try:
            f, ours = _our_filter(self.ipr, self.iface.index, direction)
            if f is None or not ours:
                return
            _del_our_filter(self.ipr, self.iface.index, direction)
        except NetlinkError as exc:
            log.info("could not remove a stale filter on %s %s: %s", self.iface.name, direction.label, exc)
            return
        self.notify(f"removed a stale xtrace-catch TC filter on {self.iface.name} {direction.label}")
        if _stale_state_is_ours(self.iface) and _remove_clsact_if_unused(self.ipr, self.iface.index):
            _state_file(self.iface.name).unlink(missing_ok=True)

    def forget(self) -> None:
        """The interface is gone and our attachments with it: drop them without netlink calls."""
        for it in self._items:
            if isinstance(it, _LinkHolder):
                it.close_link()
        self._items.clear()
        if self._created_qdisc:
            self._created_qdisc = False
            _state_file(self.iface.name).unlink(missing_ok=True)
        self.ipr.close()
        while self._locks:
            self._locks.pop().release()

    def _save_state(self) -> None:
        _write_record(_state_file(self.iface.name), {"ifindex": self.iface.index, "created_clsact": True},
                      "that we created the clsact qdisc (a crash would leave it)")

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
                _remove_clsact_if_unused(self.ipr, self.iface.index)
                _state_file(self.iface.name).unlink(missing_ok=True)
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


def _stale_state_is_ours(iface: Interface) -> bool:
    """Whether the state file says a run of ours, no longer alive, created the interface's clsact."""
    try:
        st = json.loads(_state_file(iface.name).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(st, dict) or not st.get("created_clsact") or st.get("ifindex") != iface.index:
        return False
    pid = st.get("pid")
    if isinstance(pid, int) and pid > 0 and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False  # that run is still alive: the qdisc is its to remove
    return True


def _remove_clsact_if_unused(ipr: IPRoute, index: int) -> bool:
    try:
        if not _has_clsact(ipr, index):
            return False
        if any(_filters(ipr, index, d) for d in Direction):
            return False
        ipr.tc("del", "clsact", index)
        return True
    except NetlinkError as exc:
        if _err(exc) in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
            return False
        raise


def _detach_xdp_prog(ipr: IPRoute, index: int, prog_id: int) -> bool:
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
                    if _attached_xdp_id(ipr, index) != prog_id:
                        return False
                    ipr.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", flag)]})
                    if _attached_xdp_id(ipr, index) == prog_id:
                        continue  # attached in the other mode
                return True
            except NetlinkError:
                continue
        return False
    finally:
        if fd is not None:
            os.close(fd)


def cleanup(ifname: str) -> list[str]:
    """Remove xtrace-catch leftovers (XDP program, TC filters, and a clsact qdisc a run of
    ours created) from an interface. Returns what was removed."""
    iface = get_interface(ifname)
    removed: list[str] = []
    # A running agent holds its hooks' locks: never pull the programs from under it.
    locks = [HookLock(ifname, hook) for hook in ("xdp", "tc-ingress", "tc-egress")]
    try:
        for lk in locks:
            lk.acquire()
        return _cleanup(iface, removed)
    finally:
        for lk in locks:
            lk.release()


def _cleanup(iface: Interface, removed: list[str]) -> list[str]:
    ifname = iface.name
    with _ipr() as ipr:
        pid = _attached_xdp_id(ipr, iface.index)
        if pid and _xdp_is_ours(ifname, iface.index, pid, _prog_name(pid)) and _detach_xdp_prog(ipr, iface.index, pid):
            removed.append(f"XDP program id {pid}")
        _xdp_state_file(ifname).unlink(missing_ok=True)
        if _has_clsact(ipr, iface.index):
            for d in Direction:
                f, ours = _our_filter(ipr, iface.index, d)
                if f is not None and ours:
                    _del_our_filter(ipr, iface.index, d)
                    removed.append(f"TC {d.label} filter")
        state = _state_file(ifname)
        try:
            st = json.loads(state.read_text())
        except (OSError, ValueError):
            st = {}
        if st.get("created_clsact") and st.get("ifindex") == iface.index:
            if _remove_clsact_if_unused(ipr, iface.index):
                removed.append("clsact qdisc (created by xtrace-catch)")
        state.unlink(missing_ok=True)
    return removed
