"""Installing as operators do: `make deps` / `make deps-test` (deploy/host/install-deps.sh)
start and enable no service, `make install` puts xtrace-catch on PATH (deploy/host/link-bin.sh),
the docker targets work with Compose v2 and podman and say in one line what is missing
(deploy/container/tool.sh, driven through make with stub tools on PATH), and a wheel installed
into a venv outside the checkout, without network, finds its BPF object and runs.

The package managers and container tools are stubs here (they log their arguments): the
tests must not install packages on, or start containers from, the machine they run on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import VethPair, in_ns, our_prog_ids, veth_pair

ROOT = Path(__file__).resolve().parent.parent
INSTALL_DEPS = ROOT / "deploy" / "host" / "install-deps.sh"
LINK_BIN = ROOT / "deploy" / "host" / "link-bin.sh"
MAKE = shutil.which("make") or "make"


def stub(bindir: Path, name: str, body: str) -> Path:
    p = bindir / name
    p.write_text("#!/usr/bin/env bash\n" + body)
    p.chmod(0o755)
    return p


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def make_vars() -> dict[str, str]:
    """DEB_RUN and DEB_TEST as the Makefile defines them."""
    res = subprocess.run([MAKE, "-C", str(ROOT), "-pn", "help"], capture_output=True, text=True, timeout=30,
                         env=clean_env())
    out = {}
    for var in ("DEB_RUN", "DEB_TEST"):
        m = re.search(rf"^{var} := (.*)$", res.stdout, re.M)
        assert m, var
        out[var] = m[1]
    return out


# -- make deps / deps-test ------------------------------------------------------------------------


@pytest.fixture
def apt(tmp_path: Path) -> dict[str, object]:
    """Stub apt-get, dpkg-query and deb-systemd-helper. dpkg-query says the packages in
    `before` are installed and lists a .service unit for those in `units`."""
    b = tmp_path / "bin"
    b.mkdir()
    log, policy = tmp_path / "apt.log", tmp_path / "policy-rc.d"
    stub(b, "apt-get", f"""
echo "apt-get $*" >> {log}
if [ "$1" = install ]; then
  if [ -x {policy} ]; then {policy} victoria-metrics start; echo "policy-rc.d start -> $?" >> {log}
  else echo "policy-rc.d missing" >> {log}; fi
fi
""")
    stub(b, "dpkg-query", f"""
