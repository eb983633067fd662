"""`--output table`: the live view.

Pure tier: ``render()`` is a pure function of a ViewState, so an Interval built by hand
(the collector's shape: FLOW_KEY records, (n, 12) uint64 counters, stats dicts, a
(2, 8, 12) overflow table) is rendered into a recording rich Console at a fixed width and
compared with an exact string; then widths, the "... N more flows" line, MAP FULL, the
bypass line and the type colours.

Kernel tier (root): the CLI with ``--output table`` and stdout a pipe falls back to text
lines and says so on stderr; and once for real in a tmux pane of 80x24 (then resized to
100 columns) while UDP frames arrive on a veth from the peer namespace.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import frames as F
import numpy as np
import pytest
from netns import AGENT_IP4, PEER_IP4, Agent, VethPair, send_frames, veth_pair, wait_seen, xtrace_cmd
from rich.console import Console

from xtrace_catch.flows.collector import NV, Collector, Interval, V
from xtrace_catch.flows.live import TYPE_STYLE, ViewState, decode_flows, rate, render
from xtrace_catch.kernel.layout import FLOW_KEY, FLOW_VALUE, STATS, STATS_FIELDS, TYPE_SLOTS, Direction, TrafficType
from xtrace_catch.rdma.bypass import BypassPort

T, D = TrafficType, Direction
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806


# -- building intervals by hand ------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """One flow of a hand-made interval; counts are this interval's."""

    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    tt: TrafficType
    dir: Direction
    packets: int
    bytes: int
    qp: int = 0
    ecn_ce: int = 0
    cnp: int = 0
    eth: int | None = None  # default: from the address family; non-IP flows give it

    @property
    def eth_proto(self) -> int:
        if self.eth is not None:
            return self.eth
        return ETH_P_IPV6 if ":" in self.src else ETH_P_IP


def addr16(ip: str) -> np.ndarray:
    """A key address: IPv4 v4-mapped, IPv6 as is, '' (non-IP) zero."""
    if not ip:
        raw = bytes(16)
    else:
        a = ipaddress.ip_address(ip)
        raw = (bytes(10) + b"\xff\xff" + a.packed) if a.version == 4 else a.packed
    return np.frombuffer(raw, dtype=np.uint8)


