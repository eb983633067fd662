"""End to end (kernel tier, root): the compatibility surface a user's scripts rely on, as a
user drives it: Ctrl-C, the environment variables of DESIGN.md's CLI and metrics contracts,
and which of option and variable wins.

- SIGINT (Ctrl-C) does what SIGTERM does (DESIGN.md, CLI: "SIGINT/SIGTERM: emit the last
  interval, detach, exit 0"): in xdp and tc mode on a veth, and in rdma mode on a sysfs tree.
  Also at once after the 'attached' line (the agent held there by a full stderr pipe): from the
  first attach to the last detach a stop signal stays pending until the interval loop takes it.
- ``-i`` beats ``NETWORK_INTERFACE``; the variable alone names the interface; set to "" it is
  refused with one line and exit 2 (cli.py ``_check_empty_env``), unless ``-i`` is given.
- ``COLLECT_AGG`` (with ``VICTORIAMETRICS_ENABLED`` and ``VICTORIAMETRICS_REMOTE_WRITE``, no
  option given) reaches the ``collect_agg`` label of every series in a real VictoriaMetrics;
  ``--collect-agg`` beats ``COLLECT_AGG``.

A signal is sent only once the agent's interval loop has its handlers (read from
/proc/PID/status, SigCgt: a state, not a clock). Every wait is bounded; nothing asserts a time.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netns import (
    AGENT_IP4,
    PEER_IP4,
    TIME_SCALE,
    Agent,
    VethPair,
    _wait_oper_up,
    in_ns,
    kill,
    our_prog_ids,
    qdisc_kinds,
    run,
    send_frames,
    veth_pair,
    wait_seen,
    xtrace,
    xtrace_cmd,
)
from test_cli_errors import assert_usage_error
from test_e2e_run import (
    Key,
    Traffic,
    aggregate,
    assert_state,
    attached_line,
    check_accounting,
    expect_clean,
    start_agent,
    state_files,
    tc_ingress_traffic,
    udp4,
)
from test_export_e2e import FLOW_METRICS, WAIT, WIRE, agent_args, flow_labels, send
from test_rdma import ROCE, bump, copy_tree
from vm import VictoriaMetrics, by_name, last_value, victoria_metrics  # noqa: F401 (fixture)

pytestmark = pytest.mark.kernel

LONG = "600000"  # ms: no interval ends on its own during a test; the one printed is the signal's
# Variables the agent reads (DESIGN.md, cli.py): each test sets the ones it means, none leak in.
AGENT_VARS = ("NETWORK_INTERFACE", "COLLECT_AGG", "VICTORIAMETRICS_ENABLED", "VICTORIAMETRICS_REMOTE_WRITE",
              "XTRACE_SYSFS_ROOT", "VM_USERNAME", "VM_PASSWORD", "VM_PASSWORD_FILE", "VM_BEARER_TOKEN",
              "VM_BEARER_TOKEN_FILE")

# A second veth between the same two namespaces (interface B), on the other test network.
B_IF, B_PEER_IF = "xtenvb", "xtenvbp"
B_MAC, B_PEER_MAC = "02:00:00:00:02:01", "02:00:00:00:02:02"
B_IP4, B_PEER_IP4 = "203.0.113.1", "203.0.113.2"


def clean_env(pair: VethPair, **set_: str) -> dict[str, str]:
    """The pair's environment without any of the agent's variables, plus `set_`."""
    return {**{k: v for k, v in pair.env.items() if k not in AGENT_VARS}, **set_}


def wait_signal_handlers(a: Agent, timeout: float = 15.0) -> None:
    """Wait (bounded) until the agent catches SIGINT and SIGTERM: the interval loop installs both
    (SIGTERM last) when it starts; before that a signal would find the set-up, not the loop."""
    want = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    deadline = time.monotonic() + timeout * TIME_SCALE
    caught = 0
    for _ in range(2000):
        assert a.proc is not None and a.proc.poll() is None, f"agent exited {a.proc and a.proc.returncode}: {a.err}"
        status = Path(f"/proc/{a.pid}/status").read_text()
        caught = int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16)
        if caught & want == want or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert caught & want == want, f"agent never caught SIGINT and SIGTERM (SigCgt {caught:#x}); stderr: {a.err}"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        in_ns(p.ns, ["ip", "link", "set", "lo", "up"])  # VictoriaMetrics on 127.0.0.1 in there
        yield p


# -- 1: SIGINT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_sigint_prints_last_interval_detaches_exits_0(pair: VethPair, mode: str) -> None:
    direction = "both" if mode == "tc" else "ingress"  # tc -d both: the agent creates clsact itself
    t = tc_ingress_traffic()
    assert_state(pair, expect_clean(pair, False))
    with start_agent(pair, "-m", mode, "-d", direction, "-t", LONG) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached_line(pair, mode, direction)
        ids = our_prog_ids(pair.ns, pair.ifname)
        assert set(ids) == ({"xdp"} if mode == "xdp" else {"ingress", "egress"}), ids
        send_frames(pair.peer_ns, pair.peer_if, t.frames)
        assert wait_seen(pair.ns, pair.ifname, t.packets, hook="xdp" if mode == "xdp" else "ingress")["seen"] \
            == t.packets
        wait_signal_handlers(a)
        assert a.out == []  # nothing yet: the one interval is the one SIGINT ends
        a.signal(signal.SIGINT)
        assert a.wait() == 0, a.err
    assert a.err == [attached_line(pair, mode, direction)], a.err  # no traceback, no KeyboardInterrupt
    recs = a.records()
    summaries = check_accounting(recs, pair.ifname)
    assert len(summaries) == 1
    assert aggregate(recs, pair.ifname, AGENT_IP4) == t.only(lambda k: True)
    assert summaries[0]["packets_seen_total"] == t.packets
    # Detached: no program, no filter, and the clsact qdisc the tc run made is gone.
    assert_state(pair, expect_clean(pair, False))
    assert our_prog_ids(pair.ns, pair.ifname) == {}
    assert state_files(pair) == []


def test_sigint_rdma_mode_prints_last_interval_exits_0(pair: VethPair, tmp_path: Path) -> None:
    root = copy_tree(ROCE, tmp_path)
    args = ["-m", "rdma", "--sysfs-root", str(root), "--device", "mlx5_0", "--output", "json", "-t", LONG]
    with Agent(pair.ns, args, env=clean_env(pair)) as a:
        started = a.wait_stderr("xtrace-catch: ")
        assert started == f"xtrace-catch: reading port counters of mlx5_0 under {root}", started
        wait_signal_handlers(a)  # the baseline was read before the line above
        # Data counters count 4-byte words.
        for name, by in (("port_rcv_data", 2500), ("port_rcv_packets", 10), ("port_xmit_data", 750),
                         ("port_xmit_packets", 3)):
            bump(root, "mlx5_0", "counters", name, by)
        assert a.out == []
        a.signal(signal.SIGINT)
        assert a.wait() == 0, a.err
    assert a.err == [started], a.err
    recs = a.records()
    assert [(r["record"], r["device"], r["port"]) for r in recs] == [("rdma_port", "mlx5_0", 1)], recs
    (r,) = recs
    assert (r["rx_bytes"], r["rx_packets"], r["tx_bytes"], r["tx_packets"]) == (10_000, 10, 3000, 3), r
    assert (r["wrapped"], r["reset"]) == ([], [])


class HeldAtAttach:
    """The agent (tc, both directions) with a stderr pipe that is full before it starts: its first
    stderr write, the 'attached' line, blocks until the test reads. That holds it, attached, in the
    window between that line and its interval loop, however fast the machine. Always killed."""

    def __init__(self, pair: VethPair, out: Path) -> None:
        self.pair, self.out_path = pair, out
        self.err = b""
        self._reader: threading.Thread | None = None

    def __enter__(self) -> HeldAtAttach:
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(w, False)
        self.filler = 0
        for _ in range(1000):  # bounded: a 4 KiB pipe takes 8 of these
            try:
                self.filler += os.write(w, b"#" * 512)
            except BlockingIOError:
                break
        os.set_blocking(w, True)  # the flag is the open file's: the agent's writes must block
        self._r = r
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.pair.ns, *xtrace_cmd(), "-i", self.pair.ifname, "-m", "tc", "-d", "both",
                 "--output", "json", "-t", LONG], stdout=out, stderr=w, env=clean_env(self.pair))
        os.close(w)
        return self

    def wait_held(self, timeout: float = 20.0) -> None:
        """Until the agent is blocked writing to stderr (fd 2) with its programs attached."""
        deadline = time.monotonic() + timeout * TIME_SCALE
        for _ in range(2000):
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}"
            held = Path(f"/proc/{self.proc.pid}/syscall").read_text().split()[:2] == ["1", "0x2"]  # write(2, ...)
            if held and set(our_prog_ids(self.pair.ns, self.pair.ifname)) == {"ingress", "egress"}:
                return
            assert time.monotonic() < deadline, "the agent never blocked on stderr with its programs attached"
            time.sleep(0.01)

    def release(self) -> None:
        """Read stderr to its end in a thread: the agent goes on."""
        def drain() -> None:
            with os.fdopen(self._r, "rb") as f:
                self.err = f.read()
        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()

    def wait(self, timeout: float = 15.0) -> tuple[int, list[str], list[dict[str, object]]]:
        """Exit code, stderr lines (without the filler), stdout records."""
        rc = self.proc.wait(timeout=timeout)
        assert self._reader is not None
        self._reader.join(timeout)
        assert self.err[:self.filler] == b"#" * self.filler
        text = self.out_path.read_text()
        return rc, self.err[self.filler:].decode().splitlines(), [json.loads(x) for x in text.splitlines() if x]

    def __exit__(self, *exc: object) -> None:
        kill(self.proc)
        if self._reader is None:
            os.close(self._r)
        else:
            self._reader.join(5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_after_attached_line(pair: VethPair, tmp_path: Path, sig: int) -> None:
    """DESIGN.md: the 'attached' line says the agent is attached; SIGINT/SIGTERM then emit the
    last interval, detach, exit 0. A service manager may stop the agent the moment it says so."""
    with HeldAtAttach(pair, tmp_path / "out.jsonl") as a:
        a.wait_held()
        os.kill(a.proc.pid, sig)
        a.release()
        rc, err, recs = a.wait()
    state = (sorted(qdisc_kinds(pair.ns, pair.ifname)), our_prog_ids(pair.ns, pair.ifname))
    if state[1]:  # leave the namespace as we found it for the next step of the teardown
        xtrace(pair.ns, ["cleanup", "-i", pair.ifname], env=pair.env)
    assert (rc, state) == (0, (["noqueue"], {})), (rc, state, err)
    assert err == [attached_line(pair, "tc", "both")], err
    assert [r["interval"] for r in recs if r["record"] == "summary"] == [1], recs


# -- 2: -i and NETWORK_INTERFACE -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Two:
    """The pair's veth (A: pair.ifname) and a second one (B) in the same agent namespace."""

    pair: VethPair

    def name(self, which: str) -> str:
        return self.pair.ifname if which == "A" else B_IF

    def host_ip(self, which: str) -> str:
        return AGENT_IP4 if which == "A" else B_IP4

    def traffic(self, which: str) -> Traffic:
        """UDP the peer sends to interface `which` (4 frames on A, 3 on B: the counts tell them apart)."""
        t = Traffic()
        src, dst, sport, n = (PEER_IP4, AGENT_IP4, 41001, 4) if which == "A" else (B_PEER_IP4, B_IP4, 41002, 3)
        t.add(Key("ingress", src, dst, sport, 6000, 17, "UDP"), udp4(src, sport, dst, 6000, 50 + n), n=n)
        return t

    def send(self, which: str) -> Traffic:
        t = self.traffic(which)
        send_frames(self.pair.peer_ns, self.pair.peer_if if which == "A" else B_PEER_IF, t.frames)
        return t


