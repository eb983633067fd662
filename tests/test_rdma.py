"""RDMA counter reader (xtrace_catch.rdma): pure tier, no root.

Trees (tests/data/sysfs/README.md): real ones from prometheus/procfs (hfi1_0, mlx4_0 with two
ports, mlx5_0 with hw_counters) and prometheus/node_exporter (mlx4_0 with counters_ext, i40iw0
with "N/A (no PMA)"), whose expected metrics are the oracle for the x4 data conversion; and a
synthetic RoCE host (roce/, written by make_roce.py: mlx5 with np_*/rp_* congestion counters,
netdev symlinks). Tests that change counters work on a copy in tmp_path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xtrace_catch import rdma
from xtrace_catch.errors import UsageError
from xtrace_catch.rdma import Reading, Source, Step

SYSFS = Path(__file__).resolve().parent / "data" / "sysfs"
PROCFS = SYSFS / "procfs" / "sys"
NODE_EXPORTER = SYSFS / "node_exporter" / "sys"
ORACLE = SYSFS / "node_exporter" / "expected" / "e2e-output.infiniband-lines.txt"
ROCE = SYSFS / "roce" / "sys"
WALL = 1_700_000_000.0  # 2023-11-14T22:13:20Z
EXTRA = {"interface": "eth2", "host_ip": "10.0.0.1", "collect_agg": "default"}


class Clock:
    """A settable clock: returns ``t`` until told otherwise."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def copy_tree(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sys"
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture
def roce(tmp_path: Path) -> Path:
    return copy_tree(ROCE, tmp_path)


def cfile(root: Path, dev: str, group: str, name: str, port: int | None = 1) -> Path:
    base = root / "class" / "infiniband" / dev
    return (base / "ports" / str(port) if port is not None else base) / group / name


def put(root: Path, dev: str, group: str, name: str, value: object, port: int | None = 1) -> None:
    cfile(root, dev, group, name, port).write_text(f"{value}\n")


def bump(root: Path, dev: str, group: str, name: str, by: int, port: int | None = 1) -> None:
    p = cfile(root, dev, group, name, port)
    p.write_text(f"{int(p.read_text()) + by}\n")


def names_in(root: Path, dev: str, group: str, port: int | None = 1) -> list[str]:
    return sorted(os.listdir(cfile(root, dev, group, "x", port).parent))


def oracle() -> dict[tuple[str, str, str], float]:
    """node_exporter's metric values for its tree: (metric, device, port) -> value."""
    out = {}
    for line in ORACLE.read_text().splitlines():
        m = re.fullmatch(r'(node_infiniband_\w+)\{(.*)\} (\S+)', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1), labels.get("device", ""), labels.get("port", ""))] = float(m.group(3))
    return out


# ----------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [
    ("4: ACTIVE\n", (4, "ACTIVE")),
    ("5: LinkUp", (5, "LinkUp")),
    ("1: DOWN", (1, "DOWN")),
    ("3: Disabled", (3, "Disabled")),
    ("ACTIVE", (None, "ACTIVE")),
    ("", (None, "UNKNOWN")),
])
def test_parse_state(text: str, expected: tuple[int | None, str]) -> None:
    assert rdma.parse_state(text) == expected


@pytest.mark.parametrize("text, gbps", [
    ("100 Gb/sec (4X EDR)", 100.0),
    ("25 Gb/sec (1X EDR)\n", 25.0),
    ("2.5 Gb/sec (1X SDR)", 2.5),
    ("10 Gb/sec (4X)", 10.0),
    ("40 Gb/sec (4X QDR)", 40.0),
    ("", None),
    ("Invalid argument", None),
])
def test_parse_rate(text: str, gbps: float | None) -> None:
    assert rdma.parse_rate(text) == gbps


def test_parse_counter() -> None:
    assert rdma.parse_counter("2880761508848\n") == 2880761508848
    for bad in ("N/A (no PMA)", "", "-1", "12 packets", "0x10", "1.5"):
        with pytest.raises(ValueError):
            rdma.parse_counter(bad)


def test_ext_counter_names() -> None:
    assert rdma.ext_counter_name("port_xmit_data_64") == "port_xmit_data"
    assert rdma.ext_counter_name("port_rcv_packets_64") == "port_rcv_packets"
    assert rdma.ext_counter_name("port_unicast_rcv_packets") == "unicast_rcv_packets"
    assert rdma.ext_counter_name("port_multicast_xmit_packets") == "multicast_xmit_packets"


def test_counter_widths() -> None:
    assert rdma.counter_bits(Source.HW_COUNTERS, "out_of_sequence", "mlx5") == 32
    assert rdma.counter_bits(Source.HW_COUNTERS, "rx_write_requests", "mlx5") == 32
    assert rdma.counter_bits(Source.HW_COUNTERS, "np_cnp_sent", "mlx5") == 64
    assert rdma.counter_bits(Source.HW_COUNTERS, "vport_rp_cnp_handled", "mlx5") == 64
    assert rdma.counter_bits(Source.HW_COUNTERS, "rx_icrc_encapsulated", "mlx5") == 64
    assert rdma.counter_bits(Source.HW_COUNTERS, "out_of_sequence", "bnxt") is None
    assert rdma.counter_bits(Source.COUNTERS_EXT, "port_xmit_data_64", "mlx4") == 64
    assert rdma.counter_bits(Source.COUNTERS, "port_xmit_data", "mlx5") is None


