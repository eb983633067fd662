"""Collector benchmark: what one collection cycle costs in user space, against the bare map reads.

The real Datapath is loaded with a flow map large enough for N synthetic flows (10k, 100k, 1M),
filled with ``BPF_MAP_UPDATE_BATCH`` (values for every possible CPU). Then, per round, interleaved:

* **bare**: the batch-lookup syscalls alone, reading the whole map with preallocated buffers
  (``libbpf.get().map_lookup_batch`` in a loop, the same batch size as ``BpfMap.read_all``, no
  numpy): the floor any reader pays;
* **read_all**: ``BpfMap.read_all()``, the generic whole-map read (raw per-CPU values, no sum;
  not the agent's path, listed for comparison);
* **counter read**: ``CounterReader.read()``, the collector's own read (keys straight into a kept
  array, CPUs summed per batch);
* **collect**: ``Collector.collect()``, the agent's own code: read, per-CPU sum, match against the
  previous read, deltas, idle check. Three cases: *new* (a fresh Collector: every flow is new),
  *steady* (the next call: no counter changed), *10% changed* (10% of the flows got packets,
  written with an untimed batch update first). Every interval is checked, untimed, against the
  values written: the same flows, totals and deltas, exactly.

The map's CounterReader lives as long as the map, so a fresh Collector reuses its buffers (warmed
by one read before the rounds, as the bare reader's are allocated once).

Targets: a 100k-flow cycle <= 2x bare; 1M flows handled (no crash) and < 3x bare; Python memory
per tracked flow < 1 KiB. Ratios are per round (collect / mean of the round's two bare reads),
median over rounds. The section also profiles a steady and a new 100k-flow collect (per-line wall
time and cProfile) to name the lines that cost.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import tracemalloc
from dataclasses import dataclass, field

import common
import numpy as np
import profiling
import traffic

from xtrace_catch.errors import XtraceError
from xtrace_catch.flows import collector as collector_mod
from xtrace_catch.flows.collector import NV, Collector, Interval, V
from xtrace_catch.kernel import datapath as datapath_mod
from xtrace_catch.kernel import libbpf
from xtrace_catch.kernel import maps as maps_mod
from xtrace_catch.kernel.datapath import PROG_XDP, Datapath, DatapathConfig
from xtrace_catch.kernel.keys import KEY_SIZE, KEY_VOID
from xtrace_catch.kernel.maps import BpfMap, CounterReader

__all__ = ["NAME", "run", "Params", "FULL", "QUICK", "FlowFiller", "BareReader"]

NAME = "collector"
TARGET_RATIO_100K = 2.0
TARGET_RATIO_1M = 3.0
TARGET_BYTES_PER_FLOW = 1024
IDLE_TIMEOUT = 1e9  # nothing is evicted during the benchmark; the idle check still runs
FILL_CHUNK = 65536


@dataclass(frozen=True)
class Params:
    sizes: tuple[tuple[int, int], ...]  # (flows, rounds)
    profile_flows: int                  # profile at this size when a target is missed


FULL = Params(sizes=((10_000, 9), (100_000, 7), (1_000_000, 3)), profile_flows=100_000)
QUICK = Params(sizes=((10_000, 3), (100_000, 3)), profile_flows=100_000)


def _progress(msg: str) -> None:
    common.progress(NAME, msg)


# -- the map --------------------------------------------------------------------------------------


class FlowFiller:
    """Synthetic per-CPU values for `keys`, written with batch updates; `bump` changes some."""

    def __init__(self, m: BpfMap, keys: np.ndarray) -> None:
        self.m = m
        self.keys = keys
        self.words = m.slot // 8
        n = len(keys)
        self.vals = np.zeros((n, m.ncpus, self.words), dtype="<u8")
        i = np.arange(n, dtype=np.uint64)
        for cpu in range(m.ncpus):  # every CPU counted something, differently per flow
            self.vals[:, cpu, V["packets"]] = 1 + (i + cpu) % 7
            self.vals[:, cpu, V["bytes"]] = self.vals[:, cpu, V["packets"]] * (64 + i % 1400)

    def _write(self, idx: np.ndarray) -> None:
        kb = self.keys[idx].tobytes()
        vb = self.vals[idx].tobytes()
        vl = self.m.value_len
        for s in range(0, len(idx), FILL_CHUNK):
            n = min(FILL_CHUNK, len(idx) - s)
            got = self.m.update_batch(kb[s * KEY_SIZE:(s + n) * KEY_SIZE], vb[s * vl:(s + n) * vl], n)
            if got != n:
                raise RuntimeError(f"update_batch wrote {got} of {n} flows")

    def fill(self) -> None:
        self._write(np.arange(len(self.keys)))

    def bump(self, every: int = 10) -> int:
        """One more packet on CPU 0 for every `every`-th flow; returns how many changed."""
        idx = np.arange(0, len(self.keys), every)
        self.vals[idx, 0, V["packets"]] += 1
        self.vals[idx, 0, V["bytes"]] += 100
        self._write(idx)
        return len(idx)


class BareReader:
    """The batch-lookup syscalls alone: preallocated buffers, the batch size BpfMap uses."""

    def __init__(self, m: BpfMap) -> None:
        self.m = m
        self.count = max(64, min(m.info.max_entries, maps_mod._BATCH_BYTES // m.value_len))
        self.kbuf = ctypes.create_string_buffer(self.count * m.info.key_size)
        self.vbuf = ctypes.create_string_buffer(self.count * m.value_len)
        self.tin = ctypes.create_string_buffer(max(m.info.key_size, 8))
        self.tout = ctypes.create_string_buffer(max(m.info.key_size, 8))
        self.lookup = libbpf.get().map_lookup_batch

    def read(self) -> int:
        total, first = 0, True
        for _ in range(1 << 20):  # bounded: far more calls than any map needs
            n, done = self.lookup(self.m.fd, None if first else ctypes.cast(self.tin, ctypes.c_void_p), self.tout,
                                  self.kbuf, self.vbuf, self.count)
            total += n
            if done:
                break
            ctypes.memmove(self.tin, self.tout, len(self.tout))
            first = False
        return total


# -- measurement ----------------------------------------------------------------------------------


VARIANTS = ("new", "steady", "changed")


@dataclass
class SizeResult:
    flows: int
    rounds: int
    max_entries: int
    fill_s: float
    bare: list[float] = field(default_factory=list)      # per round: mean of the two bare reads
    read: list[float] = field(default_factory=list)      # BpfMap.read_all
    counter_read: list[float] = field(default_factory=list)  # CounterReader.read
    collect: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    mem: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def ratios(self, variant: str) -> list[float]:
        return [c / b for c, b in zip(self.collect[variant], self.bare)]


class Expected:
    """What an interval must say, from the values the filler wrote: flows compared in key order."""

    def __init__(self, filler: FlowFiller) -> None:
        self.filler = filler
        raw = filler.keys.view(KEY_VOID).reshape(-1)
        self.order = np.argsort(raw)
        self.keys = raw[self.order]

    def problems(self, iv: Interval, variant: str, bumped: np.ndarray) -> list[str]:
        f = self.filler
        n = len(f.keys)
        totals = f.vals[:, :, :NV].sum(axis=1, dtype=np.uint64)
        delta = {"new": totals, "steady": np.zeros_like(totals), "changed": np.zeros_like(totals)}[variant]
        if variant == "changed":
            delta[bumped, V["packets"]] = 1
            delta[bumped, V["bytes"]] = 100
        active = {"new": n, "steady": 0, "changed": len(bumped)}[variant]
        got = np.ascontiguousarray(iv.all_keys).view(KEY_VOID).reshape(-1)
        o = np.argsort(got)
        out = []
        if not np.array_equal(got[o], self.keys):
            out.append(f"{len(got)} flows exported, not the {n} written")
        elif not np.array_equal(iv.all_totals[o], totals[self.order]):
            out.append("totals differ from the values written")
        elif not np.array_equal(iv.all_delta[o], delta[self.order]):
            out.append("deltas differ from the values written")
        if len(iv.keys) != active or not np.array_equal(iv.delta.sum(axis=0), delta.sum(axis=0)):
            out.append(f"{len(iv.keys)} active flows (expected {active})")
        if iv.flows_tracked != n or iv.evicted:
            out.append(f"{iv.flows_tracked} tracked (expected {n}), {iv.evicted} evicted")
        return out


def _memory(dp: Datapath, flows: int) -> dict[str, float]:
    """Bytes per flow (tracemalloc): what the collector keeps plus the Interval the agent holds
    between cycles, retained after a steady collect, and the peak during that collect; both with
    the map's CounterReader buffers added (allocated before tracing starts, kept for the map's life).
    (RSS cannot isolate this here: the allocator reuses pages freed by earlier rounds; the agent
    benchmark reports the real process's RSS.)"""
    reader_bytes = dp.flows.counter_reader(NV).nbytes
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        c = Collector(dp, idle_timeout=IDLE_TIMEOUT)
        iv = c.collect()
        del iv
        gc.collect()
        tracemalloc.reset_peak()
        iv = c.collect()
        cur, peak = tracemalloc.get_traced_memory()
        del iv, c
    finally:
        tracemalloc.stop()
    return {
        "retained": (cur - base + reader_bytes) / flows,
        "peak": (peak - base + reader_bytes) / flows,
        "reader": reader_bytes / flows,
    }


def _measure_size(flows: int, rounds: int, anomalies: list[str], profile: list[str] | None) -> SizeResult:
    keys = traffic.flow_keys(flows)
    max_flows = flows + flows // 4
    _progress(f"{flows:,} flows: loading the datapath (flow map of {max_flows:,} entries)")
    with Datapath(DatapathConfig(max_flows=max_flows, programs=frozenset({PROG_XDP}))) as dp:
        filler = FlowFiller(dp.flows, keys)
        fill_s, _ = common.timed(filler.fill)
        res = SizeResult(flows=flows, rounds=rounds, max_entries=dp.flows.info.max_entries, fill_s=fill_s)
        expected = Expected(filler)
        bare = BareReader(dp.flows)
        if (got := bare.read()) != flows:
            anomalies.append(f"{flows:,} flows: the bare read returned {got} flows")
        dp.flows.read_all()  # warm: the first read of a fresh map pays page faults, any reader would
        reader = dp.flows.counter_reader(NV)
        reader.read()
        bumped = np.arange(0, flows, 10)
        for r in range(rounds):
            _progress(f"{flows:,} flows: round {r + 1}/{rounds}")
            b1, _ = common.timed(bare.read)
            rd, (k, _v) = common.timed(dp.flows.read_all)  # type: ignore[misc]
            if len(k) != flows:
                anomalies.append(f"{flows:,} flows: read_all returned {len(k)} flows")
            del k, _v
            cr, (k, _v) = common.timed(reader.read)  # type: ignore[misc]
            if len(k) != flows:
                anomalies.append(f"{flows:,} flows: CounterReader.read returned {len(k)} flows")
            del k, _v
            c = Collector(dp, idle_timeout=IDLE_TIMEOUT)
            for variant in VARIANTS:
                if variant == "changed":
                    filler.bump()
                t, iv = common.timed(c.collect)
                res.collect[variant].append(t)
                assert isinstance(iv, Interval)
                anomalies += [f"{flows:,} flows, round {r + 1}, {variant}: {p}"
                              for p in expected.problems(iv, variant, bumped)]
                del iv
            del c
            b2, _ = common.timed(bare.read)
            res.bare.append((b1 + b2) / 2)
            res.read.append(rd)
            res.counter_read.append(cr)
        _progress(f"{flows:,} flows: memory")
        res.mem = _memory(dp, flows)
        if profile is not None:  # always, so the section names the costly lines whatever the verdict
            _progress(f"{flows:,} flows: profiling a steady collect")
            profile += _profile(dp, flows)
    return res


def _profile(dp: Datapath, flows: int) -> list[str]:
    funcs = [Collector.collect, Collector._read, Collector._match, collector_mod.key_hash, CounterReader.read,
             CounterReader._read_batch, CounterReader._reserve, datapath_mod._sum_cpus,
             datapath_mod.Datapath.read_overflow, datapath_mod.Datapath.read_stats]
    what = ("Collector.collect/_read/_match, key_hash, CounterReader.read/_read_batch/_reserve and "
            "Datapath.read_overflow/read_stats/_sum_cpus")
    out: list[str] = []
    for variant in ("steady", "new"):
        cols = [Collector(dp, idle_timeout=IDLE_TIMEOUT) for _ in range(4)]
        if variant == "steady":
            for c in cols:
                c.collect()
        untraced = common.timed(cols[0].collect)[0]
        it = iter(cols[1:])
        times = profiling.line_times(funcs, lambda: next(it).collect(), repeat=3)
        traced = sum(times.values())
        out += [f"**{variant.capitalize()}** collect of {flows:,} flows: per line (line timer over {what}; "
                f"mean of 3 calls, {traced * 1e3:.0f} ms traced, {untraced * 1e3:.0f} ms untraced; share of the "
                "traced total):", ""]
        out += profiling.line_table(times, traced, top=12 if variant == "steady" else 8) + [""]
    c = Collector(dp, idle_timeout=IDLE_TIMEOUT)
    c.collect()
    prof = profiling.cprofile_table(c.collect, top=10)
    return out + ["Steady collect, " + prof[0], *prof[1:]]


# -- report ----------------------------------------------------------------------------------------


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.1f}" if xs else "-"


