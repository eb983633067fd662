"""Network-namespace helpers for the end-to-end tests and the benchmarks (root only).

``veth_pair()`` makes two fresh namespaces joined by a veth pair and always deletes them;
``Proc`` runs a command inside a namespace and always kills it, ``Agent`` the CLI as a user
would; ``send_frames`` / ``send_udp`` put an exact list of packets on a veth from inside a
namespace; ``wait_seen`` waits, bounded, until our datapath has seen them, by reading the
running agent's ``stats`` map with bpftool (a count, not a clock, so no timing guesses).

Rules kept here (they protect the host): attach only inside namespaces made here, never
to the root namespace; addresses only from 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32;
every loop bounded in count and time, every subprocess with a timeout. bench/ imports this
module as it is (bench/common.py puts tests/ on the import path): it adds only what the tests
do not need (bench/netenv.py).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CMD_TIMEOUT = 20.0  # seconds for any one helper command
# Deadlines stretch by this factor where the machine is emulated (tests/kvm.py sets it in TCG guests).
TIME_SCALE = float(os.environ.get("XTRACE_TEST_TIME_SCALE") or 1)
MAX_FRAMES = 10_000  # per send_frames call

AGENT_IP4 = "198.51.100.1"
PEER_IP4 = "198.51.100.2"
SINK_IP4 = "198.51.100.9"  # on-link, permanent neighbour with a MAC nobody has: frames to it go nowhere
AGENT_IP6 = "2001:db8::1"
PEER_IP6 = "2001:db8::2"
AGENT_MAC = "02:00:00:00:01:01"
PEER_MAC = "02:00:00:00:01:02"
SINK_MAC = "02:00:00:00:00:02"  # frames.MAC_B: frames addressed to it are "other host" everywhere

_seq = itertools.count()


def xtrace_cmd() -> list[str]:
    """The CLI as installed next to the running interpreter (the venv), else `python -m`."""
    script = Path(sys.executable).parent / "xtrace-catch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "xtrace_catch"]


def run(cmd: Sequence[str], *, timeout: float = CMD_TIMEOUT, check: bool = True, input_: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; on check failure the message carries its stderr."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input_, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def in_ns(ns: str, cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run `cmd` inside network namespace `ns` (ip netns exec)."""
    return run(["ip", "netns", "exec", ns, *cmd], **kw)  # type: ignore[arg-type]


