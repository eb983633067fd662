"""What marks a hook as ours (program names, TC handle and priority) and the Interface record."""

from __future__ import annotations

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


# The kernel keeps 15 characters of a program's name.
OUR_PROG_NAMES = {n[:15] for n in (XDP_NAME, *TC_NAMES.values())}


ARPHRD = {1: "Ethernet", 32: "InfiniBand", 772: "loopback", 65534: "none", 768: "tunnel", 769: "tunnel6",
          776: "sit", 778: "gre", 823: "ip6gre", 65535: "void"}


ARPHRD_INFINIBAND = 32


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
