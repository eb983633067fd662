"""End to end: `xtrace-catch run`, `interfaces` and `cleanup` as a user runs them.

Each test makes its own pair of network namespaces joined by a veth (tests/netns.py),
runs the CLI inside the agent's namespace, puts an exact list of frames on the wire from
the peer (or from the agent's side for egress), waits until the datapath has seen them
(a count read from its stats map, never a sleep), stops the agent and checks the output
exactly: per flow, packets and bytes summed over intervals, the totals of the last record,
and each interval summary's accounting.

Bytes are the Ethernet frame without FCS, i.e. len(frame) of what we send: veth neither
pads short frames to 60 bytes nor adds an FCS, so a 42-byte ICMP echo arrives as 42 bytes
(the datapath counts exactly what the hook sees, plus a VLAN tag TC has in metadata).

IPv6 is disabled in the namespaces (except where a test needs an IPv6 address): then the
kernel sends nothing of its own on the veth, and every test can demand the exact set of
flows, not just a subset. Raw IPv6 frames still reach XDP/TC: the hook runs before IP.
"""

from __future__ import annotations

import ipaddress
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import frames as F
import pytest
from netns import (
    AGENT_IP4,
    AGENT_IP6,
    PEER_IP4,
    PEER_IP6,
    SINK_IP4,
    Agent,
    Capture,
    VethPair,
    our_prog_ids,
    qdisc_kinds,
    run,
    send_frames,
    send_udp,
    tc_filters,
    veth_pair,
    wait_seen,
    xdp_prog,
    xdp_prog_name,
    xtrace,
)
from tools import require_tool

pytestmark = pytest.mark.kernel

DATA = Path(__file__).resolve().parent / "data"
FLOW_KEYS = {"time", "interface", "direction", "src_ip", "dst_ip", "src_port", "dst_port", "protocol",
             "traffic_type", "packets", "bytes", "packets_total", "bytes_total", "host_ip"}
COMMON_KEYS = {"time", "interface"}  # every record of a flow mode has them (and "record")
OPS = ("send", "write", "read_req", "read_resp", "ack", "atomic", "other")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
INTERVAL = "200"  # ms: several intervals per test, so sums over intervals are exercised


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        yield p


