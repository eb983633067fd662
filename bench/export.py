"""Export benchmark: turning one interval's flows into a push body, against writing text at all.

An Interval of N synthetic flows (10k, 100k: IPv4 TCP/UDP/RoCE v2, a third each, distinct ports,
both directions; RoCE flows carry a dst_qp label) goes through what the agent runs every interval:

* ``SeriesTable.batch`` (flows -> series ids and 4 values each): *cold* on a fresh table (every
  label set built), *warm* on the next interval (labels cached: the steady state);
* ``render_text(with_timestamps=True)`` (the text push body, as the Pusher renders it, plus its
  ``.encode()``);
* ``RemoteWriteEncoder.body`` (protobuf by hand + snappy): *cold* (its (name, value) label pairs
  encoded for the first time), *warm* (pairs cached; each series' labels joined per push); as one
  body and in the Pusher's per-request chunks; snappy's share is timed separately;
* baselines in the same round: ``"".join`` of the same number of prebuilt lines (the text body's own
  lines, split beforehand: the cost of emitting that many lines at all), and one f-string per flow
  formatting its 4 numbers (the cost of turning the numbers into text at all).

Target: 100k flows (400k samples) encoded and queued in < 10% of one core at the default 5 s
interval, i.e. warm batch + body < 0.5 s. % of a core = time / 5 s.
"""

from __future__ import annotations

import gc
import statistics
import sys
import tracemalloc
from dataclasses import dataclass, field

import common
import numpy as np
import profiling
import traffic

from xtrace_catch.export.push import SERIES_PER_REQUEST
from xtrace_catch.export.remote_write import RemoteWriteEncoder, snappy_block
from xtrace_catch.export.series import Batch, MetricsConfig, SeriesTable, render_text
from xtrace_catch.flows.collector import NV, Interval, V
from xtrace_catch.kernel.layout import STATS_FIELDS, TYPE_SLOTS

__all__ = ["NAME", "run", "Params", "FULL", "QUICK", "make_interval"]

NAME = "export"
INTERVAL_S = 5.0
TARGET_CORE_SHARE = 0.10
TARGET_FLOWS = 100_000


@dataclass(frozen=True)
class Params:
    sizes: tuple[tuple[int, int], ...]  # (flows, rounds)


FULL = Params(sizes=((10_000, 5), (100_000, 3)))
QUICK = Params(sizes=((10_000, 2), (100_000, 1)))


def _progress(msg: str) -> None:
    common.progress(NAME, msg)


def make_interval(n: int, seq: int = 1, scale: int = 1) -> Interval:
    """An Interval of `n` tracked flows (traffic.flow_keys), 90% of them active; `scale` grows the
    totals for later seqs."""
    keys = traffic.flow_keys(n)
    rng = np.random.default_rng(1)
    delta = np.zeros((n, NV), dtype=np.uint64)
    delta[:, V["packets"]] = rng.integers(1, 5000, n)
    delta[:, V["bytes"]] = delta[:, V["packets"]] * rng.integers(64, 1500, n).astype(np.uint64)
    totals = delta * np.uint64(3 + scale)
    delta[::10] = 0  # one flow in ten tracked but idle this interval: zero gauges (not written in protobuf)
    active = np.flatnonzero(delta[:, V["packets"]])
    zeros = np.zeros((2, TYPE_SLOTS, NV), dtype=np.uint64)
    return Interval(
        seq=seq, time=1_790_000_000.0 + 5 * seq, elapsed=INTERVAL_S, keys=keys[active], delta=delta[active],
        totals=totals[active], all_keys=keys, all_totals=totals, all_delta=delta,
        stats_delta=dict.fromkeys(STATS_FIELDS, 0), stats_total=dict.fromkeys(STATS_FIELDS, 0),
        overflow_delta=zeros, overflow_total=zeros.copy(), flows_tracked=n, evicted=0, collect_seconds=0.0,
    )


CONFIG = MetricsConfig(interface="xtb0", host_ip="198.51.100.1")


# -- measurement ----------------------------------------------------------------------------------


STEPS = ("batch_cold", "batch_warm", "render_cold", "render_text", "text_encode", "rw_cold", "rw_warm", "rw_chunks",
         "snappy",
         "base_join", "base_fstring")


@dataclass
class SizeResult:
    flows: int
    rounds: int
    samples: int = 0
    text_bytes: int = 0
    rw_bytes: int = 0
    body_bytes: int = 0
    t: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    mem: dict[str, float] = field(default_factory=dict)

    def med(self, step: str) -> float:
        return statistics.median(self.t[step])


def _chunked_bodies(enc: RemoteWriteEncoder, b: Batch) -> int:
    """What the Pusher encodes for one batch: a body per SERIES_PER_REQUEST series (exporter._payload)."""
    total = 0
    for lo in range(0, len(b.ids), SERIES_PER_REQUEST):
        total += len(enc.body(b.part(lo, lo + SERIES_PER_REQUEST, with_health=False)))
    return total


