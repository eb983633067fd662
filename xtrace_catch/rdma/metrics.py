"""RDMA records as metric samples (xtrace_rdma_*), for push and /metrics."""

from __future__ import annotations

from collections.abc import Mapping

from ..export.sample import Sample
from .counters import DATA_WORD, RX_DATA, RX_PACKETS, TRAFFIC_COUNTERS, TX_DATA, TX_PACKETS
from .records import PortDelta, RdmaInterval

__all__ = [
    "Sample", "port_metrics", "interval_metrics",
]

def _s(name: str, mtype: str, help_: str, labels: dict[str, str], value: float) -> Sample:
    return Sample(name, mtype, help_, labels, value)


def port_metrics(d: PortDelta, extra: Mapping[str, str]) -> list[Sample]:
    """The ``xtrace_rdma_`` samples of one port (device-level hw_counters: see :func:`interval_metrics`).

    Counters are totals since the agent started, summed from handled deltas (wraps and resets never
    make them go backwards); gauges describe the last interval. ``extra`` (interface, host_ip,
    collect_agg) is added to every label set."""
    i = d.info
    base = {"device": i.device, "port": str(i.port)}

    def L(**kv: str) -> dict[str, str]:
        return {**base, **kv, **extra}

    tot = d.counters.totals
    out: list[Sample] = []
    # Directions are named as the flow metrics name them (rx = ingress, tx = egress) so the two join.
    for direction, data, pkts in (("ingress", RX_DATA, RX_PACKETS), ("egress", TX_DATA, TX_PACKETS)):
        if data in tot:
            out.append(_s("xtrace_rdma_port_bytes_total", "counter",
                          "Bytes the RDMA port counted (port_*_data x4) since the agent started.",
                          L(direction=direction), tot[data] * DATA_WORD))
        if pkts in tot:
            out.append(_s("xtrace_rdma_port_packets_total", "counter",
                          "Packets the RDMA port counted since the agent started.", L(direction=direction), tot[pkts]))
    for name in sorted(tot):
        if name not in TRAFFIC_COUNTERS:
            out.append(_s("xtrace_rdma_port_counter_total", "counter",
                          "An RDMA port counter (ports/N/counters), summed since the agent started.",
                          L(counter=name), tot[name]))
    if d.hw is not None:
        for name in sorted(d.hw.totals):
            out.append(_s("xtrace_rdma_hw_counter_total", "counter",
                          "An RDMA port hw_counter (ports/N/hw_counters), summed since the agent started.",
                          L(counter=name), d.hw.totals[name]))
    for direction, bps, pps, util in (("ingress", d.rx_bps, d.rx_pps, d.rx_utilization),
                                      ("egress", d.tx_bps, d.tx_pps, d.tx_utilization)):
        if bps is not None:
            out.append(_s("xtrace_rdma_port_rate_bits_per_second", "gauge",
                          "Bit rate of the RDMA port in the last interval.", L(direction=direction), bps))
        if pps is not None:
            out.append(_s("xtrace_rdma_port_packet_rate_per_second", "gauge",
                          "Packet rate of the RDMA port in the last interval.", L(direction=direction), pps))
        if util is not None:
            out.append(_s("xtrace_rdma_port_utilization_ratio", "gauge",
                          "Bit rate over the port rate in the last interval (per direction, 0..1).",
                          L(direction=direction), util))
    if i.rate_gbps is not None:
        out.append(_s("xtrace_rdma_port_link_rate_bits_per_second", "gauge",
                      "Nominal rate of the RDMA port (ports/N/rate).", L(), i.rate_gbps * 1e9))
    out.append(_s("xtrace_rdma_port_state", "gauge", "1 if the RDMA port is ACTIVE, else 0.", L(),
                  1 if i.active else 0))
    out.append(_s("xtrace_rdma_counter_resets_total", "counter",
                  "Counter resets handled on the RDMA port since the agent started.", L(), d.resets_total))
    return out


def interval_metrics(iv: RdmaInterval, extra: Mapping[str, str]) -> list[Sample]:
    """Every ``xtrace_rdma_`` sample of an interval: :func:`port_metrics` for each port, and in nccl mode
    the device-level hw_counters once per device as
    ``xtrace_rdma_device_hw_counter_total{device,counter}``."""
    out: list[Sample] = []
    seen: set[str] = set()
    for d in iv.ports:
        out += port_metrics(d, extra)
        dev = d.info.device
        if d.device_hw is not None and dev not in seen:
            seen.add(dev)
            for name in sorted(d.device_hw.totals):
                out.append(_s("xtrace_rdma_device_hw_counter_total", "counter",
                              "A device-level RDMA hw_counter, summed since the agent started.",
                              {"device": dev, "counter": name, **extra}, d.device_hw.totals[name]))
    return out