# ----------------------------------------------------------------------------------------- wrap / reset

U32 = 1 << 32


@pytest.mark.parametrize("old, new, bits, delta, step", [
    (100, 250, None, 150, Step.FORWARD),
    (7, 7, 32, 0, Step.FORWARD),
    (U32 - 10, 5, 32, 15, Step.WRAP),  # mlx5 Q counter wrapped
    (1000, 3, 32, 3, Step.RESET),  # a 32-bit counter far from 2^32 going back: reset
    (U32 + 5, 3, 32, 3, Step.RESET),  # not a 32-bit value at all
    (U32 - 100, 50, None, 150, Step.WRAP),  # unknown width, old near 2^32: a 32-bit wrap
    (U32 - 1, 7, None, 7, Step.RESET),  # saturated PMA counter cleared
    (500, 2, None, 2, Step.RESET),
    (5_000_000_000, 10, None, 10, Step.RESET),  # above 2^32: a 64-bit counter, reset
    (U32 - 100, 1 << 31, None, 1 << 31, Step.RESET),  # new too large for a wrap
    (100, 5, 64, 5, Step.RESET),
    ((1 << 64) - 5, 3, 64, 8, Step.WRAP),
])
def test_counter_step(old: int, new: int, bits: int | None, delta: int, step: Step) -> None:
    assert rdma.counter_step(old, new, bits) == (delta, step)


@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), st.sampled_from([None, 32, 64]))
def test_counter_step_never_jumps(old: int, new: int, bits: int | None) -> None:
    d, step = rdma.counter_step(old, new, bits)
    assert d >= 0
    if new >= old:
        assert (d, step) == (new - old, Step.FORWARD)
    elif step is Step.RESET:
        assert d == new
    else:
        assert d <= 1 << ((bits or 32) - 1)


def test_diff_readings_baseline_and_absent() -> None:
    old = {"a": Reading(10), "b": Reading(5), "gone": Reading(1)}
    new = {"a": Reading(15), "b": Reading(2), "fresh": Reading(99)}
    d = rdma.diff_readings(old, new, {"a": 100, "gone": 4})
    assert d.deltas == {"a": 5, "b": 2}
    assert d.totals == {"a": 105, "b": 2, "gone": 4}
    assert d.reset == ("b",) and d.wrapped == ()


# ----------------------------------------------------------------------------------------- real trees


def test_node_exporter_oracle_x4_and_port_attributes() -> None:
    """Bytes are port_*_data x4, counters_ext (64-bit) preferred: node_exporter's legacy_* values."""
    want = oracle()
    rd = rdma.RdmaReader(NODE_EXPORTER, ["mlx4_0", "i40iw0"])
    got = {(s.info.device, str(s.info.port)): s for s in rd.snapshot()}
    nic = rd.nic_bytes()
    for port in ("1", "2"):
        s = got[("mlx4_0", port)]
        rx = want[("node_infiniband_legacy_data_received_bytes_total", "mlx4_0", port)]
        tx = want[("node_infiniband_legacy_data_transmitted_bytes_total", "mlx4_0", port)]
        assert (s.rx_bytes, s.tx_bytes) == (rx, tx) == (18527668, 14933760)
        assert nic[("mlx4_0", int(port))] == rdma.NicBytes("mlx4_0", int(port), 18527668, 14933760)
        assert s.counters["port_rcv_data"] == Reading(4631917, 64)
        for ours, theirs in (("unicast_rcv_packets", "legacy_unicast_packets_received_total"),
                             ("multicast_xmit_packets", "legacy_multicast_packets_transmitted_total"),
                             ("port_rcv_packets", "legacy_packets_received_total")):
            assert s.counters[ours].value == want[(f"node_infiniband_{theirs}", "mlx4_0", port)]
    # Port 1: counters/ and counters_ext/ agree on data, so the non-legacy metric matches too.
    assert got[("mlx4_0", "1")].rx_bytes == want[("node_infiniband_port_data_received_bytes_total", "mlx4_0", "1")]
    assert got[("mlx4_0", "1")].counters["port_xmit_wait"] == Reading(4294967295, None)
    for (dev, port), s in got.items():
        assert s.info.rate_gbps is not None
        assert s.info.rate_gbps * 1e9 / 8 == want[("node_infiniband_rate_bytes_per_second", dev, port)]
        assert s.info.state_id == want[("node_infiniband_state_id", dev, port)]
        assert s.info.phys_state_id == want[("node_infiniband_physical_state_id", dev, port)]
        assert s.info.state == "ACTIVE" and s.info.phys_state == "LinkUp"


def test_no_pma_files_are_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(NODE_EXPORTER, ["i40iw0"], clock=clock, wall=lambda: WALL)
    with caplog.at_level(logging.WARNING, logger="xtrace_catch.rdma"):
        assert rd.poll().baseline[0].counters == {}
        clock.t += 5
        iv = rd.poll()
        clock.t += 5
        rd.poll()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "N/A (no PMA)" in msg and "port_rcv_data" in msg and "symbol_error" in msg
    (d,) = iv.ports
    rec = rdma.json_record(d)
    assert rec["counters"] == {} and rec["rx_bytes"] is None and rec["rx_bps"] is None
    assert rec["utilization"] is None and rec["rate_gbps"] == 10.0
    assert rdma.text_line(d) == "i40iw0/1 [ACTIVE 10 Gb/s IB] rx=n/a tx=n/a util=n/a rx_pkts=n/a tx_pkts=n/a"
    assert rd.nic_bytes()[("i40iw0", 1)] == rdma.NicBytes("i40iw0", 1, None, None)


