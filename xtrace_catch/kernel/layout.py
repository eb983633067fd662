"""The Python mirror of ebpf/xtrace.h: enums and numpy record types, checked against BTF.

Keep this file and the header in step; :func:`check_layout` turns any drift into a
clear error when the object is opened.
"""

from __future__ import annotations

import enum

import numpy as np

from ..errors import ObjectError
from .btf import Btf

__all__ = [
    "TrafficType",
    "Direction",
    "Filter",
    "LinkType",
    "FLOW_KEY",
    "FLOW_VALUE",
    "STATS",
    "VALUE_FIELDS",
    "STATS_FIELDS",
    "RODATA_VARS",
    "DEFAULT_FLOWS",
    "MAX_FLOWS",
    "check_layout",
]

DEFAULT_FLOWS = 65536
MAX_FLOWS = 1 << 24  # the flow map's largest size: ~2.4 GB of kernel memory at 144 B a flow
DNS_SERVERS_MAX = 64


class TrafficType(enum.IntEnum):
    OTHER = 0
    TCP = 1
    UDP = 2
    ICMP = 3
    ROCE_V2 = 4
    ROCE_V1 = 5
    IPOIB = 6

    @property
    def label(self) -> str:
        """The text output's label (DESIGN.md)."""
        return _TYPE_NAMES[self][0]

    @property
    def json_name(self) -> str:
        """The JSON/metrics value (DESIGN.md)."""
        return _TYPE_NAMES[self][1]

    @property
    def short(self) -> str:
        """The live table's TYPE column."""
        return _TYPE_NAMES[self][2]

    @classmethod
    def of(cls, value: int) -> TrafficType:
        """A key's traffic_type field; a value this version does not know is OTHER."""
        return _TYPES.get(value, cls.OTHER)


# The one name table of the traffic types: (text label, JSON/metrics value, live table column).
_TYPE_NAMES = {
    TrafficType.OTHER: ("Other", "Other", "Other"),
    TrafficType.TCP: ("TCP", "TCP", "TCP"),
    TrafficType.UDP: ("UDP", "UDP", "UDP"),
    TrafficType.ICMP: ("ICMP", "ICMP", "ICMP"),
    TrafficType.ROCE_V2: ("RoCE v2/UDP", "RoCE_v2", "RoCEv2"),
    TrafficType.ROCE_V1: ("RoCE v1/IBoE", "RoCE_v1", "RoCEv1"),
    TrafficType.IPOIB: ("IPoIB", "IPoIB", "IPoIB"),
}
_TYPES = {int(t): t for t in TrafficType}
TYPE_SLOTS = 8  # XT_TYPE_MAX: overflow table stride


class Direction(enum.IntEnum):
    INGRESS = 0
    EGRESS = 1

    @property
    def label(self) -> str:
        return _DIRECTION_LABELS[self]

    @classmethod
    def of(cls, value: int) -> Direction:
        """A key's direction field (its low bit)."""
        return _DIRECTIONS[value & 1]


_DIRECTION_LABELS = {Direction.INGRESS: "ingress", Direction.EGRESS: "egress"}
_DIRECTIONS = (Direction.INGRESS, Direction.EGRESS)


class Filter(enum.IntEnum):
    ALL = 0
    TCP = 1
    UDP = 2
    ROCE = 3
    ROCE_V1 = 4
    ROCE_V2 = 5
    IB = 6

    @classmethod
    def parse(cls, text: str) -> Filter:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(text) from None


class LinkType(enum.IntEnum):
    ETHERNET = 0
    INFINIBAND = 1


def _record(fields: list[tuple[str, str, int]], size: int) -> np.dtype:
    return np.dtype({
        "names": [f[0] for f in fields],
        "formats": [f[1] for f in fields],
        "offsets": [f[2] for f in fields],
        "itemsize": size,
    })


# (name, numpy format, offset) exactly as in xtrace.h
_KEY_FIELDS = [
    ("src_addr", "(16,)u1", 0), ("dst_addr", "(16,)u1", 16), ("src_port", "<u2", 32), ("dst_port", "<u2", 34),
    ("dst_qp", "<u4", 36), ("eth_proto", "<u2", 40), ("vlan_id", "<u2", 42), ("protocol", "u1", 44),
    ("traffic_type", "u1", 45), ("direction", "u1", 46), ("pad", "u1", 47),
]
VALUE_FIELDS = (
    "packets", "bytes", "ecn_ce", "cnp", "fragments", "op_send", "op_write", "op_read_req", "op_read_resp",
    "op_ack", "op_atomic", "op_other",
)
STATS_FIELDS = (
    "seen", "counted", "filtered", "truncated", "overflowed",
    "seen_bytes", "counted_bytes", "filtered_bytes", "truncated_bytes", "overflowed_bytes",
)

FLOW_KEY = _record(_KEY_FIELDS, 48)
FLOW_VALUE = _record([(n, "<u8", 8 * i) for i, n in enumerate(VALUE_FIELDS)], 8 * len(VALUE_FIELDS))
STATS = _record([(n, "<u8", 8 * i) for i, n in enumerate(STATS_FIELDS)], 8 * len(STATS_FIELDS))

# .rodata tunables: name -> size in bytes
RODATA_VARS = {"cfg_filter": 4, "cfg_exclude_dns": 4, "cfg_link_type": 4}

_STRUCTS = {"flow_key": FLOW_KEY, "flow_value": FLOW_VALUE, "xtrace_stats": STATS}


def check_layout(btf: Btf) -> None:
    """Raise ObjectError naming the struct and field where the object's BTF and this
    module disagree (a stale object or a header changed without this mirror)."""
    fix = "rebuild the object with 'make bpf' or update xtrace_catch/kernel/layout.py to match ebpf/xtrace.h"
    for sname, dt in _STRUCTS.items():
        try:
            lay = btf.struct(sname)
        except KeyError:
            raise ObjectError(f"BPF object has no struct {sname} in its BTF; {fix}") from None
        if lay.size != dt.itemsize:
            raise ObjectError(f"struct {sname}: object size {lay.size} != Python {dt.itemsize}; {fix}")
        names = list(dt.names or ())
        if set(lay.members) != set(names):
            diff = sorted(set(lay.members) ^ set(names))
            raise ObjectError(f"struct {sname}: fields differ ({', '.join(diff)}); {fix}")
        for name in names:
            fmt, off = dt.fields[name][0], dt.fields[name][1]
            m = lay.members[name]
            if m.offset != off or m.size != fmt.itemsize:
                raise ObjectError(
                    f"struct {sname}.{name}: object offset {m.offset} size {m.size}, "
                    f"Python offset {off} size {fmt.itemsize}; {fix}"
                )
    try:
        rodata = btf.datasec(".rodata")
    except KeyError:
        raise ObjectError(f"BPF object has no .rodata tunables; {fix}") from None
    for var, size in RODATA_VARS.items():
        if var not in rodata or rodata[var].size != size:
            raise ObjectError(f"tunable {var} missing or of another size in .rodata; {fix}")
