"""Many CPUs (Step 10): the flow map's kernel memory, the collector's and the agent's cost, and exactness, in
guests with 2, 16, 64 and 128 vCPUs. ``make bench-cpus``, or ``.venv/bin/python bench/cpus.py [--cpus 2,128]``.

Each guest boots Debian 12's kernel (tests/kernels.txt ``6.1``) through the Step 9 harness (tests/kvm.py)
and runs ``bench/cpus.py guest`` from the checkout. Inside it:

* **memory**: each flow-map variant of bench/variants.py loaded with 65,536 flows; the kernel's own
  figure (fdinfo ``memlock``, what ``bpftool map show`` prints) for its flow maps;
* **read**: one whole-map read of 10k and 65,536 filled flows, CPU time of the thread, median of 5:
  every variant through ``CounterReader`` (batch lookup and, where per-CPU, the sum over CPUs), and
  the shipped map through the map iterator (``IterReader``, ``shared-iter``);
* **agent**: ``xtrace-catch run -m tc`` on a veth in namespaces of the guest, 10k and then 65,536
  flows sent every 5 s interval from the peer for 3 intervals (longer where the guest is slow),
  then 2 more intervals and SIGINT (the agent's last interval); CPU per interval after attach
  (rusage minus the CPU at attach, over the intervals), peak RSS (rusage ``ru_maxrss``), and
  packets sent = packets counted (+ overflowed, if the map filled) from the last summary record
  (+ any the kernel dropped from a full backlog before the hook, /proc/net/softnet_stat);
  the agent's threads and the whole guest's busy CPU time over the same intervals. The agent runs
  first, each run once the guest is idle (the kernel frees big maps in workers long after their
  fds close); a fixed Python + numpy workload timed just before gives a calibration, since
  guests of different sizes emulate at different speeds.

Guests run under KVM where /dev/kvm runs stock kernels; these development VMs' /dev/kvm is kvm_pvm,
which cannot (docs: tests/kvm.py), so qemu's TCG emulation is used: every CPU time is then inflated
by emulation alike in every guest, so compare guests by ratio, not by absolute time. Nothing is
asserted; the table and the anomalies are printed and written to bench/results/cpus.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common

BENCH = common.BENCH_DIR
REPO = common.REPO

MARK = "XTRACE-BENCH="
INTERVAL_MS = 5000
MEM_FLOWS = 65536
DEFAULT_CPUS = (2, 16, 64, 128)
DEFAULT_FLOWS = (10_000, 65_536)


def _progress(msg: str) -> None:
    common.progress("cpus", msg)


# -- in the guest ---------------------------------------------------------------------------------


def _variant_memory(paths: dict[str, Path]) -> dict[str, int]:
    from variants import map_memory

    from xtrace_catch.kernel.object import BpfObject

    out = {}
    for name, path in paths.items():
        with BpfObject.from_file(path) as obj:
            obj.set_max_entries("flows", MEM_FLOWS)
            if name == "hot16":
                obj.set_max_entries("flow_extras", MEM_FLOWS)
            obj.load()
            out[name] = map_memory(obj)
    return out


def _read_cost(paths: dict[str, Path], flows: int) -> dict[str, float]:
    """CPU seconds of one whole-map read through CounterReader, by variant (median of 5)."""
    import traffic

    from xtrace_catch.kernel import libbpf
    from xtrace_catch.kernel.maps import IterReader
    from xtrace_catch.kernel.object import BpfObject

    keys = traffic.flow_keys(flows).tobytes()
    out = {}
    for name, path in paths.items():
        with BpfObject.from_file(path) as obj:
            obj.set_max_entries("flows", max(flows, 1024))
            obj.load()
            m = obj.map("flows")
            fields = m.slot // 8 if name == "hot16" else 12
            vals = (b"\x01" + bytes(7)) * (m.value_len // 8)  # every counter 1, on every CPU
            for lo in range(0, flows, 4096):
                n = min(4096, flows - lo)
                m.update_batch(keys[lo * 48:(lo + n) * 48], vals * n, n)
            out[name] = _median_read(m.counter_reader(fields), name, flows)
            if name == "shared":  # what ships: the map iterator, where the kernel links it
                try:
                    link = libbpf.get().map_iter_link(obj.prog_fd("xtrace_read_flows"), m.fd)
                except OSError as exc:
                    _progress(f"guest: no iterator read ({exc})")
                    continue
                try:
                    out["shared-iter"] = _median_read(IterReader(m, link, fields), name, flows)
                finally:
                    os.close(link)
    return out


def _median_read(reader, name: str, flows: int) -> float:  # noqa: ANN001 - CounterReader | IterReader
    times = []
    for _ in range(5):
        t0 = time.thread_time()
        k, _s = reader.read()
        times.append(time.thread_time() - t0)
        if len(k) != flows:
            raise RuntimeError(f"{name}: read {len(k)} flows of {flows}")
    return statistics.median(times)


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)  # idle and iowait are fields 4 and 5


def _backlog_drops() -> int:
    """Frames the kernel dropped from full per-CPU backlogs (/proc/net/softnet_stat, 2nd column),
    all CPUs: a veth's frames wait there for the receive softirq, before any TC hook sees them."""
    with open("/proc/net/softnet_stat") as fh:
        return sum(int(ln.split()[1], 16) for ln in fh)


