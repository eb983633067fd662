"""Faults the agent must survive, each checked with exact counts (kernel tier, root).

- The watched interface is deleted while the agent runs, then an interface of that name
  returns (a new ifindex): the agent says so, keeps running, attaches again and counts
  exactly; link down/up needs nothing and counting continues.
- One agent per interface and hook: a second one on the same hook refuses to start and
  names the running one's pid; XDP and TC from two agents coexist; once the first exits
  a new one starts.
- The flow map fills up: the overflow table absorbs the excess exactly (per type and
  direction, packets and bytes), the accounting identity holds, idle eviction makes room
  again, and the CLI says FULL (summary line, JSON, /metrics).
- VictoriaMetrics answers 5xx for a while: the health metrics say what happened
  (failures, retries, nothing dropped) and every interval still arrives once; a server
  that never answers does not delay the intervals.

SIGKILL mid-run (leftovers cleaned at the next start) is covered by
test_e2e_run.py::test_sigkill_then_restart_replaces_stale and ::test_sigkill_then_cleanup_command;
VictoriaMetrics down at start / restarted by test_export_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import frames as F
import pytest
from conftest import reconcile
from netns import (
    AGENT_IP4,
    AGENT_MAC,
    PEER_IP4,
    PEER_MAC,
    SINK_IP4,
    SINK_MAC,
    TIME_SCALE,
    Agent,
    VethPair,
    _wait_oper_up,
    in_ns,
    our_prog_ids,
    run,
    send_frames,
    tc_filters,
    veth_pair,
    wait_seen,
    xdp_prog,
    xtrace,
)
from test_e2e_run import Key, Traffic, aggregate, attached_line, check_accounting, udp4
from test_export_e2e import NsProcess
from vm import http

from xtrace_catch.kernel import libbpf
from xtrace_catch.export.health import Export
from xtrace_catch.flows.collector import Collector
from xtrace_catch.kernel.datapath import PROG_TC_EGRESS, PROG_XDP, Datapath, DatapathConfig
from xtrace_catch.kernel.layout import STATS_FIELDS, TYPE_SLOTS, TrafficType
from xtrace_catch.settings import ExportSettings, Settings

kernel = pytest.mark.kernel

INTERVAL = "200"
WAIT = 20.0  # bound for any one wait, seconds


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        yield p


def ifindex(ns: str, ifname: str) -> int:
    return int(json.loads(run(["ip", "-j", "-n", ns, "link", "show", ifname]).stdout)[0]["ifindex"])


def recreate_veth(p: VethPair) -> None:
    """The pair's veth again, configured as veth_pair() made it (a new ifindex)."""
    run(["ip", "-n", p.ns, "link", "add", p.ifname, "address", AGENT_MAC, "type", "veth",
         "peer", "name", p.peer_if, "address", PEER_MAC, "netns", p.peer_ns])
    run(["ip", "-n", p.ns, "addr", "add", f"{AGENT_IP4}/24", "dev", p.ifname])
    run(["ip", "-n", p.peer_ns, "addr", "add", f"{PEER_IP4}/24", "dev", p.peer_if])
    for name, dev, ip, mac in ((p.ns, p.ifname, PEER_IP4, PEER_MAC), (p.peer_ns, p.peer_if, AGENT_IP4, AGENT_MAC),
                               (p.ns, p.ifname, SINK_IP4, SINK_MAC)):
        run(["ip", "-n", name, "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent"])
    run(["ip", "-n", p.ns, "link", "set", p.ifname, "up"])
    run(["ip", "-n", p.peer_ns, "link", "set", p.peer_if, "up"])
    _wait_oper_up(p.ns, p.ifname)
    _wait_oper_up(p.peer_ns, p.peer_if)


def flow_traffic(sport: int, sizes: tuple[int, ...]) -> Traffic:
    t = Traffic()
    k = Key("ingress", PEER_IP4, AGENT_IP4, sport, 5000, 17, "UDP")
    for size in sizes:
        t.add(k, udp4(PEER_IP4, sport, AGENT_IP4, 5000, size))
    return t


def merged(*ts: Traffic) -> dict[Key, tuple[int, int, int, dict[str, int]]]:
    """Expected aggregate of several Traffic sends (a flow sent twice adds up)."""
    acc: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    for t in ts:
        for k, c in t.expected.items():
            acc[k][0] += c.packets
            acc[k][1] += c.bytes
    return {k: (p, b, 0, {}) for k, (p, b) in acc.items()}


