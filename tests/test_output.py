"""Flow lines: the contract's exact text and JSON (DESIGN.md), from the one renderer (LineWriter),
for every kind of flow, across intervals: hand-written expectations plus golden files.

The golden files (tests/data/golden/) hold 300 random flows' lines over three intervals. They
were written once by the reference formatters that LineWriter replaced (the two agreed line for
line); regenerate only on a deliberate contract change: XT_UPDATE_GOLDEN=1 pytest tests/test_output.py."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from xtrace_catch.flows import output
from xtrace_catch.flows.collector import NV, Interval, V
from xtrace_catch.kernel.layout import FLOW_KEY, Direction, TrafficType

T, D = TrafficType, Direction
TS = 1_704_164_645.25


def _key(src: bytes, dst: bytes, sport: int, dport: int, proto: int, tt: TrafficType, d: Direction,
         eth: int, vlan: int = 0, qp: int = 0) -> np.void:
    k = np.zeros(1, dtype=FLOW_KEY)[0]
    k["src_addr"], k["dst_addr"] = np.frombuffer(src, np.uint8), np.frombuffer(dst, np.uint8)
    k["src_port"], k["dst_port"], k["protocol"] = sport, dport, proto
    k["traffic_type"], k["direction"], k["eth_proto"], k["vlan_id"], k["dst_qp"] = int(tt), int(d), eth, vlan, qp
    return k


def v4(a: str) -> bytes:
    return bytes(10) + b"\xff\xff" + bytes(int(x) for x in a.split("."))


V6A = bytes.fromhex("20010db8000000000000000000000001")
V6B = bytes.fromhex("20010db800010000000000000000abcd")

KEYS = [
    _key(v4("198.51.100.1"), v4("198.51.100.2"), 45678, 53, 17, T.UDP, D.INGRESS, 0x0800),
    _key(V6A, V6B, 443, 50000, 6, T.TCP, D.EGRESS, 0x86DD),
    _key(v4("203.0.113.5"), v4("203.0.113.6"), 49152, 4791, 17, T.ROCE_V2, D.INGRESS, 0x0800, vlan=100, qp=0x12),
    _key(V6A, V6B, 0, 0, 0, T.ROCE_V1, D.EGRESS, 0x8915, qp=0xABCDEF),
    _key(bytes(16), bytes(16), 0, 0, 0, T.OTHER, D.INGRESS, 0x0806),
    _key(v4("198.51.100.9"), v4("198.51.100.10"), 0, 0, 1, T.ICMP, D.EGRESS, 0x0800, vlan=7),
]


def _interval(keys: list[np.void], delta: np.ndarray, totals: np.ndarray, ts: float = TS) -> Interval:
    k = np.array(keys, dtype=FLOW_KEY)
    z = np.zeros((2, 8, NV), np.uint64)
    return Interval(seq=1, time=ts, elapsed=1.0, keys=k, delta=delta, totals=totals, all_keys=k, all_totals=totals,
                    all_delta=delta, stats_delta={}, stats_total={}, overflow_delta=z, overflow_total=z,
                    flows_tracked=len(keys), evicted=0, collect_seconds=0.0)


GOLDEN = Path(__file__).parent / "data" / "golden"


def test_text_lines_are_the_contracts() -> None:
    delta = np.zeros((len(KEYS), NV), np.uint64)
    delta[:, V["packets"]], delta[:, V["bytes"]] = [1500, 3, 9, 2, 1, 4], [2048000, 180, 9000, 200, 60, 392]
    delta[2, V["ecn_ce"]], delta[2, V["cnp"]], delta[0, V["fragments"]] = 5, 2, 1
    iv = _interval(KEYS, delta, delta * np.uint64(2))
    assert output.LineWriter("eth0", "198.51.100.1", as_json=False).lines(iv) == [
        "198.51.100.1:45678 -> 198.51.100.2:53 proto=17 [UDP] packets=1500 bytes=2048000 host_ip=198.51.100.1 "
        "dir=ingress frags=1",
        "[2001:db8::1]:443 -> [2001:db8:1::abcd]:50000 proto=6 [TCP] packets=3 bytes=180 host_ip=198.51.100.1 "
        "dir=egress",
        "203.0.113.5:49152 -> 203.0.113.6:4791 proto=17 [RoCE v2/UDP] packets=9 bytes=9000 host_ip=198.51.100.1 "
        "dir=ingress qp=0x000012 ecn_ce=5 cnp=2 vlan=100",
        "[2001:db8::1]:0 -> [2001:db8:1::abcd]:0 proto=0 [RoCE v1/IBoE] packets=2 bytes=200 host_ip=198.51.100.1 "
        "dir=egress qp=0xabcdef",
        "- -> - proto=0 [Other] packets=1 bytes=60 host_ip=198.51.100.1 dir=ingress ethertype=0x0806",
        "198.51.100.9:0 -> 198.51.100.10:0 proto=1 [ICMP] packets=4 bytes=392 host_ip=198.51.100.1 dir=egress vlan=7",
    ]


def test_json_records_carry_the_required_keys() -> None:
    delta = np.zeros((len(KEYS), NV), np.uint64)
    delta[:, V["packets"]], delta[:, V["bytes"]] = 2, 100
    delta[2, V["op_write"]], delta[2, V["cnp"]] = 2, 1
    lines = output.LineWriter("eth0", "198.51.100.1", as_json=True).lines(_interval(KEYS, delta, delta * np.uint64(5)))
    recs = [json.loads(x) for x in lines]
    assert recs[0] == {
        "record": "flow", "time": "2024-01-02T03:04:05.250Z", "interface": "eth0", "direction": "ingress",
        "src_ip": "198.51.100.1", "dst_ip": "198.51.100.2", "src_port": 45678, "dst_port": 53, "protocol": 17,
        "traffic_type": "UDP", "packets": 2, "bytes": 100, "packets_total": 10, "bytes_total": 500,
        "host_ip": "198.51.100.1", "ecn_ce": 0, "ethertype": 0x0800, "vlan": 0, "fragments": 0,
    }
    assert recs[2]["traffic_type"] == "RoCE_v2" and recs[2]["dst_qp"] == 0x12 and recs[2]["cnp"] == 1
    assert recs[2]["dst_qp_hex"] == "0x000012"  # DESIGN.md: the text form of a QP, everywhere
    assert "dst_qp_hex" not in recs[0]
    assert recs[2]["opcode"] == {"send": 0, "write": 2, "read_req": 0, "read_resp": 0, "ack": 0, "atomic": 0,
                                 "other": 0}
    assert recs[1]["src_ip"] == "2001:db8::1" and recs[3]["traffic_type"] == "RoCE_v1"
    assert recs[4]["src_ip"] == "" and recs[4]["ethertype"] == 0x0806


def _random_keys(rng: random.Random, n: int) -> list[np.void]:
    out = []
    for _ in range(n):
        tt = rng.choice(list(T))
        six = rng.random() < 0.3
        eth = rng.choice([0x0800, 0x86DD, 0x8915, 0x0806]) if tt is T.OTHER else (0x86DD if six else 0x0800)
        addr = (lambda: b"\x20\x01\x0d\xb8" + rng.randbytes(12)) if six else (lambda: v4(
            f"203.0.113.{rng.randrange(256)}"))
        out.append(_key(addr(), addr(), rng.randrange(65536), rng.randrange(65536), rng.choice([0, 1, 6, 17, 58]),
                        tt, rng.choice(list(D)), eth, vlan=rng.choice([0, 0, 1, 4094]),
                        qp=rng.randrange(1 << 24)))
    return out


def _golden_intervals() -> list[Interval]:
    """Random flows and counts (zero and non-zero extras), three intervals with flows coming and going."""
    rng = random.Random(7)
    pool = _random_keys(rng, 400)
    out = []
    for step in range(3):
        keys = rng.sample(pool, 100)
        delta = np.array([[rng.choice([0, 0, 1, 7, 2**40]) for _ in range(NV)] for _ in keys], np.uint64)
        totals = delta + np.uint64(rng.randrange(2**50))
        out.append(_interval(keys, delta, totals, ts=TS + step * 5.5))
    return out


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_line_writer_matches_the_golden_lines(as_json: bool) -> None:
    """Every line identical to the golden file; an interface name with a % and a quote."""
    w = output.LineWriter('ve%th"0', "2001:db8::7", as_json=as_json)
    got = [line for iv in _golden_intervals() for line in w.lines(iv)]
    path = GOLDEN / ("flow_lines.jsonl" if as_json else "flow_lines.txt")
    if os.environ.get("XT_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(got) + "\n")
    want = path.read_text().splitlines()
    assert len(got) == len(want) == 300
    for i, (g, x) in enumerate(zip(got, want)):
        assert g == x, f"line {i + 1} of {path.name}"
    if as_json:
        assert all(json.loads(line)["interface"] == 've%th"0' for line in got)


def test_no_flows_no_lines() -> None:
    iv = _interval([], np.zeros((0, NV), np.uint64), np.zeros((0, NV), np.uint64))
    assert output.LineWriter("eth0", "", as_json=True).lines(iv) == []


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_chunks_cover_every_flow_once_in_order(as_json: bool) -> None:
    rng = random.Random(11)
    keys = _random_keys(rng, 100)
    delta = np.array([[rng.randrange(5) for _ in range(NV)] for _ in keys], np.uint64)
    iv = _interval(keys, delta, delta * np.uint64(9))
    chunks = list(output.LineWriter("eth0", "198.51.100.1", as_json=as_json).chunks(iv, size=7))
    assert [len(c) for c in chunks] == [7] * 14 + [2]
    assert [line for c in chunks for line in c] == output.LineWriter("eth0", "198.51.100.1", as_json).lines(iv)
