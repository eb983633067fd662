"""Real-traffic overhead: iperf3 across a veth with the agent's TC programs attached both ways, or not.

A fresh pair of namespaces joined by a veth: the iperf3 server (pinned to CPU 0) and, in the agent
runs, ``xtrace-catch run -m tc -d both -t 1000`` in one; the iperf3 client (pinned to CPU 1) in the
other. Runs alternate: none, agent, none, agent, ... and each pair gives a ratio agent / none. The
agent is started before its run (the run starts once its "attached" line is on stderr) and stopped
after it; before every "none" run the interface is checked to carry no filter of ours.

* TCP: ``iperf3 -c -t 5``, throughput as received. Target: with the agent >= 97% of without.
* UDP small packets: ``-u -l 64 -b 0 -t 5``: packets/s sent (the client's CPU also runs the veth
  receive path, where our ingress program runs) and received by the server (information).

The agent's own summaries must show it counted the traffic (listed under Anomalies otherwise).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import netenv

__all__ = ["NAME", "run", "Params", "FULL", "QUICK"]

NAME = "iperf"
TARGET_TCP_RATIO = 0.97
PORT = 5201


@dataclass(frozen=True)
class Params:
    tcp_pairs: int
    udp_pairs: int
    seconds: int


FULL = Params(tcp_pairs=4, udp_pairs=3, seconds=5)
QUICK = Params(tcp_pairs=1, udp_pairs=1, seconds=2)


def _progress(msg: str) -> None:
    print(f"[{NAME}] {msg}", file=sys.stderr, flush=True)


@dataclass
class RunResult:
    kind: str        # "tcp" or "udp"
    mode: str        # "none" or "agent"
    value: float     # TCP: bits/s received; UDP: packets/s sent
    value2: float = 0.0  # UDP: packets/s received
    counted_packets: int = 0
    counted_bytes: int = 0
    intervals: int = 0


@dataclass
class Results:
    runs: list[RunResult] = field(default_factory=list)

    def of(self, kind: str, mode: str) -> list[RunResult]:
        return [r for r in self.runs if r.kind == kind and r.mode == mode]


def _our_filters(pair: netenv.Pair) -> list[str]:
    found = []
    for d in ("ingress", "egress"):
        p = netenv.run_cmd(["tc", "-j", "-n", pair.ns, "filter", "show", "dev", pair.ifname, d], check=False)
        if p.returncode != 0 or not p.stdout.strip():
            continue
        for f in json.loads(p.stdout):
            name = str((f.get("options") or {}).get("bpf_name", ""))
            if name.startswith("xtrace_"):
                found.append(f"{d}: {name}")
    return found


def _client(pair: netenv.Pair, kind: str, seconds: int) -> dict[str, object]:
    cmd = ["iperf3", "-c", netenv.AGENT_IP4, "-p", str(PORT), "-t", str(seconds), "-J", "-A", "1"]
    if kind == "udp":
        cmd += ["-u", "-l", "64", "-b", "0"]
    last = ""
    for _ in range(3):  # the server may still be closing the previous test: retry, bounded
        p = netenv.in_ns(pair.peer_ns, cmd, timeout=seconds + 30, check=False)
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            doc = {"error": p.stderr.strip() or p.stdout[-300:]}
        if "error" not in doc:
            return doc  # type: ignore[no-any-return]
        last = str(doc["error"])
        time.sleep(1.0)
    raise RuntimeError(f"iperf3 {kind} failed: {last}")


def _one(pair: netenv.Pair, kind: str, mode: str, p: Params, state_dir: Path) -> RunResult:
    agent = None
    summaries: list[dict[str, object]] = []

    def on_line(line: str, pid: int) -> bool:
        if '"record":"summary"' in line:
            try:
                summaries.append(json.loads(line))
            except ValueError:
                pass
        return False

    try:
        if mode == "agent":
            cmd = [*netenv.xtrace_cmd(), "run", "-i", pair.ifname, "-m", "tc", "-d", "both", "-t", "1000",
                   "--output", "json"]
            agent = netenv.Proc(pair.ns, cmd, on_line=on_line,
                                env={**os.environ, "XTRACE_STATE_DIR": str(state_dir)}).__enter__()
            agent.wait_stderr("attached", timeout=30)
        else:
            left = _our_filters(pair)
            if left:
                raise RuntimeError(f"a 'none' run would measure our programs: still attached ({', '.join(left)})")
        doc = _client(pair, kind, p.seconds)
    finally:
        if agent is not None:
            rc = agent.stop(timeout=15)
            agent.__exit__()
            if rc != 0:
                raise RuntimeError(f"agent exited {rc}: {agent.err[-5:]}")
    end = doc["end"]  # type: ignore[index]
    if kind == "tcp":
        res = RunResult(kind, mode, float(end["sum_received"]["bits_per_second"]))  # type: ignore[index]
    else:
        sent, recv = end["sum_sent"], end["sum_received"]  # type: ignore[index]
        res = RunResult(kind, mode, sent["packets"] / sent["seconds"],
                        (recv["packets"] - recv["lost_packets"]) / recv["seconds"])
    res.counted_packets = sum(int(s["packets_counted"]) for s in summaries)  # type: ignore[call-overload]
    res.counted_bytes = sum(int(s["bytes_counted"]) for s in summaries)  # type: ignore[call-overload]
    res.intervals = len(summaries)
    return res


def _measure(p: Params, out: Results, anomalies: list[str]) -> None:
    """Fills `out` run by run (what was measured before a failure is kept)."""
    state_dir = Path(tempfile.mkdtemp(prefix="xb-iperf-state-"))
    try:
        with netenv.veth_pair("i") as pair:
            srv_cmd = ["iperf3", "-s", "-B", netenv.AGENT_IP4, "-p", str(PORT), "-A", "0"]
            with netenv.Proc(pair.ns, srv_cmd) as srv:
                time.sleep(0.5)
                if srv.proc is not None and srv.proc.poll() is not None:
                    raise RuntimeError(f"iperf3 server exited: {srv.err[-3:]}")
                for kind, pairs in (("tcp", p.tcp_pairs), ("udp", p.udp_pairs)):
                    for i in range(pairs):
                        for mode in ("none", "agent"):
                            _progress(f"{kind} pair {i + 1}/{pairs}: {mode}")
                            r = _one(pair, kind, mode, p, state_dir)
                            out.runs.append(r)
                            if mode == "agent" and r.counted_packets == 0:
                                anomalies.append(f"{kind} run {i + 1}: the agent counted no packet "
                                                 f"({r.intervals} intervals)")
                            time.sleep(0.3)
                srv.stop(timeout=5)
                left = _our_filters(pair)
                if left:
                    anomalies.append(f"our filters still attached after the last agent run: {left}")
    finally:
        for f in state_dir.iterdir():
            f.unlink()
        state_dir.rmdir()


def _status(ok: bool) -> str:
    return "ok" if ok else "**over**"


def _report(p: Params, res: Results, anomalies: list[str], seconds: float) -> str:
    out = ["## Real traffic: iperf3 with and without the agent", ""]
    out += [
        f"iperf3 across a veth between two fresh namespaces (server pinned to CPU 0, client to CPU 1), "
        f"-t {p.seconds}; runs alternate none, agent, none, agent, ... ({p.tcp_pairs} TCP pairs, {p.udp_pairs} UDP "
        "pairs). *agent* = `xtrace-catch run -m tc -d both -t 1000 --output json` in the server's namespace, "
        "started before the run (after its \"attached\" line) and stopped after it. Ratio = agent / none per "
        f"pair, median (min-max). Target: TCP throughput with the agent >= {TARGET_TCP_RATIO:.0%} of without.",
        "",
        "| test | none (median) | agent (median) | ratio of medians | ratio per pair: median (min-max) | target |",
        "|---|---:|---:|---:|---|---|",
    ]

    def row(label: str, kind: str, get: object, unit: str, scale: float, target: float | None) -> None:
        none = [get(r) for r in res.of(kind, "none")]  # type: ignore[operator]
        agent = [get(r) for r in res.of(kind, "agent")]  # type: ignore[operator]
        if not none or not agent:
            return
        pairs = [a / n for n, a in zip(none, agent) if n]
        ratio = statistics.median(agent) / statistics.median(none)
        st = "(info)"
        if target is not None:
            ok = statistics.median(pairs) >= target
            st = _status(ok)
            if not ok:
                anomalies.append(f"{label}: with the agent {statistics.median(pairs):.1%} of without "
                                 f"(target >= {target:.0%})")
        out.append(f"| {label} | {statistics.median(none) / scale:.2f} {unit} | {statistics.median(agent) / scale:.2f} "
                   f"{unit} | {ratio:.3f} | {statistics.median(pairs):.3f} "
                   f"({min(pairs):.3f}-{max(pairs):.3f}) | {st} |")

    row("TCP throughput", "tcp", lambda r: r.value, "Gbit/s", 1e9, TARGET_TCP_RATIO)
    row("UDP 64-byte packets sent", "udp", lambda r: r.value, "Mpps", 1e6, None)
    row("UDP 64-byte packets received", "udp", lambda r: r.value2, "Mpps", 1e6, None)
    out += ["", "Every run, in order (TCP Gbit/s; UDP sent / received Mpps; what the agent counted):", ""]
    for r in res.runs:
        v = f"{r.value / 1e9:.2f} Gbit/s" if r.kind == "tcp" else f"{r.value / 1e6:.3f} / {r.value2 / 1e6:.3f} Mpps"
        extra = (f"; agent: {r.intervals} intervals, {r.counted_packets:,} packets, {r.counted_bytes / 1e6:,.0f} MB "
                 "counted") if r.mode == "agent" else ""
        out.append(f"- {r.kind} {r.mode}: {v}{extra}")
    out += ["", "### Anomalies", ""]
    out += [f"- {a}" for a in anomalies] or ["- none"]
    out += ["", f"_iperf benchmark took {seconds:.0f} s._", ""]
    return "\n".join(out)


def run(*, quick: bool = False) -> str:
    """Run the iperf3 benchmark; returns its markdown section. Needs root and iperf3."""
    p = QUICK if quick else FULL
    t0 = time.monotonic()
    anomalies: list[str] = []
    res = Results()
    try:
        _measure(p, res, anomalies)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        anomalies.append(f"benchmark stopped: {type(exc).__name__}: {exc}")
    return _report(p, res, anomalies, time.monotonic() - t0)
