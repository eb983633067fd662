"""A long run with churning flows (kernel tier, root; marker ``soak``).

The agent runs at 100 ms intervals with --idle-timeout 1 and /metrics on, while a
bounded sender in the peer namespace starts new flows every tick (new source ports) and
keeps one long-lived flow going. Over the run:

- no fd leak: the agent's /proc/PID/fd count at the end equals the start, within 2;
- flat memory: VmRSS in the second half is within 10 MB of the first half;
- the kernel map is bounded by what idle eviction promises: at every interval,
  tracked_flows <= the flows active in the intervals less than one idle timeout back
  (read from the JSON summaries), and eviction really happens;
- the metric series held for /metrics stay bounded the same way;
- every packet is counted exactly once, and each interval's accounting holds.

`make soak` runs it for 10 minutes (XTRACE_SOAK_SECONDS=600); the normal suite for 60 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import frames as F
import pytest
from netns import AGENT_IP4, PEER_IP4, Agent, VethPair, in_ns, veth_pair, wait_seen
from test_e2e_run import Key, aggregate, check_accounting
from vm import http

pytestmark = [pytest.mark.kernel, pytest.mark.soak]

SECONDS = float(os.environ.get("XTRACE_SOAK_SECONDS", "60"))
INTERVAL_MS = 100
IDLE_S = 1.0
TICK_S = 0.1  # the sender starts NEW_PER_TICK new flows every tick
NEW_PER_TICK = 5
PACKETS_PER_FLOW = 2
LONG_SPORT = 999  # the long-lived flow, one packet per tick
# Source ports 1024.. are used in turn and come back after PORT_CYCLE flows (80 s): the 60 s
# run sees only new flows; the 10-minute one also flows that return long after their
# eviction, so the collector's bounded memory of evicted flows (for their totals) reaches
# its steady state early and the second half must be flat.
PORT_CYCLE = 4000
FD_SLACK = 2
RSS_SLACK_KB = 10 * 1024
PORT = 19437

_SENDER = r"""
import socket, sys, time
ifname, seconds, tick, per_tick, per_flow, long_sport, cycle = sys.argv[1], float(sys.argv[2]), \
    float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
tmpl = bytearray(bytes.fromhex(sys.stdin.read().strip()))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind((ifname, 0))
def send(sport, n):
    tmpl[34:36] = sport.to_bytes(2, "big")
    for _ in range(n):
        assert s.send(tmpl) == len(tmpl)
    return n
sent = ticks = 0
start = time.monotonic()
max_ticks = int(seconds / tick)
while ticks < max_ticks:  # bounded in count, and in time below
    for j in range(per_tick):
        sent += send(1024 + (ticks * per_tick + j) % cycle, per_flow)
    sent += send(long_sport, 1)
    ticks += 1
    wait = start + ticks * tick - time.monotonic()
    if wait > 0:
        time.sleep(min(wait, tick))
    if time.monotonic() - start > seconds * 1.5:
        break
