"""Every interval: read the kernel's flow counters, sum CPUs, derive deltas and totals, evict idle flows.

Everything here is numpy over whole arrays: keys are 48-byte strings kept sorted, so
matching this interval's flows against the last one is one searchsorted. Idle flows (no
change for `idle_timeout` seconds) are removed from the kernel map with an atomic
read-and-delete, so the last packets of a flow are never lost between our read and the
delete; their totals are kept (bounded) in case the flow comes back.

No count is lost silently: the kernel's stats and overflow table are read too, and
``Interval`` carries both, so ``seen = counted + filtered + truncated + overflowed``
can be checked at any time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .layout import FLOW_KEY, FLOW_VALUE, STATS_FIELDS, VALUE_FIELDS

__all__ = ["Collector", "Interval", "FlowSource", "V"]

NV = len(VALUE_FIELDS)
V = {name: i for i, name in enumerate(VALUE_FIELDS)}  # column of each counter
KEY_SIZE = FLOW_KEY.itemsize
_KEY_S = f"S{KEY_SIZE}"


class FlowSource(Protocol):
    """What the collector reads (the Datapath; tests may give a fake)."""

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]: ...
    def read_stats(self) -> np.void: ...
    def read_overflow(self) -> np.ndarray: ...
    def take_flow(self, key: bytes) -> np.ndarray | None:
        """Read-and-delete one flow: its (NV,) counters summed over CPUs, or None."""


def _u64(values: np.ndarray) -> np.ndarray:
    """FLOW_VALUE records -> (n, NV) uint64 matrix (a view where possible)."""
    if values.dtype == FLOW_VALUE:
        return np.ascontiguousarray(values).view("<u8").reshape(-1, NV)
    return values.astype(np.uint64, copy=False).reshape(-1, NV)


@dataclass
class Interval:
    """One collection: flows active in it (largest first) and the accounting."""

    seq: int
    time: float  # wall clock, seconds
    elapsed: float  # seconds since the previous collection
    keys: np.ndarray  # FLOW_KEY records of flows with packets in this interval
    delta: np.ndarray  # (m, NV) counts in this interval
    totals: np.ndarray  # (m, NV) counts since start
    all_keys: np.ndarray  # every tracked flow, and evicted ones with counts in this interval (for export)
    all_totals: np.ndarray  # (n, NV)
    all_delta: np.ndarray  # (n, NV)
    stats_delta: dict[str, int]
    stats_total: dict[str, int]
    overflow_delta: np.ndarray  # (2, types, NV)
    overflow_total: np.ndarray
    flows_tracked: int
    evicted: int
    collect_seconds: float

    @property
    def packets(self) -> int:
        return int(self.delta[:, V["packets"]].sum())

    @property
    def bytes(self) -> int:
        return int(self.delta[:, V["bytes"]].sum())


class Collector:
    """Turns successive kernel reads into intervals. Not thread-safe: one caller at a time."""

    def __init__(self, source: FlowSource, idle_timeout: float = 60.0, retired_max: int = 65536,
                 clock: type[time] | None = None) -> None:
        self.source = source
        self.idle_timeout = idle_timeout
        self.retired_max = retired_max
        self._clock = clock or time
        self._keys = np.empty(0, dtype=_KEY_S)
        self._kvals = np.empty((0, NV), dtype=np.uint64)
        self._totals = np.empty((0, NV), dtype=np.uint64)
        self._last_active = np.empty(0, dtype=np.float64)
        self._retired: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._stats_prev = np.zeros(len(STATS_FIELDS), dtype=np.uint64)
        self._ovf_prev: np.ndarray | None = None
        self._seq = 0
        self._last_time = self._clock.monotonic()
        self.evicted_total = 0

    def collect(self) -> Interval:
        t0 = self._clock.monotonic()
        keys, vals = self.source.read_flows()
        stats = np.array(self.source.read_stats().tolist(), dtype=np.uint64)
        ovf = self.source.read_overflow()
        ovf_u = np.ascontiguousarray(ovf).view("<u8").reshape(ovf.shape[0], ovf.shape[1], NV)
        now = self._clock.monotonic()

        ks = np.ascontiguousarray(keys).view(_KEY_S).reshape(-1)
        kv = _u64(vals)
        order = np.argsort(ks, kind="stable")
        ks, kv = ks[order], kv[order]

        # Match against the previous read.
        n_prev = len(self._keys)
        if n_prev:
            pos = np.searchsorted(self._keys, ks)
            pos_c = np.minimum(pos, n_prev - 1)
            found = self._keys[pos_c] == ks
        else:
            pos_c = np.zeros(len(ks), dtype=np.intp)
            found = np.zeros(len(ks), dtype=bool)
        prev_k = np.zeros_like(kv)
        prev_t = np.zeros_like(kv)
        last_active = np.full(len(ks), now)
        prev_k[found] = self._kvals[pos_c[found]]
        prev_t[found] = self._totals[pos_c[found]]
        last_active[found] = self._last_active[pos_c[found]]

        # New flows: continue the totals of a flow we evicted earlier.
        if self._retired:
            for i in np.flatnonzero(~found):
                old = self._retired.pop(ks[i].tobytes().ljust(KEY_SIZE, b"\0"), None)
                if old is not None:
                    prev_t[i] = old

        # Kernel counters only grow while an entry lives; guard anyway.
        delta = np.where(kv >= prev_k, kv - prev_k, kv)
        changed = delta[:, V["packets"]] > 0
        last_active[changed] = now

        # Evict idle flows atomically; counts that raced in join this interval.
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
                    delta[i] += extra  # the flow was not idle after all: keep reporting it
                    changed[i] = True
            keep[i] = False
            evicted += 1
            self._retire(kb, prev_t[i] + delta[i])

        totals = prev_t + delta
        self._keys = ks[keep]
        self._kvals = kv[keep]
        self._totals = totals[keep]
        self._last_active = last_active[keep]
        self.evicted_total += evicted

        # Accounting.
        stats_delta = stats - self._stats_prev
        self._stats_prev = stats
        ovf_delta = ovf_u - (self._ovf_prev if self._ovf_prev is not None else 0)
        self._ovf_prev = ovf_u.copy()

        # Active flows, largest (bytes) first.
        act = np.flatnonzero(changed)
        act = act[np.argsort(-delta[act, V["bytes"]].astype(np.int64), kind="stable")]
        # Index the plain 48-byte strings, then view them as records (cheaper than indexing
        # the structured view).

        # Export also the evicted flows that counted packets in this interval (raced in
        # before the delete): their series would otherwise stay short of those counts.
        export = keep | changed

        self._seq += 1
        elapsed = now - self._last_time
        self._last_time = now
        return Interval(
            seq=self._seq, time=time.time(), elapsed=elapsed,
            keys=ks[act].view(FLOW_KEY), delta=delta[act], totals=totals[act],
            all_keys=ks[export].view(FLOW_KEY), all_totals=totals[export], all_delta=delta[export],
            stats_delta=dict(zip(STATS_FIELDS, (int(x) for x in stats_delta))),
            stats_total=dict(zip(STATS_FIELDS, (int(x) for x in stats))),
            overflow_delta=ovf_delta, overflow_total=ovf_u.copy(),
            flows_tracked=int(keep.sum()), evicted=evicted,
            collect_seconds=self._clock.monotonic() - t0,
        )

    def _retire(self, key: bytes, totals: np.ndarray) -> None:
        self._retired[key] = totals.copy()
        self._retired.move_to_end(key)
        while len(self._retired) > self.retired_max:
            self._retired.popitem(last=False)

    @property
    def flows_tracked(self) -> int:
        return len(self._keys)
