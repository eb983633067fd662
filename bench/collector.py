"""Collector benchmark: what one collection cycle costs in user space, against the bare map reads.

The real Datapath is loaded with a flow map large enough for N synthetic flows (10k, 100k, 1M),
filled with ``BPF_MAP_UPDATE_BATCH`` (values for every possible CPU). Then, per round, interleaved:

* **bare**: the batch-lookup syscalls alone, reading the whole map with preallocated buffers
  (``_libbpf.get().map_lookup_batch`` in a loop, the same batch size as ``BpfMap.read_all``, no
  numpy): the floor any reader pays;
* **read**: ``Datapath.read_flows()`` (``BpfMap.read_all`` plus the per-CPU sum);
* **collect**: ``Collector.collect()``, the agent's own code: read, per-CPU sum, match against the
  previous read, deltas, idle check. Three cases: *new* (a fresh Collector: every flow is new),
  *steady* (the next call: no counter changed), *10% changed* (10% of the flows got packets,
  written with an untimed batch update first);
* **prototype**: the same three on ``ProtoCollector`` below, the changes this benchmark proposes
  (bench-only; xtrace_catch is not touched), checked to give the same intervals.

Targets: a 100k-flow cycle <= 2x bare; 1M flows handled (no crash) and < 3x bare; Python memory
per tracked flow < 1 KiB. Ratios are per round (collect / mean of the round's two bare reads),
median over rounds. When a target is missed, the section profiles a steady 100k-flow collect
(per-line wall time and cProfile) to name the lines that cost.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import frames
import profiling
from xtrace_catch import _libbpf
from xtrace_catch import datapath as datapath_mod
from xtrace_catch import maps as maps_mod
from xtrace_catch.collector import NV, V, Collector, Interval
from xtrace_catch.datapath import PROG_XDP, Datapath, DatapathConfig
from xtrace_catch.errors import XtraceError
from xtrace_catch.layout import FLOW_KEY, STATS_FIELDS
from xtrace_catch.maps import BpfMap

__all__ = ["NAME", "run", "Params", "FULL", "QUICK", "ProtoCollector"]

NAME = "collector"
TARGET_RATIO_100K = 2.0
TARGET_RATIO_1M = 3.0
TARGET_BYTES_PER_FLOW = 1024
IDLE_TIMEOUT = 1e9  # nothing is evicted during the benchmark; the idle check still runs
FILL_CHUNK = 65536
KEY_SIZE = FLOW_KEY.itemsize


@dataclass(frozen=True)
class Params:
    sizes: tuple[tuple[int, int], ...]  # (flows, rounds)
    profile_flows: int                  # profile at this size when a target is missed


FULL = Params(sizes=((10_000, 9), (100_000, 7), (1_000_000, 3)), profile_flows=100_000)
QUICK = Params(sizes=((10_000, 3), (100_000, 3)), profile_flows=100_000)


def _progress(msg: str) -> None:
    print(f"[{NAME}] {msg}", file=sys.stderr, flush=True)


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
        self.lookup = _libbpf.get().map_lookup_batch

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


# -- the prototype ----------------------------------------------------------------------------------


class ChunkReader:
    """Prototype read: the kernel writes keys straight into one preallocated key array and values
    into one reused chunk buffer; CPUs are summed chunk by chunk into a preallocated (capacity, NV)
    array. No fresh pages per interval, no ``.raw`` copies, no concatenate, and the (n, ncpus)
    per-CPU array never exists for the whole map (it grows with the CPU count)."""

    def __init__(self, m: BpfMap) -> None:
        self.m = m
        self.lookup = _libbpf.get().map_lookup_batch
        self.count = max(64, min(m.info.max_entries, maps_mod._BATCH_BYTES // m.value_len))
        cap = m.info.max_entries + self.count  # a call may write up to `count` past what is read
        self.keys = np.zeros(cap, dtype=f"S{m.info.key_size}")
        self.sums = np.zeros((m.info.max_entries, NV), dtype=np.uint64)
        self.chunk = np.zeros(self.count * m.value_len, dtype=np.uint8)
        self.tin = ctypes.create_string_buffer(max(m.info.key_size, 8))
        self.tout = ctypes.create_string_buffer(max(m.info.key_size, 8))

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys S48, sums (n, NV) u64): views into reused buffers, valid until the next read."""
        m, got, first = self.m, 0, True
        words = m.slot // 8
        kaddr, caddr = self.keys.ctypes.data, self.chunk.ctypes.data
        for _ in range(1 << 20):
            n, done = self.lookup(m.fd, None if first else ctypes.cast(self.tin, ctypes.c_void_p), self.tout,
                                  ctypes.c_void_p(kaddr + got * m.info.key_size), ctypes.c_void_p(caddr), self.count)
            if n:
                per_cpu = self.chunk[: n * m.value_len].view("<u8").reshape(n, m.ncpus, words)[:, :, :NV]
                np.add.reduce(per_cpu, axis=1, out=self.sums[got:got + n])
                got += n
            if done:
                break
            ctypes.memmove(self.tin, self.tout, len(self.tout))
            first = False
        return self.keys[:got], self.sums[:got]


