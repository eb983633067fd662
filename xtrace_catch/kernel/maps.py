"""BPF map access: single elements, batch reads with a per-key fallback, per-CPU values.

Per-CPU maps hand user space one value per *possible* CPU, each rounded up to 8 bytes;
:meth:`BpfMap.read_all` returns them as a numpy array shaped (n, ncpus) of the value's
record type so callers can sum CPUs in one vectorised step. Maps of u64 counters read every
interval go through :class:`CounterReader` instead: CPUs summed as the batches arrive, into
buffers kept between reads.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import MapError
from . import libbpf
from .uapi import BPF_ANY, PERCPU_MAP_TYPES

__all__ = ["BpfMap", "CounterReader", "IterReader", "MapInfo"]

log = logging.getLogger(__name__)

_BATCH_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, 524}  # 524: kernel-internal ENOTSUPP
_BATCH_BYTES = 256 << 10  # value bytes per batch call


@dataclass(frozen=True)
class MapInfo:
    name: str
    fd: int
    map_type: int
    key_size: int
    value_size: int
    max_entries: int


class BpfMap:
    """A loaded map. It does not own its fd (the object does)."""

    def __init__(self, info: MapInfo, value_dtype: np.dtype | None = None, key_dtype: np.dtype | None = None,
                 elem_flags: int = 0):
        self.lib = libbpf.get()
        self.info = info
        # BPF_F_LOCK for a map whose values hold a bpf_spin_lock (bench/variants.py's "locked"):
        # every read then copies under it.
        self.elem_flags = elem_flags
        self.fd = info.fd
        self.percpu = info.map_type in PERCPU_MAP_TYPES
        self.ncpus = self.lib.ncpus if self.percpu else 1
        self.slot = self.lib.cpu_value_size(info.value_size) if self.percpu else info.value_size
        self.value_len = self.slot * self.ncpus
        self.key_dtype = key_dtype or np.dtype((np.void, info.key_size))
        self.value_dtype = value_dtype or np.dtype((np.void, info.value_size))
        # The syscall's per-CPU slot may be wider than the struct: pad the record.
        self._slot_dtype = np.dtype({"names": list(self.value_dtype.names or ()),
                                     "formats": [self.value_dtype.fields[n][0] for n in self.value_dtype.names or ()],
                                     "offsets": [self.value_dtype.fields[n][1] for n in self.value_dtype.names or ()],
                                     "itemsize": self.slot}) if self.value_dtype.names else np.dtype((np.void, self.slot))
        self.iter_link_fd: int | None = None  # set by the owner: reads go through that map iterator
        self.batch_supported: bool | None = None
        self.take_supported: bool | None = None
        self._counter_readers: dict[int, CounterReader] = {}

    def __repr__(self) -> str:
        return f"BpfMap({self.info.name!r}, fd={self.fd}, max_entries={self.info.max_entries})"

    def kernel_memory(self) -> int:
        """The map's kernel memory in bytes, as the kernel reports it (``memlock`` in the fd's
        fdinfo, what ``bpftool map show`` prints): its actual use since Linux 6.4, an estimate
        from key, value and entry sizes (times CPUs for per-CPU maps) before. 0 if unreadable."""
        try:
            with open(f"/proc/self/fdinfo/{self.fd}") as fh:
                for line in fh:
                    if line.startswith("memlock:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0

    # -- single elements -------------------------------------------------

    def lookup(self, key: bytes) -> np.ndarray | None:
        """The value for `key` (per-CPU: an array of ncpus records), or None."""
        raw = self.lib.map_lookup(self.fd, key, self.value_len, self.elem_flags)
        if raw is None:
            return None
        return np.frombuffer(raw, dtype=self._slot_dtype)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Set `key`. For per-CPU maps `value` holds all CPUs' slots."""
        if len(value) != self.value_len:
            raise MapError(f"{self.info.name}: value is {len(value)} bytes, the map wants {self.value_len}")
        self.lib.map_update(self.fd, key, value, flags)

    def delete(self, key: bytes) -> bool:
        return self.lib.map_delete(self.fd, key)

    def keys(self) -> list[bytes]:
        out = []
        key = None
        while (key := self.lib.map_next_key(self.fd, key, self.info.key_size)) is not None:
            out.append(key)
        return out

    # -- whole map -------------------------------------------------------

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every element: (keys[n] of key_dtype, values[n, ncpus] of the value record).

        Uses BPF_MAP_LOOKUP_BATCH (Linux >= 5.6) and falls back to per-key reads where
        the kernel or map type lacks it.
        """
        if self.batch_supported is not False:
            try:
                res = self._read_batch()
                self.batch_supported = True
                return res
            except MapError as exc:
                if exc.errno not in _BATCH_UNSUPPORTED or self.batch_supported:
                    raise
                log.info("batch lookup unsupported on %s (%s); using per-key reads", self.info.name, exc)
                self.batch_supported = False
        return self._read_per_key()

    def counter_reader(self, fields: int) -> CounterReader:
        """The map's reader of its first `fields` u64 counters summed over CPUs. One per map and
        width, so every collector of the map reuses the same buffers, sized by the largest read."""
        reader = self._counter_readers.get(fields)
        if reader is None:
            if self.iter_link_fd is not None:
                reader = IterReader(self, self.iter_link_fd, fields)
            else:
                reader = CounterReader(self, fields)
            self._counter_readers[fields] = reader
        return reader

    def _views(self, kbuf: bytes, vbuf: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
        keys = np.frombuffer(kbuf, dtype=self.key_dtype, count=n)
        vals = np.frombuffer(vbuf, dtype=self._slot_dtype, count=n * self.ncpus).reshape(n, self.ncpus)
        return keys, vals

    def _read_batch(self) -> tuple[np.ndarray, np.ndarray]:
        ksz = self.info.key_size
        count = max(64, min(self.info.max_entries, _BATCH_BYTES // self.value_len))
        key_parts: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        token_in = ctypes.create_string_buffer(max(ksz, 8))
        token_out = ctypes.create_string_buffer(max(ksz, 8))
        first = True
        while True:
            kbuf = ctypes.create_string_buffer(count * ksz)
            vbuf = ctypes.create_string_buffer(count * self.value_len)
            try:
                n, done = self.lib.map_lookup_batch(
                    self.fd, None if first else ctypes.cast(token_in, ctypes.c_void_p), token_out, kbuf, vbuf, count,
                    self.elem_flags,
                )
            except MapError as exc:
                if exc.errno == errno.ENOSPC:  # one hash bucket holds more than `count`
                    count *= 2
                    continue
                raise
            if n:
                k, v = self._views(kbuf.raw[: n * ksz], vbuf.raw[: n * self.value_len], n)
                key_parts.append(k)
                val_parts.append(v)
            if done:
                break
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False
        if not key_parts:
            return self._views(b"", b"", 0)
        return np.concatenate(key_parts), np.concatenate(val_parts)

    def _read_per_key(self) -> tuple[np.ndarray, np.ndarray]:
        kparts, vparts = [], []
        for key in self.keys():
            raw = self.lib.map_lookup(self.fd, key, self.value_len, self.elem_flags)
            if raw is None:  # deleted meanwhile
                continue
            kparts.append(key)
            vparts.append(raw)
        return self._views(b"".join(kparts), b"".join(vparts), len(kparts))

    def take(self, key: bytes) -> np.ndarray | None:
        """Read and delete `key` atomically: counts added up to the deletion are in the
        result, later ones start a new element. Falls back to lookup + delete (a packet
        landing in between is then missed) where the kernel lacks the atomic form."""
        if self.take_supported is not False:
            try:
                raw = self.lib.map_lookup_and_delete(self.fd, key, self.value_len, self.elem_flags)
                self.take_supported = True
                return None if raw is None else np.frombuffer(raw, dtype=self._slot_dtype)
            except MapError as exc:
                if exc.errno not in _BATCH_UNSUPPORTED or self.take_supported:
                    raise
                log.warning("kernel lacks atomic lookup-and-delete for %s (needs Linux >= 5.14): "
                            "evicting idle flows may miss a packet that arrives while one is removed", self.info.name)
                self.take_supported = False
        val = self.lookup(key)
        if val is not None:
            self.delete(key)
        return val

    def delete_keys(self, keys: np.ndarray | list[bytes]) -> int:
        """Delete many keys (batch where supported). Returns how many were deleted."""
        blob = keys.tobytes() if isinstance(keys, np.ndarray) else b"".join(keys)
        n = len(blob) // self.info.key_size
        if not n:
            return 0
        done = 0
        if self.batch_supported is not False:
            try:
                # Stops at the first missing key; the rest go one by one below.
                done = self.lib.map_delete_batch(self.fd, blob, n)
            except MapError as exc:
                if exc.errno not in _BATCH_UNSUPPORTED:
                    raise
        if done >= n:
            return n
        ksz = self.info.key_size
        return done + sum(self.delete(blob[i * ksz:(i + 1) * ksz]) for i in range(done, n))

    def update_batch(self, keys: bytes, values: bytes, count: int) -> int:
        """BPF_MAP_UPDATE_BATCH (bench and tests fill maps with it)."""
        return self.lib.map_update_batch(self.fd, keys, values, count)


class CounterReader:
    """Whole-map reads of a map whose values start with u64 counters, summed over CPUs.

    The kernel writes keys straight into one key array kept between reads and values into one
    reused chunk of ``_BATCH_BYTES``; each chunk's CPUs are summed as it arrives. Once the
    buffers fit the map a read allocates nothing, and the whole map's (n, ncpus) values never
    exist at once. Requires Linux 5.6 for batch lookups; falls back to per-key reads (see
    :meth:`BpfMap.read_all`) where the kernel or map type lacks them. Raises MapError.
    """

    def __init__(self, m: BpfMap, fields: int) -> None:
        if m.slot % 8 or not 0 < fields * 8 <= m.info.value_size:
            raise MapError(f"{m.info.name}: a {m.info.value_size}-byte value does not hold {fields} u64 counters")
        self.m = m
        self.fields = fields
        self.count = max(64, min(m.info.max_entries, _BATCH_BYTES // m.value_len))
        self._keys = np.empty(0, dtype=f"V{m.info.key_size}")
        self._sums = np.empty((0, fields), dtype=np.uint64)
        self._chunk = np.empty(self.count * m.value_len, dtype=np.uint8)
        self._token_in = ctypes.create_string_buffer(max(m.info.key_size, 8))
        self._token_out = ctypes.create_string_buffer(max(m.info.key_size, 8))

    @property
    def nbytes(self) -> int:
        """Bytes held between reads."""
        return self._keys.nbytes + self._sums.nbytes + self._chunk.nbytes

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys as n ``V<key_size>`` items, (n, fields) uint64 sums). Both may be views into
        the reader's buffers: valid until its next read."""
        m = self.m
        if m.batch_supported is not False:
            try:
                n = self._read_batch()
                m.batch_supported = True
                return self._keys[:n], self._sums[:n]
            except MapError as exc:
                if exc.errno not in _BATCH_UNSUPPORTED or m.batch_supported:
                    raise
                log.info("batch lookup unsupported on %s (%s); using per-key reads", m.info.name, exc)
                m.batch_supported = False
        keys, vals = m._read_per_key()
        n = len(keys)
        per_cpu = np.ascontiguousarray(vals).view("<u8").reshape(n, m.ncpus, m.slot // 8)[:, :, :self.fields]
        return np.ascontiguousarray(keys).view(self._keys.dtype).reshape(n), per_cpu.sum(axis=1, dtype=np.uint64)

    def _reserve(self, n: int) -> None:
        """Room for `n` keys and sums, keeping what is read so far (a map under churn can yield
        more keys in one pass than it holds at any moment)."""
        have = len(self._keys)
        if n <= have:
            return
        cap = max(n, min(2 * have, self.m.info.max_entries + self.count))
        keys = np.empty(cap, dtype=self._keys.dtype)
        sums = np.empty((cap, self.fields), dtype=np.uint64)
        keys[:have] = self._keys
        sums[:have] = self._sums
        self._keys, self._sums = keys, sums

    def _read_batch(self) -> int:
        m = self.m
        ksz, vlen, words = m.info.key_size, m.value_len, m.slot // 8
        got, first = 0, True
        while True:
            self._reserve(got + self.count)
            try:
                n, done = m.lib.map_lookup_batch(
                    m.fd, None if first else ctypes.cast(self._token_in, ctypes.c_void_p), self._token_out,
                    ctypes.c_void_p(self._keys.ctypes.data + got * ksz),  # type: ignore[arg-type]
                    ctypes.c_void_p(self._chunk.ctypes.data), self.count, m.elem_flags,  # type: ignore[arg-type]
                )
            except MapError as exc:
                if exc.errno == errno.ENOSPC:  # one hash bucket holds more than `count`
                    self.count *= 2
                    self._chunk = np.empty(self.count * vlen, dtype=np.uint8)
                    continue
                raise
            if n:
                per_cpu = self._chunk[: n * vlen].view("<u8").reshape(n, m.ncpus, words)[:, :, :self.fields]
                np.add.reduce(per_cpu, axis=1, out=self._sums[got:got + n])
                got += n
            if done:
                return got
            ctypes.memmove(self._token_in, self._token_out, len(self._token_out))
            first = False


class IterReader:
    """Whole-map reads through a map iterator (xtrace_read_flows): records of the key then u64
    counters, each counter read in the kernel with one 8-byte load. A syscall copy of a shared
    (non-per-CPU) value is a memcpy that can tear a counter another CPU is adding to; this
    cannot. Same interface as :class:`CounterReader`. A walk that resumes in a bucket where a
    flow was just inserted can yield a flow twice (the collector merges such pairs)."""

    def __init__(self, m: BpfMap, link_fd: int, fields: int) -> None:
        self.m = m
        self.link_fd = link_fd
        self.fields = fields
        self.rec = m.info.key_size + fields * 8
        self._buf = np.empty(0, dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        fd = self.m.lib.iter_create(self.link_fd)
        got = 0
        try:
            while True:
                if len(self._buf) - got < _BATCH_BYTES:
                    grown = np.empty(max(2 * len(self._buf), got + 4 * _BATCH_BYTES), dtype=np.uint8)
                    grown[:got] = self._buf[:got]
                    self._buf = grown
                n = os.readv(fd, [memoryview(self._buf)[got:]])
                if n == 0:
                    break
                got += n
        finally:
            os.close(fd)
        if got % self.rec:
            raise MapError(f"{self.m.info.name}: the iterator wrote {got} bytes, not whole {self.rec}-byte records")
        n = got // self.rec
        ksz = self.m.info.key_size
        rows = self._buf[:got].reshape(n, self.rec)
        keys = np.ascontiguousarray(rows[:, :ksz]).view(f"V{ksz}").reshape(n)
        sums = np.ascontiguousarray(rows[:, ksz:]).view("<u8").reshape(n, self.fields)
        return keys, sums
