"""The xtrace datapath: our object configured, loaded, and its maps decoded.

Opening checks the object's BTF against :mod:`xtrace_catch.kernel.layout` (a stale object fails
loudly); tunables go into .rodata and the flow map is sized before load.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from ..errors import LibbpfError, LoadError, ObjectError, UsageError
from . import libbpf
from .btf import Btf
from .layout import (
    DEFAULT_FLOWS,
    DNS_SERVERS_MAX,
    FLOW_KEY,
    FLOW_VALUE,
    MAX_FLOWS,
    RODATA_VARS,
    STATS,
    TYPE_SLOTS,
    VALUE_FIELDS,
    Direction,
    Filter,
    LinkType,
    check_layout,
)
from .object import BpfObject

__all__ = [
    "OBJECT_PATH",
    "PROG_XDP",
    "PROG_XDP_FRAGS",
    "xdp_program",
    "PROG_TC_INGRESS",
    "PROG_TC_EGRESS",
    "ALL_PROGRAMS",
    "DatapathConfig",
    "Datapath",
    "addr16",
    "default_dns_servers",
    "PUBLIC_DNS_SERVERS",
    "PUBLIC_RESOLVERS",
]

log = logging.getLogger(__name__)

OBJECT_PATH = Path(__file__).resolve().parent.parent / "bpf" / "xtrace.bpf.o"
PROG_XDP = "xtrace_xdp"
PROG_XDP_FRAGS = "xtrace_xdp_frags"  # PROG_XDP's multi-buffer variant, loaded in its place where the kernel can
PROG_TC_INGRESS = "xtrace_tc_ingress"
PROG_TC_EGRESS = "xtrace_tc_egress"
TC_PROGS = {Direction.INGRESS: PROG_TC_INGRESS, Direction.EGRESS: PROG_TC_EGRESS}
ALL_PROGRAMS = frozenset({PROG_XDP, PROG_TC_INGRESS, PROG_TC_EGRESS})  # the hook programs
PROG_READ_FLOWS = "xtrace_read_flows"  # the flow map's iterator, always loaded
_OPTIONAL = (PROG_XDP_FRAGS, PROG_READ_FLOWS)  # loaded where this kernel takes them (probed once each)

# Public resolvers, by provider, as each publishes them; the host's resolv.conf nameservers
# are added to these for --exclude-dns. Only matched against, never contacted.
PUBLIC_RESOLVERS: dict[str, tuple[str, ...]] = {
    "Google Public DNS": ("8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844"),
    "Cloudflare": ("1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001"),
    "Quad9": ("9.9.9.9", "149.112.112.112", "2620:fe::fe", "2620:fe::9"),
    "OpenDNS": ("208.67.222.222", "208.67.220.220"),
    "AliDNS": ("223.5.5.5", "223.6.6.6", "2400:3200::1", "2400:3200:baba::1"),
    "114DNS": ("114.114.114.114", "114.114.115.115"),  # publishes no IPv6 address
    "DNSPod": ("119.29.29.29", "2402:4e00::"),
}
PUBLIC_DNS_SERVERS = tuple(a for addrs in PUBLIC_RESOLVERS.values() for a in addrs)


def addr16(text: str) -> bytes:
    """An address as the datapath keys it: IPv6 as is, IPv4 v4-mapped."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise UsageError(f"not an IP address: {text!r}; give an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed).packed
    return ip.packed


def default_dns_servers(resolv_conf: str | Path = "/etc/resolv.conf") -> list[str]:
    """PUBLIC_DNS_SERVERS plus the nameservers of resolv.conf (when readable)."""
    out = list(PUBLIC_DNS_SERVERS)
    try:
        for line in Path(resolv_conf).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                addr = parts[1].split("%", 1)[0]  # drop an IPv6 zone
                try:
                    ipaddress.ip_address(addr)
                except ValueError:
                    continue
                if addr not in out:
                    out.append(addr)
    except OSError:
        pass
    return out


@dataclass(frozen=True)
class FlowMapInfo:
    """What the summary record and /metrics say of the kernel flow map."""

    capacity: int
    memory_bytes: int = 0  # kernel memory (BpfMap.kernel_memory); 0 when unknown
    reads: str = ""  # "iterator" (the map iterator) or "batch" (batch lookups)


@dataclass(frozen=True)
class DatapathConfig:
    """What the programs are told before load."""

    filter: Filter = Filter.ALL
    exclude_dns: bool = False
    link_type: LinkType = LinkType.ETHERNET
    max_flows: int = DEFAULT_FLOWS
    programs: frozenset[str] = field(default_factory=lambda: ALL_PROGRAMS)

    def __post_init__(self) -> None:
        # Not an option check (settings.py has the user's range): the kernel map's own bounds.
        if not 1 <= self.max_flows <= MAX_FLOWS:
            raise ValueError(f"flow map size {self.max_flows} out of range 1..{MAX_FLOWS}")
        unknown = set(self.programs) - ALL_PROGRAMS
        if unknown:
            raise UsageError(f"unknown program(s) {sorted(unknown)}; known: {sorted(ALL_PROGRAMS)}")


