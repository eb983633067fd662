"""Writes tests/data/sysfs/roce/sys: a synthetic sysfs of a RoCE host, written for this project.

Run from anywhere: ``python tests/data/sysfs/make_roce.py`` (it replaces roce/). The layout follows
real Linux sysfs: class/infiniband/<dev> and class/net/<if> are symlinks into devices/, a netdev's
``device`` link points at its PCI function, whose infiniband/ dir names the RDMA device; the PCI
function's ``driver`` link names the driver. Counter names are those of the kernel's mlx5/mlx4
drivers (COUNTER_SEMANTICS.md); the values are made up.

    mlx5_0  ConnectX-5, RoCE, port 1 ACTIVE 100 Gb/s  <- eth2 (up);   counters/ + hw_counters/ with np_*/rp_*
    mlx5_1  ConnectX-5, RoCE, port 1 DOWN             <- eth3 (down); no cc counters; device-level hw_counters
    mlx4_0  ConnectX-3, RoCE, ports 1 and 2           <- eth4 (dev_port 0), eth5 (dev_port 1); no hw_counters
    eth0    a plain NIC (no infiniband/), lo (virtual)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE / "roce" / "sys"
PCI = "devices/pci0000:00"

PMA = {
    "VL15_dropped": 0, "excessive_buffer_overrun_errors": 0, "link_downed": 0, "link_error_recovery": 0,
    "local_link_integrity_errors": 0, "multicast_rcv_packets": 1200, "multicast_xmit_packets": 800,
    "port_rcv_constraint_errors": 0, "port_rcv_data": 250_000_000_000, "port_rcv_errors": 0,
    "port_rcv_packets": 260_000_000, "port_rcv_remote_physical_errors": 0, "port_rcv_switch_relay_errors": 0,
    "port_xmit_constraint_errors": 0, "port_xmit_data": 180_000_000_000, "port_xmit_discards": 2,
    "port_xmit_packets": 190_000_000, "port_xmit_wait": 5000, "symbol_error": 0,
    "unicast_rcv_packets": 259_998_800, "unicast_xmit_packets": 189_999_200,
}
Q_COUNTERS = {
    "duplicate_request": 41, "implied_nak_seq_err": 0, "local_ack_timeout_err": 131, "out_of_buffer": 0,
    "out_of_sequence": 1, "packet_seq_err": 1, "req_cqe_error": 3481, "req_cqe_flush_error": 80,
    "req_remote_access_errors": 0, "req_remote_invalid_request": 0, "resp_cqe_error": 8109,
    "resp_cqe_flush_error": 4708, "resp_local_length_error": 0, "resp_remote_access_errors": 0,
    "rnr_nak_retry_err": 0, "roce_adp_retrans": 99, "roce_adp_retrans_to": 4, "roce_slow_restart": 0,
    "roce_slow_restart_cnps": 131, "roce_slow_restart_trans": 0, "rx_atomic_requests": 0, "rx_dct_connect": 0,
    "rx_read_requests": 175_528_982, "rx_write_requests": 742_114, "req_transport_retries_exceeded": 0,
    "req_rnr_retries_exceeded": 0,
}
CC_COUNTERS = {"np_cnp_sent": 5000, "np_ecn_marked_roce_packets": 5100, "rp_cnp_handled": 4000,
               "rp_cnp_ignored": 0, "rx_icrc_encapsulated": 0}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def pci_function(bdf: str, driver: str) -> Path:
    d = ROOT / PCI / bdf
    (ROOT / "bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
    if not (d / "driver").is_symlink():
        link(d / "driver", f"../../../bus/pci/drivers/{driver}")
    return d


def ib_device(bdf: str, driver: str, name: str, hca: str, ports: dict[int, dict[str, object]],
              device_hw: dict[str, int] | None = None) -> None:
    fn = pci_function(bdf, driver)
    d = fn / "infiniband" / name
    write(d / "hca_type", hca)
    write(d / "fw_ver", "16.35.2000")
    write(d / "board_id", "MT_0000000008")
    write(d / "node_type", "1: CA")
    link(d / "device", f"../../../{bdf}")
    link(ROOT / "class/infiniband" / name, f"../../{PCI}/{bdf}/infiniband/{name}")
    if device_hw is not None:
        for k, v in device_hw.items():
            write(d / "hw_counters" / k, str(v))
    for n, spec in ports.items():
        p = d / "ports" / str(n)
        for attr in ("state", "phys_state", "rate", "link_layer"):
            write(p / attr, str(spec[attr]))
        for group in ("counters", "hw_counters"):
            for k, v in dict(spec.get(group, {})).items():  # type: ignore[call-overload]
                write(p / group / k, str(v))


def netdev(bdf: str | None, name: str, dev_port: int, up: bool) -> None:
    base = f"{PCI}/{bdf}" if bdf else "devices/virtual"
    nd = ROOT / base / "net" / name
    write(nd / "operstate", "up" if up else "down")
    write(nd / "dev_port", str(dev_port))
    if bdf:
        link(nd / "device", f"../../../{bdf}")
    link(ROOT / "class/net" / name, f"../../{base}/net/{name}")


def main() -> None:
    if ROOT.parent.exists():
        shutil.rmtree(ROOT.parent)
    eth = {"link_layer": "Ethernet", "phys_state": "5: LinkUp", "state": "4: ACTIVE"}
    ib_device("0000:3b:00.0", "mlx5_core", "mlx5_0", "MT4119", {
        1: {**eth, "rate": "100 Gb/sec (4X EDR)", "counters": PMA,
            "hw_counters": {"lifespan": 10, **Q_COUNTERS, **CC_COUNTERS}},
    })
    ib_device("0000:3b:00.1", "mlx5_core", "mlx5_1", "MT4119", {
        1: {"link_layer": "Ethernet", "phys_state": "3: Disabled", "state": "1: DOWN", "rate": "40 Gb/sec (4X QDR)",
            "counters": {k: 0 for k in PMA}, "hw_counters": {"lifespan": 10, **{k: 0 for k in Q_COUNTERS}}},
    }, device_hw={"lifespan": 20, "out_of_buffer": 7, "rx_write_requests": 100})
    small = {"port_rcv_data": 1000, "port_xmit_data": 2000, "port_rcv_packets": 10, "port_xmit_packets": 20,
             "symbol_error": 0, "port_rcv_errors": 0}
    ib_device("0000:5e:00.0", "mlx4_core", "mlx4_0", "MT4099", {
        1: {**eth, "rate": "40 Gb/sec (4X QDR)", "counters": small},
        2: {**eth, "rate": "40 Gb/sec (4X QDR)", "counters": small},
    })
    pci_function("0000:00:1f.6", "e1000e")
    netdev("0000:00:1f.6", "eth0", 0, True)
    netdev("0000:3b:00.0", "eth2", 0, True)
    netdev("0000:3b:00.1", "eth3", 0, False)
    netdev("0000:5e:00.0", "eth4", 0, True)
    netdev("0000:5e:00.0", "eth5", 1, True)
    netdev(None, "lo", 0, True)


if __name__ == "__main__":
    main()
