"""Validated settings for a run. Every check happens here, before any syscall."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from .errors import UsageError
from .kernel.layout import DEFAULT_FLOWS, MAX_FLOWS, Direction, Filter

__all__ = ["Mode", "Output", "DirectionChoice", "XdpMode", "Settings", "ExportSettings", "Credentials", "parse_bool",
           "check_interface_name", "INTERVAL_MIN_MS", "INTERVAL_MAX_MS", "MAX_FLOWS_MIN", "DEFAULT_VM_URL"]

INTERVAL_MIN_MS = 100
INTERVAL_MAX_MS = 3_600_000
MAX_FLOWS_MIN = 1024  # --max-flows: a smaller map fills at once; the top is what the kernel map may hold
# The kernel's rule for a device name (dev_valid_name): 1..IFNAMSIZ-1 bytes, not "." or "..",
# no '/', ':' (alias labels are not devices) or whitespace.
IFNAMSIZ = 16
_IFNAME = re.compile(r"^[^/\s:]+$")


def check_interface_name(name: str) -> str:
    """The one interface-name rule (options, environment, cleanup, lookups); UsageError otherwise."""
    if not name or len(name.encode()) >= IFNAMSIZ or name in (".", "..") or not _IFNAME.match(name):
        raise UsageError(f"invalid interface name {name!r}: 1-{IFNAMSIZ - 1} characters without '/', ':' or "
                         "spaces; see 'xtrace-catch -l'")
    return name


class Mode(str, enum.Enum):
    """-m: count flows at XDP or TC, or read the RDMA NIC's port counters (rdma) and hw_counters (nccl)."""

    XDP = "xdp"
    TC = "tc"
    RDMA = "rdma"
    NCCL = "nccl"


class Output(str, enum.Enum):
    """--output: the text or JSON lines contract (DESIGN.md), or the live table (a terminal only)."""

    TEXT = "text"
    JSON = "json"
    TABLE = "table"


class XdpMode(str, enum.Enum):
    """--xdp-mode: native (driver) XDP, generic (SKB) XDP, or native falling back to generic."""

    AUTO = "auto"
    NATIVE = "native"
    GENERIC = "generic"


class DirectionChoice(str, enum.Enum):
    """-d in the flow modes: which TC hooks to attach (XDP sees ingress only)."""

    INGRESS = "ingress"
    EGRESS = "egress"
    BOTH = "both"

    @property
    def directions(self) -> tuple[Direction, ...]:
        return {"ingress": (Direction.INGRESS,), "egress": (Direction.EGRESS,),
                "both": (Direction.INGRESS, Direction.EGRESS)}[self.value]


def _choice(enum_cls: type[enum.Enum], value: str, what: str) -> enum.Enum:
    try:
        return enum_cls(value.strip().lower())
    except ValueError:
        allowed = ", ".join(m.value for m in enum_cls)  # type: ignore[attr-defined]
        raise UsageError(f"unknown {what} {value!r}; choose one of: {allowed}") from None


DEFAULT_VM_URL = "http://localhost:8428/api/v1/import/prometheus"


def parse_bool(value: str, what: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"{what}={value!r} is not a boolean; use true or false")


