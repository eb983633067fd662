"""The empty program, ``r0 = verdict; exit``: the baseline the per-packet benchmarks measure ours against
(same hook type, same run), and the *hook* runs of bench/iperf.py (the kernel's cost of a TC BPF hook at
all).

``.venv/bin/python bench/empty.py IFNAME`` (inside a namespace) attaches it to both TC hooks of IFNAME
as the agent attaches, says "empty programs attached" on stderr, and detaches on SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import common  # noqa: F401 - first: the import path
from bpfprog import load_trivial_program

from xtrace_catch.kernel import libbpf, uapi
from xtrace_catch.kernel.datapath import PROG_TC_INGRESS, PROG_XDP

__all__ = ["Hook", "HOOKS", "XDP_PASS", "TC_ACT_UNSPEC", "load_trivial_program", "empty_programs"]

XDP_PASS = 2
TC_ACT_UNSPEC = -1


@dataclass(frozen=True)
class Hook:
    """A hook measured per packet: our program for it and the verdict both it and the empty one return."""

    label: str
    prog: str
    prog_type: int
    verdict: int

    @property
    def verdict_u32(self) -> int:
        return self.verdict & 0xFFFFFFFF


HOOKS = (
    Hook("XDP", PROG_XDP, uapi.BPF_PROG_TYPE_XDP, XDP_PASS),
    Hook("TC", PROG_TC_INGRESS, uapi.BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC),
)


@contextmanager
def empty_programs(hooks: tuple[Hook, ...] = HOOKS) -> Iterator[dict[str, int]]:
    """One empty program per hook, by hook label; every fd is closed on the way out."""
    lib = libbpf.get()
    fds: dict[str, int] = {}
    try:
        for hook in hooks:
            fds[hook.label] = load_trivial_program(lib, hook.prog_type, hook.verdict)
        yield fds
    finally:
        for fd in reversed(list(fds.values())):
            os.close(fd)


def attach_both(ifname: str) -> None:
    """The empty TC program on both hooks of `ifname` until SIGTERM or SIGINT, then detached."""
    from xtrace_catch import attach
    from xtrace_catch.kernel.layout import Direction

    fd = load_trivial_program(libbpf.get(), uapi.BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC, name="xtrace_empty")
    try:
        with attach.Attachments(attach.get_interface(ifname)) as att:
            for d in (Direction.INGRESS, Direction.EGRESS):
                att.attach_tc(d, fd)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # sigwait takes them
            print("empty programs attached", file=sys.stderr, flush=True)
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        os.close(fd)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench/empty.py IFNAME")
    attach_both(sys.argv[1])
