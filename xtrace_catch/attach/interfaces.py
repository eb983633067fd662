"""Interface discovery: name -> Interface (index, link type, addresses, what is attached)."""

from __future__ import annotations

import socket

from ..errors import UsageError, XtraceError
from ..kernel.layout import Direction
from ..settings import check_interface_name
from .names import OUR_PROG_NAMES, Interface, OperState, prog_name
from .netlink import IPRoute, NetlinkError, boundary, open_ipr, xdp_attrs
from .tc import has_clsact, our_filter, tcx_programs


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
        index=index, name=name, arphrd=arphrd,
        state=OperState.of(link.get_attr("IFLA_OPERSTATE")), mtu=link.get_attr("IFLA_MTU") or 0,  # type: ignore[attr-defined]
        addresses=addrs,
    )
    if with_attach:
        x = xdp_attrs(link)
        pid = x.get("IFLA_XDP_PROG_ID")
        if pid:
            iface.xdp = f"{x.get('IFLA_XDP_ATTACHED') or 'xdp'} id {pid} {prog_name(int(pid))}"  # type: ignore[arg-type]
        if has_clsact(ipr, index):
            for d in Direction:
                f, ours = our_filter(ipr, index, d)
                if f is not None and ours:
                    iface.tc.append(d.label)
        for d, progs in tcx_programs(iface).items():
            if any(name in OUR_PROG_NAMES for _, name in progs):
                iface.tcx.append(d.label)
    return iface


@boundary("looking up the interface")
def find_interface(name: str) -> Interface | None:
    """The interface named `name` now, or None when there is none (no attachment details).

    Opens its own netlink socket each call: a pyroute2 socket kept across calls from
    asyncio's worker threads leaves an event loop that fails noisily at exit."""
    with open_ipr() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        try:
            return _interface(ipr, ipr.get_links(idx[0])[0], with_attach=False)
        except NetlinkError:
            return None


@boundary("listing interfaces")
def list_interfaces() -> list[Interface]:
    """Every interface of this network namespace, with what is attached."""
    with open_ipr() as ipr:
        return [_interface(ipr, link) for link in ipr.get_links()]


@boundary("looking up the interface")
def get_interface(name: str) -> Interface:
    """One interface by name; UsageError when there is none (suggesting -l)."""
    check_interface_name(name)
    with open_ipr() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            raise UsageError(f"interface {name!r} not found; list interfaces with 'xtrace-catch -l'")
        return _interface(ipr, ipr.get_links(idx[0])[0], with_attach=False)


def host_ip_for(iface: Interface | None) -> str:
    """The interface's primary IPv4, else the first non-loopback IPv4 of the host, else ''."""
    ip = iface.primary_ipv4() if iface is not None else None
    if ip:
        return ip
    for other in list_interfaces():
        if other.is_loopback:
            continue
        ip = other.primary_ipv4()
        if ip:
            return ip
    return ""


def host_ip_by_name(name: str) -> str:
    """host_ip_for() by name; the counter modes do not need the interface to exist."""
    try:
        iface: Interface | None = get_interface(name)
    except XtraceError:
        iface = None
    return host_ip_for(iface)
