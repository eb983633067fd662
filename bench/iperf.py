"""Real-traffic overhead: iperf3 across a veth with the agent's TC programs attached both ways, or not.

A fresh pair of namespaces joined by a veth: the iperf3 server (pinned to CPU 0) and, in the agent
runs, ``xtrace-catch run -m tc -d both -t 1000`` in one; the iperf3 client (pinned to CPU 1) in the
other. Runs come in triples none, hook, agent (reversed every other triple, so drift cancels), and
each triple gives a ratio agent / none. *hook* attaches an empty program (``r0 = TC_ACT_UNSPEC; exit``,
bench/empty.py) both ways as the agent attaches, and nothing else runs: agent / hook is what our
programs and the agent process add beyond the kernel's cost of having a TC BPF hook at all. The agent
(or hook) is started before its run (the run starts once its "attached" line is on stderr) and
stopped after it; before every "none" run the interface is checked to carry no program of ours (tc
filters and TCX chains).

* TCP: ``iperf3 -c -t SECONDS``, throughput as received. Target: with the agent >= 97% of without.
* TCP paced at PACED_RATE: the rate is the same in every run, so what differs is the CPU it took
  (the scheduler's runtime of every task, steal excluded): CPU per GB received.
* UDP small packets: ``-u -l 64 -b 0``: packets/s sent (the client's CPU also runs the veth
  receive path, where our ingress program runs) and received by the server (information).

The agent's own summaries must show it counted the traffic (listed under Anomalies otherwise).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import common
import netenv
import netns

__all__ = ["NAME", "run", "Params", "FULL", "QUICK"]

NAME = "iperf"
TARGET_TCP_RATIO = 0.97


@dataclass(frozen=True)
class Params:
    """Triples (none, hook, agent) of each kind, and each run's length."""

    tcp_pairs: int
    udp_pairs: int
    seconds: int
    paced_pairs: int = 0  # TCP at PACED_RATE: CPU per GB (guest CPU time, steal excluded)


# TCP throughput moves from run to run (docs/PERFORMANCE.md): many short triples, order reversed every other one.
FULL = Params(tcp_pairs=10, udp_pairs=4, seconds=4, paced_pairs=6)
QUICK = Params(tcp_pairs=1, udp_pairs=1, seconds=2, paced_pairs=1)
PORT = 5201  # iperf3's own
PACED_RATE = "4G"  # well below what the veth moves CPU-bound, so the rate is the same in every run


def _progress(msg: str) -> None:
    common.progress(NAME, msg)


@dataclass
class RunResult:
    kind: str        # "tcp", "udp" or "paced" (TCP at PACED_RATE)
    mode: str        # "none", "hook" or "agent"
    value: float     # TCP: bits/s received; UDP: packets/s sent
    value2: float = 0.0  # UDP: packets/s received
    counted_packets: int = 0
    counted_bytes: int = 0
    intervals: int = 0
    cpu_s: float = 0.0  # CPU time every task ran during the run (scheduler runtime; steal excluded)
    prog_runs: int = 0  # agent runs: our TC programs' runs during the client's run (kernel.bpf_stats_enabled)
    prog_ns: int = 0    # ... and the time they took, ns
    gbytes: float = 0.0  # GB received


@dataclass
class Results:
    runs: list[RunResult] = field(default_factory=list)

    def of(self, kind: str, mode: str) -> list[RunResult]:
        return [r for r in self.runs if r.kind == kind and r.mode == mode]


def _our_programs(pair: netns.VethPair) -> list[str]:
    """Programs of ours (the agent's or the empty hook's) on the interface: tc filters and TCX chains."""
    found = []
    for d in ("ingress", "egress"):
        for f in netns.tc_filters(pair.ns, pair.ifname, d):
            name = str(f["options"].get("bpf_name", ""))  # type: ignore[union-attr]
            if name.startswith("xtrace_"):
                found.append(f"{d}: {name}")
    for d, progs in netns.tcx_progs(pair.ns, pair.ifname).items():
        found += [f"{d} (TCX): {name}" for _id, name in progs if name.startswith("xtrace_")]
    return found