@dataclass(frozen=True)
class Credentials:
    """Basic auth or a bearer token for pushing. repr() never shows secrets."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)

    @staticmethod
    def read_secret(path: str, what: str) -> str:
        try:
            with open(path) as fh:
                return fh.read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read {what} file {path!r}: {exc.strerror}; check the path and permissions") from None

    @classmethod
    def from_sources(cls, env: dict[str, str], username: str | None, password_file: str | None,
                     token_file: str | None) -> Credentials | None:
        """Options first, then VM_USERNAME / VM_PASSWORD(_FILE) / VM_BEARER_TOKEN(_FILE)."""
        token = None
        tf = token_file or env.get("VM_BEARER_TOKEN_FILE")
        if tf:
            token = cls.read_secret(tf, "bearer token")
        elif env.get("VM_BEARER_TOKEN"):
            token = env["VM_BEARER_TOKEN"]
        user = username or env.get("VM_USERNAME")
        password = None
        pf = password_file or env.get("VM_PASSWORD_FILE")
        if pf:
            password = cls.read_secret(pf, "password")
        elif env.get("VM_PASSWORD"):
            password = env["VM_PASSWORD"]
        if password is not None and user is None:
            raise UsageError("a VictoriaMetrics password was given without a user name; set --vm-username or VM_USERNAME")
        if token and user:
            raise UsageError("give either basic auth (VM_USERNAME) or a bearer token, not both")
        if token is None and user is None:
            return None
        return cls(username=user, password=password, bearer_token=token)


@dataclass(frozen=True)
class ExportSettings:
    """Where metrics go (push, pull) and how many series they may make."""

    vm_enabled: bool = False
    vm_url: str = field(default=DEFAULT_VM_URL, repr=False)  # may hold user:password@
    collect_agg: str = "default"
    credentials: Credentials | None = None
    insecure: bool = False
    push_buffer_samples: int = 3_000_000
    push_timeout_s: float = 10.0
    max_series: int | None = None
    drop_ephemeral_ports: bool = False
    metrics_addr: tuple[str, int] | None = None

    @property
    def any(self) -> bool:
        return self.vm_enabled or self.metrics_addr is not None


@dataclass(frozen=True)
class Settings:
    interface: str = "eth0"
    mode: Mode = Mode.XDP
    direction: DirectionChoice = DirectionChoice.INGRESS
    filter: Filter = Filter.ALL
    interval_ms: int = 5000
    exclude_dns: bool = False
    dns_servers: tuple[str, ...] = field(default_factory=tuple)
    output: Output = Output.TEXT
    count: int | None = None
    verbose: bool = False
    xdp_mode: XdpMode = XdpMode.AUTO
    idle_timeout_s: float = 60.0
    max_flows: int = DEFAULT_FLOWS
    device: str | None = None
    sysfs_root: str = "/sys"
    rdma_device: str | None = None  # the unified RoCE view's device in xdp/tc modes
    interface_given: bool = True  # -i or NETWORK_INTERFACE named it (the counter modes then check it)
    export: ExportSettings = field(default_factory=ExportSettings)

    @classmethod
    def from_options(cls, *, interface: str, mode: str, direction: str | None, filter_: str, interval: str,
                     exclude_dns: bool, dns_servers: list[str], output: str, count: int | None, verbose: bool,
                     xdp_mode: str | XdpMode, idle_timeout: float, max_flows: int, device: str | None,
                     export: ExportSettings | None = None, sysfs_root: str = "/sys",
                     rdma_device: str | None = None, interface_given: bool = True) -> Settings:
        """Validate raw option strings; UsageError names the bad value and the fix."""
        m = _choice(Mode, mode, "mode")
        assert isinstance(m, Mode)
        dev = device
        if m in (Mode.RDMA, Mode.NCCL):
            # The older README writes the RDMA device as -d in these modes.
            if direction and direction.lower() not in ("ingress", "egress", "both"):
                if dev and dev != direction:
                    raise UsageError(f"-d {direction} and --device {dev} name two RDMA devices; give one "
                                     f"(-m {m.value} reads one device, or all without either)")
                dev = dev or direction
            d = DirectionChoice.INGRESS
        else:
            dchoice = _choice(DirectionChoice, direction or "ingress", "direction")
            assert isinstance(dchoice, DirectionChoice)
            d = dchoice
            if m is Mode.XDP and d is not DirectionChoice.INGRESS:
                raise UsageError(f"XDP sees ingress only, not {d.value}: use -m tc -d {d.value}")
        try:
            f = Filter.parse(filter_)
        except ValueError:
            raise UsageError(
                f"unknown filter {filter_!r}; choose one of: " + ", ".join(x.name.lower() for x in Filter)
            ) from None
        try:
            ivl = int(str(interval).strip())
        except ValueError:
            try:
                float(str(interval))
                what = "must be a whole number of milliseconds"
            except ValueError:
                what = "is not a number of milliseconds"
            raise UsageError(f"interval {interval!r} {what}; give {INTERVAL_MIN_MS}..{INTERVAL_MAX_MS}") from None
        if not INTERVAL_MIN_MS <= ivl <= INTERVAL_MAX_MS:
            raise UsageError(f"interval {ivl} ms out of range; give {INTERVAL_MIN_MS}..{INTERVAL_MAX_MS} ms")
        check_interface_name(interface)
        out = _choice(Output, output, "output")
        assert isinstance(out, Output)
        if count is not None and count < 1:
            raise UsageError(f"--count {count}: give a number of intervals >= 1")
        xm = _choice(XdpMode, xdp_mode, "--xdp-mode")
        assert isinstance(xm, XdpMode)
        if m in (Mode.RDMA, Mode.NCCL) and out is Output.TABLE:
            raise UsageError(f"--output table shows flows (-m xdp/tc); -m {m.value} writes text or json")
        if m in (Mode.RDMA, Mode.NCCL) and (exclude_dns or f is not Filter.ALL):
            raise UsageError(f"-f/--exclude-dns filter packets; -m {m.value} reads NIC counters: use -m xdp or -m tc")
        if not sysfs_root.strip():
            raise UsageError("--sysfs-root must not be empty; the default is /sys (a container mounts the host's at /host/sys)")
        if m in (Mode.RDMA, Mode.NCCL) and rdma_device is not None:
            raise UsageError(f"--rdma-device compares flows with a NIC in -m xdp/tc; -m {m.value} names its device "
                             "with --device")
        if m is not Mode.XDP and xm is not XdpMode.AUTO:
            raise UsageError("--xdp-mode applies to -m xdp only")
        if idle_timeout <= 0:
            raise UsageError(f"--idle-timeout {idle_timeout}: give seconds > 0")
        if not MAX_FLOWS_MIN <= max_flows <= MAX_FLOWS:
            raise UsageError(f"--max-flows {max_flows} out of range; give {MAX_FLOWS_MIN}..{MAX_FLOWS}")
        from .kernel.datapath import addr16  # validates addresses
        for s in dns_servers:
            addr16(s)
        return cls(interface=interface, mode=m, direction=d, filter=f, interval_ms=ivl, exclude_dns=exclude_dns,
                   dns_servers=tuple(dns_servers), output=out, count=count, verbose=verbose, xdp_mode=xm,
                   idle_timeout_s=idle_timeout, max_flows=max_flows, device=dev, export=export or ExportSettings(),
                   sysfs_root=sysfs_root, rdma_device=rdma_device, interface_given=interface_given)
