"""Pure tier: metric series from hand-built intervals, the text exposition, remote-write
encoding, and the URL/address parsing of the export options.

Every expectation is an exact string, exact bytes or an exact number (DESIGN.md,
"Metrics"): no two series of one push share a label set, folded series keep the totals
adding up, and the remote-write body is protobuf's own encoding, snappy *block* compressed.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections import defaultdict

import cramjam
import numpy as np
import pytest

from xtrace_catch.errors import UsageError
from xtrace_catch.export.push import PushFormat, classify_url, redact_url
from xtrace_catch.export.remote_write import PROTO_PATH, RemoteWriteEncoder, messages, snappy_block, unsnappy_block
from xtrace_catch.export.series import (
    FLOW_METRICS,
    LABELS,
    Batch,
    MetricsConfig,
    SeriesTable,
    escape_label,
    render_text,
)
from xtrace_catch.export.server import parse_addr
from xtrace_catch.flows.collector import NV, Interval, V
from xtrace_catch.kernel.layout import FLOW_KEY, TYPE_SLOTS, Direction, TrafficType

ETH_P_IP, ETH_P_IPV6, ETH_P_ROCE = 0x0800, 0x86DD, 0x8915
UDP, TCP = 17, 6
T0 = 1_700_000_000.5  # exact in binary: ts_ms is 1700000000500
TS = 1_700_000_000_500
NAMES = [m[0] for m in FLOW_METRICS]


# -- building intervals ---------------------------------------------------------


def addr(text: str) -> bytes:
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def key(src: str, dst: str, sport: int = 0, dport: int = 0, *, proto: int = UDP,
        tt: TrafficType = TrafficType.UDP, direction: Direction = Direction.INGRESS, vlan: int = 0,
        qp: int = 0, eth_proto: int | None = None) -> np.void:
    k = np.zeros(1, dtype=FLOW_KEY)
    k["src_addr"][0] = np.frombuffer(addr(src), dtype=np.uint8)
    k["dst_addr"][0] = np.frombuffer(addr(dst), dtype=np.uint8)
    k["src_port"], k["dst_port"], k["dst_qp"], k["vlan_id"] = sport, dport, qp, vlan
    if eth_proto is None:
        eth_proto = ETH_P_IPV6 if ":" in src else ETH_P_IP
    k["eth_proto"], k["protocol"], k["traffic_type"], k["direction"] = eth_proto, proto, int(tt), int(direction)
    return k[0]


def row(packets: int, bytes_: int) -> np.ndarray:
    r = np.zeros(NV, dtype=np.uint64)
    r[V["packets"]], r[V["bytes"]] = packets, bytes_
    return r


def interval(seq: int, flows: list[tuple[np.void, tuple[int, int], tuple[int, int]]], *,
             overflow: dict[tuple[Direction, TrafficType], tuple[tuple[int, int], tuple[int, int]]] | None = None,
             t: float | None = None) -> Interval:
    """flows: (key, (delta packets, delta bytes), (total packets, total bytes)), every tracked flow.
    overflow: (direction, type) -> ((delta p, b), (total p, b))."""
    keys = np.array([f[0] for f in flows], dtype=FLOW_KEY)
    delta = np.array([row(*f[1]) for f in flows], dtype=np.uint64).reshape(-1, NV)
    totals = np.array([row(*f[2]) for f in flows], dtype=np.uint64).reshape(-1, NV)
    od = np.zeros((2, TYPE_SLOTS, NV), dtype=np.uint64)
    ot = np.zeros((2, TYPE_SLOTS, NV), dtype=np.uint64)
    for (d, tt), (dl, tot) in (overflow or {}).items():
        od[int(d), int(tt)] = row(*dl)
        ot[int(d), int(tt)] = row(*tot)
    active = delta[:, V["packets"]] > 0
    return Interval(
        seq=seq, time=T0 + seq - 1 if t is None else t, elapsed=1.0,
        keys=keys[active], delta=delta[active], totals=totals[active],
        all_keys=keys, all_totals=totals, all_delta=delta,
        stats_delta={}, stats_total={}, overflow_delta=od, overflow_total=ot,
        flows_tracked=len(flows), evicted=0, collect_seconds=0.001,
    )


def table(**kw: object) -> SeriesTable:
    cfg = dict(interface="xta0", host_ip="198.51.100.1", collect_agg="e2e")
    cfg.update(kw)  # type: ignore[arg-type]
    return SeriesTable(MetricsConfig(**cfg))  # type: ignore[arg-type]


def parse_text(text: str) -> dict[str, dict[str, int]]:
    """metric name -> {label text -> value}; fails on a label set seen twice for one name."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.fullmatch(r"(\w+)\{(.*)\} (\S+)( \d+)?", line)
        assert m, line
        name, labels, value = m.group(1), m.group(2), m.group(3)
        assert labels not in out[name], f"label set sent twice for {name}: {labels}"
        out[name][labels] = int(value)
    return out