STATE_NOTE = re.compile(r"^xtrace-catch: xta\d+ is (\S+; programs stay attached, counting resumes when it is up|"
                        r"UP again)$")


def assert_lines_in_order(err: list[str], want: list[str]) -> None:
    """`want` appears in `err` in this order; every other line is a link-state note."""
    it = iter(want)
    nxt = next(it, None)
    for line in err:
        if line == nxt:
            nxt = next(it, None)
        else:
            assert STATE_NOTE.match(line), f"unexpected stderr line {line!r} in {err}"
    assert nxt is None, f"missing {nxt!r} in stderr {err}"


def agent_args(p: VethPair, mode: str, *extra: str) -> list[str]:
    hook = ["-m", "xdp"] if mode == "xdp" else ["-m", "tc", "-d", "ingress"]
    return ["-i", p.ifname, "--output", "json", "-t", INTERVAL, *hook, *extra]


# -- the interface goes away and comes back ----------------------------------------------------


@kernel
@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_interface_deleted_then_returns_counts_exactly(pair: VethPair, mode: str) -> None:
    before = flow_traffic(41000, (10, 100, 1000))
    after = flow_traffic(41001, (20, 200))
    again = flow_traffic(41000, (30,))  # the first flow again: its totals continue
    old_index = ifindex(pair.ns, pair.ifname)
    with Agent(pair.ns, agent_args(pair, mode), env=pair.env) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, mode)
        send_frames(pair.peer_ns, pair.peer_if, before.frames)
        wait_seen(pair.ns, pair.ifname, before.packets)
        run(["ip", "-n", pair.ns, "link", "del", pair.ifname])  # takes the peer end with it
        a.wait_stderr("disappeared")
        assert a.proc is not None and a.proc.poll() is None, "the agent exited when its interface went away"
        recreate_veth(pair)
        new_index = ifindex(pair.ns, pair.ifname)
        assert new_index != old_index
        a.wait_stderr("is back")
        send_frames(pair.peer_ns, pair.peer_if, after.frames + again.frames)
        # The same loaded programs count on: the stats carry on from before the deletion.
        n = before.packets + after.packets + again.packets
        assert wait_seen(pair.ns, pair.ifname, n)["seen"] == n
        assert a.stop() == 0, a.err
    assert_lines_in_order(a.err, [
        attached_line(pair, mode),
        f"xtrace-catch: {pair.ifname} disappeared; still running, will attach again when it returns",
        attached_line(pair, mode),
        f"xtrace-catch: {pair.ifname} is back (ifindex {new_index}): attached again",
    ])
    recs = a.records()
    summaries = check_accounting(recs, pair.ifname)
    assert aggregate(recs, pair.ifname, AGENT_IP4) == merged(before, after, again)
    assert summaries[-1]["packets_seen_total"] == n
    # Detached on exit from the returned interface too; no state file left for it.
    assert our_prog_ids(pair.ns, pair.ifname) == {}
    assert sorted(p.name for p in pair.state_dir.glob("*")) == []


@kernel
@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_link_down_up_counting_continues(pair: VethPair, mode: str) -> None:
    before = flow_traffic(42000, (10, 500))
    after = flow_traffic(42001, (60, 70, 80))
    with Agent(pair.ns, agent_args(pair, mode), env=pair.env) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, mode)
        ids = our_prog_ids(pair.ns, pair.ifname)
        send_frames(pair.peer_ns, pair.peer_if, before.frames)
        wait_seen(pair.ns, pair.ifname, before.packets)
        run(["ip", "-n", pair.ns, "link", "set", pair.ifname, "down"])
        a.wait_stderr(f"{pair.ifname} is DOWN")
        run(["ip", "-n", pair.ns, "link", "set", pair.ifname, "up"])
        _wait_oper_up(pair.ns, pair.ifname)
        _wait_oper_up(pair.peer_ns, pair.peer_if)
        a.wait_stderr("UP again")
        assert our_prog_ids(pair.ns, pair.ifname) == ids, "down/up changed what is attached"
        send_frames(pair.peer_ns, pair.peer_if, after.frames)
        n = before.packets + after.packets
        assert wait_seen(pair.ns, pair.ifname, n)["seen"] == n
        assert a.stop() == 0, a.err
    assert_lines_in_order(a.err, [
        attached_line(pair, mode),
        f"xtrace-catch: {pair.ifname} is DOWN; programs stay attached, counting resumes when it is up",
        f"xtrace-catch: {pair.ifname} is UP again",
    ])
    recs = a.records()
    check_accounting(recs, pair.ifname)
    assert aggregate(recs, pair.ifname, AGENT_IP4) == merged(before, after)


