"""Every interval: read the kernel's flow counters, sum CPUs, derive deltas and totals, evict idle flows.

Everything here is numpy over whole arrays. Flows are kept ordered by a 64-bit hash of their
48-byte key, so matching this interval's flows against the last one is a sort and a
searchsorted of integers; a match is always confirmed on the whole key. Distinct keys may
share a hash: a flow whose hash is in the kept state but whose key is not found there is
matched again on the whole key among the flows of that hash, so a collision costs time,
never a count. Idle flows (no change for `idle_timeout` seconds) are removed from the
kernel map with an atomic read-and-delete, so the last packets of a flow are never lost
between our read and the delete; their totals are kept (bounded) in case the flow comes back.

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

from ..kernel.keys import KEY_SIZE, KEY_VOID, as_void
from ..kernel.layout import FLOW_KEY, FLOW_VALUE, STATS_FIELDS, VALUE_FIELDS

__all__ = ["Collector", "Interval", "FlowSource", "V", "NV", "key_hash"]

NV = len(VALUE_FIELDS)
V = {name: i for i, name in enumerate(VALUE_FIELDS)}  # column of each counter
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53], dtype=np.uint64)


RETIRED_MAX = 65536  # evicted flows whose totals are kept, in case they come back
_COMPARE_ROWS = 1 << 16  # keys compared per slice when checking the kept state is unchanged


def key_hash(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each 48-byte key (a ``V48`` array: :mod:`..kernel.keys`): per 8-byte word, xor it in, multiply
    by an odd constant and fold the high half down, so words do not cancel each other out."""
    w = np.ascontiguousarray(keys).view("<u8").reshape(-1, KEY_SIZE // 8)
    h = np.zeros(len(w), dtype=np.uint64)
    high = np.empty_like(h)
    for j in range(w.shape[1]):
        h ^= w[:, j]
        h *= _MIX[j]
        h ^= np.right_shift(h, np.uint64(32), out=high)
    return h


class FlowSource(Protocol):
    """What the collector reads (the Datapath; tests may give a fake)."""

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        """(FLOW_KEY records, FLOW_VALUE records summed over CPUs); views valid until the next read."""

    def read_stats(self) -> np.void: ...
    def read_overflow(self) -> np.ndarray: ...
    def take_flow(self, key: bytes) -> np.ndarray | None:
        """Read-and-delete one flow: its (NV,) counters summed over CPUs, or None."""


def _u64(values: np.ndarray) -> np.ndarray:
    """FLOW_VALUE records -> (n, NV) uint64 matrix (a view where possible)."""
    if values.dtype == FLOW_VALUE:
        return np.ascontiguousarray(values).view("<u8").reshape(-1, NV)
    return values.astype(np.uint64, copy=False).reshape(-1, NV)


class _Alternating:
    """Two buffers used in turn for state no Interval shares: each collect writes the new state
    into the one the old state is not in. At a million flows, fresh pages every interval cost
    more than the arithmetic done in them. The buffers keep the size of the largest read."""

    def __init__(self, dtype: type, *tail: int) -> None:
        self._bufs = [np.empty((0, *tail), dtype=dtype), np.empty((0, *tail), dtype=dtype)]
        self._turn = 0

    def next(self, n: int) -> np.ndarray:
        self._turn ^= 1
        buf = self._bufs[self._turn]
        if len(buf) < n:
            buf = self._bufs[self._turn] = np.empty((n + n // 8, *buf.shape[1:]), dtype=buf.dtype)
        return buf[:n]


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


def _merge_repeats(ks: np.ndarray, kv: np.ndarray, order: np.ndarray, same: np.ndarray) -> np.ndarray:
    """A map iterator that resumed in a bucket where a flow had just been inserted yields a flow
    twice (maps.IterReader). Rows `order[i]`, `order[i + 1]` (i in `same`) share a hash: where the
    keys are equal too, keep one row with the later (larger) counters. Returns the new order."""
    drop = []
    for i in same.tolist():
        a, b = order[i], order[i + 1]
        if ks[a] == ks[b]:
            np.maximum(kv[a], kv[b], out=kv[b])
            drop.append(i)
    return np.delete(order, drop) if drop else order


class Collector:
    """Turns successive kernel reads into intervals. Not thread-safe: one caller at a time.

    It reads only through ``FlowSource.read_flows()`` (the Datapath's counter reader).
    """

    def __init__(self, source: FlowSource, idle_timeout: float = 60.0, retired_max: int = RETIRED_MAX,
                 clock: type[time] | None = None) -> None:
        self.source = source
        self.idle_timeout = idle_timeout
        self.retired_max = retired_max
        self._clock = clock or time
        # Flows kept, ordered by _hash. Never written in place: an Interval may share _keys and _totals.
        self._hash = np.empty(0, dtype=np.uint64)
        self._keys = np.empty(0, dtype=KEY_VOID)
        self._kvals = np.empty((0, NV), dtype=np.uint64)
        self._totals = np.empty((0, NV), dtype=np.uint64)
        self._last_active = np.empty(0, dtype=np.float64)
        self._next_hash = _Alternating(np.uint64)
        self._next_kvals = _Alternating(np.uint64, NV)
        self._next_last_active = _Alternating(np.float64)
        self._retired: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._stats_prev = np.zeros(len(STATS_FIELDS), dtype=np.uint64)
        self._ovf_prev: np.ndarray | None = None
        self._seq = 0
        self._last_time = self._clock.monotonic()
        self.evicted_total = 0

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys as V48 items, (n, NV) uint64 counters summed over CPUs); possibly views into
        the reader's buffers, valid until the next read."""
        keys, vals = self.source.read_flows()
        return as_void(keys), _u64(vals)

    def _same_keys(self, ks_read: np.ndarray, order: np.ndarray) -> bool:
        """Whether ``ks_read[order]`` are the kept keys, row for row; compared a slice at a time
        rather than by building the reordered copy."""
        step = _COMPARE_ROWS
        kept = self._keys.view("<u8").reshape(-1, KEY_SIZE // 8)
        read = ks_read.view("<u8").reshape(-1, KEY_SIZE // 8)
        return all(np.array_equal(read[order[i:i + step]], kept[i:i + step]) for i in range(0, len(order), step))

    def _match(self, h: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For flows (hash-ordered `h`, `ks`): their row in the (non-empty) kept state, and
        whether they have one."""
        n_prev = len(self._keys)
        pos = np.searchsorted(self._hash, h)
        np.minimum(pos, n_prev - 1, out=pos)
        found = self._keys[pos] == ks
        if found.all():
            return pos, found
        # searchsorted lands on the first kept flow of a hash; a colliding flow may be further on.
        missed = np.flatnonzero(~found)
        shared = missed[self._hash[pos[missed]] == h[missed]]
        if len(shared):
            rows = np.flatnonzero(np.isin(self._hash, h[shared]))
            rows = rows[np.argsort(self._keys[rows])]
            cand = self._keys[rows]
            at = np.minimum(np.searchsorted(cand, ks[shared]), len(rows) - 1)
            hit = cand[at] == ks[shared]
            pos[shared[hit]] = rows[at[hit]]
            found[shared[hit]] = True
        return pos, found

    def collect(self) -> Interval:
        t0 = self._clock.monotonic()
        ks_read, kv_read = self._read()
        stats = np.array(self.source.read_stats().tolist(), dtype=np.uint64)
        ovf = self.source.read_overflow()
        ovf_u = np.ascontiguousarray(ovf).view("<u8").reshape(ovf.shape[0], ovf.shape[1], NV)
        now = self._clock.monotonic()

        h_read = key_hash(ks_read)
        order = np.argsort(h_read)
        same = np.flatnonzero(h_read[order[1:]] == h_read[order[:-1]])
        if len(same):
            order = _merge_repeats(ks_read, kv_read, order, same)
        n = len(order)
        # mode="clip": in the default mode numpy writes `out` through a temporary copy.
        h = np.take(h_read, order, out=self._next_hash.next(n), mode="clip")
        kv = np.take(kv_read, order, axis=0, out=self._next_kvals.next(n), mode="clip")
        last_active = self._next_last_active.next(n)

        # Per flow: `delta` starts as the kernel counters of the last read, `totals` as the
        # totals then (zero for a flow not seen before).
        if np.array_equal(h, self._hash) and self._same_keys(ks_read, order):
            ks = self._keys
            found = np.ones(n, dtype=bool)
            delta, totals = self._kvals.copy(), self._totals.copy()
            last_active[:] = self._last_active
        elif len(self._keys):
            ks = ks_read[order]
            pos, found = self._match(h, ks)
            delta, totals = np.take(self._kvals, pos, axis=0), np.take(self._totals, pos, axis=0)
            np.take(self._last_active, pos, out=last_active, mode="clip")
            new = ~found
            delta[new] = 0
            totals[new] = 0
            last_active[new] = now
        else:
            ks = ks_read[order]
            found = np.zeros(n, dtype=bool)
            delta, totals = np.zeros_like(kv), np.zeros_like(kv)
            last_active[:] = now

        # New flows: continue the totals of a flow we evicted earlier.
        if self._retired:
            rows = np.flatnonzero(~found)
            for i, kb in zip(rows.tolist(), ks[rows].tolist()):
                old = self._retired.pop(kb, None)
                if old is not None:
                    totals[i] = old

        # Kernel counters only grow while an entry lives; one that went back counts from zero.
        back = kv < delta
        np.subtract(kv, delta, out=delta)
        if back.any():
            delta[back] = kv[back]
        totals += delta
        changed = delta[:, V["packets"]] > 0
        last_active[changed] = now

        # Evict idle flows atomically; counts that raced in join this interval.
        evicted = 0
        idle = np.flatnonzero(~changed & (now - last_active >= self.idle_timeout))
        keep = np.ones(n, dtype=bool)
        for i in idle:
            kb = ks[i].tobytes()
            final = self.source.take_flow(kb)
            if final is not None:
                fu = final.astype(np.uint64, copy=False).reshape(NV)
                extra = np.where(fu >= kv[i], fu - kv[i], 0).astype(np.uint64)
                if extra[V["packets"]]:
                    delta[i] += extra  # the flow was not idle after all: keep reporting it
                    totals[i] += extra
                    changed[i] = True
            keep[i] = False
            evicted += 1
            self._retire(kb, totals[i])

        if evicted:
            kept = tuple(np.compress(keep, a, axis=0) for a in (h, ks, kv, totals, last_active))
        else:
            kept = (h, ks, kv, totals, last_active)
        for a in kept:
            a.flags.writeable = False
        self._hash, self._keys, self._kvals, self._totals, self._last_active = kept
        self.evicted_total += evicted

        # Accounting.
        stats_delta = stats - self._stats_prev
        self._stats_prev = stats
        ovf_delta = ovf_u - (self._ovf_prev if self._ovf_prev is not None else 0)
        self._ovf_prev = ovf_u.copy()

        # Active flows, largest (bytes) first. Keys are indexed as opaque 48-byte items, then
        # viewed as records: indexing the structured view is several times slower.
        act = np.flatnonzero(changed)
        act = act[np.argsort(-delta[act, V["bytes"]].astype(np.int64))]

        # Export also the evicted flows that counted packets in this interval (raced in
        # before the delete): their series would otherwise stay short of those counts.
        if evicted:
            export = keep | changed
            all_keys, all_totals, all_delta = (np.compress(export, a, axis=0) for a in (ks, totals, delta))
        else:
            all_keys, all_totals, all_delta = ks, totals, delta

        self._seq += 1
        elapsed = now - self._last_time
        self._last_time = now
        return Interval(
            seq=self._seq, time=time.time(), elapsed=elapsed,
            keys=ks[act].view(FLOW_KEY), delta=np.take(delta, act, axis=0), totals=np.take(totals, act, axis=0),
            all_keys=all_keys.view(FLOW_KEY), all_totals=all_totals, all_delta=all_delta,
            stats_delta=dict(zip(STATS_FIELDS, (int(x) for x in stats_delta))),
            stats_total=dict(zip(STATS_FIELDS, (int(x) for x in stats))),
            overflow_delta=ovf_delta, overflow_total=ovf_u.copy(),
            flows_tracked=len(self._keys), evicted=evicted,
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
