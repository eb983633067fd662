"""The READMEs against the CLI, and the two READMEs against each other.

- Options: every option `xtrace-catch run -h` lists is in the options table of README.md and
  README_CN.md, and every option in those tables exists (long names, short names, and
  ``--vm-enabled/--vm-disabled`` as two names); the values a choice option takes are listed.
- Quick start: every shell command in the "Quick start" code blocks is accounted for in
  QUICK_START below, which says what is checked for it; README_CN.md's blocks hold the same
  commands. Commands that can run here run for real inside a test namespace (kernel tier):
  ``eth0`` becomes the test veth, run commands get ``--count 1 -t 100`` appended (the last
  value of an option wins), ``-m rdma``/``-m nccl`` read the fixture tree
  tests/data/sysfs/roce/sys (``--sysfs-root``, which also replaces ``/host/sys``), and the
  VictoriaMetrics block runs against the README's own ``victoria-metrics`` command started in
  that namespace (storage in a temporary directory), its URLs also checked with
  ``classify_url``.
- The two READMEs keep in step: the same heading levels in the same order, the same set of
  ``--options`` and of ``xtrace_*`` names.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import AGENT_IP4, VethPair, in_ns, veth_pair, xtrace, xtrace_cmd
from vm import http

from xtrace_catch import __version__
from xtrace_catch.cli import _route
from xtrace_catch.export.push import PushFormat, classify_url
from xtrace_catch.kernel.layout import Filter
from xtrace_catch.settings import DEFAULT_VM_URL, DirectionChoice, Mode, Output

ROOT = Path(__file__).resolve().parent.parent
READMES = {"en": ROOT / "README.md", "cn": ROOT / "README_CN.md"}
QUICK_START_HEADING = {"en": "## Quick start", "cn": "## 快速上手"}
FIXTURE_SYSFS = ROOT / "tests" / "data" / "sysfs" / "roce" / "sys"
LONG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SHORT = re.compile(r"(?<![\w-])-[a-zA-Z](?![\w-])")


# -- reading markdown --------------------------------------------------------------------------


def lines_outside_code(text: str) -> Iterator[str]:
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def headings(text: str) -> list[tuple[int, str]]:
    out = []
    for line in lines_outside_code(text):
        m = re.match(r"^(#{1,6}) (.*)$", line)
        if m:
            out.append((len(m.group(1)), m.group(2)))
    return out


def section(text: str, heading: str) -> str:
    """From `heading` (a whole line) to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    fenced = False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            fenced = not fenced
        m = re.match(r"^(#{1,6}) ", lines[i])
        if m and not fenced and len(m.group(1)) <= level:
            return "\n".join(lines[start:i])
    return "\n".join(lines[start:])


def code_blocks(text: str, lang: str = "sh") -> list[list[str]]:
    blocks, cur = [], None
    for line in text.splitlines():
        if cur is None and line.strip() == f"```{lang}":
            cur = []
        elif cur is not None and line.startswith("```"):
            blocks.append(cur)
            cur = None
        elif cur is not None:
            cur.append(line)
    return blocks


def strip_comment(line: str) -> str:
    """A shell line without its trailing comment (none of ours has '#' inside quotes)."""
    return re.sub(r"\s+#.*$", "", line).strip()


def quick_start_commands(lang: str) -> list[str]:
    sec = section(READMES[lang].read_text(), QUICK_START_HEADING[lang])
    cmds = [strip_comment(x) for block in code_blocks(sec) for x in block]
    return [c for c in cmds if c]


def options_table(lang: str) -> list[tuple[str, str]]:
    """(first cell, second cell) of each row of the table under the `xtrace-catch run` options heading."""
    text = READMES[lang].read_text()
    heading = next(f"{'#' * lvl} {h}" for lvl, h in headings(text) if "`xtrace-catch run`" in h)
    rows = []
    for line in section(text, heading).splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 2 and cells[0].startswith("`-"):
            rows.append((cells[0], cells[1]))
    assert len(rows) > 20, f"no options table under {heading!r} in {READMES[lang].name}"
    return rows


# -- the CLI's options -------------------------------------------------------------------------


def run_help() -> str:
    p = subprocess.run([*xtrace_cmd(), "run", "-h"], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "LANG": "C.UTF-8"})
    assert p.returncode == 0, p.stderr
    return p.stdout


def help_options(text: str) -> tuple[set[str], set[str]]:
    """(long names, short names) of the option lines of `-h` (not names quoted in descriptions)."""
    longs: set[str] = set()
    shorts: set[str] = set()
    body = text.split("Options:", 1)[1]
    for m in re.finditer(r"^  ((?:-\w, )?--[\w-]+(?: / --[\w-]+)?)", body, re.M):
        longs.update(LONG.findall(m.group(1)))
        shorts.update(SHORT.findall(m.group(1)))
    return longs, shorts


