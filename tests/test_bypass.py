"""The unified RoCE view: bytes the RDMA NIC counted vs RoCE bytes the kernel datapath saw.

Pure tier: BypassTracker on a copy of tests/data/sysfs/roce (port_{rcv,xmit}_data count
4-byte words) with exact NIC and kernel bytes per interval and direction, the clamp at 0,
counter resets, unreadable counters; resolve_port; kernel_roce_bytes.

Kernel tier (root): the agent as a user runs it (``run -m tc -d both --rdma-device mlx5_0
--sysfs-root COPY``) on a veth pair, K real RoCE v2 frames from the peer namespace, and the
fixture's port_rcv_data advanced by what "the NIC carried": the K frames plus X bytes of
hardware RoCE the kernel never saw. What the agent reports as bypassed is compared exactly.

How the kernel and NIC sides meet in one interval. The agent's step reads the kernel's maps
first and the sysfs counters after, and compares them per interval, clamping a negative
difference at 0. If the K frames and the matching NIC bytes fell into different intervals,
the interval with the frames would clamp (kernel > NIC: 0, not negative) and the interval
with the NIC bytes would count them all as bypass. So the end-to-end test that expects
exactly X swaps the agent's port_rcv_data for a named pipe for one read: that holds one
interval's sysfs read (the agent is then past that interval's map read) while the test sends
the frames; the held read gets the old value, every later read a plain file with the new
one. Frames and NIC bytes then land in the same interval by construction, not by timing. A second test advances the
plain file in separate steps, after the frames were reported, and checks the semantics that
follow: the frames' interval shows 0 bypassed (clamped), the NIC bytes' interval counts all
of them, so the total is K*size + X.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import frames as F
import numpy as np
import pytest
from netns import AGENT_IP4, PEER_IP4, Agent, VethPair, in_ns, send_frames, veth_pair, wait_seen
from vm import http

from xtrace_catch.rdma.run import bypass_tracker
from xtrace_catch.rdma.bypass import BypassPort, BypassTracker, kernel_roce_bytes, resolve_port
from xtrace_catch.flows.collector import NV, Interval, V
from xtrace_catch.errors import UsageError
from xtrace_catch.kernel.layout import FLOW_KEY, STATS_FIELDS, TYPE_SLOTS, Direction, TrafficType
from xtrace_catch.settings import Settings

ROCE = Path(__file__).resolve().parent / "data" / "sysfs" / "roce" / "sys"
IN, OUT = Direction.INGRESS, Direction.EGRESS
RX0, TX0 = 250_000_000_000, 180_000_000_000  # mlx5_0/1 port_rcv_data / port_xmit_data in the fixture (words)


def copy_tree(tmp_path: Path) -> Path:
    dst = tmp_path / "sys"
    shutil.copytree(ROCE, dst, symlinks=True)  # relative symlinks, as sysfs has them
    return dst


@pytest.fixture
def roce(tmp_path: Path) -> Path:
    return copy_tree(tmp_path)


def counter(root: Path, name: str, dev: str = "mlx5_0", port: int = 1) -> Path:
    return root / "class" / "infiniband" / dev / "ports" / str(port) / "counters" / name


def put(path: Path, value: object) -> None:
    """Replace a counter file atomically: a reader never sees it empty or half written."""
    tmp = path.parent.parent / f".{path.name}.tmp"  # outside counters/, which the agent lists
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def words(path: Path) -> int:
    return int(path.read_text())


def advance(path: Path, by_words: int) -> None:
    put(path, words(path) + by_words)


def port(nic: tuple[int | None, int | None], kernel: tuple[int, int], bypass: tuple[int, int],
         total: tuple[int, int], device: str = "mlx5_0", port_: int = 1) -> BypassPort:
    return BypassPort(device, port_, {IN: nic[0], OUT: nic[1]}, {IN: kernel[0], OUT: kernel[1]},
                      {IN: bypass[0], OUT: bypass[1]}, {IN: total[0], OUT: total[1]})


# -- BypassTracker ---------------------------------------------------------------------------


def test_tracker_exact_per_direction(roce: Path) -> None:
    rx, tx = counter(roce, "port_rcv_data"), counter(roce, "port_xmit_data")
    t = BypassTracker(str(roce), "mlx5_0", 1)

    advance(rx, 1000)  # 4000 bytes
    advance(tx, 250)  # 1000 bytes
    assert t.update({IN: 1500, OUT: 200}) == port((4000, 1000), (1500, 200), (2500, 800), (2500, 800))

    assert t.update({IN: 0, OUT: 0}) == port((0, 0), (0, 0), (0, 0), (2500, 800))  # nothing moved

    advance(rx, 10)  # 40 bytes, but the kernel saw 100: clamps at 0, the total never goes back
    advance(tx, 5)  # 20 bytes, all seen by the kernel
    assert t.update({IN: 100, OUT: 20}) == port((40, 20), (100, 20), (0, 0), (2500, 800))

    advance(rx, 1_000_000)  # nothing of it seen by the kernel
    assert t.update({IN: 0, OUT: 0}) == port((4_000_000, 0), (0, 0), (4_000_000, 0), (4_002_500, 800))


def test_tracker_counter_reset(roce: Path) -> None:
    """A counter that went back was reset: the new value is what it counted since."""
    rx, tx = counter(roce, "port_rcv_data"), counter(roce, "port_xmit_data")
    t = BypassTracker(str(roce), "mlx5_0", 1)
    put(rx, 7)  # from 250e9 words back to 7: 28 bytes since the reset
    put(tx, 0)
    assert t.update({IN: 8, OUT: 0}) == port((28, 0), (8, 0), (20, 0), (20, 0))
    put(rx, 107)  # counting on from the new value
    put(tx, 3)
    assert t.update({IN: 0, OUT: 12}) == port((400, 12), (0, 12), (400, 0), (420, 0))


@pytest.mark.parametrize("how", ["garbage", "missing", "directory"])
def test_tracker_unreadable_counter(roce: Path, how: str) -> None:
    """An unreadable port_rcv_data: ingress NIC bytes None and nothing counted as bypassed;
    egress goes on. Readable again: the delta since the last good reading."""
    rx, tx = counter(roce, "port_rcv_data"), counter(roce, "port_xmit_data")
    t = BypassTracker(str(roce), "mlx5_0", 1)
    advance(rx, 100)
    assert t.update({IN: 0, OUT: 0}) == port((400, 0), (0, 0), (400, 0), (400, 0))

    good = words(rx)
    if how == "garbage":
        put(rx, "N/A (no PMA)")
    elif how == "missing":
        rx.unlink()
    else:
        rx.unlink()
        rx.mkdir()
    advance(tx, 50)
    assert t.update({IN: 0, OUT: 0}) == port((None, 200), (0, 0), (0, 200), (400, 200))
    assert t.update({IN: 0, OUT: 0}) == port((None, 0), (0, 0), (0, 0), (400, 200))

    if rx.is_dir():
        rx.rmdir()
    put(rx, good + 30)  # 120 bytes since the last good reading
    assert t.update({IN: 0, OUT: 0}) == port((120, 0), (0, 0), (120, 0), (520, 200))


def test_tracker_device_gone(roce: Path) -> None:
    t = BypassTracker(str(roce), "mlx5_0", 1)
    (roce / "class" / "infiniband" / "mlx5_0").unlink()
    assert t.update({IN: 10, OUT: 20}) == port((None, None), (10, 20), (0, 0), (0, 0))


def test_tracker_unreadable_interval_does_not_turn_seen_bytes_into_bypass(roce: Path) -> None:
    rx = counter(roce, "port_rcv_data")
    t = BypassTracker(str(roce), "mlx5_0", 1)
    good = words(rx)
    put(rx, "N/A (no PMA)")
    assert t.update({IN: 400, OUT: 0}).nic[IN] is None  # the kernel saw 400 bytes meanwhile
    put(rx, good + 150)  # the NIC: those 400 and 200 more, all seen by the kernel
    t.update({IN: 200, OUT: 0})
    assert t.update({IN: 0, OUT: 0}).bypass_total[IN] == 0


def test_tracker_32bit_wrap_like_rdma_mode(roce: Path) -> None:
    rx = counter(roce, "port_rcv_data")
    put(rx, (1 << 32) - 100)
    t = BypassTracker(str(roce), "mlx5_0", 1)
    put(rx, 50)
    assert t.update({IN: 0, OUT: 0}).nic[IN] == 150 * 4


def test_record_text_and_samples() -> None:
    bp = port((4000, None), (1500, 0), (2500, 0), (9000, 12))
    assert bp.record("2024-01-02T03:04:05.250Z", "eth2") == {
        "record": "kernel_bypass", "time": "2024-01-02T03:04:05.250Z", "interface": "eth2", "device": "mlx5_0",
        "port": 1,
        "ingress": {"nic_bytes": 4000, "kernel_roce_bytes": 1500, "bypass_bytes": 2500, "bypass_bytes_total": 9000},
        "egress": {"nic_bytes": None, "kernel_roce_bytes": 0, "bypass_bytes": 0, "bypass_bytes_total": 12},
    }
    assert bp.text() == ("--- kernel bypass mlx5_0/1: ingress nic=4000 kernel_roce=1500 bypassed=2500; "
                         "egress nic=? kernel_roce=0 bypassed=0")
    extra = {"interface": "eth2", "host_ip": "198.51.100.1", "collect_agg": "default"}
    help_ = "Bytes the RDMA NIC counted that the kernel datapath did not see as RoCE (hardware RoCE)."
    assert bp.samples(extra) == [
        ("xtrace_rdma_kernel_bypass_bytes_total", "counter", help_,
         {"device": "mlx5_0", "port": "1", "direction": "ingress", **extra}, 9000),
        ("xtrace_rdma_kernel_bypass_bytes_total", "counter", help_,
         {"device": "mlx5_0", "port": "1", "direction": "egress", **extra}, 12),
    ]


# -- resolve_port ----------------------------------------------------------------------------


def test_resolve_port_rdma_device_given() -> None:
    root = str(ROCE)
    assert resolve_port(root, "xta0", "mlx5_0") == ("mlx5_0", 1)  # no netdev link: port 1
    assert resolve_port(root, "eth5", "mlx4_0") == ("mlx4_0", 2)  # eth5 is mlx4_0 port 2 (dev_port 1)
    assert resolve_port(root, "eth4", "mlx4_0") == ("mlx4_0", 1)
    assert resolve_port(root, "eth5", "mlx5_0") == ("mlx5_0", 1)  # eth5 belongs to another device
    assert resolve_port(root, "eth2", "mlx5_1") == ("mlx5_1", 1)


def test_resolve_port_device_behind_the_interface() -> None:
    root = str(ROCE)
    assert (ROCE / "class/net/eth2/device/infiniband/mlx5_0").is_dir()
    assert resolve_port(root, "eth2", None) == ("mlx5_0", 1)
    assert resolve_port(root, "eth3", None) == ("mlx5_1", 1)
    assert resolve_port(root, "eth5", None) == ("mlx4_0", 2)
    for plain in ("eth0", "lo", "xta0"):
        assert resolve_port(root, plain, None) is None


def test_resolve_port_unknown_device() -> None:
    with pytest.raises(UsageError) as e:
        resolve_port(str(ROCE), "eth2", "mlx5_9")
    assert str(e.value) == "unknown RDMA device 'mlx5_9'; devices found: mlx4_0, mlx5_0, mlx5_1"
    assert e.value.exit_code == 2


def test_resolve_port_without_infiniband(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    (root / "class" / "net").mkdir(parents=True)
    assert resolve_port(str(root), "eth0", None) is None
    assert resolve_port(str(tmp_path / "nope"), "eth0", None) is None
    with pytest.raises(UsageError, match=r"--rdma-device mlx5_0: no .*/class/infiniband; check --sysfs-root") as e:
        resolve_port(str(root), "eth0", "mlx5_0")
    assert e.value.exit_code == 2


def test_agent_bypass_tracker_follows_the_options(roce: Path) -> None:
    said: list[str] = []

    def settings(**kw: object) -> Settings:
        base: dict[str, object] = dict(interface="eth2", mode="tc", direction="both", filter_="all", interval="300",
                                       exclude_dns=False, dns_servers=[], output="json", count=None, verbose=False,
                                       xdp_mode="auto", idle_timeout=60.0, max_flows=65536, device=None,
                                       sysfs_root=str(roce))
        base.update(kw)
        return Settings.from_options(**base)  # type: ignore[arg-type]

    def tracker(s: Settings, ifname: str) -> object:
        return bypass_tracker(s, resolve_port(s.sysfs_root, ifname, s.rdma_device), said.append)

    t = tracker(settings(), "eth2")
    assert isinstance(t, BypassTracker) and (t.device, t.port) == ("mlx5_0", 1)
    t = tracker(settings(rdma_device="mlx4_0"), "eth5")
    assert isinstance(t, BypassTracker) and (t.device, t.port) == ("mlx4_0", 2)
    assert said == [
        "comparing with RDMA mlx5_0 port 1: NIC bytes the kernel did not see are reported as bypass",
        "comparing with RDMA mlx4_0 port 2: NIC bytes the kernel did not see are reported as bypass",
    ]
    assert tracker(settings(), "xta0") is None
    assert len(said) == 2


# -- kernel_roce_bytes -----------------------------------------------------------------------


def interval(flows: Sequence[tuple[TrafficType, Direction, int]], overflow: dict[tuple[Direction, TrafficType], int]
             ) -> Interval:
    """An Interval with one flow per (type, direction, bytes) and overflow bytes per (direction, type)."""
    keys = np.zeros(len(flows), dtype=FLOW_KEY)
    delta = np.zeros((len(flows), NV), dtype=np.uint64)
    for i, (tt, d, b) in enumerate(flows):
        keys[i]["traffic_type"], keys[i]["direction"], keys[i]["dst_qp"] = int(tt), int(d), i
        delta[i, V["packets"]], delta[i, V["bytes"]] = 1, b
    ovf = np.zeros((2, TYPE_SLOTS, NV), dtype=np.uint64)
    for (d, tt), b in overflow.items():
        ovf[int(d), int(tt), V["bytes"]] = b
        ovf[int(d), int(tt), V["packets"]] = 1
    stats = {f: 0 for f in STATS_FIELDS}
    return Interval(seq=1, time=0.0, elapsed=1.0, keys=keys, delta=delta, totals=delta, all_keys=keys,
                    all_totals=delta, all_delta=delta, stats_delta=stats, stats_total=stats, overflow_delta=ovf,
                    overflow_total=ovf, flows_tracked=len(flows), evicted=0, collect_seconds=0.0)


def test_kernel_roce_bytes() -> None:
    T = TrafficType
    iv = interval(
        [(T.ROCE_V2, IN, 1000), (T.ROCE_V2, IN, 500), (T.ROCE_V1, IN, 70), (T.ROCE_V1, OUT, 300),
         (T.ROCE_V2, OUT, 5), (T.TCP, IN, 7000), (T.UDP, OUT, 9000), (T.IPOIB, IN, 100), (T.OTHER, OUT, 60),
         (T.ICMP, IN, 84)],
        {(IN, T.ROCE_V2): 40, (OUT, T.ROCE_V1): 60, (IN, T.TCP): 999, (OUT, T.UDP): 888, (IN, T.IPOIB): 777})
    assert kernel_roce_bytes(iv) == {IN: 1000 + 500 + 70 + 40, OUT: 300 + 5 + 60}
    # No flows at all: the overflow table alone.
    assert kernel_roce_bytes(interval([], {(OUT, T.ROCE_V2): 12, (IN, T.TCP): 5})) == {IN: 0, OUT: 12}
    assert kernel_roce_bytes(interval([(T.TCP, IN, 1), (T.UDP, OUT, 2)], {})) == {IN: 0, OUT: 0}


# -- kernel tier: the agent end to end -------------------------------------------------------

K = 25  # RoCE v2 frames
QP = 0x00ABCD
PAYLOAD = 1006
SIZE = 14 + 20 + 8 + 12 + PAYLOAD + 4  # Ethernet, IPv4, UDP, BTH, payload, ICRC: 1064 bytes, a multiple of 4
X = 4 * 12_345  # bytes of hardware RoCE the kernel never sees
WAIT = 30.0


def roce_frame() -> bytes:
    # To frames.py's MAC_B: the agent's stack drops it as "other host" after TC ingress
    # counted it, so nothing answers and egress stays silent.
    f = F.ether(F.ETH_P_IP, F.ipv4(F.IPPROTO_UDP, PEER_IP4, AGENT_IP4,
                                   F.roce_v2(F.OP_WRITE_ONLY, QP, b"\x5a" * PAYLOAD, sport=49152)))
    assert len(f) == SIZE and SIZE % 4 == 0
    return f


class HeldRead:
    """Holds the agent's next read of a counter file: the file is swapped (atomically) for a
    named pipe; the agent's open of it returns once this side opens it for writing, and its
    read then waits for what this side writes. ``finish()`` puts a plain file with the new
    value back first, then answers the held read with the old value: exactly one read goes
    through the pipe, every later one reads the plain file."""

    def __init__(self, path: Path) -> None:
        fifo = path.parent.parent / f".{path.name}.fifo"  # outside counters/, which the agent lists
        os.mkfifo(fifo)
        os.replace(fifo, path)
        self.path = path
        self.fd: int | None = None

    def wait_reader(self, a: Agent, timeout: float = WAIT) -> None:
        """Wait (bounded) until the agent has the pipe open: it is then inside one interval's
        step, past its read of the kernel's maps and before its comparison."""
        deadline = time.monotonic() + timeout
        for _ in range(20_000):
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody reads
                return
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            assert a.proc is not None and a.proc.poll() is None, f"agent exited: {a.err}"
            assert time.monotonic() < deadline, f"the agent did not read {self.path.name} within {timeout} s"
            time.sleep(0.002)

    def finish(self, served: int, new: int) -> None:
        assert self.fd is not None
        put(self.path, new)
        os.write(self.fd, f"{served}\n".encode())
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        in_ns(p.ns, ["ip", "link", "set", "lo", "up"])  # /metrics on 127.0.0.1 in there
        yield p


