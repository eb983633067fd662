"""RDMA NIC counters from sysfs: port counters (``rdma`` mode) and driver hw_counters (``nccl`` mode).

Hardware-offloaded RoCE and native InfiniBand never pass the kernel stack, so XDP/TC do not
see them; the NIC's own counters do. This module reads them under a configurable sysfs root
(``/sys``; ``/host/sys`` when the container mounts the host's)::

    <root>/class/infiniband/<dev>/ports/<n>/{state,phys_state,rate,link_layer}
    <root>/class/infiniband/<dev>/ports/<n>/counters/*        PMA PortCounters (+ Extended)
    <root>/class/infiniband/<dev>/ports/<n>/counters_ext/*    mlx4 legacy 64-bit copies (*_64)
    <root>/class/infiniband/<dev>/ports/<n>/hw_counters/*     driver counters (nccl mode)
    <root>/class/infiniband/<dev>/hw_counters/*               device-level driver counters (nccl mode)
    <root>/class/net/<if>/device/infiniband/<dev>             netdev -> RDMA device; port = dev_port + 1

Layout: parsing, the wrap/reset rule, deltas, formatting and metrics are pure functions;
:class:`RdmaReader` does the file I/O, with an injectable clock, and keeps the previous
readings and the totals. Units: ``port_{xmit,rcv}_data`` count 4-byte words; ``rx_bytes`` /
``tx_bytes`` and every byte figure derived from them are bytes (x4). ``counters`` and
``hw_counters`` keep each file's own unit, by its sysfs name. ``lifespan`` is the hw_counters
cache period in ms, never a counter.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .output import rfc3339

__all__ = [
    "DEFAULT_ROOT",
    "Step",
    "Source",
    "Reading",
    "PortInfo",
    "PortSample",
    "CounterDiff",
    "PortDelta",
    "RdmaInterval",
    "HealthFlag",
    "HealthKind",
    "NetdevLink",
    "NicBytes",
    "Selection",
    "Sample",
    "parse_state",
    "parse_rate",
    "parse_counter",
    "ext_counter_name",
    "counter_bits",
    "counter_step",
    "diff_readings",
    "list_devices",
    "netdev_links",
    "mapping_lines",
    "devices_for_interface",
    "select_devices",
    "check_interval",
    "health_flags",
    "json_record",
    "text_line",
    "health_line",
    "format_bps",
    "format_count",
    "format_percent",
    "port_metrics",
    "interval_metrics",
    "nic_bytes",
    "RdmaReader",
]

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys"
DATA_WORD = 4  # port_{xmit,rcv}_data count 4-byte words (IB PMA; mlx5 computes octets >> 2)
WRAP_WINDOW = 1 << 30  # "near 2^32" for a counter of unknown width: within 2^30 of it
U32 = 1 << 32

RX_DATA, TX_DATA = "port_rcv_data", "port_xmit_data"
RX_PACKETS, TX_PACKETS = "port_rcv_packets", "port_xmit_packets"
TRAFFIC_COUNTERS = (RX_DATA, TX_DATA, RX_PACKETS, TX_PACKETS)

# ports/<n>/counters/ files that count errors or discards (highlighted in the text line).
LINK_ERROR_COUNTERS = (
    "symbol_error", "link_error_recovery", "link_downed", "port_rcv_errors", "port_rcv_remote_physical_errors",
    "port_rcv_switch_relay_errors", "port_xmit_discards", "port_rcv_discards", "port_xmit_constraint_errors",
    "port_rcv_constraint_errors", "local_link_integrity_errors", "excessive_buffer_overrun_errors", "VL15_dropped",
)
LIFESPAN = "lifespan"

# mlx5 hw_counters that are 64-bit (COUNTER_SEMANTICS.md: congestion counters use `_high` offsets,
# rx_icrc_encapsulated comes from PPCNT, the optional op counters from vport stats). Every other mlx5
# hw_counter is a Q counter, read as 32 bits, so it wraps at 2^32.
_MLX5_64BIT = re.compile(r"^(np_|rp_|cc_|rdma_)|^rx_icrc_encapsulated$")

Sample = tuple[str, str, str, dict[str, str], float]
"""One metric sample, as in ``metrics.Batch.health``: (name, type, help, labels, value)."""


# --------------------------------------------------------------------------------------------- parsing


def parse_state(text: str) -> tuple[int | None, str]:
    """``'4: ACTIVE'`` -> ``(4, 'ACTIVE')``; ``'5: LinkUp'`` -> ``(5, 'LinkUp')``; text without a
    number keeps its words: ``'ACTIVE'`` -> ``(None, 'ACTIVE')``; empty -> ``(None, 'UNKNOWN')``."""
    t = text.strip()
    m = re.fullmatch(r"(\d+)\s*:\s*(.*)", t)
    if m:
        return int(m.group(1)), m.group(2).strip() or "UNKNOWN"
    return None, t or "UNKNOWN"


def parse_rate(text: str) -> float | None:
    """Port rate in Gbit/s: ``'100 Gb/sec (4X EDR)'`` -> ``100.0``, ``'2.5 Gb/sec (1X SDR)'`` -> ``2.5``.

    The nominal per-direction rate as the kernel reports it (QDR's 40 includes 8b/10b coding,
    as node_exporter counts it too). None if the text has no rate."""
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*([GMT]?)b/s(?:ec)?\b", text)
    if not m:
        return None
    scale = {"": 1e-9, "M": 1e-3, "G": 1.0, "T": 1e3}[m.group(2)]
    return float(m.group(1)) * scale


def parse_counter(text: str) -> int:
    """A sysfs counter file's content as an int; ValueError for anything else (e.g. ``'N/A (no PMA)'``)."""
    t = text.strip()
    if not t.isascii() or not t.isdigit():
        raise ValueError(f"not a number: {t[:40]!r}")
    return int(t)


