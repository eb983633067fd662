"""End to end (kernel tier, root): the CLI as a user runs it, in a fresh namespace pair,
real UDP traffic, a real VictoriaMetrics inside the agent's namespace, exact counts.

Each test sends an exact number of datagrams of known size from the peer namespace to
the agent's veth (IPv6 off in both namespaces, static neighbours: nothing else arrives)
and checks what VictoriaMetrics stored (or what /metrics serves): the last value of the
counters, the full label set, one sample per interval and metric, nothing twice.
Faults: VictoriaMetrics down at start, restarted mid-run, and a 401 for bad credentials.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netns import AGENT_IP4, PEER_IP4, Agent, VethPair, in_ns, send_udp, veth_pair, wait_seen
from vm import VictoriaMetrics, VmAgent, by_name, http, last_value, victoria_metrics  # noqa: F401 (fixture)

pytestmark = pytest.mark.kernel

INTERVAL_MS = 200
SPORT, DPORT = 40000, 5000
PAYLOAD = 100
WIRE = 14 + 20 + 8 + PAYLOAD  # Ethernet + IPv4 + UDP + payload, no FCS
FLOW_METRICS = ("xtrace_network_bytes_total", "xtrace_network_packets_total", "xtrace_network_flow_bytes",
                "xtrace_network_flow_packets")
WAIT = 20.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        in_ns(p.ns, ["ip", "link", "set", "lo", "up"])  # VictoriaMetrics / /metrics on 127.0.0.1 in there
        yield p


def agent_args(p: VethPair, count: int | None, *extra: str) -> list[str]:
    args = ["run", "-i", p.ifname, "-m", "tc", "-d", "ingress", "-t", str(INTERVAL_MS)]
    if count is not None:
        args += ["--count", str(count)]
    return [*args, *extra]


def push_args(url: str) -> list[str]:
    return ["--vm-enabled", "--vm-url", url, "--collect-agg", "e2e"]


def flow_labels(p: VethPair) -> dict[str, str]:
    return {"src_ip": PEER_IP4, "dst_ip": AGENT_IP4, "src_port": str(SPORT), "dst_port": str(DPORT),
            "protocol": "17", "traffic_type": "UDP", "direction": "ingress", "interface": p.ifname,
            "host_ip": AGENT_IP4, "collect_agg": "e2e"}


def send(p: VethPair, n: int) -> None:
    send_udp(p.peer_ns, PEER_IP4, SPORT, AGENT_IP4, DPORT, [bytes([i % 251]) * PAYLOAD for i in range(n)])


def intervals_done(a: Agent) -> int:
    return sum(1 for line in list(a.out) if line.startswith("--- interval "))


def wait_intervals(a: Agent, n: int, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(2000):
        if intervals_done(a) >= n or time.monotonic() > deadline:
            break
        assert a.proc is not None
        if a.proc.poll() is not None:
            break
        time.sleep(0.02)
    assert intervals_done(a) >= n, f"agent printed {intervals_done(a)} of {n} intervals; stderr: {a.err}"


def run_counted(a: Agent, count: int) -> None:
    rc = a.wait(timeout=count * INTERVAL_MS / 1000 + WAIT)
    assert rc == 0, f"agent exited {rc}; stderr: {a.err}"
    assert intervals_done(a) == count


def check_stored(vm: VictoriaMetrics, p: VethPair, packets: int, intervals: int) -> list[dict[str, object]]:
    """What VictoriaMetrics holds after a run of `intervals` intervals that saw `packets` datagrams."""

    def complete(series: list[dict[str, object]]) -> bool:
        pk = by_name(series, "xtrace_network_packets_total")
        ft = by_name(series, "xtrace_agent_flows_tracked")
        return (len(pk) == 1 and last_value(pk[0]) == packets and len(ft) == 1
                and len(set(ft[0]["timestamps"])) >= intervals)  # type: ignore[arg-type]

    series = vm.wait_export('{__name__=~"xtrace_.*"}', complete, timeout=WAIT)
    flows = [s for s in series if s["metric"]["__name__"] in FLOW_METRICS]  # type: ignore[index]
    # Exactly one flow, each metric once, with the full label set.
    assert sorted((s["metric"] for s in flows), key=str) == sorted(  # type: ignore[misc]
        ({"__name__": n, **flow_labels(p)} for n in FLOW_METRICS), key=str)
    got = {s["metric"]["__name__"]: s for s in flows}  # type: ignore[index]
    assert last_value(got["xtrace_network_packets_total"]) == packets
    assert last_value(got["xtrace_network_bytes_total"]) == packets * WIRE
    # Every interval's gauge arrived once: the deltas add up to the total.
    for name, per in (("xtrace_network_flow_packets", 1), ("xtrace_network_flow_bytes", WIRE)):
        ts = got[name]["timestamps"]
        assert len(ts) == len(set(ts)), f"{name}: a timestamp stored twice"  # type: ignore[arg-type]
        assert sum(got[name]["values"]) == packets * per  # type: ignore[arg-type]
    # One xtrace_agent_flows_tracked sample per interval, each once.
    (ft,) = by_name(series, "xtrace_agent_flows_tracked")
    assert len(ft["timestamps"]) == len(set(ft["timestamps"])) == intervals  # type: ignore[arg-type]
    assert ft["metric"] == {"__name__": "xtrace_agent_flows_tracked", "interface": p.ifname,
                            "host_ip": AGENT_IP4, "collect_agg": "e2e"}
    (dropped,) = by_name(series, "xtrace_agent_samples_dropped_total")
    assert last_value(dropped) == 0
    return series


# -- push, both formats ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/import/prometheus", "/api/v1/write"], ids=["text", "remote-write"])
def test_push_exact_counts(path: str, pair: VethPair, victoria_metrics: Callable[..., VictoriaMetrics]) -> None:
    vm = victoria_metrics(ns=pair.ns)
    count, n = 12, 37
    with Agent(pair.ns, agent_args(pair, count, *push_args(vm.url(path))), env=pair.env) as a:
        a.wait_stderr(f"TC program attached to {pair.ifname} (ingress)")
        fmt = "remote_write" if path.endswith("/write") else "text"
        a.wait_stderr(f"pushing metrics to {vm.url(path)} ({fmt})")
        send(pair, n)
        wait_seen(pair.ns, pair.ifname, n)
        run_counted(a, count)
    series = check_stored(vm, pair, n, count)
    (failures,) = by_name(series, "xtrace_agent_push_failures_total")
    assert last_value(failures) == 0
    assert not [line for line in a.err if "error" in line.lower() or "Traceback" in line], a.err


# -- faults ---------------------------------------------------------------------------------


def test_victoria_metrics_starts_after_the_agent(pair: VethPair,
                                                 victoria_metrics: Callable[..., VictoriaMetrics]) -> None:
    vm = victoria_metrics(ns=pair.ns, start=False)
    count, n = 15, 23
    with Agent(pair.ns, agent_args(pair, count, *push_args(vm.url("/api/v1/import/prometheus"))),
               env=pair.env) as a:
        a.wait_stderr("TC program attached")
        send(pair, n)
        wait_seen(pair.ns, pair.ifname, n)
        wait_intervals(a, 4)  # pushes have failed by now: nobody listens
        # Said at once, with the reason, while it lasts; in the summary line too.
        refused = f"connection to 127.0.0.1:{vm.port} refused: nothing listens there"
        a.wait_stderr(f"pushing to {vm.url('/api/v1/import/prometheus')} failed: {refused}")
        assert any("push FAILING" in line and refused in line for line in a.out if line.startswith("--- interval"))
        vm.start()
        assert intervals_done(a) < count, "the agent finished before VictoriaMetrics started; raise count"
        run_counted(a, count)
        line = a.wait_stderr("recovered after")
    series = check_stored(vm, pair, n, count)
    (failures,) = by_name(series, "xtrace_agent_push_failures_total")
    assert last_value(failures) >= 1
    (late,) = by_name(series, "xtrace_agent_samples_late_total")
    m = re.search(r"failed attempts\): (\d+) samples delivered late, 0 dropped$", line)
    # Every batch queued while it was down came late (the metric's last value is from a batch
    # made before the backlog went out: it may be lower).
    assert m and int(m.group(1)) >= 4 * 4 and 0 <= last_value(late) <= int(m.group(1)), (line, last_value(late))
    # One line when it failed, one when it recovered: the run was shorter than a minute.
    assert len([e for e in a.err if "xtrace_catch.export.push" in e]) == 2, a.err
    (cons,) = by_name(series, "xtrace_agent_push_consecutive_failures")
    assert last_value(cons) == 0
    # The first batch was made before any push failed (reason "none"), the later ones after.
    errs = {s["metric"]["reason"]: s for s in by_name(series, "xtrace_agent_push_last_error_timestamp_seconds")}  # type: ignore[index]
    assert set(errs) <= {"none", "refused"} and last_value(errs["refused"]) > 0, errs


def test_dns_failure_is_said_with_the_name(pair: VethPair) -> None:
    """A VictoriaMetrics host name that does not resolve. The namespace's resolver is 127.0.0.1
    (ip netns exec mounts /etc/netns/NS/resolv.conf), where nothing listens: no query leaves it."""
    etc = Path("/etc/netns") / pair.ns
    etc.mkdir(parents=True, exist_ok=False)
    try:
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        url = "http://vm.xtrace-test.invalid:8428/api/v1/write"
        count = 6
        with Agent(pair.ns, agent_args(pair, count, *push_args(url), "--output", "json"), env=pair.env) as a:
            line = a.wait_stderr("DNS lookup of vm.xtrace-test.invalid failed")
            run_counted_json(a, count)
    finally:
        for f in etc.iterdir():
            f.unlink()
        etc.rmdir()
    assert line.startswith(f"xtrace-catch: WARNING xtrace_catch.export.push: pushing to {url} failed: DNS lookup of "
                           "vm.xtrace-test.invalid failed"), line
    summaries = [r for r in a.records() if r["record"] == "summary"]
    assert len(summaries) == count
    last = summaries[-1]
    assert last["push_successes"] == 0 and last["push_consecutive_failures"] >= 1
    assert str(last["push_last_error"]).startswith("DNS lookup of vm.xtrace-test.invalid failed")
    assert any("exiting with" in e and "(last error: DNS lookup of" in e for e in a.err), a.err


def run_counted_json(a: Agent, count: int) -> None:
    rc = a.wait(timeout=count * INTERVAL_MS / 1000 + WAIT)
    assert rc == 0, f"agent exited {rc}; stderr: {a.err}"


def test_victoria_metrics_restarted_mid_run_loses_nothing(pair: VethPair,
                                                          victoria_metrics: Callable[..., VictoriaMetrics]) -> None:
    vm = victoria_metrics(ns=pair.ns)
    count, n1, n2 = 25, 11, 17
    with Agent(pair.ns, agent_args(pair, count, *push_args(vm.url("/api/v1/write"))), env=pair.env) as a:
        a.wait_stderr("TC program attached")
        send(pair, n1)
        wait_seen(pair.ns, pair.ifname, n1)
        wait_intervals(a, 3)
        vm.stop()  # graceful: what it acknowledged is on disk
        down_from = intervals_done(a)
        send(pair, n2)
        wait_seen(pair.ns, pair.ifname, n1 + n2)
        wait_intervals(a, down_from + 3)  # intervals produced while VictoriaMetrics is down
        down_to = intervals_done(a)
        assert down_to < count, "the agent finished before VictoriaMetrics came back; raise count"
        vm.start()
        run_counted(a, count)
    assert vm.starts == 2
    series = check_stored(vm, pair, n1 + n2, count)
    (failures,) = by_name(series, "xtrace_agent_push_failures_total")
    assert last_value(failures) >= 1


# -- the fleet path: agent -> vmagent -> VictoriaMetrics ----------------------------------------

OUTAGE_S = 30.0


def test_fleet_path_through_vmagent_survives_a_30s_outage(pair: VethPair, tmp_path: Path,
                                                          victoria_metrics: Callable[..., VictoriaMetrics]) -> None:
    """The recommended fleet topology: the agent pushes to a (node-local) vmagent, which forwards
    by remote write. VictoriaMetrics goes away for 30 s; vmagent buffers on disk, the agent never
    notices, and every interval's samples arrive exactly once."""
    vm = victoria_metrics(ns=pair.ns)
    agent = VmAgent(tmp_path / "vmagent", vm, ns=pair.ns).start()
    count, n1, n2 = 200, 13, 19  # 200 intervals of 200 ms: the outage falls inside
    try:
        with Agent(pair.ns, agent_args(pair, count, *push_args(agent.url("/api/v1/write"))), env=pair.env) as a:
            a.wait_stderr("TC program attached")
            send(pair, n1)
            wait_seen(pair.ns, pair.ifname, n1)
            wait_intervals(a, 5)
            # Through vmagent to VictoriaMetrics before the outage.
            got = vm.wait_export('{__name__="xtrace_network_packets_total"}',
                                 lambda ss: len(ss) == 1 and last_value(ss[0]) == n1, timeout=WAIT)
            assert len(got) == 1 and last_value(got[0]) == n1, got
            vm.stop()
            down_from = intervals_done(a)
            send(pair, n2)
            wait_seen(pair.ns, pair.ifname, n1 + n2)
            time.sleep(OUTAGE_S)  # the outage itself: a fixed length, not a wait for an event
            assert http(pair.ns, "GET", vm.url("/health"), timeout=2)[0] == 0  # it really was down
            down_to = intervals_done(a)
            assert down_to - down_from >= OUTAGE_S * 1000 / INTERVAL_MS * 0.8, (down_from, down_to)
            assert down_to < count, "the agent finished before VictoriaMetrics came back; raise count"
            vm.start()
            run_counted(a, count)
        # vmagent retries a block with doubling backoff (2, 4, ... 32 s, up to a minute in 1.79): the
        # samples held through the outage may arrive half a minute after VictoriaMetrics is back.
        series = vm.wait_export('{__name__=~"xtrace_.*"}', lambda ss: any(
            len(s["timestamps"]) == count for s in by_name(ss, "xtrace_agent_flows_tracked")),  # type: ignore[arg-type]
            timeout=90)
    finally:
        agent.kill()
    assert vm.starts == 2
    series = check_stored(vm, pair, n1 + n2, count)
    (failures,) = by_name(series, "xtrace_agent_push_failures_total")
    assert last_value(failures) == 0  # vmagent took every push; the outage was behind it
    assert not [e for e in a.err if "xtrace_catch.export.push" in e], a.err