def agent_args(p: VethPair, root: Path, *extra: str) -> list[str]:
    return ["run", "-i", p.ifname, "-m", "tc", "-d", "both", "-t", "300", "--rdma-device", "mlx5_0",
            "--sysfs-root", str(root), "--output", "json", *extra]


def records(a: Agent, kind: str) -> list[dict[str, object]]:
    return [r for r in (json.loads(x) for x in list(a.out) if x.strip()) if r.get("record") == kind]


def sums(a: Agent, d: str = "ingress") -> tuple[int, int]:
    """(kernel RoCE bytes, NIC bytes) summed over the kernel_bypass records so far."""
    recs = [r[d] for r in records(a, "kernel_bypass")]
    return sum(r["kernel_roce_bytes"] for r in recs), sum(r["nic_bytes"] or 0 for r in recs)  # type: ignore[index]


def wait_for(what: str, done: Callable[[], bool], a: Agent, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(3000):
        if done():
            return
        assert a.proc is not None and a.proc.poll() is None, f"agent exited while waiting for {what}: {a.err}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s; stderr {a.err}; stdout {a.out[-6:]}"
        time.sleep(0.02)


def check_flows(a: Agent) -> None:
    """The kernel side saw exactly the K frames: one RoCE v2 flow, ingress, QP, bytes."""
    flows = [r for r in (json.loads(x) for x in a.out if x.strip()) if r["record"] == "flow"]
    assert {(f["traffic_type"], f["direction"], f["dst_qp"], f["src_ip"], f["dst_port"]) for f in flows} == {
        ("RoCE_v2", "ingress", QP, PEER_IP4, 4791)}
    assert sum(f["packets"] for f in flows) == K and sum(f["bytes"] for f in flows) == K * SIZE


@pytest.mark.kernel
@pytest.mark.parametrize("metrics", [False, True], ids=["json", "json+metrics"])
def test_bypass_end_to_end_same_interval(pair: VethPair, tmp_path: Path, metrics: bool) -> None:
    """Frames and NIC bytes in one interval: bypassed == X exactly, per interval and in total."""
    root = copy_tree(tmp_path)
    rx = counter(root, "port_rcv_data")
    assert words(rx) == RX0
    held: HeldRead | None = None
    port_ = 19437
    extra = ["--metrics-addr", f"127.0.0.1:{port_}"] if metrics else []
    metric = (f'xtrace_rdma_kernel_bypass_bytes_total{{device="mlx5_0",port="1",direction="ingress",'
              f'interface="{pair.ifname}",host_ip="{AGENT_IP4}",collect_agg="default"}}')
    body = ""
    try:
        with Agent(pair.ns, agent_args(pair, root, *extra), env=pair.env) as a:
            a.wait_stderr(f"TC program attached to {pair.ifname} (ingress, egress)")
            a.wait_stderr("comparing with RDMA mlx5_0 port 1")
            wait_for("first interval", lambda: bool(records(a, "summary")), a)
            held = HeldRead(rx)
            held.wait_reader(a)  # the agent is inside a step: maps read, sysfs not yet
            send_frames(pair.peer_ns, pair.peer_if, [roce_frame()] * K)
            wait_seen(pair.ns, pair.ifname, K, hook="ingress")
            held.finish(RX0, RX0 + (K * SIZE + X) // 4)  # this step still gets RX0, the next ones the new value
            wait_for("the frames and the NIC bytes", lambda: sums(a) == (K * SIZE, K * SIZE + X), a)
            if metrics:
                url = f"http://127.0.0.1:{port_}/metrics"
                deadline = time.monotonic() + WAIT
                for _ in range(1000):
                    status, raw = http(pair.ns, "GET", url)
                    body = raw.decode()
                    if status == 200 and f"{metric} {X}\n" in body:
                        break
                    assert time.monotonic() < deadline, f"/metrics never showed {X}: {body}"
                    time.sleep(0.05)
            assert a.stop() == 0, a.err
    finally:
        if held is not None:
            held.close()
    if metrics:
        assert "# TYPE xtrace_rdma_kernel_bypass_bytes_total counter" in body.splitlines()
        assert f"{metric.replace('ingress', 'egress')} 0" in body.splitlines()
    assert a.err[:2] == [f"xtrace-catch: TC program attached to {pair.ifname} (ingress, egress)",
                         "xtrace-catch: comparing with RDMA mlx5_0 port 1: NIC bytes the kernel did not see are "
                         "reported as bypass"]
    check_flows(a)
    bps = records(a, "kernel_bypass")
    assert len(bps) == len(records(a, "summary"))  # one per interval
    assert all((r["device"], r["port"]) == ("mlx5_0", 1) for r in bps)
    hit = [r for r in bps if r["ingress"]["kernel_roce_bytes"]]  # type: ignore[index]
    assert [r["ingress"] for r in hit] == [  # type: ignore[index]
        {"nic_bytes": K * SIZE + X, "kernel_roce_bytes": K * SIZE, "bypass_bytes": X, "bypass_bytes_total": X}]
    for r in bps:
        if r is not hit[0]:
            assert r["ingress"]["nic_bytes"] == 0 and r["ingress"]["bypass_bytes"] == 0  # type: ignore[index]
        assert r["egress"] == {"nic_bytes": 0, "kernel_roce_bytes": 0, "bypass_bytes": 0, "bypass_bytes_total": 0}
    assert sum(r["ingress"]["bypass_bytes"] for r in bps) == X  # type: ignore[index]
    assert bps[-1]["ingress"]["bypass_bytes_total"] == X  # type: ignore[index]


@pytest.mark.kernel
def test_bypass_end_to_end_kernel_and_nic_in_different_intervals(pair: VethPair, tmp_path: Path) -> None:
    """The comparison is per interval. Frames reported first (NIC unchanged): those intervals
    clamp to 0 bypassed. The NIC bytes for them in a later interval (no frames then): all
    counted as bypassed. X in a later one: X. Total K*SIZE + X: the documented upper bound."""
    root = copy_tree(tmp_path)
    rx = counter(root, "port_rcv_data")
    with Agent(pair.ns, agent_args(pair, root), env=pair.env) as a:
        a.wait_stderr("comparing with RDMA mlx5_0 port 1")
        wait_for("first interval", lambda: bool(records(a, "summary")), a)
        send_frames(pair.peer_ns, pair.peer_if, [roce_frame()] * K)
        wait_for("the frames", lambda: sums(a) == (K * SIZE, 0), a)
        advance(rx, K * SIZE // 4)
        wait_for("the NIC bytes of the frames", lambda: sums(a) == (K * SIZE, K * SIZE), a)
        advance(rx, X // 4)
        wait_for("the extra NIC bytes", lambda: sums(a) == (K * SIZE, K * SIZE + X), a)
        assert a.stop() == 0, a.err
    check_flows(a)
    bps = [r["ingress"] for r in records(a, "kernel_bypass")]
    seen = [r for r in bps if r["kernel_roce_bytes"]]  # type: ignore[index]
    nic = [r for r in bps if r["nic_bytes"]]  # type: ignore[index]
    assert seen and all(r["nic_bytes"] == 0 and r["bypass_bytes"] == 0 for r in seen)  # clamped
    assert [(r["nic_bytes"], r["kernel_roce_bytes"], r["bypass_bytes"]) for r in nic] == [  # type: ignore[index]
        (K * SIZE, 0, K * SIZE), (X, 0, X)]
    assert bps.index(nic[0]) > bps.index(seen[-1])
    assert sum(r["bypass_bytes"] for r in bps) == K * SIZE + X  # type: ignore[misc]
    assert bps[-1]["bypass_bytes_total"] == K * SIZE + X
