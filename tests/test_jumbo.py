"""Jumbo MTU (RoCE fabrics run at 9000): a veth pair at MTU 9000, frames of 1,500, 4,000 and 8,900
bytes, counted exactly in XDP (auto and generic) and TC. A veth refuses a non-frags XDP program
above about a page of MTU ("Peer MTU is too large to set XDP", ERANGE): --xdp-mode auto falls
back to generic with one line naming the kernel's reason; --xdp-mode native fails with that
reason and exit code 2, no traceback. Root; namespaces of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import AGENT_IP4, PEER_IP4, VethPair, run, send_frames, veth_pair, wait_seen, xtrace
from test_e2e_run import attached_line, check_accounting, flows_and_summaries, start_agent, udp4

pytestmark = pytest.mark.kernel

MTU = 9000
SIZES = (1500, 4000, 8900)  # whole Ethernet frames, no FCS
PER_SIZE = 7


@pytest.fixture
def jumbo(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        for ns, dev in ((p.ns, p.ifname), (p.peer_ns, p.peer_if)):
            run(["ip", "-n", ns, "link", "set", dev, "mtu", str(MTU)])
        yield p


def frames() -> list[bytes]:
    """PER_SIZE frames of each size, one UDP flow per size (source port = the size)."""
    out = []
    for size in SIZES:
        f = udp4(PEER_IP4, size, AGENT_IP4, 5000, size - 14 - 20 - 8)
        assert len(f) == size
        out += [f] * PER_SIZE
    return out


def count(pair: VethPair, *args: str) -> tuple[list[str], dict[int, tuple[int, int]]]:
    """Run the agent with `args`, send the frames, stop it: (its stderr lines, per source port
    (packets, bytes) over all intervals). The ledger must hold for packets and bytes."""
    fs = frames()
    with start_agent(pair, *args) as a:
        a.wait_stderr("loaded on" if "xdp" in args else "attached to")
        send_frames(pair.peer_ns, pair.peer_if, fs)
        assert wait_seen(pair.ns, pair.ifname, len(fs))["seen"] == len(fs)
        assert a.stop() == 0, a.err
    recs = a.records()
    check_accounting(recs, pair.ifname)
    fl, su = flows_and_summaries(recs)
    got: dict[int, tuple[int, int]] = {}
    for r in fl:
        if r["dst_port"] == 5000:
            p, b = got.get(int(r["src_port"]), (0, 0))  # type: ignore[arg-type]
            got[int(r["src_port"])] = (p + int(r["packets"]), b + int(r["bytes"]))  # type: ignore[arg-type]
    assert su[-1]["bytes_seen_total"] >= sum(len(f) for f in fs), su[-1]
    return a.err, got


WANT = {size: (PER_SIZE, PER_SIZE * size) for size in SIZES}


def test_xdp_auto_falls_back_to_generic_naming_the_reason_and_counts_every_byte(jumbo: VethPair) -> None:
    err, got = count(jumbo, "-m", "xdp")
    assert got == WANT
    assert len(err) == 2 and err[1] == attached_line(jumbo, "xdp") + " (generic mode)", err
    assert err[0].startswith(f"xtrace-catch: {jumbo.ifname} refused native XDP: "), err
    assert "MTU" in err[0] and "(ERANGE)" in err[0] and "using generic (SKB) mode" in err[0], err


def test_xdp_generic_counts_every_byte(jumbo: VethPair) -> None:
    err, got = count(jumbo, "-m", "xdp", "--xdp-mode", "generic")
    assert got == WANT
    assert err == [attached_line(jumbo, "xdp") + " (generic mode)"], err


def test_tc_counts_every_byte(jumbo: VethPair) -> None:
    err, got = count(jumbo, "-m", "tc")
    assert got == WANT
    assert err == [attached_line(jumbo, "tc")], err


def test_xdp_native_refused_says_why_and_exits_2(jumbo: VethPair) -> None:
    p = xtrace(jumbo.ns, ["-i", jumbo.ifname, "-m", "xdp", "--xdp-mode", "native", "--count", "1"], env=jumbo.env)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"xtrace-catch: error: {jumbo.ifname} refused native XDP: "), lines
    assert "MTU" in lines[0] and "(ERANGE)" in lines[0] and "--xdp-mode auto or generic" in lines[0], lines
    link = run(["ip", "-n", jumbo.ns, "-d", "link", "show", jumbo.ifname]).stdout
    assert "prog/xdp" not in link and "xdpgeneric" not in link, link  # nothing left attached