@pytest.fixture
def pair6(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(ipv6=True, tmp=tmp_path) as p:
        yield p


# -- expected traffic ---------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """What identifies a flow in the JSON output."""

    direction: str
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int
    traffic_type: str
    vlan: int = 0
    dst_qp: int | None = None


@dataclass
class Counts:
    packets: int = 0
    bytes: int = 0
    cnp: int = 0
    ops: Counter[str] = field(default_factory=Counter)

    def as_tuple(self) -> tuple[int, int, int, dict[str, int]]:
        return self.packets, self.bytes, self.cnp, {k: v for k, v in sorted(self.ops.items()) if v}


@dataclass
class Traffic:
    """Frames to send and what the agent must report for them."""

    frames: list[bytes] = field(default_factory=list)
    expected: dict[Key, Counts] = field(default_factory=dict)

    def add(self, key: Key, frame: bytes, n: int = 1, op: str | None = None) -> None:
        c = self.expected.setdefault(key, Counts())
        for _ in range(n):
            self.frames.append(frame)
            c.packets += 1
            c.bytes += len(frame)
            if op == "cnp":
                c.cnp += 1
            elif op:
                c.ops[op] += 1

    def only(self, keep: Callable[[Key], bool]) -> dict[Key, tuple[int, int, int, dict[str, int]]]:
        return {k: c.as_tuple() for k, c in self.expected.items() if keep(k)}

    @property
    def packets(self) -> int:
        return len(self.frames)

    def interleaved(self) -> list[bytes]:
        """The frames in a fixed mixed order (flows interleaved, not one after another)."""
        return self.frames[0::3] + self.frames[1::3] + self.frames[2::3]


def ip4(proto: int, src: str, dst: str, l4: bytes, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    return F.ether(F.ETH_P_IP, F.ipv4(proto, src, dst, l4), tags=tags)


def ip6(proto: int, src: str, dst: str, l4: bytes) -> bytes:
    return F.ether(F.ETH_P_IPV6, F.ipv6(proto, src, dst, l4))


def udp4(src: str, sport: int, dst: str, dport: int, size: int, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    return ip4(F.IPPROTO_UDP, src, dst, F.udp(sport, dport, bytes(size)), tags)


def mixed_ingress() -> Traffic:
    """Every kind the datapath tells apart, as the peer sends it to the agent."""
    t = Traffic()
    k = Key("ingress", PEER_IP4, AGENT_IP4, 40001, 5001, 6, "TCP")
    for size in (0, 100, 1000):  # size 0: a 54-byte frame, shorter than Ethernet's 60-byte minimum
        t.add(k, ip4(F.IPPROTO_TCP, PEER_IP4, AGENT_IP4, F.tcp(40001, 5001, bytes(size))))
    k = Key("ingress", PEER_IP4, AGENT_IP4, 40002, 5002, 17, "UDP")
    for size in (1, 18, 200, 1400, 1472):  # 1472: a full 1514-byte frame at MTU 1500
        t.add(k, udp4(PEER_IP4, 40002, AGENT_IP4, 5002, size))
    t.add(Key("ingress", PEER_IP4, AGENT_IP4, 0, 0, 1, "ICMP"),
          ip4(F.IPPROTO_ICMP, PEER_IP4, AGENT_IP4, F.icmp()), n=2)  # 42 bytes each
    k = Key("ingress", PEER_IP6, AGENT_IP6, 40003, 443, 17, "UDP")
    for size in (10, 500, 1000, 0):
        t.add(k, ip6(F.IPPROTO_UDP, PEER_IP6, AGENT_IP6, F.udp(40003, 443, bytes(size))))
    k = Key("ingress", PEER_IP4, AGENT_IP4, 40004, 5004, 17, "UDP", vlan=100)
    for size in (10, 300, 600):
        t.add(k, udp4(PEER_IP4, 40004, AGENT_IP4, 5004, size, tags=(F.vlan_tag(100, pcp=3),)), n=2)
    k = Key("ingress", PEER_IP4, AGENT_IP4, 49152, 4791, 17, "RoCE_v2", dst_qp=0x00ABCD)
    for op, code, n in (("send", F.OP_SEND_ONLY, 3), ("write", F.OP_WRITE_ONLY, 2), ("ack", F.OP_ACK, 1),
                        ("read_req", F.OP_READ_REQUEST, 1), ("cnp", F.OP_CNP, 1)):
        t.add(k, ip4(F.IPPROTO_UDP, PEER_IP4, AGENT_IP4, F.roce_v2(code, 0x00ABCD, bytes(64))), n=n, op=op)
    k = Key("ingress", PEER_IP4, AGENT_IP4, 49153, 4791, 17, "RoCE_v2", dst_qp=0x000012)
    t.add(k, ip4(F.IPPROTO_UDP, PEER_IP4, AGENT_IP4, F.roce_v2(F.OP_READ_RESP_ONLY, 0x12, bytes(1024), sport=49153)),
          n=2, op="read_resp")
    k = Key("ingress", PEER_IP6, AGENT_IP6, 0, 0, 0, "RoCE_v1", dst_qp=0x000777)
    for op, code, n in (("send", F.OP_SEND_ONLY, 2), ("ack", F.OP_ACK, 1)):
        t.add(k, F.ether(F.ETH_P_ROCE, F.roce_v1(code, 0x777, bytes(256), sgid=PEER_IP6, dgid=AGENT_IP6)),
              n=n, op=op)
    # Not IP: counted as Other, without addresses (an ARP request body, 42-byte frame).
    t.add(Key("ingress", "", "", 0, 0, 0, "Other"), F.ether(F.ETH_P_ARP, bytes.fromhex("0001080006040001") + bytes(20)))
    return t


# -- reading the agent's output -------------------------------------------------


def flows_and_summaries(records: list[dict[str, object]]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    fl = [r for r in records if r.get("record") == "flow"]
    su = [r for r in records if r.get("record") == "summary"]
    assert len(fl) + len(su) == len(records), "a record is neither a flow nor a summary"
    return fl, su


LEDGER = ("seen", "counted", "filtered", "truncated", "overflowed")


def check_accounting(records: list[dict[str, object]], interface: str) -> list[dict[str, object]]:
    """seen = counted + filtered + truncated + overflowed, and the flow records add up to what
    the kernel counted. The flow map and the stats are read one after the other while traffic
    flows, so a packet may land between the two reads: these identities are exact on the
    totals since start at the last interval (traffic has stopped by then), and per interval
    only where no packet arrived during the read. Returns the summaries."""
    summaries = []
    pk = by = 0
    for r in records:
        assert "record" in r and RFC3339.match(str(r["time"])) and r["interface"] == interface, r  # every record
        if r["record"] != "flow":
            assert r["record"] == "summary"
            assert not (FLOW_KEYS - COMMON_KEYS) & set(r), f"a summary carries flow keys: {r}"
            assert r["ifname"] == interface and r["timestamp"] == r["time"]  # the earlier names, kept
            assert r["interval"] == len(summaries) + 1
            summaries.append(r)
        else:
            pk += int(r["packets"])  # type: ignore[arg-type]
            by += int(r["bytes"])  # type: ignore[arg-type]
    assert summaries, "no interval was printed"
    assert records[-1].get("record") == "summary", "flow records after the last summary"
    last = summaries[-1]
    for unit in ("packets", "bytes"):  # the ledger holds for bytes as for packets
        assert last[f"{unit}_seen_total"] == sum(last[f"{unit}_{k}_total"] for k in LEDGER[1:]), last  # type: ignore
        # Each interval's deltas add up to the totals.
        for k in LEDGER:
            assert sum(int(r[f"{unit}_{k}"]) for r in summaries) == last[f"{unit}_{k}_total"], (unit, k)  # type: ignore
    assert (last["packets_counted_total"], last["bytes_counted_total"]) == (pk, by), last
    return summaries


def aggregate(records: list[dict[str, object]], interface: str, host_ip: str
              ) -> dict[Key, tuple[int, int, int, dict[str, int]]]:
    """Flow records summed per flow over all intervals; checks each record's shape and
    that the last record of a flow carries the sums as its totals."""
    acc: dict[Key, Counts] = {}
    last: dict[Key, dict[str, object]] = {}
    for r in records:
        if r["record"] != "flow":
            continue
        assert FLOW_KEYS <= set(r), f"missing keys {FLOW_KEYS - set(r)} in {r}"
        assert RFC3339.match(str(r["time"])), r["time"]
        assert (r["interface"], r["host_ip"]) == (interface, host_ip)
        roce = r["traffic_type"] in ("RoCE_v1", "RoCE_v2")
        assert ("dst_qp" in r) == roce and ("opcode" in r) == roce, r
        assert not roce or r["dst_qp_hex"] == f"0x{r['dst_qp']:06x}", r
        k = Key(str(r["direction"]), str(r["src_ip"]), str(r["dst_ip"]), int(r["src_port"]),  # type: ignore[arg-type]
                int(r["dst_port"]), int(r["protocol"]), str(r["traffic_type"]), int(r["vlan"]),  # type: ignore[arg-type]
                int(r["dst_qp"]) if roce else None)  # type: ignore[arg-type]
        assert int(r["packets"]) > 0  # type: ignore[arg-type]
        c = acc.setdefault(k, Counts())
        c.packets += int(r["packets"])  # type: ignore[arg-type]
        c.bytes += int(r["bytes"])  # type: ignore[arg-type]
        if roce:
            c.cnp += int(r["cnp"])  # type: ignore[arg-type]
            ops = r["opcode"]
            assert isinstance(ops, dict) and set(ops) == set(OPS), ops
            c.ops.update({o: int(n) for o, n in ops.items()})
        last[k] = r
    for k, r in last.items():
        assert (r["packets_total"], r["bytes_total"]) == (acc[k].packets, acc[k].bytes), (k, r)
    return {k: c.as_tuple() for k, c in acc.items()}


def start_agent(pair: VethPair, *args: str) -> Agent:
    return Agent(pair.ns, ["-i", pair.ifname, "--output", "json", "-t", INTERVAL, *args], env=pair.env)


def attached_line(pair: VethPair, mode: str, direction: str = "ingress") -> str:
    if mode == "xdp":
        return f"xtrace-catch: XDP program loaded on {pair.ifname}"
    dirs = {"ingress": "ingress", "egress": "egress", "both": "ingress, egress"}[direction]
    return f"xtrace-catch: TC program attached to {pair.ifname} ({dirs})"


def run_agent(pair: VethPair, args: list[str], ingress: Traffic | None = None, egress: Traffic | None = None,
              egress_udp: Sequence[tuple[int, int, list[bytes]]] = (), expect_seen: int | None = None,
              mode: str = "xdp", direction: str = "ingress") -> Agent:
    """Start the agent, wait for its 'attached' line (exact), send, wait until the
    datapath saw `expect_seen` packets, SIGTERM it (exit 0). Returns the finished Agent."""
    with start_agent(pair, "-m", mode, *args) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, mode, direction)
        if ingress:
            send_frames(pair.peer_ns, pair.peer_if, ingress.interleaved())
        if egress:
            send_frames(pair.ns, pair.ifname, egress.interleaved())
        for sport, dport, payloads in egress_udp:
            send_udp(pair.ns, AGENT_IP4, sport, SINK_IP4, dport, payloads)
        if expect_seen is None:
            expect_seen = (ingress.packets if ingress else 0) + (egress.packets if egress else 0)
        st = wait_seen(pair.ns, pair.ifname, expect_seen)
        assert st["seen"] == expect_seen, st
        assert a.stop() == 0, a.err
    assert a.err == [attached_line(pair, mode, direction)], a.err
    return a


# -- 1 and 3: XDP, every kind, every filter ---------------------------------------

FILTERS: dict[str, Callable[[Key], bool]] = {
    "all": lambda k: True,
    "tcp": lambda k: k.traffic_type == "TCP",
    "udp": lambda k: k.protocol == 17,  # RoCE v2 rides on UDP and stays in
    "roce": lambda k: k.traffic_type in ("RoCE_v1", "RoCE_v2"),
    "roce_v2": lambda k: k.traffic_type == "RoCE_v2",
    "roce_v1": lambda k: k.traffic_type == "RoCE_v1",
}


@pytest.mark.parametrize("filt", list(FILTERS))
def test_xdp_counts_each_kind_exactly(pair: VethPair, filt: str) -> None:
    t = mixed_ingress()
    a = run_agent(pair, ["-f", filt], ingress=t)
    recs = a.records()
    summaries = check_accounting(recs, pair.ifname)
    expected = t.only(FILTERS[filt])
    assert aggregate(recs, pair.ifname, AGENT_IP4) == expected
    counted = sum(v[0] for v in expected.values())
    last = summaries[-1]
    assert last["packets_seen_total"] == t.packets == sum(s["packets_seen"] for s in summaries)
    assert last["packets_filtered_total"] == t.packets - counted == sum(s["packets_filtered"] for s in summaries)
    assert sum(s["bytes_seen"] for s in summaries) == sum(len(f) for f in t.frames)
    assert (last["packets_truncated_total"], last["packets_overflowed_total"]) == (0, 0)


def test_xdp_frame_sizes_are_what_veth_carries(pair: VethPair) -> None:
    """Short frames are not padded: a minimal ICMP echo (42 bytes) and a TCP ACK (54) arrive
    as sent (seen by an AF_PACKET receiver in the agent's namespace) and count as such."""
    t = Traffic()
    t.add(Key("ingress", PEER_IP4, AGENT_IP4, 0, 0, 1, "ICMP"), ip4(F.IPPROTO_ICMP, PEER_IP4, AGENT_IP4, F.icmp()))
    t.add(Key("ingress", PEER_IP4, AGENT_IP4, 1, 2, 6, "TCP"), ip4(F.IPPROTO_TCP, PEER_IP4, AGENT_IP4, F.tcp(1, 2)))
    assert [len(f) for f in t.frames] == [42, 54]
    with Capture(pair.ns, pair.ifname, 2) as cap:
        a = run_agent(pair, [], ingress=t)
        assert cap.frames() == t.interleaved()  # byte for byte: no padding, no FCS
    assert aggregate(a.records(), pair.ifname, AGENT_IP4) == {
        Key("ingress", PEER_IP4, AGENT_IP4, 0, 0, 1, "ICMP"): (1, 42, 0, {}),
        Key("ingress", PEER_IP4, AGENT_IP4, 1, 2, 6, "TCP"): (1, 54, 0, {}),
    }


# -- 2: TC, each direction ---------------------------------------------------------


def tc_ingress_traffic() -> Traffic:
    t = Traffic()
    t.add(Key("ingress", PEER_IP4, AGENT_IP4, 40010, 5010, 17, "UDP"), udp4(PEER_IP4, 40010, AGENT_IP4, 5010, 100), n=3)
    # TC ingress: veth's stack moved this tag into skb metadata (skb->len is 4 bytes
    # short); the datapath adds it back and reports the VLAN id.
    k = Key("ingress", PEER_IP4, AGENT_IP4, 40011, 5011, 17, "UDP", vlan=100)
    for size in (20, 700):
        t.add(k, udp4(PEER_IP4, 40011, AGENT_IP4, 5011, size, tags=(F.vlan_tag(100),)), n=2)
    t.add(Key("ingress", PEER_IP4, AGENT_IP4, 40012, 5012, 6, "TCP"),
          ip4(F.IPPROTO_TCP, PEER_IP4, AGENT_IP4, F.tcp(40012, 5012, bytes(1000))), n=2)
    k = Key("ingress", PEER_IP4, AGENT_IP4, 49152, 4791, 17, "RoCE_v2", dst_qp=0x42)
    t.add(k, ip4(F.IPPROTO_UDP, PEER_IP4, AGENT_IP4, F.roce_v2(F.OP_WRITE_FIRST, 0x42, bytes(1024))), n=2, op="write")
    t.add(k, ip4(F.IPPROTO_UDP, PEER_IP4, AGENT_IP4, F.roce_v2(F.OP_CNP, 0x42, bytes(16))), op="cnp")
    return t


def tc_egress_traffic() -> Traffic:
    """Raw frames the agent's side sends (AF_PACKET on the agent's veth, through its qdisc path)."""
    t = Traffic()
    t.add(Key("egress", AGENT_IP4, SINK_IP4, 5020, 40020, 17, "UDP"), udp4(AGENT_IP4, 5020, SINK_IP4, 40020, 50), n=3)
    # At egress a tag written into the frame stays in the frame.
    t.add(Key("egress", AGENT_IP4, SINK_IP4, 5021, 40021, 17, "UDP", vlan=200),
          udp4(AGENT_IP4, 5021, SINK_IP4, 40021, 400, tags=(F.vlan_tag(200),)), n=2)
    t.add(Key("egress", AGENT_IP6, PEER_IP6, 5022, 40022, 17, "UDP"),
          ip6(F.IPPROTO_UDP, AGENT_IP6, PEER_IP6, F.udp(5022, 40022, bytes(30))))
    return t


# Datagrams sent through the agent namespace's UDP socket (the kernel builds the frames):
# 198.51.100.1:40100 -> 198.51.100.9:7000, frame = 14 + 20 + 8 + payload.
KERNEL_UDP = [(40100, 7000, [bytes(10), bytes(100), b"", bytes(1472)])]
KERNEL_UDP_KEY = Key("egress", AGENT_IP4, SINK_IP4, 40100, 7000, 17, "UDP")
KERNEL_UDP_COUNTS = (4, sum(42 + len(p) for p in KERNEL_UDP[0][2]), 0, {})


@pytest.mark.parametrize("direction", ["ingress", "egress", "both"])
def test_tc_directions(pair: VethPair, direction: str) -> None:
    ing, eg = tc_ingress_traffic(), tc_egress_traffic()
    watch = {"ingress": {"ingress"}, "egress": {"egress"}, "both": {"ingress", "egress"}}[direction]
    seen = (ing.packets if "ingress" in watch else 0) + (eg.packets + 4 if "egress" in watch else 0)
    a = run_agent(pair, ["-d", direction], ingress=ing, egress=eg, egress_udp=KERNEL_UDP, expect_seen=seen,
                  mode="tc", direction=direction)
    recs = a.records()
    summaries = check_accounting(recs, pair.ifname)
    expected = {**ing.only(lambda k: k.direction in watch), **eg.only(lambda k: k.direction in watch)}
    if "egress" in watch:
        expected[KERNEL_UDP_KEY] = KERNEL_UDP_COUNTS
    assert aggregate(recs, pair.ifname, AGENT_IP4) == expected
    assert summaries[-1]["packets_seen_total"] == seen
    assert summaries[-1]["packets_filtered_total"] == 0


def test_tc_and_xdp_agree_on_vlan_bytes(pair: VethPair) -> None:
    """The same tagged frames, seen by XDP (tag in the frame) and TC ingress (tag in skb
    metadata) at once: identical flow keys, packets and bytes."""
    t = Traffic()
    k = Key("ingress", PEER_IP4, AGENT_IP4, 40030, 5030, 17, "UDP", vlan=42)
    for size in (0, 64, 1000):
        t.add(k, udp4(PEER_IP4, 40030, AGENT_IP4, 5030, size, tags=(F.vlan_tag(42, pcp=5),)))
    with start_agent(pair, "-m", "xdp") as ax, start_agent(pair, "-m", "tc") as at:
        assert ax.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        assert at.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc")
        send_frames(pair.peer_ns, pair.peer_if, t.frames)
        for hook in ("xdp", "ingress"):
            assert wait_seen(pair.ns, pair.ifname, 3, hook=hook)["seen"] == 3
        assert ax.stop() == 0 and at.stop() == 0
    want = {k: (3, sum(len(f) for f in t.frames), 0, {})}
    assert aggregate(ax.records(), pair.ifname, AGENT_IP4) == want
    assert aggregate(at.records(), pair.ifname, AGENT_IP4) == want


# -- 4: --exclude-dns ------------------------------------------------------------------


def test_exclude_dns(pair: VethPair) -> None:
    dns = "198.51.100.53"
    t = Traffic()
    dropped = [
        Key("ingress", PEER_IP4, AGENT_IP4, 40040, 53, 17, "UDP"),  # query to port 53
        Key("ingress", PEER_IP4, AGENT_IP4, 53, 40041, 17, "UDP"),  # answer from port 53
        Key("ingress", PEER_IP4, AGENT_IP4, 40042, 53, 6, "TCP"),  # DNS over TCP
        Key("ingress", PEER_IP4, dns, 40043, 9999, 17, "UDP"),  # to the server, any port
        Key("ingress", dns, AGENT_IP4, 443, 40044, 6, "TCP"),  # from the server, any port
        Key("ingress", dns, AGENT_IP4, 0, 0, 1, "ICMP"),  # from the server, no ports at all
        Key("ingress", PEER_IP6, AGENT_IP6, 40045, 53, 17, "UDP"),  # IPv6 query
    ]
    kept = [
        Key("ingress", PEER_IP4, AGENT_IP4, 40046, 5353, 17, "UDP"),  # mDNS is not port 53
        Key("ingress", PEER_IP4, "198.51.100.54", 40047, 9999, 17, "UDP"),  # the server's neighbour
        Key("ingress", PEER_IP4, AGENT_IP4, 0, 0, 1, "ICMP"),
        Key("ingress", PEER_IP4, AGENT_IP4, 40048, 8053, 6, "TCP"),
    ]
    for i, k in enumerate(dropped + kept):
        if k.traffic_type == "ICMP":
            l4 = F.icmp()
        elif k.protocol == 6:
            l4 = F.tcp(k.src_port, k.dst_port, bytes(20 + i))
        else:
            l4 = F.udp(k.src_port, k.dst_port, bytes(20 + i))
        fr = ip6(k.protocol, k.src_ip, k.dst_ip, l4) if ":" in k.src_ip else ip4(k.protocol, k.src_ip, k.dst_ip, l4)
        t.add(k, fr, n=1 + i % 3)
    a = run_agent(pair, ["--exclude-dns", "--dns-server", dns], ingress=t)
    recs = a.records()
    summaries = check_accounting(recs, pair.ifname)
    assert aggregate(recs, pair.ifname, AGENT_IP4) == t.only(lambda k: k in kept)
    n_dropped = sum(t.expected[k].packets for k in dropped)
    assert summaries[-1]["packets_filtered_total"] == n_dropped == sum(s["packets_filtered"] for s in summaries)


# -- 5 and 6: text output; SIGTERM prints the last interval ----------------------------

TEXT_LINE = re.compile(r"^(?P<prefix>.+? host_ip=\S+)(?P<extra>( [a-z_]+=\S+)*)$")


def test_text_output_and_sigterm_prints_last_interval(pair: VethPair) -> None:
    """A long interval, SIGTERM after the datapath saw everything: the one interval
    printed is the last one, emitted on the signal; lines as in DESIGN.md."""
    udp = [udp4(PEER_IP4, 40050, AGENT_IP4, 5050, n) for n in (10, 20, 30)]
    v6 = [ip6(F.IPPROTO_UDP, PEER_IP6, AGENT_IP6, F.udp(443, 50000, bytes(n))) for n in (100, 200)]
    roce = [ip4(F.IPPROTO_UDP, PEER_IP4, AGENT_IP4, F.roce_v2(F.OP_SEND_ONLY, 0xABCD, bytes(40)))]
    with Agent(pair.ns, ["-i", pair.ifname, "-t", "600000"], env=pair.env) as a:
        assert a.wait_stderr("xtrace-catch: ") == f"xtrace-catch: XDP program loaded on {pair.ifname}"
        send_frames(pair.peer_ns, pair.peer_if, udp + v6 + roce)
        wait_seen(pair.ns, pair.ifname, 6)
        assert a.out == []  # nothing before the signal: the interval is 10 minutes
        assert a.stop() == 0
    b_udp, b_v6, b_roce = (sum(len(f) for f in x) for x in (udp, v6, roce))
    assert (b_udp, b_v6, b_roce) == (186, 424, 98)
    assert a.out[:-1] and len(a.out) == 4, a.out
    got = []
    for line in a.out[:-1]:
        m = TEXT_LINE.match(line)
        assert m, line
        got.append((m["prefix"], dict(kv.split("=", 1) for kv in m["extra"].split())))
    # Largest (bytes) first.
    assert got == [
        (f"[{PEER_IP6}]:443 -> [{AGENT_IP6}]:50000 proto=17 [UDP] packets=2 bytes={b_v6} host_ip={AGENT_IP4}",
         {"dir": "ingress"}),
        (f"{PEER_IP4}:40050 -> {AGENT_IP4}:5050 proto=17 [UDP] packets=3 bytes={b_udp} host_ip={AGENT_IP4}",
         {"dir": "ingress"}),
        (f"{PEER_IP4}:49152 -> {AGENT_IP4}:4791 proto=17 [RoCE v2/UDP] packets=1 bytes={b_roce} "
         f"host_ip={AGENT_IP4}", {"dir": "ingress", "qp": "0x00abcd"}),
    ]
    assert a.out[-1] == (f"--- interval 1 on {pair.ifname}: 3 flows, 6 packets, {b_udp + b_v6 + b_roce} bytes; "
                         "filtered=0 truncated=0 overflowed=0 tracked=3/65536")


# -- 7: cleanup on every exit path -------------------------------------------------------


FOREIGN_C = """\
#include <linux/bpf.h>
__attribute__((section("xdp"), used)) int foreign(struct xdp_md *ctx) { return XDP_PASS; }
__attribute__((section("tc"), used)) int foreign_tc(struct __sk_buff *skb) { return -1; /* TC_ACT_UNSPEC */ }
__attribute__((section("license"), used)) char _license[] = "GPL";
"""


@pytest.fixture(scope="module")
def foreign_obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Somebody else's BPF object: an XDP program 'foreign' and a TC program 'foreign_tc'."""
    clang = require_tool("clang", "clang")  # builds the foreign BPF programs
    d = tmp_path_factory.mktemp("foreign-bpf")
    (d / "foreign.c").write_text(FOREIGN_C)
    arch = run([clang, "-print-multiarch"], timeout=30).stdout.strip()
    run([clang, "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}", "-c", str(d / "foreign.c"),
         "-o", str(d / "foreign.o")], timeout=60)
    return d / "foreign.o"


FOREIGN_FILTERS = {"ingress": (10, "bpf", 5, "foreign.o:[tc]"), "egress": (10, "bpf", 6, "foreign.o:[tc]")}


def add_foreign_tc(pair: VethPair, obj: Path) -> None:
    """A clsact qdisc and a bpf filter per direction (prio 10, handles 5 and 6) that are not ours."""
    run(["tc", "-n", pair.ns, "qdisc", "add", "dev", pair.ifname, "clsact"])
    for d, (prio, _kind, handle, _name) in FOREIGN_FILTERS.items():
        run(["tc", "-n", pair.ns, "filter", "add", "dev", pair.ifname, d, "prio", str(prio), "handle", str(handle),
             "bpf", "obj", str(obj), "sec", "tc", "da"])


def snapshot(pair: VethPair) -> dict[str, object]:
    """What is attached to the agent's interface (XDP program, TC filters, qdiscs)."""
    def filt(d: str) -> list[tuple[object, ...]]:
        return sorted((f["pref"], f["kind"], f["options"].get("handle"), f["options"].get("bpf_name"))  # type: ignore[union-attr]
                      for f in tc_filters(pair.ns, pair.ifname, d))
    return {"xdp": xdp_prog(pair.ns, pair.ifname), "ingress": filt("ingress"), "egress": filt("egress"),
            "qdiscs": sorted(qdisc_kinds(pair.ns, pair.ifname))}


def expect_clean(pair: VethPair, foreign: bool) -> dict[str, object]:
    return {"xdp": None,
            "ingress": [FOREIGN_FILTERS["ingress"]] if foreign else [],
            "egress": [FOREIGN_FILTERS["egress"]] if foreign else [],
            "qdiscs": sorted(["noqueue", "clsact"] if foreign else ["noqueue"])}


def expect_ours(pair: VethPair, foreign: bool, xdp_id: int) -> dict[str, object]:
    clean = expect_clean(pair, foreign)
    return {"xdp": (xdp_id, xdp_prog_name()),
            "ingress": sorted([*clean["ingress"], (1, "bpf", "0x7874", "xtrace_tc_ingress")]),  # type: ignore[misc]
            "egress": sorted([*clean["egress"], (1, "bpf", "0x7874", "xtrace_tc_egress")]),  # type: ignore[misc]
            "qdiscs": sorted(["noqueue", "clsact"])}


def _norm_handles(s: dict[str, object]) -> dict[str, object]:
    """tc -j prints a bpf filter's handle as hex text."""
    out = dict(s)
    for d in ("ingress", "egress"):
        out[d] = sorted((p, k, int(h, 16) if isinstance(h, str) else h, n)
                        for p, k, h, n in s[d])  # type: ignore[union-attr]
    return out


def assert_state(pair: VethPair, want: dict[str, object]) -> None:
    assert _norm_handles(snapshot(pair)) == _norm_handles(want)


@pytest.mark.parametrize("foreign", [False, True], ids=["bare", "foreign-clsact"])
def test_normal_exit_with_count_leaves_nothing(pair: VethPair, foreign: bool, foreign_obj: Path) -> None:
    if foreign:
        add_foreign_tc(pair, foreign_obj)
    assert_state(pair, expect_clean(pair, foreign))
    with start_agent(pair, "-m", "xdp", "--count", "2") as ax, \
            start_agent(pair, "-m", "tc", "-d", "both", "--count", "2") as at:
        assert (ax.wait(), at.wait()) == (0, 0), (ax.err, at.err)
    assert ax.err == [attached_line(pair, "xdp")] and at.err == [attached_line(pair, "tc", "both")]
    for a in (ax, at):
        _, su = flows_and_summaries(a.records())
        assert [s["interval"] for s in su] == [1, 2]
    assert_state(pair, expect_clean(pair, foreign))
    assert state_files(pair) == []


def state_files(pair: VethPair) -> list[str]:
    """xtrace-catch's crash-state files for this pair (XTRACE_STATE_DIR)."""
    # The clsact record only: not the per-hook locks, not the XDP program id record.
    return (sorted(p.name for p in pair.state_dir.glob("*.json") if not p.name.endswith("-xdp.json"))
            if pair.state_dir.exists() else [])


@pytest.mark.parametrize("foreign", [False, True], ids=["bare", "foreign-clsact"])
def test_sigterm_detaches(pair: VethPair, foreign: bool, foreign_obj: Path) -> None:
    if foreign:
        add_foreign_tc(pair, foreign_obj)
    t = tc_ingress_traffic()
    with start_agent(pair, "-m", "xdp", "-t", "600000") as ax, \
            start_agent(pair, "-m", "tc", "-d", "both", "-t", "600000") as at:
        assert ax.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        assert at.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc", "both")
        ids = our_prog_ids(pair.ns, pair.ifname)
        assert_state(pair, expect_ours(pair, foreign, ids["xdp"]))
        send_frames(pair.peer_ns, pair.peer_if, t.frames)
        wait_seen(pair.ns, pair.ifname, t.packets, hook="xdp")
        wait_seen(pair.ns, pair.ifname, t.packets, hook="ingress")
        assert ax.stop() == 0 and at.stop() == 0
    for a in (ax, at):
        recs = a.records()
        su = check_accounting(recs, pair.ifname)
        assert len(su) == 1  # the interval emitted on SIGTERM
        assert aggregate(recs, pair.ifname, AGENT_IP4) == t.only(lambda k: True)
    assert_state(pair, expect_clean(pair, foreign))


def _kill_both(pair: VethPair, foreign: bool) -> dict[str, int]:
    """Start an XDP and a TC (both) agent, SIGKILL them once attached; returns their program ids."""
    with start_agent(pair, "-m", "xdp") as ax, start_agent(pair, "-m", "tc", "-d", "both") as at:
        assert ax.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        assert at.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc", "both")
        ids = our_prog_ids(pair.ns, pair.ifname)
        for a in (ax, at):
            a.signal(signal.SIGKILL)
            assert a.wait() == -signal.SIGKILL
    # Killed: everything stays attached (that is what cleanup and a restart are for), and
    # the record that the TC run created the clsact qdisc (only when it did).
    assert_state(pair, expect_ours(pair, foreign, ids["xdp"]))
    assert our_prog_ids(pair.ns, pair.ifname) == ids
    assert len(state_files(pair)) == (0 if foreign else 1)
    return ids


@pytest.mark.parametrize("foreign", [False, True], ids=["bare", "foreign-clsact"])
def test_sigkill_then_restart_replaces_stale(pair: VethPair, foreign: bool, foreign_obj: Path) -> None:
    if foreign:
        add_foreign_tc(pair, foreign_obj)
    ids = _kill_both(pair, foreign)
    t = tc_ingress_traffic()
    with start_agent(pair, "-m", "xdp") as ax, start_agent(pair, "-m", "tc", "-d", "both") as at:
        assert ax.wait_stderr("loaded on") == attached_line(pair, "xdp")
        assert at.wait_stderr("attached to") == attached_line(pair, "tc", "both")
        assert ax.err == [f"xtrace-catch: replacing a stale xtrace-catch XDP program (id {ids['xdp']}) on {pair.ifname}",
                          attached_line(pair, "xdp")]
        assert at.err == [f"xtrace-catch: replacing a stale xtrace-catch TC filter on {pair.ifname} ingress",
                          f"xtrace-catch: replacing a stale xtrace-catch TC filter on {pair.ifname} egress",
                          attached_line(pair, "tc", "both")]
        new = our_prog_ids(pair.ns, pair.ifname)
        assert set(new) == {"xdp", "ingress", "egress"} and not set(new.values()) & set(ids.values())
        send_frames(pair.peer_ns, pair.peer_if, t.frames)
        wait_seen(pair.ns, pair.ifname, t.packets, hook="xdp")
        wait_seen(pair.ns, pair.ifname, t.packets, hook="ingress")
        assert ax.stop() == 0 and at.stop() == 0
    for a in (ax, at):
        recs = a.records()
        check_accounting(recs, pair.ifname)
        assert aggregate(recs, pair.ifname, AGENT_IP4) == t.only(lambda k: True)
    assert_state(pair, expect_clean(pair, foreign))
    assert state_files(pair) == []


@pytest.mark.parametrize("foreign", [False, True], ids=["bare", "foreign-clsact"])
def test_sigkill_then_cleanup_command(pair: VethPair, foreign: bool, foreign_obj: Path) -> None:
    if foreign:
        add_foreign_tc(pair, foreign_obj)
    ids = _kill_both(pair, foreign)
    p = xtrace(pair.ns, ["cleanup", "-i", pair.ifname], env=pair.env)
    assert (p.returncode, p.stderr) == (0, "")
    want = [f"removed XDP program id {ids['xdp']} from {pair.ifname}",
            f"removed TC ingress filter from {pair.ifname}",
            f"removed TC egress filter from {pair.ifname}"]
    if not foreign:
        want.append(f"removed clsact qdisc (created by xtrace-catch) from {pair.ifname}")
    assert p.stdout.splitlines() == want
    assert_state(pair, expect_clean(pair, foreign))
    assert state_files(pair) == []
    p = xtrace(pair.ns, ["cleanup", "-i", pair.ifname], env=pair.env)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"nothing of xtrace-catch's on {pair.ifname}\n", "")


def test_foreign_xdp_program_is_never_replaced(pair: VethPair, foreign_obj: Path) -> None:
    run(["ip", "-n", pair.ns, "link", "set", "dev", pair.ifname, "xdpgeneric", "obj", str(foreign_obj),
         "sec", "xdp"])
    fx = xdp_prog(pair.ns, pair.ifname)
    assert fx is not None and fx[1] == "foreign"
    p = xtrace(pair.ns, ["-i", pair.ifname, "-m", "xdp", "--count", "1", "-t", "100"], env=pair.env)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"xtrace-catch: error: {pair.ifname} already has XDP program id {fx[0]} (foreign); "
        "xtrace-catch never replaces another program"), p.stderr
    assert "-m tc" in lines[0]
    assert xdp_prog(pair.ns, pair.ifname) == fx
    p = xtrace(pair.ns, ["cleanup", "-i", pair.ifname], env=pair.env)
    assert (p.returncode, p.stdout) == (0, f"nothing of xtrace-catch's on {pair.ifname}\n")
    # TC works beside it, and leaves it alone.
    p = xtrace(pair.ns, ["-i", pair.ifname, "-m", "tc", "--count", "1", "-t", "100"], env=pair.env)
    assert p.returncode == 0, p.stderr
    assert xdp_prog(pair.ns, pair.ifname) == fx
    assert snapshot(pair)["ingress"] == [] and "clsact" not in qdisc_kinds(pair.ns, pair.ifname)


def test_foreign_filter_at_our_handle_is_never_replaced(pair: VethPair, foreign_obj: Path) -> None:
    """A filter that is not ours but sits at our prio 1 / handle 0x7874: -m tc refuses and
    leaves it (and the clsact it lives in) alone; so does cleanup."""
    run(["tc", "-n", pair.ns, "qdisc", "add", "dev", pair.ifname, "clsact"])
    run(["tc", "-n", pair.ns, "filter", "add", "dev", pair.ifname, "ingress", "prio", "1", "handle", "0x7874",
         "bpf", "obj", str(foreign_obj), "sec", "tc", "da"])
    want = {"xdp": None, "ingress": [(1, "bpf", 0x7874, "foreign.o:[tc]")], "egress": [],
            "qdiscs": ["clsact", "noqueue"]}
    assert_state(pair, want)
    p = xtrace(pair.ns, ["-i", pair.ifname, "-m", "tc", "--count", "1", "-t", "100"], env=pair.env)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.splitlines() == [
        f"xtrace-catch: error: {pair.ifname} ingress already has a filter with xtrace-catch's handle 0x7874 and "
        f"prio 1 (foreign.o:[tc]); see 'tc filter show dev {pair.ifname} ingress'"]
    assert_state(pair, want)
    p = xtrace(pair.ns, ["cleanup", "-i", pair.ifname], env=pair.env)
    assert (p.returncode, p.stdout) == (0, f"nothing of xtrace-catch's on {pair.ifname}\n")
    assert_state(pair, want)


# -- 8: interfaces -------------------------------------------------------------------------


def _row(pair: VethPair, argv: list[str]) -> tuple[list[str], list[str]]:
    p = xtrace(pair.ns, argv, env=pair.env)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    lines = p.stdout.splitlines()
    rows = [ln.split() for ln in lines[1:] if ln.split()[0] == pair.ifname]
    assert len(rows) == 1, p.stdout
    return lines[0].split(), rows[0]


def test_interfaces_lists_the_veth_and_our_attachments(pair6: VethPair) -> None:
    pair = pair6
    head = ["INTERFACE", "STATE", "LINK", "MTU", "ATTACHED", "ADDRESSES"]
    addrs = [AGENT_IP4, AGENT_IP6]  # no link-local: addr_gen_mode none in this namespace
    for argv in (["-l"], ["interfaces"]):
        assert _row(pair, argv) == (head, [pair.ifname, "UP", "Ethernet", "1500", "-", *addrs])
    with start_agent(pair, "-m", "xdp") as ax, start_agent(pair, "-m", "tc", "-d", "both") as at:
        assert ax.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        assert at.wait_stderr("xtrace-catch: ") == attached_line(pair, "tc", "both")
        xid = our_prog_ids(pair.ns, pair.ifname)["xdp"]
        for argv in (["-l"], ["interfaces"]):
            assert _row(pair, argv) == (head, [pair.ifname, "UP", "Ethernet", "1500", "xdp", "id", str(xid),
                                               f"{xdp_prog_name()},", "xtrace", "tc", "ingress,", "xtrace", "tc", "egress",
                                               *addrs])
        assert ax.stop() == 0 and at.stop() == 0
    assert _row(pair, ["interfaces"])[1][4] == "-"


# -- 9: replayed captures against tshark ------------------------------------------------------

CAPTURES = ["scapy_roce_uts_hw_frames.pcap", "pcapplusplus_InfiniBandPacket.pcap"]
# IBTA RC opcodes (vol. 1, table 38) as the JSON's opcode classes.
RC_OPS = {0x00: "send", 0x01: "send", 0x02: "send", 0x03: "send", 0x04: "send", 0x05: "send",
          0x06: "write", 0x07: "write", 0x08: "write", 0x09: "write", 0x0A: "write", 0x0B: "write",
          0x0C: "read_req", 0x0D: "read_resp", 0x0E: "read_resp", 0x0F: "read_resp", 0x10: "read_resp",
          0x11: "ack", 0x12: "ack", 0x13: "atomic", 0x14: "atomic", 0x81: "cnp"}


def gid_text(gid: str) -> str:
    addr = ipaddress.IPv6Address(gid)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def tshark_expectation(path: Path) -> dict[tuple[str, str, str, int], tuple[int, int, int, dict[str, int]]]:
    """(type, src, dst, dst_qp) -> (packets, bytes, cnp, opcode classes) as tshark reads the capture."""
    tshark = require_tool("tshark", "tshark")  # the independent reading of the captures
    fields = ["frame.len", "eth.type", "udp.dstport", "ip.src", "ip.dst", "infiniband.grh.sgid",
              "infiniband.grh.dgid", "infiniband.bth.destqp", "infiniband.bth.opcode"]
    p = run([tshark, "-r", str(path), "-T", "fields", *sum((["-e", f] for f in fields), [])], timeout=60)
    out: dict[tuple[str, str, str, int], Counts] = {}
    for line in p.stdout.splitlines():
        flen, etype, dport, src, dst, sgid, dgid, qp, op = line.split("\t")
        if int(etype, 16) == 0x8915:
            # A v4-mapped GID (::ffff:a.b.c.d, RoCE over an IPv4-based GID) is reported as the IPv4.
            key = ("RoCE_v1", gid_text(sgid), gid_text(dgid), int(qp, 16))
        else:
            assert dport == "4791", line
            key = ("RoCE_v2", src, dst, int(qp, 16))
        c = out.setdefault(key, Counts())
        c.packets += 1
        c.bytes += int(flen)
        cls = RC_OPS[int(op)]
        if cls == "cnp":
            c.cnp += 1
        else:
            c.ops[cls] += 1
    return {k: c.as_tuple() for k, c in out.items()}


def test_replayed_captures_match_tshark(pair: VethPair) -> None:
    tcpreplay = require_tool("tcpreplay", "tcpreplay")
    files = [DATA / name for name in CAPTURES]
    want: dict[tuple[str, str, str, int], tuple[int, int, int, dict[str, int]]] = {}
    for f in files:
        want.update(tshark_expectation(f))
    # What the captures hold (READMEs in /work/shared/testdata/pcap): a CNP, two RoCE v1 RC
    # packets, one soft-RoCE RDMA READ request.
    assert {(k[0], k[3]): v for k, v in want.items()} == {
        ("RoCE_v2", 0x118): (1, 74, 1, {}),
        ("RoCE_v1", 0x10A): (1, 94, 0, {"write": 1}),
        ("RoCE_v1", 0x109): (1, 74, 0, {"ack": 1}),
        ("RoCE_v2", 0x11): (1, 74, 0, {"read_req": 1}),
    }
    n = sum(v[0] for v in want.values())
    with start_agent(pair, "-m", "xdp", "-f", "roce") as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, "xdp")
        for f in files:
            run(["ip", "netns", "exec", pair.peer_ns, tcpreplay, "-q", "-t", "-i", pair.peer_if, str(f)], timeout=60)
        assert wait_seen(pair.ns, pair.ifname, n)["seen"] == n
        assert a.stop() == 0
    recs = a.records()
    su = check_accounting(recs, pair.ifname)
    assert su[-1]["packets_filtered_total"] == 0
    got = {(k.traffic_type, k.src_ip, k.dst_ip, k.dst_qp): v
           for k, v in aggregate(recs, pair.ifname, AGENT_IP4).items()}
    assert got == want