if [ "$1" = -W ]; then grep -qx "${{@: -1}}" {tmp_path}/before && echo 'install ok installed' && exit 0; exit 1; fi
if [ "$1" = -L ]; then echo /usr/share/doc/$2; grep -qx "$2" {tmp_path}/units && echo /lib/systemd/system/$2.service; exit 0; fi
exit 1
""")
    stub(b, "deb-systemd-helper", f'echo "helper $*" >> {log}\n')
    env = {**os.environ, "APT_GET": str(b / "apt-get"), "DPKG_QUERY": str(b / "dpkg-query"),
           "SYSTEMD_HELPER": str(b / "deb-systemd-helper"), "UPDATE_RC_D": str(b / "none"),
           "POLICY_RC_D": str(policy)}
    return {"env": env, "log": log, "policy": policy, "dir": tmp_path}


def run_deps(apt: dict[str, object], pkgs: list[str], before: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
    d = apt["dir"]
    assert isinstance(d, Path)
    (d / "before").write_text("".join(p + "\n" for p in before))
    (d / "units").write_text("".join(p + "\n" for p in units))
    return subprocess.run(["bash", str(INSTALL_DEPS), *pkgs], capture_output=True, text=True, timeout=60,
                          env=apt["env"], stdin=subprocess.DEVNULL)  # type: ignore[arg-type]


def test_deps_start_and_enable_no_service(apt: dict[str, object]) -> None:
    pkgs = ["libbpf1", "victoria-metrics", "prometheus", "tshark"]
    p = run_deps(apt, pkgs, before=["prometheus"], units=["victoria-metrics", "prometheus"])
    assert p.returncode == 0, p.stderr
    log = lines(apt["log"])  # type: ignore[arg-type]
    assert log[:3] == ["apt-get update -q", "apt-get install -y -q --no-install-recommends " + " ".join(pkgs),
                       "policy-rc.d start -> 101"]  # every service start denied while apt runs
    # The unit of the package this run installed is disabled; prometheus was there before: untouched.
    assert log[3:] == ["helper disable victoria-metrics.service"]
    assert p.stdout.splitlines() == [
        "install-deps: victoria-metrics.service (from victoria-metrics) installed, not started, not enabled"]
    assert not Path(apt["policy"]).exists()  # type: ignore[arg-type]  # ours, removed again


def test_deps_leave_an_existing_policy_rc_d_alone(apt: dict[str, object]) -> None:
    policy = Path(apt["policy"])  # type: ignore[arg-type]
    policy.write_text("#!/bin/sh\n# the host's own\nexit 101\n")
    policy.chmod(0o755)
    p = run_deps(apt, ["tshark"], before=[], units=[])
    assert p.returncode == 0, p.stderr
    assert policy.read_text() == "#!/bin/sh\n# the host's own\nexit 101\n"
    assert "policy-rc.d start -> 101" in lines(apt["log"])  # type: ignore[arg-type]


def test_deps_fail_when_apt_fails(apt: dict[str, object]) -> None:
    env = dict(apt["env"])  # type: ignore[call-overload]
    env["APT_GET"] = "false"
    p = subprocess.run(["bash", str(INSTALL_DEPS), "libbpf1"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode != 0
    assert not Path(apt["policy"]).exists()  # type: ignore[arg-type]  # removed on the way out too


def test_make_deps_is_what_running_needs_and_deps_test_adds_the_rest() -> None:
    v = make_vars()
    run, test = v["DEB_RUN"].split(), v["DEB_TEST"].split()
    assert {"libbpf1", "iproute2", "python3-venv"} <= set(run)
    # Nothing to build or test with in the run-only set.
    assert not set(run) & {"clang", "llvm", "gcc", "tshark", "tcpreplay", "victoria-metrics", "prometheus",
                           "libbpf-dev", "bpftool", "tmux"}
    assert {"clang", "tshark", "tcpreplay", "victoria-metrics", "prometheus"} <= set(test)
    for target, pkgs in (("deps", run), ("deps-test", run + test)):
        res = subprocess.run([MAKE, "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=30,
                             env=clean_env())
        assert res.returncode == 0, res.stderr
        cmd = next(line for line in res.stdout.splitlines() if "install-deps.sh" in line)
        assert cmd.split("install-deps.sh", 1)[1].split() == pkgs


def test_readme_set_up_uses_the_split() -> None:
    """The README's two set-up commands: run-only for the main job, deps-test for the tests."""
    for name in ("README.md", "README_CN.md"):
        text = (ROOT / name).read_text()
        assert "make deps install && xtrace-catch run -i eth0 -m tc -d both" in text, name
        assert "make deps-test && make test" in text, name


def test_ci_runs_the_readme_test_command() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    assert "make deps-test </dev/null" in text and "make test </dev/null" in text


# -- make install: on PATH ------------------------------------------------------------------------