@pytest.fixture
def two(pair: VethPair) -> Two:
    p = pair
    run(["ip", "-n", p.ns, "link", "add", B_IF, "address", B_MAC, "type", "veth",
         "peer", "name", B_PEER_IF, "address", B_PEER_MAC, "netns", p.peer_ns])
    run(["ip", "-n", p.ns, "addr", "add", f"{B_IP4}/24", "dev", B_IF])
    run(["ip", "-n", p.peer_ns, "addr", "add", f"{B_PEER_IP4}/24", "dev", B_PEER_IF])
    run(["ip", "-n", p.ns, "link", "set", B_IF, "up"])
    run(["ip", "-n", p.peer_ns, "link", "set", B_PEER_IF, "up"])
    _wait_oper_up(p.ns, B_IF)
    _wait_oper_up(p.peer_ns, B_PEER_IF)
    return Two(p)  # deleted with the namespaces


# (NETWORK_INTERFACE, -i, the interface watched); -i None: not given.
PRECEDENCE = [
    ("A", "B", "B"),  # -i wins over the variable
    ("B", "A", "A"),  # ... whichever interface each names
    ("B", None, "B"),  # the variable alone
    ("", "A", "A"),  # an empty variable is no error when -i names the interface
]


@pytest.mark.parametrize("env_if, cli_if, watched", PRECEDENCE,
                         ids=["cli-over-env", "cli-over-env-swapped", "env-only", "cli-over-empty-env"])
