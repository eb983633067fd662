"""Flow-map candidates side by side (Step 10): what each costs per packet, under contention, and in memory.

The same datapath source is built three ways (``-DXT_FLOWS=...``, see ebpf/xtrace.bpf.c):

* **shared** - one value per flow, atomic adds, read by the map iterator (the shipped object);
* **percpu** - per-CPU values, plain adds (the design before Step 10);
* **hot16** - per-CPU packets/bytes only (16 bytes), the RoCE/ECN/fragment counters in a shared
  map with atomic adds;
* **locked** - one value per flow, added to under its bpf_spin_lock, read with BPF_F_LOCK (the
  other way to keep user space's copy from tearing a counter; shared reads through the iterator).

Measured, all in one run so ratios hold on this noisy machine:

* **per packet**: BPF_PROG_TEST_RUN ns per packet above the empty program, XDP and TC, for IPv4/IPv6
  UDP, TCP and RoCE v2 (rounds interleave every variant and the empty program; medians);
* **contention**: one flow sent from every CPU at the same moment (one thread pinned per CPU), the
  worst case of a shared value: ns per packet as each CPU's kernel timed it, against one CPU alone;
* **memory**: the flow map's kernel memory (``memlock`` in fdinfo, what bpftool prints) at
  65,536 flows with this machine's possible CPUs. Per-CPU values multiply by the CPU count;
  ``make bench-cpus`` measures that in guests with 2 to 128 vCPUs.

Nothing is asserted; every variant's stats identity is checked and oddities are listed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import common
import numpy as np
import traffic
from empty import HOOKS, empty_programs

from xtrace_catch.errors import XtraceError
from xtrace_catch.kernel import libbpf, uapi
from xtrace_catch.kernel.datapath import PROG_READ_FLOWS
from xtrace_catch.kernel.layout import DEFAULT_FLOWS, STATS
from xtrace_catch.kernel.maps import BpfMap
from xtrace_catch.kernel.object import BpfObject

__all__ = ["NAME", "run", "VARIANTS", "build_variants", "map_memory"]

NAME = "variants"
REPO = common.REPO
OUT_DIR = REPO / "build" / "bench-variants"
VARIANTS = {"shared": 0, "percpu": 1, "hot16": 2, "locked": 3}  # name -> XT_FLOWS
CLASSES = ("IPv4 UDP", "IPv4 TCP", "IPv6 UDP", "RoCE v2")


@dataclass(frozen=True)
class Params:
    rounds: int
    repeat: int
    contention_calls: int


FULL = Params(rounds=11, repeat=200_000, contention_calls=10)
QUICK = Params(rounds=3, repeat=50_000, contention_calls=3)


def _progress(msg: str) -> None:
    common.progress(NAME, msg)


def build_variants(out_dir: Path = OUT_DIR) -> dict[str, Path]:
    """Each variant's object, built with the Makefile's flags (``make bpf-build-to``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    objs = {}
    for name, code in VARIANTS.items():
        obj = out_dir / f"xtrace-{name}.bpf.o"
        flags = f"-DXT_FLOWS={code}"
        p = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), "bpf-build-to", f"OUT={obj}",
                            f"BPF_EXTRA={flags}"], capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"bench: building the {name} variant failed: {p.stderr.strip()[-400:]}")
        objs[name] = obj
    return objs


def map_memory(obj: BpfObject, names: tuple[str, ...] = ("flows", "flow_extras")) -> int:
    """Kernel memory of the object's flow maps (those of `names` it has)."""
    total = 0
    for n in names:
        try:
            total += obj.map(n).kernel_memory()
        except Exception:  # noqa: BLE001 - a variant without that map
            continue
    return total


def _stats_ok(obj: BpfObject) -> bool:
    st = obj.map("stats", value_dtype=STATS).lookup(b"\0\0\0\0")
    assert st is not None
    for sfx in ("", "_bytes"):
        parts = sum(int(st[k + sfx].sum()) for k in ("counted", "filtered", "truncated", "overflowed"))
        if int(st["seen" + sfx].sum()) != parts:
            return False
    return True


