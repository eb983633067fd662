"""Turn an Interval into the contract's text lines and JSON records (DESIGN.md). Pure functions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..kernel.datapath import FlowMapInfo
from ..kernel.keys import IP_ETHERTYPES, addr_text, endpoint_text, key_columns, qp_hex
from ..kernel.layout import Direction, TrafficType
from .collector import Interval, V

__all__ = ["LineWriter", "summary", "summary_text", "rfc3339", "dumps"]

_OPS = ("op_send", "op_write", "op_read_req", "op_read_resp", "op_ack", "op_atomic", "op_other")


_ROCE = (int(TrafficType.ROCE_V1), int(TrafficType.ROCE_V2))
LEDGER = ("seen", "counted", "filtered", "truncated", "overflowed")  # the kernel's accounting, STATS_FIELDS


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LineWriter:
    """An interval's flow lines, text or JSON: the one renderer of both contracts (DESIGN.md;
    tests/data/golden/ holds its golden output).

    Nothing is kept per flow: each line is one f-string over columns taken from the key and
    counter arrays in one numpy call each; address text comes from the shared address cache
    (the costly part of decoding a key), and type and direction names from small tables."""

    def __init__(self, interface: str, host_ip: str, as_json: bool) -> None:
        self.interface, self.host_ip, self.as_json = interface, host_ip, as_json

    def _identities(self, keys: np.ndarray) -> list[str]:
        """Each flow's identity (addresses, ports, protocol, type; direction too in JSON), from
        key columns. IP text and our names never need JSON escaping."""
        src, dst, cols = key_columns(keys, "eth_proto", "src_port", "dst_port", "protocol", "traffic_type",
                                     "direction")
        if self.as_json:
            return [f'"direction":"{Direction.of(di).label}","src_ip":"{addr_text(s, ep)}",'
                    f'"dst_ip":"{addr_text(d, ep)}","src_port":{sp},"dst_port":{dp},"protocol":{pr},'
                    f'"traffic_type":"{TrafficType.of(t).json_name}"'
                    for s, d, ep, sp, dp, pr, t, di in zip(src, dst, *cols)]
        out = []
        for s, d, ep, sp, dp, pr, t, _di in zip(src, dst, *cols):
            sip, dip, label = addr_text(s, ep), addr_text(d, ep), TrafficType.of(t).label
            if not sip:
                out.append(f"- -> - proto={pr} [{label}]")
            elif ":" not in sip and ":" not in dip:
                out.append(f"{sip}:{sp} -> {dip}:{dp} proto={pr} [{label}]")
            else:
                out.append(f"{endpoint_text(sip, sp)} -> {endpoint_text(dip, dp)} proto={pr} [{label}]")
        return out

    def lines(self, iv: Interval) -> list[str]:
        return [line for chunk in self.chunks(iv) for line in chunk]

    def chunks(self, iv: Interval, size: int = 2048) -> Iterator[list[str]]:
        """The interval's lines, `size` at a time (so a big interval is never all in memory)."""
        keys = iv.keys
        ts = rfc3339(iv.time)
        for lo in range(0, len(keys), size):
            hi = min(len(keys), lo + size)
            part = keys[lo:hi]
            yield self._format(part, iv.delta[lo:hi], iv.totals[lo:hi], self._identities(part), ts)

    def _format(self, keys: np.ndarray, delta: np.ndarray, totals: np.ndarray, idents: list[str],
                ts: str) -> list[str]:
        col = delta.T.tolist()
        pk, by, ecn, cnp, frag = (col[V[c]] for c in ("packets", "bytes", "ecn_ce", "cnp", "fragments"))
        tts, eths, vlans, qps = (keys[f].tolist() for f in ("traffic_type", "eth_proto", "vlan_id", "dst_qp"))
        roce = _ROCE
        if self.as_json:
            return self._json(ts, totals, idents, pk, by, ecn, cnp, frag, tts, eths, vlans, qps, col)
        dirs = keys["direction"].tolist()
        host = self.host_ip
        ip_protos = IP_ETHERTYPES
        out: list[str] = []
        add = out.append
        for i, idn in enumerate(idents):
            line = f"{idn} packets={pk[i]} bytes={by[i]} host_ip={host} dir={Direction.of(dirs[i]).label}"
            e, c, f, vl, eth = ecn[i], cnp[i], frag[i], vlans[i], eths[i]
            if not (e or c or f or vl) and tts[i] not in roce and eth in ip_protos:
                add(line)
                continue
            if tts[i] in roce:
                line += f" qp={qp_hex(qps[i])}"
            if e:
                line += f" ecn_ce={e}"
            if c:
                line += f" cnp={c}"
            if vl:
                line += f" vlan={vl}"
            if f:
                line += f" frags={f}"
            if eth not in ip_protos:
                line += f" ethertype={eth:#06x}"
            add(line)
        return out

    def _json(self, ts: str, totals: np.ndarray, idents: list[str], pk: list[int], by: list[int], ecn: list[int],
              cnp: list[int], frag: list[int], tts: list[int], eths: list[int], vlans: list[int], qps: list[int],
              col: list[list[int]]) -> list[str]:
        tcol = totals.T.tolist()
        ptot, btot = tcol[V["packets"]], tcol[V["bytes"]]
        head = f'{{"record":"flow","time":{json.dumps(ts)},"interface":{json.dumps(self.interface)},'
        host = json.dumps(self.host_ip)
        ops = [(name[3:], col[V[name]]) for name in _OPS]
        out: list[str] = []
        add = out.append
        for i, idn in enumerate(idents):
            line = (f'{head}{idn},"packets":{pk[i]},"bytes":{by[i]},"packets_total":{ptot[i]},'
                    f'"bytes_total":{btot[i]},"host_ip":{host},"ecn_ce":{ecn[i]},"ethertype":{eths[i]},'
                    f'"vlan":{vlans[i]},"fragments":{frag[i]}')
            if tts[i] in _ROCE:
                opc = ",".join(f'"{name}":{c[i]}' for name, c in ops)
                line += f',"dst_qp":{qps[i]},"dst_qp_hex":"{qp_hex(qps[i])}","cnp":{cnp[i]},"opcode":{{{opc}}}'
            add(line + "}")
        return out