# -- one agent per interface and hook -------------------------------------------------------


def refused(p: VethPair, args: list[str], pid: int, hook: str) -> None:
    """A second agent with `args` refuses: exit 2 (the user can stop the first), one line naming the running agent's pid."""
    r = xtrace(p.ns, ["-i", p.ifname, "-t", "100", "--count", "1", *args], env=p.env)
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.splitlines() == [
        f"xtrace-catch: error: another xtrace-catch (pid {pid}) is already watching {p.ifname} ({hook}); "
        f"stop it first (kill {pid}), or watch another hook"], r.stderr


@kernel
def test_second_agent_on_the_same_hook_refuses_and_names_the_first(pair: VethPair) -> None:
    t1, t2, t3 = flow_traffic(43000, (10, 20)), flow_traffic(43001, (30,)), flow_traffic(43002, (40, 50, 60))
    with Agent(pair.ns, agent_args(pair, "xdp"), env=pair.env) as ax, \
            Agent(pair.ns, ["-i", pair.ifname, "--output", "json", "-t", INTERVAL, "-m", "tc", "-d", "egress"],
                  env=pair.env) as ae:
        assert ax.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        assert ae.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc", "egress")
        assert ax.proc is not None and ae.proc is not None
        ids = our_prog_ids(pair.ns, pair.ifname)
        assert set(ids) == {"xdp", "egress"}
        refused(pair, ["-m", "xdp"], ax.proc.pid, "xdp")
        # Overlapping on one hook only: it took tc-ingress, then met the egress lock; it
        # must undo its ingress filter and leave the running agent's egress one alone.
        refused(pair, ["-m", "tc", "-d", "both"], ae.proc.pid, "tc-egress")
        refused(pair, ["-m", "tc", "-d", "egress"], ae.proc.pid, "tc-egress")
        assert our_prog_ids(pair.ns, pair.ifname) == ids
        assert tc_filters(pair.ns, pair.ifname, "ingress") == []
        # XDP and TC ingress from two agents: allowed, and both count the same frames.
        with Agent(pair.ns, agent_args(pair, "tc"), env=pair.env) as ai:
            assert ai.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc")
            send_frames(pair.peer_ns, pair.peer_if, t1.frames)
            wait_seen(pair.ns, pair.ifname, t1.packets, hook="xdp")
            wait_seen(pair.ns, pair.ifname, t1.packets, hook="ingress")
            assert ai.stop() == 0, ai.err
        assert ai.err == [attached_line(pair, "tc")]
        assert aggregate(ai.records(), pair.ifname, AGENT_IP4) == merged(t1)
        # The first agent never noticed anything: it keeps counting.
        send_frames(pair.peer_ns, pair.peer_if, t2.frames)
        wait_seen(pair.ns, pair.ifname, t1.packets + t2.packets, hook="xdp")
        assert our_prog_ids(pair.ns, pair.ifname) == ids
        assert ax.stop() == 0 and ae.stop() == 0
    assert ax.err == [attached_line(pair, "xdp")] and ae.err == [attached_line(pair, "tc", "egress")]
    check_accounting(ax.records(), pair.ifname)
    assert aggregate(ax.records(), pair.ifname, AGENT_IP4) == merged(t1, t2)
    # Once the first has exited, a new agent on that hook starts and counts.
    with Agent(pair.ns, agent_args(pair, "xdp"), env=pair.env) as an:
        assert an.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        send_frames(pair.peer_ns, pair.peer_if, t3.frames)
        wait_seen(pair.ns, pair.ifname, t3.packets, hook="xdp")
        assert an.stop() == 0
    assert an.err == [attached_line(pair, "xdp")]
    assert aggregate(an.records(), pair.ifname, AGENT_IP4) == merged(t3)
    assert our_prog_ids(pair.ns, pair.ifname) == {} and xdp_prog(pair.ns, pair.ifname) is None