def labels_of(text: str) -> dict[str, str]:
    """`k="v",...` (our escaping) -> dict."""
    unesc = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
    return {m.group(1): re.sub(r'\\[\\"n]', lambda e: unesc[e.group(0)], m.group(2))
            for m in re.finditer(r'(\w+)="((?:[^"\\]|\\.)*)"', text)}


A4, B4 = "198.51.100.2", "198.51.100.1"
UDP_KEY = key(A4, B4, 40000, 5000)
TCP6_KEY = key("2001:db8::2", "2001:db8::1", 443, 50000, proto=TCP, tt=TrafficType.TCP, direction=Direction.EGRESS)
UDP_LABELS = ('src_ip="198.51.100.2",dst_ip="198.51.100.1",src_port="40000",dst_port="5000",protocol="17",'
              'traffic_type="UDP",direction="ingress",interface="xta0",host_ip="198.51.100.1",collect_agg="e2e"')
TCP6_LABELS = ('src_ip="2001:db8::2",dst_ip="2001:db8::1",src_port="443",dst_port="50000",protocol="6",'
               'traffic_type="TCP",direction="egress",interface="xta0",host_ip="198.51.100.1",collect_agg="e2e"')


# -- text exposition --------------------------------------------------------------


def test_text_exposition_golden_push() -> None:
    t = table()
    b = t.batch(interval(1, [(UDP_KEY, (3, 426), (10, 1420)), (TCP6_KEY, (0, 0), (5, 1000))]))
    b = b.with_health([("xtrace_agent_flows_tracked", "gauge", "Flows in the kernel map.",
                        {"interface": "xta0", "collect_agg": "e2e"}, 2),
                       ("xtrace_agent_collect_duration_seconds", "gauge", "Time the last collection took.",
                        {"interface": "xta0"}, 0.25)])
    assert b.samples == 2 * 4 + 2
    assert render_text(b, with_timestamps=True, with_meta=False) == (
        f"xtrace_network_bytes_total{{{UDP_LABELS}}} 1420 {TS}\n"
        f"xtrace_network_bytes_total{{{TCP6_LABELS}}} 1000 {TS}\n"
        f"xtrace_network_packets_total{{{UDP_LABELS}}} 10 {TS}\n"
        f"xtrace_network_packets_total{{{TCP6_LABELS}}} 5 {TS}\n"
        f"xtrace_network_flow_bytes{{{UDP_LABELS}}} 426 {TS}\n"
        f"xtrace_network_flow_bytes{{{TCP6_LABELS}}} 0 {TS}\n"
        f"xtrace_network_flow_packets{{{UDP_LABELS}}} 3 {TS}\n"
        f"xtrace_network_flow_packets{{{TCP6_LABELS}}} 0 {TS}\n"
        f'xtrace_agent_flows_tracked{{interface="xta0",collect_agg="e2e"}} 2 {TS}\n'
        f'xtrace_agent_collect_duration_seconds{{interface="xta0"}} 0.25 {TS}\n'
    )


def test_text_exposition_golden_pull_has_help_and_type_once() -> None:
    t = table()
    b = t.batch(interval(1, [(UDP_KEY, (3, 426), (10, 1420))]))
    b = b.with_health([("xtrace_agent_series", "gauge", "Metric series held by the agent.", {"interface": "xta0"}, 1)])
    assert render_text(b, with_timestamps=False, with_meta=True) == (
        "# HELP xtrace_network_bytes_total Bytes of the flow since the agent started (wire bytes).\n"
        "# TYPE xtrace_network_bytes_total counter\n"
        f"xtrace_network_bytes_total{{{UDP_LABELS}}} 1420\n"
        "# HELP xtrace_network_packets_total Packets of the flow since the agent started.\n"
        "# TYPE xtrace_network_packets_total counter\n"
        f"xtrace_network_packets_total{{{UDP_LABELS}}} 10\n"
        "# HELP xtrace_network_flow_bytes Bytes of the flow in the last interval.\n"
        "# TYPE xtrace_network_flow_bytes gauge\n"
        f"xtrace_network_flow_bytes{{{UDP_LABELS}}} 426\n"
        "# HELP xtrace_network_flow_packets Packets of the flow in the last interval.\n"
        "# TYPE xtrace_network_flow_packets gauge\n"
        f"xtrace_network_flow_packets{{{UDP_LABELS}}} 3\n"
        "# HELP xtrace_agent_series Metric series held by the agent.\n"
        "# TYPE xtrace_agent_series gauge\n"
        'xtrace_agent_series{interface="xta0"} 1\n'
    )


def test_metric_contract_names_types_labels() -> None:
    assert [(n, ty) for n, ty, _h, _c in FLOW_METRICS] == [
        ("xtrace_network_bytes_total", "counter"), ("xtrace_network_packets_total", "counter"),
        ("xtrace_network_flow_bytes", "gauge"), ("xtrace_network_flow_packets", "gauge")]
    assert LABELS == ("src_ip", "dst_ip", "src_port", "dst_port", "protocol", "traffic_type", "direction",
                      "interface", "host_ip", "collect_agg")