print(sent, ticks, flush=True)
"""


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        in_ns(p.ns, ["ip", "link", "set", "lo", "up"])
        yield p


def fd_count(pid: int) -> int:
    """Open fds of `pid`, not counting transient ones: the least of a few reads 30 ms apart
    (each interval opens and closes a netlink socket and its helpers; a leak stays)."""
    counts = []
    for _ in range(5):
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.03)
    return min(counts)


def fd_list(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def eviction_bound(summaries: list[dict[str, object]], idle_s: float, slack_s: float = 0.02) -> list[int]:
    """Per interval k: the flows active in intervals j with now_k - now_j < idle_s (the
    collector evicts a flow whose last change is idle_s old), summed. Elapsed times are
    rounded to 1 ms in the summaries, hence the slack."""
    bounds = []
    for k in range(len(summaries)):
        total, back, j = 0, 0.0, k
        while j >= 0 and back < idle_s + slack_s:
            total += int(summaries[j]["active_flows"])  # type: ignore[call-overload]
            back += float(summaries[j]["elapsed_s"])  # type: ignore[arg-type]
            j -= 1
        bounds.append(total)
    return bounds


def test_soak_churning_flows(pair: VethPair) -> None:
    template = F.ether(F.ETH_P_IP, F.ipv4(F.IPPROTO_UDP, PEER_IP4, AGENT_IP4, F.udp(0, 5000, bytes(60))))
    args = ["-i", pair.ifname, "-m", "tc", "-d", "both", "--output", "json", "-t", str(INTERVAL_MS),
            "--idle-timeout", str(IDLE_S), "--metrics-addr", f"127.0.0.1:{PORT}"]
    samples: list[tuple[float, int, int]] = []  # (time since start, fds, rss kB)
    with Agent(pair.ns, args, env=pair.env) as a:
        a.wait_stderr("serving /metrics")
        assert a.proc is not None
        pid = a.proc.pid
        for _ in range(200):  # bounded: a few intervals in, so start-up allocations are done
            if sum(1 for line in list(a.out) if '"record":"summary"' in line) >= 5:
                break
            time.sleep(0.05)
        fds_start = fd_count(pid)
        fdl_start = fd_list(pid)
        sender = subprocess.Popen(
            ["ip", "netns", "exec", pair.peer_ns, sys.executable, "-c", _SENDER, pair.peer_if, str(SECONDS),
             str(TICK_S), str(NEW_PER_TICK), str(PACKETS_PER_FLOW), str(LONG_SPORT), str(PORT_CYCLE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert sender.stdin is not None
            sender.stdin.write(template.hex())
            sender.stdin.close()
            t0 = time.monotonic()
            for _ in range(int(SECONDS * 3) + 10):  # bounded: every second until the sender is done
                if sender.poll() is not None:
                    break
                assert a.proc.poll() is None, f"the agent died: {a.err}"
                samples.append((time.monotonic() - t0, fd_count(pid), rss_kb(pid)))
                time.sleep(1.0)
            sender.wait(timeout=SECONDS + 30)
            assert sender.stdout is not None
            out = sender.stdout.read()
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait(timeout=10)
            if sender.stdout is not None:
                sender.stdout.close()
        sent, ticks = (int(x) for x in out.split())
        assert ticks >= SECONDS / TICK_S * 0.5, f"the sender managed only {ticks} ticks"
        wait_seen(pair.ns, pair.ifname, sent, hook="ingress", timeout=30)
        status, body = http(pair.ns, "GET", f"http://127.0.0.1:{PORT}/metrics")
        assert status == 200
        fds_end = fd_count(pid)
        fdl_end = fd_list(pid)
        assert a.stop() == 0, a.err
    assert a.err == [f"xtrace-catch: TC program attached to {pair.ifname} (ingress, egress)",
                     f"xtrace-catch: serving /metrics on 127.0.0.1:{PORT}"], a.err

    # No fd leak.
    assert abs(fds_end - fds_start) <= FD_SLACK, (fds_start, fds_end, [s[1] for s in samples],
                                                  sorted(set(fdl_end) - set(fdl_start)))
    assert max(s[1] for s in samples) <= fds_start + FD_SLACK, [s[1] for s in samples]
    # Flat memory.
    half = len(samples) // 2
    assert half >= 5, samples
    first, second = max(s[2] for s in samples[:half]), max(s[2] for s in samples[half:])
    assert second - first <= RSS_SLACK_KB, f"VmRSS grew from {first} kB to {second} kB; samples {samples}"

    # Exact counts: every packet once, in its flow.
    recs = a.records()
    summaries = check_accounting(recs, pair.ifname)
    assert [s["interval"] for s in summaries] == list(range(1, len(summaries) + 1))
    got = aggregate(recs, pair.ifname, AGENT_IP4)  # also: a returning flow's totals continue
    want: dict[int, int] = defaultdict(int)
    for i in range(ticks * NEW_PER_TICK):
        want[1024 + i % PORT_CYCLE] += PACKETS_PER_FLOW
    want[LONG_SPORT] = ticks
    wire = len(template)
    assert {k: v[:2] for k, v in got.items()} == {
        Key("ingress", PEER_IP4, AGENT_IP4, sport, 5000, 17, "UDP"): (n, n * wire) for sport, n in want.items()}
    assert sum(n for n, *_ in got.values()) == sent
    flows = want
    assert summaries[-1]["packets_seen_total"] >= sent  # egress: nothing of its own is sent in the namespace

    # The kernel map holds no more than one idle timeout's worth of flows, and eviction works.
    bounds = eviction_bound(summaries, IDLE_S)
    over = [(s["interval"], s["tracked_flows"], b) for s, b in zip(summaries, bounds) if s["tracked_flows"] > b]
    assert not over, f"tracked_flows above what one idle timeout holds (interval, tracked, bound): {over[:10]}"
    evicted = sum(int(s["evicted_flows"]) for s in summaries)  # type: ignore[call-overload]
    assert evicted >= ticks * NEW_PER_TICK - max(bounds), (evicted, ticks * NEW_PER_TICK)
    peak = max(int(s["tracked_flows"]) for s in summaries)  # type: ignore[call-overload]
    assert peak <= (IDLE_S + 3 * INTERVAL_MS / 1000) / TICK_S * NEW_PER_TICK * 2 + 1, peak
    print(f"soak {SECONDS:.0f} s: {sent} packets, {ticks * NEW_PER_TICK} short flows on {len(flows) - 1} ports, "
          f"{len(summaries)} intervals; "
          f"fds {fds_start} -> {fds_end}; VmRSS max {first} kB (first half) / {second} kB (second half); "
          f"tracked_flows peak {peak}, evicted {evicted}")
    # The series the agent holds for /metrics follow the same bound.
    m = re.search(r"^xtrace_agent_series\{[^}]*\} (\d+)$", body.decode(), re.M)
    assert m, body[:2000]
    assert int(m[1]) <= peak + 1 + 16, (m[1], peak)  # + the long-lived flow, + overflow series at most
