"""What marks a hook as ours (program names, TC handle and priority) and the Interface record."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from ..errors import LibbpfError
from ..kernel import libbpf
from ..kernel.layout import Direction

TC_HANDLE = 0x7874  # "xt"


TC_PRIO = 1  # run before other filters so a verdict of theirs cannot hide packets from us


PARENT = {Direction.INGRESS: 0xFFFFFFF2, Direction.EGRESS: 0xFFFFFFF3}


TC_NAMES = {Direction.INGRESS: "xtrace_tc_ingress", Direction.EGRESS: "xtrace_tc_egress"}


XDP_NAME = "xtrace_xdp"
XDP_FRAGS_NAME = "xtrace_xdp_frags"  # the multi-buffer variant


# The kernel keeps 15 characters of a program's name.
OUR_PROG_NAMES = {n[:15] for n in (XDP_NAME, XDP_FRAGS_NAME, *TC_NAMES.values())}


class LinkKind(enum.IntEnum):
    """An interface's hardware type (ARPHRD_* of linux/if_arp.h), the ones `-l` names."""

    ETHER = 1
    INFINIBAND = 32
    TUNNEL = 768
    TUNNEL6 = 769
    LOOPBACK = 772
    SIT = 776
    IPGRE = 778
    IP6GRE = 823
    NONE = 65534
    VOID = 65535

    @property
    def label(self) -> str:
        return _LINK_LABELS[self]


_LINK_LABELS = {
    LinkKind.ETHER: "Ethernet", LinkKind.INFINIBAND: "InfiniBand", LinkKind.TUNNEL: "tunnel",
    LinkKind.TUNNEL6: "tunnel6", LinkKind.LOOPBACK: "loopback", LinkKind.SIT: "sit", LinkKind.IPGRE: "gre",
    LinkKind.IP6GRE: "ip6gre", LinkKind.NONE: "none", LinkKind.VOID: "void",
}


def link_type_text(arphrd: int) -> str:
    """The -l listing's TYPE: our name for a known ARPHRD value, else 'type N'."""
    try:
        return LinkKind(arphrd).label
    except ValueError:
        return f"type {arphrd}"


class OperState(enum.StrEnum):
    """IFLA_OPERSTATE (RFC 2863 operational status, as netlink names it)."""

    UNKNOWN = "UNKNOWN"
    NOTPRESENT = "NOTPRESENT"
    DOWN = "DOWN"
    LOWERLAYERDOWN = "LOWERLAYERDOWN"
    TESTING = "TESTING"
    DORMANT = "DORMANT"
    UP = "UP"

    @classmethod
    def of(cls, value: str | None) -> OperState:
        try:
            return cls((value or "UNKNOWN").upper())
        except ValueError:
            return cls.UNKNOWN

    @property
    def passes_traffic(self) -> bool:
        """UP, or UNKNOWN (drivers without operstate, e.g. tun, lo): counting can happen."""
        return self in (OperState.UP, OperState.UNKNOWN)


@dataclass
class Interface:
    index: int
    name: str
    arphrd: int
    state: OperState
    mtu: int
    addresses: list[str] = field(default_factory=list)
    xdp: str = ""  # e.g. "xdp id 12 xtrace_xdp"
    tc: list[str] = field(default_factory=list)  # our filters: "ingress", "egress"
    tcx: list[str] = field(default_factory=list)  # our TCX links: "ingress", "egress"

    @property
    def link_type(self) -> str:
        return link_type_text(self.arphrd)

    @property
    def is_infiniband(self) -> bool:
        return self.arphrd == LinkKind.INFINIBAND

    @property
    def is_loopback(self) -> bool:
        return self.arphrd == LinkKind.LOOPBACK

    def primary_ipv4(self) -> str | None:
        for a in self.addresses:
            if ":" not in a:
                return a
        return None


def prog_name(prog_id: int) -> str:
    lib = libbpf.get()
    try:
        fd = lib.prog_fd_by_id(prog_id)
    except LibbpfError:
        return "?"
    try:
        return lib.prog_info(fd)[1]
    finally:
        os.close(fd)
