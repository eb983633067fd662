"""The BPF-link attach path: XDP links (Linux >= 5.9) and TCX links (Linux >= 6.6, libbpf >= 1.3).

A link lives as long as the agent's fd: a SIGKILLed agent leaves nothing attached, with no
cleanup run. TCX links go first on ingress and last on egress, beside other TCX programs,
which are never touched. The agent runs as a user would (subprocess in a test namespace),
with the vendored libbpf (make libbpf; `make test` builds it). tests/test_e2e_run.py keeps
the netlink path's tests (clsact filters, crash records, cleanup) on this same kernel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netns import (
    AGENT_IP4,
    Agent,
    VethPair,
    in_ns,
    our_prog_ids,
    qdisc_kinds,
    run,
    send_frames,
    tc_filters,
    tcx_progs,
    veth_pair,
    wait_seen,
    xdp_prog,
    xtrace,
)
from test_e2e_run import INTERVAL, aggregate, attached_line, check_accounting, tc_ingress_traffic

REPO = Path(__file__).resolve().parent.parent
VENDORED = REPO / "vendor-libbpf" / "build" / "lib" / "libbpf.so.1"

pytestmark = [pytest.mark.kernel, pytest.mark.kernels]
ING, EGR = "xtrace_tc_ingress"[:15], "xtrace_tc_egress"[:15]  # the kernel keeps 15 characters


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


needs_tcx = pytest.mark.skipif(_kernel() < (6, 6), reason="TCX links need Linux >= 6.6 (this kernel has no TCX)")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root: makes network namespaces and attaches programs")
    with veth_pair(tmp=tmp_path) as p:
        yield p


@pytest.fixture
def env(pair: VethPair) -> dict[str, str]:
    """The link path with the vendored libbpf (1.5: it has TCX)."""
    assert VENDORED.exists(), f"{VENDORED} is missing: run 'make libbpf' (make test does)"
    return {**pair.link_env, "XTRACE_LIBBPF": str(VENDORED)}


def agent(pair: VethPair, env: dict[str, str], *args: str) -> Agent:
    return Agent(pair.ns, ["-i", pair.ifname, "--output", "json", "-t", INTERVAL, *args], env=env)


def counted_exactly_through_tc(pair: VethPair, env: dict[str, str],
                               while_attached: Callable[[], None] = lambda: None) -> None:
    """A TC both-ways run with ingress traffic: the records account for every frame.
    `while_attached` runs once the agent has attached, before the traffic."""
    t = tc_ingress_traffic()
    with agent(pair, env, "-m", "tc", "-d", "both", "-t", "600000") as at:
        assert at.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc", "both")
        while_attached()
        send_frames(pair.peer_ns, pair.peer_if, t.frames)
        wait_seen(pair.ns, pair.ifname, t.packets, hook="ingress")
        assert at.stop() == 0
    recs = at.records()
    check_accounting(recs, pair.ifname)
    assert aggregate(recs, pair.ifname, AGENT_IP4) == t.only(lambda k: True)


def nothing_attached(pair: VethPair) -> dict[str, object]:
    """What tc, ip and bpftool (and the kernel's TCX query) show of programs on the interface."""
    net = in_ns(pair.ns, ["bpftool", "-j", "net", "show", "dev", pair.ifname]).stdout
    return {"xdp": xdp_prog(pair.ns, pair.ifname), "tc ingress": tc_filters(pair.ns, pair.ifname, "ingress"),
            "tc egress": tc_filters(pair.ns, pair.ifname, "egress"), "qdiscs": qdisc_kinds(pair.ns, pair.ifname),
            "bpftool xtrace": "xtrace" in net, "tcx": tcx_progs(pair.ns, pair.ifname)}


CLEAN = {"xdp": None, "tc ingress": [], "tc egress": [], "qdiscs": ["noqueue"], "bpftool xtrace": False,
         "tcx": {"ingress": [], "egress": []}}


@needs_tcx
def test_sigkill_leaves_nothing_attached(pair: VethPair, env: dict[str, str]) -> None:
    """XDP and TC (both directions) through links count exactly; SIGKILL then leaves no XDP
    program on the link, no tc filter, no clsact, nothing in bpftool net show, no state file."""
    assert nothing_attached(pair) == CLEAN
    t = tc_ingress_traffic()
    with agent(pair, env, "-m", "xdp") as ax, agent(pair, env, "-m", "tc", "-d", "both") as at:
        assert ax.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        assert at.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc", "both")
        ids = our_prog_ids(pair.ns, pair.ifname)
        assert set(ids) == {"xdp", "ingress", "egress"}
        # TCX, not clsact: no filter and no qdisc of ours.
        assert tc_filters(pair.ns, pair.ifname, "ingress") == [] and "clsact" not in qdisc_kinds(pair.ns, pair.ifname)
        tcx = tcx_progs(pair.ns, pair.ifname)
        assert [n for _, n in tcx["ingress"]] == [ING] and [n for _, n in tcx["egress"]] == [EGR]
        send_frames(pair.peer_ns, pair.peer_if, t.frames)
        wait_seen(pair.ns, pair.ifname, t.packets, hook="xdp")
        wait_seen(pair.ns, pair.ifname, t.packets, hook="ingress")
        for a in (ax, at):
            a.signal(signal.SIGKILL)
            assert a.wait() == -signal.SIGKILL
    assert nothing_attached(pair) == CLEAN
    assert not pair.state_dir.exists() or sorted(p.name for p in pair.state_dir.glob("*.json")) == []
    # And a normal run counts exactly through the links, and leaves nothing either.
    counted_exactly_through_tc(pair, env)
    assert nothing_attached(pair) == CLEAN


def test_xdp_link_generic_and_sigkill(pair: VethPair, env: dict[str, str]) -> None:
    """--xdp-mode generic through an XDP link; SIGKILL takes it away with the process."""
    with agent(pair, env, "-m", "xdp", "--xdp-mode", "generic") as ax:
        assert ax.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp") + " (generic mode)"
        link = in_ns(pair.ns, ["ip", "-d", "link", "show", pair.ifname]).stdout
        assert "xdpgeneric" in link and "xtrace_xdp" in link
        ax.signal(signal.SIGKILL)
        assert ax.wait() == -signal.SIGKILL
    assert nothing_attached(pair) == CLEAN


_FOREIGN_TCX = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from xtrace_catch.kernel import libbpf, uapi
from bpfprog import load_trivial_program
import socket
lib = libbpf.get()
fd = load_trivial_program(lib, uapi.BPF_PROG_TYPE_SCHED_CLS, -1, name="foreign_tcx")  # TCX_NEXT
idx = socket.if_nametoindex(sys.argv[1])
links = [lib.link_create(fd, idx, t, 0) for t in (uapi.BPF_TCX_INGRESS, uapi.BPF_TCX_EGRESS)]
print("ready", flush=True)
sys.stdin.read()
"""


@needs_tcx
def test_tcx_goes_first_on_ingress_last_on_egress_beside_others(pair: VethPair, env: dict[str, str]) -> None:
    """Another TCX user's programs stay; ours runs before them on ingress (we see what they
    drop) and after them on egress (we count what leaves); they are untouched at our exit."""
    holder = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", _FOREIGN_TCX, pair.ifname,
                               str(Path(__file__).parent)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        before = tcx_progs(pair.ns, pair.ifname)
        assert [n for _, n in before["ingress"]] == ["foreign_tcx"] == [n for _, n in before["egress"]]
        def ours_first_in_ingress_last_in_egress() -> None:
            now = tcx_progs(pair.ns, pair.ifname)
            assert [n for _, n in now["ingress"]] == [ING, "foreign_tcx"]
            assert [n for _, n in now["egress"]] == ["foreign_tcx", EGR]

        counted_exactly_through_tc(pair, env, ours_first_in_ingress_last_in_egress)
        assert tcx_progs(pair.ns, pair.ifname) == before
    finally:
        holder.kill()
        holder.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and tcx_progs(pair.ns, pair.ifname)["ingress"]:
        time.sleep(0.1)
    assert tcx_progs(pair.ns, pair.ifname) == {"ingress": [], "egress": []}


@needs_tcx
def test_version_and_interfaces_say_the_attach_path(pair: VethPair, env: dict[str, str]) -> None:
    p = xtrace(pair.ns, ["--version"], env=env)
    assert p.returncode == 0 and "attach: XDP BPF link; TC TCX link" in p.stdout.splitlines(), p.stdout
    system = {**env, "XTRACE_LIBBPF": "libbpf.so.1"}  # Debian 12's 1.1: no TCX
    p = xtrace(pair.ns, ["--version"], env=system)
    assert p.returncode == 0, p.stderr
    has_tcx = run([sys.executable, "-c", "from xtrace_catch.kernel import libbpf; print(libbpf.get().has_tcx)"],
                 env=system).stdout.strip()
    want = "TC TCX link" if has_tcx == "True" else "TC netlink clsact filter (libbpf"
    assert want in p.stdout, p.stdout
    p = xtrace(pair.ns, ["--version"], env={**env, "XTRACE_ATTACH": "netlink"})
    assert "attach: XDP netlink (XTRACE_ATTACH=netlink); TC netlink clsact filter (XTRACE_ATTACH=netlink)" in p.stdout
    with agent(pair, env, "-m", "tc", "-d", "both", "-t", "600000") as at:
        assert at.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc", "both")
        p = xtrace(pair.ns, ["-l"], env=env)
        row = next(ln for ln in p.stdout.splitlines() if ln.startswith(pair.ifname))
        assert "xtrace tcx ingress, xtrace tcx egress" in row
        assert "attach paths: XDP BPF link; TC TCX link" in p.stdout.splitlines()
        assert at.stop() == 0


def test_bad_attach_policy_is_a_usage_error(pair: VethPair, env: dict[str, str]) -> None:
    p = xtrace(pair.ns, ["-i", pair.ifname, "-m", "tc", "--count", "1"], env={**env, "XTRACE_ATTACH": "bogus"})
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == "xtrace-catch: error: XTRACE_ATTACH='bogus' is not one of auto, link, netlink"
    assert nothing_attached(pair)["tcx"] == {"ingress": [], "egress": []}


def test_interfaces_list_without_bpf_rights(pair: VethPair, env: dict[str, str]) -> None:
    """-l with only CAP_PERFMON (no CAP_BPF, no CAP_NET_ADMIN), as in an unprivileged
    container: the kernel refuses the TCX query (EPERM), the listing still works."""
    from netns import xtrace_cmd
    from test_privilege import CAP_PERFMON, capsh_prefix

    p = in_ns(pair.ns, [*capsh_prefix((CAP_PERFMON,)), *xtrace_cmd(), "-l"], check=False, env=env)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert p.stdout.startswith("INTERFACE") and any(ln.startswith(pair.ifname) for ln in p.stdout.splitlines())
