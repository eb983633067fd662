"""A small frame builder for datapath tests (struct only, no scapy).

Builders nest inside out: each takes its payload and returns the bytes with its header
in front, e.g. ``ether(ETH_P_IP, ipv4(IPPROTO_UDP, A, B, udp(1000, 53, b"q")))``.
IPv4 header checksums are correct; TCP/UDP/ICMP checksums are left 0 (the datapath
never reads them, and UDP over IPv4 allows 0). Addresses in tests come only from the
documentation ranges 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32.
"""

from __future__ import annotations

import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_ROCE = 0x8915
ETH_P_PPPOE_DISC = 0x8863
ETH_P_PPPOE_SESS = 0x8864

# PPP protocol field values (RFC 1661, 1332, 5072)
PPP_IP, PPP_IPV6, PPP_LCP = 0x0021, 0x0057, 0xC021

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_GRE = 47
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

ROCE_V2_PORT = 4791
GRH_NEXT_BTH = 0x1B

# ECN codepoints (the low two bits of TOS / traffic class)
NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3

# BTH opcodes (IBTA vol. 1, table 38), RC transport (high bits 000)
OP_SEND_FIRST = 0x00
OP_SEND_MIDDLE = 0x01
OP_SEND_LAST = 0x02
OP_SEND_LAST_IMM = 0x03
OP_SEND_ONLY = 0x04
OP_SEND_ONLY_IMM = 0x05
OP_WRITE_FIRST = 0x06
OP_WRITE_MIDDLE = 0x07
OP_WRITE_LAST = 0x08
OP_WRITE_LAST_IMM = 0x09
OP_WRITE_ONLY = 0x0A
OP_WRITE_ONLY_IMM = 0x0B
OP_READ_REQUEST = 0x0C
OP_READ_RESP_FIRST = 0x0D
OP_READ_RESP_MIDDLE = 0x0E
OP_READ_RESP_LAST = 0x0F
OP_READ_RESP_ONLY = 0x10
OP_ACK = 0x11
OP_ATOMIC_ACK = 0x12
OP_CMP_SWAP = 0x13
OP_FETCH_ADD = 0x14
OP_SEND_LAST_INV = 0x16
OP_SEND_ONLY_INV = 0x17
OP_UD_SEND_ONLY = 0x64  # UD (high bits 011) SEND only
OP_CNP = 0x81

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _ip(text: str, version: int) -> bytes:
    addr = ipaddress.ip_address(text)
    if addr.version != version:
        raise ValueError(f"{text} is not IPv{version}")
    return addr.packed


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# -- link layer ---------------------------------------------------------------


def vlan_tag(vid: int, tpid: int = ETH_P_8021Q, pcp: int = 0, dei: int = 0) -> tuple[int, int]:
    """A tag for :func:`ether`: (TPID, TCI)."""
    return tpid, (pcp << 13) | (dei << 12) | (vid & 0x0FFF)