def _flow_packets(obj: BpfObject, variant: str) -> int:
    m: BpfMap = obj.map("flows", elem_flags=uapi.BPF_F_LOCK if variant == "locked" else 0)
    keys, vals = m.read_all()
    raw = np.ascontiguousarray(vals).view("<u8").reshape(len(keys), m.ncpus, m.slot // 8)
    return int(raw[:, :, 0].sum())


def _per_packet(objs: dict[str, BpfObject], empties: dict[str, int], p: Params) -> dict[tuple[str, str, str], float]:
    """Median ns per packet above the empty program, by (variant, hook, class)."""
    lib = libbpf.get()
    classes = traffic.frame_classes()
    samples: dict[tuple[str, str, str], list[int]] = {}
    for r in range(p.rounds):
        _progress(f"per packet: round {r + 1}/{p.rounds}")
        for cls in CLASSES:
            frame = classes[cls]
            for hook in HOOKS:
                runs = [("empty", empties[hook.label])] + [(v, o.prog_fd(hook.prog)) for v, o in objs.items()]
                for who, fd in runs[::-1] if r % 2 else runs:
                    samples.setdefault((who, hook.label, cls), []).append(
                        int(lib.prog_test_run(fd, frame, repeat=p.repeat).duration))
    out = {}
    for (who, hook, cls), xs in samples.items():
        if who != "empty":
            out[(who, hook, cls)] = statistics.median(xs) - statistics.median(samples[("empty", hook, cls)])
    return out


def _on_cpus(fd: int, frame: bytes, cpus: list[int], calls: int, repeat: int) -> float:
    """Mean kernel ns per packet with the program run on all `cpus` at once (one pinned thread each)."""
    lib = libbpf.get()
    barrier = threading.Barrier(len(cpus))
    per: list[list[int]] = [[] for _ in cpus]

    def work(i: int, cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})
        barrier.wait()
        for _ in range(calls):
            per[i].append(int(lib.prog_test_run(fd, frame, repeat=repeat).duration))

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(cpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statistics.mean(x for xs in per for x in xs)


def _contention(objs: dict[str, BpfObject], p: Params, cpus: list[int]) -> dict[str, tuple[float, float]]:
    """(one CPU alone, all CPUs at once) ns per packet of XDP on one IPv4 UDP flow, by variant."""
    frame = traffic.frame_classes()["IPv4 UDP"]
    out = {}
    for v, o in objs.items():
        _progress(f"contention: {v}")
        fd = o.prog_fd("xtrace_xdp")
        alone = _on_cpus(fd, frame, cpus[:1], p.contention_calls, p.repeat)
        together = _on_cpus(fd, frame, cpus, p.contention_calls, p.repeat)
        out[v] = (alone, together)
    return out


def run(p: Params, anomalies: list[str]) -> str:
    if shutil.which("clang") is None:
        raise SystemExit("bench: the variants need clang to build (make deps)")
    lib = libbpf.get()
    cpus = sorted(range(os.cpu_count() or 1))
    paths = build_variants()
    objs: dict[str, BpfObject] = {}
    try:
        for v, path in paths.items():
            o = BpfObject.from_file(path)
            try:  # the packet runs need no reader, and a host may refuse tracing programs (EPERM)
                o.set_autoload(PROG_READ_FLOWS, False)
            except XtraceError:
                pass  # a variant without the iterator
            o.load()
            objs[v] = o
        mem = {v: map_memory(o) for v, o in objs.items()}
        with empty_programs() as empties:
            pp = _per_packet(objs, empties, p)
        cont = _contention(objs, p, cpus) if len(cpus) > 1 else {}
        for v, o in objs.items():
            if not _stats_ok(o):
                anomalies.append(f"{v}: stats identity broken")
            st = o.map("stats", value_dtype=STATS).lookup(b"\0\0\0\0")
            assert st is not None
            held = _flow_packets(o, v)
            if held != int(st["counted"].sum()):
                anomalies.append(f"{v}: flow map holds {held} packets, stats counted {int(st['counted'].sum())}")
    finally:
        for o in objs.values():
            o.close()

    names = list(VARIANTS)
    lines = [f"## Flow-map variants ({lib.ncpus} possible CPUs)", "",
             "ns per packet above the empty program (BPF_PROG_TEST_RUN, medians of "
             f"{p.rounds} interleaved rounds of {p.repeat:,} runs; one run):", "",
             "| hook | class | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for hook in HOOKS:
        for cls in CLASSES:
            lines.append(f"| {hook.label} | {cls} | " + " | ".join(f"{pp[(v, hook.label, cls)]:.1f}" for v in names)
                         + " |")
    worst = {v: max(pp[(v, h.label, c)] for h in HOOKS for c in CLASSES) for v in names}
    lines.append("| | **worst** | " + " | ".join(f"**{worst[v]:.1f}**" for v in names) + " |")
    lines += ["", f"Flow-map kernel memory at {DEFAULT_FLOWS:,} flows, {lib.ncpus} possible CPUs (fdinfo memlock):", "",
              "| variant | bytes | per flow |", "|---|---:|---:|"]
    lines += [f"| {v} | {mem[v]:,} | {mem[v] / DEFAULT_FLOWS:.0f} |" for v in names]
    if cont:
        lines += ["", f"One IPv4 UDP flow from {len(cpus)} CPUs at once (XDP, {p.contention_calls} calls of "
                  f"{p.repeat:,} runs per CPU; kernel ns per packet, mean):", "",
                  "| variant | one CPU alone | all CPUs at once | ratio |", "|---|---:|---:|---:|"]
        lines += [f"| {v} | {a:.1f} | {t:.1f} | {t / a:.2f} |" for v, (a, t) in cont.items()]
    else:
        lines += ["", "Contention: not measured (one CPU)."]
    lines += ["", "Every variant's stats identity (seen = counted + filtered + truncated + overflowed) and its flow "
              "map's packets = counted are checked; a break is listed below."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(common.main([NAME], __doc__))