def test_help_parsing_sees_pairs_and_short_names() -> None:
    longs, shorts = help_options(run_help())
    assert {"--vm-enabled", "--vm-disabled", "--interface", "--help", "--rdma-device"} <= longs
    assert shorts == {"-i", "-m", "-d", "-f", "-t", "-l", "-v", "-h"}
    assert "--exclude-dns" in longs  # an option line, not only the description of --dns-server


@pytest.mark.parametrize("lang", ["en", "cn"])
def test_options_table_matches_run_help(lang: str) -> None:
    longs, shorts = help_options(run_help())
    table = options_table(lang)
    doc_longs = {o for first, _ in table for o in LONG.findall(first)}
    doc_shorts = {o for first, _ in table for o in SHORT.findall(first)}
    assert sorted(longs - doc_longs) == [], f"in 'run -h' but not in {READMES[lang].name}'s options table"
    assert sorted(doc_longs - longs) == [], f"in {READMES[lang].name}'s options table but not in 'run -h'"
    assert doc_shorts == shorts


CHOICES: dict[str, set[str]] = {
    "--mode": {m.value for m in Mode},
    "--direction": {d.value for d in DirectionChoice},
    "--filter": {f.name.lower() for f in Filter},
    "--output": {o.value for o in Output},
    "--xdp-mode": {"auto", "native", "generic"},
}


@pytest.mark.parametrize("lang", ["en", "cn"])
@pytest.mark.parametrize("option", list(CHOICES))
def test_options_table_lists_the_choices(lang: str, option: str) -> None:
    row = next(desc for first, desc in options_table(lang) if option in LONG.findall(first))
    listed = set(re.findall(r"`([a-z_0-9]+)`", row))
    assert CHOICES[option] <= listed, f"{option}: {sorted(CHOICES[option] - listed)} missing in {row!r}"


# -- the two READMEs keep in step ----------------------------------------------------------------


def test_readmes_have_the_same_heading_levels() -> None:
    en, cn = (headings(READMES[k].read_text()) for k in ("en", "cn"))
    assert [lvl for lvl, _ in en] == [lvl for lvl, _ in cn]
    assert len(en) > 10


@pytest.mark.parametrize("pattern", [LONG.pattern, r"\bxtrace_[a-z0-9_]*[a-z0-9]"], ids=["options", "xtrace_names"])
def test_readmes_name_the_same_options_and_metrics(pattern: str) -> None:
    en, cn = (set(re.findall(pattern, READMES[k].read_text())) for k in ("en", "cn"))
    assert sorted(en - cn) == [] and sorted(cn - en) == []
    assert len(en) > 15


def test_quick_start_blocks_are_the_same_commands() -> None:
    assert quick_start_commands("cn") == quick_start_commands("en")


# -- Quick start ---------------------------------------------------------------------------------


@dataclass
class Ran:
    argv: list[str]
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def _summary_last(r: Ran, ifname: str) -> None:
    assert r.out.splitlines()[-1].startswith(f"--- interval 1 on {ifname}: "), r.out


def check_list(r: Ran, ifname: str) -> None:
    assert r.out.splitlines()[0].split() == ["INTERFACE", "STATE", "LINK", "MTU", "ATTACHED", "ADDRESSES"]
    row = next(x for x in r.out.splitlines() if x.startswith(ifname + " "))
    assert row.split()[1:] == ["UP", "Ethernet", "1500", "-", AGENT_IP4]


def check_xdp(r: Ran, ifname: str) -> None:
    assert r.err_lines == [f"xtrace-catch: XDP program loaded on {ifname}"]
    _summary_last(r, ifname)


def check_tc_both(r: Ran, ifname: str) -> None:
    assert r.err_lines == [f"xtrace-catch: TC program attached to {ifname} (ingress, egress)"]
    _summary_last(r, ifname)


def check_tc_egress_json(r: Ran, ifname: str) -> None:
    assert r.err_lines == [f"xtrace-catch: TC program attached to {ifname} (egress)"]
    recs = [json.loads(x) for x in r.out.splitlines()]
    assert [x.get("record") for x in recs] == ["summary"] and recs[0]["ifname"] == ifname


def check_cleanup(r: Ran, ifname: str) -> None:
    assert r.out == f"nothing of xtrace-catch's on {ifname}\n" and r.err == ""