def test_procfs_devices_and_ports() -> None:
    assert rdma.list_devices(PROCFS) == ["hfi1_0", "mlx4_0", "mlx5_0"]
    rd = rdma.RdmaReader(PROCFS)
    got = {s.info.name: s for s in rd.snapshot()}
    assert sorted(got) == ["hfi1_0/1", "mlx4_0/1", "mlx4_0/2", "mlx5_0/1"]
    assert got["hfi1_0/1"].rx_bytes == 345091702026 * 4
    assert got["hfi1_0/1"].tx_bytes == 273558326543 * 4
    assert got["mlx4_0/2"].rx_bytes == 2460436784 * 4
    assert got["hfi1_0/1"].info.rate_gbps == 100.0 and got["hfi1_0/1"].info.transport == "IB"
    assert got["mlx5_0/1"].info.rate_gbps == 25.0
    assert all(s.hw is None for s in got.values())  # rdma mode reads no hw_counters
    assert rd.max_lifespan_ms is None


def test_procfs_mlx5_hw_counters_lifespan_is_not_a_counter() -> None:
    rd = rdma.RdmaReader(PROCFS, ["mlx5_0"], nccl=True)
    (s,) = rd.snapshot()
    assert s.hw is not None
    assert len(s.hw) == 24 and "lifespan" not in s.hw
    assert s.hw["rx_read_requests"] == Reading(175528982, 32)  # mlx5 Q counter: 32-bit
    assert "np_cnp_sent" not in s.hw  # the device lacks cc counters: simply absent
    assert s.lifespan_ms == 10 and rd.max_lifespan_ms == 10 and rd.lifespans == {"mlx5_0/1": 10}
    rdma.check_interval(100, rd.max_lifespan_ms)
    rdma.check_interval(5, None)
    with pytest.raises(UsageError, match=r"interval 5 ms is shorter than the hw_counters lifespan \(10 ms\)"):
        rdma.check_interval(5, rd.max_lifespan_ms)


def test_procfs_mlx5_nccl_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = copy_tree(PROCFS, tmp_path)
    clock = Clock()
    rd = rdma.RdmaReader(root, ["mlx5_0"], nccl=True, clock=clock, wall=lambda: WALL)
    rd.poll()
    bump(root, "mlx5_0", "hw_counters", "out_of_sequence", 4)
    bump(root, "mlx5_0", "hw_counters", "local_ack_timeout_err", 1)
    put(root, "mlx5_0", "hw_counters", "lifespan", 20)  # changed, yet never a counter
    clock.t += 2
    with caplog.at_level(logging.WARNING):
        (d,) = rd.poll().ports
    assert not caplog.records
    rec = rdma.json_record(d)
    assert "lifespan" not in rec["hw_counters"] and rec["lifespan_ms"] == 20
    assert len(rec["hw_counters"]) == 24
    assert {k: v for k, v in rec["hw_counters"].items() if v} == {"out_of_sequence": 4, "local_ack_timeout_err": 1}
    assert rec["health"] == [{"flag": "retransmission", "counters": {"out_of_sequence": 4, "local_ack_timeout_err": 1}}]
    assert rec["link_layer"] == "InfiniBand" and rec["state"] == "ACTIVE"
    samples = rdma.interval_metrics(rd.poll(), EXTRA)
    assert not [s for s in samples if s[3].get("counter") == "lifespan"]


# ----------------------------------------------------------------------------------------- RoCE intervals


def roce_interval(root: Path, clock: Clock) -> None:
    """Traffic on mlx5_0/1 over 4 s: 10 Gbit/s in, 5 Gbit/s out, with congestion and errors."""
    g = "counters"
    bump(root, "mlx5_0", g, "port_rcv_data", 1_250_000_000)  # words: 5e9 bytes
    bump(root, "mlx5_0", g, "port_xmit_data", 625_000_000)
    bump(root, "mlx5_0", g, "port_rcv_packets", 4_000_000)
    bump(root, "mlx5_0", g, "port_xmit_packets", 2_000_000)
    bump(root, "mlx5_0", g, "unicast_rcv_packets", 3_999_000)
    bump(root, "mlx5_0", g, "multicast_rcv_packets", 1000)
    bump(root, "mlx5_0", g, "unicast_xmit_packets", 2_000_000)
    bump(root, "mlx5_0", g, "symbol_error", 3)
    bump(root, "mlx5_0", g, "port_xmit_wait", 250)
    h = "hw_counters"
    for name, by in (("np_ecn_marked_roce_packets", 120), ("np_cnp_sent", 118), ("rp_cnp_handled", 40),
                     ("out_of_sequence", 5), ("local_ack_timeout_err", 2), ("req_cqe_error", 1),
                     ("req_cqe_flush_error", 9), ("rx_write_requests", 4000), ("rx_read_requests", 140)):
        bump(root, "mlx5_0", h, name, by)
    clock.t += 4


