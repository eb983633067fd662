"""The file I/O: every interval, read each port (and device) once, diff against the last reading, keep totals."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .counters import (
    DEFAULT_ROOT,
    LIFESPAN,
    CounterDiff,
    Reading,
    Source,
    counter_bits,
    diff_readings,
    ext_counter_name,
    parse_counter,
    parse_rate,
    parse_state,
)
from .devices import check_root, ib_dir, list_devices, netdev_links, read_attr
from .records import PortDelta, PortInfo, PortSample, RdmaInterval

__all__ = [
    "NicBytes", "nic_bytes", "RdmaReader",
]

log = logging.getLogger(__name__)


class _Gone(Exception):
    """The device vanished while being read."""


def _family(ddir: Path, name: str) -> str:
    """Driver family: from the ``device/driver`` link (``mlx5_core`` -> ``mlx5``), else the name."""
    try:
        drv = os.path.basename(os.readlink(ddir / "device" / "driver"))
    except OSError:
        drv = name
    m = re.match(r"([a-z]+\d*)", drv)
    return m.group(1) if m else drv


@dataclass(frozen=True)
class NicBytes:
    """Bytes an RDMA port counted, cumulative as the NIC keeps them (x4 applied); None if unreadable."""

    device: str
    port: int
    rx_bytes: int | None
    tx_bytes: int | None


class RdmaReader:
    """Reads the counters of the selected RDMA devices and turns consecutive reads into intervals.

    ``devices=None`` follows every device, including ones that appear later. A device that
    disappears is warned about once and skipped; when it returns it is read again, against its
    last reading (a counter that went back counts as a reset). Unreadable or garbage files are
    skipped with one warning per file. ``clock`` (monotonic seconds, for rates) and ``wall``
    (epoch seconds, for ``time``) are injectable. No root needed.

    Raises UsageError if ``root`` does not exist.
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, devices: Sequence[str] | None = None, *,
                 nccl: bool = False, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.root = check_root(root)
        self.devices = tuple(devices) if devices is not None else None
        self.nccl = nccl
        self._clock = clock
        self._wall = wall
        self._ib = ib_dir(self.root)
        self._warned: set[str] = set()
        self._seen: set[str] = set()
        self._gone: set[str] = set()
        self._last: dict[tuple[str, int], PortSample] = {}
        self._last_dev: dict[str, dict[str, Reading]] = {}
        self._totals: dict[tuple[str, int], tuple[dict[str, int], dict[str, int]]] = {}
        self._dev_totals: dict[str, dict[str, int]] = {}
        self._resets: dict[tuple[str, int], int] = {}
        self._links: dict[tuple[str, int], str] | None = None
        self._present: frozenset[str] = frozenset()
        self._lifespans: dict[str, int] = {}
        self._seq = 0

    # -- public

    @property
    def lifespans(self) -> dict[str, int]:
        """hw_counters lifespan (ms) by ``dev/port`` or ``dev`` (device level), from the latest read."""
        return dict(self._lifespans)

    @property
    def max_lifespan_ms(self) -> int | None:
        """The longest hw_counters lifespan in the latest read (nccl mode), else None. Reading faster
        than this returns cached values: refuse such an interval (:func:`check_interval`)."""
        return max(self._lifespans.values(), default=None)

    def snapshot(self) -> list[PortSample]:
        """Read every selected, present port now; devices missing are warned about (once)."""
        samples, _dev_hw, _missing = self._read_all()
        return samples

    def nic_bytes(self) -> dict[tuple[str, int], NicBytes]:
        """Cumulative rx/tx bytes each port's NIC counted, by (device, port)."""
        return {(s.info.device, s.info.port): NicBytes(s.info.device, s.info.port, s.rx_bytes, s.tx_bytes)
                for s in self.snapshot()}

    def poll(self) -> RdmaInterval:
        """Read all ports and return the interval since the previous poll. The first poll of a port
        is its baseline (in ``baseline``, no deltas); call poll() once at start, then every interval."""
        self._seq += 1
        now = self._wall()
        samples, dev_hw, missing = self._read_all()
        dev_diffs: dict[str, CounterDiff] = {}
        for dev, readings in dev_hw.items():
            old = self._last_dev.get(dev)
            if old is not None:
                diff = diff_readings(old, readings, self._dev_totals.get(dev))
                self._dev_totals[dev] = dict(diff.totals)
                dev_diffs[dev] = diff
            self._last_dev[dev] = {**(old or {}), **readings}
        ports: list[PortDelta] = []
        baseline: list[PortSample] = []
        for s in samples:
            key = (s.info.device, s.info.port)
            prev = self._last.get(key)
            if prev is None:
                baseline.append(s)
                self._last[key] = s
                continue
            ctot, htot = self._totals.get(key, ({}, {}))
            cdiff = diff_readings(prev.counters, s.counters, ctot)
            hdiff = diff_readings(prev.hw or {}, s.hw, htot) if s.hw is not None else None
            self._totals[key] = (dict(cdiff.totals), dict(hdiff.totals) if hdiff else htot)
            n_reset = len(cdiff.reset) + (len(hdiff.reset) if hdiff else 0)
            self._resets[key] = self._resets.get(key, 0) + n_reset
            for name in cdiff.wrapped + (hdiff.wrapped if hdiff else ()):
                log.debug("%s: %s wrapped", s.info.name, name)
            if n_reset:
                log.info("%s: counter reset: %s", s.info.name,
                         " ".join(cdiff.reset + (hdiff.reset if hdiff else ())))
            ports.append(PortDelta(info=s.info, time=now, elapsed=s.time - prev.time, counters=cdiff, hw=hdiff,
                                   device_hw=dev_diffs.get(s.info.device), resets_total=self._resets[key],
                                   lifespan_ms=s.lifespan_ms))
            # A counter unreadable this time keeps its last value, so it resumes without a jump.
            self._last[key] = PortSample(s.info, s.time, {**prev.counters, **s.counters},
                                         None if s.hw is None else {**(prev.hw or {}), **s.hw}, s.lifespan_ms)
        return RdmaInterval(seq=self._seq, time=now, ports=tuple(ports), baseline=tuple(baseline),
                            missing=tuple(missing))

    # -- reading

    def _targets(self) -> list[str]:
        if self.devices is not None:
            return list(self.devices)
        return sorted(set(list_devices(self.root)) | self._seen)

    def _read_all(self) -> tuple[list[PortSample], dict[str, dict[str, Reading]], list[str]]:
        samples: list[PortSample] = []
        dev_hw: dict[str, dict[str, Reading]] = {}
        missing: list[str] = []
        present: set[str] = set()
        lifespans: dict[str, int] = {}
        targets = self._targets()
        for dev in targets:
            if not (self._ib / dev).is_dir():
                missing.append(dev)
                continue
            present.add(dev)
        if frozenset(present) != self._present or self._links is None:
            links: dict[tuple[str, int], str] = {}
            for x in netdev_links(self.root):
                links.setdefault((x.device, x.port), x.netdev)  # e.g. ib0 before its child ib0.8001
            self._links = links
            self._present = frozenset(present)
        for dev in targets:
            if dev in present:
                try:
                    ports, hw, dev_life = self._read_device(dev)
                except _Gone:
                    missing.append(dev)
                    present.discard(dev)
                    continue
                samples += ports
                if hw is not None:
                    dev_hw[dev] = hw
                if dev_life is not None:
                    lifespans[dev] = dev_life
                for p in ports:
                    if p.lifespan_ms is not None:
                        lifespans[p.info.name] = p.lifespan_ms
        for dev in missing:
            if dev not in self._gone:
                self._gone.add(dev)
                if dev in self._seen:
                    log.warning("RDMA device %s disappeared; continuing with the others and reading it again "
                                "if it returns", dev)
                else:
                    log.warning("RDMA device %s not found under %s; reading it when it appears", dev, self._ib)
        for dev in present:
            if dev in self._gone:
                self._gone.discard(dev)
                if dev in self._seen:
                    log.warning("RDMA device %s is back", dev)
            self._seen.add(dev)
        self._lifespans = lifespans
        return samples, dev_hw, sorted(set(missing))

    def _read_device(self, dev: str) -> tuple[list[PortSample], dict[str, Reading] | None, int | None]:
        ddir = self._ib / dev
        family = _family(ddir, dev)
        try:
            node_type = parse_state(read_attr(ddir / "node_type"))[1]
        except OSError:
            node_type = ""
        dev_hw: dict[str, Reading] | None = None
        dev_life: int | None = None
        if self.nccl and (ddir / "hw_counters").is_dir():
            dev_hw, dev_life = self._read_hw(ddir, ddir / "hw_counters", family)
        try:
            port_dirs = sorted((p for p in (ddir / "ports").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        except FileNotFoundError:
            if not ddir.is_dir():
                raise _Gone from None
            port_dirs = []
        samples: list[PortSample] = []
        for pdir in port_dirs:
            samples.append(self._read_port(ddir, dev, int(pdir.name), pdir, family, node_type))
        return samples, dev_hw, dev_life

    def _read_port(self, ddir: Path, dev: str, port: int, pdir: Path, family: str, node_type: str) -> PortSample:
        bad: list[tuple[str, str]] = []
        text: dict[str, str] = {}
        for attr in ("state", "phys_state", "rate", "link_layer"):
            try:
                text[attr] = read_attr(pdir / attr)
            except OSError as e:
                self._gone_check(ddir)
                text[attr] = ""
                if not isinstance(e, FileNotFoundError):
                    bad.append((str(pdir / attr), e.strerror or type(e).__name__))
        sid, state = parse_state(text["state"])
        pid, phys = parse_state(text["phys_state"])
        info = PortInfo(device=dev, port=port, state=state, state_id=sid, phys_state=phys, phys_state_id=pid,
                        rate_gbps=parse_rate(text["rate"]), link_layer=text["link_layer"] or "UNKNOWN",
                        node_type=node_type, netdev=(self._links or {}).get((dev, port)))
        t = self._clock()
        counters = self._read_dir(ddir, pdir / "counters", Source.COUNTERS, family, bad)
        ext = self._read_dir(ddir, pdir / "counters_ext", Source.COUNTERS_EXT, family, bad)
        for name, r in ext.items():
            counters[ext_counter_name(name)] = r  # the 64-bit copy wins
        hw: dict[str, Reading] | None = None
        life: int | None = None
        if self.nccl:
            hw, life = self._read_hw(ddir, pdir / "hw_counters", family, bad)
        self._warn(bad)
        return PortSample(info, t, counters, hw, life)

    def _read_hw(self, ddir: Path, hdir: Path, family: str,
                 bad: list[tuple[str, str]] | None = None) -> tuple[dict[str, Reading], int | None]:
        own = bad is None
        bad = [] if bad is None else bad
        hw = self._read_dir(ddir, hdir, Source.HW_COUNTERS, family, bad, skip=(LIFESPAN,))
        life: int | None = None
        try:
            life = parse_counter(read_attr(hdir / LIFESPAN))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            bad.append((str(hdir / LIFESPAN), str(e)))
        if own:
            self._warn(bad)
        return hw, life

    def _read_dir(self, ddir: Path, cdir: Path, source: Source, family: str, bad: list[tuple[str, str]],
                  skip: tuple[str, ...] = ()) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        try:
            names = sorted(os.listdir(cdir))
        except FileNotFoundError:
            self._gone_check(ddir)
            return out
        except OSError as e:
            bad.append((str(cdir), e.strerror or str(e)))
            return out
        for name in names:
            if name in skip:
                continue
            path = cdir / name
            try:
                out[name] = Reading(parse_counter(read_attr(path)), counter_bits(source, name, family))
            except FileNotFoundError:
                self._gone_check(ddir)
            except IsADirectoryError:
                pass
            except OSError as e:
                bad.append((str(path), e.strerror or type(e).__name__))
            except ValueError as e:
                bad.append((str(path), str(e)))
        return out

    def _gone_check(self, ddir: Path) -> None:
        if not ddir.is_dir():
            raise _Gone

    def _warn(self, bad: list[tuple[str, str]]) -> None:
        new = [(p, why) for p, why in bad if p not in self._warned]
        if not new:
            return
        self._warned.update(p for p, _ in new)
        groups: dict[tuple[str, str], list[str]] = {}
        for p, why in new:
            d, _, name = p.rpartition("/")
            groups.setdefault((d, why), []).append(name)
        log.warning("RDMA: skipping unreadable counter files (each reported once): %s",
                    "; ".join(f"{d}/{{{','.join(names)}}}: {why}" for (d, why), names in groups.items()))


def nic_bytes(root: str | os.PathLike[str] = DEFAULT_ROOT,
              devices: Sequence[str] | None = None) -> dict[tuple[str, int], NicBytes]:
    """Cumulative rx/tx bytes the NIC counted per (device, port), x4 applied (for comparing what the
    kernel saw with what the NIC carried). Raises UsageError if ``root`` does not exist."""
    return RdmaReader(root, devices).nic_bytes()