def test_interface_option_over_network_interface(two: Two, env_if: str, cli_if: str | None, watched: str) -> None:
    p, other = two.pair, "A" if watched == "B" else "B"
    env = clean_env(p, NETWORK_INTERFACE=two.name(env_if) if env_if else "")
    args = (["-i", two.name(cli_if)] if cli_if else []) + ["-m", "xdp", "--output", "json", "-t", LONG]
    attached = attached_line(dataclasses.replace(p, ifname=two.name(watched)), "xdp")
    with Agent(p.ns, args, env=env) as a:
        assert a.wait_stderr("xtrace-catch: ") == attached
        assert set(our_prog_ids(p.ns, two.name(watched))) == {"xdp"}
        assert our_prog_ids(p.ns, two.name(other)) == {}
        not_counted = two.send(other)
        counted = two.send(watched)
        st = wait_seen(p.ns, two.name(watched), counted.packets)
        assert st["seen"] == counted.packets, st  # the other interface's frames never reached it
        wait_signal_handlers(a)
        assert a.stop() == 0, a.err
    assert a.err == [attached], a.err
    recs = a.records()
    summaries = check_accounting(recs, two.name(watched))  # every record, the summary too, names it
    assert summaries[-1]["packets_seen_total"] == counted.packets
    assert aggregate(recs, two.name(watched), two.host_ip(watched)) == counted.only(lambda k: True)
    assert not_counted.packets != counted.packets
    for which in ("A", "B"):
        assert our_prog_ids(p.ns, two.name(which)) == {}