def ether(ethertype: int, payload: bytes, *, dst: bytes = MAC_B, src: bytes = MAC_A,
          tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    """Ethernet II, with 802.1Q/802.1ad tags (outermost first) before the ethertype."""
    out = dst + src
    for tpid, tci in tags:
        out += struct.pack("!HH", tpid, tci)
    return out + struct.pack("!H", ethertype) + payload


def pppoe(ppp_proto: int, payload: bytes, *, session: int = 0x2A, code: int = 0x00, ver_type: int = 0x11) -> bytes:
    """The PPPoE session stage header (RFC 2516, 5.5) and the PPP protocol field (RFC 1661, 2),
    for ``ether(ETH_P_PPPOE_SESS, ...)``."""
    return struct.pack("!BBHHH", ver_type, code, session, 2 + len(payload), ppp_proto) + payload


def ipoib(ethertype: int, payload: bytes, *, hwaddr: bytes = bytes(range(20))) -> bytes:
    """IPoIB framing as an IPoIB netdev hands it to XDP/TC: a 20-byte pseudo header
    (the peer's hardware address: QPN and GID), the 2-byte ethertype, 2 reserved bytes."""
    assert len(hwaddr) == 20
    return hwaddr + struct.pack("!HH", ethertype, 0) + payload


# -- IPv4 / IPv6 --------------------------------------------------------------


def ipv4(proto: int, src: str, dst: str, payload: bytes, *, tos: int = 0, ttl: int = 64, ident: int = 0x1234,
         df: bool = False, mf: bool = False, frag_offset: int = 0, options: bytes = b"",
         total_length: int | None = None) -> bytes:
    """IPv4 header (+ options, padded to 4 bytes) + payload. `frag_offset` in 8-byte units."""
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)  # EOL padding
    ihl = 5 + len(options) // 4
    assert ihl <= 15
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset & 0x1FFF)
    tot = total_length if total_length is not None else ihl * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, tot, ident, flags, ttl, proto, 0,
                      _ip(src, 4), _ip(dst, 4)) + options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv4_option_rr(slots: int = 2) -> bytes:
    """A Record Route option (type 7) with `slots` empty address slots."""
    return struct.pack("!BBB", 7, 3 + 4 * slots, 4) + b"\0" * (4 * slots)


def ipv6(nexthdr: int, src: str, dst: str, payload: bytes, *, tclass: int = 0, flow: int = 0,
         hop_limit: int = 64) -> bytes:
    """IPv6 fixed header + payload (extension headers are part of the payload)."""
    first = (6 << 28) | ((tclass & 0xFF) << 20) | (flow & 0xFFFFF)
    return struct.pack("!IHBB16s16s", first, len(payload), nexthdr, hop_limit,
                       _ip(src, 6), _ip(dst, 6)) + payload


def _padded_options(nexthdr: int, units: int) -> bytes:
    """A hop-by-hop/destination options header of (units+1)*8 bytes, filled with PadN."""
    body = 6 + 8 * units  # bytes after nexthdr and hdr_ext_len
    return struct.pack("!BBBB", nexthdr, units, 1, body - 2) + b"\0" * (body - 2)


def ext_hop_by_hop(nexthdr: int, units: int = 0) -> bytes:
    """Hop-by-hop options header (next header 0), (units+1)*8 bytes."""
    return _padded_options(nexthdr, units)


def ext_dest_opts(nexthdr: int, units: int = 0) -> bytes:
    """Destination options header (next header 60), (units+1)*8 bytes."""
    return _padded_options(nexthdr, units)


def ext_routing(nexthdr: int, segments: tuple[str, ...] = ("2001:db8::fe",), routing_type: int = 4) -> bytes:
    """Routing header (next header 43); default type 4 (SRv6 SRH) with `segments`."""
    units = 2 * len(segments)
    last = len(segments) - 1
    hdr = struct.pack("!BBBBBBH", nexthdr, units, routing_type, last, last, 0, 0)
    return hdr + b"".join(_ip(s, 6) for s in segments)


def ext_fragment(nexthdr: int, offset: int = 0, more: bool = False, ident: int = 0xCAFE) -> bytes:
    """Fragment header (next header 44); `offset` in 8-byte units."""
    return struct.pack("!BBHI", nexthdr, 0, (offset << 3) | (1 if more else 0), ident)


def ext_ah(nexthdr: int, icv_len: int = 12, spi: int = 0x100, seq: int = 1) -> bytes:
    """Authentication header (next header 51): 12 bytes + ICV; length in 4-byte units minus 2."""
    total = 12 + icv_len
    assert total % 8 == 0, "AH in IPv6 is a multiple of 8 bytes"
    return struct.pack("!BBHII", nexthdr, total // 4 - 2, 0, spi, seq) + b"\xaa" * icv_len


# -- L4 -----------------------------------------------------------------------


def tcp(sport: int, dport: int, payload: bytes = b"", *, flags: int = TCP_ACK, seq: int = 1, ack: int = 1,
        options: bytes = b"", window: int = 65535) -> bytes:
    if len(options) % 4:
        options += b"\x01" * (4 - len(options) % 4)  # NOP padding
    doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0) + options + payload


