"""One interval's records: a port's state and sample, its deltas and rates, and the health flags
its hw_counters raise."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .counters import DATA_WORD, LINK_ERROR_COUNTERS, RX_DATA, RX_PACKETS, TX_DATA, TX_PACKETS, CounterDiff, Reading

__all__ = [
    "PortInfo", "PortSample", "PortDelta", "RdmaInterval", "HealthFlag", "HealthKind", "health_flags",
]


@dataclass(frozen=True)
class PortInfo:
    """What a port says about itself: state, physical state, rate and link layer."""

    device: str
    port: int
    state: str = "UNKNOWN"  # e.g. ACTIVE, DOWN, INIT
    state_id: int | None = None
    phys_state: str = "UNKNOWN"  # e.g. LinkUp, Disabled, Polling
    phys_state_id: int | None = None
    rate_gbps: float | None = None
    link_layer: str = "UNKNOWN"  # InfiniBand, Ethernet
    node_type: str = ""  # CA, RNIC (iWARP), ...
    netdev: str | None = None

    @property
    def active(self) -> bool:
        return self.state.upper() == "ACTIVE"

    @property
    def transport(self) -> str:
        """``IB``, ``RoCE``, ``iWARP`` or the link layer as written."""
        if self.node_type.upper() == "RNIC":
            return "iWARP"
        return {"infiniband": "IB", "ethernet": "RoCE"}.get(self.link_layer.lower(), self.link_layer)

    @property
    def name(self) -> str:
        return f"{self.device}/{self.port}"


class _DataBytes:
    """rx_bytes/tx_bytes of a port from its port_*_data counters (4-byte words, x4 applied)."""

    def _counter(self, name: str, scale: int = 1) -> int | None:
        raise NotImplementedError

    @property
    def rx_bytes(self) -> int | None:
        """Bytes the NIC received on this port."""
        return self._counter(RX_DATA, DATA_WORD)

    @property
    def tx_bytes(self) -> int | None:
        """Bytes the NIC transmitted on this port."""
        return self._counter(TX_DATA, DATA_WORD)


@dataclass(frozen=True)
class PortSample(_DataBytes):
    """One reading of a port. ``time`` is the reader's clock (monotonic seconds); ``counters`` hold
    ``counters/`` with ``counters_ext/`` values preferred; ``hw`` is None outside nccl mode."""

    info: PortInfo
    time: float
    counters: Mapping[str, Reading]
    hw: Mapping[str, Reading] | None = None
    lifespan_ms: int | None = None

    def _counter(self, name: str, scale: int = 1) -> int | None:
        """A counter as the NIC counts it, cumulative."""
        r = self.counters.get(name)
        return None if r is None else r.value * scale


def _per_s(v: int | None, elapsed: float, scale: int = 1) -> float | None:
    if v is None or elapsed <= 0:
        return None
    return v * scale / elapsed


@dataclass(frozen=True)
class PortDelta(_DataBytes):
    """One port over one interval. ``time`` is wall-clock seconds of the reading, ``elapsed`` the
    reader-clock seconds since the previous one. ``hw`` (port hw_counters; empty if the port has
    none) is None outside nccl mode; ``device_hw`` (device-level hw_counters, shared by the device's
    ports) is None outside nccl mode or when the device has none."""

    info: PortInfo
    time: float
    elapsed: float
    counters: CounterDiff
    hw: CounterDiff | None = None
    device_hw: CounterDiff | None = None
    resets_total: int = 0  # counter resets handled on this port since start
    lifespan_ms: int | None = None

    @property
    def nccl(self) -> bool:
        """Read in nccl mode (hw_counters included)."""
        return self.hw is not None

    def _counter(self, name: str, scale: int = 1) -> int | None:
        """A counter's change over the interval."""
        v = self.counters.deltas.get(name)
        return None if v is None else v * scale

    @property
    def rx_packets(self) -> int | None:
        return self._counter(RX_PACKETS)

    @property
    def tx_packets(self) -> int | None:
        return self._counter(TX_PACKETS)

    @property
    def rx_bps(self) -> float | None:
        return _per_s(self.rx_bytes, self.elapsed, 8)

    @property
    def tx_bps(self) -> float | None:
        return _per_s(self.tx_bytes, self.elapsed, 8)

    @property
    def rx_pps(self) -> float | None:
        return _per_s(self.rx_packets, self.elapsed)

    @property
    def tx_pps(self) -> float | None:
        return _per_s(self.tx_packets, self.elapsed)

    def _util(self, bps: float | None) -> float | None:
        if bps is None or not self.info.rate_gbps:
            return None
        return bps / (self.info.rate_gbps * 1e9)

    @property
    def rx_utilization(self) -> float | None:
        """Receive bit rate over the port rate (per direction: the rate is full duplex)."""
        return self._util(self.rx_bps)

    @property
    def tx_utilization(self) -> float | None:
        return self._util(self.tx_bps)

    @property
    def utilization(self) -> float | None:
        """The busier direction's utilisation."""
        vals = [u for u in (self.rx_utilization, self.tx_utilization) if u is not None]
        return max(vals) if vals else None

    @property
    def errors(self) -> dict[str, int]:
        """Link error/discard counters that rose in this interval."""
        d = self.counters.deltas
        return {n: d[n] for n in LINK_ERROR_COUNTERS if d.get(n)}

    def hw_rate(self, name: str) -> float | None:
        """Per-second rate of a port hw_counter in this interval."""
        return _per_s(self.hw.deltas.get(name) if self.hw else None, self.elapsed)