@dataclass
class VethPair:
    """Two namespaces: the agent's (`ns`, interface `ifname`) and the peer's (`peer_ns`, `peer_if`)."""

    ns: str
    peer_ns: str
    ifname: str
    peer_if: str
    state_dir: Path
    ipv6: bool = False

    def ns_run(self, cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return in_ns(self.ns, cmd, **kw)

    def peer_run(self, cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return in_ns(self.peer_ns, cmd, **kw)

    @property
    def env(self) -> dict[str, str]:
        """Environment for xtrace-catch: its crash-state files go to this pair's own directory,
        and it attaches through netlink (clsact filters, XDP by ifindex), the path these tests
        inspect with tc and ip; tests/test_links.py covers the BPF-link path (link_env)."""
        return {**os.environ, "XTRACE_STATE_DIR": str(self.state_dir), "XTRACE_ATTACH": "netlink"}

    @property
    def link_env(self) -> dict[str, str]:
        """Environment for the BPF-link path (XDP links, TCX links with a libbpf >= 1.3)."""
        return {**self.env, "XTRACE_ATTACH": "auto"}


def _sysctls(ns: str, ipv6: bool) -> None:
    # Without IPv6 the kernel sends nothing on its own (no ND/MLD/RS); with it, no
    # link-local address (so the only IPv6 address is ours), and MLD noise remains.
    if ipv6:
        vals = ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                "net.ipv6.conf.default.addr_gen_mode=1", "net.ipv6.conf.all.addr_gen_mode=1"]
    else:
        vals = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
    in_ns(ns, ["sysctl", "-q", "-w", *vals])


def _wait_oper_up(ns: str, ifname: str, timeout: float = 5.0) -> None:
    """Link state changes are applied asynchronously (linkwatch): wait, bounded, for UP."""
    deadline = time.monotonic() + timeout
    for _ in range(500):
        out = run(["ip", "-j", "-n", ns, "link", "show", ifname]).stdout
        if json.loads(out)[0].get("operstate") == "UP":
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    raise AssertionError(f"{ifname} in {ns} did not come up within {timeout} s")


@contextmanager
def veth_pair(ipv6: bool = False, tmp: Path | None = None, *, prefix: str = "xt") -> Iterator[VethPair]:
    """Fresh namespaces `<prefix>c<pid>-<n>a` / `...b` joined by a veth pair (`<prefix>a<n>`,
    `<prefix>b<n>`; the benchmarks' prefix is `xb<tag>`), up, addressed
    (agent 198.51.100.1/24, peer .2/24; with ipv6 also 2001:db8::1/64, ::2/64, nodad),
    static neighbours both ways (no ARP), and a permanent neighbour 198.51.100.9 with a
    MAC nobody owns. Deleted in `finally`, whatever happened."""
    n = next(_seq)
    base = f"{prefix}c{os.getpid()}-{n}"
    ns, peer_ns = base + "a", base + "b"
    ifname, peer_if = f"{prefix}a{n}", f"{prefix}b{n}"
    state_dir = (tmp or Path("/tmp")) / f"{base}-state"
    made: list[str] = []
    try:
        for name in (ns, peer_ns):
            run(["ip", "netns", "add", name])
            made.append(name)
            _sysctls(name, ipv6)
        run(["ip", "-n", ns, "link", "add", ifname, "address", AGENT_MAC, "type", "veth",
             "peer", "name", peer_if, "address", PEER_MAC, "netns", peer_ns])
        run(["ip", "-n", ns, "addr", "add", f"{AGENT_IP4}/24", "dev", ifname])
        run(["ip", "-n", peer_ns, "addr", "add", f"{PEER_IP4}/24", "dev", peer_if])
        if ipv6:
            run(["ip", "-n", ns, "addr", "add", f"{AGENT_IP6}/64", "dev", ifname, "nodad"])
            run(["ip", "-n", peer_ns, "addr", "add", f"{PEER_IP6}/64", "dev", peer_if, "nodad"])
        for name, dev, ip, mac in ((ns, ifname, PEER_IP4, PEER_MAC), (peer_ns, peer_if, AGENT_IP4, AGENT_MAC),
                                   (ns, ifname, SINK_IP4, SINK_MAC)):
            run(["ip", "-n", name, "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent"])
        run(["ip", "-n", ns, "link", "set", ifname, "up"])
        run(["ip", "-n", peer_ns, "link", "set", peer_if, "up"])
        _wait_oper_up(ns, ifname)
        _wait_oper_up(peer_ns, peer_if)
        yield VethPair(ns, peer_ns, ifname, peer_if, state_dir, ipv6)
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=CMD_TIMEOUT)
        if state_dir.exists():
            for f in state_dir.iterdir():
                f.unlink()
            state_dir.rmdir()


# -- sending ------------------------------------------------------------------

_SEND_FRAMES = r"""
import socket, sys
ifname = sys.argv[1]
frames = [bytes.fromhex(h) for h in sys.stdin.read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: sends only, never receives
s.bind((ifname, 0))
for f in frames:
    n = s.send(f)
    if n != len(f):
        sys.exit(f"short send: {n} of {len(f)} bytes")
print(len(frames))
"""

_SEND_UDP = r"""
import socket, sys
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
payloads = [bytes.fromhex(h) if h != "-" else b"" for h in sys.stdin.read().split()]
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, sport))
for p in payloads:
    if s.sendto(p, (dst, dport)) != len(p):
        sys.exit("short send")
print(len(payloads))
"""


def send_frames(ns: str, ifname: str, frames: Sequence[bytes], timeout: float = CMD_TIMEOUT) -> None:
    """Send exactly `frames` (raw Ethernet, as given: no padding, no FCS) on `ifname` from
    inside `ns` through an AF_PACKET socket; fails unless every one was sent whole."""
    assert 0 < len(frames) <= MAX_FRAMES
    p = in_ns(ns, [sys.executable, "-c", _SEND_FRAMES, ifname], input_="\n".join(f.hex() for f in frames),
              timeout=timeout)
    assert p.stdout.strip() == str(len(frames)), p.stdout + p.stderr


def send_udp(ns: str, src: str, sport: int, dst: str, dport: int, payloads: Sequence[bytes],
             timeout: float = CMD_TIMEOUT) -> None:
    """Send UDP datagrams through the kernel's stack from inside `ns` (a bound socket)."""
    assert 0 < len(payloads) <= MAX_FRAMES
    p = in_ns(ns, [sys.executable, "-c", _SEND_UDP, src, str(sport), dst, str(dport)],
              input_="\n".join(x.hex() or "-" for x in payloads), timeout=timeout)
    assert p.stdout.strip() == str(len(payloads)), p.stdout + p.stderr


