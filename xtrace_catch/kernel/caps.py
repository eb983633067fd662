"""Capability checks, done before any BPF syscall so a missing privilege is one clear line."""

from __future__ import annotations

from ..errors import PrivilegeError

__all__ = ["effective_caps", "check_bpf_privileges", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF"]

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_PERFMON = 38
CAP_BPF = 39
_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}


def effective_caps(status_path: str = "/proc/self/status") -> int:
    """The effective capability mask of this process."""
    with open(status_path) as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_bpf_privileges(need_net_admin: bool = True, caps: int | None = None) -> None:
    """Raise PrivilegeError unless this process may load BPF programs (and attach them).

    CAP_SYS_ADMIN alone suffices (kernels before 5.8 know nothing else); otherwise
    CAP_BPF + CAP_PERFMON (+ CAP_NET_ADMIN to attach XDP/TC).
    """
    caps = effective_caps() if caps is None else caps
    have = lambda c: bool(caps >> c & 1)  # noqa: E731
    if have(CAP_SYS_ADMIN) and (have(CAP_NET_ADMIN) or not need_net_admin):
        return
    needed = [CAP_BPF, CAP_PERFMON] + ([CAP_NET_ADMIN] if need_net_admin else [])
    missing = [_NAMES[c] for c in needed if not have(c)]
    if missing:
        raise PrivilegeError(
            f"missing {', '.join(missing)}: run as root (sudo xtrace-catch ...) or grant "
            "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (e.g. docker run --cap-add BPF --cap-add NET_ADMIN --cap-add PERFMON)"
        )