def _wait_quiet(limit_cpus: float = 0.05, timeout: float = 600.0) -> float:
    """Wait until the guest as a whole is idle (< `limit_cpus` CPUs busy over 2 s): after boot and
    after freeing big maps the kernel's workers run on other vCPUs, and under TCG they take the
    host cores from the vCPU that runs the agent, whose measured CPU time then grows. Returns
    the seconds waited."""
    t0 = time.monotonic()
    ncpu = os.cpu_count() or 1
    while time.monotonic() - t0 < timeout:
        b0, t_0 = _busy_jiffies()
        time.sleep(2)
        b1, t_1 = _busy_jiffies()
        if (b1 - b0) / max(1, t_1 - t_0) * ncpu < limit_cpus:
            break
    return time.monotonic() - t0


def _calibrate() -> float:
    """CPU seconds of a fixed Python + numpy workload like the collector's (median of 3): what
    one CPU second buys in this guest, to compare guests whose emulation speed differs."""
    import numpy as np

    rng = np.random.default_rng(1)
    data = rng.integers(0, 2**63, 200_000, dtype=np.uint64)
    times = []
    for _ in range(3):
        t0 = time.thread_time()
        for _ in range(5):
            np.argsort(data, kind="stable")
        sum(i * i for i in range(300_000))
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def _agent(flows: int, sending: int = 3, idle: int = 2) -> dict[str, object]:
    """The agent on a veth with `flows` flows sent each interval for `sending` intervals."""
    import netenv
    import netns
    import traffic
    from agent import GENERATOR

    res: dict[str, object] = {"flows": flows}
    with tempfile.TemporaryDirectory(prefix="xb-cpus-") as tmp, netns.veth_pair(prefix="xbc") as pair:
        frame_file = Path(tmp) / "frames.hex"
        frame_file.write_text("\n".join(f.hex() for f in traffic.many_ipv4_udp(flows)))
        out_file = Path(tmp) / "agent.jsonl"
        cmd = ["ip", "netns", "exec", pair.ns, *netns.xtrace_cmd(), "run", "-i", pair.ifname, "-m", "tc",
               "-d", "ingress", "-t", str(INTERVAL_MS), "--output", "json"]
        env = {**os.environ, "XTRACE_STATE_DIR": tmp}
        with out_file.open("w") as out:
            agent = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
            assert agent.stderr is not None
            err: list[str] = []
            attached = threading.Event()
            at_attach: list[float] = []

            def pump() -> None:
                for line in agent.stderr:  # type: ignore[union-attr]
                    err.append(line.rstrip())
                    if "attached" in line and not attached.is_set():
                        try:
                            at_attach.append(netenv.cpu_seconds(agent.pid))
                            at_attach.append(netenv.cpu_seconds(agent.pid, system=False))
                        except OSError:
                            pass
                        attached.set()

            t = threading.Thread(target=pump, daemon=True)
            t.start()
            if not attached.wait(600):
                agent.kill()
                raise RuntimeError(f"agent did not attach: {err[-5:]}")
            threads, done = [0], threading.Event()

            def count_threads() -> None:  # the most the agent ran at once (no poll(): wait4 reaps it)
                while not done.is_set():
                    try:
                        threads[0] = max(threads[0], len(os.listdir(f"/proc/{agent.pid}/task")))
                    except OSError:
                        return
                    time.sleep(0.5)

            threading.Thread(target=count_threads, daemon=True).start()
            busy0, drops0 = _busy_jiffies(), _backlog_drops()
            gen_cmd = [sys.executable, "-c", GENERATOR, pair.peer_if, str(frame_file), str(INTERVAL_MS / 1000),
                       str(sending * INTERVAL_MS / 1000 - 0.5)]
            gen = netns.in_ns(pair.peer_ns, gen_cmd, timeout=1800)
            # Stop once the sender is done and `idle` more intervals have read what it sent: a slow
            # guest sends for longer than `sending` intervals, and a fixed --count would stop the
            # agent (and its hook) while frames still flow.
            time.sleep(idle * INTERVAL_MS / 1000 + 1)
            agent.send_signal(signal.SIGINT)
            _pid, status, ru = os.wait4(agent.pid, 0)
            busy1, drops1 = _busy_jiffies(), _backlog_drops()
            done.set()
            agent.returncode = os.waitstatus_to_exitcode(status)
            t.join(10)
        recs = [json.loads(line) for line in out_file.read_text().splitlines()]
    m = re.search(r"sent (\d+) frames", gen.stdout)
    sent = int(m[1]) if m else -1
    summaries = [r for r in recs if r.get("record") == "summary"]
    flow_packets = sum(int(r["packets"]) for r in recs if r.get("record", "flow") == "flow")  # flow lines carry no "record" yet
    last = summaries[-1] if summaries else {}
    cpu = ru.ru_utime + ru.ru_stime - (at_attach[0] if at_attach else 0.0)
    guest_busy = (busy1[0] - busy0[0]) / os.sysconf("SC_CLK_TCK")  # every process and the kernel
    res.update({
        "rc": agent.returncode, "sent": sent, "seen": last.get("packets_seen_total"),
        "counted": last.get("packets_counted_total"), "overflowed": last.get("packets_overflowed_total"),
        "flow_packets": flow_packets, "intervals": len(summaries),
        "cpu_per_interval": cpu / max(1, len(summaries)),
        "user_per_interval": (ru.ru_utime - (at_attach[1] if at_attach else 0.0)) / max(1, len(summaries)),
        "peak_rss_mb": ru.ru_maxrss / 1024,
        "map_memory_bytes": last.get("map_memory_bytes"), "threads": threads[0], "backlog_drops": drops1 - drops0,
        "guest_busy_per_interval": guest_busy / max(1, len(summaries)), "stderr": err[-3:],
    })
    return res


