"""Shared fixtures.

Tiers (STYLE.md "Tests in tiers"): pure tests run anywhere; tests marked ``kernel`` load
the committed BPF object and run it with BPF_PROG_TEST_RUN. The kernel tier is skipped
only when the process is not root; on a root run a missing BPF feature fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/frames.py, tests/pcaplib.py, tests/tools.py

from tools import find_tool, require_tool  # noqa: E402 (needs the path above)

DATA = Path(__file__).resolve().parent / "data"
IS_ROOT = os.geteuid() == 0
NOT_ROOT_REASON = (
    "kernel tier needs root: it creates BPF maps, loads programs and runs BPF_PROG_TEST_RUN "
    f"(running as uid {os.geteuid()}; rerun as root, e.g. 'sudo .venv/bin/python -m pytest')"
)


# The subset every kernel of tests/kernels.txt runs (marker ``kernels``, tests/kvm.py): the
# datapath suite, the BPF-link tests, and these end-to-end tests on real veths: TC both ways,
# generic XDP, exact counts, detach, the foreign-program checks and map-full accounting.
KERNEL_SUBSET_FILES = ("test_datapath.py", "test_links.py")
KERNEL_SUBSET_TESTS = (
    "test_e2e_run.py::test_tc_directions",
    "test_e2e_run.py::test_xdp_counts_each_kind_exactly",
    "test_e2e_run.py::test_normal_exit_with_count_leaves_nothing",
    "test_e2e_run.py::test_sigterm_detaches",
    "test_e2e_run.py::test_sigkill_then_restart_replaces_stale",
    "test_e2e_run.py::test_sigkill_then_cleanup_command",
    "test_e2e_run.py::test_foreign_xdp_program_is_never_replaced",
    "test_e2e_run.py::test_foreign_filter_at_our_handle_is_never_replaced",
    "test_faults.py::test_flow_map_full_overflow_exact_then_eviction_makes_room",
    "test_faults.py::test_cli_max_flows_full_says_so_everywhere",
    "test_collector.py::test_real_map_exact",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that loads the datapath is a kernel test (marker ``kernel``); without root
    it is skipped, with the reason. Tests of the kernel subset get the marker ``kernels``."""
    skip = pytest.mark.skip(reason=NOT_ROOT_REASON)
    for item in items:
        where = item.nodeid.split("/")[-1]
        if where.split("::")[0] in KERNEL_SUBSET_FILES or where.split("[")[0] in KERNEL_SUBSET_TESTS:
            item.add_marker(pytest.mark.kernels)
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
    from xtrace_catch.kernel.datapath import Datapath, DatapathConfig

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
def tshark() -> str:
    """Path of tshark; missing: the test fails under CI and is skipped elsewhere (tests/tools.py)."""
    return require_tool("tshark", "tshark")


@pytest.fixture(scope="session")
def tshark_if_installed() -> str | None:
    """Path of tshark, or None outside CI (the test then checks only the expectations cited from
    VERIFICATION.txt); under CI a missing tshark fails the test."""
    return find_tool("tshark", "tshark")


@pytest.fixture(scope="session")
def gcc() -> str:
    """A C compiler (gcc, else cc) for the header cross-check programs; missing: fail under CI, skip elsewhere."""
    return require_tool("gcc", "gcc", "cc")
