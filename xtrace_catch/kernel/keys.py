"""The one flow-key codec: kernel bytes <-> FLOW_KEY records <-> Python columns <-> text.

A key has one form in Python: 48 raw bytes, as a numpy ``V48`` item (exact, NULs kept) or a
``bytes`` of that length (a dict key). The printer, the live table and the metric labels all
decode keys here, so a flow reads the same everywhere.
"""

from __future__ import annotations

import ipaddress
from sys import intern

import numpy as np

from .layout import FLOW_KEY

__all__ = ["KEY_SIZE", "KEY_VOID", "ETH_P_IP", "ETH_P_IPV6", "ETH_P_ROCE", "IP_ETHERTYPES", "CACHE_MAX",
           "as_void", "key_bytes", "key_columns", "addr_text", "endpoint_text", "qp_hex"]

KEY_SIZE = FLOW_KEY.itemsize
KEY_VOID = f"V{KEY_SIZE}"  # a key as one opaque item: compares and sorts by its bytes, keeps trailing NULs

# Ethertypes whose keys carry addresses (RoCE v1's are its GRH GIDs).
ETH_P_IP, ETH_P_IPV6, ETH_P_ROCE = 0x0800, 0x86DD, 0x8915
IP_ETHERTYPES = (ETH_P_IP, ETH_P_IPV6, ETH_P_ROCE)

# The bound of every text cache keyed by a value flows share (addresses here, label pairs in
# remote write): large enough for a busy node's distinct values, small enough to stay a few MB.
CACHE_MAX = 1 << 16

_V4MAPPED = b"\0" * 10 + b"\xff\xff"
_ADDR_CACHE: dict[bytes, str] = {}


def as_void(keys: np.ndarray) -> np.ndarray:
    """FLOW_KEY records (or raw key bytes) as a 1-d ``V48`` array (a view where possible)."""
    return np.ascontiguousarray(keys).view(KEY_VOID).reshape(-1)


def key_bytes(keys: np.ndarray) -> list[bytes]:
    """FLOW_KEY records as exact 48-byte strings (dict keys), made in one numpy call."""
    if not len(keys):
        return []
    return as_void(keys).tolist()


def key_columns(keys: np.ndarray, *fields: str) -> tuple[list[bytes], list[bytes], list[list[int]]]:
    """FLOW_KEY records as Python columns, one numpy call each: the 16-byte source and
    destination addresses (for :func:`addr_text`) and the named integer fields."""
    src = np.ascontiguousarray(keys["src_addr"]).view("V16").reshape(-1).tolist()
    dst = np.ascontiguousarray(keys["dst_addr"]).view("V16").reshape(-1).tolist()
    return src, dst, [keys[f].tolist() for f in fields]


def addr_text(raw: bytes, eth_proto: int) -> str:
    """A 16-byte key address as text: v4-mapped as IPv4; '' for non-IP frames.

    Cached (bounded), and one string per address: flows share addresses, and the caches of
    lines and series labels then share the strings."""
    if eth_proto not in IP_ETHERTYPES:
        return ""
    text = _ADDR_CACHE.get(raw)
    if text is None:
        if raw[:12] == _V4MAPPED:
            text = str(ipaddress.IPv4Address(raw[12:]))
        else:
            text = str(ipaddress.IPv6Address(raw))
        if len(_ADDR_CACHE) >= CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[bytes(raw)] = text = intern(text)
    return text


def qp_hex(qp: int) -> str:
    """A RoCE destination QP as text, everywhere it is shown: 0x and 6 lower-case hex digits."""
    return f"{qp:#08x}"


def endpoint_text(ip: str, port: int) -> str:
    """An address and port as text: `ip:port`, `[ip]:port` for IPv6, `-` when there is no address."""
    if not ip:
        return "-"
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