def test_roce_interval_exact(roce: Path) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(roce, ["mlx5_0"], nccl=True, clock=clock, wall=lambda: WALL)
    first = rd.poll()
    assert first.ports == () and [s.info.name for s in first.baseline] == ["mlx5_0/1"]
    roce_interval(roce, clock)
    iv = rd.poll()
    (d,) = iv.ports
    counters = {n: 0 for n in names_in(roce, "mlx5_0", "counters")}
    counters.update(port_rcv_data=1_250_000_000, port_xmit_data=625_000_000, port_rcv_packets=4_000_000,
                    port_xmit_packets=2_000_000, unicast_rcv_packets=3_999_000, multicast_rcv_packets=1000,
                    unicast_xmit_packets=2_000_000, symbol_error=3, port_xmit_wait=250)
    hw = {n: 0 for n in names_in(roce, "mlx5_0", "hw_counters") if n != "lifespan"}
    hw.update(np_ecn_marked_roce_packets=120, np_cnp_sent=118, rp_cnp_handled=40, out_of_sequence=5,
              local_ack_timeout_err=2, req_cqe_error=1, req_cqe_flush_error=9, rx_write_requests=4000,
              rx_read_requests=140)
    assert rdma.json_record(d) == {
        "record": "rdma_port", "time": "2023-11-14T22:13:20.000Z", "device": "mlx5_0", "interface": "eth2", "port": 1,
        "netdev": "eth2", "link_layer": "Ethernet", "state": "ACTIVE", "phys_state": "LinkUp", "rate_gbps": 100.0,
        "elapsed_s": 4.0, "rx_bytes": 5_000_000_000, "tx_bytes": 2_500_000_000, "rx_packets": 4_000_000,
        "tx_packets": 2_000_000, "rx_bps": 1e10, "tx_bps": 5e9, "rx_pps": 1e6, "tx_pps": 5e5,
        "utilization": 0.1, "rx_utilization": 0.1, "tx_utilization": 0.05,
        "errors": {"symbol_error": 3}, "counters": counters, "wrapped": [], "reset": [],
        "hw_counters": hw, "lifespan_ms": 10,
        "health": [
            {"flag": "congestion",
             "counters": {"np_ecn_marked_roce_packets": 120, "np_cnp_sent": 118, "rp_cnp_handled": 40}},
            {"flag": "retransmission", "counters": {"out_of_sequence": 5, "local_ack_timeout_err": 2}},
            {"flag": "completion errors", "counters": {"req_cqe_error": 1}},
            {"flag": "link errors", "counters": {"symbol_error": 3}},
        ],
    }
    assert rdma.text_line(d) == ("mlx5_0/1 [ACTIVE 100 Gb/s RoCE] rx=10.0 Gbit/s tx=5.00 Gbit/s util=10% "
                                 "rx_pkts=1.00M/s tx_pkts=500k/s netdev=eth2 errors: symbol_error+3")
    assert rdma.health_line(d) == (
        "mlx5_0/1 health: congestion np_ecn_marked_roce_packets+120 np_cnp_sent+118 rp_cnp_handled+40; "
        "retransmission out_of_sequence+5 local_ack_timeout_err+2; completion errors req_cqe_error+1; "
        "link errors symbol_error+3 | requests/s write=1.00k read=35 atomic=0")
    # rdma mode: the same interval without hw_counters or health
    rec = rdma.json_record(dataclasses.replace(d, hw=None, device_hw=None))
    assert "hw_counters" not in rec and "health" not in rec
    # a quiet interval next
    clock.t += 4
    (quiet,) = rd.poll().ports
    assert rdma.health_line(quiet) == "mlx5_0/1 health: ok | requests/s write=0 read=0 atomic=0"
    assert rdma.text_line(quiet) == ("mlx5_0/1 [ACTIVE 100 Gb/s RoCE] rx=0 bit/s tx=0 bit/s util=0.0% "
                                     "rx_pkts=0/s tx_pkts=0/s netdev=eth2")


def test_json_contract_keys(roce: Path) -> None:
    rd = rdma.RdmaReader(roce, nccl=True, clock=Clock())
    rd.poll()
    for d in rd.poll().ports:
        rec = rdma.json_record(d)
        for key in ("time", "device", "port", "link_layer", "state", "rx_bytes", "tx_bytes", "rx_packets",
                    "tx_packets", "rx_bps", "tx_bps", "counters", "hw_counters", "utilization", "rate_gbps",
                    "health"):
            assert key in rec, key
        assert rec["record"] == "rdma_port"
        # DESIGN.md: records other than flows carry none of the other flow keys; `interface` is
        # the port's netdev where it has one (null otherwise), so one jq filter fits every record.
        assert not {"direction", "src_ip", "packets", "bytes", "host_ip"} & set(rec)
        assert rec["interface"] == rec["netdev"]


def test_zero_elapsed_gives_no_rates(roce: Path) -> None:
    rd = rdma.RdmaReader(roce, ["mlx5_0"], clock=Clock())
    rd.poll()
    bump(roce, "mlx5_0", "counters", "port_rcv_data", 10)
    (d,) = rd.poll().ports  # the clock did not move
    assert d.rx_bytes == 40 and d.rx_bps is None and d.utilization is None


