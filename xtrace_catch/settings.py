"""Validated settings for a run. Every check happens here, before any syscall."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from .errors import UsageError
from .layout import DEFAULT_FLOWS, Direction, Filter

__all__ = ["Mode", "Output", "DirectionChoice", "Settings", "INTERVAL_MIN_MS", "INTERVAL_MAX_MS"]

INTERVAL_MIN_MS = 100
INTERVAL_MAX_MS = 3_600_000
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")


class Mode(str, enum.Enum):
    XDP = "xdp"
    TC = "tc"
    RDMA = "rdma"
    NCCL = "nccl"


class Output(str, enum.Enum):
    TEXT = "text"
    JSON = "json"
    TABLE = "table"


class DirectionChoice(str, enum.Enum):
    INGRESS = "ingress"
    EGRESS = "egress"
    BOTH = "both"

    @property
    def directions(self) -> tuple[Direction, ...]:
        return {"ingress": (Direction.INGRESS,), "egress": (Direction.EGRESS,),
                "both": (Direction.INGRESS, Direction.EGRESS)}[self.value]


def _choice(enum_cls: type[enum.Enum], value: str, what: str) -> enum.Enum:
    try:
        return enum_cls(value.strip().lower())
    except ValueError:
        allowed = ", ".join(m.value for m in enum_cls)  # type: ignore[attr-defined]
        raise UsageError(f"unknown {what} {value!r}; choose one of: {allowed}") from None


@dataclass(frozen=True)
class Settings:
    interface: str = "eth0"
    mode: Mode = Mode.XDP
    direction: DirectionChoice = DirectionChoice.INGRESS
    filter: Filter = Filter.ALL
    interval_ms: int = 5000
    exclude_dns: bool = False
    dns_servers: tuple[str, ...] = field(default_factory=tuple)
    output: Output = Output.TEXT
    count: int | None = None
    verbose: bool = False
    xdp_mode: str = "auto"
    idle_timeout_s: float = 60.0
    max_flows: int = DEFAULT_FLOWS
    device: str | None = None

    @classmethod
    def from_options(cls, *, interface: str, mode: str, direction: str | None, filter_: str, interval: str,
                     exclude_dns: bool, dns_servers: list[str], output: str, count: int | None, verbose: bool,
                     xdp_mode: str, idle_timeout: float, max_flows: int, device: str | None) -> Settings:
        """Validate raw option strings; UsageError names the bad value and the fix."""
        m = _choice(Mode, mode, "mode")
        assert isinstance(m, Mode)
        dev = device
        if m in (Mode.RDMA, Mode.NCCL):
            # The older README writes the RDMA device as -d in these modes.
            if direction and direction.lower() not in ("ingress", "egress", "both"):
                dev = dev or direction
            d = DirectionChoice.INGRESS
        else:
            dchoice = _choice(DirectionChoice, direction or "ingress", "direction")
            assert isinstance(dchoice, DirectionChoice)
            d = dchoice
            if m is Mode.XDP and d is not DirectionChoice.INGRESS:
                raise UsageError(f"XDP sees ingress only, not {d.value}: use -m tc -d {d.value}")
        try:
            f = Filter.parse(filter_)
        except ValueError:
            raise UsageError(
                f"unknown filter {filter_!r}; choose one of: " + ", ".join(x.name.lower() for x in Filter)
            ) from None
        try:
            ivl = int(str(interval).strip())
        except ValueError:
            raise UsageError(f"interval {interval!r} is not a number of milliseconds; "
                             f"give {INTERVAL_MIN_MS}..{INTERVAL_MAX_MS}") from None
        if not INTERVAL_MIN_MS <= ivl <= INTERVAL_MAX_MS:
            raise UsageError(f"interval {ivl} ms out of range; give {INTERVAL_MIN_MS}..{INTERVAL_MAX_MS} ms")
        if not _IFNAME.match(interface or ""):
            raise UsageError(f"invalid interface name {interface!r}: 1-15 characters without '/', ':' or spaces; "
                             "see 'xtrace-catch -l'")
        out = _choice(Output, output, "output")
        assert isinstance(out, Output)
        if count is not None and count < 1:
            raise UsageError(f"--count {count}: give a number of intervals >= 1")
        if xdp_mode not in ("auto", "native", "generic"):
            raise UsageError(f"unknown --xdp-mode {xdp_mode!r}; choose one of: auto, native, generic")
        if m is not Mode.XDP and xdp_mode != "auto":
            raise UsageError("--xdp-mode applies to -m xdp only")
        if idle_timeout <= 0:
            raise UsageError(f"--idle-timeout {idle_timeout}: give seconds > 0")
        if not 1024 <= max_flows <= (1 << 24):
            raise UsageError(f"--max-flows {max_flows} out of range; give 1024..{1 << 24}")
        from .datapath import addr16  # validates addresses
        for s in dns_servers:
            addr16(s)
        return cls(interface=interface, mode=m, direction=d, filter=f, interval_ms=ivl, exclude_dns=exclude_dns,
                   dns_servers=tuple(dns_servers), output=out, count=count, verbose=verbose, xdp_mode=xdp_mode,
                   idle_timeout_s=idle_timeout, max_flows=max_flows, device=dev)