def ext_counter_name(name: str) -> str:
    """The ``counters/`` name a ``counters_ext/`` file stands for: ``port_xmit_data_64`` ->
    ``port_xmit_data``, ``port_unicast_rcv_packets`` -> ``unicast_rcv_packets``."""
    base = name[:-3] if name.endswith("_64") else name
    m = re.fullmatch(r"port_((?:unicast|multicast)_(?:xmit|rcv)_packets)", base)
    return m.group(1) if m else base


class Source(str, enum.Enum):
    """Where a counter was read."""

    COUNTERS = "counters"
    COUNTERS_EXT = "counters_ext"
    HW_COUNTERS = "hw_counters"


def counter_bits(source: Source, name: str, family: str) -> int | None:
    """The width of a counter, where it is known, else None.

    ``counters_ext/`` files are 64-bit. mlx5 ``hw_counters`` are 32-bit Q counters except the
    congestion (np_*, rp_*), optional op (cc_*, rdma_*) and rx_icrc_encapsulated counters, which are
    64-bit (a ``vport_`` prefix, switchdev mode, is ignored). PMA ``counters/`` and other drivers'
    hw_counters: unknown (ABI says 64-bit for the data/packet counters, but a device without
    PortCountersExtended serves 32 bits, and IB error counters are 8/16-bit and saturate)."""
    if source is Source.COUNTERS_EXT:
        return 64
    if source is Source.HW_COUNTERS and family == "mlx5":
        base = name.removeprefix("vport_")
        return 64 if _MLX5_64BIT.search(base) else 32
    return None


# --------------------------------------------------------------------------------------------- deltas


class Step(enum.Enum):
    """How a counter moved between two readings."""

    FORWARD = "forward"
    WRAP = "wrap"
    RESET = "reset"


def counter_step(old: int, new: int, bits: int | None) -> tuple[int, Step]:
    """The delta of a counter from ``old`` to ``new`` and how it got there.

    Rule when the counter went backwards (``new < old``):

    * known width ``w`` (32 for mlx5 Q counters, 64 for ``counters_ext/``): a **wrap** if ``old``
      fits in ``w`` bits and the way forward through ``2^w``, ``2^w - old + new``, is at most half the
      range (``2^(w-1)``); the delta is that distance. Otherwise a **reset**.
    * unknown width (PMA ``counters/``, other drivers): a 32-bit **wrap** only if ``old`` was near
      ``2^32`` (``2^32 - 2^30 <= old < 2^32 - 1``) and ``new < 2^30``; ``old == 2^32 - 1`` is a
      saturated PMA counter (they stick at all-ones), so going back from it is a reset. Otherwise a
      **reset**.

    A reset (driver reload, ``perfquery -R``, a device that came back) means the counter restarted
    from 0: its delta is ``new``. So a delta is never negative and never a near-2^32/2^64 jump.
    """
    if new >= old:
        return new - old, Step.FORWARD
    if bits is not None:
        span = 1 << bits
        fwd = span - old + new
        if old < span and fwd <= span >> 1:
            return fwd, Step.WRAP
        return new, Step.RESET
    if U32 - WRAP_WINDOW <= old < U32 - 1 and new < WRAP_WINDOW:
        return U32 - old + new, Step.WRAP
    return new, Step.RESET


@dataclass(frozen=True)
class Reading:
    """One counter value and its width in bits, if known."""

    value: int
    bits: int | None = None


@dataclass(frozen=True)
class CounterDiff:
    """A group of counters over one interval: deltas, totals since start (sums of deltas, so they
    never go backwards), and which counters wrapped or were reset in this interval."""

    deltas: Mapping[str, int]
    totals: Mapping[str, int]
    wrapped: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()