def test_wrap_and_reset(roce: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(roce, ["mlx5_0"], nccl=True, clock=clock, wall=lambda: WALL)
    put(roce, "mlx5_0", "hw_counters", "out_of_sequence", U32 - 10)  # 32-bit Q counter near its end
    put(roce, "mlx5_0", "hw_counters", "packet_seq_err", 1000)
    put(roce, "mlx5_0", "counters", "port_xmit_data", U32 - 100)  # PMA, width unknown, near 2^32
    put(roce, "mlx5_0", "counters", "symbol_error", 500)
    rd.poll()
    put(roce, "mlx5_0", "hw_counters", "out_of_sequence", 5)  # wrapped: +15
    put(roce, "mlx5_0", "hw_counters", "packet_seq_err", 3)  # reset: +3
    put(roce, "mlx5_0", "counters", "port_xmit_data", 50)  # wrapped: +150 words
    put(roce, "mlx5_0", "counters", "symbol_error", 2)  # reset: +2
    put(roce, "mlx5_0", "hw_counters", "np_cnp_sent", 5)  # 64-bit, went back from 5000: reset
    clock.t += 1
    with caplog.at_level(logging.INFO, logger="xtrace_catch.rdma"):
        (d,) = rd.poll().ports
    assert d.tx_bytes == 600 and d.tx_bps == 4800.0
    assert d.counters.deltas["symbol_error"] == 2
    assert d.hw is not None
    assert (d.hw.deltas["out_of_sequence"], d.hw.deltas["packet_seq_err"], d.hw.deltas["np_cnp_sent"]) == (15, 3, 5)
    assert d.counters.wrapped == ("port_xmit_data",) and d.counters.reset == ("symbol_error",)
    assert d.hw.wrapped == ("out_of_sequence",) and d.hw.reset == ("np_cnp_sent", "packet_seq_err")
    assert d.resets_total == 3
    rec = rdma.json_record(d)
    assert rec["wrapped"] == ["port_xmit_data", "out_of_sequence"]
    assert rec["reset"] == ["symbol_error", "np_cnp_sent", "packet_seq_err"]
    assert rdma.text_line(d).endswith("errors: symbol_error+2 reset: symbol_error np_cnp_sent packet_seq_err")
    assert any("counter reset" in r.getMessage() for r in caplog.records)
    # totals keep growing across the wrap and the resets
    put(roce, "mlx5_0", "hw_counters", "out_of_sequence", 7)
    put(roce, "mlx5_0", "counters", "port_xmit_data", 60)
    clock.t += 1
    (d2,) = rd.poll().ports
    assert d2.resets_total == 3
    assert d2.hw is not None and d2.hw.totals["out_of_sequence"] == 17 and d2.hw.totals["packet_seq_err"] == 3
    assert d2.counters.totals["port_xmit_data"] == 160 and d2.counters.totals["symbol_error"] == 2
    m = {(s[0], s[3].get("direction"), s[3].get("counter")): s[4] for s in rdma.port_metrics(d2, EXTRA)}
    assert m[("xtrace_rdma_port_bytes_total", "egress", None)] == 640
    assert m[("xtrace_rdma_hw_counter_total", None, "out_of_sequence")] == 17
    assert m[("xtrace_rdma_counter_resets_total", None, None)] == 3


def test_metrics_shape_totals_and_encoders(roce: Path) -> None:
    from xtrace_catch.export.remote_write import RemoteWriteEncoder, messages
    from xtrace_catch.export.series import Batch, render_text

    clock = Clock()
    rd = rdma.RdmaReader(roce, nccl=True, clock=clock, wall=lambda: WALL)
    rd.poll()
    roce_interval(roce, clock)
    bump(roce, "mlx5_1", "hw_counters", "out_of_buffer", 5, port=None)  # device level
    iv = rd.poll()
    samples = rdma.interval_metrics(iv, EXTRA)
    for name, mtype, help_, labels, value in samples:
        assert name.startswith("xtrace_rdma_") and mtype in ("counter", "gauge") and help_
        assert isinstance(labels, dict) and isinstance(value, (int, float))
        assert {k: labels[k] for k in EXTRA} == EXTRA
        assert (mtype == "counter") == name.endswith("_total")
    keys = [(s[0], tuple(sorted(s[3].items()))) for s in samples]
    assert len(keys) == len(set(keys)), "one label set twice in one push"
    by = {(s[0], s[3]["device"], s[3].get("port"), s[3].get("direction") or s[3].get("counter")): s[4]
          for s in samples}
    assert by[("xtrace_rdma_port_bytes_total", "mlx5_0", "1", "ingress")] == 5_000_000_000
    assert by[("xtrace_rdma_port_bytes_total", "mlx5_0", "1", "egress")] == 2_500_000_000
    assert by[("xtrace_rdma_port_packets_total", "mlx5_0", "1", "ingress")] == 4_000_000
    assert by[("xtrace_rdma_port_counter_total", "mlx5_0", "1", "symbol_error")] == 3
    assert ("xtrace_rdma_port_counter_total", "mlx5_0", "1", "port_rcv_data") not in by
    assert by[("xtrace_rdma_hw_counter_total", "mlx5_0", "1", "np_cnp_sent")] == 118
    assert by[("xtrace_rdma_port_rate_bits_per_second", "mlx5_0", "1", "ingress")] == 1e10
    assert by[("xtrace_rdma_port_utilization_ratio", "mlx5_0", "1", "egress")] == 0.05
    assert by[("xtrace_rdma_port_link_rate_bits_per_second", "mlx5_0", "1", None)] == 1e11
    assert by[("xtrace_rdma_port_state", "mlx5_0", "1", None)] == 1
    assert by[("xtrace_rdma_port_state", "mlx5_1", "1", None)] == 0
    assert by[("xtrace_rdma_device_hw_counter_total", "mlx5_1", None, "out_of_buffer")] == 5
    assert not [k for k in by if k[0] == "xtrace_rdma_device_hw_counter_total" and k[1] != "mlx5_1"]
    assert not [k for k in by if k[0] == "xtrace_rdma_hw_counter_total" and k[1] == "mlx4_0"]  # no hw_counters
    # the existing encoders take them as Batch.health
    batch = Batch(seq=1, ts_ms=int(WALL * 1000), ids=np.zeros(0, np.int64), values=np.zeros((0, 4), np.uint64),
                  health=samples)
    text = render_text(batch, with_timestamps=True, with_meta=False)
    assert ('xtrace_rdma_port_bytes_total{device="mlx5_0",port="1",direction="ingress",interface="eth2",'
            'host_ip="10.0.0.1",collect_agg="default"} 5000000000 1700000000000\n') in text
    assert ('xtrace_rdma_port_utilization_ratio{device="mlx5_0",port="1",direction="egress",interface="eth2",'
            'host_ip="10.0.0.1",collect_agg="default"} 0.05 1700000000000\n') in text
    assert text.count("\n") == len(samples)
    wr = messages()["WriteRequest"].FromString(RemoteWriteEncoder().encode(batch))
    assert len(wr.timeseries) == len(samples)
    first = {lab.name: lab.value for lab in wr.timeseries[0].labels}
    assert first["__name__"] == samples[0][0] and wr.timeseries[0].samples[0].value == samples[0][4]


def test_metrics_totals_never_go_backwards(roce: Path) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(roce, ["mlx5_0"], clock=clock)
    rd.poll()
    seen: list[float] = []
    base = 250_000_000_000  # port_rcv_data in the tree
    for value in (base + 10_000, base + 20_000, 5, 400):  # reset between the 2nd and 3rd reading
        put(roce, "mlx5_0", "counters", "port_rcv_data", value)
        clock.t += 1
        (d,) = rd.poll().ports
        m = {(s[0], s[3].get("direction")): s[4] for s in rdma.port_metrics(d, EXTRA)}
        seen.append(m[("xtrace_rdma_port_bytes_total", "ingress")])
    assert seen == [40_000, 80_000, 80_020, 81_600]
    assert not [s for s in rdma.port_metrics(d, EXTRA) if "hw_counter" in s[0]]  # rdma mode: no hw_counters


def test_missing_counters_are_absent_not_errors(roce: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(roce, ["mlx5_0", "mlx4_0"], nccl=True, clock=clock)
    rd.poll()
    cfile(roce, "mlx5_0", "counters", "port_xmit_wait").unlink()
    cfile(roce, "mlx5_0", "hw_counters", "np_cnp_sent").unlink()
    bump(roce, "mlx5_0", "hw_counters", "rp_cnp_handled", 2)
    clock.t += 1
    with caplog.at_level(logging.WARNING):
        iv = rd.poll()
    assert not caplog.records
    recs = {f"{d.info.name}": rdma.json_record(d) for d in iv.ports}
    assert "port_xmit_wait" not in recs["mlx5_0/1"]["counters"]
    assert "np_cnp_sent" not in recs["mlx5_0/1"]["hw_counters"]
    assert recs["mlx5_0/1"]["health"] == [{"flag": "congestion", "counters": {"rp_cnp_handled": 2}}]
    for p in ("mlx4_0/1", "mlx4_0/2"):  # no hw_counters at all
        assert recs[p]["hw_counters"] == {} and recs[p]["health"] == [] and recs[p]["lifespan_ms"] is None
        assert rdma.health_line(next(d for d in iv.ports if d.info.name == p)) == f"{p} health: ok"


def test_garbage_value_midrun_one_warning(roce: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(roce, ["mlx5_0"], clock=clock)
    rd.poll()
    put(roce, "mlx5_0", "counters", "port_rcv_errors", "garbage")
    bump(roce, "mlx5_0", "counters", "port_rcv_packets", 10)
    with caplog.at_level(logging.WARNING, logger="xtrace_catch.rdma"):
        clock.t += 1
        (d1,) = rd.poll().ports
        bump(roce, "mlx5_0", "counters", "port_rcv_packets", 20)
        clock.t += 1
        (d2,) = rd.poll().ports
    assert len(caplog.records) == 1
    assert "port_rcv_errors" in caplog.records[0].getMessage() and "'garbage'" in caplog.records[0].getMessage()
    assert "port_rcv_errors" not in d1.counters.deltas and "port_rcv_errors" not in d2.counters.deltas
    assert (d1.rx_packets, d2.rx_packets) == (10, 20)
    put(roce, "mlx5_0", "counters", "port_rcv_errors", 4)  # readable again: counted from its last good value (0)
    clock.t += 1
    (d3,) = rd.poll().ports
    assert d3.counters.deltas["port_rcv_errors"] == 4 and d3.counters.reset == ()


def test_device_disappears_and_returns(roce: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(roce, nccl=True, clock=clock, wall=lambda: WALL)  # follows all devices
    rd.poll()
    link = roce / "class" / "infiniband" / "mlx5_1"
    target = os.readlink(link)
    with caplog.at_level(logging.WARNING, logger="xtrace_catch.rdma"):
        link.unlink()
        bump(roce, "mlx5_0", "counters", "port_rcv_packets", 7)
        clock.t += 1
        iv1 = rd.poll()
        clock.t += 1
        iv2 = rd.poll()
    assert iv1.missing == iv2.missing == ("mlx5_1",)
    assert [d.info.name for d in iv1.ports] == ["mlx4_0/1", "mlx4_0/2", "mlx5_0/1"]
    assert next(d for d in iv1.ports if d.info.name == "mlx5_0/1").rx_packets == 7
    assert [r.getMessage() for r in caplog.records] == [
        "RDMA device mlx5_1 disappeared; continuing with the others and reading it again if it returns"]
    caplog.clear()
    os.symlink(target, link)
    bump(roce, "mlx5_1", "counters", "port_rcv_data", 25)
    bump(roce, "mlx5_1", "hw_counters", "out_of_buffer", 3, port=None)
    clock.t += 1
    with caplog.at_level(logging.WARNING, logger="xtrace_catch.rdma"):
        iv3 = rd.poll()
    assert iv3.missing == ()
    (back,) = [d for d in iv3.ports if d.info.device == "mlx5_1"]
    assert back.rx_bytes == 100 and back.elapsed == 3.0  # against its last reading, across the gap
    assert back.device_hw is not None and back.device_hw.deltas["out_of_buffer"] == 3
    assert [r.getMessage() for r in caplog.records] == ["RDMA device mlx5_1 is back"]


def test_explicit_device_disappears(roce: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(roce, ["mlx5_0", "mlx4_0"], clock=clock)
    rd.poll()
    link = roce / "class" / "infiniband" / "mlx4_0"
    target = os.readlink(link)
    link.unlink()
    with caplog.at_level(logging.WARNING, logger="xtrace_catch.rdma"):
        clock.t += 1
        assert [d.info.name for d in rd.poll().ports] == ["mlx5_0/1"]
        clock.t += 1
        rd.poll()
    assert len(caplog.records) == 1
    os.symlink(target, link)
    clock.t += 1
    assert [d.info.name for d in rd.poll().ports] == ["mlx5_0/1", "mlx4_0/1", "mlx4_0/2"]


def test_device_vanishing_mid_read_is_missing_not_partial(roce: Path, caplog: pytest.LogCaptureFixture) -> None:
    link = roce / "class" / "infiniband" / "mlx5_0"
    state = {"t": 100.0, "vanish": False}

    def clock() -> float:  # called per port, after its state files and before its counters
        if state["vanish"] and link.is_symlink():
            link.unlink()
        return state["t"]

    rd = rdma.RdmaReader(roce, ["mlx5_0", "mlx4_0"], clock=clock)
    rd.poll()
    state.update(t=101.0, vanish=True)
    with caplog.at_level(logging.WARNING, logger="xtrace_catch.rdma"):
        iv = rd.poll()
    assert iv.missing == ("mlx5_0",)
    assert [d.info.name for d in iv.ports] == ["mlx4_0/1", "mlx4_0/2"]
    assert [r.getMessage() for r in caplog.records] == [
        "RDMA device mlx5_0 disappeared; continuing with the others and reading it again if it returns"]


def test_device_level_hw_counters(roce: Path) -> None:
    clock = Clock()
    rd = rdma.RdmaReader(roce, ["mlx5_1"], nccl=True, clock=clock, wall=lambda: WALL)
    rd.poll()
    assert rd.lifespans == {"mlx5_1": 20, "mlx5_1/1": 10} and rd.max_lifespan_ms == 20
    bump(roce, "mlx5_1", "hw_counters", "out_of_buffer", 5, port=None)
    clock.t += 1
    (d,) = rd.poll().ports
    rec = rdma.json_record(d)
    assert rec["device_hw_counters"] == {"out_of_buffer": 5, "rx_write_requests": 0}
    assert rec["health"] == [{"flag": "receive drops", "counters": {"out_of_buffer": 5}}]
    assert rec["state"] == "DOWN" and rec["phys_state"] == "Disabled" and rec["netdev"] == "eth3"
    assert rdma.text_line(d) == ("mlx5_1/1 [DOWN 40 Gb/s RoCE] rx=0 bit/s tx=0 bit/s util=0.0% "
                                 "rx_pkts=0/s tx_pkts=0/s netdev=eth3")


# ----------------------------------------------------------------------------------------- devices


def test_netdev_mapping_like_ibdev2netdev(roce: Path) -> None:
    assert rdma.mapping_lines(rdma.netdev_links(roce)) == [
        "mlx4_0 port 1 ==> eth4 (Up)",
        "mlx4_0 port 2 ==> eth5 (Up)",
        "mlx5_0 port 1 ==> eth2 (Up)",
        "mlx5_1 port 1 ==> eth3 (Down)",
    ]
    assert rdma.devices_for_interface(roce, "eth2") == ["mlx5_0"]
    assert rdma.devices_for_interface(roce, "eth5") == ["mlx4_0"]
    for plain in ("eth0", "lo", "nonexistent"):
        assert rdma.devices_for_interface(roce, plain) == []
    # the mapping follows the real symlink layout: class/net/<if> -> devices/.../net/<if>, device -> PCI fn
    assert os.readlink(roce / "class/net/eth2") == "../../devices/pci0000:00/0000:3b:00.0/net/eth2"
    assert (roce / "class/net/eth2/device/infiniband/mlx5_0/ports/1/counters").is_dir()
    (roce / "class/net/eth5/dev_port").unlink()  # no dev_port: port 1
    assert "mlx4_0 port 1 ==> eth5 (Up)" in rdma.mapping_lines(rdma.netdev_links(roce))
    rd = rdma.RdmaReader(roce, ["mlx4_0"])
    assert {s.info.name: s.info.netdev for s in rd.snapshot()} == {"mlx4_0/1": "eth4", "mlx4_0/2": None}


def test_select_devices(roce: Path, tmp_path: Path) -> None:
    assert rdma.select_devices(roce, device="mlx4_0") == rdma.Selection(("mlx4_0",), False, "mlx4_0")
    sel = rdma.select_devices(roce, interface="eth3")
    assert sel.devices == ("mlx5_1",) and not sel.follow_all and sel.why == "mlx5_1 (behind eth3)"
    assert sel.reader_devices == ("mlx5_1",)
    sel = rdma.select_devices(roce, device="mlx5_0", interface="eth3")
    assert sel.devices == ("mlx5_0",)  # explicit device wins
    for iface in ("eth0", "nonexistent", None):
        sel = rdma.select_devices(roce, interface=iface)
        assert sel.devices == ("mlx4_0", "mlx5_0", "mlx5_1") and sel.follow_all and sel.reader_devices is None
    with pytest.raises(UsageError, match=r"unknown RDMA device 'mlx5_9'; devices found: mlx4_0, mlx5_0, mlx5_1") as e:
        rdma.select_devices(roce, device="mlx5_9")
    assert e.value.exit_code == 2


def test_no_devices_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="sysfs root .* does not exist"):
        rdma.select_devices(tmp_path / "nope")
    with pytest.raises(UsageError, match="does not exist"):
        rdma.RdmaReader(tmp_path / "nope")
    empty = tmp_path / "sys"
    empty.mkdir()
    for layout in (lambda: None, lambda: (empty / "class" / "infiniband").mkdir(parents=True)):
        layout()
        with pytest.raises(UsageError) as e:
            rdma.select_devices(empty, interface="eth0")
        msg = str(e.value)
        assert "no RDMA devices" in msg and "ls /sys/class/infiniband" in msg and "modprobe" in msg
    assert rdma.RdmaReader(empty).poll().ports == ()  # a reader with nothing to read just reports nothing


def test_nic_bytes_function(roce: Path) -> None:
    got = rdma.nic_bytes(roce)
    assert got[("mlx5_0", 1)] == rdma.NicBytes("mlx5_0", 1, 250_000_000_000 * 4, 180_000_000_000 * 4)
    assert sorted(got) == [("mlx4_0", 1), ("mlx4_0", 2), ("mlx5_0", 1), ("mlx5_1", 1)]
    assert rdma.nic_bytes(roce, ["mlx4_0"]) == {("mlx4_0", 1): rdma.NicBytes("mlx4_0", 1, 4000, 8000),
                                                 ("mlx4_0", 2): rdma.NicBytes("mlx4_0", 2, 4000, 8000)}


def test_iwarp_transport_label(roce: Path) -> None:
    (roce / "class/infiniband/mlx4_0/node_type").write_text("4: RNIC\n")
    rd = rdma.RdmaReader(roce, ["mlx4_0"])
    assert {s.info.transport for s in rd.snapshot()} == {"iWARP"}


# ----------------------------------------------------------------------------------------- formatting


def test_formatting_helpers() -> None:
    assert rdma.format_bps(12.3e9) == "12.3 Gbit/s"
    assert rdma.format_bps(1.234e12) == "1.23 Tbit/s"
    assert rdma.format_bps(999) == "999 bit/s"
    assert rdma.format_bps(0) == "0 bit/s"
    assert rdma.format_bps(None) == "n/a"
    assert rdma.format_count(1_020_000) == "1.02M"
    assert rdma.format_count(35) == "35"
    assert rdma.format_count(2.5) == "2.50"
    assert rdma.format_percent(0.123) == "12%"
    assert rdma.format_percent(0.004) == "0.4%"
    assert rdma.format_percent(None) == "n/a"


def test_all_is_complete() -> None:
    """Each module of the package lists what it defines for others; the package hands on all of it."""
    from xtrace_catch.rdma import bypass, counters, devices, metrics, reader, records, render

    for mod in (counters, devices, reader, records, render, metrics, bypass):
        for name in mod.__all__:
            assert hasattr(mod, name), (mod.__name__, name)
        public = {n for n, v in vars(mod).items()
                  if not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__}
        assert public <= set(mod.__all__), (mod.__name__, public - set(mod.__all__))
        if mod is not bypass:  # the bridge to the flow modes stays out of the face (numpy, collector)
            assert all(getattr(rdma, n) is getattr(mod, n) for n in mod.__all__), mod.__name__
    assert "BypassTracker" not in rdma.__all__
