"""The agent process's own C-library settings (glibc), kept apart from the libbpf binding."""

from __future__ import annotations

import ctypes
from ctypes import c_int

__all__ = ["tune_malloc"]

# mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_malloc(threshold: int = 128 * 1024) -> bool:
    """Make a long-running agent give memory back: glibc's malloc otherwise raises its mmap
    threshold to the largest block ever freed (a whole interval's arrays), after which those
    blocks come from the heap and stay in RSS; worker threads each get an arena of their own.
    Fixed thresholds and one arena lower a 10k-flow agent's peak RSS (docs/PERFORMANCE.md,
    measured by bench/agent.py). glibc only; elsewhere a no-op. Returns whether applied."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [c_int, c_int], c_int
    return all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, threshold), (_M_TRIM_THRESHOLD, threshold),
                                                (_M_ARENA_MAX, 1)))