def _measure_size(flows: int, rounds: int, anomalies: list[str]) -> SizeResult:
    _progress(f"{flows:,} flows: building intervals")
    iv1, iv2 = make_interval(flows, seq=1), make_interval(flows, seq=2, scale=2)
    res = SizeResult(flows=flows, rounds=rounds)
    lines: list[str] = []
    nums: list[list[int]] = []
    for r in range(rounds):
        _progress(f"{flows:,} flows: round {r + 1}/{rounds}")
        gc.collect()
        table = SeriesTable(CONFIG)
        t, _ = common.timed(lambda: table.batch(iv1))
        res.t["batch_cold"].append(t)
        t, b = common.timed(lambda: table.batch(iv2))
        res.t["batch_warm"].append(t)
        assert isinstance(b, Batch)
        t, _ = common.timed(lambda: render_text(b, with_timestamps=True, with_meta=False))
        res.t["render_cold"].append(t)
        t, text = common.timed(lambda: render_text(b, with_timestamps=True, with_meta=False))
        res.t["render_text"].append(t)
        assert isinstance(text, str)
        t, body_text = common.timed(text.encode)
        res.t["text_encode"].append(t)
        enc = RemoteWriteEncoder()
        t, _ = common.timed(lambda: enc.body(b))
        res.t["rw_cold"].append(t)
        t, body = common.timed(lambda: enc.body(b))
        res.t["rw_warm"].append(t)
        t, _ = common.timed(lambda: _chunked_bodies(enc, b))
        res.t["rw_chunks"].append(t)
        raw = enc.encode(b)
        t, _ = common.timed(lambda: snappy_block(raw))
        res.t["snappy"].append(t)
        res.samples, res.text_bytes, res.rw_bytes = b.samples, len(body_text), len(raw)  # type: ignore[arg-type]
        res.body_bytes = len(body)  # type: ignore[arg-type]
        if not lines:
            lines.extend(text.splitlines(keepends=True))
            nums.extend(b.values[:, c].tolist() for c in range(4))
        # Baselines: emit as many lines; format 4 numbers per flow.
        t, joined = common.timed(lambda: "".join(lines))
        res.t["base_join"].append(t)
        del joined
        a, b_, c_, d_ = nums
        t, _ = common.timed(lambda: "".join([f"{w} {x} {y} {z}\n" for w, x, y, z in zip(a, b_, c_, d_)]))
        res.t["base_fstring"].append(t)
    if res.samples != 4 * flows:
        anomalies.append(f"{flows:,} flows: the batch holds {res.samples} samples, expected {4 * flows}")
    res.mem = _memory(iv1, iv2, flows)
    return res