def tcp_option_timestamps(tsval: int = 1, tsecr: int = 0) -> bytes:
    """NOP, NOP, Timestamps: the 12 option bytes Linux puts in most segments."""
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, tsval, tsecr)


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(type_: int = 8, code: int = 0, payload: bytes = b"", ident: int = 1, seq: int = 1) -> bytes:
    """ICMP (echo request by default)."""
    hdr = struct.pack("!BBHHH", type_, code, 0, ident, seq)
    c = csum(hdr + payload)
    return hdr[:2] + struct.pack("!H", c) + hdr[4:] + payload


def icmpv6(type_: int = 128, code: int = 0, payload: bytes = b"", ident: int = 1, seq: int = 1) -> bytes:
    """ICMPv6 (echo request by default; checksum left 0)."""
    return struct.pack("!BBHHH", type_, code, 0, ident, seq) + payload


# -- InfiniBand transport -------------------------------------------------------


def bth(opcode: int, dst_qp: int, psn: int = 0, pkey: int = 0xFFFF, ack_req: bool = False,
        solicited: bool = False, pad: int = 0) -> bytes:
    """Base Transport Header, 12 bytes."""
    flags = (0x80 if solicited else 0) | ((pad & 3) << 4)  # SE, M=0, PadCnt, TVer=0
    return struct.pack("!BBHII", opcode, flags, pkey, dst_qp & 0xFFFFFF,
                       (0x80000000 if ack_req else 0) | (psn & 0xFFFFFF))


def roce_v2(opcode: int, dst_qp: int, payload: bytes = b"", *, sport: int = 49152, psn: int = 0) -> bytes:
    """UDP to 4791 carrying BTH + payload + 4-byte ICRC (not computed)."""
    return udp(sport, ROCE_V2_PORT, bth(opcode, dst_qp, psn) + payload + b"\0\0\0\0")


def grh(sgid: str, dgid: str, payload: bytes, *, tclass: int = 0, flow: int = 0, hop_limit: int = 64,
        next_header: int = GRH_NEXT_BTH) -> bytes:
    """Global Route Header (40 bytes, laid out like IPv6) + payload."""
    first = (6 << 28) | ((tclass & 0xFF) << 20) | (flow & 0xFFFFF)
    return struct.pack("!IHBB16s16s", first, len(payload), next_header, hop_limit,
                       _ip(sgid, 6), _ip(dgid, 6)) + payload


def roce_v1(opcode: int, dst_qp: int, payload: bytes = b"", *, sgid: str = "2001:db8::1",
            dgid: str = "2001:db8::2", tclass: int = 0) -> bytes:
    """The RoCE v1 payload of an 0x8915 frame: GRH + BTH + payload + ICRC."""
    return grh(sgid, dgid, bth(opcode, dst_qp) + payload + b"\0\0\0\0", tclass=tclass)


# -- BPF_PROG_TEST_RUN context for TC programs -----------------------------------------

# struct __sk_buff (uapi/linux/bpf.h, an append-only ABI): its size and the two GSO fields a
# test run may set. test_layout checks them against the UAPI header and vmlinux BTF.
SKB_SIZE = 192
SKB_GSO_SEGS_OFF = 164
SKB_GSO_SIZE_OFF = 176


def skb_ctx(gso_segs: int = 0, gso_size: int = 0) -> bytes:
    """A struct __sk_buff for BPF_PROG_TEST_RUN's ctx_in: zero but for gso_segs/gso_size."""
    ctx = bytearray(SKB_SIZE)
    ctx[SKB_GSO_SEGS_OFF:SKB_GSO_SEGS_OFF + 4] = gso_segs.to_bytes(4, "little")
    ctx[SKB_GSO_SIZE_OFF:SKB_GSO_SIZE_OFF + 4] = gso_size.to_bytes(4, "little")
    return bytes(ctx)