def test_empty_interval_renders_nothing_but_health() -> None:
    t = table()
    b = t.batch(interval(1, []))
    assert b.ids.shape == (0,) and b.values.shape == (0, 4) and b.samples == 0
    assert render_text(b, with_timestamps=True, with_meta=False) == ""


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain", "plain"),
    ("back\\slash", "back\\\\slash"),
    ('a "quoted" word', 'a \\"quoted\\" word'),
    ("two\nlines", "two\\nlines"),
    ('\\"\n', '\\\\\\"\\n'),
    ("\\n", "\\\\n"),  # a literal backslash-n is not a newline
    ("ünïcode ☃", "ünïcode ☃"),
])
def test_escape_label(raw: str, escaped: str) -> None:
    assert escape_label(raw) == escaped
    assert labels_of(f'x="{escaped}"') == {"x": raw}


def test_label_escaping_in_exposition() -> None:
    agg = 'rack\\7 "gpu"\nrow'
    t = table(collect_agg=agg)
    b = t.batch(interval(1, [(UDP_KEY, (1, 142), (1, 142))]))
    b = b.with_health([("xtrace_agent_series", "gauge", "h", {"collect_agg": agg}, 1)])
    text = render_text(b, with_timestamps=False, with_meta=False)
    assert 'collect_agg="rack\\\\7 \\"gpu\\"\\nrow"' in text
    assert text.count("\n") == 5  # the raw newline never reaches the output
    for line in text.splitlines():
        assert labels_of(line)["collect_agg"] == agg


# -- aggregation: one label set, one series -----------------------------------------


def test_flows_differing_only_in_vlan_are_one_series() -> None:
    t = table()
    flows = [(key(A4, B4, 40000, 5000, vlan=10), (2, 284), (7, 994)),
             (key(A4, B4, 40000, 5000, vlan=20), (1, 146), (4, 584)),
             (key(A4, B4, 40000, 5000, vlan=0), (0, 0), (1, 142))]
    b = t.batch(interval(1, flows))
    assert len(b.ids) == 1 and len(t) == 1
    assert b.values.tolist() == [[994 + 584 + 142, 12, 284 + 146, 3]]
    got = parse_text(render_text(b, with_timestamps=True, with_meta=False))
    assert got == {n: {UDP_LABELS: v} for n, v in zip(NAMES, (1720, 12, 430, 3))}


def test_no_label_set_twice_random_flows() -> None:
    """Many flows that collide on their labels (VLAN, ephemeral ports, folding): every
    push has unique label sets and its totals equal the flows' totals."""
    rng = np.random.default_rng(7)
    for opts in ({}, {"drop_ephemeral_ports": True}, {"max_series": 5},
                 {"max_series": 3, "drop_ephemeral_ports": True}):
        t = table(**opts)
        flows = []
        for _ in range(300):
            tt = [TrafficType.UDP, TrafficType.TCP, TrafficType.ROCE_V2][rng.integers(3)]
            proto = TCP if tt is TrafficType.TCP else UDP
            k = key(A4, ["198.51.100.1", "203.0.113.7"][rng.integers(2)],
                    int(rng.choice([443, 4791, 40000, 50001, 60000])), int(rng.choice([80, 4791, 33000])),
                    proto=proto, tt=tt, direction=Direction(int(rng.integers(2))), vlan=int(rng.integers(4)),
                    qp=int(rng.integers(3)))
            p = int(rng.integers(1, 50))
            # With folding, history before the first push would be in nobody's series: a first
            # interval (as the agent's is) has totals equal to its deltas.
            h = 1 if "max_series" in opts else 2
            flows.append((k, (p, p * 100), (p * h, p * 100 * h)))
        # unique kernel keys only (the kernel map has each key once)
        uniq = {bytes(np.array([f[0]], dtype=FLOW_KEY).tobytes()): f for f in flows}
        flows = list(uniq.values())
        b = t.batch(interval(1, flows))
        got = parse_text(render_text(b, with_timestamps=True, with_meta=False))  # asserts uniqueness
        assert len(set(t.labels[int(s)] for s in b.ids)) == len(b.ids)
        assert sum(got["xtrace_network_bytes_total"].values()) == sum(f[2][1] for f in flows)
        assert sum(got["xtrace_network_packets_total"].values()) == sum(f[2][0] for f in flows)
        assert sum(got["xtrace_network_flow_bytes"].values()) == sum(f[1][1] for f in flows)
        if "max_series" in opts:
            individual = [s for s in got["xtrace_network_bytes_total"] if 'src_ip="other"' not in s]
            assert len(individual) <= opts["max_series"]


# -- RoCE, overflow -------------------------------------------------------------------