class Datapath:
    """Our loaded object. Context manager; :meth:`close` is idempotent.

    Requires Linux >= 5.8 with BTF, root or CAP_BPF + CAP_PERFMON; raises
    ObjectError (stale/missing object), LoadError (kernel refused it), LibbpfError.
    """

    def __init__(self, config: DatapathConfig | None = None, object_path: str | Path | None = None) -> None:
        self.config = config or DatapathConfig()
        path = Path(object_path) if object_path else OBJECT_PATH
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ObjectError(
                f"cannot read BPF object {path}: {exc.strerror}; reinstall xtrace-catch or run 'make bpf'"
            ) from exc
        btf = Btf.from_elf(data)
        check_layout(btf)
        self._rodata = btf.datasec(".rodata")
        self.obj = BpfObject(data, str(path))
        self._iter_link: int | None = None
        try:
            use_iter = _loads(data, str(path), PROG_READ_FLOWS)
            # XDP: the multi-buffer variant (attaches natively at any MTU) where the kernel has it.
            self.xdp_frags, self.xdp_variant = (_xdp_choice(data, str(path)) if PROG_XDP in self.config.programs
                                                else (False, ""))
            self._configure()
            self.obj.set_autoload(PROG_READ_FLOWS, use_iter)
            if self.xdp_frags:
                self.obj.set_autoload(PROG_XDP, False)
                self.obj.set_autoload(PROG_XDP_FRAGS, True)
            self.obj.load()
            self.flows = self.obj.map("flows", key_dtype=FLOW_KEY, value_dtype=FLOW_VALUE)
            self.flow_reads = "batch"
            if use_iter:
                self._link_iterator()
            self.overflow = self.obj.map("overflow", value_dtype=FLOW_VALUE)
            self.stats = self.obj.map("stats", value_dtype=STATS)
            self.dns_servers = self.obj.map("dns_servers")
        except BaseException:
            self.close()
            raise

    def _link_iterator(self) -> None:
        """Every interval's read goes through the map iterator: no counter torn (maps.IterReader)."""
        try:
            self._iter_link = libbpf.get().map_iter_link(self.obj.prog_fd(PROG_READ_FLOWS), self.flows.fd)
        except LibbpfError as exc:
            log.info("the kernel refused to link the flow-map iterator (%s): reading with batch lookups", exc)
            return
        self.flows.iter_link_fd = self._iter_link
        self.flow_reads = "iterator"

    def _configure(self) -> None:
        c = self.config
        values = {"cfg_filter": int(c.filter), "cfg_exclude_dns": int(c.exclude_dns), "cfg_link_type": int(c.link_type)}
        self.obj.write_rodata({
            self._rodata[name].offset: value.to_bytes(RODATA_VARS[name], "little") for name, value in values.items()
        })
        self.obj.set_max_entries("flows", c.max_flows)
        for prog in ALL_PROGRAMS:
            self.obj.set_autoload(prog, prog in c.programs)
        self.obj.set_autoload(PROG_XDP_FRAGS, False)

    # -- programs ------------------------------------------------------------

    def prog_fd(self, name: str) -> int:
        """A hook program's fd by its name; PROG_XDP gives whichever XDP variant is loaded."""
        return self.obj.prog_fd(PROG_XDP_FRAGS if name == PROG_XDP and self.xdp_frags else name)

    # -- maps ------------------------------------------------------------------

    def flow_map_info(self) -> FlowMapInfo:
        return FlowMapInfo(capacity=self.flows.info.max_entries, memory_bytes=self.flows.kernel_memory(),
                           reads=self.flow_reads)

    def set_dns_servers(self, addrs: Iterable[str]) -> list[str]:
        """Fill the DNS-server map (replacing nothing: call once after load). Returns what went in."""
        added: list[str] = []
        for a in addrs:
            if len(added) >= DNS_SERVERS_MAX:
                log.warning("more than %d DNS servers; ignoring %s and the rest", DNS_SERVERS_MAX, a)
                break
            self.dns_servers.update(addr16(a), b"\x01")
            added.append(a)
        return added

    def read_stats(self) -> np.void:
        """Packet accounting summed over CPUs (a STATS record)."""
        raw = self.stats.lookup(b"\0\0\0\0")
        assert raw is not None  # array index 0 always exists
        return _sum_cpus(raw.reshape(1, -1), STATS)[0]

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        """(FLOW_KEY records, FLOW_VALUE records summed over CPUs), one row per flow in the kernel map.

        The agent's one read path: the map's counter reader (the map iterator where the kernel
        loads it, else batch lookups, else per-key reads). Both arrays are views into the reader's
        buffers, valid until the next read."""
        keys, sums = self.flows.counter_reader(len(VALUE_FIELDS)).read()
        return keys.view(FLOW_KEY).reshape(-1), np.ascontiguousarray(sums).view(FLOW_VALUE).reshape(-1)

    def take_flow(self, key: bytes) -> np.ndarray | None:
        """Atomically read and delete one flow; its counters summed over CPUs as (12,) uint64."""
        raw = self.flows.take(key)
        if raw is None:
            return None
        return _sum_cpus(raw.reshape(1, -1), FLOW_VALUE).view("<u8").reshape(-1)

    def read_overflow(self) -> np.ndarray:
        """The overflow table summed over CPUs: shape (2 directions, TYPE_SLOTS types)."""
        rows = []
        for i in range(2 * TYPE_SLOTS):
            raw = self.overflow.lookup(i.to_bytes(4, "little"))
            assert raw is not None
            rows.append(raw)
        return _sum_cpus(np.stack(rows), FLOW_VALUE).reshape(2, TYPE_SLOTS)

    def close(self) -> None:
        link, self._iter_link = getattr(self, "_iter_link", None), None
        if link is not None:
            os.close(link)
        self.obj.close()

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _loads(data: bytes, name: str, prog: str) -> bool:
    """Whether this kernel loads `prog`, one of _OPTIONAL, tried once per process, alone, with a
    one-entry flow map.

    xtrace_read_flows is a tracing program (Linux >= 5.9, and no LSM policy refusing tracing
    programs, as on the Firecracker kernels we develop on: EPERM); without it reads are batch
    lookups, whose memcpy can tear a counter another CPU is adding to (rare; seen on 6.1 under
    TCG). xtrace_xdp_frags needs BPF_F_XDP_HAS_FRAGS and bpf_xdp_get_buff_len (Linux >= 5.18);
    without it XDP runs the single-buffer program, which drivers refuse natively at jumbo MTU."""
    if prog not in _PROBED:
        quiet = logging.getLogger("xtrace_catch.libbpf")  # a refusal here is handled, not news
        level = quiet.level
        quiet.setLevel(max(level, logging.ERROR))
        with BpfObject(data, f"{name} ({prog} probe)") as probe:
            for other in (*ALL_PROGRAMS, *_OPTIONAL):
                probe.set_autoload(other, other == prog)
            probe.set_max_entries("flows", 1)
            try:
                probe.load()
                _PROBED[prog] = True
            except LoadError as exc:
                log.info("the kernel refused %s (%s): %s", prog, str(exc).split(";")[0],
                         _WITHOUT[prog])
                _PROBED[prog] = False
            finally:
                quiet.setLevel(level)
    return _PROBED[prog]


