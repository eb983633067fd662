"""Turn an Interval into the contract's text lines and JSON records (DESIGN.md). Pure functions."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .collector import Interval, V
from .layout import Direction, TrafficType

__all__ = ["FlowRow", "decode_flows", "text_line", "json_record", "LineWriter", "summary", "summary_text", "rfc3339",
           "addr_text"]

ETH_P_IP, ETH_P_IPV6, ETH_P_ROCE = 0x0800, 0x86DD, 0x8915
_V4MAPPED = b"\0" * 10 + b"\xff\xff"
_OPS = ("op_send", "op_write", "op_read_req", "op_read_resp", "op_ack", "op_atomic", "op_other")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def addr_text(raw: bytes, eth_proto: int) -> str:
    """A 16-byte key address as text: v4-mapped as IPv4; '' for non-IP frames."""
    if eth_proto not in (ETH_P_IP, ETH_P_IPV6, ETH_P_ROCE):
        return ""
    if raw[:12] == _V4MAPPED:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


@dataclass(frozen=True)
class FlowRow:
    """One flow in one interval, decoded."""

    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    protocol: int
    traffic_type: TrafficType
    direction: Direction
    eth_proto: int
    vlan_id: int
    dst_qp: int
    delta: tuple[int, ...]
    totals: tuple[int, ...]

    def d(self, name: str) -> int:
        return self.delta[V[name]]

    def t(self, name: str) -> int:
        return self.totals[V[name]]

    @property
    def is_roce(self) -> bool:
        return self.traffic_type in (TrafficType.ROCE_V1, TrafficType.ROCE_V2)


def decode_flows(keys: np.ndarray, delta: np.ndarray, totals: np.ndarray) -> list[FlowRow]:
    """FLOW_KEY records plus their counter rows -> FlowRows, in the same order."""
    rows = []
    for k, d, t in zip(keys, delta.tolist(), totals.tolist()):
        ep = int(k["eth_proto"])
        rows.append(FlowRow(
            src_ip=addr_text(k["src_addr"].tobytes(), ep), dst_ip=addr_text(k["dst_addr"].tobytes(), ep),
            src_port=int(k["src_port"]), dst_port=int(k["dst_port"]), protocol=int(k["protocol"]),
            traffic_type=TrafficType(int(k["traffic_type"])) if int(k["traffic_type"]) in TrafficType._value2member_map_
            else TrafficType.OTHER,
            direction=Direction(int(k["direction"]) & 1), eth_proto=ep, vlan_id=int(k["vlan_id"]),
            dst_qp=int(k["dst_qp"]), delta=tuple(d), totals=tuple(t),
        ))
    return rows


def _endpoint(ip: str, port: int) -> str:
    if not ip:
        return "-"
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def text_line(r: FlowRow, host_ip: str) -> str:
    """`src:port -> dst:port proto=N [Type] packets=N bytes=N host_ip=X` + extra fields."""
    line = (f"{_endpoint(r.src_ip, r.src_port)} -> {_endpoint(r.dst_ip, r.dst_port)} proto={r.protocol} "
            f"[{r.traffic_type.label}] packets={r.d('packets')} bytes={r.d('bytes')} host_ip={host_ip}")
    extra = [f"dir={r.direction.label}"]
    if r.is_roce:
        extra.append(f"qp={r.dst_qp:#08x}")
    if r.d("ecn_ce"):
        extra.append(f"ecn_ce={r.d('ecn_ce')}")
    if r.d("cnp"):
        extra.append(f"cnp={r.d('cnp')}")
    if r.vlan_id:
        extra.append(f"vlan={r.vlan_id}")
    if r.d("fragments"):
        extra.append(f"frags={r.d('fragments')}")
    if not r.src_ip:
        extra.append(f"ethertype={r.eth_proto:#06x}")
    return line + " " + " ".join(extra)


def json_record(r: FlowRow, ts: float, interface: str, host_ip: str) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "time": rfc3339(ts), "interface": interface, "direction": r.direction.label,
        "src_ip": r.src_ip, "dst_ip": r.dst_ip, "src_port": r.src_port, "dst_port": r.dst_port,
        "protocol": r.protocol, "traffic_type": r.traffic_type.json_name,
        "packets": r.d("packets"), "bytes": r.d("bytes"),
        "packets_total": r.t("packets"), "bytes_total": r.t("bytes"), "host_ip": host_ip,
        "ecn_ce": r.d("ecn_ce"), "ethertype": r.eth_proto, "vlan": r.vlan_id, "fragments": r.d("fragments"),
    }
    if r.is_roce:
        rec["dst_qp"] = r.dst_qp
        rec["cnp"] = r.d("cnp")
        rec["opcode"] = {name[3:]: r.d(name) for name in _OPS}
    return rec


class LineWriter:
    """An interval's flow lines, text or JSON, the same strings as :func:`text_line` and
    :func:`json_record` give (tests compare them), at ~1 µs per flow.

    A flow's key decides everything in its line but the counts, so each flow's line is
    decoded once into a %-format template and kept while the flow lives; per interval the
    work is one formatting per flow over columns taken from the arrays in one call each."""

    def __init__(self, interface: str, host_ip: str, as_json: bool) -> None:
        self.interface, self.host_ip, self.as_json = interface, host_ip, as_json
        self._tpl: dict[bytes, tuple[Any, ...]] = {}

    def _template(self, r: FlowRow) -> tuple[Any, ...]:
        esc = self._esc
        if self.as_json:
            j = json.dumps
            head = esc(f',"interface":{j(self.interface)},"direction":{j(r.direction.label)},'
                       f'"src_ip":{j(r.src_ip)},"dst_ip":{j(r.dst_ip)},"src_port":{r.src_port},'
                       f'"dst_port":{r.dst_port},"protocol":{r.protocol},"traffic_type":{j(r.traffic_type.json_name)},')
            fmt = ('{"time":%s' + head + '"packets":%d,"bytes":%d,"packets_total":%d,"bytes_total":%d,'
                   + esc(f'"host_ip":{j(self.host_ip)},') + '"ecn_ce":%d,'
                   + f'"ethertype":{r.eth_proto},"vlan":{r.vlan_id},' + '"fragments":%d')
            if r.is_roce:
                ops = ",".join(f'"{name[3:]}":%d' for name in _OPS)
                return (fmt + f',"dst_qp":{r.dst_qp},' + '"cnp":%d,"opcode":{' + ops + "}}", True)
            return (fmt + "}", False)
        pre = esc(f"{_endpoint(r.src_ip, r.src_port)} -> {_endpoint(r.dst_ip, r.dst_port)} proto={r.protocol} "
                  f"[{r.traffic_type.label}] ") + "packets=%d bytes=%d" + esc(f" host_ip={self.host_ip} "
                                                                        f"dir={r.direction.label}")
        if r.is_roce:
            pre += f" qp={r.dst_qp:#08x}"
        vlan = f" vlan={r.vlan_id}" if r.vlan_id else ""
        eth = f" ethertype={r.eth_proto:#06x}" if not r.src_ip else ""
        # (no counter extras, before the vlan, between vlan and ethertype, after)
        return (pre + esc(vlan + eth), pre, vlan, eth)

    @staticmethod
    def _esc(s: str) -> str:
        return s.replace("%", "%%")

    def lines(self, iv: Interval) -> list[str]:
        keys, delta, totals = iv.keys, iv.delta, iv.totals
        n = len(keys)
        if not n:
            return []
        kl: list[bytes] = np.ascontiguousarray(keys).view(f"V{keys.dtype.itemsize}").reshape(-1).tolist()
        tpl = self._tpl
        miss = [i for i, k in enumerate(kl) if k not in tpl]
        if miss:
            for i, r in zip(miss, decode_flows(keys[miss], delta[miss], totals[miss])):
                tpl[kl[i]] = self._template(r)
        if len(tpl) > 2 * max(n, 1024):  # forget flows that left the map
            self._tpl = tpl = {k: tpl[k] for k in kl}
        col = delta.T.tolist()
        pk, by, ecn, cnp, frag = (col[V[c]] for c in ("packets", "bytes", "ecn_ce", "cnp", "fragments"))
        out: list[str] = []
        add = out.append
        if self.as_json:
            tcol = totals.T.tolist()
            ptot, btot = tcol[V["packets"]], tcol[V["bytes"]]
            ts = json.dumps(rfc3339(iv.time))
            ops = [col[V[name]] for name in _OPS]
            for i, k in enumerate(kl):
                fmt, roce = tpl[k]
                args = (ts, pk[i], by[i], ptot[i], btot[i], ecn[i], frag[i])
                if roce:
                    args += (cnp[i], *(o[i] for o in ops))
                add(fmt % args)
            return out
        for i, k in enumerate(kl):
            t = tpl[k]
            e, c, f = ecn[i], cnp[i], frag[i]
            if not (e or c or f):
                add(t[0] % (pk[i], by[i]))
                continue
            line = t[1] % (pk[i], by[i])
            if e:
                line += f" ecn_ce={e}"
            if c:
                line += f" cnp={c}"
            line += t[2]
            if f:
                line += f" frags={f}"
            add(line + t[3])
        return out


def summary(iv: Interval, interface: str, capacity: int) -> dict[str, Any]:
    """The interval summary record (`"record": "summary"`).

    The packet accounting comes from the kernel's per-CPU stats, read right after the flow
    map: under traffic a packet counted between the two reads shows in this summary and in
    the next interval's flow lines. Totals since start always agree once traffic pauses."""
    s, st = iv.stats_delta, iv.stats_total
    return {
        "record": "summary", "timestamp": rfc3339(iv.time), "ifname": interface, "interval": iv.seq,
        "elapsed_s": round(iv.elapsed, 3), "active_flows": len(iv.keys), "tracked_flows": iv.flows_tracked,
        "map_capacity": capacity, "evicted_flows": iv.evicted,
        "packets_seen": s["seen"], "bytes_seen": s["seen_bytes"],
        "packets_counted": s["counted"], "bytes_counted": s["counted_bytes"],
        "packets_filtered": s["filtered"], "packets_truncated": s["truncated"],
        "packets_overflowed": s["overflowed"], "bytes_overflowed": s["overflowed_bytes"],
        "packets_seen_total": st["seen"], "packets_counted_total": st["counted"],
        "packets_filtered_total": st["filtered"], "packets_truncated_total": st["truncated"],
        "packets_overflowed_total": st["overflowed"],
        "bytes_seen_total": st["seen_bytes"], "bytes_counted_total": st["counted_bytes"],
    }


def summary_text(rec: dict[str, Any]) -> str:
    line = (f"--- interval {rec['interval']} on {rec['ifname']}: {rec['active_flows']} flows, "
            f"{rec['packets_counted']} packets, {rec['bytes_counted']} bytes; "
            f"filtered={rec['packets_filtered']} truncated={rec['packets_truncated']} "
            f"overflowed={rec['packets_overflowed']} tracked={rec['tracked_flows']}/{rec['map_capacity']}")
    if rec["packets_overflowed"]:
        line += " (flow map FULL: overflowed packets are counted per type only)"
    return line


def dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"))