def test_empty_network_interface_alone_is_refused(two: Two) -> None:
    p = xtrace(two.pair.ns, ["-m", "xdp", "--count", "1", "-t", "100"], env=clean_env(two.pair, NETWORK_INTERFACE=""))
    # Not the default eth0 (there is none in here: that would be "not found"), but the variable.
    line = assert_usage_error(p, ["NETWORK_INTERFACE must not be empty", "it is set to ''", "unset it"])
    assert "eth0" not in line, line
    for which in ("A", "B"):
        assert our_prog_ids(two.pair.ns, two.name(which)) == {}


# -- 3: COLLECT_AGG to the collect_agg label ---------------------------------------------------------


# (path, --collect-agg given, the label value); COLLECT_AGG is rack-7 in both.
AGG_CASES = [("/api/v1/write", None, "rack-7"), ("/api/v1/import/prometheus", "rack-9", "rack-9")]


@pytest.mark.parametrize("path, cli_agg, want", AGG_CASES, ids=["env-remote-write", "cli-over-env-text"])
def test_collect_agg_env_reaches_the_label(
        pair: VethPair, victoria_metrics: Callable[..., VictoriaMetrics],  # noqa: F811 (the fixture imported)
        path: str, cli_agg: str | None, want: str) -> None:
    vm = victoria_metrics(ns=pair.ns)
    url, n = vm.url(path), 19
    # Push configured by the environment alone: no --vm-enabled, no --vm-url.
    env = clean_env(pair, COLLECT_AGG="rack-7", VICTORIAMETRICS_ENABLED="true", VICTORIAMETRICS_REMOTE_WRITE=url)
    args = agent_args(pair, None) + (["--collect-agg", cli_agg] if cli_agg else [])
    labels = {**flow_labels(pair), "collect_agg": want}

    def arrived(series: list[dict[str, object]]) -> bool:
        pk = by_name(series, "xtrace_network_packets_total")
        return len(pk) == 1 and last_value(pk[0]) == n

    with Agent(pair.ns, args, env=env) as a:
        a.wait_stderr(f"TC program attached to {pair.ifname} (ingress)")
        fmt = "remote_write" if path.endswith("/write") else "text"
        a.wait_stderr(f"pushing metrics to {url} ({fmt})")
        send(pair, n)
        wait_seen(pair.ns, pair.ifname, n)
        series = vm.wait_export('{__name__=~"xtrace_.*"}', arrived, timeout=WAIT)
        assert a.stop() == 0, a.err
    flows = [s for s in series if s["metric"]["__name__"] in FLOW_METRICS]  # type: ignore[index]
    assert sorted((s["metric"] for s in flows), key=str) == sorted(  # type: ignore[misc]
        ({"__name__": name, **labels} for name in FLOW_METRICS), key=str)
    got = {s["metric"]["__name__"]: s for s in flows}  # type: ignore[index]
    assert last_value(got["xtrace_network_packets_total"]) == n
    assert last_value(got["xtrace_network_bytes_total"]) == n * WIRE
    # The agent's own series carry it too, and no series carries another value.
    assert by_name(series, "xtrace_agent_flows_tracked")
    assert {s["metric"].get("collect_agg") for s in series} == {want}, series  # type: ignore[union-attr]
    # Selected back by the label, as a dashboard selects it (export: /api/v1/query hides the
    # last 30 s, VictoriaMetrics' -search.latencyOffset).
    (hit,) = vm.export(f'xtrace_network_packets_total{{collect_agg="{want}"}}')
    assert hit["metric"] == {"__name__": "xtrace_network_packets_total", **labels} and last_value(hit) == n
    if cli_agg:
        assert vm.export('{__name__=~"xtrace_.*", collect_agg="rack-7"}') == []
    assert not [line for line in a.err if "error" in line.lower() or "Traceback" in line], a.err