def test_roce_series_carry_dst_qp() -> None:
    t = table()
    k1 = key(A4, B4, 49152, 4791, tt=TrafficType.ROCE_V2, qp=0x123456)
    k2 = key(A4, B4, 49152, 4791, tt=TrafficType.ROCE_V2, qp=0x17)
    k3 = key("2001:db8::a", "2001:db8::b", 0, 0, proto=0, tt=TrafficType.ROCE_V1, qp=5, eth_proto=ETH_P_ROCE)
    b = t.batch(interval(1, [(k1, (1, 100), (1, 100)), (k2, (2, 200), (2, 200)), (k3, (3, 300), (3, 300))]))
    text = render_text(b, with_timestamps=False, with_meta=False)
    base = ('src_ip="198.51.100.2",dst_ip="198.51.100.1",src_port="49152",dst_port="4791",protocol="17",'
            'traffic_type="RoCE_v2",direction="ingress",interface="xta0",host_ip="198.51.100.1",collect_agg="e2e"')
    v1 = ('src_ip="2001:db8::a",dst_ip="2001:db8::b",src_port="0",dst_port="0",protocol="0",'
          'traffic_type="RoCE_v1",direction="ingress",interface="xta0",host_ip="198.51.100.1",collect_agg="e2e"')
    assert parse_text(text)["xtrace_network_bytes_total"] == {
        base + ',dst_qp="0x123456"': 100, base + ',dst_qp="0x000017"': 200, v1 + ',dst_qp="0x000005"': 300}
    # Non-RoCE series have no dst_qp at all.
    t2 = table()
    b2 = t2.batch(interval(1, [(key(A4, B4, 1, 2, qp=9), (1, 1), (1, 1))]))
    assert "dst_qp" not in render_text(b2, with_timestamps=False, with_meta=False)


def test_overflow_series() -> None:
    t = table()
    ov = {(Direction.INGRESS, TrafficType.UDP): ((2, 200), (7, 700)),
          (Direction.EGRESS, TrafficType.ROCE_V2): ((0, 0), (1, 1100))}
    b = t.batch(interval(1, [(UDP_KEY, (1, 142), (1, 142))], overflow=ov))
    got = parse_text(render_text(b, with_timestamps=False, with_meta=False))
    ovl = ('src_ip="overflow",dst_ip="overflow",src_port="overflow",dst_port="overflow",protocol="overflow",'
           'traffic_type="{}",direction="{}",interface="xta0",host_ip="198.51.100.1",collect_agg="e2e"')
    udp_in, roce_out = ovl.format("UDP", "ingress"), ovl.format("RoCE_v2", "egress")
    assert got["xtrace_network_bytes_total"] == {UDP_LABELS: 142, udp_in: 700, roce_out: 1100}
    assert got["xtrace_network_packets_total"] == {UDP_LABELS: 1, udp_in: 7, roce_out: 1}
    assert got["xtrace_network_flow_bytes"] == {UDP_LABELS: 142, udp_in: 200, roce_out: 0}
    assert got["xtrace_network_flow_packets"] == {UDP_LABELS: 1, udp_in: 2, roce_out: 0}
    # Folding with max_series never mixes overflow into `other`.
    t2 = table(max_series=1)
    b2 = t2.batch(interval(1, [(UDP_KEY, (1, 142), (1, 142))], overflow=ov))
    assert parse_text(render_text(b2, with_timestamps=False, with_meta=False))[
        "xtrace_network_bytes_total"] == {UDP_LABELS: 142, udp_in: 700, roce_out: 1100}


# -- --max-series folding ---------------------------------------------------------------


OTHER_UDP_IN = ('src_ip="other",dst_ip="other",src_port="other",dst_port="other",protocol="other",'
                'traffic_type="UDP",direction="ingress",interface="xta0",host_ip="198.51.100.1",collect_agg="e2e"')


def flow(n: int) -> np.void:
    return key(A4, B4, 40000 + n, 5000)


def flow_labels(n: int) -> str:
    return UDP_LABELS.replace('src_port="40000"', f'src_port="{40000 + n}"')


def test_max_series_folds_the_smallest_into_other() -> None:
    t = table(max_series=2)
    tcp = key(A4, B4, 1, 2, proto=TCP, tt=TrafficType.TCP)
    b = t.batch(interval(1, [(flow(1), (1, 100), (1, 100)), (flow(2), (4, 400), (4, 400)),
                             (flow(3), (3, 300), (3, 300)), (tcp, (2, 200), (2, 200))]))
    got = parse_text(render_text(b, with_timestamps=False, with_meta=False))
    other_tcp = OTHER_UDP_IN.replace('"UDP"', '"TCP"')
    assert got["xtrace_network_bytes_total"] == {flow_labels(2): 400, flow_labels(3): 300,
                                                 OTHER_UDP_IN: 100, other_tcp: 200}
    assert got["xtrace_network_packets_total"] == {flow_labels(2): 4, flow_labels(3): 3,
                                                   OTHER_UDP_IN: 1, other_tcp: 2}
    assert got["xtrace_network_flow_bytes"] == got["xtrace_network_bytes_total"]


class Scraper:
    """What a TSDB keeps: the last value of every series ever pushed."""

    def __init__(self, t: SeriesTable) -> None:
        self.t = t
        self.last: dict[str, dict[str, int]] = defaultdict(dict)
        self.history: dict[str, list[int]] = defaultdict(list)

    def push(self, iv: Interval) -> dict[str, dict[str, int]]:
        got = parse_text(render_text(self.t.batch(iv), with_timestamps=True, with_meta=False))
        for name, series in got.items():
            self.last[name].update(series)
            if name.endswith("_total"):
                for lab, v in series.items():
                    self.history[f"{name}{{{lab}}}"].append(v)
        return got

    def total(self, name: str) -> int:
        return sum(self.last[name].values())

    def assert_monotonic(self) -> None:
        for s, vals in self.history.items():
            assert vals == sorted(vals), f"counter {s} went down: {vals}"


