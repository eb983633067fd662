"""The CLI's answer to bad input: one line on stderr, `xtrace-catch: error: ...` naming the
bad value and the fix, no traceback, exit code 2 (DESIGN.md, CLI). Plus -h, --version,
and the bare form that means `run`.

Option errors are found before any syscall, so those cases need no root; they name an
interface that does not exist (`xtnone0`), so even a regression could not attach to a
real one. Cases that look an interface up run inside a namespace of their own (root).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from netns import VethPair, veth_pair, xtrace, xtrace_cmd

import xtrace_catch

NOIF = "xtnone0"
NOSYS = "/nonexistent/xtrace-catch-sysfs"

# (id, argv, extra environment, substrings the one error line must contain)
CASES: list[tuple[str, list[str], dict[str, str], list[str]]] = [
    ("ifname-too-long", ["-i", "x" * 16], {}, ["'" + "x" * 16 + "'", "xtrace-catch -l"]),
    ("ifname-slash", ["-i", "a/b"], {}, ["'a/b'", "xtrace-catch -l"]),
    ("ifname-from-env", [], {"NETWORK_INTERFACE": "bad/name"}, ["'bad/name'", "xtrace-catch -l"]),
    ("interval-0", ["-i", NOIF, "-t", "0"], {}, ["interval 0 ms", "100..3600000"]),
    ("interval-99", ["-i", NOIF, "-t", "99"], {}, ["interval 99 ms", "100..3600000"]),
    ("interval-3600001", ["-i", NOIF, "-t", "3600001"], {}, ["interval 3600001 ms", "100..3600000"]),
    ("interval-abc", ["-i", NOIF, "-t", "abc"], {}, ["'abc'", "100..3600000"]),
    ("mode", ["-i", NOIF, "-m", "ebpf"], {}, ["'ebpf' is not one of 'xdp', 'tc', 'rdma', 'nccl';", "run -h"]),
    ("filter", ["-i", NOIF, "-f", "sctp"], {}, ["unknown filter 'sctp'", "roce_v2"]),
    ("direction", ["-i", NOIF, "-m", "tc", "-d", "up"], {}, ["unknown direction 'up'", "ingress, egress, both"]),
    ("output", ["-i", NOIF, "--output", "xml"], {}, ["'xml' is not one of 'text', 'json', 'table';"]),
    ("xdp-mode", ["-i", NOIF, "--xdp-mode", "fast"], {}, ["'fast' is not one of 'auto', 'native', 'generic';"]),
    ("xdp-mode-in-tc", ["-i", NOIF, "-m", "tc", "--xdp-mode", "native"], {}, ["--xdp-mode applies to -m xdp only"]),
    ("ifname-colon", ["-i", "eth0:1"], {}, ["'eth0:1'", "xtrace-catch -l"]),
    ("ifname-dot", ["-i", "."], {}, ["'.'", "xtrace-catch -l"]),
    ("max-flows-small", ["-i", NOIF, "--max-flows", "1023"], {}, ["--max-flows 1023", "1024..16777216"]),
    ("xdp-egress", ["-i", NOIF, "-m", "xdp", "-d", "egress"], {}, ["egress", "-m tc -d egress"]),
    ("xdp-both", ["-i", NOIF, "-m", "xdp", "-d", "both"], {}, ["both", "-m tc -d both"]),
    ("xdp-egress-default-mode", ["-i", NOIF, "-d", "egress"], {}, ["-m tc -d egress"]),
    ("output-table-rdma", ["-m", "rdma", "--output", "table"], {}, ["--output table", "-m xdp/tc"]),
    # rdma/nccl read sysfs: point them at one that does not exist, or has no RDMA devices.
    ("rdma-no-sysfs", ["-i", NOIF, "-m", "rdma", "--sysfs-root", NOSYS], {}, [f"'{NOSYS}'", "/host/sys"]),
    ("nccl-no-sysfs", ["-i", NOIF, "-m", "nccl", "--sysfs-root", NOSYS], {}, [f"'{NOSYS}'", "/host/sys"]),
    ("rdma-no-devices", ["-i", NOIF, "-m", "rdma", "--sysfs-root", "{empty}"], {},
     ["no RDMA devices under {empty}/class/infiniband", "modprobe"]),
    ("nccl-no-devices", ["-i", NOIF, "-m", "nccl", "-d", "mlx5_0", "--sysfs-root", "{empty}"], {},
     ["no RDMA devices under {empty}/class/infiniband", "modprobe"]),
    ("count-0", ["-i", NOIF, "--count", "0"], {}, ["--count 0", ">= 1"]),
    ("count-abc", ["-i", NOIF, "--count", "abc"], {}, ["'--count'", "xtrace-catch run -h"]),
    ("dns-server-v4", ["-i", NOIF, "--exclude-dns", "--dns-server", "198.51.100.256"], {}, ["'198.51.100.256'"]),
    ("dns-server-short", ["-i", NOIF, "--exclude-dns", "--dns-server", "1.2.3"], {}, ["'1.2.3'"]),
    ("dns-server-v6", ["-i", NOIF, "--exclude-dns", "--dns-server", "2001:db8::zz"], {}, ["'2001:db8::zz'"]),
    ("unknown-option", ["-i", NOIF, "--bogus"], {}, ["--bogus", "xtrace-catch run -h"]),
    ("unknown-option-run", ["run", "-i", NOIF, "--frobnicate"], {}, ["--frobnicate", "xtrace-catch run -h"]),
    ("missing-value", ["-i", NOIF, "-t"], {}, ["-t", "xtrace-catch run -h"]),
    ("interval-fraction", ["-i", NOIF, "-t", "1000.5"], {}, ["'1000.5'", "must be a whole number of milliseconds"]),
    # An empty variable is an error, never the default in disguise.
    ("interface-env-empty", [], {"NETWORK_INTERFACE": ""}, ["NETWORK_INTERFACE must not be empty", "unset it"]),
    ("interface-env-empty-cleanup", ["cleanup"], {"NETWORK_INTERFACE": ""}, ["NETWORK_INTERFACE must not be empty"]),
    ("collect-agg-env-empty", ["-i", NOIF], {"COLLECT_AGG": ""}, ["COLLECT_AGG must not be empty"]),
    ("vm-url-env-empty", ["-i", NOIF, "--vm-enabled"], {"VICTORIAMETRICS_REMOTE_WRITE": ""},
     ["VICTORIAMETRICS_REMOTE_WRITE must not be empty"]),
    ("sysfs-root-env-empty", ["-m", "rdma"], {"XTRACE_SYSFS_ROOT": ""}, ["XTRACE_SYSFS_ROOT must not be empty"]),
    ("vm-enabled-env-empty", ["-i", NOIF], {"VICTORIAMETRICS_ENABLED": ""}, ["VICTORIAMETRICS_ENABLED must not be empty"]),
    # rdma/nccl: a named interface must exist; -d NAME and --device NAME must agree.
    ("rdma-unknown-interface", ["-i", NOIF, "-m", "rdma", "--sysfs-root", "{roce}"], {},
     [f"interface '{NOIF}' not found", "xtrace-catch -l"]),
    ("nccl-unknown-interface", ["-m", "nccl", "--sysfs-root", "{roce}"], {"NETWORK_INTERFACE": NOIF},
     [f"interface '{NOIF}' not found", "xtrace-catch -l"]),
    ("rdma-d-and-device", ["-m", "rdma", "-d", "mlx5_0", "--device", "mlx5_1", "--sysfs-root", "{roce}"], {},
     ["-d mlx5_0 and --device mlx5_1", "give one"]),
    ("nccl-d-and-device", ["-m", "nccl", "-d", "mlx5_0", "--device", "mlx4_0", "--sysfs-root", "{roce}"], {},
     ["-d mlx5_0 and --device mlx4_0", "give one"]),
    ("rdma-device-in-rdma-mode", ["-m", "rdma", "--rdma-device", "mlx5_0"], {}, ["--rdma-device", "--device"]),
]
ROCE = str(Path(__file__).parent / "data" / "sysfs" / "roce" / "sys")


def cli(argv: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "NETWORK_INTERFACE"}
    full_env.update(env or {})
    return subprocess.run([*xtrace_cmd(), *argv], capture_output=True, text=True, timeout=timeout, env=full_env)


def assert_usage_error(p: subprocess.CompletedProcess[str], must: list[str]) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("xtrace-catch: error: "), lines[0]
    for text in must:
        assert text in lines[0], (text, lines[0])
    assert (p.returncode, p.stdout) == (2, "")
    return lines[0]


@pytest.fixture(scope="module")
def empty_sysfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("empty-sysfs"))


@pytest.fixture(scope="module")
def answers(empty_sysfs: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every case's run, started a few at a time (each is a whole interpreter start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case_id: pool.submit(cli, [a.format(empty=empty_sysfs, roce=ROCE) for a in argv], env)
                   for case_id, argv, env, _must in CASES}
        return {case_id: f.result() for case_id, f in futures.items()}


@pytest.mark.parametrize(("case_id", "must"), [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(answers: dict[str, subprocess.CompletedProcess[str]], empty_sysfs: str,
                                          case_id: str, must: list[str]) -> None:
    assert_usage_error(answers[case_id], [m.format(empty=empty_sysfs) for m in must])


# Every option DESIGN.md's CLI table lists, and the others `run` has.
HELP_OPTIONS = ["-i", "--interface", "-m", "--mode", "-d", "--direction", "--device", "-f", "--filter", "-t",
                "--interval", "--exclude-dns", "--dns-server", "-l", "--list", "--output", "--count", "-h", "--help",
                "--xdp-mode", "--idle-timeout", "--max-flows", "-v", "--verbose"]


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["run", "-h"]])
def test_help_lists_every_option(argv: list[str]) -> None:
    p = cli(argv)
    assert (p.returncode, p.stderr) == (0, "")
    if argv[0] == "run":
        assert p.stdout.startswith("Usage: xtrace-catch run [OPTIONS]")
    else:  # the top level: the commands and --version first, then run's options
        assert p.stdout.startswith("Usage: xtrace-catch [COMMAND] [OPTIONS]")
        head = p.stdout.split("Options:")[0]
        for name in ("run", "interfaces", "cleanup", "version"):
            assert re.search(rf"^  {name} ", head, re.M), f"command {name} missing from -h"
        assert "--version, -V" in head and "-l, --list" in head
    text = " ".join(p.stdout.split())  # undo the help formatter's line wrapping
    for opt in HELP_OPTIONS:
        assert re.search(rf"(^|[\s,]){re.escape(opt)}([\s,]|$)", text), f"{opt} missing from -h"
    assert "env var: NETWORK_INTERFACE" in text


@pytest.mark.parametrize("argv", [["--version"], ["version"], ["-V"]])
def test_version(argv: list[str]) -> None:
    p = cli(argv)
    assert (p.returncode, p.stderr) == (0, "")
    lines = p.stdout.splitlines()
    assert len(lines) == 5, p.stdout
    assert lines[0] == f"xtrace-catch {xtrace_catch.__version__}"
    assert re.fullmatch(r"attach: XDP (BPF link|netlink .*); TC (TCX link|netlink clsact filter .*)", lines[2]), lines[2]
    m = re.fullmatch(r"libbpf (\d+\.\d+(?:\.\d+)?) \((\w[\w-]*): (/\S+)\)", lines[1])
    assert m, lines[1]
    assert Path(m[3]).exists() and "libbpf" in Path(m[3]).name
    assert re.fullmatch(r"XDP program: (multi-buffer \(xdp\.frags\)|single-buffer \(xdp; .+\)|unknown .+)",
                        lines[3]), lines[3]
    assert lines[4] == f"kernel {platform.release()}"


# -- inside a namespace (root) -------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        yield p


@pytest.mark.kernel
@pytest.mark.parametrize("argv", [["-i", "nosuch0", "--count", "1"], ["run", "-i", "nosuch0"],
                                  ["cleanup", "-i", "nosuch0"]])
def test_unknown_interface_suggests_list(pair: VethPair, argv: list[str]) -> None:
    p = xtrace(pair.ns, argv, env=pair.env)
    line = assert_usage_error(p, ["'nosuch0'", "xtrace-catch -l"])
    assert line == "xtrace-catch: error: interface 'nosuch0' not found; list interfaces with 'xtrace-catch -l'"


@pytest.mark.kernel
@pytest.mark.parametrize("prefix", [[], ["run"]], ids=["bare", "run"])
def test_bare_options_mean_run(pair: VethPair, prefix: list[str]) -> None:
    """`xtrace-catch -i IF -f roce --count 1 -t 100` (the older README's form) is `run`."""
    p = xtrace(pair.ns, [*prefix, "-i", pair.ifname, "-f", "roce", "--count", "1", "-t", "100"], env=pair.env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [f"xtrace-catch: XDP program loaded on {pair.ifname}"]
    # Nothing is sent and IPv6 is off in the namespace: an empty interval, exactly.
    assert p.stdout.splitlines() == [f"--- interval 1 on {pair.ifname}: 0 flows, 0 packets, 0 bytes; "
                                     "filtered=0 truncated=0 overflowed=0 tracked=0/65536"]