def guest(flow_counts: list[int], variant_dir: Path, agent_only: bool = False) -> dict[str, object]:
    from variants import VARIANTS

    from xtrace_catch.kernel import libbpf

    paths = {name: variant_dir / f"xtrace-{name}.bpf.o" for name in VARIANTS}
    out: dict[str, object] = {"cpus": os.cpu_count(), "possible": libbpf.get().ncpus, "kernel": os.uname().release}
    _progress(f"guest: {out}")
    # The agent first: the variants' maps (the per-CPU one is 65,536 x 96 B x CPUs) are freed by
    # kernel workers long after their fds close, and that work would be billed to the agent.
    out["agent"] = []
    for n in flow_counts:
        waited = _wait_quiet()
        out["calib_s"] = _calibrate()
        _progress(f"guest: agent with {n} flows (quiet after {waited:.0f} s, calibration {out['calib_s']:.3f} s)")
        try:
            out["agent"].append({**_agent(n), "waited_s": waited})  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a result, reported
            out["agent"].append({"flows": n, "error": str(exc)[-300:]})  # type: ignore[attr-defined]
    if not agent_only:
        out["memory"] = _variant_memory(paths)
        out["read"] = {str(n): _read_cost(paths, n) for n in flow_counts}
    return out


# -- on the host ----------------------------------------------------------------------------------


