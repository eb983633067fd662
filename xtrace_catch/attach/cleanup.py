"""xtrace-catch cleanup: remove what a killed run left on an interface, and only that."""

from __future__ import annotations

import json

from ..kernel.layout import Direction
from .interfaces import get_interface
from .names import Interface, prog_name
from .netlink import boundary, open_ipr
from .state import HookLock, state_file, xdp_state_file
from .tc import del_our_filter, has_clsact, our_filter, remove_clsact_if_unused
from .xdp import attached_xdp_id, detach_xdp_prog, xdp_is_ours


@boundary("cleaning up")
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
    with open_ipr() as ipr:
        pid = attached_xdp_id(ipr, iface.index)
        if pid and xdp_is_ours(ifname, iface.index, pid, prog_name(pid)) and detach_xdp_prog(ipr, iface.index, pid):
            removed.append(f"XDP program id {pid}")
        xdp_state_file(ifname).unlink(missing_ok=True)
        if has_clsact(ipr, iface.index):
            for d in Direction:
                f, ours = our_filter(ipr, iface.index, d)
                if f is not None and ours:
                    del_our_filter(ipr, iface.index, d)
                    removed.append(f"TC {d.label} filter")
        state = state_file(ifname)
        try:
            st = json.loads(state.read_text())
        except (OSError, ValueError):
            st = {}
        if st.get("created_clsact") and st.get("ifindex") == iface.index:
            if remove_clsact_if_unused(ipr, iface.index):
                removed.append("clsact qdisc (created by xtrace-catch)")
        state.unlink(missing_ok=True)
    return removed