def diff_readings(old: Mapping[str, Reading], new: Mapping[str, Reading],
                  totals: Mapping[str, int] | None = None) -> CounterDiff:
    """Deltas of the counters present in both readings (see :func:`counter_step`), added onto
    ``totals``. A counter only in ``new`` is a baseline (no delta yet); one only in ``old`` is absent."""
    deltas: dict[str, int] = {}
    tot = dict(totals or {})
    wrapped: list[str] = []
    reset: list[str] = []
    for name, r in new.items():
        o = old.get(name)
        if o is None:
            continue
        d, step = counter_step(o.value, r.value, r.bits if r.bits is not None else o.bits)
        deltas[name] = d
        tot[name] = tot.get(name, 0) + d
        if step is Step.WRAP:
            wrapped.append(name)
        elif step is Step.RESET:
            reset.append(name)
    return CounterDiff(deltas=deltas, totals=tot, wrapped=tuple(wrapped), reset=tuple(reset))


# --------------------------------------------------------------------------------------------- records


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


@dataclass(frozen=True)
class PortSample:
    """One reading of a port. ``time`` is the reader's clock (monotonic seconds); ``counters`` hold
    ``counters/`` with ``counters_ext/`` values preferred; ``hw`` is None outside nccl mode."""

    info: PortInfo
    time: float
    counters: Mapping[str, Reading]
    hw: Mapping[str, Reading] | None = None
    lifespan_ms: int | None = None

    def _bytes(self, name: str) -> int | None:
        r = self.counters.get(name)
        return None if r is None else r.value * DATA_WORD

    @property
    def rx_bytes(self) -> int | None:
        """Bytes the NIC received on this port, cumulative as the NIC counts (x4 applied)."""
        return self._bytes(RX_DATA)

    @property
    def tx_bytes(self) -> int | None:
        """Bytes the NIC transmitted on this port, cumulative as the NIC counts (x4 applied)."""
        return self._bytes(TX_DATA)


def _per_s(v: int | None, elapsed: float, scale: int = 1) -> float | None:
    if v is None or elapsed <= 0:
        return None
    return v * scale / elapsed


@dataclass(frozen=True)
class PortDelta:
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

    def _d(self, name: str, scale: int = 1) -> int | None:
        v = self.counters.deltas.get(name)
        return None if v is None else v * scale

    @property
    def rx_bytes(self) -> int | None:
        return self._d(RX_DATA, DATA_WORD)

    @property
    def tx_bytes(self) -> int | None:
        return self._d(TX_DATA, DATA_WORD)

    @property
    def rx_packets(self) -> int | None:
        return self._d(RX_PACKETS)

    @property
    def tx_packets(self) -> int | None:
        return self._d(TX_PACKETS)

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


# --------------------------------------------------------------------------------------------- health


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


# --------------------------------------------------------------------------------------------- output


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)


def json_record(d: PortDelta) -> dict[str, Any]:
    """The JSON-lines object of one port in one interval (``"record": "rdma_port"``).

    ``rx_bytes``/``tx_bytes`` are bytes (x4 applied), ``counters``/``hw_counters`` every counter read
    as its interval delta in the file's own unit, by sysfs name. Unknown values are null. In nccl
    mode (``d.nccl``) it adds ``hw_counters``, ``device_hw_counters`` (where the device has them),
    ``lifespan_ms`` and ``health``."""
    i = d.info
    rec: dict[str, Any] = {
        "record": "rdma_port", "time": rfc3339(d.time), "device": i.device, "interface": i.netdev, "port": i.port,
        "netdev": i.netdev, "link_layer": i.link_layer, "state": i.state, "phys_state": i.phys_state,
        "rate_gbps": i.rate_gbps, "elapsed_s": round(d.elapsed, 3),
        "rx_bytes": d.rx_bytes, "tx_bytes": d.tx_bytes, "rx_packets": d.rx_packets, "tx_packets": d.tx_packets,
        "rx_bps": _round(d.rx_bps, 3), "tx_bps": _round(d.tx_bps, 3),
        "rx_pps": _round(d.rx_pps, 3), "tx_pps": _round(d.tx_pps, 3),
        "utilization": _round(d.utilization, 6), "rx_utilization": _round(d.rx_utilization, 6),
        "tx_utilization": _round(d.tx_utilization, 6),
        "errors": d.errors, "counters": dict(d.counters.deltas),
        "wrapped": list(d.counters.wrapped), "reset": list(d.counters.reset),
    }
    if d.hw is not None:
        rec["hw_counters"] = dict(d.hw.deltas)
        if d.device_hw is not None:
            rec["device_hw_counters"] = dict(d.device_hw.deltas)
        rec["wrapped"] += list(d.hw.wrapped)
        rec["reset"] += list(d.hw.reset)
        rec["lifespan_ms"] = d.lifespan_ms
        rec["health"] = [f.as_dict() for f in health_flags(d)]
    return rec


def _scaled(v: float, units: Sequence[str]) -> str:
    i = 0
    while v >= 1000 and i < len(units) - 1:
        v /= 1000
        i += 1
    num = f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
    if i == 0 and float(num).is_integer():
        num = f"{v:.0f}"
    return num + units[i]


