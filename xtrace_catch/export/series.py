"""From intervals to metric series: labels, aggregation, cardinality control, text exposition. Pure.

Series contract (DESIGN.md): per flow label set, counters ``xtrace_network_bytes_total`` and
``xtrace_network_packets_total`` (since start) and gauges ``xtrace_network_flow_bytes`` and
``xtrace_network_flow_packets`` (last interval). Flows whose label sets coincide (they
differ only in something not exported, e.g. VLAN, or were folded by a cardinality option)
are summed into one series: no push ever carries one label set twice.

Label strings are built once per flow and cached; per interval the work is numpy over
series ids. A :class:`Batch` holds numbers plus references to the cached label tuples and
texts (shared, never copied), so buffering during an outage costs a few words per series.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from sys import intern

import numpy as np

from ..flows.collector import Interval, V
from ..kernel.keys import addr_text, key_bytes, key_columns, qp_hex
from ..kernel.layout import Direction, TrafficType
from .sample import Sample

__all__ = [
    "FLOW_METRICS",
    "MetricsConfig",
    "Batch",
    "SeriesTable",
    "escape_label",
    "render_text",
]

# name, type, help, column in the batch's values
FLOW_METRICS = (
    ("xtrace_network_bytes_total", "counter", "Bytes of the flow since the agent started (wire bytes).", 0),
    ("xtrace_network_packets_total", "counter", "Packets of the flow since the agent started.", 1),
    ("xtrace_network_flow_bytes", "gauge", "Bytes of the flow in the last interval.", 2),
    ("xtrace_network_flow_packets", "gauge", "Packets of the flow in the last interval.", 3),
)
LABELS = ("src_ip", "dst_ip", "src_port", "dst_port", "protocol", "traffic_type", "direction",
          "interface", "host_ip", "collect_agg")
EPHEMERAL_MIN = 32768
_PORTED = (TrafficType.TCP, TrafficType.UDP, TrafficType.ROCE_V2)
_ROCE = (TrafficType.ROCE_V1, TrafficType.ROCE_V2)
OTHER = "other"


def escape_label(v: str) -> str:
    """Exposition-format label value escaping: backslash, double quote, newline."""
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True)
class MetricsConfig:
    interface: str
    host_ip: str
    collect_agg: str = "default"
    max_series: int | None = None  # flows exported individually; the rest fold into `other`
    drop_ephemeral_ports: bool = False


@dataclass(frozen=True)
class Batch:
    """One interval's samples, immutable and self-contained: series ids, their 4 values each, and
    their labels (values and exposition text), so the pusher and /metrics, in other threads,
    never read the SeriesTable that made it."""

    seq: int
    ts_ms: int
    ids: np.ndarray  # (S,) int64 series ids
    values: np.ndarray  # (S, 4) uint64: bytes_total, packets_total, flow_bytes, flow_packets
    labels: tuple[tuple[str, ...], ...] = ()  # label values of each series (LABELS [+ dst_qp])
    texts: tuple[str, ...] = ()  # the same as exposition text, `k="v",...`
    health: tuple[Sample, ...] = ()  # the agent's own samples

    def __post_init__(self) -> None:
        for a in (self.ids, self.values):
            a.flags.writeable = False

    @property
    def samples(self) -> int:
        return int(self.ids.shape[0]) * len(FLOW_METRICS) + len(self.health)

    def with_health(self, samples: Iterable[Sample]) -> Batch:
        """This batch with more health samples."""
        return replace(self, health=(*self.health, *samples))

    def part(self, lo: int, hi: int, with_health: bool) -> Batch:
        """Series lo..hi (one request's worth), with or without the health samples."""
        return Batch(seq=self.seq, ts_ms=self.ts_ms, ids=self.ids[lo:hi], values=self.values[lo:hi],
                     labels=self.labels[lo:hi], texts=self.texts[lo:hi], health=self.health if with_health else ())


class SeriesTable:
    """Maps flows to label sets and label sets to series ids; keeps label text per series.

    One owner: the thread that calls :meth:`batch` (the interval worker). Everything another
    thread needs travels in the immutable Batch, so the table is never read, written or pruned
    from two threads."""

    def __init__(self, cfg: MetricsConfig) -> None:
        self.cfg = cfg
        self._flow_series: dict[bytes, int] = {}  # flow key -> series id
        self._ids: dict[tuple[str, ...], int] = {}  # label values -> series id
        self.labels: dict[int, tuple[str, ...]] = {}  # series id -> label values
        self._text: dict[int, str] = {}  # series id -> rendered `k="v",...`
        self._last_seq: dict[int, int] = {}
        self._selected: set[bytes] = set()  # flows exported individually (sticky under max_series)
        self._other_acc: dict[int, np.ndarray] = {}  # `other` series id -> accumulated totals
        self._next = 0

    def _series_id(self, values: tuple[str, ...]) -> int:
        sid = self._ids.get(values)
        if sid is None:
            sid = self._next
            self._next += 1
            self._ids[values] = sid
            self.labels[sid] = values
        return sid

    def _flow_labels(self, keys: np.ndarray) -> list[tuple[str, ...]]:
        """Label values of each flow key, from columns (one numpy call per field)."""
        if not len(keys):
            return []
        src, dst, cols = key_columns(keys, "eth_proto", "traffic_type", "src_port", "dst_port", "protocol",
                                     "direction", "dst_qp")
        const = (self.cfg.interface, self.cfg.host_ip, self.cfg.collect_agg)
        drop = self.cfg.drop_ephemeral_ports
        out = []
        for s, d, ep, t, sport, dport, proto, di, qp in zip(src, dst, *cols):
            tt = TrafficType.of(t)
            # Interned: flows share ports and protocols, and every series keeps its strings.
            sp, dp = intern(str(sport)), intern(str(dport))
            if drop and tt in _PORTED:
                # Keep the service side; an ephemeral client port says nothing and costs a series each.
                if sport >= EPHEMERAL_MIN or (sport > dport and sport >= 1024):
                    sp = "ephemeral"
                elif dport >= EPHEMERAL_MIN or (dport > sport and dport >= 1024):
                    dp = "ephemeral"
            vals = (addr_text(s, ep), addr_text(d, ep), sp, dp, intern(str(proto)), tt.json_name,
                    Direction.of(di).label, *const)
            if tt in _ROCE:
                vals = (*vals, intern(qp_hex(qp)))
            out.append(vals)
        return out

    def _other_labels(self, key: np.void) -> tuple[str, ...]:
        tt = TrafficType.of(int(key["traffic_type"]))
        return (OTHER, OTHER, OTHER, OTHER, OTHER, tt.json_name, Direction.of(int(key["direction"])).label,
                self.cfg.interface, self.cfg.host_ip, self.cfg.collect_agg)

    def label_text(self, sid: int) -> str:
        t = self._text.get(sid)
        if t is None:
            vals = self.labels[sid]
            names = LABELS + (("dst_qp",) if len(vals) > len(LABELS) else ())
            t = ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, vals))
            self._text[sid] = t
        return t

    def batch(self, iv: Interval, health: Iterable[Sample] = ()) -> Batch:
        """The interval's flow samples, aggregated per label set, with their labels; then
        forgets the label sets this interval did not use."""
        keys, totals, delta = iv.all_keys, iv.all_totals, iv.all_delta
        n = len(keys)
        kl = key_bytes(keys)
        cap = self.cfg.max_series
        if cap is not None:
            self._selected &= set(kl)
            if len(self._selected) < cap:
                # A free slot goes only to a flow whose whole history is in this interval: one
                # already counted in `other` (or in an earlier series of its own, before an
                # eviction) would otherwise be counted twice, and `other` cannot give it back.
                fresh = ((totals[:, V["bytes"]] == delta[:, V["bytes"]])
                         & (totals[:, V["packets"]] == delta[:, V["packets"]])) if n else []
                order = np.argsort(-totals[:, V["bytes"]].astype(np.float64), kind="stable") if n else []
                for i in order:
                    if len(self._selected) >= cap:
                        break
                    if fresh[i]:
                        self._selected.add(kl[i])
        ids = np.empty(n, dtype=np.int64)
        is_other = np.zeros(n, dtype=bool)
        fs = self._flow_series
        miss: list[int] = []
        for i in range(n):
            kb = kl[i]
            if cap is not None and kb not in self._selected:
                ids[i] = self._series_id(self._other_labels(keys[i]))
                is_other[i] = True
                continue
            sid = fs.get(kb)
            if sid is None:
                miss.append(i)
            else:
                ids[i] = sid
        for lo in range(0, len(miss), 1024):  # new flows' labels from columns, a slice at a time
            part = miss[lo:lo + 1024]
            for i, vals in zip(part, self._flow_labels(keys[part])):
                ids[i] = fs[kl[i]] = self._series_id(vals)
        cols = np.stack([totals[:, V["bytes"]], totals[:, V["packets"]], delta[:, V["bytes"]],
                         delta[:, V["packets"]]], axis=1).astype(np.uint64) if n else np.zeros((0, 4), np.uint64)
        # `other` counters accumulate the deltas of whatever is folded, so they only grow.
        if is_other.any():
            for sid in np.unique(ids[is_other]):
                m = ids == sid
                acc = self._other_acc.setdefault(int(sid), np.zeros(2, dtype=np.uint64))
                acc += cols[m][:, 2:4].sum(axis=0, dtype=np.uint64)
                cols[m, 0:2] = 0
                first = np.flatnonzero(m)[0]
                cols[first, 0:2] = acc
        # Packets that found the kernel map full: one series per type and direction, so totals add up.
        ot, od = iv.overflow_total, iv.overflow_delta
        for d in range(ot.shape[0]):
            for t in range(ot.shape[1]):
                if ot[d, t, V["packets"]]:
                    tt = TrafficType.of(t)
                    sid = self._series_id(("overflow",) * 5 + (tt.json_name, Direction(d).label, self.cfg.interface,
                                                             self.cfg.host_ip, self.cfg.collect_agg))
                    ids = np.append(ids, sid)
                    row = np.array([[ot[d, t, V["bytes"]], ot[d, t, V["packets"]], od[d, t, V["bytes"]],
                                     od[d, t, V["packets"]]]], dtype=np.uint64)
                    cols = np.concatenate([cols, row])
        n = len(ids)
        uniq, inv = np.unique(ids, return_inverse=True) if n else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        agg = np.zeros((len(uniq), 4), dtype=np.uint64)
        np.add.at(agg, inv, cols)
        sids = uniq.tolist()
        self._last_seq.update(dict.fromkeys(sids, iv.seq))
        # Flows gone from the kernel map no longer need their flow->series entry.
        if len(fs) > 2 * max(n, 1024):
            live_keys = set(kl)
            for k in [k for k in fs if k not in live_keys]:
                del fs[k]
        labels = self.labels
        batch = Batch(seq=iv.seq, ts_ms=int(iv.time * 1000), ids=uniq.astype(np.int64), values=agg,
                      labels=tuple(labels[s] for s in sids), texts=tuple(self.label_text(s) for s in sids),
                      health=tuple(health))
        self._forget(iv.seq)
        return batch

    def _forget(self, seq: int) -> None:
        """Forget label sets unused in interval `seq` (every tracked flow is in each interval, so
        these are flows gone from the kernel map); `other` series keep their accumulated totals."""
        stale = [sid for sid, last in self._last_seq.items() if last < seq and sid not in self._other_acc]
        for sid in stale:
            del self._last_seq[sid]
            vals = self.labels.pop(sid)
            self._ids.pop(vals, None)
            self._text.pop(sid, None)
        if stale:
            dead = set(stale)
            for k in [k for k, s in self._flow_series.items() if s in dead]:
                del self._flow_series[k]

    def __len__(self) -> int:
        return len(self.labels)


def render_text(batch: Batch, with_timestamps: bool, with_meta: bool) -> str:
    """Prometheus exposition text of a batch (+ its health samples).

    Push (VictoriaMetrics import) uses millisecond timestamps; /metrics uses none plus
    HELP/TYPE lines."""
    ts = f" {batch.ts_ms}" if with_timestamps else ""
    out: list[str] = []
    texts = batch.texts
    for name, mtype, help_, col in FLOW_METRICS:
        if with_meta:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {mtype}\n")
        vals = batch.values[:, col].tolist()
        out.append("".join(f"{name}{{{t}}} {v}{ts}\n" for t, v in zip(texts, vals)))
    seen: set[str] = set()
    for name, mtype, help_, labels, value in batch.health:
        if with_meta and name not in seen:
            seen.add(name)
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {mtype}\n")
        lab = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{lab}}} {_num(value)}{ts}\n")
    return "".join(out)


def _num(v: float) -> str:
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))
