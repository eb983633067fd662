"""Security (kernel tier, root): secrets stay secret, /metrics stays local, nothing pinned.

- The basic-auth password and the bearer token, given by environment or file (or as
  user:password@ in --vm-url), never appear on stdout or stderr, also with -v, not in
  `ps` argv (except the URL form, which the user put there), and not in the error
  messages the agent prints against a server answering 401 or 500 or an unreachable
  one; the start line shows the URL with the password as ***. The servers do receive
  them (so they were in use).
- `--metrics-addr :PORT` listens on 127.0.0.1 only (the namespace's listening sockets,
  and the peer cannot connect across the veth).
- The agent pins nothing under /sys/fs/bpf, and once it exits its programs and maps are
  gone from the kernel (nothing else keeps them).

The privileges the agent needs are in tests/test_privilege.py.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from netns import AGENT_IP4, Agent, VethPair, in_ns, our_prog_ids, run, veth_pair
from test_export_e2e import NsProcess
from vm import http

pytestmark = pytest.mark.kernel

PASSWORD = "pw-Zq81xK3vR"
TOKEN = "tok-9fJ2mQ7wL"
USER = "alice"
WAIT = 20.0

_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
status = int(sys.argv[2])
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        print("POST", self.headers.get("Authorization", "-"), flush=True)
        body = b"refused\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("READY", flush=True)
srv.serve_forever()
"""