_CAPTURE = r"""
import json, socket, sys
ifname, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.bind((ifname, 0))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
got = []
try:
    while len(got) < n:
        data, addr = s.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING:
            got.append(data.hex())
except socket.timeout:
    pass
print(json.dumps(got), flush=True)
"""


class Capture:
    """An AF_PACKET receiver on `ifname` inside `ns`: the frames as the stack hands them
    over (after XDP/TC), at most `n` of them. Use as a context manager; `frames()` waits
    (bounded) for the result."""

    def __init__(self, ns: str, ifname: str, n: int, timeout: float = 10.0) -> None:
        assert 0 < n <= MAX_FRAMES
        self.timeout = timeout
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _CAPTURE, ifname, str(n),
                                      str(timeout)], stdout=subprocess.PIPE, text=True)

    def __enter__(self) -> Capture:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the child prints or dies
        assert line.strip() == "ready", line
        return self

    def frames(self) -> list[bytes]:
        out, _ = self.proc.communicate(timeout=self.timeout + CMD_TIMEOUT)
        return [bytes.fromhex(h) for h in json.loads(out)]

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# -- what is attached ---------------------------------------------------------


def xdp_prog(ns: str, ifname: str) -> tuple[int, str] | None:
    """(id, name) of the XDP program on the interface, or None."""
    link = json.loads(run(["ip", "-j", "-n", ns, "link", "show", ifname]).stdout)[0]
    prog = (link.get("xdp") or {}).get("prog")
    return (int(prog["id"]), str(prog["name"])) if prog else None


def tc_filters(ns: str, ifname: str, direction: str) -> list[dict[str, object]]:
    """Filters of the clsact hook `direction` ('ingress'/'egress'), without the chain headers."""
    p = run(["tc", "-j", "-n", ns, "filter", "show", "dev", ifname, direction], check=False)
    if p.returncode != 0 or not p.stdout.strip():
        return []
    return [f for f in json.loads(p.stdout) if "options" in f]


def qdisc_kinds(ns: str, ifname: str) -> list[str]:
    return [str(q["kind"]) for q in json.loads(run(["tc", "-j", "-n", ns, "qdisc", "show", "dev", ifname]).stdout)]


@functools.cache
def xdp_prog_name() -> str:
    """The name (as the kernel keeps it, 15 characters) of the XDP program the agent loads here:
    the multi-buffer variant where this kernel takes it."""
    from xtrace_catch.kernel.datapath import xdp_program

    return "xtrace_xdp_frags"[:15] if xdp_program()[0] else "xtrace_xdp"


def our_prog_ids(ns: str, ifname: str) -> dict[str, int]:
    """Ids of xtrace-catch programs attached to the interface: keys 'xdp', 'ingress', 'egress'."""
    ids: dict[str, int] = {}
    x = xdp_prog(ns, ifname)
    if x and x[1] in ("xtrace_xdp", "xtrace_xdp_frags"[:15]):  # either XDP variant
        ids["xdp"] = x[0]
    for d in ("ingress", "egress"):
        for f in tc_filters(ns, ifname, d):
            opts = f["options"]
            assert isinstance(opts, dict)
            if str(opts.get("bpf_name", "")).startswith("xtrace_tc_") and "prog" in opts:
                ids[d] = int(opts["prog"]["id"])
    for d, progs in tcx_progs(ns, ifname).items():
        for pid, name in progs:
            if name.startswith("xtrace_tc_"):
                ids.setdefault(d, pid)
    return ids


_TCX_QUERY = r"""
import json, sys
from xtrace_catch.attach import get_interface, tcx_programs
print(json.dumps({d.label: progs for d, progs in tcx_programs(get_interface(sys.argv[1])).items()}))
"""


def tcx_progs(ns: str, ifname: str) -> dict[str, list[tuple[int, str]]]:
    """(id, name) of the programs in the interface's TCX chains, in chain order, per direction
    (Debian 12's bpftool predates TCX, so the package's own query asks the kernel)."""
    p = in_ns(ns, [sys.executable, "-c", _TCX_QUERY, ifname])
    return {d: [(int(i), str(n)) for i, n in v] for d, v in json.loads(p.stdout).items()}