@kernel
def test_lock_of_a_killed_agent_does_not_block_the_next(pair: VethPair) -> None:
    """flock dies with its process: after SIGKILL the next agent on that hook starts (it
    replaces the stale program, as test_e2e_run.py::test_sigkill_then_restart_replaces_stale checks)."""
    with Agent(pair.ns, agent_args(pair, "tc"), env=pair.env) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc")
        a.signal(signal.SIGKILL)
        assert a.wait() == -signal.SIGKILL
    r = xtrace(pair.ns, agent_args(pair, "tc", "--count", "1"), env=pair.env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"xtrace-catch: replacing a stale xtrace-catch TC filter on {pair.ifname} ingress", attached_line(pair, "tc")]
    assert our_prog_ids(pair.ns, pair.ifname) == {}


# -- flow map pressure (BPF_PROG_TEST_RUN) ----------------------------------------------------

CAPACITY = 65536
N_FLOWS = 200_000
KINDS = ("tcp4", "udp6", "icmp6", "roce_v2", "roce_v1", "other6")
KIND_TYPE = {"tcp4": TrafficType.TCP, "udp6": TrafficType.UDP, "icmp6": TrafficType.ICMP,
             "roce_v2": TrafficType.ROCE_V2, "roce_v1": TrafficType.ROCE_V1, "other6": TrafficType.OTHER}
KIND_OPS = {"roce_v2": {"op_write": 1}, "roce_v1": {"op_send": 1}}


