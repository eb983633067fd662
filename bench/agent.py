"""Whole-agent benchmark: ``xtrace-catch run -m tc -d both -t 5000`` with 10k active flows and export on.

A fresh pair of namespaces joined by a veth. In the agent's namespace: VictoriaMetrics on
127.0.0.1:8428 and the agent on the veth (TC both ways, JSON output, remote write to
VictoriaMetrics, ``--count`` intervals). In the peer's namespace: a bounded generator sending one
small IPv4 UDP frame per flow per interval (10k distinct source address/port pairs, raw AF_PACKET,
paced in 100 slices across the 5 s interval). The frames are addressed to a MAC nobody owns, so the
agent's stack drops them right after TC ingress counted them: the agent's work, nothing else's.

Measured from /proc: the agent's CPU (utime + stime, all threads) sampled whenever a summary line
arrives, so the steady window runs from the end of interval 1 (all flows new: labels built) to
the last interval; the whole run (start-up, BPF load, interval 1) is shown too. Peak RSS is VmHWM.
The summaries must show ~10k active flows per full interval, and VictoriaMetrics must hold 10k
flow series at the end.

Targets: < 2% of one core on average (steady window), RSS < 80 MB.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import netenv
import netns
import traffic

from xtrace_catch.kernel.datapath import FlowMapInfo
from xtrace_catch.settings import Mode

__all__ = ["NAME", "run", "Params", "FULL", "QUICK"]

NAME = "agent"
TARGET_CPU = 0.02
TARGET_RSS_MB = 80.0
INTERVAL_MS = 5000
FLOW_TOLERANCE = 0.02  # active flows per full interval within 2% of the flows sent


@dataclass(frozen=True)
class Params:
    flows: int
    intervals: int  # --count
    push: str       # remote write or text import path on VictoriaMetrics
    slope_intervals: int  # a second, shorter run with twice the flows, for RSS per flow (0: none)
    breakdown_rounds: int = 7  # timed rounds of the per-interval steps in this process


FULL = Params(flows=10_000, intervals=12, push="/api/v1/write", slope_intervals=6)  # 60 s + 30 s
QUICK = Params(flows=10_000, intervals=4, push="/api/v1/write", slope_intervals=0, breakdown_rounds=3)  # 20 s
TARGET_FLOW_BYTES = 1024

# Runs in the peer namespace. Bounded: at most `duration` seconds, whole cycles of `slices` sends.
# SIGTERM ends it early and still prints what it sent.
GENERATOR = r"""
import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
ifname, path, period, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
frames = [bytes.fromhex(h) for h in open(path).read().split()]
slices = 100
per = -(-len(frames) // slices)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: sends only
s.bind((ifname, 0))
start = time.monotonic()
end = start + duration
sent = late = 0
print("ready", flush=True)
try:
    for cycle in range(int(duration / period) + 1):
        t0 = start + cycle * period
        if t0 >= end:
            break
        for j in range(slices):
            for f in frames[j * per:(j + 1) * per]:
                s.send(f)
                sent += 1
            d = t0 + (j + 1) * period / slices - time.monotonic()
            if d > 0:
                time.sleep(d)
            else:
                late += 1
finally:
    print(f"sent {sent} frames in {time.monotonic() - start:.1f} s, {late} of the 100 slices per interval late",
          flush=True)
"""


def _progress(msg: str) -> None:
    common.progress(NAME, msg)


@dataclass
class Sample:
    t: float          # monotonic, when the summary line arrived
    cpu: float        # agent utime + stime, s
    hwm_kib: int
    rss_kib: int
    rec: dict[str, object]


@dataclass
class Result:
    p: Params
    spawn: float = 0.0
    attached: float = 0.0
    attached_rss_kib: int = 0
    samples: list[Sample] = field(default_factory=list)
    gen_out: str = ""
    gen_cpu: float = 0.0
    rc: int | None = None
    series: int | None = None
    dropped: float | None = None
    failures: float | None = None
    successes: float | None = None
    stderr_tail: list[str] = field(default_factory=list)


def _measure(p: Params, anomalies: list[str], extra_env: dict[str, str] | None = None) -> Result:
    res = Result(p)
    lock = threading.Lock()

    def on_line(line: str, pid: int) -> bool:
        if '"record":"summary"' not in line:
            return False  # flow records: counted by the agent, not needed here
        try:
            s = Sample(time.monotonic(), netenv.cpu_seconds(pid), netenv.status_kib(pid, "VmHWM"),
                       netenv.status_kib(pid, "VmRSS"), json.loads(line))
        except (OSError, ValueError):
            return True
        with lock:
            res.samples.append(s)
        return True

    state_dir = Path(tempfile.mkdtemp(prefix="xb-agent-state-"))
    frame_file = state_dir / "frames.hex"
    frame_file.write_text("\n".join(f.hex() for f in traffic.many_ipv4_udp(p.flows)))
    duration = p.intervals * INTERVAL_MS / 1000
    try:
        with netns.veth_pair(prefix="xbg") as pair, netenv.victoria_metrics(pair.ns) as vm:
            _progress(f"VictoriaMetrics up in {pair.ns}; starting the agent on {pair.ifname}")
            cmd = [*netns.xtrace_cmd(), "run", "-i", pair.ifname, "-m", "tc", "-d", "both", "-t", str(INTERVAL_MS),
                   "--output", "json", "--count", str(p.intervals), "--vm-enabled", "--vm-url", vm.base + p.push]
            env = {**os.environ, "XTRACE_STATE_DIR": str(state_dir), **(extra_env or {})}
            res.spawn = time.monotonic()
            with netenv.proc(pair.ns, cmd, on_line=on_line, env=env) as agent:
                agent.wait_stderr("attached", timeout=30)
                res.attached = time.monotonic()
                res.attached_rss_kib = netenv.status_kib(agent.pid, "VmRSS")
                gen_cmd = [sys.executable, "-c", GENERATOR, pair.peer_if, str(frame_file),
                           str(INTERVAL_MS / 1000), str(duration + 10)]
                with netenv.proc(pair.peer_ns, gen_cmd) as gen:
                    _progress(f"agent attached; {p.flows:,} flows, {p.intervals} intervals of {INTERVAL_MS} ms")
                    try:
                        res.rc = agent.wait(timeout=duration + 30)
                    except Exception as exc:  # noqa: BLE001 (a hung agent is a result; it is killed on exit)
                        anomalies.append(f"agent did not finish {p.intervals} intervals in time: {exc}")
                    try:
                        res.gen_cpu = netenv.cpu_seconds(gen.pid)
                    except OSError:
                        pass
                    try:
                        gen.stop(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass  # killed on exit; what it printed so far stands
                    res.gen_out = " ".join(gen.out[-1:])
                res.stderr_tail = agent.err[-5:]
            _progress("agent done; querying VictoriaMetrics")
            res.series = netenv.series_count(vm, "xtrace_network_flow_packets")
            last = netenv.last_values(vm, '{__name__=~"xtrace_agent_(push_successes|push_failures|samples_dropped)_total"}')
            res.successes = last.get("xtrace_agent_push_successes_total")
            res.failures = last.get("xtrace_agent_push_failures_total")
            res.dropped = last.get("xtrace_agent_samples_dropped_total")
    finally:
        for f in state_dir.iterdir():
            f.unlink()
        state_dir.rmdir()
    return res


BREAKDOWN_STEPS = (
    ("collect", "`Collector.collect()` (every flow changed)"),
    ("batch", "`Export.batch()` (SeriesTable.batch + health samples)"),
    ("rw", "`RemoteWriteEncoder.body()` per request (what the Pusher encodes)"),
    ("emit", "`Emitter.emit()` with `--output json` (LineWriter lines + summary + write)"),
)


def _breakdown(flows: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """The agent's per-interval steps for `flows` active flows, run in this process on a real flow
    map where every flow got a packet: ({step: CPU seconds of this thread, median}, {step: peak
    Python memory during the step, bytes (tracemalloc, one more round)})."""
    import gc
    import tracemalloc

    from collector import FlowFiller  # bench/collector.py

    from xtrace_catch.export.health import Export
    from xtrace_catch.export.push import SERIES_PER_REQUEST
    from xtrace_catch.export.remote_write import RemoteWriteEncoder
    from xtrace_catch.flows.collector import NV, Collector
    from xtrace_catch.flows.emit import Emitter
    from xtrace_catch.kernel.datapath import PROG_TC_INGRESS, Datapath, DatapathConfig
    from xtrace_catch.settings import ExportSettings, Output, Settings

    settings = Settings(interface="xbg0", mode=Mode.TC, output=Output.JSON, interval_ms=INTERVAL_MS,
                        export=ExportSettings(vm_enabled=True))
    t: dict[str, list[float]] = {k: [] for k, _ in BREAKDOWN_STEPS}
    mem: dict[str, float] = {}
    with Datapath(DatapathConfig(programs=frozenset({PROG_TC_INGRESS}))) as dp, open(os.devnull, "w") as sink:
        filler = FlowFiller(dp.flows, traffic.flow_keys(flows))
        filler.fill()
        col = Collector(dp)
        exp = Export(settings, "xbg0", netns.AGENT_IP4, col)
        enc = RemoteWriteEncoder()
        emitter = Emitter(settings, "xbg0", netns.AGENT_IP4, FlowMapInfo(settings.max_flows), sink)
        st: dict[str, object] = {}

        def emit() -> None:
            # Emitter.emit takes an Interval, or (Interval, extra) in newer code: find out once.
            if st.get("emit_tuple") is None:
                try:
                    emitter.emit(st["iv"])  # type: ignore[arg-type]
                    st["emit_tuple"] = False
                except TypeError:
                    st["emit_tuple"] = True
            if st["emit_tuple"]:
                emitter.emit((st["iv"], None))  # type: ignore[arg-type]
            else:
                emitter.emit(st["iv"])  # type: ignore[arg-type]

        def rw() -> None:
            # As the Pusher does: one body per SERIES_PER_REQUEST series, encoded when sent.
            b = st["b"]
            for lo in range(0, len(b.ids), SERIES_PER_REQUEST):  # type: ignore[attr-defined]
                enc.body(b.part(lo, lo + SERIES_PER_REQUEST, with_health=True))  # type: ignore[attr-defined]

        steps = {
            "collect": lambda: st.__setitem__("iv", col.collect()),
            "batch": lambda: st.__setitem__("b", exp.batch(st["iv"])),  # type: ignore[arg-type]
            "rw": rw,
            "emit": emit,
        }
        clock = time.thread_time  # CPU time, as the agent's is measured: a busy CPU does not inflate it
        for r in range(rounds + 1):  # the first round is interval 1 (all new): not counted
            filler.bump(every=1)
            for name, fn in steps.items():
                t0 = clock()
                fn()
                if r:
                    t[name].append(clock() - t0)
            active = len(st["iv"].keys)  # type: ignore[attr-defined]
            if active != flows:
                raise RuntimeError(f"breakdown: {active} active flows, expected {flows}")
        filler.bump(every=1)
        tracemalloc.start()
        try:
            for name, fn in steps.items():
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                fn()
                mem[name] = tracemalloc.get_traced_memory()[1] - before
            # What the agent keeps per tracked flow: a fresh collector, series table, encoder and
            # emitter built under tracing, three intervals, then everything but their state freed.
            st.clear()
            # The timed set goes first: its state, allocated while tracing, would otherwise be
            # freed inside the measurement and make the new set look smaller.
            col = exp = enc = emitter = None  # type: ignore[assignment]
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            col = Collector(dp)
            exp = Export(settings, "xbg0", netns.AGENT_IP4, col)
            enc = RemoteWriteEncoder()
            emitter = Emitter(settings, "xbg0", netns.AGENT_IP4, FlowMapInfo(settings.max_flows), sink)
            for _ in range(3):
                filler.bump(every=1)
                for name in ("collect", "batch", "rw", "emit"):
                    steps[name]()
            st.clear()
            gc.collect()
            # The map's CounterReader (kept with the map, so made before tracing) counts too.
            mem["reader"] = dp.flows.counter_reader(NV).nbytes
            mem["retained"] = tracemalloc.get_traced_memory()[0] - base + mem["reader"]
        finally:
            tracemalloc.stop()
    return {k: statistics.median(v) for k, v in t.items()}, mem


# What the agent imports, each alone; the last, everything a `run` with export loads (pyroute2 as
# attach.py imports it: IPRoute without the package's __init__).
IMPORTS = ("numpy", "asyncio", "httpx", "typer", "cramjam", "elftools.elf.elffile", "xtrace_catch.attach",
           "xtrace_catch.cli,xtrace_catch.agent,xtrace_catch.export.push")


def _import_rss() -> dict[str, float]:
    """MB of RSS a fresh interpreter gains by importing each module alone (one subprocess each); under
    the key "" the interpreter's own RSS before the imports (the smallest seen)."""
    code = ("import importlib, sys\n"
            "def rss():\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:'))\n"
            "a = rss()\n"
            "for m in sys.argv[1].split(','):\n"
            "    importlib.import_module(m)\n"
            "print(a, rss())")
    out: dict[str, float] = {}
    base = float("inf")
    for mod in IMPORTS:
        try:
            p = subprocess.run([sys.executable, "-c", code, mod], capture_output=True, text=True, timeout=60)
            a, b = (int(x) for x in p.stdout.split())
            out[mod] = (b - a) / 1024
            base = min(base, a / 1024)
        except (OSError, ValueError, subprocess.SubprocessError):
            out[mod] = float("nan")
    return {"": base if base < float("inf") else float("nan"), **out}


def _slope_lines(res: Result, big: Result) -> list[str]:
    """RSS per tracked flow: the run with twice the flows against the first intervals of the main run."""
    n = len(big.samples)
    if n < 2 or len(res.samples) < n:
        return []
    a, b = res.samples[n - 1], big.samples[-1]
    extra = big.p.flows - res.p.flows
    per_rss = (b.rss_kib - a.rss_kib) * 1024 / extra
    per_hwm = (b.hwm_kib - a.hwm_kib) * 1024 / extra
    return [
        f"RSS per tracked flow, end to end: a second run with {big.p.flows:,} flows for {n} intervals, against "
        f"interval {n} of the run above (one run each; includes allocator slack):",
        "",
        f"| run | VmRSS after attach MB | VmRSS at interval {n} MB | VmHWM at interval {n} MB |",
        "|---|---:|---:|---:|",
        f"| {res.p.flows:,} flows | {res.attached_rss_kib / 1024:.1f} | {a.rss_kib / 1024:.1f} | {a.hwm_kib / 1024:.1f} |",
        f"| {big.p.flows:,} flows | {big.attached_rss_kib / 1024:.1f} | {b.rss_kib / 1024:.1f} | "
        f"{b.hwm_kib / 1024:.1f} |",
        f"| per extra flow | | {per_rss:.0f} B | {per_hwm:.0f} B |",
        "",
    ]


def _report(res: Result, big: Result | None, breakdown: dict[str, float], mem: dict[str, float],
            imports: dict[str, float], rounds: int, anomalies: list[str]) -> str:
    p = res.p
    out = ["## Whole agent (10k active flows, export on)", ""]
    out += [
        f"`xtrace-catch run -i <veth> -m tc -d both -t {INTERVAL_MS} --output json --count {p.intervals} --vm-enabled "
        f"--vm-url http://127.0.0.1:8428{p.push}` in a fresh namespace, VictoriaMetrics in the same namespace; "
        f"a generator in the peer namespace sends one 106-byte IPv4 UDP frame per flow per interval "
        f"({p.flows:,} source address/port pairs, AF_PACKET, 100 paced slices per interval) to a MAC nobody owns "
        "(counted by TC ingress, then dropped by the stack). CPU = utime + stime of the agent process "
        "(all threads) from /proc, sampled when each summary line arrives. "
        f"Targets: < {TARGET_CPU:.0%} of one core on average, peak RSS < {TARGET_RSS_MB:.0f} MB.",
        "",
    ]
    s = res.samples
    if len(s) < 2:
        out += ["The agent produced fewer than two intervals: nothing to measure.", ""]
        anomalies.append(f"agent produced {len(s)} summary lines (exit code {res.rc}); stderr: {res.stderr_tail}")
    else:
        first, last = s[0], s[-1]
        steady = (last.cpu - first.cpu) / (last.t - first.t)
        whole = last.cpu / (last.t - res.spawn)
        hwm_mb = max(x.hwm_kib for x in s) / 1024
        full = [int(x.rec["active_flows"]) for x in s[1:]]  # type: ignore[call-overload]
        lo, hi = p.flows * (1 - FLOW_TOLERANCE), p.flows * (1 + FLOW_TOLERANCE)
        flows_ok = all(lo <= f <= hi for f in full)
        cpu_ok, rss_ok = steady < TARGET_CPU, hwm_mb < TARGET_RSS_MB
        series_ok = res.series is not None and lo <= res.series <= hi
        push_ok = not res.dropped and res.failures == 0
        out += [
            "| measure | value | target | status |",
            "|---|---:|---|---|",
            f"| CPU, steady window (end of interval 1 to end of interval {len(s)}, {last.t - first.t:.1f} s) | "
            f"{steady:.2%} of one core ({(last.cpu - first.cpu) * 1e3 / (len(s) - 1):.0f} ms CPU per interval) | "
            f"< {TARGET_CPU:.0%} | {common.status(cpu_ok)} |",
            f"| CPU, whole run (start-up, BPF load, interval 1 included; {last.t - res.spawn:.1f} s) | "
            f"{whole:.2%} of one core ({last.cpu:.2f} s CPU) | (info) | |",
            f"| peak RSS (VmHWM) | {hwm_mb:.1f} MB | < {TARGET_RSS_MB:.0f} MB | {common.status(rss_ok)} |",
            f"| RSS at the last interval (VmRSS) | {last.rss_kib / 1024:.1f} MB | (info) | |",
            f"| active flows per full interval (2-{len(s)}): min / median / max | {min(full):,} / "
            f"{statistics.median(full):,.0f} / {max(full):,} | {p.flows:,} +-{FLOW_TOLERANCE:.0%} | "
            f"{'ok' if flows_ok else '**off**'} |",
            f"| flow series in VictoriaMetrics at the end | "
            f"{'-' if res.series is None else f'{res.series:,.0f}'} | {p.flows:,} +-{FLOW_TOLERANCE:.0%} | "
            f"{'ok' if series_ok else '**off**'} |",
            f"| pushes ok / failed / samples dropped (agent's own metrics) | "
            f"{res.successes if res.successes is None else f'{res.successes:.0f}'} / "
            f"{res.failures if res.failures is None else f'{res.failures:.0f}'} / "
            f"{res.dropped if res.dropped is None else f'{res.dropped:.0f}'} | 0 failed, 0 dropped | "
            f"{'ok' if push_ok else '**off**'} |",
            "",
            "Per interval (CPU = the agent's CPU time between this summary line and the previous one; interval 1 "
            "from process start, so it includes start-up):",
            "",
            "| interval | elapsed s | active flows | tracked | packets counted | agent CPU ms | VmRSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        prev_cpu = 0.0
        for x in s:
            r: dict[str, Any] = x.rec
            out.append(f"| {r['interval']} | {r['elapsed_s']} | {int(r['active_flows']):,} | "
                       f"{int(r['tracked_flows']):,} | {int(r['packets_counted']):,} | "
                       f"{(x.cpu - prev_cpu) * 1e3:.0f} | {x.rss_kib / 1024:.1f} |")
            prev_cpu = x.cpu
        out += ["", f"Generator: {res.gen_out or '(no report)'}; its CPU {res.gen_cpu:.2f} s (information). "
                    f"Agent exit code {res.rc}; attached {res.attached - res.spawn:.1f} s after spawn, "
                    f"VmRSS {res.attached_rss_kib / 1024:.1f} MB then (imports, BPF load, attach; no flow yet).", ""]
        per_iv = (last.cpu - first.cpu) / (len(s) - 1)
        if breakdown:
            known = sum(breakdown.values())
            out += [
                f"Where an interval's CPU goes: the agent's per-interval steps for {p.flows:,} flows that all changed, "
                f"run in the benchmark process on a real flow map (thread CPU time, medians of {rounds}, after an "
                "untimed first interval), next to the agent's measured CPU per steady interval. Both are CPU "
                "time, but in different processes minutes apart on a shared machine: shares are approximate.",
                "",
                "| step | ms per interval | share of the agent's measured CPU | peak Python memory in the step MB |",
                "|---|---:|---:|---:|",
            ]
            for k, label in BREAKDOWN_STEPS:
                out.append(f"| {label} | {breakdown[k] * 1e3:.1f} | {breakdown[k] / per_iv:.0%} | "
                           f"{mem.get(k, float('nan')) / 2**20:.1f} |")
            out += [f"| sum of the steps | {known * 1e3:.1f} | {known / per_iv:.0%} | |",
                    f"| rest: asyncio, httpx POST, summary, GC (measured - sum) | {(per_iv - known) * 1e3:.1f} | "
                    f"{(per_iv - known) / per_iv:.0%} | |", ""]
        if "retained" in mem:
            per_flow = mem["retained"] / p.flows
            ok = per_flow < TARGET_FLOW_BYTES
            out += [f"Memory the agent keeps per tracked flow (collector state and the map reader's buffers, "
                    f"series table, remote-write label pairs; Python heap and numpy arrays by "
                    f"tracemalloc, after three intervals of a fresh set): **{per_flow:.0f} B**, of which the "
                    f"reader's buffers (one batch chunk + room for the flows and one more chunk) "
                    f"{mem.get('reader', 0) / p.flows:.0f} B (target < {TARGET_FLOW_BYTES} B: {common.status(ok)}).", ""]
            if not ok:
                anomalies.append(f"{per_flow:.0f} B kept per tracked flow (target < {TARGET_FLOW_BYTES} B)")
        anomalies += [what for ok, what in (
            (cpu_ok, f"agent CPU {steady:.2%} of one core (target < {TARGET_CPU:.0%})"),
            (rss_ok, f"agent peak RSS {hwm_mb:.1f} MB (target < {TARGET_RSS_MB:.0f} MB)"),
            (flows_ok, f"active flows per full interval {min(full)}-{max(full)}, expected ~{p.flows}"),
            (series_ok, f"VictoriaMetrics holds {res.series} flow series, expected ~{p.flows}"),
            (push_ok, f"pushes: {res.failures} failed, {res.dropped} samples dropped"),
        ) if not ok]
    if big is not None:
        out += _slope_lines(res, big)
    if imports:
        mods = {m: v for m, v in imports.items() if m}
        out += [f"RSS a fresh interpreter (itself {imports.get('', float('nan')):.1f} MB) gains by importing each "
                "dependency alone (shared sub-imports counted in each; `xtrace_catch.attach` includes pyroute2's "
                "IPRoute, libbpf and pyelftools; the last is everything `run` with export loads): "
                + ", ".join(f"{m.replace(',', ' + ')} {v:.1f} MB" for m, v in mods.items()) + ".", ""]
    if res.rc not in (0, None):
        anomalies.append(f"agent exited {res.rc}: {res.stderr_tail}")
    return "\n".join(out)


def run(p: Params, anomalies: list[str]) -> str:
    """Run the whole-agent benchmark; returns its markdown section. Needs root (namespaces, BPF)."""
    try:
        res = _measure(p, anomalies)
    except common.SETUP_ERRORS as exc:  # set-up failed: say so, run the rest
        anomalies.append(f"benchmark could not run: {type(exc).__name__}: {exc}")
        res = Result(p)
    big: Result | None = None
    if p.slope_intervals:
        pb = Params(2 * p.flows, p.slope_intervals, p.push, 0)
        _progress(f"again with {pb.flows:,} flows for {pb.intervals} intervals (RSS per flow)")
        try:
            big = _measure(pb, anomalies)
            if big.rc not in (0, None):
                anomalies.append(f"the {pb.flows:,}-flow run's agent exited {big.rc}: {big.stderr_tail}")
        except common.SETUP_ERRORS as exc:
            anomalies.append(f"the {pb.flows:,}-flow run could not run: {type(exc).__name__}: {exc}")
    _progress("per-interval steps, in this process")
    rounds = p.breakdown_rounds
    breakdown: dict[str, float] = {}
    mem: dict[str, float] = {}
    try:
        breakdown, mem = _breakdown(p.flows, rounds)
    except Exception as exc:  # noqa: BLE001 (the agent's internals move; the measurement above stands)
        anomalies.append(f"per-interval breakdown failed: {type(exc).__name__}: {exc}")
    imports = _import_rss()
    return _report(res, big, breakdown, mem, imports, rounds, anomalies)


if __name__ == "__main__":
    sys.exit(common.main([NAME], __doc__))