def datapath_stats(prog_id: int) -> dict[str, int]:
    """The `stats` map of the object behind a loaded program, summed over CPUs (bpftool)."""
    info = json.loads(run(["bpftool", "-j", "prog", "show", "id", str(prog_id)]).stdout)
    for mid in info.get("map_ids", []):
        m = json.loads(run(["bpftool", "-j", "map", "show", "id", str(mid)]).stdout)
        if m.get("name") != "stats":
            continue
        dump = json.loads(run(["bpftool", "-j", "map", "dump", "id", str(mid)]).stdout)
        total: dict[str, int] = {}
        for cpu in dump[0]["formatted"]["values"]:
            for k, v in cpu["value"].items():
                total[k] = total.get(k, 0) + int(v)
        return total
    raise AssertionError(f"program {prog_id} has no 'stats' map")


def wait_seen(ns: str, ifname: str, packets: int, hook: str | None = None, timeout: float = 10.0) -> dict[str, int]:
    """Wait (bounded) until the datapath of the agent attached at `hook` ('xdp', 'ingress',
    'egress'; default: the only or first one) has seen at least `packets` packets."""
    ids = our_prog_ids(ns, ifname)
    assert ids, f"no xtrace-catch program on {ifname}"
    prog = ids[hook] if hook else next(iter(ids.values()))
    deadline = time.monotonic() + timeout
    st: dict[str, int] = {}
    for _ in range(1000):
        st = datapath_stats(prog)
        if st["seen"] >= packets or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert st.get("seen", 0) >= packets, f"datapath saw {st.get('seen')} of {packets} packets within {timeout} s"
    return st


# -- processes in a namespace and the agent ---------------------------------------------


def kill(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL a process still running and reap it (bounded: a process stuck in the kernel is left)."""
    if proc is None or proc.poll() is not None:
        return
    proc.kill()
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class Proc:
    """`cmd` running inside namespace `ns` (``ip netns exec`` execs it: the pid is the command's
    own, so signals reach it directly); stdout/stderr collected by threads. `on_line(line, pid)`
    runs in the stdout thread for every line (e.g. to sample /proc); a line for which it returns
    False is not kept in `out`. `preexec_fn` runs in the child before the exec.

    Use as a context manager: the process is killed (and reaped) on exit if still running."""

    ns: str
    cmd: Sequence[str]
    env: dict[str, str] | None = None
    on_line: Callable[[str, int], object] | None = None
    preexec_fn: Callable[[], None] | None = None
    proc: subprocess.Popen[str] | None = None
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Proc:
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *self.cmd], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=self.env, preexec_fn=self.preexec_fn)
        for stream, sink, hook in ((self.proc.stdout, self.out, self.on_line), (self.proc.stderr, self.err, None)):
            t = threading.Thread(target=self._pump, args=(stream, sink, hook), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _pump(self, stream: object, sink: list[str], hook: Callable[[str, int], object] | None) -> None:
        for line in stream:  # type: ignore[attr-defined]
            line = line.rstrip("\n")
            if hook is not None and hook(line, self.pid) is False:
                continue
            with self._cond:
                sink.append(line)
                self._cond.notify_all()

    def wait_stderr(self, text: str, timeout: float = 15.0) -> str:
        """The first stderr line containing `text`; fails if the process ends or time runs out first
        (`timeout` seconds, times TIME_SCALE)."""
        deadline = time.monotonic() + timeout * TIME_SCALE
        with self._cond:
            for _ in range(100_000):  # bounded: each pass waits, or a line arrived
                for line in self.err:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                assert self.proc is not None
                if left <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self._threads)):
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(f"no stderr line with {text!r} within {timeout} s; stderr: {self.err}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for exit (bounded) and for the output threads to drain; the exit code."""
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout)
        return rc

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (if still running), then the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def __exit__(self, *exc: object) -> None:
        kill(self.proc)
        for t in self._threads:
            t.join(5)
        for s in (self.proc.stdout, self.proc.stderr) if self.proc else ():
            if s:
                s.close()


class Agent(Proc):
    """`xtrace-catch ARGS` running inside a namespace (a :class:`Proc`)."""

    def __init__(self, ns: str, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        super().__init__(ns, [*xtrace_cmd(), *args], env=env)
        self.args = args

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out if line.strip()]


def xtrace(ns: str, args: Sequence[str], env: dict[str, str] | None = None,
           timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run xtrace-catch to completion inside `ns` (check=False: callers assert the code)."""
    return in_ns(ns, [*xtrace_cmd(), *args], check=False, env=env, timeout=timeout)
