"""Least privilege (kernel tier, root): the agent with exactly CAP_BPF, CAP_NET_ADMIN and
CAP_PERFMON, and no other capability, inside a test namespace on a veth.

`capsh` (libcap2-bin) drops every other capability from the bounding set (as root, an
exec would otherwise grant the whole bounding set again), sets the three in the
effective, permitted and inheritable sets and raises them as ambient ones, then execs
the agent: the process's /proc/PID/status is checked to hold exactly those three in all
five sets. The uid stays 0, so file access is root's; the point is the capability set.

- A full interval completes with exact counts, -m xdp and -m tc, and nothing is left
  attached at exit.
- Without one of the three: one line naming it, exit 2, nothing attached.
- Restart after SIGKILL: TC leftovers are recognised (by the filter name netlink
  reports) and replaced. XDP leftovers too: naming the attached program needs
  bpf_prog_get_fd_by_id, which needs CAP_SYS_ADMIN (kernel/bpf/syscall.c), so a run
  records its program's id and the next run (holding the hook lock) trusts that id.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from netns import AGENT_IP4, Agent, VethPair, our_prog_ids, qdisc_kinds, run, send_frames, veth_pair, wait_seen
from test_e2e_run import aggregate, attached_line, check_accounting
from test_faults import flow_traffic, merged

pytestmark = pytest.mark.kernel

CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF = 12, 38, 39
NAMES = {CAP_NET_ADMIN: "cap_net_admin", CAP_PERFMON: "cap_perfmon", CAP_BPF: "cap_bpf"}
LEAST = (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)


def cap_last() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def capsh_prefix(caps: tuple[int, ...]) -> list[str]:
    """capsh arguments that run `"$0" "$@"` with exactly `caps` (and none other, bounding set too)."""
    drop = ",".join(str(c) for c in range(cap_last() + 1) if c not in caps)
    names = ",".join(NAMES[c] for c in caps)
    return ["capsh", f"--drop={drop}", f"--caps={names}+eip", f"--addamb={names}", "--", "-c", 'exec "$0" "$@"']


def mask(caps: tuple[int, ...]) -> int:
    return sum(1 << c for c in caps)


def cap_sets(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cap"):
            k, v = line.split(":")
            out[k] = int(v, 16)
    return out


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        yield p


@pytest.fixture
def with_caps(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """with_caps(caps): from now on netns.Agent / netns.xtrace run the CLI under capsh."""
    real = netns.xtrace_cmd

    def set_caps(caps: tuple[int, ...]) -> None:
        monkeypatch.setattr(netns, "xtrace_cmd", lambda: [*capsh_prefix(caps), *real()])

    return set_caps


def hook_args(mode: str) -> list[str]:
    return ["-m", "xdp"] if mode == "xdp" else ["-m", "tc", "-d", "ingress"]


@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_three_capabilities_suffice_for_exact_counts(  # type: ignore[no-untyped-def]
        pair: VethPair, with_caps, mode: str) -> None:
    with_caps(LEAST)
    t = flow_traffic(44000, (10, 100, 1000, 1400))
    with Agent(pair.ns, ["-i", pair.ifname, *hook_args(mode), "--output", "json", "-t", "200"], env=pair.env) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, mode)
        assert a.proc is not None
        assert cap_sets(a.proc.pid) == {k: mask(LEAST) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
        send_frames(pair.peer_ns, pair.peer_if, t.frames)
        assert wait_seen(pair.ns, pair.ifname, t.packets)["seen"] == t.packets
        assert a.stop() == 0, a.err
    assert a.err == [attached_line(pair, mode)], a.err
    recs = a.records()
    summaries = check_accounting(recs, pair.ifname)
    assert summaries, "no full interval"
    assert aggregate(recs, pair.ifname, AGENT_IP4) == merged(t)
    assert our_prog_ids(pair.ns, pair.ifname) == {} and "clsact" not in qdisc_kinds(pair.ns, pair.ifname)


@pytest.mark.parametrize("missing", [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON], ids=lambda c: NAMES[c])
def test_missing_capability_is_named(pair: VethPair, with_caps, missing: int) -> None:  # type: ignore[no-untyped-def]
    with_caps(tuple(c for c in LEAST if c != missing))
    p = netns.xtrace(pair.ns, ["-i", pair.ifname, "-m", "tc", "-d", "both", "--count", "1", "-t", "100"], env=pair.env)
    assert "Traceback" not in p.stderr, p.stderr
    assert (p.returncode, p.stdout) == (2, ""), p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xtrace-catch: error: missing {NAMES[missing].upper()}: "), lines
    assert "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON" in lines[0]
    assert our_prog_ids(pair.ns, pair.ifname) == {} and "clsact" not in qdisc_kinds(pair.ns, pair.ifname)


def _sigkill_then_restart(pair: VethPair, mode: str) -> None:
    t = flow_traffic(45000, (20, 30))
    with Agent(pair.ns, ["-i", pair.ifname, *hook_args(mode), "-t", "200"], env=pair.env) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, mode)
        a.signal(signal.SIGKILL)
        assert a.wait() == -signal.SIGKILL
    stale = our_prog_ids(pair.ns, pair.ifname)
    assert set(stale) == {"xdp" if mode == "xdp" else "ingress"}
    with Agent(pair.ns, ["-i", pair.ifname, *hook_args(mode), "--output", "json", "-t", "200"], env=pair.env) as b:
        b.wait_stderr("xtrace-catch: ")
        assert b.proc is not None
        b.wait_stderr("attached to" if mode == "tc" else "loaded on")  # fails when the agent refused and exited
        send_frames(pair.peer_ns, pair.peer_if, t.frames)
        wait_seen(pair.ns, pair.ifname, t.packets)
        assert b.stop() == 0, b.err
    what = (f"XDP program (id {stale['xdp']}) on {pair.ifname}" if mode == "xdp" else
            f"TC filter on {pair.ifname} ingress")
    assert b.err == [f"xtrace-catch: replacing a stale xtrace-catch {what}", attached_line(pair, mode)], b.err
    assert aggregate(b.records(), pair.ifname, AGENT_IP4) == merged(t)
    assert our_prog_ids(pair.ns, pair.ifname) == {}


def test_restart_after_sigkill_tc(pair: VethPair, with_caps) -> None:  # type: ignore[no-untyped-def]
    with_caps(LEAST)
    _sigkill_then_restart(pair, "tc")


def test_restart_after_sigkill_xdp(pair: VethPair, with_caps) -> None:  # type: ignore[no-untyped-def]
    with_caps(LEAST)
    try:
        _sigkill_then_restart(pair, "xdp")
    finally:
        run(["ip", "-n", pair.ns, "link", "set", "dev", pair.ifname, "xdp", "off"], check=False)


def test_cleanup_after_sigkill_xdp(pair: VethPair, with_caps) -> None:  # type: ignore[no-untyped-def]
    with_caps(LEAST)
    try:
        with Agent(pair.ns, ["-i", pair.ifname, "-m", "xdp", "-t", "200"], env=pair.env) as a:
            assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
            a.signal(signal.SIGKILL)
            assert a.wait() == -signal.SIGKILL
        stale = our_prog_ids(pair.ns, pair.ifname)["xdp"]
        p = netns.xtrace(pair.ns, ["cleanup", "-i", pair.ifname], env=pair.env)
        assert (p.returncode, p.stdout) == (0, f"removed XDP program id {stale} from {pair.ifname}\n"), p
        assert our_prog_ids(pair.ns, pair.ifname) == {}
    finally:
        run(["ip", "-n", pair.ns, "link", "set", "dev", pair.ifname, "xdp", "off"], check=False)