def _client(pair: netns.VethPair, kind: str, seconds: int) -> dict[str, object]:
    cmd = ["iperf3", "-c", netns.AGENT_IP4, "-p", str(PORT), "-t", str(seconds), "-J", "-A", "1"]
    if kind == "udp":
        cmd += ["-u", "-l", "64", "-b", "0"]
    elif kind == "paced":
        cmd += ["-b", PACED_RATE]
    last = ""
    for _ in range(3):  # the server may still be closing the previous test: retry, bounded
        p = netns.in_ns(pair.peer_ns, cmd, timeout=seconds + 30, check=False)
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            doc = {"error": p.stderr.strip() or p.stdout[-300:]}
        if "error" not in doc:
            return doc  # type: ignore[no-any-return]
        last = str(doc["error"])
        time.sleep(1.0)
    raise RuntimeError(f"iperf3 {kind} failed: {last}")


# Runs in the server's namespace: an empty TC program on both hooks, attached as the agent attaches.
EMPTY_HOOK = common.BENCH_DIR / "empty.py"


def _busy_seconds() -> float:
    """CPU time every task of this machine has run, in seconds: the scheduler's exact runtime
    (cgroup v1 cpuacct.usage or v2 cpu.stat at the root), softirq work done in task context
    included; time other tenants took (steal) is not in it. Falls back to /proc/stat's ticks."""
    try:
        with open("/sys/fs/cgroup/cpuacct/cpuacct.usage") as f:
            return int(f.read()) / 1e9
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/cpu.stat") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("usage_usec")) / 1e6
    except (OSError, StopIteration):
        pass
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def _prog_stats() -> tuple[int, int]:
    """(runs, ns) summed over our TC programs now loaded, from the kernel's BPF run statistics
    (counted while kernel.bpf_stats_enabled is 1): the exact in-kernel cost of our programs."""
    p = netns.run(["bpftool", "-j", "prog", "show"], check=False)
    try:
        progs = json.loads(p.stdout) if p.returncode == 0 else []
    except ValueError:
        progs = []
    ours = [x for x in progs if str(x.get("name", "")).startswith("xtrace_tc_")]
    return sum(int(x.get("run_cnt", 0)) for x in ours), sum(int(x.get("run_time_ns", 0)) for x in ours)


def _one(pair: netns.VethPair, kind: str, mode: str, p: Params, state_dir: Path) -> RunResult:
    summaries: list[dict[str, object]] = []

    def on_line(line: str, pid: int) -> bool:
        if '"record":"summary"' in line:
            try:
                summaries.append(json.loads(line))
            except ValueError:
                pass
        return False

    env = {**os.environ, "XTRACE_STATE_DIR": str(state_dir)}
    with ExitStack() as stack:
        agent = None
        if mode == "agent":
            cmd = [*netns.xtrace_cmd(), "run", "-i", pair.ifname, "-m", "tc", "-d", "both", "-t", "1000",
                   "--output", "json"]
            agent = stack.enter_context(netenv.proc(pair.ns, cmd, on_line=on_line, env=env))
        elif mode == "hook":
            agent = stack.enter_context(netenv.proc(pair.ns, [sys.executable, str(EMPTY_HOOK), pair.ifname], env=env))
        else:
            left = _our_programs(pair)
            if left:
                raise RuntimeError(f"a 'none' run would measure our programs: still attached ({', '.join(left)})")
        if agent is not None:
            agent.wait_stderr("attached", timeout=30)
        runs0, ns0 = _prog_stats() if mode == "agent" else (0, 0)
        busy0 = _busy_seconds()
        doc = _client(pair, kind, p.seconds)
        busy = _busy_seconds() - busy0
        runs1, ns1 = _prog_stats() if mode == "agent" else (0, 0)
        if agent is not None:
            rc = agent.stop(timeout=15)
            if rc != 0:
                raise RuntimeError(f"{mode} exited {rc}: {agent.err[-5:]}")
    end = doc["end"]  # type: ignore[index]
    if kind in ("tcp", "paced"):
        res = RunResult(kind, mode, float(end["sum_received"]["bits_per_second"]))  # type: ignore[index]
        res.gbytes = float(end["sum_received"]["bytes"]) / 1e9  # type: ignore[index]
    else:
        sent, recv = end["sum_sent"], end["sum_received"]  # type: ignore[index]
        res = RunResult(kind, mode, sent["packets"] / sent["seconds"],
                        (recv["packets"] - recv["lost_packets"]) / recv["seconds"])
    res.counted_packets = sum(int(s["packets_counted"]) for s in summaries)  # type: ignore[call-overload]
    res.counted_bytes = sum(int(s["bytes_counted"]) for s in summaries)  # type: ignore[call-overload]
    res.intervals = len(summaries)
    res.cpu_s = busy
    res.prog_runs, res.prog_ns = runs1 - runs0, ns1 - ns0
    return res


BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def _measure(p: Params, out: Results, anomalies: list[str]) -> None:
    """Fills `out` run by run (what was measured before a failure is kept)."""
    state_dir = Path(tempfile.mkdtemp(prefix="xb-iperf-state-"))
    stats_was = BPF_STATS.read_text().strip() if BPF_STATS.exists() else None
    if stats_was is not None:
        BPF_STATS.write_text("1")  # run counts and times of every BPF program: restored below
    try:
        with netns.veth_pair(prefix="xbi") as pair:
            srv_cmd = ["iperf3", "-s", "-B", netns.AGENT_IP4, "-p", str(PORT), "-A", "0"]
            with netenv.proc(pair.ns, srv_cmd) as srv:
                time.sleep(0.5)
                if srv.proc is not None and srv.proc.poll() is not None:
                    raise RuntimeError(f"iperf3 server exited: {srv.err[-3:]}")
                for kind, pairs in (("tcp", p.tcp_pairs), ("paced", p.paced_pairs), ("udp", p.udp_pairs)):
                    for i in range(pairs):
                        order = ("none", "hook", "agent") if i % 2 == 0 else ("agent", "hook", "none")
                        for mode in order:
                            _progress(f"{kind} pair {i + 1}/{pairs}: {mode}")
                            r = _one(pair, kind, mode, p, state_dir)
                            out.runs.append(r)
                            if mode == "agent" and r.counted_packets == 0:
                                anomalies.append(f"{kind} run {i + 1}: the agent counted no packet "
                                                 f"({r.intervals} intervals)")
                            time.sleep(0.3)
                srv.stop(timeout=5)
                left = _our_programs(pair)
                if left:
                    anomalies.append(f"our filters still attached after the last agent run: {left}")
    finally:
        if stats_was is not None:
            BPF_STATS.write_text(stats_was)
        for f in state_dir.iterdir():
            f.unlink()
        state_dir.rmdir()