_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53], dtype=np.uint64)


def key_hash(ks: np.ndarray) -> np.ndarray:
    """A 64-bit hash per 48-byte key, vectorised: per 8-byte word, xor it in, multiply by an odd
    constant, fold the high half down (multiply-xorshift, so words do not cancel each other out).
    Sorting these is a u64 sort instead of a 48-byte string sort."""
    w = ks.view("<u8").reshape(-1, KEY_SIZE // 8)
    h = np.zeros(len(w), dtype=np.uint64)
    for j in range(w.shape[1]):
        h ^= w[:, j]
        h *= _MIX[j]
        h ^= h >> np.uint64(32)
    return h


class ProtoCollector(Collector):
    """Collector.collect with three changes (everything else, eviction included, is the same code):

    1. the read is ChunkReader (no copies, CPUs summed per chunk into a reused array);
    2. flows are ordered and matched by a 64-bit key hash (u64 argsort and searchsorted) instead
       of the 48-byte keys; a match is still confirmed on the whole key. Distinct keys with equal
       hashes are counted in ``hash_collisions`` (a real version falls back to the byte sort then);
    3. when nothing was evicted the kept state and the Interval's all_* arrays are the computed
       arrays themselves, not boolean-indexed copies;
    4. the active flows' keys are picked from the 48-byte string view, then viewed as FLOW_KEY
       (fancy indexing the structured FLOW_KEY view is several times slower).

    One ChunkReader lives as long as the agent; pass it in to share it between collectors.
    """

    def __init__(self, source: Datapath, reader: ChunkReader | None = None, **kw: object) -> None:
        super().__init__(source, **kw)  # type: ignore[arg-type]
        self.reader = reader or ChunkReader(source.flows)
        self._hash = np.empty(0, dtype=np.uint64)
        self.hash_collisions = 0

    def collect(self) -> Interval:  # noqa: C901 (a copy of Collector.collect, kept whole to compare)
        t0 = self._clock.monotonic()
        ks_view, kv_view = self.reader.read()
        stats = np.array(self.source.read_stats().tolist(), dtype=np.uint64)
        ovf = self.source.read_overflow()
        ovf_u = np.ascontiguousarray(ovf).view("<u8").reshape(ovf.shape[0], ovf.shape[1], NV)
        now = self._clock.monotonic()

        h = key_hash(ks_view)
        order = np.argsort(h)
        h = h[order]
        if len(h) > 1 and bool((h[1:] == h[:-1]).any()):
            self.hash_collisions += 1
        ks, kv = ks_view[order], kv_view[order]

        n_prev = len(self._keys)
        if n_prev:
            pos = np.searchsorted(self._hash, h)
            pos_c = np.minimum(pos, n_prev - 1)
            found = self._keys[pos_c] == ks
        else:
            pos_c = np.zeros(len(ks), dtype=np.intp)
            found = np.zeros(len(ks), dtype=bool)
        all_found = bool(found.all())
        if all_found:
            prev_k, prev_t, last_active = self._kvals[pos_c], self._totals[pos_c], self._last_active[pos_c]
        else:
            prev_k = np.zeros_like(kv)
            prev_t = np.zeros_like(kv)
            last_active = np.full(len(ks), now)
            prev_k[found] = self._kvals[pos_c[found]]
            prev_t[found] = self._totals[pos_c[found]]
            last_active[found] = self._last_active[pos_c[found]]

        if self._retired:
            for i in np.flatnonzero(~found):
                old = self._retired.pop(ks[i].tobytes().ljust(KEY_SIZE, b"\0"), None)
                if old is not None:
                    prev_t[i] = old

        delta = np.where(kv >= prev_k, kv - prev_k, kv)
        changed = delta[:, V["packets"]] > 0
        last_active[changed] = now

        evicted = 0
        idle = np.flatnonzero(~changed & (now - last_active >= self.idle_timeout))
        keep = np.ones(len(ks), dtype=bool)
        for i in idle:
            kb = ks[i].tobytes().ljust(KEY_SIZE, b"\0")
            final = self.source.take_flow(kb)
            if final is not None:
                fu = final.astype(np.uint64, copy=False).reshape(NV)
                extra = np.where(fu >= kv[i], fu - kv[i], 0).astype(np.uint64)
                if extra[V["packets"]]:
                    delta[i] += extra
                    changed[i] = True
            keep[i] = False
            evicted += 1
            self._retire(kb, prev_t[i] + delta[i])

        totals = prev_t + delta
        if evicted:
            self._keys, self._kvals, self._totals = ks[keep], kv[keep], totals[keep]
            self._last_active, self._hash = last_active[keep], h[keep]
        else:
            self._keys, self._kvals, self._totals, self._last_active, self._hash = ks, kv, totals, last_active, h
        self.evicted_total += evicted

        stats_delta = stats - self._stats_prev
        self._stats_prev = stats
        ovf_delta = ovf_u - (self._ovf_prev if self._ovf_prev is not None else 0)
        self._ovf_prev = ovf_u.copy()

        act = np.flatnonzero(changed)
        act = act[np.argsort(-delta[act, V["bytes"]].astype(np.int64), kind="stable")]
        rec_keys = ks.view(FLOW_KEY) if len(ks) else np.empty(0, dtype=FLOW_KEY)
        if evicted:
            export = keep | changed
            all_keys, all_totals, all_delta = rec_keys[export], totals[export], delta[export]
        else:
            all_keys, all_totals, all_delta = rec_keys, totals, delta

        self._seq += 1
        elapsed = now - self._last_time
        self._last_time = now
        return Interval(
            seq=self._seq, time=time.time(), elapsed=elapsed,
            keys=ks[act].view(FLOW_KEY), delta=delta[act], totals=totals[act],
            all_keys=all_keys, all_totals=all_totals, all_delta=all_delta,
            stats_delta=dict(zip(STATS_FIELDS, (int(x) for x in stats_delta))),
            stats_total=dict(zip(STATS_FIELDS, (int(x) for x in stats))),
            overflow_delta=ovf_delta, overflow_total=ovf_u.copy(),
            flows_tracked=int(keep.sum()), evicted=evicted,
            collect_seconds=self._clock.monotonic() - t0,
        )


def _same_interval(a: Interval, b: Interval) -> bool:
    """The same active flows with the same deltas and totals, whatever the order."""
    def canon(keys: np.ndarray, *arrs: np.ndarray) -> tuple[np.ndarray, ...]:
        raw = np.ascontiguousarray(keys).view(f"S{KEY_SIZE}").reshape(-1)
        o = np.argsort(raw, kind="stable")
        return (raw[o], *(x[o] for x in arrs))
    ca = canon(a.keys, a.delta, a.totals) + canon(a.all_keys, a.all_delta, a.all_totals)
    cb = canon(b.keys, b.delta, b.totals) + canon(b.all_keys, b.all_delta, b.all_totals)
    return all(np.array_equal(x, y) for x, y in zip(ca, cb)) and a.flows_tracked == b.flows_tracked


# -- measurement ----------------------------------------------------------------------------------


VARIANTS = ("new", "steady", "changed")


@dataclass
class SizeResult:
    flows: int
    rounds: int
    max_entries: int
    fill_s: float
    bare: list[float] = field(default_factory=list)      # per round: mean of the two bare reads
    read: list[float] = field(default_factory=list)      # Datapath.read_flows
    collect: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    proto: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    mem: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def ratios(self, which: dict[str, list[float]], variant: str) -> list[float]:
        return [c / b for c, b in zip(which[variant], self.bare)]


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def _check(iv: Interval, variant: str, flows: int, changed: int, where: str, anomalies: list[str]) -> None:
    want = {"new": flows, "steady": 0, "changed": changed}[variant]
    if len(iv.keys) != want or iv.flows_tracked != flows or iv.evicted:
        anomalies.append(f"{where} {variant}: {len(iv.keys)} active (expected {want}), {iv.flows_tracked} tracked "
                         f"(expected {flows}), {iv.evicted} evicted")


def _memory(dp: Datapath, make: Callable[[], Collector], flows: int) -> dict[str, float]:
    """Bytes per flow (tracemalloc): what the collector keeps plus the Interval the agent holds
    between cycles, retained after a steady collect, and the peak during that collect. (RSS cannot
    isolate this here: the allocator reuses pages freed by earlier rounds; the agent benchmark
    reports the real process's RSS.)"""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        c = make()
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
        "retained": (cur - base) / flows,
        "peak": (peak - base) / flows,
    }