def test_link_bin_puts_the_agent_on_path(tmp_path: Path) -> None:
    target = tmp_path / "venv" / "bin" / "xtrace-catch"
    target.parent.mkdir(parents=True)
    target.write_text("#!/bin/sh\necho agent\n")
    target.chmod(0o755)
    link = tmp_path / "bin" / "xtrace-catch"
    p = subprocess.run(["bash", str(LINK_BIN), str(target), str(link)], capture_output=True, text=True, timeout=30)
    assert (p.returncode, p.stdout.strip()) == (0, f"xtrace-catch: {link} -> {target}"), p.stderr
    assert link.is_symlink() and link.resolve() == target
    found = shutil.which("xtrace-catch", path=str(link.parent))
    assert found and subprocess.run([found], capture_output=True, text=True).stdout == "agent\n"
    # Again (make install twice): the link is replaced, not an error.
    p = subprocess.run(["bash", str(LINK_BIN), str(target), str(link)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and link.resolve() == target


def test_link_bin_leaves_another_install_alone(tmp_path: Path) -> None:
    link = tmp_path / "xtrace-catch"
    link.write_text("#!/bin/sh\necho other\n")
    p = subprocess.run(["bash", str(LINK_BIN), "/x/venv/bin/xtrace-catch", str(link)], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0
    assert p.stderr.strip() == f"make: {link} exists and is not a link: left alone; run /x/venv/bin/xtrace-catch"
    assert link.read_text() == "#!/bin/sh\necho other\n"


def test_make_install_links_into_bindir() -> None:
    res = subprocess.run([MAKE, "-n", "-C", str(ROOT), "install", "BINDIR=/opt/bin"], capture_output=True,
                         text=True, timeout=30, env=clean_env())
    assert res.returncode == 0, res.stderr
    assert f'link-bin.sh "{ROOT}/.venv/bin/xtrace-catch" "/opt/bin/xtrace-catch"' in res.stdout


# -- docker targets: Compose v2, BuildKit, podman ------------------------------------------------


def fake_docker(bindir: Path, log: Path, name: str = "docker", compose: bool = True, buildx: bool = True,
                version: str = "27.3.1") -> Path:
    """A `docker` (or `podman`) that behaves like one without the compose plugin or buildx when told."""
    if compose:
        on_compose = f'[ "$2" = version ] && exit 0; echo "$0 $*" >> {log}; exit 0'
    else:  # what Docker prints without the plugin: `version` unknown, `up -d` a "shorthand flag"
        on_compose = (f'if [ "$2" = version ]; then echo "{name}: \'compose\' is not a {name} command." >&2; exit 1; fi; '
                      "echo \"unknown shorthand flag: 'd' in -d\" >&2; exit 125")
    on_buildx = "exit 0" if buildx else f'echo "{name}: \'buildx\' is not a {name} command." >&2; exit 1'
    return stub(bindir, name, f"""
case "$1" in
compose) {on_compose} ;;
buildx) {on_buildx} ;;
version) echo "{version}"; exit 0 ;;
*) echo "$0 $* BUILDKIT=${{DOCKER_BUILDKIT:-}}" >> {log}; exit 0 ;;
esac
""")


def clean_env(**kw: str) -> dict[str, str]:
    """The environment without an outer make's variables (make test runs these under make)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    return {**env, **kw}


def run_make(target: str, docker: Path, path: Path | None = None, *extra: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(PATH=f"{path or docker.parent}:{os.environ['PATH']}")
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), target, f"DOCKER={docker}",
                           "IMAGE=xtrace-test:stub", *extra], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


def our_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without make's own "*** [target] Error 2" line."""
    return [line for line in p.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]


@pytest.fixture
def stubs(tmp_path: Path) -> tuple[Path, Path]:
    b = tmp_path / "bin"
    b.mkdir()
    return b, tmp_path / "docker.log"


@pytest.mark.parametrize("target", ["docker-up", "docker-up-rdma", "docker-down", "docker-logs"])
def test_compose_v2_runs(stubs: tuple[Path, Path], target: str) -> None:
    b, log = stubs
    docker = fake_docker(b, log)
    p = run_make(target, docker)
    assert p.returncode == 0, p.stderr
    want = {"docker-up": "compose up -d", "docker-up-rdma": "compose up -d", "docker-down": "compose down",
            "docker-logs": "compose logs -f agent"}[target]
    assert lines(log) == [f"{docker} {want}"]


@pytest.mark.parametrize("target", ["docker-up", "docker-up-nccl", "docker-down"])
def test_without_the_compose_plugin_one_line_names_the_package(stubs: tuple[Path, Path], target: str) -> None:
    b, log = stubs
    docker = fake_docker(b, log, compose=False)
    p = run_make(target, docker)
    assert p.returncode != 0
    assert our_lines(p) == [f"make: '{docker} compose' (Docker Compose v2) is missing: install docker-compose-plugin "
                            "(Docker's apt repository; Debian 13: apt-get install docker-compose), or use "
                            "DOCKER=podman"], p.stderr
    assert "unknown shorthand flag" not in p.stderr and lines(log) == []


def test_podman_compose_is_used_where_podman_has_no_compose(stubs: tuple[Path, Path]) -> None:
    b, log = stubs
    podman = fake_docker(b, log, name="podman", compose=False)
    stub(b, "podman-compose", f'echo "podman-compose $*" >> {log}\n')
    p = run_make("docker-up-xdp", podman)
    assert p.returncode == 0, p.stderr
    assert lines(log) == ["podman-compose up -d"]


def test_podman_without_any_compose_says_which_package(stubs: tuple[Path, Path], tmp_path: Path) -> None:
    b, log = stubs
    podman = fake_docker(b, log, name="podman", compose=False)
    # A PATH with the stub and the basic tools only: no podman-compose anywhere.
    tools = tmp_path / "tools"
    tools.mkdir()
    for t in ("bash", "basename", "dirname", "cat", "env", "sh", "id"):
        found = shutil.which(t)
        assert found, t
        (tools / t).symlink_to(found)
    env = {"PATH": f"{b}:{tools}", "HOME": str(tmp_path)}  # nothing of an outer make either
    p = subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "docker-up", f"DOCKER={podman}"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode != 0
    assert our_lines(p) == ["make: podman has no compose provider: install podman-compose "
                            "(apt-get install podman-compose)"], p.stderr


def test_podman_compose_v2_style(stubs: tuple[Path, Path]) -> None:
    b, log = stubs
    podman = fake_docker(b, log, name="podman", compose=True)
    p = run_make("docker-down", podman)
    assert p.returncode == 0, p.stderr
    assert lines(log) == [f"{podman} compose down"]


def test_build_with_buildkit(stubs: tuple[Path, Path]) -> None:
    b, log = stubs
    docker = fake_docker(b, log)
    p = run_make("docker-build", docker)
    assert p.returncode == 0, p.stderr
    (line,) = lines(log)
    assert line.startswith(f"{docker} build --pull=false --secret id=build_ca,src=") and "-t xtrace-test:stub" in line


def test_build_without_buildx_one_line_names_the_package(stubs: tuple[Path, Path]) -> None:
    b, log = stubs
    docker = fake_docker(b, log, buildx=False)
    p = run_make("docker-build", docker)
    assert p.returncode != 0
    assert our_lines(p) == [f"make: BuildKit is missing ('{docker} buildx' does not run; the Dockerfile's build "
                            "secret needs it): install docker-buildx-plugin (Docker's apt repository; Debian 13: "
                            "apt-get install docker-buildx), or use DOCKER=podman"], p.stderr
    assert lines(log) == []


def test_old_docker_builds_with_its_own_buildkit(stubs: tuple[Path, Path]) -> None:
    """Debian 12's docker.io 20.10 has BuildKit in the daemon and no buildx: DOCKER_BUILDKIT=1."""
    b, log = stubs
    docker = fake_docker(b, log, buildx=False, version="20.10.24+dfsg1")
    p = run_make("docker-build", docker)
    assert p.returncode == 0, p.stderr
    (line,) = lines(log)
    assert line.startswith(f"{docker} build ") and line.endswith("BUILDKIT=1")


def test_podman_builds_as_is(stubs: tuple[Path, Path]) -> None:
    b, log = stubs
    podman = fake_docker(b, log, name="podman", buildx=False)
    p = run_make("docker-build", podman)
    assert p.returncode == 0, p.stderr
    (line,) = lines(log)
    assert line.startswith(f"{podman} build --pull=false --secret id=build_ca")


def test_missing_tool_is_one_line(tmp_path: Path) -> None:
    p = run_make("docker-up", tmp_path / "bin" / "docker", path=tmp_path)
    assert p.returncode != 0
    (line,) = our_lines(p)
    assert line.startswith(f"make: {tmp_path}/bin/docker not found: install docker.io (Debian)")


# -- an offline install from the wheel ------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[VethPair]:
    with veth_pair(tmp=tmp_path) as p:
        yield p


@pytest.mark.kernel
def test_wheel_installed_offline_outside_the_checkout_runs(pair: VethPair, tmp_path: Path) -> None:
    """`make build`'s wheel, installed with --no-index into a venv in a directory of its own,
    imports from that venv (not the checkout), finds its BPF object and counts one interval.
    Dependencies come from the test venv through a .pth line: pip may not reach any index here."""
    dist = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "-w", str(dist), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = dist.glob("xtrace_catch-*.whl")
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True,
                           text=True, check=True).stdout
    assert "xtrace_catch/bpf/xtrace.bpf.o" in names and "xtrace_catch/proto/remote_write.proto" in names
    assert re.search(r"xtrace_catch-[^/]+\.dist-info/(licenses/)?LICENSE\b", names), names  # the licence travels
    venv = tmp_path / "opt" / "xtrace-catch"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    res = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--no-deps", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import xtrace_catch; print(xtrace_catch.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where
    env = {k: v for k, v in pair.env.items() if k != "XTRACE_LIBBPF"}
    p = in_ns(pair.ns, ["env", "-C", str(tmp_path), str(venv / "bin" / "xtrace-catch"), "run", "-i", pair.ifname,
                        "-m", "tc", "--count", "1", "-t", "100", "--output", "json"], check=False, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert '"record":"summary"' in p.stdout.replace(" ", ""), p.stdout
    assert our_prog_ids(pair.ns, pair.ifname) == {}