def _boot(cpus: int, kernel: str, accel: str, flow_counts: list[int], variant_dir: Path,
          agent_only: bool = False) -> dict[str, object]:
    import kvm

    k = {x.name: x for x in kvm.read_kernels()}[kernel]
    tree = kvm.host_tree() if k.source == "host" else kvm.unpack(kvm.resolve_package(k.source[4:]))
    if tree is None:
        raise kvm.HarnessError("the host's kernel image is not on disk")
    cmd = [sys.executable, str(BENCH / "cpus.py"), "guest", "--flows", ",".join(map(str, flow_counts)),
           "--variants", str(variant_dir), *(["--agent-only"] if agent_only else [])]
    job = f"cd {shlex.quote(str(REPO))} && {shlex.join(cmd)}\n"
    mem = 2048 + 8 * cpus + 1200  # the per-CPU variant alone is 65,536 x 96 B x CPUs
    t0 = time.monotonic()
    rc, text = kvm.boot(tree, job, kvm.LOG_DIR / f"bench-cpus-{cpus}.log", smp=cpus, mem_mb=mem,
                        timeout=3600, accel=accel)
    found = [ln[len(MARK):] for ln in text.splitlines() if ln.startswith(MARK)]
    if rc != 0 or not found:
        raise kvm.HarnessError(f"guest with {cpus} CPUs: exit {rc}, no result (log: build/kernels/bench-cpus-{cpus}.log)")
    res = json.loads(found[-1])
    res["wall_s"] = time.monotonic() - t0
    return res


def _variant_tables(results: list[dict[str, object]]) -> list[str]:
    variants = list(results[0]["memory"])  # type: ignore[index]
    lines = ["Flow-map kernel memory at 65,536 flows (fdinfo memlock, MB):", "",
             "| CPUs | " + " | ".join(variants) + " |", "|---:|" + "---:|" * len(variants)]
    for r in results:
        lines.append(f"| {r['cpus']} | " + " | ".join(f"{r['memory'][v] / 1e6:.1f}" for v in variants) + " |")  # type: ignore[index]
    flows = list(results[0]["read"])  # type: ignore[index]
    readers = list(results[0]["read"][flows[0]])  # type: ignore[index]
    lines += ["", "One whole-map read, CPU ms: batch lookups (+ the per-CPU sum where per-CPU); shared-iter is",
              "the shipped read through the map iterator:", "",
              "| CPUs | " + " | ".join(f"{v} {int(n) // 1000}k" for n in flows for v in readers) + " |",
              "|---:|" + "---:|" * (len(flows) * len(readers))]
    for r in results:
        lines.append(f"| {r['cpus']} | " + " | ".join(
            f"{r['read'][n][v] * 1e3:.1f}" if v in r['read'][n] else "-"  # type: ignore[index, operator]
            for n in flows for v in readers) + " |")
    return [*lines, ""]