def _measure_size(flows: int, rounds: int, anomalies: list[str], profile: list[str] | None) -> SizeResult:
    keys = frames.flow_keys(flows)
    max_flows = flows + flows // 4
    _progress(f"{flows:,} flows: loading the datapath (flow map of {max_flows:,} entries)")
    with Datapath(DatapathConfig(max_flows=max_flows, programs=frozenset({PROG_XDP}))) as dp:
        filler = FlowFiller(dp.flows, keys)
        fill_s, _ = _timed(filler.fill)
        res = SizeResult(flows=flows, rounds=rounds, max_entries=dp.flows.info.max_entries, fill_s=fill_s)
        bare = BareReader(dp.flows)
        if bare.read() != flows:
            anomalies.append(f"{flows:,} flows: the bare read returned {bare.read()} flows")
        dp.read_flows()  # warm: the first read of a fresh map pays page faults, any reader would
        reader = ChunkReader(dp.flows)  # long-lived, as it would be in the agent
        reader.read()
        bumped = 0
        for r in range(rounds):
            _progress(f"{flows:,} flows: round {r + 1}/{rounds}")
            b1, _ = _timed(bare.read)
            rd, (k, _v) = _timed(dp.read_flows)  # type: ignore[misc]
            if len(k) != flows:
                anomalies.append(f"{flows:,} flows: read_flows returned {len(k)} flows")
            del k, _v
            c = Collector(dp, idle_timeout=IDLE_TIMEOUT)
            p = ProtoCollector(dp, reader=reader, idle_timeout=IDLE_TIMEOUT)
            ivs: dict[tuple[str, str], Interval] = {}
            for variant in VARIANTS:
                if variant == "changed":
                    bumped = filler.bump()
                # alternate which of the two goes first
                pair = [("collect", c, res.collect), ("proto", p, res.proto)]
                for who, col, acc in (pair if r % 2 == 0 else pair[::-1]):
                    t, iv = _timed(col.collect)
                    acc[variant].append(t)
                    assert isinstance(iv, Interval)
                    _check(iv, variant, flows, bumped, f"{flows:,} flows {who}", anomalies)
                    ivs[(who, variant)] = iv
                if not _same_interval(ivs[("collect", variant)], ivs[("proto", variant)]):
                    anomalies.append(f"{flows:,} flows {variant}: the prototype's interval differs from Collector's")
            if p.hash_collisions:
                anomalies.append(f"{flows:,} flows: {p.hash_collisions} prototype key-hash collisions")
            del ivs, c, p
            b2, _ = _timed(bare.read)
            res.bare.append((b1 + b2) / 2)
            res.read.append(rd)
        _progress(f"{flows:,} flows: memory")
        res.mem = _memory(dp, lambda: Collector(dp, idle_timeout=IDLE_TIMEOUT), flows)
        proto_mem = _memory(dp, lambda: ProtoCollector(dp, idle_timeout=IDLE_TIMEOUT), flows)
        res.mem.update({f"proto_{k}": v for k, v in proto_mem.items()})
        if profile is not None:  # always, so the section names the costly lines whatever the verdict
            _progress(f"{flows:,} flows: profiling a steady collect")
            profile += _profile(dp, flows)
    return res


