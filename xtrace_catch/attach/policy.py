"""Which attach path each hook takes: XTRACE_ATTACH (auto, link, netlink), the kernel and libbpf at hand."""

from __future__ import annotations

import errno
import os

from ..errors import UsageError
from ..kernel import libbpf
from ..kernel.layout import Direction
from ..kernel.uapi import BPF_F_AFTER, BPF_F_BEFORE, BPF_TCX_EGRESS, BPF_TCX_INGRESS

ATTACH_POLICIES = ("auto", "link", "netlink")


TCX_TYPE = {Direction.INGRESS: BPF_TCX_INGRESS, Direction.EGRESS: BPF_TCX_EGRESS}


TCX_PLACE = {Direction.INGRESS: BPF_F_BEFORE, Direction.EGRESS: BPF_F_AFTER}


# What a kernel without the link type answers BPF_LINK_CREATE with.
NO_LINK_ERRNOS = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPROTONOSUPPORT)


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