def format_bps(v: float | None) -> str:
    """``12.3 Gbit/s``; ``n/a`` for unknown."""
    return "n/a" if v is None else _scaled(v, (" bit/s", " kbit/s", " Mbit/s", " Gbit/s", " Tbit/s"))


def format_count(v: float | None) -> str:
    """``1.02M``, ``350``; ``n/a`` for unknown."""
    return "n/a" if v is None else _scaled(v, ("", "k", "M", "G", "T"))


def format_percent(u: float | None) -> str:
    if u is None:
        return "n/a"
    p = u * 100
    return f"{p:.1f}%" if p < 10 else f"{p:.0f}%"


def _per_second(v: float | None) -> str:
    return "n/a" if v is None else f"{format_count(v)}/s"


def text_line(d: PortDelta) -> str:
    """One line per port and interval, errors last so they stand out::

        mlx5_0/1 [ACTIVE 100 Gb/s RoCE] rx=12.3 Gbit/s tx=1.10 Gbit/s util=12% rx_pkts=1.02M/s ...
        ... tx_pkts=90.0k/s netdev=eth2 errors: symbol_error+3 reset: port_xmit_wait
    """
    i = d.info
    rate = f"{i.rate_gbps:g} Gb/s" if i.rate_gbps else "? Gb/s"
    parts = [
        f"{i.name} [{i.state} {rate} {i.transport}]",
        f"rx={format_bps(d.rx_bps)}", f"tx={format_bps(d.tx_bps)}", f"util={format_percent(d.utilization)}",
        f"rx_pkts={_per_second(d.rx_pps)}", f"tx_pkts={_per_second(d.tx_pps)}",
    ]
    if i.netdev:
        parts.append(f"netdev={i.netdev}")
    errs = d.errors
    if errs:
        parts.append("errors: " + " ".join(f"{n}+{v}" for n, v in errs.items()))
    reset = list(d.counters.reset) + (list(d.hw.reset) if d.hw else [])
    if reset:
        parts.append("reset: " + " ".join(reset))
    return " ".join(parts)


def health_line(d: PortDelta) -> str:
    """The nccl-mode health line of a port::

        mlx5_0/1 health: congestion np_ecn_marked_roce_packets+120 np_cnp_sent+118; retransmission
        local_ack_timeout_err+2 | requests/s write=1.20k read=35.0 atomic=0

    ``health: ok`` when nothing rose; the requests part only for counters the device has."""
    flags = health_flags(d)
    line = f"{d.info.name} health: " + ("; ".join(str(f) for f in flags) if flags else "ok")
    reqs = [(label, d.hw_rate(name)) for label, name in REQUEST_COUNTERS]
    shown = [f"{label}={format_count(r)}" for label, r in reqs if r is not None]
    if shown:
        line += " | requests/s " + " ".join(shown)
    return line


# --------------------------------------------------------------------------------------------- metrics


def _s(name: str, mtype: str, help_: str, labels: dict[str, str], value: float) -> Sample:
    return (name, mtype, help_, labels, value)


def port_metrics(d: PortDelta, extra: Mapping[str, str]) -> list[Sample]:
    """The ``xtrace_rdma_`` samples of one port (device-level hw_counters: see :func:`interval_metrics`).

    Counters are totals since the agent started, summed from handled deltas (wraps and resets never
    make them go backwards); gauges describe the last interval. ``extra`` (interface, host_ip,
    collect_agg) is added to every label set."""
    i = d.info
    base = {"device": i.device, "port": str(i.port)}

    def L(**kv: str) -> dict[str, str]:
        return {**base, **kv, **extra}

    tot = d.counters.totals
    out: list[Sample] = []
    # Directions are named as the flow metrics name them (rx = ingress, tx = egress) so the two join.
    for direction, data, pkts in (("ingress", RX_DATA, RX_PACKETS), ("egress", TX_DATA, TX_PACKETS)):
        if data in tot:
            out.append(_s("xtrace_rdma_port_bytes_total", "counter",
                          "Bytes the RDMA port counted (port_*_data x4) since the agent started.",
                          L(direction=direction), tot[data] * DATA_WORD))
        if pkts in tot:
            out.append(_s("xtrace_rdma_port_packets_total", "counter",
                          "Packets the RDMA port counted since the agent started.", L(direction=direction), tot[pkts]))
    for name in sorted(tot):
        if name not in TRAFFIC_COUNTERS:
            out.append(_s("xtrace_rdma_port_counter_total", "counter",
                          "An RDMA port counter (ports/N/counters), summed since the agent started.",
                          L(counter=name), tot[name]))
    if d.hw is not None:
        for name in sorted(d.hw.totals):
            out.append(_s("xtrace_rdma_hw_counter_total", "counter",
                          "An RDMA port hw_counter (ports/N/hw_counters), summed since the agent started.",
                          L(counter=name), d.hw.totals[name]))
    for direction, bps, pps, util in (("ingress", d.rx_bps, d.rx_pps, d.rx_utilization),
                                      ("egress", d.tx_bps, d.tx_pps, d.tx_utilization)):
        if bps is not None:
            out.append(_s("xtrace_rdma_port_rate_bits_per_second", "gauge",
                          "Bit rate of the RDMA port in the last interval.", L(direction=direction), bps))
        if pps is not None:
            out.append(_s("xtrace_rdma_port_packet_rate_per_second", "gauge",
                          "Packet rate of the RDMA port in the last interval.", L(direction=direction), pps))
        if util is not None:
            out.append(_s("xtrace_rdma_port_utilization_ratio", "gauge",
                          "Bit rate over the port rate in the last interval (per direction, 0..1).",
                          L(direction=direction), util))
    if i.rate_gbps is not None:
        out.append(_s("xtrace_rdma_port_link_rate_bits_per_second", "gauge",
                      "Nominal rate of the RDMA port (ports/N/rate).", L(), i.rate_gbps * 1e9))
    out.append(_s("xtrace_rdma_port_state", "gauge", "1 if the RDMA port is ACTIVE, else 0.", L(),
                  1 if i.active else 0))
    out.append(_s("xtrace_rdma_counter_resets_total", "counter",
                  "Counter resets handled on the RDMA port since the agent started.", L(), d.resets_total))
    return out