def _profile(dp: Datapath, flows: int) -> list[str]:
    funcs = [Collector.collect, maps_mod.BpfMap.read_all, maps_mod.BpfMap._read_batch, maps_mod.BpfMap._views,
             datapath_mod.Datapath.read_flows, datapath_mod._sum_cpus, datapath_mod.Datapath.read_overflow,
             datapath_mod.Datapath.read_stats]
    what = ("Collector.collect, BpfMap.read_all/_read_batch/_views and Datapath.read_flows/_sum_cpus/"
            "read_overflow/read_stats")
    out: list[str] = []
    for variant in ("steady", "new"):
        cols = [Collector(dp, idle_timeout=IDLE_TIMEOUT) for _ in range(4)]
        if variant == "steady":
            for c in cols:
                c.collect()
        untraced = _timed(cols[0].collect)[0]
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


def _status(ok: bool) -> str:
    return "ok" if ok else "**over**"


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


def _report(results: list[SizeResult], profile: list[str], anomalies: list[str], seconds: float) -> str:
    ncpus = _libbpf.get().ncpus
    out = ["## Collector cycle (user space, per interval)", ""]
    out += [
        "The real datapath, its flow map (1.25x the flows; per-CPU hash, "
        f"{ncpus} possible CPUs) filled with synthetic IPv4 TCP/UDP/RoCE v2 flows by batch update. Per round, "
        "interleaved: the bare batch-lookup syscalls (preallocated buffers, BpfMap's batch size, no numpy), "
        "`Datapath.read_flows()`, then `Collector.collect()` and the prototype (below) on a fresh collector "
        "(*new*: all flows new), again (*steady*: no counter changed), and after an untimed batch update that "
        "gave 10% of the flows a packet (*10% changed*). Times are medians over rounds; ratio = collect / bare "
        "of the same round, median (min-max) over rounds. "
        f"Targets: 100k flows <= {TARGET_RATIO_100K:.0f}x bare; 1M flows handled and < {TARGET_RATIO_1M:.0f}x bare.",
        "",
        "| flows | rounds | bare ms | read_flows ms | collect | ms | ratio to bare | target | prototype ms | "
        "prototype ratio |",
        "|---:|---:|---:|---:|---|---:|---|---|---:|---|",
    ]
    for res in results:
        if res.error:
            out.append(f"| {res.flows:,} | - | - | - | - | - | failed: {res.error} | **over** | - | - |")
            continue
        target = _target_for(res.flows)
        for variant in VARIANTS:
            ratios = res.ratios(res.collect, variant)
            if target is None:
                st = "(info)"
            else:
                ok = statistics.median(ratios) <= target if target == TARGET_RATIO_100K \
                    else statistics.median(ratios) < target
                st = _status(ok)
                if not ok:
                    anomalies.append(f"{res.flows:,} flows, {variant}: collect {statistics.median(ratios):.2f}x bare "
                                     f"(target {target:.0f}x)")
            label = {"new": "new", "steady": "steady", "changed": "10% changed"}[variant]
            first = variant == "new"
            out.append(
                f"| {f'{res.flows:,}' if first else ''} | {res.rounds if first else ''} | "
                f"{_ms(res.bare) if first else ''} | {_ms(res.read) if first else ''} | {label} | "
                f"{_ms(res.collect[variant])} | {_ratio_cell(ratios)} | {st} | {_ms(res.proto[variant])} | "
                f"{_ratio_cell(res.ratios(res.proto, variant))} |"
            )
    out += [
        "",
        "Python memory per tracked flow: the collector's state plus the Interval the agent holds between "
        "cycles, after a steady collect (tracemalloc; numpy and ctypes buffers are traced), and the peak during "
        "that collect (the read's transient buffers). RSS cannot isolate these in this process (the allocator "
        "reuses pages freed by earlier rounds): the agent section gives the real process's RSS. The prototype "
        "counts its preallocated arrays (sized to the map's capacity, so more per flow when the map is "
        f"not full). Target: retained < {TARGET_BYTES_PER_FLOW} B/flow.",
        "",
        "| flows | retained B/flow | target | peak in collect B/flow | prototype retained | prototype peak |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for res in results:
        if res.error or not res.mem:
            continue
        m = res.mem
        ok = m["retained"] < TARGET_BYTES_PER_FLOW
        if not ok:
            anomalies.append(f"{res.flows:,} flows: {m['retained']:.0f} B/flow retained (target < "
                             f"{TARGET_BYTES_PER_FLOW})")
        out.append(f"| {res.flows:,} | {m['retained']:.0f} | {_status(ok)} | {m['peak']:.0f} | "
                   f"{m['proto_retained']:.0f} | {m['proto_peak']:.0f} |")
    out += ["", "Fill (batch update of every flow, untimed by the ratios): " + ", ".join(
        f"{r.flows:,} in {r.fill_s * 1e3:.0f} ms" for r in results if not r.error) + ".", ""]
    out += [
        "### Prototype",
        "",
        "`ProtoCollector` in `bench/collector.py` (not in xtrace_catch): `Collector.collect` with (1) "
        "`ChunkReader`: keys written by the kernel straight into one preallocated array, values into one "
        "reused 4 MiB chunk, CPUs summed per chunk into a preallocated (max_entries, 12) array (no fresh pages "
        "per interval, no `.raw` copies, no `np.concatenate`, no whole-map (n, ncpus) array); (2) flows sorted "
        "and matched by a 64-bit hash of the key (u64 argsort/searchsorted instead of 48-byte string ones; a "
        "match is still confirmed on the whole key); (3) no boolean-index copies of the state and of the "
        "Interval's all_* arrays when nothing was evicted; (4) the active flows' keys indexed as 48-byte strings, "
        "then viewed as FLOW_KEY (indexing the structured view is what makes `keys=rec_keys[act]` slow). "
        "Each prototype interval is checked equal (same "
        "flows, deltas, totals) to Collector's; a mismatch would be listed below.",
        "",
    ]
    if profile:
        out += ["### Where a collect spends its time", ""] + profile + [""]
    out += ["### Anomalies", ""]
    out += [f"- {a}" for a in anomalies] or ["- none"]
    out += ["", f"_Collector benchmark took {seconds:.0f} s._", ""]
    return "\n".join(out)


def run(*, quick: bool = False) -> str:
    """Run the collector benchmark; returns its markdown section. Needs root (loads BPF programs)."""
    p = QUICK if quick else FULL
    t0 = time.monotonic()
    anomalies: list[str] = []
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
    return _report(results, profile, anomalies, time.monotonic() - t0)