def check_version(r: Ran, ifname: str) -> None:
    lines = r.out.splitlines()
    assert lines[0] == f"xtrace-catch {__version__}"
    assert lines[1].startswith("libbpf ") and "not usable" not in lines[1]
    assert lines[2].startswith("attach: XDP ") and "; TC " in lines[2]
    assert lines[3].startswith("XDP program: ") and "xdp" in lines[3]
    assert lines[4].startswith("kernel ")


def rdma_lines(r: Ran) -> list[str]:
    assert r.err_lines and r.err_lines[-1].startswith("xtrace-catch: reading ") and str(FIXTURE_SYSFS) in r.err
    return r.out.splitlines()


def check_rdma_all(r: Ran, ifname: str) -> None:
    # No -i: the default eth0, which in the fixture has no RDMA device behind it -> all devices.
    assert "of all RDMA devices (none behind eth0)" in r.err
    assert [x.split()[0] for x in rdma_lines(r)] == ["mlx4_0/1", "mlx4_0/2", "mlx5_0/1", "mlx5_1/1"]


def check_rdma_one(r: Ran, ifname: str) -> None:
    assert [x.split()[0] for x in rdma_lines(r)] == ["mlx5_0/1"]


def check_nccl_json(r: Ran, ifname: str) -> None:
    recs = [json.loads(x) for x in rdma_lines(r)]
    assert [(x["record"], x["device"], x["port"]) for x in recs] == [("rdma_port", "mlx5_0", 1)]
    assert "hw_counters" in recs[0] and "health" in recs[0]


def check_push(fmt: PushFormat, shown: str) -> Callable[[Ran, str], None]:
    def check(r: Ran, ifname: str) -> None:
        assert r.err_lines[1] == f"xtrace-catch: pushing metrics to {shown} ({fmt.value})", r.err
        assert len(r.err_lines) == 2, r.err
        _summary_last(r, ifname)
    return check


def check_metrics_addr(r: Ran, ifname: str) -> None:
    assert r.err_lines == [f"xtrace-catch: XDP program loaded on {ifname}",
                           "xtrace-catch: serving /metrics on 0.0.0.0:9435"]
    _summary_last(r, ifname)


RUN_URL = "http://127.0.0.1:8428/api/v1/write"

# Every Quick start command -> (what is checked, the check). Runs in the test namespace.
QUICK_START: dict[str, tuple[str, Callable[[Ran, str], None]]] = {
    "xtrace-catch -l":
        ("runs: lists the veth, UP, its MTU and address, nothing attached", check_list),
    "xtrace-catch run -i eth0":
        ("runs (XDP on the veth), one interval", check_xdp),
    "xtrace-catch run -i eth0 -m tc -d both -f roce":
        ("runs (TC both ways, RoCE filter), one interval", check_tc_both),
    "xtrace-catch -i eth0 -f roce":
        ("runs: the older form means run (XDP)", check_xdp),
    "xtrace-catch run -i eth0 -m tc -d egress --output json --count 3 -t 1000":
        ("runs (shortened to one 100 ms interval): TC egress, one JSON summary record", check_tc_egress_json),
    "xtrace-catch run -i eth0 --exclude-dns --dns-server 10.0.0.53":
        ("runs: DNS exclusion with an extra server address loaded into the map", check_xdp),
    "xtrace-catch cleanup -i eth0":
        ("runs: nothing to clean on the fresh veth", check_cleanup),
    "xtrace-catch --version":
        ("runs: version, a usable libbpf, the kernel", check_version),
    "xtrace-catch -m rdma":
        ("runs against the fixture sysfs (--sysfs-root): all four ports, one interval", check_rdma_all),
    "xtrace-catch -m rdma -d mlx5_0 -t 1000":
        ("runs against the fixture sysfs: -d names the device in rdma mode", check_rdma_one),
    "xtrace-catch -m nccl --device mlx5_0 --output json":
        ("runs against the fixture sysfs: one rdma_port record with hw_counters and health", check_nccl_json),
    "xtrace-catch -m rdma --sysfs-root /host/sys":
        ("runs with /host/sys replaced by the fixture sysfs", check_rdma_all),
    "victoria-metrics -storageDataPath /var/lib/vm -httpListenAddr 127.0.0.1:8428 &":
        ("runs in the namespace (storage in a temporary directory) until /health says OK; the next two "
         "commands push to it", lambda r, i: None),
    "VICTORIAMETRICS_ENABLED=true xtrace-catch run -i eth0 -m tc -d both":
        ("the default URL classifies as text import; runs and its one interval arrives in VictoriaMetrics",
         check_push(PushFormat.TEXT, "http://localhost:8428/api/v1/import/prometheus")),
    f"xtrace-catch run -i eth0 --vm-enabled --vm-url {RUN_URL}":
        ("the URL classifies as remote write; runs and its one interval arrives in VictoriaMetrics",
         check_push(PushFormat.REMOTE_WRITE, RUN_URL)),
    "xtrace-catch run -i eth0 --metrics-addr 0.0.0.0:9435":
        ("runs: serves /metrics on 0.0.0.0:9435 inside the namespace", check_metrics_addr),
}