def test_max_series_totals_add_up_and_other_is_monotonic() -> None:
    """Sticky selection: flow 1 keeps its series; later flows fold; `other` only grows;
    at every interval the sum of the series' last values equals every flow's total."""
    t = table(max_series=1)
    s = Scraper(t)
    truth = {1: 400, 2: 300, 3: 200}
    s.push(interval(1, [(flow(1), (4, 400), (4, 400)), (flow(2), (3, 300), (3, 300)), (flow(3), (2, 200), (2, 200))]))
    assert s.last["xtrace_network_bytes_total"] == {flow_labels(1): 400, OTHER_UDP_IN: 500}
    # Interval 2: flow 2 grows, flow 3 idle, flow 4 new and biggest: selection stays on flow 1.
    truth.update({1: 410, 2: 305, 4: 1000})
    got = s.push(interval(2, [(flow(1), (1, 10), (5, 410)), (flow(2), (1, 5), (4, 305)), (flow(3), (0, 0), (2, 200)),
                              (flow(4), (10, 1000), (10, 1000))]))
    assert got["xtrace_network_bytes_total"] == {flow_labels(1): 410, OTHER_UDP_IN: 1505}
    assert got["xtrace_network_flow_bytes"] == {flow_labels(1): 10, OTHER_UDP_IN: 1005}
    assert s.total("xtrace_network_bytes_total") == sum(truth.values())
    # Interval 3: nothing folded moves: `other` repeats its value.
    got = s.push(interval(3, [(flow(1), (1, 1), (6, 411)), (flow(2), (0, 0), (4, 305)), (flow(3), (0, 0), (2, 200)),
                              (flow(4), (0, 0), (10, 1000))]))
    truth[1] = 411
    assert got["xtrace_network_bytes_total"] == {flow_labels(1): 411, OTHER_UDP_IN: 1505}
    assert s.total("xtrace_network_bytes_total") == sum(truth.values())
    s.assert_monotonic()


def test_max_series_totals_add_up_when_a_selected_flow_leaves() -> None:
    """The selected flow is evicted (gone from the map). A flow whose history is already
    inside `other` must not start its own series with its whole total (that would count
    its history twice) and `other` must not go down."""
    t = table(max_series=1)
    s = Scraper(t)
    s.push(interval(1, [(flow(1), (4, 400), (4, 400)), (flow(2), (3, 300), (3, 300))]))
    s.push(interval(2, [(flow(1), (1, 10), (5, 410)), (flow(2), (1, 5), (4, 305))]))
    truth = {1: 410, 2: 305}
    # Flow 1 was evicted; flow 2 goes on; flow 5 is new.
    truth.update({2: 306, 5: 50})
    got = s.push(interval(3, [(flow(2), (1, 1), (5, 306)), (flow(5), (1, 50), (1, 50))]))
    assert s.total("xtrace_network_bytes_total") == sum(truth.values()), s.last["xtrace_network_bytes_total"]
    # The free slot goes to the new flow; flow 2's history stays in `other`.
    assert got["xtrace_network_bytes_total"] == {flow_labels(5): 50, OTHER_UDP_IN: 306}
    truth.update({2: 316, 5: 60})
    s.push(interval(4, [(flow(2), (1, 10), (6, 316)), (flow(5), (1, 10), (2, 60))]))
    assert s.total("xtrace_network_bytes_total") == sum(truth.values()), s.last["xtrace_network_bytes_total"]
    assert s.total("xtrace_network_packets_total") == 6 + 5 + 2
    s.assert_monotonic()
    assert len([lab for lab in s.last["xtrace_network_bytes_total"] if 'src_ip="other"' not in lab]) <= 2


def test_other_series_survives_forgetting() -> None:
    """A label set unused in an interval is forgotten (flow 1 left the map); `other` keeps its totals."""
    t = table(max_series=1)
    t.batch(interval(1, [(flow(1), (4, 400), (4, 400)), (flow(2), (3, 300), (3, 300))]))
    assert len(t) == 2
    t.batch(interval(2, [(flow(2), (1, 7), (4, 307))]))
    assert len(t) == 1 and list(next(iter(t.labels.values()))[:5]) == ["other"] * 5
    b = t.batch(interval(3, [(flow(2), (1, 10), (5, 317)), (flow(5), (1, 50), (1, 50))]))
    got = parse_text(render_text(b, with_timestamps=False, with_meta=False))
    assert got["xtrace_network_bytes_total"] == {flow_labels(5): 50, OTHER_UDP_IN: 317}


# -- --drop-ephemeral-ports -------------------------------------------------------------