def _ratio_cell(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})"


def _target_for(flows: int) -> float | None:
    if flows == 1_000_000:
        return TARGET_RATIO_1M
    if flows == 100_000:
        return TARGET_RATIO_100K
    return None


def _report(results: list[SizeResult], profile: list[str], anomalies: list[str]) -> str:
    ncpus = libbpf.get().ncpus
    out = ["## Collector cycle (user space, per interval)", ""]
    out += [
        "The real datapath, its flow map (1.25x the flows; per-CPU hash, "
        f"{ncpus} possible CPUs) filled with synthetic IPv4 TCP/UDP/RoCE v2 flows by batch update. Per round, "
        "interleaved: the bare batch-lookup syscalls (preallocated buffers, BpfMap's batch size, no numpy), "
        "`BpfMap.read_all()` (raw per-CPU values; not the agent's path, for comparison), `CounterReader.read()` (the "
        "collector's read), then `Collector.collect()` on a fresh collector (*new*: all flows new), again "
        "(*steady*: no counter changed), and after an untimed batch update that gave 10% of the flows a packet "
        "(*10% changed*). Every interval is checked against the values written (flows, totals, deltas; exact); "
        "a mismatch is listed under Anomalies. Times are medians over rounds; ratio = collect / bare of the same "
        "round, median (min-max) over rounds. "
        f"Targets: 100k flows <= {TARGET_RATIO_100K:.0f}x bare; 1M flows handled and < {TARGET_RATIO_1M:.0f}x bare.",
        "",
        "| flows | rounds | bare ms | read_all ms | counter read ms | collect | ms | ratio to bare | target |",
        "|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for res in results:
        if res.error:
            out.append(f"| {res.flows:,} | - | - | - | - | - | - | failed: {res.error} | **over** |")
            continue
        target = _target_for(res.flows)
        for variant in VARIANTS:
            ratios = res.ratios(variant)
            if target is None:
                st = "(info)"
            else:
                ok = statistics.median(ratios) <= target if target == TARGET_RATIO_100K \
                    else statistics.median(ratios) < target
                st = common.status(ok)
                if not ok:
                    anomalies.append(f"{res.flows:,} flows, {variant}: collect {statistics.median(ratios):.2f}x bare "
                                     f"(target {target:.0f}x)")
            label = {"new": "new", "steady": "steady", "changed": "10% changed"}[variant]
            first = variant == "new"
            out.append(
                f"| {f'{res.flows:,}' if first else ''} | {res.rounds if first else ''} | "
                f"{_ms(res.bare) if first else ''} | {_ms(res.read) if first else ''} | "
                f"{_ms(res.counter_read) if first else ''} | {label} | "
                f"{_ms(res.collect[variant])} | {_ratio_cell(ratios)} | {st} |"
            )
    out += [
        "",
        "Python memory per tracked flow: the collector's state plus the Interval the agent holds between "
        "cycles, after a steady collect (tracemalloc; numpy and ctypes buffers are traced), and the peak during "
        "that collect; both include the map's CounterReader buffers (keys and sums, grown to the largest read "
        f"and kept with the map, plus one {maps_mod._BATCH_BYTES >> 10} KiB batch chunk, so more per flow on small "
        "maps). RSS cannot isolate "
        "these in this process (the allocator reuses pages freed by earlier rounds): the agent section gives the "
        f"real process's RSS. Target: retained < {TARGET_BYTES_PER_FLOW} B/flow.",
        "",
        "| flows | retained B/flow | target | peak in collect B/flow | of which reader buffers |",
        "|---:|---:|---|---:|---:|",
    ]
    for res in results:
        if res.error or not res.mem:
            continue
        m = res.mem
        ok = m["retained"] < TARGET_BYTES_PER_FLOW
        if not ok:
            anomalies.append(f"{res.flows:,} flows: {m['retained']:.0f} B/flow retained (target < "
                             f"{TARGET_BYTES_PER_FLOW})")
        out.append(f"| {res.flows:,} | {m['retained']:.0f} | {common.status(ok)} | {m['peak']:.0f} | {m['reader']:.0f} |")
    out += ["", "Fill (batch update of every flow, untimed by the ratios): " + ", ".join(
        f"{r.flows:,} in {r.fill_s * 1e3:.0f} ms" for r in results if not r.error) + ".", ""]
    if profile:
        out += ["### Where a collect spends its time", ""] + profile + [""]
    return "\n".join(out)


def run(p: Params, anomalies: list[str]) -> str:
    """Run the collector benchmark; returns its markdown section. Needs root (loads BPF programs)."""
    results: list[SizeResult] = []
    profile: list[str] = []
    for flows, rounds in p.sizes:
        try:
            res = _measure_size(flows, rounds, anomalies, profile if flows == p.profile_flows else None)
        except (XtraceError, MemoryError, OSError, RuntimeError) as exc:  # "1M flows handled": a failure is a result
            res = SizeResult(flows=flows, rounds=rounds, max_entries=0, fill_s=0.0,
                             error=f"{type(exc).__name__}: {exc}")
            anomalies.append(f"{flows:,} flows: {res.error}")
        results.append(res)
        gc.collect()
    return _report(results, profile, anomalies)


if __name__ == "__main__":
    sys.exit(common.main([NAME], __doc__))