PORTS = {"401": 18441, "500": 18442, "unreachable": 18443}  # nothing listens on the last one
HOOKS = (["-m", "xdp"], ["-m", "tc", "-d", "ingress"], ["-m", "tc", "-d", "egress"])
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
BEARER = f"Bearer {TOKEN}"
# Every form a secret could leak in.
LEAKS = (PASSWORD, TOKEN, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        in_ns(p.ns, ["ip", "link", "set", "lo", "up"])
        yield p


def credential_kinds(tmp: Path, url: str) -> list[tuple[str, list[str], dict[str, str], str]]:
    """(id, args, environment, the Authorization header the server must get)."""
    (tmp / "pw").write_text(PASSWORD + "\n")
    (tmp / "token").write_text(TOKEN + "\n")
    with_user = url.replace("http://", f"http://{USER}:{PASSWORD}@")
    return [
        ("basic-env", ["--vm-url", url], {"VM_USERNAME": USER, "VM_PASSWORD": PASSWORD}, BASIC),
        ("basic-file", ["--vm-url", url, "--vm-username", USER, "--vm-password-file", str(tmp / "pw")], {}, BASIC),
        ("bearer-env", ["--vm-url", url], {"VM_BEARER_TOKEN": TOKEN}, BEARER),
        ("bearer-file", ["--vm-url", url, "--vm-bearer-token-file", str(tmp / "token")], {}, BEARER),
        ("url-userinfo", ["--vm-url", with_user], {}, BASIC),
    ]


def argv_of(pid: int) -> str:
    return run(["ps", "-o", "args=", "-p", str(pid)]).stdout


def intervals(a: Agent) -> int:
    return sum(1 for line in list(a.out) if line.startswith("--- interval "))


@pytest.mark.parametrize("server", list(PORTS))
def test_secrets_never_shown(pair: VethPair, tmp_path: Path, server: str) -> None:
    port = PORTS[server]
    url = f"http://127.0.0.1:{port}/api/v1/import/prometheus"
    kinds = credential_kinds(tmp_path, url)
    srv = NsProcess(pair.ns, _SERVER, str(port), server) if server != "unreachable" else None
    finished: list[tuple[str, Agent]] = []
    try:
        if srv:
            srv.wait_line("READY")
        for start in range(0, len(kinds), len(HOOKS)):  # one agent per hook at a time
            with ExitStack() as stack:
                running = []
                for hook, (kid, args, env, _auth) in zip(HOOKS, kinds[start:start + len(HOOKS)]):
                    a = stack.enter_context(Agent(pair.ns, ["-v", "-i", pair.ifname, *hook, "-t", "100",
                                                            "--vm-enabled", *args], env={**pair.env, **env}))
                    running.append((kid, a))
                for kid, a in running:
                    line = a.wait_stderr("pushing metrics to")
                    shown = url.replace("http://", f"http://{USER}:***@") if kid == "url-userinfo" else url
                    assert line == f"xtrace-catch: pushing metrics to {shown} (text)", line
                deadline = time.monotonic() + WAIT
                for _ in range(1000):  # bounded: each agent tried to push at least twice
                    tried = len([x for x in srv.lines if x.startswith("POST ")]) if srv else 0
                    if all(intervals(a) >= 3 for _k, a in running) and (srv is None or tried >= 2 * len(running)):
                        break
                    assert time.monotonic() < deadline, f"pushes did not happen: {[a.err for _k, a in running]}"
                    time.sleep(0.05)
                for kid, a in running:
                    assert a.proc is not None
                    if kid != "url-userinfo":  # a password written into --vm-url is the user's own choice
                        assert not any(s in argv_of(a.proc.pid) for s in LEAKS), argv_of(a.proc.pid)
                for _kid, a in running:
                    assert a.stop() == 0, a.err
                finished.extend(running)
    finally:
        if srv:
            srv.kill()
    for kid, a in finished:
        text = "\n".join(a.out + a.err)
        leaked = [s for s in LEAKS if s in text]
        assert not leaked, f"{kid}: {leaked} in the output:\n{text[-3000:]}"
        assert "Traceback" not in text, text[-3000:]
        if server == "401":
            assert ("xtrace-catch: ERROR xtrace_catch.export.push: VictoriaMetrics refused a push with HTTP 401 "
                    "(check the credentials): refused") in a.err, (kid, a.err)
    if srv:  # the credentials were really used
        got = {x.split(" ", 1)[1] for x in srv.lines if x.startswith("POST ")}
        assert got == {auth for _k, _a, _e, auth in kinds}, got


def test_metrics_binds_loopback_for_port_only(pair: VethPair) -> None:
    port = 19439
    with Agent(pair.ns, ["-i", pair.ifname, "-m", "xdp", "-t", "200", "--metrics-addr", f":{port}"],
               env=pair.env) as a:
        assert a.wait_stderr("serving /metrics") == f"xtrace-catch: serving /metrics on 127.0.0.1:{port}"
        listening = in_ns(pair.ns, ["ss", "-Hltn"]).stdout.split("\n")
        local = sorted(line.split()[3] for line in listening if line.strip())
        assert local == [f"127.0.0.1:{port}"], listening
        status, _body = http(pair.ns, "GET", f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        # Not reachable on the veth from the peer.
        status, _body = http(pair.peer_ns, "GET", f"http://{AGENT_IP4}:{port}/metrics", timeout=3)
        assert status == 0
        assert a.stop() == 0


def bpffs_tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def bpf_object_exists(kind: str, obj_id: int) -> bool:
    return subprocess.run(["bpftool", kind, "show", "id", str(obj_id)], capture_output=True,
                          timeout=20).returncode == 0


def test_nothing_pinned_and_nothing_outlives_the_agent(pair: VethPair) -> None:
    bpffs = Path("/sys/fs/bpf")
    before = bpffs_tree(bpffs)
    with Agent(pair.ns, ["-i", pair.ifname, "-m", "tc", "-d", "both", "-t", "200"], env=pair.env) as at, \
            Agent(pair.ns, ["-i", pair.ifname, "-m", "xdp", "-t", "200"], env=pair.env) as ax:
        at.wait_stderr("TC program attached")
        ax.wait_stderr("XDP program loaded")
        assert at.proc is not None and ax.proc is not None
        progs = our_prog_ids(pair.ns, pair.ifname)
        assert set(progs) == {"xdp", "ingress", "egress"}
        maps = set()
        for pid in progs.values():
            info = json.loads(run(["bpftool", "-j", "prog", "show", "id", str(pid)]).stdout)
            maps.update(info.get("map_ids", []))
        assert len(maps) >= 4
        assert bpffs_tree(bpffs) == before
        for a in (at, ax):  # and nothing in the agent's own mount namespace either
            inner = Path(f"/proc/{a.proc.pid}/root/sys/fs/bpf")
            assert bpffs_tree(inner) == [] or bpffs_tree(inner) == before
        assert at.stop() == 0 and ax.stop() == 0
    assert bpffs_tree(bpffs) == before
    # Gone from the kernel: no pin, link or other holder kept any of them (freed asynchronously).
    deadline = time.monotonic() + WAIT
    alive: list[tuple[str, int]] = []
    for _ in range(400):
        alive = [("prog", i) for i in progs.values() if bpf_object_exists("prog", i)]
        alive += [("map", i) for i in maps if bpf_object_exists("map", i)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert alive == [], f"still in the kernel after the agent exited: {alive}"
