"""More bad input for the CLI and its environment (tests/test_cli_errors.py has the
first 38 cases): malformed VictoriaMetrics URLs, unreadable credential files, bad
--metrics-addr, a bad sysfs root, VICTORIAMETRICS_ENABLED=maybe, a password without a
user, and the other export and run options. Each answer is one line
`xtrace-catch: error: ...` on stderr naming the bad value, exit code 2, nothing on
stdout, no traceback.

These are found before any syscall and name an interface that does not exist
(`xtnone0`), so they need no root. The --metrics-addr values that only fail when the
server binds (an address not on the host, a port in use) and an unknown --rdma-device
need the interface looked up: those run in a namespace (root) and must fail before any
program is attached.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from netns import VethPair, in_ns, our_prog_ids, qdisc_kinds, veth_pair, xtrace
from test_cli_errors import NOIF, assert_usage_error, cli

RW = "/api/v1/write"
ROCE_SYSFS = Path(__file__).parent / "data" / "sysfs" / "roce" / "sys"
ACCEPTED = "accepted: http(s)://HOST:PORT/api/v1/write"
VM_ON = ["--vm-enabled", "--vm-url"]

# (id, argv, extra environment, substrings the one error line must contain). "{tmp}" is a
# directory of the test's own: "{tmp}/pw" holds a password, "{tmp}/dir" is a directory.
CASES: list[tuple[str, list[str], dict[str, str], list[str]]] = [
    # malformed VictoriaMetrics URLs
    ("url-scheme-ftp", VM_ON + ["ftp://vm.example" + RW], {}, ["'ftp://vm.example/api/v1/write'", "http://", ACCEPTED]),
    ("url-no-scheme", VM_ON + ["vm.example:8428" + RW], {}, ["'vm.example:8428/api/v1/write'", "http://", ACCEPTED]),
    ("url-no-host", VM_ON + ["http://" + RW], {}, ["'http:///api/v1/write'", "a host", ACCEPTED]),
    ("url-port-too-big", VM_ON + ["http://vm.example:99999" + RW], {}, ["99999", "not a valid URL", ACCEPTED]),
    ("url-port-not-number", VM_ON + ["http://vm.example:port" + RW], {}, [":port", "not a valid URL"]),
    ("url-ipv6-unclosed", VM_ON + ["http://[2001:db8::1" + RW], {}, ["'http://[2001:db8::1/api/v1/write'",
                                                                     "not a valid URL"]),
    ("url-path-root", VM_ON + ["http://vm.example:8428/"], {}, ["path '/'", "neither form", ACCEPTED]),
    ("url-path-other", VM_ON + ["http://vm.example:8428/api/v1/query"], {}, ["'/api/v1/query'", "neither form"]),
    ("url-empty", VM_ON + [""], {}, ["''", "http://"]),
    ("url-control-char", VM_ON + ["http://vm.exa\tmple" + RW], {}, ["not a valid URL", "control characters"]),
    ("url-bad-idna", VM_ON + ["http://xn--" + RW], {}, ["'http://xn--/api/v1/write'", "malformed host name"]),
    ("url-from-env", [], {"VICTORIAMETRICS_ENABLED": "true",
                          "VICTORIAMETRICS_REMOTE_WRITE": "gopher://vm.example" + RW},
     ["'gopher://vm.example/api/v1/write'", "http://"]),
    # environment switches
    ("vm-enabled-maybe", [], {"VICTORIAMETRICS_ENABLED": "maybe"},
     ["VICTORIAMETRICS_ENABLED='maybe'", "true or false"]),
    ("vm-enabled-2", [], {"VICTORIAMETRICS_ENABLED": "2"}, ["VICTORIAMETRICS_ENABLED='2'", "true or false"]),
    # credentials
    ("password-file-missing", ["--vm-username", "u", "--vm-password-file", "{tmp}/missing"], {},
     ["'{tmp}/missing'", "No such file", "check the path"]),
    ("password-file-is-dir", ["--vm-username", "u", "--vm-password-file", "{tmp}/dir"], {},
     ["'{tmp}/dir'", "Is a directory"]),
    ("password-file-env-missing", [], {"VM_USERNAME": "u", "VM_PASSWORD_FILE": "{tmp}/missing"},
     ["password file '{tmp}/missing'", "No such file"]),
    ("token-file-missing", ["--vm-bearer-token-file", "{tmp}/missing"], {}, ["bearer token file '{tmp}/missing'"]),
    ("token-file-env-is-dir", [], {"VM_BEARER_TOKEN_FILE": "{tmp}/dir"}, ["bearer token file '{tmp}/dir'",
                                                                         "Is a directory"]),
    ("password-without-user-env", [], {"VM_PASSWORD": "not-shown-1"}, ["without a user name", "VM_USERNAME"]),
    ("password-without-user-file", ["--vm-password-file", "{tmp}/pw"], {}, ["without a user name", "--vm-username"]),
    ("user-and-token", ["--vm-username", "u"], {"VM_BEARER_TOKEN": "not-shown-2"}, ["either basic auth",
                                                                                     "not both"]),
    # --metrics-addr
    ("metrics-addr-port-only", ["--metrics-addr", "9435"], {}, ["'9435'", "HOST:PORT"]),
    ("metrics-addr-port-0", ["--metrics-addr", "127.0.0.1:0"], {}, ["'127.0.0.1:0'", "1..65535"]),
    ("metrics-addr-port-65536", ["--metrics-addr", "127.0.0.1:65536"], {}, ["'127.0.0.1:65536'", "1..65535"]),
    ("metrics-addr-port-name", ["--metrics-addr", "localhost:http"], {}, ["'localhost:http'", "HOST:PORT"]),
    ("metrics-addr-ipv6-bare", ["--metrics-addr", "::1:9435"], {}, ["'::1:9435'", "[::1]:9435"]),
    ("metrics-addr-empty", ["--metrics-addr", ""], {}, ["--metrics-addr ''", "HOST:PORT"]),
    # sysfs root (rdma/nccl read the NIC counters there)
    ("sysfs-root-empty", ["-m", "rdma", "--sysfs-root", ""], {}, ["--sysfs-root must not be empty", "/host/sys"]),
    ("sysfs-root-blank", ["-m", "nccl", "--sysfs-root", "  "], {}, ["--sysfs-root must not be empty"]),
    ("sysfs-root-is-file", ["-m", "rdma", "--sysfs-root", "{tmp}/pw"], {}, ["'{tmp}/pw'", "/host/sys"]),
    ("sysfs-root-env-missing", ["-m", "rdma"], {"XTRACE_SYSFS_ROOT": "{tmp}/missing"}, ["'{tmp}/missing'"]),
    # other export and run options
    ("collect-agg-blank", ["--collect-agg", "  "], {}, ["collect_agg", "must not be empty"]),
    ("collect-agg-env-blank", [], {"COLLECT_AGG": " "}, ["COLLECT_AGG", "must not be empty"]),
    ("push-buffer-small", ["--push-buffer-samples", "10"], {}, ["--push-buffer-samples 10", "at least 1000"]),
    ("max-series-0", ["--max-series", "0"], {}, ["--max-series 0", ">= 1"]),
    ("idle-timeout-0", ["--idle-timeout", "0"], {}, ["--idle-timeout 0", "> 0"]),
    ("idle-timeout-negative", ["--idle-timeout", "-5"], {}, ["--idle-timeout -5", "> 0"]),
    ("idle-timeout-abc", ["--idle-timeout", "abc"], {}, ["'--idle-timeout'", "xtrace-catch run -h"]),
    ("max-flows-small", ["--max-flows", "100"], {}, ["--max-flows 100", "1024..16777216"]),
    ("max-flows-huge", ["--max-flows", "99999999"], {}, ["--max-flows 99999999", "1024..16777216"]),
    ("xdp-mode-unknown", ["--xdp-mode", "turbo"], {}, ["'turbo'", "'auto', 'native', 'generic'"]),
    ("xdp-mode-with-tc", ["-m", "tc", "--xdp-mode", "native"], {}, ["--xdp-mode", "-m xdp only"]),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("bad-input")
    (d / "pw").write_text("not-shown-3\n")
    (d / "dir").mkdir()
    return str(d)


def run_in_process(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """`xtrace-catch ARGV` through cli.main() in this process (an interpreter start-up per
    case would cost seconds); an uncaught exception fails the test like a traceback would."""
    from xtrace_catch import cli as cli_mod

    for k in ("NETWORK_INTERFACE", "VICTORIAMETRICS_ENABLED", "VICTORIAMETRICS_REMOTE_WRITE", "COLLECT_AGG",
              "VM_USERNAME", "VM_PASSWORD", "VM_PASSWORD_FILE", "VM_BEARER_TOKEN", "VM_BEARER_TOKEN_FILE",
              "XTRACE_SYSFS_ROOT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    rc = cli_mod.main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, out, err)


@pytest.mark.parametrize(("case_id", "argv", "env", "must"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp: str, case_id: str, argv: list[str], env: dict[str, str],
                                          must: list[str], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    p = run_in_process(["-i", NOIF, *(a.format(tmp=tmp) for a in argv)], {k: v.format(tmp=tmp) for k, v in env.items()},
                       monkeypatch, capsys)
    line = assert_usage_error(p, [m.format(tmp=tmp) for m in must])
    assert "not-shown" not in line  # a secret given with the bad input is never echoed


# The same answers from the installed command, as a user runs it (a few, in parallel).
AS_A_PROCESS = ["url-from-env", "url-control-char", "vm-enabled-maybe", "password-file-missing",
                "password-without-user-env", "metrics-addr-empty", "sysfs-root-empty", "idle-timeout-abc"]


@pytest.fixture(scope="module")
def answers(tmp: str) -> dict[str, subprocess.CompletedProcess[str]]:
    cases = {c[0]: c for c in CASES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {cid: pool.submit(cli, ["-i", NOIF, *(a.format(tmp=tmp) for a in cases[cid][1])],
                                    {k: v.format(tmp=tmp) for k, v in cases[cid][2].items()})
                   for cid in AS_A_PROCESS}
        return {cid: f.result() for cid, f in futures.items()}


@pytest.mark.parametrize("case_id", AS_A_PROCESS)
def test_bad_input_as_a_process(answers: dict[str, subprocess.CompletedProcess[str]], tmp: str,
                                case_id: str) -> None:
    must = next(c[3] for c in CASES if c[0] == case_id)
    assert_usage_error(answers[case_id], [m.format(tmp=tmp) for m in must])


# -- found when the agent binds or reads sysfs: still before it attaches (root) ----------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        in_ns(p.ns, ["ip", "link", "set", "lo", "up"])
        yield p


_LISTEN = r"""
import socket, sys, time
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("READY", flush=True)
time.sleep(60)
"""


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["xdp", "tc"])
@pytest.mark.parametrize("addr", ["203.0.113.77:9435", "127.0.0.1:{busy}", "nonexistent.invalid:9435"],
                         ids=["not-local", "in-use", "unresolvable"])
def test_metrics_addr_that_cannot_listen(pair: VethPair, mode: str, addr: str) -> None:
    busy = 19438
    holder = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", _LISTEN, str(busy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "READY"
        hook = ["-m", "xdp"] if mode == "xdp" else ["-m", "tc", "-d", "both"]
        a = addr.format(busy=busy)
        p = xtrace(pair.ns, ["-i", pair.ifname, *hook, "-t", "100", "--count", "2", "--metrics-addr", a], env=pair.env)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout:
            holder.stdout.close()
    assert "Traceback" not in p.stderr, p.stderr
    assert (p.returncode, p.stdout) == (2, ""), p.stderr
    # One line, the error: the socket is bound before any program touches the interface.
    (line,) = p.stderr.splitlines()
    assert line.startswith(f"xtrace-catch: error: --metrics-addr {a}: cannot listen ("), line
    assert line.endswith("; choose a free port or another address"), line
    assert our_prog_ids(pair.ns, pair.ifname) == {}
    assert "clsact" not in qdisc_kinds(pair.ns, pair.ifname)
    assert not pair.state_dir.exists() or not list(pair.state_dir.glob("*"))



@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_unknown_rdma_device_is_refused_before_attaching(pair: VethPair, mode: str) -> None:
    """--rdma-device with a typo: one line naming the devices there are, and nothing attached."""
    hook = ["-m", "xdp"] if mode == "xdp" else ["-m", "tc", "-d", "both"]
    p = xtrace(pair.ns, ["-i", pair.ifname, *hook, "-t", "100", "--count", "1", "--rdma-device", "mlx5_9",
                         "--sysfs-root", str(ROCE_SYSFS)], env=pair.env)
    assert "Traceback" not in p.stderr, p.stderr
    assert (p.returncode, p.stdout) == (2, ""), p.stderr
    (line,) = p.stderr.splitlines()
    assert line.startswith("xtrace-catch: error: unknown RDMA device 'mlx5_9'; devices found: "), line
    assert "mlx5_0" in line
    assert our_prog_ids(pair.ns, pair.ifname) == {}
    assert "clsact" not in qdisc_kinds(pair.ns, pair.ifname)


@pytest.mark.kernel
def test_bad_xtrace_libbpf_is_exit_2(pair: VethPair, tmp_path: Path) -> None:
    """A user-fixable environment: one line naming XTRACE_LIBBPF, exit 2, nothing attached."""
    missing = tmp_path / "nowhere" / "libbpf.so.1"
    p = xtrace(pair.ns, ["-i", pair.ifname, "-m", "tc", "-t", "100", "--count", "1"],
               env={**pair.env, "XTRACE_LIBBPF": str(missing)})
    assert (p.returncode, p.stdout) == (2, ""), p.stderr
    (line,) = p.stderr.splitlines()
    assert line.startswith(f"xtrace-catch: error: XTRACE_LIBBPF={missing}: cannot load it ("), line
    assert line.endswith("point it at a libbpf.so.1 or unset it"), line
    assert our_prog_ids(pair.ns, pair.ifname) == {}