def test_every_quick_start_command_is_accounted_for() -> None:
    assert quick_start_commands("en") == list(QUICK_START)


def test_quick_start_push_urls_classify() -> None:
    assert classify_url(DEFAULT_VM_URL) is PushFormat.TEXT
    assert classify_url(RUN_URL) is PushFormat.REMOTE_WRITE


def prepare(cmd: str, ifname: str) -> tuple[list[str], dict[str, str]]:
    """The README command as it runs here: (argv, extra environment)."""
    words = shlex.split(cmd)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    assert words[0] == "xtrace-catch", cmd
    args = [ifname if w == "eth0" else str(FIXTURE_SYSFS) if w == "/host/sys" else w for w in words[1:]]
    routed = _route(args)
    if routed[0] == "run":
        mode = args[args.index("-m") + 1] if "-m" in args else "xdp"
        if mode in ("rdma", "nccl") and "--sysfs-root" not in args:
            args += ["--sysfs-root", str(FIXTURE_SYSFS)]
        args += ["--count", "1", "-t", "100"]
    return args, env


@pytest.fixture(scope="module")
def ns_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path_factory.mktemp("docs")) as p:
        in_ns(p.ns, ["ip", "link", "set", "lo", "up"])  # VictoriaMetrics and /metrics on 127.0.0.1
        yield p


def run_here(pair: VethPair, cmd: str) -> Ran:
    args, env = prepare(cmd, pair.ifname)
    p = xtrace(pair.ns, args, env={**pair.env, **env}, timeout=60)
    r = Ran(args, p.returncode, p.stdout, p.stderr)
    assert r.rc == 0, f"{cmd!r} as {args}: exit {r.rc}: {r.err}"
    return r


# The Quick start's second code block: VictoriaMetrics, then the commands that push to it or serve /metrics.
VM_BLOCK = [strip_comment(x) for x in code_blocks(section(READMES["en"].read_text(), QUICK_START_HEADING["en"]))[1]
            if strip_comment(x)]
RUNNABLE = [c for c in QUICK_START if c not in VM_BLOCK]


@pytest.mark.kernel
@pytest.mark.parametrize("cmd", RUNNABLE)
def test_quick_start_command_runs(ns_pair: VethPair, cmd: str) -> None:
    r = run_here(ns_pair, cmd)
    QUICK_START[cmd][1](r, ns_pair.ifname)


@pytest.mark.kernel
def test_quick_start_victoria_metrics_block(ns_pair: VethPair, tmp_path: Path) -> None:
    assert VM_BLOCK[0].startswith("victoria-metrics ") and VM_BLOCK[0].endswith(" &")
    argv = shlex.split(VM_BLOCK[0][:-1])
    argv[argv.index("-storageDataPath") + 1] = str(tmp_path / "vm")
    log = open(tmp_path / "vm.log", "wb")
    vm = subprocess.Popen(["ip", "netns", "exec", ns_pair.ns, *argv], stdout=log, stderr=subprocess.STDOUT)
    base = "http://127.0.0.1:8428"
    try:
        deadline = time.monotonic() + 20
        for _ in range(400):
            status, body = http(ns_pair.ns, "GET", f"{base}/health", timeout=2)
            if status == 200 and body.strip() == b"OK":
                break
            assert vm.poll() is None and time.monotonic() < deadline, (tmp_path / "vm.log").read_text()[-2000:]
            time.sleep(0.05)

        def samples() -> int:
            http(ns_pair.ns, "GET", f"{base}/internal/force_flush")
            status, body = http(ns_pair.ns, "GET", f"{base}/api/v1/export", {
                "match[]": f'xtrace_agent_packets_seen_total{{interface="{ns_pair.ifname}"}}', "start": "0"})
            assert status == 200, body
            return sum(len(json.loads(x)["values"]) for x in body.decode().splitlines() if x.strip())

        for cmd in VM_BLOCK[1:]:
            before = samples()
            r = run_here(ns_pair, cmd)
            QUICK_START[cmd][1](r, ns_pair.ifname)
            if "pushing metrics" in r.err:
                deadline = time.monotonic() + 20
                for _ in range(400):
                    if samples() == before + 1:  # one interval, one sample of the series
                        break
                    assert time.monotonic() < deadline, f"{cmd!r}: no sample arrived in VictoriaMetrics"
                    time.sleep(0.05)
    finally:
        vm.kill()
        vm.wait(timeout=10)
        log.close()
