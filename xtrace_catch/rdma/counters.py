"""RDMA counter values: sysfs text parsed, widths, and the wrap/reset rule between two readings."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ROOT", "Step", "Source", "Reading", "CounterDiff", "parse_state", "parse_rate", "parse_counter",
    "ext_counter_name", "counter_bits", "counter_step", "diff_readings", "DATA_WORD", "WRAP_WINDOW", "U32",
    "RX_DATA", "TX_DATA", "RX_PACKETS", "TX_PACKETS", "TRAFFIC_COUNTERS", "LINK_ERROR_COUNTERS", "LIFESPAN",
]


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
