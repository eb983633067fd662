"""Shared fixtures.

Tiers (STYLE.md "Tests in tiers"): pure tests run anywhere; tests marked ``kernel`` load
the committed BPF object and run it with BPF_PROG_TEST_RUN. The kernel tier is skipped
only when the process is not root; on a root run a missing BPF feature fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/frames.py, tests/pcaplib.py

DATA = Path(__file__).resolve().parent / "data"
IS_ROOT = os.geteuid() == 0
NOT_ROOT_REASON = (
    "kernel tier needs root: it creates BPF maps, loads programs and runs BPF_PROG_TEST_RUN "
    f"(running as uid {os.geteuid()}; rerun as root, e.g. 'sudo .venv/bin/python -m pytest')"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that loads the datapath is a kernel test (marker ``kernel``); without root
    it is skipped, with the reason."""
    skip = pytest.mark.skip(reason=NOT_ROOT_REASON)
    for item in items:
        if "datapath" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kernel)
        if "kernel" in item.keywords and not IS_ROOT:
            item.add_marker(skip)


def reconcile(dp: object) -> None:
    """Assert the datapath's accounting identities (xtrace.h, struct xtrace_stats):
    seen = counted + filtered + truncated + overflowed, for packets and bytes; the flow
    map holds exactly the counted packets and bytes, the overflow table the overflowed."""
    st = dp.read_stats()  # type: ignore[attr-defined]
    for suffix in ("", "_bytes"):
        parts = {k: int(st[k + suffix]) for k in ("counted", "filtered", "truncated", "overflowed")}
        assert int(st["seen" + suffix]) == sum(parts.values()), f"seen{suffix} != sum of {parts}"
    _keys, vals = dp.read_flows()  # type: ignore[attr-defined]
    assert int(vals["packets"].sum(dtype=np.uint64)) == int(st["counted"])
    assert int(vals["bytes"].sum(dtype=np.uint64)) == int(st["counted_bytes"])
    ov = dp.read_overflow()  # type: ignore[attr-defined]
    assert int(ov["packets"].sum(dtype=np.uint64)) == int(st["overflowed"])
    assert int(ov["bytes"].sum(dtype=np.uint64)) == int(st["overflowed_bytes"])


@pytest.fixture
def datapath() -> Iterator[Callable[..., object]]:
    """Factory: ``datapath(filter=..., programs=frozenset({...}), ...)`` loads the committed
    object with a DatapathConfig (max_flows defaults to 256 here: loads fast). Every
    datapath made is reconciled and closed at teardown, whatever the test did."""
    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    from xtrace_catch.datapath import Datapath, DatapathConfig

    made: list[Datapath] = []

    def make(**config: object) -> Datapath:
        config.setdefault("max_flows", 256)
        dp = Datapath(DatapathConfig(**config))  # type: ignore[arg-type]
        made.append(dp)
        return dp

    try:
        yield make
        for dp in made:
            reconcile(dp)
    finally:
        for dp in reversed(made):
            dp.close()


@pytest.fixture(scope="session")
def tshark() -> str | None:
    """Path of tshark, or None (tests then use expectations cited from VERIFICATION.txt)."""
    return shutil.which("tshark")


@pytest.fixture(scope="session")
def gcc() -> str:
    path = shutil.which("gcc") or shutil.which("cc")
    if not path:
        pytest.skip("no C compiler (gcc/cc) to build the header cross-check program")
    return path