def _memory(iv1: Interval, iv2: Interval, flows: int) -> dict[str, float]:
    """Bytes per flow the export keeps between intervals: SeriesTable (flow -> series, label tuples,
    label text) and the remote-write label cache, after two intervals and one encode (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        table = SeriesTable(CONFIG)
        table.batch(iv1)
        b = table.batch(iv2)
        after_table = tracemalloc.get_traced_memory()[0]
        render_text(b, with_timestamps=True, with_meta=False)  # label text: made by batch(), so ~0 here
        after_text = tracemalloc.get_traced_memory()[0]
        enc = RemoteWriteEncoder()
        enc.encode(b)
        gc.collect()
        end = tracemalloc.get_traced_memory()[0]  # the batch (counted with the table) still held
        del b
    finally:
        tracemalloc.stop()
    del table, enc
    return {"table": (after_table - base) / flows, "text": (after_text - after_table) / flows,
            "rw": (end - after_text) / flows, "total": (end - base) / flows}


def _profile(flows: int) -> list[str]:
    iv1, iv2 = make_interval(flows, seq=1), make_interval(flows, seq=2, scale=2)
    table = SeriesTable(CONFIG)
    out = [f"cold `SeriesTable.batch`, {flows:,} flows: " + (p := profiling.cprofile_table(
        lambda: table.batch(iv1), top=8))[0], *p[1:], ""]
    b = table.batch(iv2)
    out += [f"warm `SeriesTable.batch`, {flows:,} flows: " + (p := profiling.cprofile_table(
        lambda: table.batch(iv2), top=6))[0], *p[1:], ""]
    enc = RemoteWriteEncoder()
    enc.encode(b)
    render_text(b, with_timestamps=True, with_meta=False)  # the first render; profile the next
    out += [f"warm `RemoteWriteEncoder.body`, {flows:,} flows: " + (p := profiling.cprofile_table(
        lambda: enc.body(b), top=8))[0], *p[1:], ""]
    out += [f"warm `render_text`, {flows:,} flows: " + (p := profiling.cprofile_table(
        lambda: render_text(b, with_timestamps=True, with_meta=False), top=5))[0], *p[1:]]
    return out


# -- report ----------------------------------------------------------------------------------------


def _report(results: list[SizeResult], profile: list[str], anomalies: list[str]) -> str:
    out = ["## Export encode (per interval)", ""]
    out += [
        "A synthetic Interval of N tracked flows, 90% active (IPv4 TCP/UDP/RoCE v2, distinct ports, both "
        "directions) through "
        "`SeriesTable.batch`, `render_text(with_timestamps=True)` (+ `.encode()`) and `RemoteWriteEncoder.body` "
        "(encode + snappy), with the baselines in the same rounds. "
        "Medians over rounds. samples/s = samples / time; % core = time / 5 s (the default interval). "
        "*Cold* = first sight of the flows (labels built), *warm* = the next interval (steady state).",
        "",
    ]
    for res in results:
        s = res.samples
        out += [f"**{res.flows:,} flows, {s:,} samples**, {res.rounds} rounds "
                f"(text body {res.text_bytes / 1e6:.1f} MB, "
                f"protobuf {res.rw_bytes / 1e6:.1f} MB, snappy body {res.body_bytes / 1e6:.1f} MB):", "",
                "| step | ms | samples/s | % of one core at 5 s |", "|---|---:|---:|---:|"]
        rows = [
            ("SeriesTable.batch, cold (fresh table)", "batch_cold"),
            ("SeriesTable.batch, warm", "batch_warm"),
            ("render_text(with_timestamps=True), first call", "render_cold"),
            ("render_text(with_timestamps=True), warm", "render_text"),
            ("  + .encode() of the text", "text_encode"),
            ("RemoteWriteEncoder.body, first push (label pairs not yet cached)", "rw_cold"),
            ("RemoteWriteEncoder.body, warm", "rw_warm"),
            (f"RemoteWriteEncoder.body per {SERIES_PER_REQUEST:,}-series chunk (as the Pusher sends), warm, all chunks",
             "rw_chunks"),
            ("  of which snappy_block", "snappy"),
            ("baseline: \"\".join of as many prebuilt lines", "base_join"),
            ("baseline: f-string of 4 numbers per flow, joined", "base_fstring"),
        ]
        for label, step in rows:
            t = res.med(step)
            out.append(f"| {label} | {t * 1e3:.1f} | {s / t / 1e6:.2f} M | {t / INTERVAL_S:.1%} |")
        out.append("")
    out += [
        "Per interval (sums of the medians above). Target: "
        f"{TARGET_FLOWS:,} flows encoded and queued in < {TARGET_CORE_SHARE:.0%} of one core at 5 s "
        f"(queueing itself is a deque append; the Pusher encodes {SERIES_PER_REQUEST:,}-series chunks, the same work).",
        "",
        "| flows | path | ms | % of one core | target |", "|---:|---|---:|---:|---|",
    ]
    for res in results:
        paths = [
            ("remote write, steady (warm batch + warm body)", res.med("batch_warm") + res.med("rw_warm"), True),
            ("remote write, steady, as the Pusher chunks it", res.med("batch_warm") + res.med("rw_chunks"), True),
            ("remote write, all flows new (cold batch + cold body)", res.med("batch_cold") + res.med("rw_cold"),
             False),
            ("text import, steady (warm batch + warm render + encode)",
             res.med("batch_warm") + res.med("render_text") + res.med("text_encode"), True),
            ("text import, all flows new (cold batch + cold render + encode)",
             res.med("batch_cold") + res.med("render_cold") + res.med("text_encode"), False),
        ]
        for label, t, steady in paths:
            share = t / INTERVAL_S
            if res.flows == TARGET_FLOWS and steady:
                ok = share < TARGET_CORE_SHARE
                st = common.status(ok)
                if not ok:
                    anomalies.append(f"{res.flows:,} flows, {label}: {share:.1%} of one core at 5 s "
                                     f"(target < {TARGET_CORE_SHARE:.0%})")
            else:
                st = "(info)"
            out.append(f"| {res.flows:,} | {label} | {t * 1e3:.0f} | {share:.1%} | {st} |")
    out += [
        "",
        "Python memory the export keeps per flow (tracemalloc, after two intervals and one encode; information, "
        "on top of the collector's): SeriesTable (flow -> series id, label tuple), its label-text cache "
        "(filled by render_text: text push and /metrics), the remote-write (name, value) pair cache (shared by series).",
        "",
        "| flows | SeriesTable B/flow | label text B/flow | remote-write label pairs B/flow | total B/flow |",
        "|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        m = res.mem
        out.append(f"| {res.flows:,} | {m['table']:.0f} | {m['text']:.0f} | {m['rw']:.0f} | {m['total']:.0f} |")
    out.append("")
    if profile:
        out += ["### Where the time goes", ""] + profile + [""]
    return "\n".join(out)


def run(p: Params, anomalies: list[str]) -> str:
    """Run the export benchmark; returns its markdown section. Pure Python, no root needed."""
    results = [_measure_size(flows, rounds, anomalies) for flows, rounds in p.sizes]
    _progress("profiling")
    profile = _profile(max(f for f, _ in p.sizes))
    return _report(results, profile, anomalies)


if __name__ == "__main__":
    sys.exit(common.main([NAME], __doc__))
