"""Benchmark frames, built byte by byte: Ethernet (optionally 802.1Q-tagged) carrying IPv4/IPv6 UDP or TCP,
RoCE v2 (UDP 4791 + BTH) and RoCE v1 (ethertype 0x8915 + GRH + BTH). Also synthetic flow keys
(``flow_keys``), as the datapath would write them, for the benchmarks of what user space does.

Pure functions, no I/O. Addresses come from the documentation ranges only: 198.51.100.0/24 and
203.0.113.0/24 (RFC 5737), 2001:db8::/32 (RFC 3849); MACs are locally administered.
"""

from __future__ import annotations

import ipaddress
import struct

import numpy as np

from xtrace_catch.kernel.layout import FLOW_KEY, TrafficType

__all__ = [
    "PAYLOAD_LEN",
    "V4_SRC",
    "V4_DST",
    "V6_SRC",
    "V6_DST",
    "ipv4_udp",
    "ipv4_tcp",
    "ipv6_udp",
    "roce_v2",
    "roce_v1",
    "frame_classes",
    "many_ipv4_udp",
    "flow_keys",
]

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_ROCE = 0x8915
IPPROTO_TCP = 6
IPPROTO_UDP = 17
ROCE_V2_PORT = 4791
GRH_NEXT_BTH = 0x1B
BTH_OP_RC_SEND_ONLY = 0x04

MAC_DST = bytes.fromhex("020000000002")
MAC_SRC = bytes.fromhex("020000000001")
PAYLOAD_LEN = 64  # L4 payload bytes: small frames, where per-packet cost matters most

V4_SRC = "198.51.100.1"
V4_DST = "203.0.113.1"
V6_SRC = "2001:db8::1"
V6_DST = "2001:db8::2"


def _csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _eth(ethertype: int, vlan: int | None = None) -> bytes:
    if vlan is None:
        return MAC_DST + MAC_SRC + struct.pack("!H", ethertype)
    return MAC_DST + MAC_SRC + struct.pack("!HHH", ETH_P_8021Q, vlan & 0x0FFF, ethertype)


def _ipv4(src: str, dst: str, proto: int, l4_len: int) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 0, 0x4000, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]


def _ipv6(src: str, dst: str, next_header: int, l4_len: int) -> bytes:
    return struct.pack(
        "!IHBB16s16s", 6 << 28, l4_len, next_header, 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    )


def _udp(sport: int, dport: int, payload_len: int) -> bytes:
    # Checksum 0 ("none"): the datapath never verifies it.
    return struct.pack("!HHHH", sport, dport, 8 + payload_len, 0)


def _tcp(sport: int, dport: int) -> bytes:
    # 20-byte header (data offset 5), ACK set.
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x10, 65535, 0, 0)


def _bth(opcode: int, dest_qp: int, psn: int = 0) -> bytes:
    # opcode, SE/M/pad/tver, P_Key, reserved + 24-bit dest QP, A + 24-bit PSN
    return struct.pack("!BBHII", opcode, 0, 0xFFFF, dest_qp & 0xFFFFFF, psn & 0xFFFFFF)


def _payload(n: int) -> bytes:
    return bytes(i & 0xFF for i in range(n))


def ipv4_udp(src: str = V4_SRC, dst: str = V4_DST, sport: int = 49152, dport: int = 5201,
             vlan: int | None = None) -> bytes:
    l4 = _udp(sport, dport, PAYLOAD_LEN) + _payload(PAYLOAD_LEN)
    return _eth(ETH_P_IP, vlan) + _ipv4(src, dst, IPPROTO_UDP, len(l4)) + l4


def ipv4_tcp(src: str = V4_SRC, dst: str = V4_DST, sport: int = 49152, dport: int = 5201) -> bytes:
    l4 = _tcp(sport, dport) + _payload(PAYLOAD_LEN)
    return _eth(ETH_P_IP) + _ipv4(src, dst, IPPROTO_TCP, len(l4)) + l4


def ipv6_udp(src: str = V6_SRC, dst: str = V6_DST, sport: int = 49152, dport: int = 5201) -> bytes:
    l4 = _udp(sport, dport, PAYLOAD_LEN) + _payload(PAYLOAD_LEN)
    return _eth(ETH_P_IPV6) + _ipv6(src, dst, IPPROTO_UDP, len(l4)) + l4


def roce_v2(src: str = V4_SRC, dst: str = V4_DST, sport: int = 49152, dest_qp: int = 0x000123) -> bytes:
    """IPv4/UDP to 4791, 12-byte BTH (RC SEND only), payload, 4-byte ICRC."""
    ib = _bth(BTH_OP_RC_SEND_ONLY, dest_qp) + _payload(PAYLOAD_LEN) + b"\0" * 4
    l4 = _udp(sport, ROCE_V2_PORT, len(ib)) + ib
    return _eth(ETH_P_IP) + _ipv4(src, dst, IPPROTO_UDP, len(l4)) + l4


def roce_v1(sgid: str = V6_SRC, dgid: str = V6_DST, dest_qp: int = 0x000123) -> bytes:
    """Ethertype 0x8915, 40-byte GRH (next header 0x1B), 12-byte BTH, payload, ICRC.
    GIDs are IPv6-formatted; ours are documentation addresses."""
    ib = _bth(BTH_OP_RC_SEND_ONLY, dest_qp) + _payload(PAYLOAD_LEN) + b"\0" * 4
    return _eth(ETH_P_ROCE) + _ipv6(sgid, dgid, GRH_NEXT_BTH, len(ib)) + ib


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


def many_ipv4_udp(n: int) -> list[bytes]:
    """`n` IPv4 UDP frames of pairwise distinct flows: the source address walks 198.51.100.1-254,
    then the source port moves on (from 1024), so up to 254 * 64512 flows."""
    if not 0 < n <= 254 * (65536 - 1024):
        raise ValueError(f"many_ipv4_udp: n={n} out of range")
    return [
        ipv4_udp(src=f"198.51.100.{1 + i % 254}", dst=V4_DST, sport=1024 + i // 254, dport=5201)
        for i in range(n)
    ]


def flow_keys(n: int) -> np.ndarray:
    """`n` pairwise distinct FLOW_KEY records, IPv4 (v4-mapped, as the datapath keys it), a third each
    TCP to 443, UDP to 5201 and RoCE v2 (UDP 4791, dest QP 0x100-0x4e7), both directions. The source
    walks 198.51.100.1-254, then the source port moves on (from 1024), as in `many_ipv4_udp`; the
    destination walks 203.0.113.1-254."""
    if not 0 < n <= 254 * (65536 - 1024):
        raise ValueError(f"flow_keys: n={n} out of range")
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
    keys["dst_port"] = np.choose(kind, [443, 5201, ROCE_V2_PORT])
    keys["dst_qp"] = np.where(kind == 2, 0x100 + i % 1000, 0)
    keys["eth_proto"] = ETH_P_IP
    keys["protocol"] = np.where(kind == 0, IPPROTO_TCP, IPPROTO_UDP)
    keys["traffic_type"] = np.choose(kind, [int(TrafficType.TCP), int(TrafficType.UDP), int(TrafficType.ROCE_V2)])
    keys["direction"] = (i // 3) % 2
    return keys