def interval_metrics(iv: RdmaInterval, extra: Mapping[str, str]) -> list[Sample]:
    """Every ``xtrace_rdma_`` sample of an interval: :func:`port_metrics` for each port, and in nccl mode
    the device-level hw_counters once per device as
    ``xtrace_rdma_device_hw_counter_total{device,counter}``."""
    out: list[Sample] = []
    seen: set[str] = set()
    for d in iv.ports:
        out += port_metrics(d, extra)
        dev = d.info.device
        if d.device_hw is not None and dev not in seen:
            seen.add(dev)
            for name in sorted(d.device_hw.totals):
                out.append(_s("xtrace_rdma_device_hw_counter_total", "counter",
                              "A device-level RDMA hw_counter, summed since the agent started.",
                              {"device": dev, "counter": name, **extra}, d.device_hw.totals[name]))
    return out


# --------------------------------------------------------------------------------------------- devices


def _ib_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / "class" / "infiniband"


def _check_root(root: str | os.PathLike[str]) -> Path:
    r = Path(root)
    if not r.is_dir():
        raise UsageError(f"sysfs root {str(r)!r} does not exist; give the directory where sysfs is mounted "
                         "(/sys on the host; in the container mount the host's /sys, e.g. at /host/sys)")
    return r


def list_devices(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[str]:
    """RDMA device names under ``<root>/class/infiniband``, sorted; [] if there are none."""
    try:
        return sorted(p.name for p in _ib_dir(root).iterdir() if p.is_dir())
    except OSError:
        return []


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(4096).decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class NetdevLink:
    """A netdev and the RDMA device/port behind it, as ``ibdev2netdev`` shows it."""

    device: str
    port: int
    netdev: str
    up: bool

    def __str__(self) -> str:
        return f"{self.device} port {self.port} ==> {self.netdev} ({'Up' if self.up else 'Down'})"


def netdev_links(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[NetdevLink]:
    """Every netdev with an RDMA device behind it (``<root>/class/net/<if>/device/infiniband/<dev>``),
    sorted by device and port. The port is ``dev_port + 1`` (dev_port missing: 0); up means
    ``operstate`` is ``up``."""
    links: list[NetdevLink] = []
    try:
        nets = sorted((Path(root) / "class" / "net").iterdir())
    except OSError:
        return []
    for nd in nets:
        try:
            devs = sorted(p.name for p in (nd / "device" / "infiniband").iterdir())
        except OSError:
            continue
        try:
            port = int(_read(nd / "dev_port") or 0) + 1
        except (OSError, ValueError):
            port = 1
        try:
            up = _read(nd / "operstate").lower() == "up"
        except OSError:
            up = False
        links += [NetdevLink(dev, port, nd.name, up) for dev in devs]
    return sorted(links, key=lambda x: (x.device, x.port, x.netdev))


def mapping_lines(links: Iterable[NetdevLink]) -> list[str]:
    """``ibdev2netdev``-style lines: ``mlx5_0 port 1 ==> eth2 (Up)``."""
    return [str(x) for x in links]


def devices_for_interface(root: str | os.PathLike[str], interface: str) -> list[str]:
    """The RDMA device(s) behind a netdev (``<root>/class/net/<if>/device/infiniband/``); [] if none."""
    try:
        return sorted(p.name for p in (Path(root) / "class" / "net" / interface / "device" / "infiniband").iterdir())
    except OSError:
        return []


@dataclass(frozen=True)
class Selection:
    """Which devices to read. ``follow_all``: every device, including ones that appear later
    (pass ``devices=None`` to :class:`RdmaReader`); ``why`` says how they were chosen."""

    devices: tuple[str, ...]
    follow_all: bool
    why: str

    @property
    def reader_devices(self) -> tuple[str, ...] | None:
        return None if self.follow_all else self.devices


def _no_devices(root: Path) -> UsageError:
    return UsageError(f"no RDMA devices under {_ib_dir(root)}; check with 'ls /sys/class/infiniband' (or "
                      "'rdma link'), load the RDMA driver (e.g. 'modprobe mlx5_ib', 'modprobe ib_uverbs'), "
                      "and in a container mount the host's /sys (e.g. at /host/sys)")


def select_devices(root: str | os.PathLike[str] = DEFAULT_ROOT, device: str | None = None,
                   interface: str | None = None) -> Selection:
    """Choose the RDMA devices: ``device`` if given; else the device(s) behind ``interface``; else all.

    Raises UsageError if the sysfs root is missing, there are no RDMA devices at all, or ``device``
    is unknown (the message lists the devices found)."""
    r = _check_root(root)
    found = list_devices(r)
    if not found:
        raise _no_devices(r)
    if device:
        if device not in found:
            raise UsageError(f"unknown RDMA device {device!r}; devices found: {', '.join(found)} "
                             f"(see 'ls {_ib_dir(r)}' or 'ibdev2netdev')")
        return Selection((device,), False, f"{device}")
    if interface:
        behind = [d for d in devices_for_interface(r, interface) if d in found]
        if behind:
            return Selection(tuple(behind), False, f"{', '.join(behind)} (behind {interface})")
    return Selection(tuple(found), True, "all RDMA devices" + (f" (none behind {interface})" if interface else ""))


def check_interval(interval_ms: int, lifespan_ms: int | None) -> None:
    """Raise UsageError if ``interval_ms`` is shorter than the hw_counters lifespan: the driver would
    return the same cached values and the interval would show stale zeros."""
    if lifespan_ms is not None and interval_ms < lifespan_ms:
        raise UsageError(f"interval {interval_ms} ms is shorter than the hw_counters lifespan ({lifespan_ms} ms): "
                         f"the counters would repeat cached values; use -t {lifespan_ms} or more, or lower the "
                         "lifespan (echo 10 > /sys/class/infiniband/<dev>/ports/<n>/hw_counters/lifespan)")


# --------------------------------------------------------------------------------------------- reader


class _Gone(Exception):
    """The device vanished while being read."""


def _family(ddir: Path, name: str) -> str:
    """Driver family: from the ``device/driver`` link (``mlx5_core`` -> ``mlx5``), else the name."""
    try:
        drv = os.path.basename(os.readlink(ddir / "device" / "driver"))
    except OSError:
        drv = name
    m = re.match(r"([a-z]+\d*)", drv)
    return m.group(1) if m else drv


@dataclass(frozen=True)
class NicBytes:
    """Bytes an RDMA port counted, cumulative as the NIC keeps them (x4 applied); None if unreadable."""

    device: str
    port: int
    rx_bytes: int | None
    tx_bytes: int | None


class RdmaReader:
    """Reads the counters of the selected RDMA devices and turns consecutive reads into intervals.

    ``devices=None`` follows every device, including ones that appear later. A device that
    disappears is warned about once and skipped; when it returns it is read again, against its
    last reading (a counter that went back counts as a reset). Unreadable or garbage files are
    skipped with one warning per file. ``clock`` (monotonic seconds, for rates) and ``wall``
    (epoch seconds, for ``time``) are injectable. No root needed.

    Raises UsageError if ``root`` does not exist.
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, devices: Sequence[str] | None = None, *,
                 nccl: bool = False, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.root = _check_root(root)
        self.devices = tuple(devices) if devices is not None else None
        self.nccl = nccl
        self._clock = clock
        self._wall = wall
        self._ib = _ib_dir(self.root)
        self._warned: set[str] = set()
        self._seen: set[str] = set()
        self._gone: set[str] = set()
        self._last: dict[tuple[str, int], PortSample] = {}
        self._last_dev: dict[str, dict[str, Reading]] = {}
        self._totals: dict[tuple[str, int], tuple[dict[str, int], dict[str, int]]] = {}
        self._dev_totals: dict[str, dict[str, int]] = {}
        self._resets: dict[tuple[str, int], int] = {}
        self._links: dict[tuple[str, int], str] | None = None
        self._present: frozenset[str] = frozenset()
        self._lifespans: dict[str, int] = {}
        self._seq = 0

    # -- public

    @property
    def lifespans(self) -> dict[str, int]:
        """hw_counters lifespan (ms) by ``dev/port`` or ``dev`` (device level), from the latest read."""
        return dict(self._lifespans)

    @property
    def max_lifespan_ms(self) -> int | None:
        """The longest hw_counters lifespan in the latest read (nccl mode), else None. Reading faster
        than this returns cached values: refuse such an interval (:func:`check_interval`)."""
        return max(self._lifespans.values(), default=None)

    def snapshot(self) -> list[PortSample]:
        """Read every selected, present port now; devices missing are warned about (once)."""
        samples, _dev_hw, _missing = self._read_all()
        return samples

    def nic_bytes(self) -> dict[tuple[str, int], NicBytes]:
        """Cumulative rx/tx bytes each port's NIC counted, by (device, port)."""
        return {(s.info.device, s.info.port): NicBytes(s.info.device, s.info.port, s.rx_bytes, s.tx_bytes)
                for s in self.snapshot()}

    def poll(self) -> RdmaInterval:
        """Read all ports and return the interval since the previous poll. The first poll of a port
        is its baseline (in ``baseline``, no deltas); call poll() once at start, then every interval."""
        self._seq += 1
        now = self._wall()
        samples, dev_hw, missing = self._read_all()
        dev_diffs: dict[str, CounterDiff] = {}
        for dev, readings in dev_hw.items():
            old = self._last_dev.get(dev)
            if old is not None:
                diff = diff_readings(old, readings, self._dev_totals.get(dev))
                self._dev_totals[dev] = dict(diff.totals)
                dev_diffs[dev] = diff
            self._last_dev[dev] = {**(old or {}), **readings}
        ports: list[PortDelta] = []
        baseline: list[PortSample] = []
        for s in samples:
            key = (s.info.device, s.info.port)
            prev = self._last.get(key)
            if prev is None:
                baseline.append(s)
                self._last[key] = s
                continue
            ctot, htot = self._totals.get(key, ({}, {}))
            cdiff = diff_readings(prev.counters, s.counters, ctot)
            hdiff = diff_readings(prev.hw or {}, s.hw, htot) if s.hw is not None else None
            self._totals[key] = (dict(cdiff.totals), dict(hdiff.totals) if hdiff else htot)
            n_reset = len(cdiff.reset) + (len(hdiff.reset) if hdiff else 0)
            self._resets[key] = self._resets.get(key, 0) + n_reset
            for name in cdiff.wrapped + (hdiff.wrapped if hdiff else ()):
                log.debug("%s: %s wrapped", s.info.name, name)
            if n_reset:
                log.info("%s: counter reset: %s", s.info.name,
                         " ".join(cdiff.reset + (hdiff.reset if hdiff else ())))
            ports.append(PortDelta(info=s.info, time=now, elapsed=s.time - prev.time, counters=cdiff, hw=hdiff,
                                   device_hw=dev_diffs.get(s.info.device), resets_total=self._resets[key],
                                   lifespan_ms=s.lifespan_ms))
            # A counter unreadable this time keeps its last value, so it resumes without a jump.
            self._last[key] = PortSample(s.info, s.time, {**prev.counters, **s.counters},
                                         None if s.hw is None else {**(prev.hw or {}), **s.hw}, s.lifespan_ms)
        return RdmaInterval(seq=self._seq, time=now, ports=tuple(ports), baseline=tuple(baseline),
                            missing=tuple(missing))

    # -- reading

    def _targets(self) -> list[str]:
        if self.devices is not None:
            return list(self.devices)
        return sorted(set(list_devices(self.root)) | self._seen)

    def _read_all(self) -> tuple[list[PortSample], dict[str, dict[str, Reading]], list[str]]:
        samples: list[PortSample] = []
        dev_hw: dict[str, dict[str, Reading]] = {}
        missing: list[str] = []
        present: set[str] = set()
        lifespans: dict[str, int] = {}
        targets = self._targets()
        for dev in targets:
            if not (self._ib / dev).is_dir():
                missing.append(dev)
                continue
            present.add(dev)
        if frozenset(present) != self._present or self._links is None:
            links: dict[tuple[str, int], str] = {}
            for x in netdev_links(self.root):
                links.setdefault((x.device, x.port), x.netdev)  # e.g. ib0 before its child ib0.8001
            self._links = links
            self._present = frozenset(present)
        for dev in targets:
            if dev in present:
                try:
                    ports, hw, dev_life = self._read_device(dev)
                except _Gone:
                    missing.append(dev)
                    present.discard(dev)
                    continue
                samples += ports
                if hw is not None:
                    dev_hw[dev] = hw
                if dev_life is not None:
                    lifespans[dev] = dev_life
                for p in ports:
                    if p.lifespan_ms is not None:
                        lifespans[p.info.name] = p.lifespan_ms
        for dev in missing:
            if dev not in self._gone:
                self._gone.add(dev)
                if dev in self._seen:
                    log.warning("RDMA device %s disappeared; continuing with the others and reading it again "
                                "if it returns", dev)
                else:
                    log.warning("RDMA device %s not found under %s; reading it when it appears", dev, self._ib)
        for dev in present:
            if dev in self._gone:
                self._gone.discard(dev)
                if dev in self._seen:
                    log.warning("RDMA device %s is back", dev)
            self._seen.add(dev)
        self._lifespans = lifespans
        return samples, dev_hw, sorted(set(missing))

    def _read_device(self, dev: str) -> tuple[list[PortSample], dict[str, Reading] | None, int | None]:
        ddir = self._ib / dev
        family = _family(ddir, dev)
        try:
            node_type = parse_state(_read(ddir / "node_type"))[1]
        except OSError:
            node_type = ""
        dev_hw: dict[str, Reading] | None = None
        dev_life: int | None = None
        if self.nccl and (ddir / "hw_counters").is_dir():
            dev_hw, dev_life = self._read_hw(ddir, ddir / "hw_counters", family)
        try:
            port_dirs = sorted((p for p in (ddir / "ports").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        except FileNotFoundError:
            if not ddir.is_dir():
                raise _Gone from None
            port_dirs = []
        samples: list[PortSample] = []
        for pdir in port_dirs:
            samples.append(self._read_port(ddir, dev, int(pdir.name), pdir, family, node_type))
        return samples, dev_hw, dev_life

    def _read_port(self, ddir: Path, dev: str, port: int, pdir: Path, family: str, node_type: str) -> PortSample:
        bad: list[tuple[str, str]] = []
        text: dict[str, str] = {}
        for attr in ("state", "phys_state", "rate", "link_layer"):
            try:
                text[attr] = _read(pdir / attr)
            except OSError as e:
                self._gone_check(ddir)
                text[attr] = ""
                if not isinstance(e, FileNotFoundError):
                    bad.append((str(pdir / attr), e.strerror or type(e).__name__))
        sid, state = parse_state(text["state"])
        pid, phys = parse_state(text["phys_state"])
        info = PortInfo(device=dev, port=port, state=state, state_id=sid, phys_state=phys, phys_state_id=pid,
                        rate_gbps=parse_rate(text["rate"]), link_layer=text["link_layer"] or "UNKNOWN",
                        node_type=node_type, netdev=(self._links or {}).get((dev, port)))
        t = self._clock()
        counters = self._read_dir(ddir, pdir / "counters", Source.COUNTERS, family, bad)
        ext = self._read_dir(ddir, pdir / "counters_ext", Source.COUNTERS_EXT, family, bad)
        for name, r in ext.items():
            counters[ext_counter_name(name)] = r  # the 64-bit copy wins
        hw: dict[str, Reading] | None = None
        life: int | None = None
        if self.nccl:
            hw, life = self._read_hw(ddir, pdir / "hw_counters", family, bad)
        self._warn(bad)
        return PortSample(info, t, counters, hw, life)

    def _read_hw(self, ddir: Path, hdir: Path, family: str,
                 bad: list[tuple[str, str]] | None = None) -> tuple[dict[str, Reading], int | None]:
        own = bad is None
        bad = [] if bad is None else bad
        hw = self._read_dir(ddir, hdir, Source.HW_COUNTERS, family, bad, skip=(LIFESPAN,))
        life: int | None = None
        try:
            life = parse_counter(_read(hdir / LIFESPAN))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            bad.append((str(hdir / LIFESPAN), str(e)))
        if own:
            self._warn(bad)
        return hw, life

    def _read_dir(self, ddir: Path, cdir: Path, source: Source, family: str, bad: list[tuple[str, str]],
                  skip: tuple[str, ...] = ()) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        try:
            names = sorted(os.listdir(cdir))
        except FileNotFoundError:
            self._gone_check(ddir)
            return out
        except OSError as e:
            bad.append((str(cdir), e.strerror or str(e)))
            return out
        for name in names:
            if name in skip:
                continue
            path = cdir / name
            try:
                out[name] = Reading(parse_counter(_read(path)), counter_bits(source, name, family))
            except FileNotFoundError:
                self._gone_check(ddir)
            except IsADirectoryError:
                pass
            except OSError as e:
                bad.append((str(path), e.strerror or type(e).__name__))
            except ValueError as e:
                bad.append((str(path), str(e)))
        return out

    def _gone_check(self, ddir: Path) -> None:
        if not ddir.is_dir():
            raise _Gone

    def _warn(self, bad: list[tuple[str, str]]) -> None:
        new = [(p, why) for p, why in bad if p not in self._warned]
        if not new:
            return
        self._warned.update(p for p, _ in new)
        groups: dict[tuple[str, str], list[str]] = {}
        for p, why in new:
            d, _, name = p.rpartition("/")
            groups.setdefault((d, why), []).append(name)
        log.warning("RDMA: skipping unreadable counter files (each reported once): %s",
                    "; ".join(f"{d}/{{{','.join(names)}}}: {why}" for (d, why), names in groups.items()))


def nic_bytes(root: str | os.PathLike[str] = DEFAULT_ROOT,
              devices: Sequence[str] | None = None) -> dict[tuple[str, int], NicBytes]:
    """Cumulative rx/tx bytes the NIC counted per (device, port), x4 applied (for comparing what the
    kernel saw with what the NIC carried). Raises UsageError if ``root`` does not exist."""
    return RdmaReader(root, devices).nic_bytes()