@pytest.mark.parametrize(("tt", "sport", "dport", "want"), [
    (TrafficType.TCP, 51234, 443, ("ephemeral", "443")),
    (TrafficType.TCP, 443, 51234, ("443", "ephemeral")),
    (TrafficType.UDP, 40000, 40001, ("ephemeral", "40001")),
    (TrafficType.UDP, 8080, 9090, ("8080", "ephemeral")),
    (TrafficType.UDP, 22, 80, ("22", "80")),
    (TrafficType.UDP, 5000, 5000, ("5000", "5000")),
    (TrafficType.ROCE_V2, 49152, 4791, ("ephemeral", "4791")),
    (TrafficType.ICMP, 0, 0, ("0", "0")),
])
def test_drop_ephemeral_ports(tt: TrafficType, sport: int, dport: int, want: tuple[str, str]) -> None:
    t = table(drop_ephemeral_ports=True)
    proto = {TrafficType.TCP: TCP, TrafficType.ICMP: 1}.get(tt, UDP)
    b = t.batch(interval(1, [(key(A4, B4, sport, dport, proto=proto, tt=tt), (1, 1), (1, 1))]))
    assert t.labels[int(b.ids[0])][2:4] == want


def test_drop_ephemeral_ports_merges_clients() -> None:
    t = table(drop_ephemeral_ports=True)
    b = t.batch(interval(1, [(key(A4, B4, port, 443, proto=TCP, tt=TrafficType.TCP), (1, 100), (port - 50000, 1000))
                             for port in (50001, 50002, 50003)]))
    got = parse_text(render_text(b, with_timestamps=False, with_meta=False))
    lab = ('src_ip="198.51.100.2",dst_ip="198.51.100.1",src_port="ephemeral",dst_port="443",protocol="6",'
           'traffic_type="TCP",direction="ingress",interface="xta0",host_ip="198.51.100.1",collect_agg="e2e"')
    assert got["xtrace_network_bytes_total"] == {lab: 3000}
    assert got["xtrace_network_packets_total"] == {lab: 6}
    assert got["xtrace_network_flow_packets"] == {lab: 3}


# -- remote write ---------------------------------------------------------------------


def expected_write_request(t: SeriesTable, b: Batch) -> bytes:
    """The same WriteRequest built with protobuf's own classes."""
    m = messages()
    req = m["WriteRequest"]()
    for name, _ty, _h, col in FLOW_METRICS:
        for i, sid in enumerate(b.ids.tolist()):
            vals = t.labels[sid]
            names = LABELS + (("dst_qp",) if len(vals) > len(LABELS) else ())
            ts = req.timeseries.add()
            ts.labels.add(name="__name__", value=name)
            for n, v in sorted(zip(names, vals)):
                ts.labels.add(name=n, value=v)
            ts.samples.add(value=float(b.values[i, col]), timestamp=b.ts_ms)
    for name, _ty, _h, labels, value in b.health:
        ts = req.timeseries.add()
        ts.labels.add(name="__name__", value=name)
        for n, v in sorted(labels.items()):
            ts.labels.add(name=n, value=v)
        ts.samples.add(value=float(value), timestamp=b.ts_ms)
    return req.SerializeToString()


def rw_batch(zeros: bool) -> tuple[SeriesTable, Batch]:
    """zeros: values 0 and empty label values (no host IPv4, a non-IP flow), which proto3
    leaves out of the encoding."""
    t = table(collect_agg='q"\\\nü', **({"host_ip": ""} if zeros else {}))
    rk = key(A4, B4, 49152, 4791, tt=TrafficType.ROCE_V2, qp=77)
    flows = [(UDP_KEY, (3, 426), (10, 1420)), (TCP6_KEY, (0, 0) if zeros else (1, 2), (5, 2**53)),
             (rk, (1, 1100), (1, 1100))]
    if zeros:
        flows.append((key(A4, B4, proto=0, tt=TrafficType.OTHER, eth_proto=0x88B5), (1, 60), (1, 60)))
    b = t.batch(interval(1, flows))
    b = b.with_health([("xtrace_agent_flows_tracked", "gauge", "h", {"interface": "xta0", "collect_agg": "e2e"}, 3),
                       ("xtrace_agent_collect_duration_seconds", "gauge", "h", {"interface": "xta0"}, 0.000123)])
    if zeros:
        b = b.with_health([("xtrace_agent_push_failures_total", "counter", "h", {"interface": "xta0"}, 0)])
    return t, b


@pytest.mark.parametrize("zeros", [False, True], ids=["nonzero", "with-zero-values"])
def test_remote_write_bytes_equal_protobuf(zeros: bool) -> None:
    t, b = rw_batch(zeros)
    enc = RemoteWriteEncoder()
    raw = enc.encode(b)
    assert raw == expected_write_request(t, b)
    assert enc.encode(b) == raw  # cached labels give the same bytes
    req = messages()["WriteRequest"].FromString(raw)
    assert len(req.timeseries) == len(b.ids) * 4 + len(b.health)
    first = req.timeseries[0]
    assert [(lab.name, lab.value) for lab in first.labels] == [
        ("__name__", "xtrace_network_bytes_total"), ("collect_agg", 'q"\\\nü'), ("direction", "ingress"),
        ("dst_ip", "198.51.100.1"), ("dst_port", "5000"), ("host_ip", "" if zeros else "198.51.100.1"),
        ("interface", "xta0"),
        ("protocol", "17"), ("src_ip", "198.51.100.2"), ("src_port", "40000"), ("traffic_type", "UDP")]
    assert [(s.value, s.timestamp) for s in first.samples] == [(1420.0, TS)]
    roce = [ts for ts in req.timeseries if any(lab.name == "dst_qp" for lab in ts.labels)]
    assert len(roce) == 4 and all(dict((x.name, x.value) for x in ts.labels)["dst_qp"] == f"{77:#08x}" for ts in roce)