_REFUSER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        print("POST", self.path, self.headers.get("Authorization", "-"), flush=True)
        body = b"Unauthorized: wrong user or password\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="vm"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("READY", flush=True)
srv.serve_forever()
"""


class NsProcess:
    """A Python script inside a namespace; stdout lines collected; always killed."""

    def __init__(self, ns: str, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(2000):
            if any(text in line for line in list(self.lines)) or self.proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert any(text in line for line in self.lines), f"no {text!r} from {self.proc.args}: {self.lines}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.thread.join(5)
        for s in (self.proc.stdout, self.proc.stderr):
            if s:
                s.close()


def test_bad_credentials_one_clear_line_agent_keeps_running(pair: VethPair, tmp_path: Path) -> None:
    password = "e2e-s3cr3t-pw"
    pw_file = tmp_path / "vm-password"
    pw_file.write_text(password + "\n")
    port, count = 18428, 8
    url = f"http://127.0.0.1:{port}/api/v1/import/prometheus"
    srv = NsProcess(pair.ns, _REFUSER, str(port))
    try:
        srv.wait_line("READY")
        with Agent(pair.ns, agent_args(pair, count, *push_args(url), "--vm-username", "alice",
                                       "--vm-password-file", str(pw_file)), env=pair.env) as a:
            a.wait_stderr("TC program attached")
            send(pair, 5)
            run_counted(a, count)
    finally:
        srv.kill()
    posts = [line for line in srv.lines if line.startswith("POST ")]
    assert len(posts) == count, posts  # one per interval: refused, dropped, never retried
    assert all(line.startswith("POST /api/v1/import/prometheus Basic ") for line in posts)
    assert a.err == [
        f"xtrace-catch: TC program attached to {pair.ifname} (ingress)",
        f"xtrace-catch: pushing metrics to {url} (text)",
        "xtrace-catch: ERROR xtrace_catch.export.push: VictoriaMetrics refused a push with HTTP 401 "
        "(check the credentials): Unauthorized: wrong user or password",
    ]
    assert all(password not in line for line in a.out)


# -- /metrics ----------------------------------------------------------------------------------


def test_metrics_endpoint_promtool_and_values(pair: VethPair) -> None:
    port, n = 19435, 29
    with Agent(pair.ns, agent_args(pair, None, "--metrics-addr", f"127.0.0.1:{port}", "--collect-agg", "e2e"),
               env=pair.env) as a:
        a.wait_stderr("TC program attached")
        a.wait_stderr(f"serving /metrics on 127.0.0.1:{port}")
        send(pair, n)
        wait_seen(pair.ns, pair.ifname, n)
        want = "{" + ",".join(f'{k}="{v}"' for k, v in flow_labels(pair).items()) + "}"
        url = f"http://127.0.0.1:{port}/metrics"
        body = ""
        deadline = time.monotonic() + WAIT
        for _ in range(1000):
            status, raw = http(pair.ns, "GET", url)
            body = raw.decode()
            if status == 200 and f"xtrace_network_packets_total{want} {n}\n" in body:
                break
            assert time.monotonic() < deadline, f"/metrics never showed {n} packets: {body}"
            time.sleep(0.05)
        lines = body.splitlines()
        assert f"xtrace_network_packets_total{want} {n}" in lines
        assert f"xtrace_network_bytes_total{want} {n * WIRE}" in lines
        assert "# TYPE xtrace_network_bytes_total counter" in lines
        assert "# TYPE xtrace_network_flow_bytes gauge" in lines
        assert len([line for line in lines if line.startswith("xtrace_network_bytes_total{")]) == 1
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, f"promtool: {check.stdout}{check.stderr}\n{body}"
        ctype = in_ns(pair.ns, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{content_type} %{http_code}",
                                url]).stdout
        assert ctype == "text/plain; version=0.0.4; charset=utf-8 200"
        other = in_ns(pair.ns, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://127.0.0.1:{port}/"]).stdout
        assert other == "404"
        assert a.stop() == 0, a.err