@dataclass(frozen=True)
class RdmaInterval:
    """One poll: ports with deltas, ports read for the first time (their baseline), and selected
    devices that are missing now."""

    seq: int
    time: float
    ports: tuple[PortDelta, ...]
    baseline: tuple[PortSample, ...] = ()
    missing: tuple[str, ...] = ()


class HealthKind(str, enum.Enum):
    CONGESTION = "congestion"
    RETRANSMISSION = "retransmission"
    COMPLETION_ERRORS = "completion errors"
    RECEIVE_DROPS = "receive drops"
    LINK_ERRORS = "link errors"


# Which hw_counters (name without a vport_ prefix) raise which flag. Flush errors are left out: a QP
# torn down normally flushes its outstanding work requests too; the errors that cause it are here.
HEALTH_COUNTERS: dict[HealthKind, tuple[str, ...]] = {
    HealthKind.CONGESTION: ("np_ecn_marked_roce_packets", "np_cnp_sent", "rp_cnp_handled", "rp_cnp_ignored",
                            "cc_rx_ce_pkts", "cc_rx_cnp_pkts", "cc_tx_cnp_pkts"),
    HealthKind.RETRANSMISSION: ("out_of_sequence", "packet_seq_err", "implied_nak_seq_err", "local_ack_timeout_err",
                                "duplicate_request", "rnr_nak_retry_err", "roce_adp_retrans", "roce_adp_retrans_to",
                                "roce_slow_restart", "roce_slow_restart_cnps", "roce_slow_restart_trans"),
    HealthKind.COMPLETION_ERRORS: ("req_cqe_error", "resp_cqe_error", "req_remote_access_errors",
                                   "req_remote_invalid_request", "resp_remote_access_errors",
                                   "resp_local_length_error", "req_transport_retries_exceeded",
                                   "req_rnr_retries_exceeded"),
    HealthKind.RECEIVE_DROPS: ("out_of_buffer",),
    HealthKind.LINK_ERRORS: ("rx_icrc_encapsulated",),
}
REQUEST_COUNTERS = (("write", "rx_write_requests"), ("read", "rx_read_requests"), ("atomic", "rx_atomic_requests"))


@dataclass(frozen=True)
class HealthFlag:
    """A health problem seen in one interval and the counters (with their deltas) that show it."""

    kind: HealthKind
    counters: tuple[tuple[str, int], ...]

    def as_dict(self) -> dict[str, Any]:
        return {"flag": self.kind.value, "counters": dict(self.counters)}

    def __str__(self) -> str:
        return f"{self.kind.value} " + " ".join(f"{n}+{v}" for n, v in self.counters)


def health_flags(d: PortDelta) -> tuple[HealthFlag, ...]:
    """Flags for a port's interval, in :class:`HealthKind` order: congestion (CNPs / ECN marks
    rising), retransmission symptoms (sequence errors, ACK timeouts, ...), completion errors,
    receive drops (no receive WQE), link errors (counters/ error counters, ICRC errors). Port and
    device-level hw_counters both count; a counter the device lacks never raises a flag."""
    hw: dict[str, int] = {}
    for diff in (d.device_hw, d.hw):
        if diff is not None:
            for n, v in diff.deltas.items():
                base = n.removeprefix("vport_")
                hw[base] = hw.get(base, 0) + v
    flags: list[HealthFlag] = []
    for kind, names in HEALTH_COUNTERS.items():
        hit = [(n, hw[n]) for n in names if hw.get(n)]
        if kind is HealthKind.LINK_ERRORS:
            hit = list(d.errors.items()) + hit
        if hit:
            flags.append(HealthFlag(kind, tuple(hit)))
    return tuple(flags)