def test_remote_write_body_is_snappy_block_not_framed() -> None:
    t, b = rw_batch(False)
    enc = RemoteWriteEncoder()
    body = enc.body(b)
    assert bytes(cramjam.snappy.decompress_raw(body)) == enc.encode(b)
    assert unsnappy_block(body) == enc.encode(b)
    assert not body.startswith(b"\xff\x06\x00\x00sNaPpY")  # the framed stream identifier
    with pytest.raises(Exception):
        cramjam.snappy.decompress(body)
    # and snappy_block is the block format: its first bytes are the uncompressed length varint
    n = len(enc.encode(b))
    length, shift, i = 0, 0, 0
    while True:
        length |= (body[i] & 0x7F) << shift
        shift += 7
        if body[i] < 0x80:
            break
        i += 1
    assert length == n
    assert snappy_block(b"x" * 100) == bytes(cramjam.snappy.compress_raw(b"x" * 100))


def _repeated(f: object) -> bool:
    if hasattr(f, "is_repeated"):  # protobuf >= 5.x; `label` is gone in 7.x
        return bool(f.is_repeated)
    return f.label == f.LABEL_REPEATED  # type: ignore[attr-defined]


def test_proto_file_matches_descriptor_and_prompb() -> None:
    """The .proto text, read here with a separate line parser, declares exactly the
    descriptor's messages and fields, and those are prompb's numbers and types."""
    text = PROTO_PATH.read_text()
    declared: dict[str, set[tuple[str, str, str, int]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if m := re.fullmatch(r"message (\w+) \{", line):
            current = m.group(1)
            declared[current] = set()
        elif line == "}":
            current = None
        elif line and current:
            m = re.fullmatch(r"(repeated )?(\w+) (\w+) = (\d+);", line)
            assert m, f"unexpected line in {PROTO_PATH.name}: {raw!r}"
            declared[current].add(("repeated" if m.group(1) else "optional", m.group(2), m.group(3), int(m.group(4))))
    assert 'syntax = "proto3";' in text
    fd = messages()["WriteRequest"].DESCRIPTOR.file
    from google.protobuf.descriptor import FieldDescriptor as F

    tnames = {F.TYPE_DOUBLE: "double", F.TYPE_INT64: "int64", F.TYPE_STRING: "string"}
    described: dict[str, set[tuple[str, str, str, int]]] = {}
    for mname, desc in fd.message_types_by_name.items():
        described[mname] = {
            ("repeated" if _repeated(f) else "optional",
             f.message_type.name if f.type == F.TYPE_MESSAGE else tnames[f.type], f.name, f.number)
            for f in desc.fields}
    assert described == declared
    assert declared == {  # prometheus/prompb remote.proto + types.proto
        "WriteRequest": {("repeated", "TimeSeries", "timeseries", 1)},
        "TimeSeries": {("repeated", "Label", "labels", 1), ("repeated", "Sample", "samples", 2)},
        "Label": {("optional", "string", "name", 1), ("optional", "string", "value", 2)},
        "Sample": {("optional", "double", "value", 1), ("optional", "int64", "timestamp", 2)},
    }
    assert set(messages()) == set(declared)


def test_remote_write_sample_value_is_ieee_double() -> None:
    t = table()
    b = t.batch(interval(1, [(UDP_KEY, (1, 3), (2**53 + 1, 7))]))
    req = messages()["WriteRequest"].FromString(RemoteWriteEncoder().encode(b))
    vals = {ts.labels[0].value: ts.samples[0].value for ts in req.timeseries}
    assert vals["xtrace_network_packets_total"] == float(2**53)  # the nearest double (VM stores float64 anyway)
    assert struct.pack("<d", vals["xtrace_network_bytes_total"]) == struct.pack("<d", 7.0)


# -- URL and address parsing ------------------------------------------------------------


@pytest.mark.parametrize(("url", "fmt"), [
    ("http://127.0.0.1:8428/api/v1/write", PushFormat.REMOTE_WRITE),
    ("https://vm.example:443/prometheus/api/v1/write", PushFormat.REMOTE_WRITE),
    ("http://vminsert:8480/insert/0/prometheus/api/v1/write", PushFormat.REMOTE_WRITE),
    ("http://localhost:8428/api/v1/import/prometheus", PushFormat.TEXT),
    ("http://vminsert:8480/insert/0/prometheus/api/v1/import/prometheus", PushFormat.TEXT),
    ("  http://[2001:db8::5]:8428/api/v1/import/prometheus  ", PushFormat.TEXT),
])
def test_classify_url(url: str, fmt: PushFormat) -> None:
    assert classify_url(url) is fmt


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8428/",
    "http://127.0.0.1:8428",
    "http://127.0.0.1:8428/api/v1/import",
    "http://127.0.0.1:8428/api/v1/writer",
    "ftp://127.0.0.1:8428/api/v1/write",
    "127.0.0.1:8428/api/v1/write",
    "http:///api/v1/write",
    "http://127.0.0.1:99999/api/v1/write",
    "http://127.0.0.1:port/api/v1/write",
])
def test_classify_url_rejects_with_both_forms(url: str) -> None:
    with pytest.raises(UsageError) as ei:
        classify_url(url)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "/api/v1/write" in msg and "/api/v1/import/prometheus" in msg
    assert ei.value.exit_code == 2


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:s3cr%40t@vm:8428/api/v1/write", "http://u:***@vm:8428/api/v1/write"),
    ("https://u:p@ss@[2001:db8::5]:8428/api/v1/write", "https://u:***@[2001:db8::5]:8428/api/v1/write"),
    ("http://u:pw@vm:8428/x?next=http://a:b@c/", "http://u:***@vm:8428/x?next=http://a:***@c/"),
    ("http://user@vm:8428/api/v1/write", "http://user@vm:8428/api/v1/write"),
    ("http://vm:8428/api/v1/write", "http://vm:8428/api/v1/write"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_classify_url_errors_hide_a_password_in_the_url() -> None:
    for url in ("ftp://alice:hunter2@vm:8428/api/v1/write", "http://alice:hunter2@vm:99999/api/v1/write",
                "http://alice:hunter2@vm:8428/nothing"):
        with pytest.raises(UsageError) as ei:
            classify_url(url)
        assert "hunter2" not in str(ei.value)


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:9435", ("127.0.0.1", 9435)),
    (":9435", ("127.0.0.1", 9435)),  # no host: loopback only (Step 7: bind 127.0.0.1 unless told)
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::1]:65535", ("::1", 65535)),
    ("[2001:db8::1]:9435", ("2001:db8::1", 9435)),
    ("localhost:9435", ("localhost", 9435)),
    (" 127.0.0.1:9435 ", ("127.0.0.1", 9435)),
])
def test_parse_addr(text: str, want: tuple[str, int]) -> None:
    assert parse_addr(text) == want


