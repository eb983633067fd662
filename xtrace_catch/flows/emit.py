"""Emitter: one interval's flows to the chosen output (text, JSON lines, the live table)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TextIO

from ..kernel.datapath import FlowMapInfo
from ..notify import Notify
from ..settings import Output, Settings
from . import output
from .collector import Interval

if TYPE_CHECKING:
    from .live import BypassView, LiveView


FlowResult = tuple[Interval, "BypassView | None"]


class PushStatus(Protocol):
    """What the output shows of the export (export.health.Export has it; flows never imports export)."""

    def status_line(self) -> str: ...

    def push_summary(self) -> dict[str, object]: ...


class Emitter:
    """Writes intervals as text or JSON lines, or redraws the live table."""

    def __init__(self, settings: Settings, iface: str, host_ip: str, fmap: FlowMapInfo, out: TextIO,
                 notify: Notify | None = None, export: PushStatus | None = None) -> None:
        self.s, self.iface, self.host_ip, self.fmap, self.out = settings, iface, host_ip, fmap, out
        self.export = export
        self.live: LiveView | None = None
        if settings.output is Output.TABLE:
            from rich.console import Console

            from .live import LiveView

            lv = LiveView(Console(file=out))
            if lv.is_terminal:
                self.live = lv
            elif notify is not None:
                notify("stdout is not a terminal: writing text lines instead of the live table")
        self.writer = output.LineWriter(iface, host_ip, as_json=settings.output is Output.JSON)
        dirs = "+".join(d.label for d in settings.direction.directions)
        self.mode_desc = f"{settings.mode.value} {dirs}"

    def emit(self, res: FlowResult) -> None:
        iv, bp = res
        if self.live is not None:
            from .live import ViewState, decode_flows

            rows = decode_flows(iv.keys, iv.delta)
            self.live.update(ViewState(interface=self.iface, mode=self.mode_desc, iv=iv, rows=rows,
                                       capacity=self.fmap.capacity, export=self.export.status_line() if self.export is not None else "", bypass=bp))
            return
        summ = output.summary(iv, self.iface, self.fmap)
        if self.export is not None:
            summ.update(self.export.push_summary())
        for chunk in self.writer.chunks(iv):  # a big interval goes out in slices, never whole in memory
            self.out.write("\n".join(chunk) + "\n")
        tail: list[str] = []
        if self.s.output is Output.JSON:
            if bp is not None:
                tail.append(output.dumps(bp.record(summ["time"], self.iface)))
            tail.append(output.dumps(summ))
        else:
            if bp is not None:
                tail.append(bp.text())
            tail.append(output.summary_text(summ))
        self.out.write("\n".join(tail) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
