"""Where the time goes: per-line wall time of chosen functions, and cProfile's top functions.

Used by the benchmarks when a target is missed, to name the lines that cost. Both tools slow
Python down (a trace call per line, a hook per call), so their absolute numbers are larger than
the benchmark's; the shares are what to read. The line timer's cost is per line executed, so
lines that run one numpy call over a whole array are measured well, and Python loops over
elements are inflated (their share is an upper bound).
"""

from __future__ import annotations

import cProfile
import linecache
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

__all__ = ["line_times", "line_table", "cprofile_rows", "cprofile_table"]

REPO = Path(__file__).resolve().parent.parent


def _where(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(REPO))
    except ValueError:
        return Path(filename).name


def line_times(funcs: Iterable[Callable[..., Any]], call: Callable[[], object], repeat: int = 1
               ) -> dict[tuple[str, int], float]:
    """Seconds per call spent on each line of `funcs` (their own lines: time in a callee that is
    also traced is charged to the callee's lines, so the lines add up to the top function's time),
    averaged over `repeat` calls of `call`."""
    codes: set[CodeType] = {getattr(f, "__code__") for f in funcs}
    acc: dict[tuple[str, int], float] = defaultdict(float)
    state: dict[int, tuple[tuple[str, int], float]] = {}

    def local(frame: FrameType, event: str, arg: object) -> Any:
        now = time.perf_counter()
        key = id(frame)
        prev = state.get(key)
        if prev is not None and prev[1] <= now:
            acc[prev[0]] += now - prev[1]
        if event == "return":
            state.pop(key, None)
            caller = frame.f_back
            if caller is not None and id(caller) in state:
                # The caller's current line resumes now: do not charge it for our time.
                where, _ = state[id(caller)]
                state[id(caller)] = (where, time.perf_counter())
        else:
            state[key] = ((frame.f_code.co_filename, frame.f_lineno), time.perf_counter())
        return local

    def glob(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code not in codes:
            return None
        caller = frame.f_back
        if caller is not None and id(caller) in state:
            # Charge the caller's line up to now; the callee's lines take over.
            where, since = state[id(caller)]
            acc[where] += time.perf_counter() - since
            state[id(caller)] = (where, float("inf"))  # resumed (re-timed) when the callee returns
        return local

    old = sys.gettrace()
    for _ in range(repeat):
        sys.settrace(glob)
        try:
            call()
        finally:
            sys.settrace(old)
        state.clear()
    return {k: v / repeat for k, v in acc.items()}


def line_table(times: dict[tuple[str, int], float], total: float, top: int = 12) -> list[str]:
    """Markdown rows: the `top` costliest lines, ms per call and share of `total` (seconds)."""
    rows = ["| line | code | ms | share |", "|---|---|---:|---:|"]
    for (fn, ln), sec in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        code = linecache.getline(fn, ln).strip().replace("|", "\\|")
        if len(code) > 90:
            code = code[:87] + "..."
        rows.append(f"| {_where(fn)}:{ln} | `{code}` | {sec * 1e3:.1f} | {sec / total:.0%} |")
    return rows


def cprofile_rows(call: Callable[[], object], top: int = 10) -> tuple[list[tuple[str, int, float, float]], float]:
    """cProfile one call: ([(function, calls, tottime s, cumtime s)] by tottime, total seconds)."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(call)
    total = time.perf_counter() - t0
    st = pstats.Stats(prof)
    rows = []
    for (fn, ln, name), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = f"{_where(fn)}:{ln}({name})" if fn != "~" else name
        rows.append((where, nc, tt, ct))
    rows.sort(key=lambda r: -r[2])
    return rows[:top], total


def cprofile_table(call: Callable[[], object], top: int = 10) -> list[str]:
    rows, total = cprofile_rows(call, top)
    out = [f"cProfile, one call ({total * 1e3:.0f} ms under the profiler), top {top} by own time:", "",
           "| function | calls | own ms | cumulative ms |", "|---|---:|---:|---:|"]
    for where, nc, tt, ct in rows:
        out.append(f"| `{where.replace('|', '/')}` | {nc:,} | {tt * 1e3:.1f} | {ct * 1e3:.1f} |")
    return out