@pytest.mark.parametrize("text", ["9435", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                                  "127.0.0.1:-1", "127.0.0.1:http", "::1:9435", ""])
def test_parse_addr_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--metrics-addr"):
        parse_addr(text)


# -- from the collector to the series: an evicted flow's last counts --------------------------


class FakeSource:
    """A FlowSource whose map the test edits; take_flow returns what `final` says."""

    def __init__(self) -> None:
        self.flows: dict[bytes, np.ndarray] = {}
        self.final: dict[bytes, np.ndarray] = {}

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.frombuffer(b"".join(self.flows), dtype=FLOW_KEY) if self.flows else np.empty(0, FLOW_KEY)
        vals = np.array(list(self.flows.values()), dtype=np.uint64).reshape(-1, NV)
        return keys, vals

    def read_stats(self) -> np.void:
        from xtrace_catch.kernel.layout import STATS

        return np.zeros(1, dtype=STATS)[0]

    def read_overflow(self) -> np.ndarray:
        from xtrace_catch.kernel.layout import FLOW_VALUE

        return np.zeros((2, TYPE_SLOTS), dtype=FLOW_VALUE)

    def take_flow(self, k: bytes) -> np.ndarray | None:
        self.flows.pop(k, None)
        return self.final.pop(k, None)


class Clock:
    now = 1000.0

    @classmethod
    def monotonic(cls) -> float:
        return cls.now


def test_counts_that_race_into_an_evicted_flow_reach_the_export() -> None:
    """Eviction is atomic (read-and-delete): packets that arrived after the batch read
    are added to the interval. They must reach the flow's series too, not only the text
    output, or its counter stays short forever."""
    from xtrace_catch.flows.collector import Collector

    src = FakeSource()
    kb = np.array([UDP_KEY], dtype=FLOW_KEY).tobytes()
    src.flows[kb] = row(5, 710)
    col = Collector(src, idle_timeout=10.0, clock=Clock)  # type: ignore[arg-type]
    t = table()
    s = Scraper(t)
    Clock.now += 1
    s.push(col.collect())
    assert s.last["xtrace_network_packets_total"] == {UDP_LABELS: 5}
    # Idle for longer than the timeout; two packets land between the read and the delete.
    Clock.now += 20
    src.final[kb] = row(7, 994)
    iv = col.collect()
    assert iv.evicted == 1 and iv.flows_tracked == 0
    assert iv.totals.tolist() == [row(7, 994).tolist()]  # the text/JSON output has them
    s.push(iv)
    assert s.last["xtrace_network_packets_total"] == {UDP_LABELS: 7}
    assert s.last["xtrace_network_bytes_total"] == {UDP_LABELS: 994}
    assert s.history["xtrace_network_packets_total{" + UDP_LABELS + "}"] == [5, 7]
