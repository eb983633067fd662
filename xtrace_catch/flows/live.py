"""`--output table`: a top-like view redrawn every interval (rich). Falls back to text lines when
stdout is not a terminal. `render()` is pure, so tests compare its exact output at a fixed width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..kernel.keys import addr_text, endpoint_text, key_columns, qp_hex
from ..kernel.layout import Direction, TrafficType
from .collector import Interval, V

__all__ = ["BypassView", "FlowRow", "decode_flows", "ViewState", "render", "LiveView", "rate", "TYPE_STYLE"]

TYPE_STYLE = {
    TrafficType.TCP: "cyan", TrafficType.UDP: "blue", TrafficType.ICMP: "yellow", TrafficType.ROCE_V2: "magenta",
    TrafficType.ROCE_V1: "bright_magenta", TrafficType.IPOIB: "green", TrafficType.OTHER: "white",
}
HEADER_LINES = 5


class BypassView(Protocol):
    """What the flow output shows of the kernel-bypass comparison (rdma.bypass.BypassPort has it;
    rdma imports flows, never the other way)."""

    device: str
    port: int
    bypass: Mapping[Direction, int]  # NIC bytes the kernel did not see, this interval

    def record(self, time: str, interface: str) -> dict[str, object]: ...

    def text(self) -> str: ...


@dataclass(frozen=True)
class FlowRow:
    """One flow of the table, decoded."""

    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    traffic_type: TrafficType
    direction: Direction
    eth_proto: int
    dst_qp: int
    delta: tuple[int, ...]

    def d(self, name: str) -> int:
        return self.delta[V[name]]

    @property
    def is_roce(self) -> bool:
        return self.traffic_type in (TrafficType.ROCE_V1, TrafficType.ROCE_V2)


def decode_flows(keys: np.ndarray, delta: np.ndarray) -> list[FlowRow]:
    """FLOW_KEY records plus their counter rows -> FlowRows, in the same order."""
    if not len(keys):
        return []
    src, dst, cols = key_columns(keys, "eth_proto", "src_port", "dst_port", "traffic_type", "direction", "dst_qp")
    return [
        FlowRow(src_ip=addr_text(s, ep), dst_ip=addr_text(d, ep), src_port=sp, dst_port=dp,
                traffic_type=TrafficType.of(tt), direction=Direction.of(di), eth_proto=ep, dst_qp=qp,
                delta=tuple(dl))
        for s, d, ep, sp, dp, tt, di, qp, dl in zip(src, dst, *cols, delta.tolist())
    ]


def rate(value: float, unit: str = "") -> str:
    """A compact rate: 950, 12.3k, 4.56M, 1.23G (+unit)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            v = value / scale
            return f"{v:.3g}{suffix}{unit}" if v < 100 else f"{v:.0f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


@dataclass
class ViewState:
    """What one frame shows."""

    interface: str
    mode: str  # e.g. "tc ingress+egress"
    iv: Interval
    rows: list[FlowRow]
    capacity: int
    export: str = ""  # e.g. "push 12 ok / 0 failed, buffer 0"
    bypass: BypassView | None = None
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def _header(st: ViewState) -> list[Text]:
    iv = st.iv
    secs = max(iv.elapsed, 1e-9)
    pk = iv.packets
    by = iv.bytes
    by_type: dict[TrafficType, int] = {}
    by_dir = {d: 0 for d in Direction}
    for r in st.rows:
        by_type[r.traffic_type] = by_type.get(r.traffic_type, 0) + r.d("bytes")
        by_dir[r.direction] += r.d("bytes")
    s = iv.stats_delta
    lines = [
        Text.assemble(("xtrace-catch", "bold"), f"  {st.interface}  {st.mode}  every {iv.elapsed:.1f}s  "
                      f"interval {iv.seq}  {st.now.strftime('%H:%M:%S')}Z"),
        Text(f"flows {len(st.rows)} (tracked {iv.flows_tracked}/{st.capacity})  total {rate(by * 8 / secs, 'bit/s')}"
             f" {rate(pk / secs, 'pkt/s')}"),
    ]
    t = Text("by type:")
    for tt, b in sorted(by_type.items(), key=lambda kv: -kv[1]):
        t.append(" ")
        t.append(tt.short, style=TYPE_STYLE[tt])
        t.append(f" {rate(b * 8 / secs)}")
    if not by_type:
        t.append(" -")
    lines.append(t)
    health = (f"in {rate(by_dir[Direction.INGRESS] * 8 / secs)}  out {rate(by_dir[Direction.EGRESS] * 8 / secs)}  "
              f"overflowed {s['overflowed']}  truncated {s['truncated']}  filtered {s['filtered']}")
    h = Text(health)
    if s["overflowed"]:
        h.append("  MAP FULL", style="bold red")
    if st.export:
        h.append(f"  {st.export}")
    lines.append(h)
    if st.bypass is not None:
        b = st.bypass
        lines.append(Text(f"RDMA {b.device}/{b.port} bypassed kernel: "
                          f"in {rate(b.bypass[Direction.INGRESS] * 8 / secs, 'bit/s')}  "
                          f"out {rate(b.bypass[Direction.EGRESS] * 8 / secs, 'bit/s')}"))
    else:
        lines.append(Text("RDMA counters: none for this interface (hardware RoCE is invisible here)", style="dim"))
    for line in lines:  # one screen line each, whatever the width: the row budget depends on it
        line.no_wrap = True
        line.overflow = "ellipsis"
    return lines


def render(st: ViewState, height: int = 24) -> Group:
    """One frame: the header and as many flows as fit in `height` lines, largest first."""
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), expand=True,
                  header_style="bold")
    table.add_column("FLOW", ratio=1, no_wrap=True, overflow="ellipsis", min_width=20)
    table.add_column("TYPE", no_wrap=True, width=6)
    table.add_column("DIR", no_wrap=True, width=3)
    table.add_column("QP", no_wrap=True, justify="right", width=8)  # 0x and 6 hex digits
    table.add_column("BIT/S", no_wrap=True, justify="right", width=6)
    table.add_column("PKT/S", no_wrap=True, justify="right", width=6)
    table.add_column("ECN", no_wrap=True, justify="right", width=4)
    table.add_column("CNP", no_wrap=True, justify="right", width=4)
    secs = max(st.iv.elapsed, 1e-9)
    room = max(1, height - HEADER_LINES - 2)
    for r in st.rows[:room]:
        flow = f"{endpoint_text(r.src_ip, r.src_port)}>{endpoint_text(r.dst_ip, r.dst_port)}"
        if not r.src_ip:
            flow = f"ethertype {r.eth_proto:#06x}"
        table.add_row(
            flow, Text(r.traffic_type.short, style=TYPE_STYLE[r.traffic_type]),
            "in" if r.direction is Direction.INGRESS else "out",
            qp_hex(r.dst_qp) if r.is_roce else "-",
            rate(r.d("bytes") * 8 / secs), rate(r.d("packets") / secs),
            str(r.d("ecn_ce")) if r.d("ecn_ce") else "-", str(r.d("cnp")) if r.d("cnp") else "-",
        )
    more = len(st.rows) - room
    parts: list[Text | Table] = [*_header(st), table]
    if more > 0:
        parts.append(Text(f"... {more} more flows", style="dim"))
    return Group(*parts)


class LiveView:
    """Redraws the view in place every interval; resizes follow the terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def update(self, st: ViewState) -> None:
        frame = render(st, height=self.console.size.height)
        if self._live is None:
            self._live = Live(frame, console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(frame, refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