def _table(results: list[dict[str, object]], accel: str, anomalies: list[str]) -> str:
    lines = [f"## Many CPUs: Debian 12's kernel in guests ({accel.upper()})", ""]
    if all("memory" in r for r in results):  # not with --agent-only
        lines += _variant_tables(results)
    lines += [f"The agent (shipped object, TC ingress, JSON lines, {INTERVAL_MS} ms intervals):", "",
              "| CPUs | flows | CPU per interval (s) | user / system | vs 2 CPUs | calibrated vs 2 CPUs "
              "| whole guest busy (CPU s) | threads | intervals | peak RSS (MB) | sent | backlog drops | counted "
              "| overflowed | exact |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    base = {a["flows"]: a.get("cpu_per_interval") for a in results[0]["agent"]}  # type: ignore[index]
    calib0 = results[0].get("calib_s") or 1.0
    for r in results:
        for a in r["agent"]:  # type: ignore[attr-defined]
            if "error" in a:
                lines.append(f"| {r['cpus']} | {a['flows']} | error |" + " |" * 11 + f" {a['error'][:80]} |")
                anomalies.append(f"{r['cpus']} CPUs, {a['flows']} flows: {a['error']}")
                continue
            drops = a.get("backlog_drops", 0)
            # Exact: every frame the hook saw is counted (or overflowed) and in the flow records;
            # the sender's frames are those, plus any the kernel dropped before the hook (shown).
            exact = (a["counted"] or 0) + (a["overflowed"] or 0) == a["seen"] and \
                a["flow_packets"] == a["counted"] and a["sent"] == a["seen"] + drops
            if not exact or a["rc"] != 0:
                anomalies.append(f"{r['cpus']} CPUs, {a['flows']} flows: rc {a['rc']}, sent {a['sent']}, seen "
                                 f"{a['seen']}, counted {a['counted']}, in flow records {a['flow_packets']}, "
                                 f"dropped by the kernel before the hook (backlog) {drops}")
            b = base.get(a["flows"])
            ratio = f"{a['cpu_per_interval'] / b:.2f}x" if b else "-"
            scale = (r.get("calib_s") or 1.0) / calib0  # type: ignore[operator]
            cal = f"{a['cpu_per_interval'] / scale / b:.2f}x" if b else "-"
            user = a.get("user_per_interval")
            split = f"{user:.2f} / {a['cpu_per_interval'] - user:.2f}" if user is not None else "-"
            lines.append(f"| {r['cpus']} | {a['flows']:,} | {a['cpu_per_interval']:.2f} | {split} | {ratio} | {cal} | "
                         f"{a['guest_busy_per_interval']:.2f} | {a['threads']} | {a['intervals']} | "
                         f"{a['peak_rss_mb']:.0f} | {a['sent']:,} | {drops:,} | {a['counted']:,} | {a['overflowed']:,} | "
                         f"{'yes' if exact else 'NO'} |")
    lines += ["", "Calibrated: divided by the guest's time for a fixed Python + numpy workload relative to the first "
              "guest's (" + ", ".join(f"{r['cpus']} vCPUs {r.get('calib_s', 0):.3f} s" for r in results) + ").",
              "", "Guests: " + "; ".join(f"{r['cpus']} vCPUs ({r['possible']} possible), Linux {r['kernel']}, "
                                        f"{r['wall_s']:.0f} s" for r in results),
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/cpus.py", description=__doc__.split("\n", 1)[0])
    sub = ap.add_subparsers(dest="cmd")
    g = sub.add_parser("guest", help="(inside a guest) measure and print one result line")
    g.add_argument("--flows", default=",".join(map(str, DEFAULT_FLOWS)))
    g.add_argument("--variants", required=True)
    g.add_argument("--agent-only", action="store_true")
    ap.add_argument("--cpus", default=os.environ.get("CPUS", ",".join(map(str, DEFAULT_CPUS))))
    ap.add_argument("--flows", default=",".join(map(str, DEFAULT_FLOWS)))
    ap.add_argument("--kernel", default="6.1", help="a name from tests/kernels.txt")
    ap.add_argument("--agent-only", action="store_true", help="only the agent runs (no variant memory and reads)")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=os.environ.get("XTRACE_ACCEL", "auto"))
    args = ap.parse_args(argv)
    if args.cmd == "guest":
        res = guest([int(x) for x in args.flows.split(",")], Path(args.variants), args.agent_only)
        print(MARK + json.dumps(res), flush=True)
        return 0

    import kvm
    from variants import build_variants

    t0 = time.monotonic()
    accel = kvm.default_accel() if args.accel == "auto" else args.accel
    cpus = [int(x) for x in args.cpus.split(",")]
    flow_counts = [int(x) for x in args.flows.split(",")]
    variant_dir = build_variants().get("shared")
    assert variant_dir is not None
    results = []
    try:
        for n in cpus:
            _progress(f"booting a guest with {n} vCPUs ({accel})")
            results.append(_boot(n, args.kernel, accel, flow_counts, variant_dir.parent, args.agent_only))
            _progress(f"{n} vCPUs done in {results[-1]['wall_s']:.0f} s")
    except kvm.HarnessError as exc:
        print(f"bench/cpus.py: error: {exc}", file=sys.stderr)
        if not results:
            return 2
    anomalies: list[str] = []
    text = common.finish(_table(results, accel, anomalies), anomalies, "cpus", time.monotonic() - t0)
    common.publish("cpus", common.header(shlex.join(["bench/cpus.py", *(sys.argv[1:] if argv is None else argv)]), None)
                   + text)
    return 0 if len(results) == len(cpus) else 1


if __name__ == "__main__":
    sys.exit(main())