def keys_and_counts(flows: Sequence[Flow]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.zeros(len(flows), dtype=FLOW_KEY)
    delta = np.zeros((len(flows), NV), dtype=np.uint64)
    for i, f in enumerate(flows):
        keys[i]["src_addr"], keys[i]["dst_addr"] = addr16(f.src), addr16(f.dst)
        keys[i]["src_port"], keys[i]["dst_port"], keys[i]["protocol"] = f.sport, f.dport, f.proto
        keys[i]["traffic_type"], keys[i]["direction"] = int(f.tt), int(f.dir)
        keys[i]["eth_proto"], keys[i]["dst_qp"] = f.eth_proto, f.qp
        for name in ("packets", "bytes", "ecn_ce", "cnp"):
            delta[i, V[name]] = getattr(f, name)
    return keys, delta


def make_interval(flows: Sequence[Flow], *, seq: int = 7, elapsed: float = 1.0, tracked: int | None = None,
                  **stats: int) -> Interval:
    """An Interval as the collector returns it; `flows` must already be largest first."""
    keys, delta = keys_and_counts(flows)
    totals = delta * np.uint64(3)
    sd = {f: 0 for f in STATS_FIELDS}
    sd.update(stats)
    ovf = np.zeros((2, TYPE_SLOTS, NV), dtype=np.uint64)
    ovf[0, int(T.ROCE_V2), V["packets"]] = sd["overflowed"]
    return Interval(seq=seq, time=1_704_164_645.0, elapsed=elapsed, keys=keys, delta=delta, totals=totals,
                    all_keys=keys, all_totals=totals, all_delta=delta, stats_delta=sd,
                    stats_total={k: 10 * v for k, v in sd.items()}, overflow_delta=ovf, overflow_total=ovf * 10,
                    flows_tracked=len(flows) if tracked is None else tracked, evicted=0, collect_seconds=0.001)


def state(flows: Sequence[Flow], **kw: object) -> ViewState:
    iv_kw = {k: kw.pop(k) for k in list(kw) if k in ("seq", "elapsed", "tracked") or k in STATS_FIELDS}
    iv = make_interval(flows, **iv_kw)  # type: ignore[arg-type]
    kw.setdefault("interface", "eth0")
    kw.setdefault("mode", "tc ingress+egress")
    kw.setdefault("capacity", 65536)
    kw.setdefault("now", NOW)
    return ViewState(iv=iv, rows=decode_flows(iv.keys, iv.delta), **kw)  # type: ignore[arg-type]


def show(st: ViewState, width: int = 80, height: int = 24) -> str:
    """The frame as plain text, the way the brief's golden test renders it."""
    c = Console(width=width, record=True, file=io.StringIO(), color_system=None, force_terminal=False)
    c.print(render(st, height=height))
    return c.export_text()


def show_styled(st: ViewState, width: int = 80, height: int = 24) -> str:
    c = Console(width=width, record=True, file=io.StringIO(), color_system="truecolor", force_terminal=True)
    c.print(render(st, height=height))
    return c.export_text(styles=True)


# Largest first, as the collector orders them: RoCE v2 (QP, ECN-CE, CNP), TCP, IPv6 TCP, UDP, ARP.
FLOWS = [
    Flow("198.51.100.10", "198.51.100.20", 49152, 4791, 17, T.ROCE_V2, D.INGRESS, 1500, 2_048_000,
         qp=0x10A, ecn_ce=3, cnp=1),
    Flow("198.51.100.10", "203.0.113.5", 45678, 443, 6, T.TCP, D.EGRESS, 900, 1_200_000),
    Flow("2001:db8::1", "2001:db8::2", 443, 51000, 6, T.TCP, D.INGRESS, 12, 9000),
    Flow("198.51.100.10", "198.51.100.53", 40000, 53, 17, T.UDP, D.EGRESS, 4, 320),
    Flow("", "", 0, 0, 0, T.OTHER, D.INGRESS, 1, 42, eth=ETH_P_ARP),
]

# Read and checked by hand: total 3,257,362 B/s = 26.06 Mbit/s, 2417 pkt/s; RoCEv2 2,048,000 B
# = 16.4 Mbit/s; TCP 1,209,000 B = 9.67 Mbit/s; in 2,057,042 B = 16.5 Mbit/s, out 1,200,320 B =
# 9.60 Mbit/s. Columns: FLOW takes what the fixed ones (TYPE 6, DIR 3, QP 8 (0x + 6 digits), BIT/S 6, PKT/S 6,
# ECN 4, CNP 4, two spaces between) leave of 80, i.e. 31 characters, so long IPv4 endpoints are
# cut with an ellipsis; numbers are right-aligned; the table lines are exactly 80 wide.
GOLDEN_80 = """\
xtrace-catch  eth0  tc ingress+egress  every 1.0s  interval 7  03:04:05Z
flows 5 (tracked 9/65536)  total 26.1Mbit/s 2.42kpkt/s
by type: RoCEv2 16.4M TCP 9.67M UDP 2.56k Other 336
in 16.5M  out 9.6M  overflowed 0  truncated 2  filtered 5
RDMA counters: none for this interface (hardware RoCE is invisible here)
FLOW                                 TYPE   DIR       QP  BIT/S  PKT/S  ECN  CNP
198.51.100.10:49152>198.51.100.20:4… RoCEv2 in  0x00010a  16.4M   1.5k    3    1
198.51.100.10:45678>203.0.113.5:443  TCP    out        -   9.6M    900    -    -
[2001:db8::1]:443>[2001:db8::2]:510… TCP    in         -    72k     12    -    -
198.51.100.10:40000>198.51.100.53:53 UDP    out        -  2.56k      4    -    -
ethertype 0x0806                     Other  in         -    336      1    -    -
"""


def many_flows(n: int) -> list[Flow]:
    """n UDP flows, largest first."""
    return [Flow(f"198.51.100.{10 + i % 200}", "203.0.113.7", 30000 + i, 5000, 17, T.UDP, D.INGRESS, 10,
                 100_000 - i) for i in range(n)]


# -- pure --------------------------------------------------------------------------------------


def test_rate_units() -> None:
    assert [rate(v) for v in (0, 950, 999, 1000, 12_345, 123_456, 4_560_000, 1.23e9, 999e9)] == \
        ["0", "950", "999", "1k", "12.3k", "123k", "4.56M", "1.23G", "999G"]
    assert rate(26_058_896, "bit/s") == "26.1Mbit/s"


def test_golden_80_columns() -> None:
    st = state(FLOWS, tracked=9, truncated=2, filtered=5)
    assert show(st) == GOLDEN_80


GOLDEN_STATE = dict(tracked=9, truncated=2, filtered=5)


def test_largest_first_as_the_collector_orders_them() -> None:
    """Through the real Collector (a fake map source, flows given in shuffled order): the
    view lists them by bytes in the interval, largest first."""
    order = [3, 0, 4, 2, 1]
    keys, delta = keys_and_counts([FLOWS[i] for i in order])

    class Source:
        def __init__(self) -> None:
            self.vals = np.zeros(len(keys), dtype=FLOW_VALUE)

        def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
            return keys.copy(), self.vals.copy()

        def read_stats(self) -> np.void:
            return np.zeros(1, dtype=STATS)[0]

        def read_overflow(self) -> np.ndarray:
            return np.zeros((2, TYPE_SLOTS), dtype=FLOW_VALUE)

        def take_flow(self, key: bytes) -> np.ndarray | None:
            return None

    src = Source()
    col = Collector(src)
    col.collect()  # every flow at 0: nothing active
    src.vals.view("<u8").reshape(-1, NV)[:] = delta
    iv = col.collect()
    st = ViewState(interface="eth0", mode="tc ingress+egress", iv=replace(iv, elapsed=1.0),
                   rows=decode_flows(iv.keys, iv.delta), capacity=65536, now=NOW)
    rows = show(st).splitlines()[6:]
    assert rows == GOLDEN_80.splitlines()[6:]


@pytest.mark.parametrize("width", [80, 60, 120])
def test_lines_never_exceed_the_width(width: int) -> None:
    long_if = state(many_flows(40), interface="enp175s0f0np0", seq=123456, overflowed=1234, truncated=99,
                    filtered=12345, export="push 12 ok / 3 failed, buffer 1500",
                    bypass=bypass_port(10**12, 10**11))
    for st in (state(FLOWS), long_if, state([])):
        for line in show(st, width).splitlines():
            assert len(line) <= width, (width, line)


def test_narrow_and_wide_still_render() -> None:
    narrow = show(state(FLOWS, **GOLDEN_STATE), 60).splitlines()
    assert len(narrow) >= 11  # the header may wrap at 60 columns, nothing is dropped
    table = narrow[narrow.index(next(x for x in narrow if x.startswith("FLOW "))):]
    assert [x.split()[-7:] for x in table] == [x.split()[-7:] for x in GOLDEN_80.splitlines()[5:]]
    assert all(len(x) == 60 for x in table)
    assert "…" in table[1]  # 60 columns leave 11 for FLOW
    wide = show(state(FLOWS, **GOLDEN_STATE), 120).splitlines()
    assert wide[:5] == GOLDEN_80.splitlines()[:5]
    assert [x.split()[0] for x in wide[6:]] == [
        "198.51.100.10:49152>198.51.100.20:4791", "198.51.100.10:45678>203.0.113.5:443",
        "[2001:db8::1]:443>[2001:db8::2]:51000", "198.51.100.10:40000>198.51.100.53:53", "ethertype"]
    assert all(len(x) == 120 for x in wide[5:]) and "…" not in "".join(wide)


@pytest.mark.parametrize("n, height, shown", [(30, 24, 17), (18, 24, 17), (17, 24, 17), (5, 8, 1), (3, 3, 1)])
def test_more_flows_than_fit(n: int, height: int, shown: int) -> None:
    """Header (5 lines) + table header + as many rows as leave one line for '... N more'."""
    lines = show(state(many_flows(n)), 120, height).splitlines()
    rows = [x for x in lines if x.startswith("198.51.100.")]
    assert [int(x.split()[0].split(">")[0].split(":")[1]) for x in rows] == [30000 + i for i in range(shown)]
    more = n - shown
    if more:
        assert lines[-1] == f"... {more} more flows"
        assert len(lines) == max(height, 5 + 1 + 1 + 1)
    else:
        assert not any("more flows" in x for x in lines)
        assert len(lines) == 5 + 1 + n
    assert lines[1].startswith(f"flows {n} ")


def test_map_full() -> None:
    full = show(state(FLOWS, overflowed=1234)).splitlines()[3]
    assert full == "in 16.5M  out 9.6M  overflowed 1234  truncated 0  filtered 0  MAP FULL"
    assert "MAP FULL" not in show(state(FLOWS))
    styled = show_styled(state(FLOWS, overflowed=1)).splitlines()[3]
    assert styled.endswith("\x1b[1;31m  MAP FULL\x1b[0m")  # bold red


def test_export_status_in_health_line() -> None:
    st = state(FLOWS[:1], export="push 12 ok / 0 failed, buffer 0")
    assert show(st, 120).splitlines()[3] == (
        "in 16.4M  out 0  overflowed 0  truncated 0  filtered 0  push 12 ok / 0 failed, buffer 0")


def bypass_port(rx: int, tx: int) -> BypassPort:
    return BypassPort("mlx5_0", 1, nic={D.INGRESS: rx, D.EGRESS: tx}, kernel={D.INGRESS: 0, D.EGRESS: 0},
                      bypass={D.INGRESS: rx, D.EGRESS: tx}, bypass_total={D.INGRESS: 5 * rx, D.EGRESS: 5 * tx})


def test_bypass_line() -> None:
    """A BypassPort replaces the 'none for this interface' line; nothing else changes."""
    plain = show(state(FLOWS)).splitlines()
    lines = show(state(FLOWS, bypass=bypass_port(12_500_000_000, 2_000_000))).splitlines()
    assert plain[4] == "RDMA counters: none for this interface (hardware RoCE is invisible here)"
    assert lines[4] == "RDMA mlx5_0/1 bypassed kernel: in 100Gbit/s  out 16Mbit/s"
    assert lines[:4] + lines[5:] == plain[:4] + plain[5:]


def test_colours() -> None:
    """With colours, each TYPE cell carries its type's style; RoCE v2 is magenta."""
    assert TYPE_STYLE[T.ROCE_V2] == "magenta"
    lines = show_styled(state(FLOWS)).splitlines()
    rows = {re.sub(r"\x1b\[[0-9;]*m", "", x).split()[-7]: x for x in lines[6:]}
    assert "\x1b[35mRoCEv2" in rows["RoCEv2"]  # magenta
    assert "\x1b[36mTCP" in rows["TCP"] and "\x1b[34mUDP" in rows["UDP"] and "\x1b[37mOther" in rows["Other"]
    assert "\x1b[35mRoCEv2\x1b[0m" in lines[2]  # the by-type line too
    # Without colours nothing is styled.
    assert "\x1b" not in show(state(FLOWS))


def test_frame_fits_the_height_with_long_header_lines() -> None:
    st = state(many_flows(30), interface="enp175s0f0np0", seq=12345, export="push 12 ok / 0 failed, buffer 0")
    assert len(show(st, 80, 24).splitlines()) <= 24


# -- kernel: the CLI -----------------------------------------------------------------------------

SPORT, DPORT = 40001, 9999
PAYLOAD = 100
WIRE = 14 + 20 + 8 + PAYLOAD


def udp_frame() -> bytes:
    # To MAC_B (frames.py's default): the agent's stack drops it as "other host", so nothing
    # answers and the agent's egress stays silent.
    return F.ether(F.ETH_P_IP, F.ipv4(F.IPPROTO_UDP, PEER_IP4, AGENT_IP4, F.udp(SPORT, DPORT, b"u" * PAYLOAD)))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        yield p


@pytest.mark.kernel
def test_table_falls_back_to_text_lines_when_stdout_is_not_a_terminal(pair: VethPair) -> None:
    n = 23
    with Agent(pair.ns, ["run", "-i", pair.ifname, "-m", "tc", "-t", "200", "--output", "table"],
               env=pair.env) as a:
        a.wait_stderr("stdout is not a terminal")
        send_frames(pair.peer_ns, pair.peer_if, [udp_frame()] * n)
        wait_seen(pair.ns, pair.ifname, n)
        assert a.stop() == 0, a.err
    assert a.err == [f"xtrace-catch: TC program attached to {pair.ifname} (ingress)",
                     "xtrace-catch: stdout is not a terminal: writing text lines instead of the live table"]
    flow = re.compile(rf"^{re.escape(PEER_IP4)}:{SPORT} -> {re.escape(AGENT_IP4)}:{DPORT} proto=17 \[UDP\] "
                      rf"packets=(\d+) bytes=(\d+) host_ip={re.escape(AGENT_IP4)} dir=ingress$")
    summary = re.compile(rf"^--- interval \d+ on {pair.ifname}: [01] flows, \d+ packets, \d+ bytes; "
                         r"filtered=0 truncated=0 overflowed=0 tracked=[01]/65536$")
    packets = bytes_ = 0
    for line in a.out:
        m = flow.match(line)
        if m:
            packets += int(m.group(1))
            bytes_ += int(m.group(2))
        else:
            assert summary.match(line), line
    assert (packets, bytes_) == (n, n * WIRE)
    assert a.out[-1].startswith("--- interval ")


# -- kernel: a real terminal (tmux) ------------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket) holding one detached session."""

    def __init__(self, name: str) -> None:
        path = shutil.which("tmux")
        assert path, "tmux is missing: 'make deps-test' installs it (Makefile DEB_TEST)"
        self.base = [path, "-L", name, "-f", "/dev/null"]
        self.name = name

    def __call__(self, *args: str, check: bool = True) -> str:
        # An explicit env: with env=None a child inherits the C-level environ, where a library
        # loaded in this process (readline) may have put COLUMNS/LINES; rich takes COLUMNS as a
        # fixed width, and the view would then never follow the resize.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        p = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=20, env=env)
        if check and p.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def capture(self) -> list[str]:
        return self("capture-pane", "-p", "-t", self.name).splitlines()

    def pids(self) -> list[int]:
        """The pane's shell and its children (the agent)."""
        out = self("list-panes", "-t", self.name, "-F", "#{pane_pid}", check=False).split()
        pids = [int(x) for x in out]
        for pid in list(pids):
            try:
                pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                pass
        return pids

    def kill(self) -> None:
        pids = self.pids()
        socket = self("display-message", "-p", "-t", self.name, "#{socket_path}", check=False).strip()
        self("kill-session", "-t", self.name, check=False)
        self("kill-server", check=False)
        if socket:
            Path(socket).unlink(missing_ok=True)  # tmux leaves the socket file behind
        deadline = time.monotonic() + 15
        for pid in pids:  # the agent gets SIGHUP; wait (bounded) until it is gone
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


@pytest.mark.kernel
def test_live_view_in_tmux(pair: VethPair) -> None:
    tmux = Tmux(f"xtc-live-{os.getpid()}")
    agent = " ".join(shlex.quote(x) for x in xtrace_cmd())
    cmd = (f"env -u COLUMNS -u LINES XTRACE_STATE_DIR={shlex.quote(str(pair.state_dir))} "
           f"ip netns exec {pair.ns} {agent} run -i {pair.ifname} -m tc -d both -t 500 --count 240 "
           "--output table; sleep 3")
    header = re.compile(rf"^xtrace-catch  {pair.ifname}  tc ingress\+egress  every \d+\.\ds  interval \d+  "
                        r"\d\d:\d\d:\d\dZ$")
    full = f"{PEER_IP4}:{SPORT}>{AGENT_IP4}:{DPORT}"  # an IPv4 flow fits the FLOW column at 80
    row = re.compile(r"^(\S+)\s+UDP\s+in\s+-\s+\S+\s+\S+\s+-\s+-$")
    frame = [udp_frame()] * 5
    try:
        tmux("new-session", "-d", "-s", tmux.name, "-x", "80", "-y", "24", cmd)
        screen: list[str] = []
        deadline = time.monotonic() + 30
        for _ in range(300):
            send_frames(pair.peer_ns, pair.peer_if, frame)
            screen = tmux.capture()
            rows = [m.group(1) for m in map(row.match, screen) if m]
            if any(header.match(x) for x in screen) and full in rows:
                break
            assert time.monotonic() < deadline, "no header and flow row in the pane:\n" + "\n".join(screen)
            time.sleep(0.2)
        assert any(x.startswith("FLOW ") and x.split() == ["FLOW", "TYPE", "DIR", "QP", "BIT/S", "PKT/S", "ECN",
                                                           "CNP"] for x in screen), screen
        assert all(len(x) <= 80 for x in screen)
        assert len(screen) <= 24

        tmux("resize-window", "-t", tmux.name, "-x", "100")
        deadline = time.monotonic() + 30
        for _ in range(300):
            send_frames(pair.peer_ns, pair.peer_if, frame)
            screen = tmux.capture()
            rows = [m.group(1) for m in map(row.match, screen) if m]
            # The table expands to the terminal: its header line now reaches past column 80.
            if full in rows and any(x.startswith("FLOW ") and len(x) > 80 for x in screen):
                break
            assert time.monotonic() < deadline, "the view did not follow the resize:\n" + "\n".join(screen)
            time.sleep(0.2)
        assert all(len(x) <= 100 for x in screen), screen
    finally:
        tmux.kill()