class DistinctFlows:
    """Frame j of each kind is a flow no other frame shares (ports, addresses or QP differ).
    Frames are a template with a few bytes patched: 200k of them build in well under a second."""

    def __init__(self) -> None:
        self.tmpl = {
            "tcp4": F.ether(F.ETH_P_IP, F.ipv4(F.IPPROTO_TCP, "198.51.100.1", "203.0.113.2", F.tcp(0, 443, bytes(10)))),
            "udp6": F.ether(F.ETH_P_IPV6, F.ipv6(F.IPPROTO_UDP, "2001:db8::1", "2001:db8::2",
                                                 F.udp(0, 53000, bytes(50)))),
            "icmp6": F.ether(F.ETH_P_IPV6, F.ipv6(F.IPPROTO_ICMPV6, "2001:db8:1::", "2001:db8::2", F.icmpv6())),
            "roce_v2": F.ether(F.ETH_P_IP, F.ipv4(F.IPPROTO_UDP, "198.51.100.1", "203.0.113.2",
                                                 F.roce_v2(F.OP_WRITE_ONLY, 0, bytes(100)))),
            "roce_v1": F.ether(F.ETH_P_ROCE, F.roce_v1(F.OP_SEND_ONLY, 0, bytes(30))),
            "other6": F.ether(F.ETH_P_IPV6, F.ipv6(F.IPPROTO_NONE, "2001:db8:2::", "2001:db8::2", bytes(8))),
        }

    def frame(self, kind: str, j: int) -> bytes:
        f = bytearray(self.tmpl[kind])
        if kind == "tcp4":  # source port (j < 65536)
            f[34:36] = j.to_bytes(2, "big")
        elif kind == "udp6":
            f[54:56] = j.to_bytes(2, "big")
        elif kind in ("icmp6", "other6"):  # the low 32 bits of the source address
            f[34:38] = j.to_bytes(4, "big")
        elif kind == "roce_v2":  # BTH destination QP
            f[14 + 20 + 8 + 5:14 + 20 + 8 + 8] = j.to_bytes(3, "big")
        else:
            f[14 + 40 + 5:14 + 40 + 8] = j.to_bytes(3, "big")
        return bytes(f)

    def nth(self, i: int) -> tuple[str, bytes]:
        kind = KINDS[i % len(KINDS)]
        return kind, self.frame(kind, i // len(KINDS) + 1)


def overflow_by_type(dp: object) -> dict[tuple[int, TrafficType], tuple[int, int, dict[str, int]]]:
    ov = dp.read_overflow()  # type: ignore[attr-defined]
    out = {}
    for d in range(2):
        for t in range(TYPE_SLOTS):
            v = ov[d, t]
            if any(int(x) for x in v.tolist()):
                ops = {n: int(v[n]) for n in v.dtype.names if n not in ("packets", "bytes") and int(v[n])}
                out[(d, TrafficType(t))] = (int(v["packets"]), int(v["bytes"]), ops)
    return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@kernel
@pytest.mark.parametrize("prog", [PROG_XDP, PROG_TC_EGRESS], ids=["xdp", "tc_egress"])
def test_flow_map_full_overflow_exact_then_eviction_makes_room(prog: str) -> None:
    dp = Datapath(DatapathConfig(programs=frozenset({prog}), max_flows=CAPACITY))
    try:
        _map_pressure(dp, prog)
    finally:
        dp.close()


def _map_pressure(dp: Datapath, prog: str) -> None:
    direction = 1 if prog == PROG_TC_EGRESS else 0
    lib = libbpf.get()
    fd = dp.prog_fd(prog)
    gen = DistinctFlows()
    # (direction, type) -> [packets, bytes, {counter: n}]
    want_over: dict[tuple[int, TrafficType], tuple[list[int], dict[str, int]]] = defaultdict(
        lambda: ([0, 0], defaultdict(int)))
    counted = [0, 0]

    def overflowed(kind: str, f: bytes, times: int) -> None:
        pb, ops = want_over[(direction, KIND_TYPE[kind])]
        pb[0] += times
        pb[1] += times * len(f)
        for op, c in KIND_OPS.get(kind, {}).items():
            ops[op] += c * times

    for i in range(N_FLOWS):
        kind, f = gen.nth(i)
        lib.prog_test_run(fd, f)
        if i < CAPACITY:  # the first CAPACITY distinct keys fill the map, exactly
            counted[0] += 1
            counted[1] += len(f)
        else:
            overflowed(kind, f, 1)
    # A full map still counts the flows it holds, and sends new ones to overflow again.
    for i in (0, 1, 2, 3, 4, 5, CAPACITY - 1):
        kind, f = gen.nth(i)
        lib.prog_test_run(fd, f, repeat=3)
        counted[0] += 3
        counted[1] += 3 * len(f)
    for i in (CAPACITY, N_FLOWS - 1):
        kind, f = gen.nth(i)
        lib.prog_test_run(fd, f, repeat=2)
        overflowed(kind, f, 2)
    st = dp.read_stats()
    seen = N_FLOWS + 7 * 3 + 2 * 2
    over_p = sum(pb[0] for pb, _ops in want_over.values())
    over_b = sum(pb[1] for pb, _ops in want_over.values())
    assert over_p == N_FLOWS - CAPACITY + 4
    assert {k: int(st[k]) for k in STATS_FIELDS} == {
        "seen": seen, "counted": counted[0], "filtered": 0, "truncated": 0, "overflowed": over_p,
        "seen_bytes": counted[1] + over_b, "counted_bytes": counted[1], "filtered_bytes": 0, "truncated_bytes": 0,
        "overflowed_bytes": over_b}
    # Exactly the excess, per type and direction, packets, bytes and RoCE opcode counts.
    assert overflow_by_type(dp) == {k: (pb[0], pb[1], dict(ops)) for k, (pb, ops) in want_over.items()}
    assert set(want_over) == {(direction, t) for t in KIND_TYPE.values()}
    reconcile(dp)

    # The collector, on a clock the test moves: every flow is idle after the timeout and
    # leaves the kernel map; its counts stay in the totals.
    clock = FakeClock()
    col = Collector(dp, idle_timeout=5.0, clock=clock)  # type: ignore[arg-type]
    iv = col.collect()
    assert (iv.flows_tracked, iv.evicted, len(iv.keys)) == (CAPACITY, 0, CAPACITY)
    assert int(iv.totals[:, 0].sum()) == counted[0]
    assert iv.stats_total["overflowed"] == over_p
    clock.now += 4.9
    iv = col.collect()
    assert (iv.flows_tracked, iv.evicted, len(iv.keys)) == (CAPACITY, 0, 0)  # not idle long enough yet
    clock.now += 0.1
    iv = col.collect()
    assert (iv.flows_tracked, iv.evicted, len(iv.keys)) == (0, CAPACITY, 0)
    assert col.evicted_total == CAPACITY
    keys, _vals = dp.read_flows()
    assert len(keys) == 0

    # New flows fit again: counted, not overflowed.
    fresh = [gen.frame(KINDS[i % len(KINDS)], 40000 + i // len(KINDS)) for i in range(3000)]
    for f in fresh:
        lib.prog_test_run(fd, f)
    clock.now += 1.0
    iv = col.collect()
    assert (iv.flows_tracked, len(iv.keys), iv.evicted) == (3000, 3000, 0)
    assert (iv.stats_delta["seen"], iv.stats_delta["counted"], iv.stats_delta["overflowed"]) == (3000, 3000, 0)
    assert (iv.packets, iv.bytes) == (3000, sum(map(len, fresh)))
    assert not iv.overflow_delta.any()
    # A flow evicted earlier that comes back continues its totals (1 + 3 before, 1 now).
    _kind, f0 = gen.nth(0)
    lib.prog_test_run(fd, f0)
    clock.now += 1.0
    iv = col.collect()
    assert len(iv.keys) == 1 and int(iv.delta[0, 0]) == 1 and int(iv.totals[0, 0]) == 5
    # The identity still holds: the map holds what was counted since the eviction.
    st = dp.read_stats()
    assert int(st["seen"]) == seen + 3001 == int(st["counted"]) + int(st["overflowed"])
    assert int(st["overflowed"]) == over_p
    _keys, vals = dp.read_flows()
    assert int(vals["packets"].sum()) == int(st["counted"]) - counted[0] == 3001


# -- the CLI when the map is full --------------------------------------------------------------


@kernel
def test_cli_max_flows_full_says_so_everywhere(pair: VethPair) -> None:
    in_ns(pair.ns, ["ip", "link", "set", "lo", "up"])
    port, cap, n = 19436, 1024, 3000
    frames = [udp4(PEER_IP4, 10000 + i, AGENT_IP4, 5000, i % 50) for i in range(n)]
    url = f"http://127.0.0.1:{port}/metrics"
    common = f'interface="{pair.ifname}",host_ip="{AGENT_IP4}",collect_agg="default"'
    # The interval is longer than a /metrics poll can take (seconds each in an emulated guest).
    with Agent(pair.ns, ["-i", pair.ifname, "-m", "xdp", "-t", str(int(2000 * TIME_SCALE)), "--max-flows", str(cap),
                         "--metrics-addr", f"127.0.0.1:{port}"], env=pair.env) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        a.wait_stderr("serving /metrics")
        send_frames(pair.peer_ns, pair.peer_if, frames)
        wait_seen(pair.ns, pair.ifname, n)
        # The interval that counted the overflow is the one /metrics shows first with the
        # full total: map_full says 1 there (it is per interval).
        body = ""
        deadline = time.monotonic() + WAIT
        for _ in range(2000):
            status, raw = http(pair.ns, "GET", url)
            body = raw.decode()
            if f"xtrace_agent_packets_overflowed_total{{{common}}} {n - cap}\n" in body:
                break
            assert time.monotonic() < deadline, f"/metrics never showed {n - cap} overflowed packets: {body}"
            time.sleep(0.02)
        lines = body.splitlines()
        assert f"xtrace_agent_map_full{{{common}}} 1" in lines
        assert f"xtrace_agent_map_capacity{{{common}}} {cap}" in lines
        mem = [int(ln.split()[-1]) for ln in lines if ln.startswith(f"xtrace_agent_map_memory_bytes{{{common}}} ")]
        assert len(mem) == 1 and cap * (48 + 96) <= mem[0] < cap * (48 + 96 + 200), mem
        assert f"xtrace_agent_flows_tracked{{{common}}} {cap}" in lines
        assert f"xtrace_agent_packets_counted_total{{{common}}} {cap}" in lines
        # The byte ledger on /metrics: seen = counted + filtered + truncated + overflowed, and all seen.
        ledger = {k: int(ln.split()[-1]) for k in ("seen", "counted", "filtered", "truncated", "overflowed")
                  for ln in lines if ln.startswith(f"xtrace_agent_bytes_{k}_total{{{common}}} ")}
        assert ledger["seen"] == sum(len(f) for f in frames), ledger
        assert ledger["seen"] == ledger["counted"] + ledger["filtered"] + ledger["truncated"] + ledger["overflowed"]
        assert ledger["overflowed"] > 0, ledger
        ovf = [ln for ln in lines if ln.startswith('xtrace_network_packets_total{src_ip="overflow"')]
        assert len(ovf) == 1 and 'traffic_type="UDP",direction="ingress"' in ovf[0] and ovf[0].endswith(f" {n - cap}")
        assert a.stop() == 0, a.err
    summaries = [ln for ln in a.out if ln.startswith("--- interval ")]
    flow_lines = [ln for ln in a.out if not ln.startswith("--- interval ")]
    assert sum(int(re.search(r" packets=(\d+) ", ln)[1]) for ln in flow_lines) == cap  # type: ignore[index]
    over = [int(re.search(r" overflowed=(\d+) ", s)[1]) for s in summaries]  # type: ignore[index]
    assert sum(over) == n - cap
    full = [s for s, o in zip(summaries, over) if o]
    assert full and all(s.endswith(f"tracked={cap}/{cap} (flow map FULL: overflowed packets are counted per type only)")
                        for s in full), full
    assert all("FULL" not in s for s, o in zip(summaries, over) if not o)


@kernel
def test_json_summary_reports_overflow(pair: VethPair) -> None:
    cap, n = 1024, 1100
    frames = [udp4(PEER_IP4, 20000 + i, AGENT_IP4, 5000, 10) for i in range(n)]
    with Agent(pair.ns, ["-i", pair.ifname, "-m", "tc", "--output", "json", "-t", INTERVAL, "--max-flows", str(cap)],
               env=pair.env) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc")
        send_frames(pair.peer_ns, pair.peer_if, frames)
        wait_seen(pair.ns, pair.ifname, n)
        # What bpftool says of the running agent's flow map (maps are not per namespace).
        shown = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True,
                                          check=True).stdout)
        memlock = {m["bytes_memlock"] for m in shown if m.get("name") == "flows" and m["max_entries"] == cap}
        assert a.stop() == 0
    recs = a.records()
    su = check_accounting(recs, pair.ifname)
    # The summary names the flow map's kernel memory, as bpftool does: one shared value per flow
    # (key 48 + value 96 bytes + the kernel's element header), not one per CPU.
    assert {s["map_memory_bytes"] for s in su} <= memlock, (su[-1]["map_memory_bytes"], memlock)
    assert cap * (48 + 96) <= su[-1]["map_memory_bytes"] < cap * (48 + 96 + 200)
    # How the agent read the map: through the iterator where this kernel loads it (as a datapath
    # loaded here finds), else batch lookups.
    with Datapath(DatapathConfig(programs=frozenset({PROG_XDP}), max_flows=1024)) as dp:
        assert {s["map_reads"] for s in su} == {dp.flow_reads}
    assert su[-1]["packets_overflowed_total"] == n - cap == sum(s["packets_overflowed"] for s in su)
    assert sum(s["bytes_overflowed"] for s in su) == (n - cap) * len(frames[0])
    assert max(s["tracked_flows"] for s in su) == cap and su[-1]["map_capacity"] == cap


# -- VictoriaMetrics answering 5xx, or never answering ---------------------------------------

_FLAKY = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
fail = int(sys.argv[2])
n = 0
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        global n
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        n += 1
        status = 503 if n <= fail else 204
        print("POST", status, flush=True)
        if status == 204:
            for line in body.decode().splitlines():
                print("B", line, flush=True)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
srv = HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("READY", flush=True)
srv.serve_forever()
"""

_HANG = r"""
import socket, sys, threading, time
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("READY", flush=True)
held = []
for _ in range(100):  # bounded: never more connections than that
    c, _a = srv.accept()
    held.append(c)
    c.settimeout(5)
    try:
        data = c.recv(65536)
    except OSError:
        data = b""
    if data.startswith(b"POST"):
        print("POST", flush=True)
    # never answer; the socket stays open until the process is killed
"""


def _sample(line: str) -> tuple[str, float, int]:
    """'name{labels} value ts' -> (name, value, ts)."""
    name = line.split("{", 1)[0].split(" ", 1)[0]
    parts = line.rsplit(" ", 2)
    return name, float(parts[1]), int(parts[2])


@kernel
def test_5xx_outage_health_metrics_tell_what_happened(pair: VethPair) -> None:
    in_ns(pair.ns, ["ip", "link", "set", "lo", "up"])
    port, fails, count, n = 18429, 3, 30, 13
    url = f"http://127.0.0.1:{port}/api/v1/import/prometheus"
    srv = NsProcess(pair.ns, _FLAKY, str(port), str(fails))
    try:
        srv.wait_line("READY")
        with Agent(pair.ns, ["run", "-i", pair.ifname, "-m", "tc", "-t", INTERVAL, "--count", str(count),
                             "--vm-enabled", "--vm-url", url], env=pair.env) as a:
            a.wait_stderr("TC program attached")
            frames = [udp4(PEER_IP4, 40000, AGENT_IP4, 5000, 100) for _ in range(n)]
            send_frames(pair.peer_ns, pair.peer_if, frames)
            wait_seen(pair.ns, pair.ifname, n)
            assert a.wait(timeout=count * 0.2 + WAIT) == 0, a.err
    finally:
        srv.kill()
    statuses = [line.split()[1] for line in srv.lines if line.startswith("POST ")]
    assert statuses[:fails] == ["503"] * fails and set(statuses[fails:]) == {"204"}
    samples = [_sample(line[2:]) for line in srv.lines if line.startswith("B ")]
    by: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for name, value, ts in samples:
        by[name].append((ts, value))
    # Every interval arrived, once: the outage lost and doubled nothing.
    ts = [t for t, _v in by["xtrace_agent_flows_tracked"]]
    assert len(ts) == len(set(ts)) == count
    assert max(by["xtrace_network_packets_total"])[1] == n
    assert sum(v for _t, v in by["xtrace_network_flow_packets"]) == n
    last = {name: max(vals)[1] for name, vals in by.items()}
    assert last["xtrace_agent_push_failures_total"] == fails
    assert last["xtrace_agent_push_retries_total"] == fails
    assert last["xtrace_agent_samples_dropped_total"] == 0
    assert last["xtrace_agent_push_successes_total"] > 0
    assert not [line for line in a.err if "Traceback" in line or "ERROR" in line], a.err


@kernel
def test_hung_server_does_not_delay_intervals(pair: VethPair) -> None:
    """Pushes hang (the server reads and never answers) while intervals keep their cadence."""
    in_ns(pair.ns, ["ip", "link", "set", "lo", "up"])
    port = 18430
    url = f"http://127.0.0.1:{port}/api/v1/write"
    srv = NsProcess(pair.ns, _HANG, str(port))
    try:
        srv.wait_line("READY")
        with Agent(pair.ns, ["run", "-i", pair.ifname, "-m", "xdp", "-t", "100", "--vm-enabled", "--vm-url", url],
                   env=pair.env) as a:
            a.wait_stderr("pushing metrics")
            srv.wait_line("POST")  # a push is in flight and will not be answered
            start = sum(1 for line in list(a.out) if line.startswith("--- interval "))
            t0 = time.monotonic()
            time.sleep(3.0)  # the bounded window in which intervals are counted
            done = sum(1 for line in list(a.out) if line.startswith("--- interval ")) - start
            window = time.monotonic() - t0
            # 100 ms intervals: ~30 in the window. Generous: a third of that.
            assert done >= window / 0.1 / 3, f"{done} intervals in {window:.1f} s while a push hangs"
            assert a.proc is not None and a.proc.poll() is None
            assert a.stop(timeout=40) == 0, a.err
    finally:
        srv.kill()


def test_stop_is_bounded_while_a_push_hangs() -> None:
    """Pure tier. At SIGTERM a push in flight to a server that never answers is given up
    after the exit deadline (5 s in all for the last pushes), not after its own HTTP
    timeout (120 s here): the agent must detach and exit while a VictoriaMetrics hangs."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    posts: list[bytes] = []

    def accept() -> None:
        for _ in range(10):  # bounded
            try:
                c, _a = srv.accept()
            except OSError:
                return
            held.append(c)
            c.settimeout(5)
            try:
                posts.append(c.recv(65536))
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/api/v1/import/prometheus"
    settings = Settings(interface="xta0", export=ExportSettings(vm_enabled=True, vm_url=url, push_timeout_s=120.0))

    async def main() -> None:
        ex = Export(settings, "xta0", AGENT_IP4)
        await ex.start(lambda msg: None)
        ex.publish(ex.samples_batch(1, time.time(), [("xtrace_agent_t", "gauge", "t", {"interface": "xta0"}, 1.0)]))
        for _ in range(1000):  # bounded: until the push is in flight
            if posts:
                break
            await asyncio.sleep(0.01)
        assert posts and posts[0].startswith(b"POST "), posts
        await asyncio.wait_for(ex.stop(), timeout=30)  # raises if stop() waits for the 120 s timeout

    try:
        asyncio.run(main())
    finally:
        try:
            srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close() alone would not)
        except OSError:
            pass
        srv.close()
        for c in held:
            c.close()
        thread.join(5)