def _report(p: Params, res: Results, anomalies: list[str]) -> str:
    out = ["## Real traffic: iperf3 with and without the agent", ""]
    out += [
        f"iperf3 across a veth between two fresh namespaces (server pinned to CPU 0, client to CPU 1), "
        f"-t {p.seconds}; runs come in triples none, hook, agent (order reversed every other triple; "
        f"{p.tcp_pairs} TCP triples, {p.udp_pairs} UDP triples). *agent* = `xtrace-catch run -m tc -d both -t 1000 --output json` in the server's namespace, "
        "started before the run (after its \"attached\" line) and stopped after it; *hook* = an empty TC "
        "program (`r0 = TC_ACT_UNSPEC; exit`) attached both ways the same way (clsact + filters), no agent "
        "process: the kernel's cost of a TC BPF hook at all. Ratios per triple, median (min-max). Target: TCP "
        f"throughput with the agent >= {TARGET_TCP_RATIO:.0%} of without.",
        "",
        "| test | none (median) | hook (median) | agent (median) | agent / none per triple | hook / none | "
        "agent / hook | target |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]

    def spread_pct(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2%} ({min(xs):.2%}-{max(xs):.2%})" if xs else "-"

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})" if xs else "-"

    def row(label: str, kind: str, get: object, unit: str, scale: float, target: float | None) -> None:
        none = [get(r) for r in res.of(kind, "none")]  # type: ignore[operator]
        hook = [get(r) for r in res.of(kind, "hook")]  # type: ignore[operator]
        agent = [get(r) for r in res.of(kind, "agent")]  # type: ignore[operator]
        if not none or not agent:
            return
        pairs = [a / n for n, a in zip(none, agent) if n]
        hook_none = [h / n for n, h in zip(none, hook) if n]
        agent_hook = [a / h for h, a in zip(hook, agent) if h]
        st = "(info)"
        if target is not None:
            ok = statistics.median(pairs) >= target
            st = common.status(ok)
            if not ok:
                anomalies.append(f"{label}: with the agent {statistics.median(pairs):.1%} of without "
                                 f"(target >= {target:.0%})")
        med = (lambda xs: f"{statistics.median(xs) / scale:.2f} {unit}" if xs else "-")
        out.append(f"| {label} | {med(none)} | {med(hook)} | {med(agent)} | {spread(pairs)} | {spread(hook_none)} | "
                   f"{spread(agent_hook)} | {st} |")

    row("TCP throughput", "tcp", lambda r: r.value, "Gbit/s", 1e9, TARGET_TCP_RATIO)
    row(f"TCP paced at {PACED_RATE}bit/s: guest CPU per GB received (lower is better)", "paced",
        lambda r: r.cpu_s / r.gbytes if r.gbytes else float("nan"), "CPU-s/GB", 1.0, None)
    row("TCP unpaced: guest CPU per GB received", "tcp",
        lambda r: r.cpu_s / r.gbytes if r.gbytes else float("nan"), "CPU-s/GB", 1.0, None)
    row("UDP 64-byte packets sent", "udp", lambda r: r.value, "Mpps", 1e6, None)
    row("UDP 64-byte packets received", "udp", lambda r: r.value2, "Mpps", 1e6, None)
    agent_runs = [r for r in res.runs if r.mode == "agent" and r.prog_runs]
    if agent_runs:
        out += ["", "Our TC programs during the agent runs, from the kernel's own BPF run statistics "
                "(`kernel.bpf_stats_enabled`, on for this benchmark only): runs per second, ns per run, and the "
                "share of all the CPU time the machine spent in the run that went to our programs. This is "
                "exact where the throughput and CPU ratios above are noisy: on a CPU-bound path it bounds the "
                "throughput our programs take.", "",
                "| test | runs/s (median) | ns per run (median) | share of the run's CPU time (median, min-max) |",
                "|---|---:|---:|---|"]
        for kind, label in (("tcp", "TCP unpaced"), ("paced", f"TCP paced at {PACED_RATE}bit/s"),
                            ("udp", "UDP 64-byte")):
            rs = [r for r in agent_runs if r.kind == kind]
            if not rs:
                continue
            per_s = statistics.median(r.prog_runs / p.seconds for r in rs)
            ns = statistics.median(r.prog_ns / r.prog_runs for r in rs)
            share = [r.prog_ns / 1e9 / r.cpu_s for r in rs if r.cpu_s]
            out.append(f"| {label} | {per_s:,.0f} | {ns:.0f} | {spread_pct(share)} |")
    out += ["", "Every run, in order (TCP Gbit/s; UDP sent / received Mpps; what the agent counted):", ""]
    for r in res.runs:
        v = (f"{r.value / 1e9:.2f} Gbit/s, {r.cpu_s:.2f} CPU-s" if r.kind != "udp"
             else f"{r.value / 1e6:.3f} / {r.value2 / 1e6:.3f} Mpps, {r.cpu_s:.2f} CPU-s")
        extra = (f"; agent: {r.intervals} intervals, {r.counted_packets:,} packets, {r.counted_bytes / 1e6:,.0f} MB "
                 f"counted; our programs ran {r.prog_runs:,} times, {r.prog_ns / 1e6:.1f} ms") if r.mode == "agent" else ""
        out.append(f"- {r.kind} {r.mode}: {v}{extra}")
    return "\n".join(out)


def run(p: Params, anomalies: list[str]) -> str:
    """Run the iperf3 benchmark; returns its markdown section. Needs root and iperf3."""
    res = Results()
    try:
        _measure(p, res, anomalies)
    except common.SETUP_ERRORS as exc:
        anomalies.append(f"benchmark stopped: {type(exc).__name__}: {exc}")
    return _report(p, res, anomalies)


if __name__ == "__main__":
    sys.exit(common.main([NAME], __doc__))
