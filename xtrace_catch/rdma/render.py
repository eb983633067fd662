"""RDMA records as the contract writes them: JSON records, text lines, health lines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..flows.output import rfc3339
from .records import REQUEST_COUNTERS, PortDelta, health_flags

__all__ = [
    "json_record", "text_line", "health_line", "format_bps", "format_count", "format_percent",
]


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