def summary(iv: Interval, interface: str, fmap: FlowMapInfo) -> dict[str, Any]:
    """The interval summary record (`"record": "summary"`).

    The accounting (packets and bytes) comes from the kernel's per-CPU stats, read right after the flow
    map: under traffic a packet counted between the two reads shows in this summary and in
    the next interval's flow lines. Totals since start always agree once traffic pauses."""
    s, st = iv.stats_delta, iv.stats_total
    return {
        "record": "summary", "time": rfc3339(iv.time), "interface": interface,
        "timestamp": rfc3339(iv.time), "ifname": interface,  # the earlier names, kept: no key is removed
        "interval": iv.seq,
        "elapsed_s": round(iv.elapsed, 3), "active_flows": len(iv.keys), "tracked_flows": iv.flows_tracked,
        "map_capacity": fmap.capacity, "map_memory_bytes": fmap.memory_bytes, "map_reads": fmap.reads, "evicted_flows": iv.evicted,
        # The ledger, packets and bytes: seen = counted + filtered + truncated + overflowed.
        **{f"packets_{k}": s[k] for k in LEDGER}, **{f"bytes_{k}": s[f"{k}_bytes"] for k in LEDGER},
        **{f"packets_{k}_total": st[k] for k in LEDGER}, **{f"bytes_{k}_total": st[f"{k}_bytes"] for k in LEDGER},
    }


def summary_text(rec: dict[str, Any]) -> str:
    line = (f"--- interval {rec['interval']} on {rec['ifname']}: {rec['active_flows']} flows, "
            f"{rec['packets_counted']} packets, {rec['bytes_counted']} bytes; "
            f"filtered={rec['packets_filtered']} truncated={rec['packets_truncated']} "
            f"overflowed={rec['packets_overflowed']} tracked={rec['tracked_flows']}/{rec['map_capacity']}")
    if rec["packets_overflowed"]:
        line += " (flow map FULL: overflowed packets are counted per type only)"
    if rec.get("push_consecutive_failures"):
        line += (f"; push FAILING ({rec['push_consecutive_failures']} in a row, {rec['push_buffer_samples']} samples "
                 f"waiting): {rec['push_last_error']}")
    return line


def dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"))
