"""What the benchmarks send and count: their frame classes and many-flow frames, built with the tests'
frame builder (tests/frames.py), and synthetic flow keys (``flow_keys``), as the datapath would write
them, for the benchmarks of what user space does.

Pure functions, no I/O. Every frame carries PAYLOAD_LEN bytes of L4 payload. Addresses come from the
documentation ranges only: 198.51.100.0/24 and 203.0.113.0/24 (RFC 5737), 2001:db8::/32 (RFC 3849);
MACs are locally administered (frames.MAC_A to frames.MAC_B, an address nobody owns).
"""

from __future__ import annotations

import ipaddress

import common  # noqa: F401 - first: puts tests/ (frames) on the import path
import frames as F
import numpy as np

from xtrace_catch.kernel.layout import FLOW_KEY, TrafficType

__all__ = ["PAYLOAD_LEN", "V4_SRC", "V4_DST", "V6_SRC", "V6_DST", "ipv4_udp", "ipv4_tcp", "ipv6_udp", "roce_v2",
           "roce_v1", "frame_classes", "many_ipv4_udp", "flow_keys"]

PAYLOAD_LEN = 64  # L4 payload bytes: small frames, where per-packet cost matters most
PAYLOAD = bytes(i & 0xFF for i in range(PAYLOAD_LEN))
MAX_FLOWS = 254 * (65536 - 1024)  # source addresses x source ports

V4_SRC = "198.51.100.1"
V4_DST = "203.0.113.1"
V6_SRC = "2001:db8::1"
V6_DST = "2001:db8::2"


def _ipv4(proto: int, src: str, dst: str, l4: bytes) -> bytes:
    return F.ipv4(proto, src, dst, l4, ident=0, df=True)


def ipv4_udp(src: str = V4_SRC, dst: str = V4_DST, sport: int = 49152, dport: int = 5201,
             vlan: int | None = None) -> bytes:
    tags = (F.vlan_tag(vlan),) if vlan is not None else ()
    return F.ether(F.ETH_P_IP, _ipv4(F.IPPROTO_UDP, src, dst, F.udp(sport, dport, PAYLOAD)), tags=tags)


def ipv4_tcp(src: str = V4_SRC, dst: str = V4_DST, sport: int = 49152, dport: int = 5201) -> bytes:
    return F.ether(F.ETH_P_IP, _ipv4(F.IPPROTO_TCP, src, dst, F.tcp(sport, dport, PAYLOAD)))


def ipv6_udp(src: str = V6_SRC, dst: str = V6_DST, sport: int = 49152, dport: int = 5201) -> bytes:
    return F.ether(F.ETH_P_IPV6, F.ipv6(F.IPPROTO_UDP, src, dst, F.udp(sport, dport, PAYLOAD)))


def roce_v2(src: str = V4_SRC, dst: str = V4_DST, sport: int = 49152, dest_qp: int = 0x000123) -> bytes:
    """IPv4/UDP to 4791, 12-byte BTH (RC SEND only), payload, 4-byte ICRC."""
    return F.ether(F.ETH_P_IP, _ipv4(F.IPPROTO_UDP, src, dst, F.roce_v2(F.OP_SEND_ONLY, dest_qp, PAYLOAD,
                                                                         sport=sport)))


def roce_v1(sgid: str = V6_SRC, dgid: str = V6_DST, dest_qp: int = 0x000123) -> bytes:
    """Ethertype 0x8915, 40-byte GRH (next header 0x1B), 12-byte BTH, payload, ICRC.
    GIDs are IPv6-formatted; ours are documentation addresses."""
    return F.ether(F.ETH_P_ROCE, F.roce_v1(F.OP_SEND_ONLY, dest_qp, PAYLOAD, sgid=sgid, dgid=dgid))


def frame_classes() -> dict[str, bytes]:
    """The benchmark's frame classes, by display name."""
    return {
        "IPv4 UDP": ipv4_udp(),
        "IPv4 TCP": ipv4_tcp(),
        "IPv6 UDP": ipv6_udp(),
        "RoCE v2": roce_v2(),
        "RoCE v1": roce_v1(),
        "VLAN IPv4 UDP": ipv4_udp(vlan=100),
    }


def _check(what: str, n: int) -> None:
    if not 0 < n <= MAX_FLOWS:
        raise ValueError(f"{what}: n={n} out of range")


def many_ipv4_udp(n: int) -> list[bytes]:
    """`n` IPv4 UDP frames of pairwise distinct flows: the source address walks 198.51.100.1-254,
    then the source port moves on (from 1024), so up to 254 * 64512 flows."""
    _check("many_ipv4_udp", n)
    return [ipv4_udp(src=f"198.51.100.{1 + i % 254}", dst=V4_DST, sport=1024 + i // 254, dport=5201)
            for i in range(n)]


def flow_keys(n: int) -> np.ndarray:
    """`n` pairwise distinct FLOW_KEY records, IPv4 (v4-mapped, as the datapath keys it), a third each
    TCP to 443, UDP to 5201 and RoCE v2 (UDP 4791, dest QP 0x100-0x4e7), both directions. The source
    walks 198.51.100.1-254, then the source port moves on (from 1024), as in `many_ipv4_udp`; the
    destination walks 203.0.113.1-254."""
    _check("flow_keys", n)
    i = np.arange(n)
    keys = np.zeros(n, dtype=FLOW_KEY)
    for name, net in (("src_addr", V4_SRC), ("dst_addr", V4_DST)):
        a = keys[name]
        a[:, 10:12] = 0xFF
        a[:, 12:15] = np.frombuffer(ipaddress.IPv4Address(net).packed[:3], dtype=np.uint8)
    keys["src_addr"][:, 15] = 1 + i % 254
    keys["dst_addr"][:, 15] = 1 + (i // 7) % 254
    kind = i % 3  # 0 TCP, 1 UDP, 2 RoCE v2
    keys["src_port"] = 1024 + i // 254
    keys["dst_port"] = np.choose(kind, [443, 5201, F.ROCE_V2_PORT])
    keys["dst_qp"] = np.where(kind == 2, 0x100 + i % 1000, 0)
    keys["eth_proto"] = F.ETH_P_IP
    keys["protocol"] = np.where(kind == 0, F.IPPROTO_TCP, F.IPPROTO_UDP)
    keys["traffic_type"] = np.choose(kind, [int(TrafficType.TCP), int(TrafficType.UDP), int(TrafficType.ROCE_V2)])
    keys["direction"] = (i // 3) % 2
    return keys
