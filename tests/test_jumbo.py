"""Jumbo MTU (RoCE fabrics run at 9000): a veth pair at MTU 9000, frames of 1,500, 4,000 and 8,900
bytes, counted exactly in XDP (auto, native, generic) and TC.

Where the kernel takes the multi-buffer program (xdp.frags, Linux >= 5.18) XDP attaches natively
at MTU 9000. The single-buffer program (older kernels, or XTRACE_XDP_FRAGS=off) is refused
natively above about a page of MTU ("Peer MTU is too large to set XDP", ERANGE): --xdp-mode auto
then falls back to generic with one line naming the kernel's reason; --xdp-mode native fails
with that reason and exit code 2, no traceback. Root; namespaces of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import AGENT_IP4, PEER_IP4, Agent, VethPair, run, send_frames, veth_pair, wait_seen, xdp_prog_name, xtrace
from test_e2e_run import INTERVAL, attached_line, check_accounting, flows_and_summaries, udp4

pytestmark = [pytest.mark.kernel, pytest.mark.kernels]  # in the make test-kernels subset too

MTU = 9000
SIZES = (1500, 4000, 8900)  # whole Ethernet frames, no FCS
PER_SIZE = 7


FRAGS = xdp_prog_name() != "xtrace_xdp"  # this kernel takes the multi-buffer program
needs_frags = pytest.mark.skipif(not FRAGS, reason="this kernel lacks xdp.frags (Linux < 5.18)")


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


def count(pair: VethPair, env: dict[str, str], *args: str) -> tuple[list[str], dict[int, tuple[int, int]]]:
    """Run the agent with `args`, send the frames, stop it: (its stderr lines, per source port
    (packets, bytes) over all intervals). The ledger must hold for packets and bytes."""
    fs = frames()
    with Agent(pair.ns, ["-i", pair.ifname, "--output", "json", "-t", INTERVAL, *args], env=env) as a:
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


PATHS = pytest.mark.parametrize("path", ["link", "netlink"])  # XTRACE_ATTACH: BPF links, or netlink


def env_for(pair: VethPair, path: str, frags: bool = True) -> dict[str, str]:
    env = pair.link_env if path == "link" else pair.env
    return {**env, "XTRACE_XDP_FRAGS": "auto" if frags else "off"}


@needs_frags
@PATHS
@pytest.mark.parametrize("mode", ["auto", "native"])
def test_xdp_attaches_natively_at_mtu_9000_and_counts_every_byte(jumbo: VethPair, mode: str, path: str) -> None:
    err, got = count(jumbo, env_for(jumbo, path), "-m", "xdp", "--xdp-mode", mode)
    assert got == WANT
    assert err == [attached_line(jumbo, "xdp")], err  # native: no "(generic mode)"
    link = run(["ip", "-n", jumbo.ns, "-d", "link", "show", jumbo.ifname]).stdout
    assert "xdpgeneric" not in link, link


@PATHS
def test_xdp_auto_falls_back_to_generic_naming_the_reason_and_counts_every_byte(jumbo: VethPair, path: str) -> None:
    """The single-buffer program (as on kernels without xdp.frags) is refused natively."""
    err, got = count(jumbo, env_for(jumbo, path, frags=False), "-m", "xdp")
    assert got == WANT
    assert len(err) == 2 and err[1] == attached_line(jumbo, "xdp") + " (generic mode)", err
    assert err[0].startswith(f"xtrace-catch: {jumbo.ifname} refused native XDP: "), err
    assert "MTU" in err[0] and "(ERANGE)" in err[0] and "using generic (SKB) mode" in err[0], err


@pytest.mark.parametrize("frags", [True, False], ids=["frags", "single-buffer"])
def test_xdp_generic_counts_every_byte(jumbo: VethPair, frags: bool) -> None:
    err, got = count(jumbo, env_for(jumbo, "link", frags), "-m", "xdp", "--xdp-mode", "generic")
    assert got == WANT
    assert err == [attached_line(jumbo, "xdp") + " (generic mode)"], err


@PATHS
def test_tc_counts_every_byte(jumbo: VethPair, path: str) -> None:
    err, got = count(jumbo, env_for(jumbo, path), "-m", "tc")
    assert got == WANT
    assert err == [attached_line(jumbo, "tc")], err


@PATHS
def test_xdp_native_refused_says_why_and_exits_2(jumbo: VethPair, path: str) -> None:
    """The single-buffer program, natively at MTU 9000: the kernel's reason, exit 2."""
    p = xtrace(jumbo.ns, ["-i", jumbo.ifname, "-m", "xdp", "--xdp-mode", "native", "--count", "1"],
               env=env_for(jumbo, path, frags=False))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"xtrace-catch: error: {jumbo.ifname} refused native XDP: "), lines
    assert "MTU" in lines[0] and "(ERANGE)" in lines[0] and "--xdp-mode auto or generic" in lines[0], lines
    link = run(["ip", "-n", jumbo.ns, "-d", "link", "show", jumbo.ifname]).stdout
    assert "prog/xdp" not in link and "xdpgeneric" not in link, link  # nothing left attached


@pytest.mark.parametrize("frags", [True, False], ids=["frags", "single-buffer"])
def test_version_and_verbose_name_the_xdp_program_and_why(jumbo: VethPair, frags: bool) -> None:
    """--version and -v say which XDP program runs here, and why when it is the single-buffer one."""
    want = ("multi-buffer (xdp.frags)" if FRAGS else "single-buffer (xdp; this kernel refused xdp.frags)") if frags \
        else "single-buffer (xdp; XTRACE_XDP_FRAGS=off)"
    env = env_for(jumbo, "link", frags)
    v = xtrace(jumbo.ns, ["--version"], env=env)
    assert v.returncode == 0, v.stderr
    assert f"XDP program: {want}" in v.stdout.splitlines(), v.stdout
    p = xtrace(jumbo.ns, ["-i", jumbo.ifname, "-m", "xdp", "--xdp-mode", "generic", "-v", "--count", "1", "-t", INTERVAL],
               env=env)
    assert p.returncode == 0, p.stderr
    assert f"XDP program: {want}" in p.stderr, p.stderr
