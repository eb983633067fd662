"""BPF map access: single elements, batch reads with a per-key fallback, per-CPU values.

Per-CPU maps hand user space one value per *possible* CPU, each rounded up to 8 bytes;
:meth:`BpfMap.read_all` returns them as a numpy array shaped (n, ncpus) of the value's
record type so callers can sum CPUs in one vectorised step.
"""

from __future__ import annotations

import ctypes
import errno
import logging
from dataclasses import dataclass

import numpy as np

from . import _libbpf
from .errors import MapError

__all__ = ["BpfMap", "MapInfo", "PERCPU_TYPES"]

log = logging.getLogger(__name__)

# BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE
PERCPU_TYPES = {5, 6, 10, 21}
_BATCH_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, 524}  # 524: kernel-internal ENOTSUPP
_BATCH_BYTES = 4 << 20  # value bytes per batch call


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

    def __init__(self, info: MapInfo, value_dtype: np.dtype | None = None, key_dtype: np.dtype | None = None):
        self.lib = _libbpf.get()
        self.info = info
        self.fd = info.fd
        self.percpu = info.map_type in PERCPU_TYPES
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
        self.batch_supported: bool | None = None
        self.take_supported: bool | None = None

    def __repr__(self) -> str:
        return f"BpfMap({self.info.name!r}, fd={self.fd}, max_entries={self.info.max_entries})"

    # -- single elements -------------------------------------------------

    def lookup(self, key: bytes) -> np.ndarray | None:
        """The value for `key` (per-CPU: an array of ncpus records), or None."""
        raw = self.lib.map_lookup(self.fd, key, self.value_len)
        if raw is None:
            return None
        return np.frombuffer(raw, dtype=self._slot_dtype)

    def update(self, key: bytes, value: bytes, flags: int = _libbpf.BPF_ANY) -> None:
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
                    self.fd, None if first else ctypes.cast(token_in, ctypes.c_void_p), token_out, kbuf, vbuf, count
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
            raw = self.lib.map_lookup(self.fd, key, self.value_len)
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
                raw = self.lib.map_lookup_and_delete(self.fd, key, self.value_len)
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