def tshark_udp_flows(path: Path) -> dict[Key, tuple[int, int]]:
    """UDP flows (inner IPv4 of PPPoE included) as tshark reads the capture: Key -> (packets, bytes)."""
    tshark = require_tool("tshark", "tshark")
    fields = ["frame.len", "vlan.id", "ip.src", "ip.dst", "udp.srcport", "udp.dstport"]
    p = run([tshark, "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=f",
             *sum((["-e", f] for f in fields), [])], timeout=60)
    out: dict[Key, tuple[int, int]] = {}
    for line in p.stdout.splitlines():
        flen, vlan, src, dst, sport, dport = line.split("\t")
        k = Key("ingress", src, dst, int(sport), int(dport), 17, "UDP", int(vlan or 0), None)
        pk, by = out.get(k, (0, 0))
        out[k] = (pk + 1, by + int(flen))
    return out


@pytest.mark.parametrize("mode", ["xdp", "tc"])
@pytest.mark.parametrize("exclude_dns", [False, True], ids=["dns-counted", "exclude-dns"])
def test_replayed_pppoe_dns_matches_tshark(pair: VethPair, mode: str, exclude_dns: bool) -> None:
    """ndpi's dns.pcap replayed onto the veth: three plain IPv4 DNS frames and two QinQ +
    PPPoE session frames, whose inner IPv4/UDP flows (outer VLAN 421) are the flows tshark
    sees. With --exclude-dns all five are filtered, bytes included."""
    tcpreplay = require_tool("tcpreplay", "tcpreplay")
    path = DATA / "dns.pcap"
    want = tshark_udp_flows(path)
    assert sorted(want.values()) == [(1, 75), (1, 91), (1, 219), (2, 151)], want
    assert {k.vlan for k in want} == {0, 421}  # the PPPoE frames are in the oracle, under their outer tag
    n, nbytes = sum(v[0] for v in want.values()), sum(v[1] for v in want.values())
    assert (n, nbytes) == (5, 536)
    args = ["-m", mode] + (["--exclude-dns"] if exclude_dns else [])
    with start_agent(pair, *args) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, mode)
        run(["ip", "netns", "exec", pair.peer_ns, tcpreplay, "-q", "-t", "-i", pair.peer_if, str(path)], timeout=60)
        assert wait_seen(pair.ns, pair.ifname, n)["seen"] == n
        assert a.stop() == 0
    recs = a.records()
    su = check_accounting(recs, pair.ifname)
    got = {k: v[:2] for k, v in aggregate(recs, pair.ifname, AGENT_IP4).items()}
    if exclude_dns:
        assert got == {}
        assert (su[-1]["packets_filtered_total"], su[-1]["bytes_filtered_total"]) == (n, nbytes), su[-1]
    else:
        assert got == want
        assert su[-1]["packets_filtered_total"] == 0