def _frags_wanted() -> bool:
    """XTRACE_XDP_FRAGS=off keeps the single-buffer XDP program even where the kernel has
    xdp.frags (a driver that mishandles multi-buffer programs); auto (the default) uses it."""
    v = os.environ.get("XTRACE_XDP_FRAGS", "auto").strip().lower() or "auto"
    if v not in ("auto", "off"):
        raise UsageError(f"XTRACE_XDP_FRAGS={v!r} is not one of auto, off")
    return v == "auto"


def _xdp_choice(data: bytes, name: str) -> tuple[bool, str]:
    """Whether XDP runs the multi-buffer program, and the choice and its reason in words."""
    if not _frags_wanted():
        return False, "single-buffer (xdp; XTRACE_XDP_FRAGS=off)"
    if _loads(data, name, PROG_XDP_FRAGS):
        return True, "multi-buffer (xdp.frags)"
    return False, "single-buffer (xdp; this kernel refused xdp.frags)"


def xdp_program(object_path: str | Path | None = None) -> tuple[bool, str]:
    """The XDP program Datapath loads on this kernel: (multi-buffer?, in words)."""
    path = Path(object_path) if object_path else OBJECT_PATH
    return _xdp_choice(path.read_bytes(), str(path))


_PROBED: dict[str, bool] = {}
_WITHOUT = {
    PROG_READ_FLOWS: "reading with batch lookups, whose copy can tear a counter being added to",
    PROG_XDP_FRAGS: "XDP runs the single-buffer program (refused natively above about a page of MTU)",
}


def _sum_cpus(vals: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Sum a (n, ncpus) array of per-CPU records into n records of `dtype`, vectorised."""
    n = vals.shape[0]
    names = dtype.names or ()
    # View each CPU slot as its leading u64 fields (every counter struct is all u64).
    width = len(names)
    slot = vals.dtype.itemsize
    raw = np.ascontiguousarray(vals).view(np.uint8).reshape(n, vals.shape[1], slot)
    u64 = raw[:, :, : width * 8].copy().view("<u8").reshape(n, vals.shape[1], width)
    summed = u64.sum(axis=1, dtype=np.uint64)
    return summed.view(dtype).reshape(n)
