"""The interval loop shared by the flow and counter modes: asyncio, SIGINT/SIGTERM, --count."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from .export.series import Batch
from .notify import Notify
from .settings import Settings

if TYPE_CHECKING:
    from .export.health import Export


T = TypeVar("T")
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM stay pending inside (from the first attach to the last detach): interval_loop
    takes a held one as it starts (last interval, detach, exit 0), so none ends the process half
    attached. One more arriving while detaching is dropped: the process is stopping anyway."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


async def interval_loop(settings: Settings, step: Callable[[], tuple[T, Batch | None]], emit: Callable[[T], None],
                export: Export | None, notify: Notify) -> None:
    """Every interval: `step` in a worker thread (blocking reads), publish its batch, `emit` its result.
    Ends after --count intervals or at SIGINT/SIGTERM (after one last interval)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    held = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one held since attach is taken now
    if export is not None:
        await export.start(notify)
    try:
        period = settings.interval_ms / 1000.0
        next_at = loop.time() + period
        done = 0
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - loop.time()))
            except TimeoutError:
                pass
            result, batch = await asyncio.to_thread(step)
            if export is not None and batch is not None:
                export.publish(batch)
            emit(result)
            done += 1
            if stop.is_set() or (settings.count is not None and done >= settings.count):
                return
            next_at += period
            if next_at < loop.time():  # fell behind (slow terminal, huge map): skip, do not burst
                next_at = loop.time() + period
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # held again, where it was, until detached
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if export is not None:
            await export.stop()
