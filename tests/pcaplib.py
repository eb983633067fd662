"""Minimal pcap / pcapng reader (and a pcap writer) for test captures. Pure Python.

Only what the tests need: Ethernet frames (link type 1) from classic pcap (micro- or
nanosecond, either byte order) and pcapng (Section Header, Interface Description,
Enhanced and Simple Packet blocks; other blocks are skipped).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

LINKTYPE_ETHERNET = 1

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",  # microseconds
    b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">",  # nanoseconds
}
_PCAPNG_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D


@dataclass(frozen=True)
class Packet:
    data: bytes  # the captured bytes
    orig_len: int  # the frame's length on the wire (differs when the capture was snapped)
    linktype: int


class PcapError(ValueError):
    """The file is not a capture this reader understands."""


def read_packets(path: str | Path) -> list[Packet]:
    """Every packet of a pcap or pcapng file, in file order."""
    raw = Path(path).read_bytes()
    if raw[:4] in _PCAP_MAGICS:
        return _read_pcap(raw)
    if len(raw) >= 12 and struct.unpack_from("<I", raw, 0)[0] == _PCAPNG_SHB:
        return _read_pcapng(raw)
    raise PcapError(f"{path}: neither pcap nor pcapng (magic {raw[:4].hex()})")


def read_frames(path: str | Path) -> list[bytes]:
    """The Ethernet frames of a capture; refuses snapped frames and other link types."""
    out = []
    for i, p in enumerate(read_packets(path)):
        if p.linktype != LINKTYPE_ETHERNET:
            raise PcapError(f"{path}: packet {i + 1} has link type {p.linktype}, not Ethernet")
        if len(p.data) != p.orig_len:
            raise PcapError(f"{path}: packet {i + 1} was snapped ({len(p.data)} of {p.orig_len} bytes)")
        out.append(p.data)
    return out


def _read_pcap(raw: bytes) -> list[Packet]:
    e = _PCAP_MAGICS[raw[:4]]
    if len(raw) < 24:
        raise PcapError("pcap header truncated")
    linktype = struct.unpack_from(e + "I", raw, 20)[0] & 0x0FFFFFFF  # high bits: FCS info
    out, pos = [], 24
    while pos + 16 <= len(raw):
        _sec, _frac, incl, orig = struct.unpack_from(e + "4I", raw, pos)
        pos += 16
        if pos + incl > len(raw):
            raise PcapError(f"pcap record at {pos - 16} runs past the end of the file")
        out.append(Packet(raw[pos:pos + incl], orig, linktype))
        pos += incl
    if pos != len(raw):
        raise PcapError(f"{len(raw) - pos} trailing bytes after the last pcap record")
    return out


def _read_pcapng(raw: bytes) -> list[Packet]:
    out: list[Packet] = []
    pos, e = 0, "<"
    ifaces: list[int] = []  # link type per interface id, per section
    while pos + 12 <= len(raw):
        btype = struct.unpack_from(e + "I", raw, pos)[0]
        if btype == _PCAPNG_SHB:
            bom = raw[pos + 8:pos + 12]
            e = "<" if struct.unpack("<I", bom)[0] == _BOM else ">"
            if struct.unpack(e + "I", bom)[0] != _BOM:
                raise PcapError(f"pcapng section at {pos}: bad byte-order magic {bom.hex()}")
            ifaces = []
        blen = struct.unpack_from(e + "I", raw, pos + 4)[0]
        if blen < 12 or blen % 4 or pos + blen > len(raw):
            raise PcapError(f"pcapng block at {pos} has bad length {blen}")
        if struct.unpack_from(e + "I", raw, pos + blen - 4)[0] != blen:
            raise PcapError(f"pcapng block at {pos}: trailing length differs")
        body = raw[pos + 8:pos + blen - 4]
        if btype == 1:  # Interface Description Block
            ifaces.append(struct.unpack_from(e + "H", body, 0)[0])
        elif btype == 6:  # Enhanced Packet Block
            ifid, _hi, _lo, cap, orig = struct.unpack_from(e + "5I", body, 0)
            out.append(Packet(body[20:20 + cap], orig, ifaces[ifid]))
        elif btype == 3:  # Simple Packet Block: interface 0, no captured length field
            orig = struct.unpack_from(e + "I", body, 0)[0]
            out.append(Packet(body[4:4 + orig], orig, ifaces[0]))
        pos += blen
    if pos != len(raw):
        raise PcapError(f"{len(raw) - pos} trailing bytes after the last pcapng block")
    return out


def write_pcap(path: str | Path, frames: list[bytes], linktype: int = LINKTYPE_ETHERNET) -> None:
    """A classic little-endian microsecond pcap (timestamps = frame index in seconds)."""
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for i, f in enumerate(frames):
        parts.append(struct.pack("<4I", i, 0, len(f), len(f)) + f)
    Path(path).write_bytes(b"".join(parts))
