"""`make build` in a fresh checkout leaves ./xtrace-catch, the original XTrace-Catch's quick start
(`make build`, then `sudo ./xtrace-catch run -i eth0`): a launcher that runs the checkout's venv
from any directory, through a symlink and with sudo's bare environment, and that `make clean`
removes. End to end, as a user does it: the checkout's files (what a clone of them would hold:
tracked and not-ignored files) are copied to a temporary directory and `make build` makes its
venv there, with the package index as pip is configured on this machine (~20 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from xtrace_catch import __version__

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make") or "make"
SUDO_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # sudo's secure_path
BUILD_TIMEOUT = 600


def checkout_files() -> list[str]:
    """What a clone of this working tree would hold once its changes are committed."""
    res = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True, timeout=60)
    return [f for f in res.stdout.decode().split("\0") if f and (ROOT / f).is_file()]


def clean_env(**kw: str) -> dict[str, str]:
    """The environment without an outer make's variables or a venv of ours."""
    drop = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "VENV", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **kw}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout in which `make build` has run."""
    src = tmp_path_factory.mktemp("launcher") / "xtrace-catch-src"
    for rel in checkout_files():
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst, follow_symlinks=False)
    assert not (src / ".venv").exists() and not (src / "xtrace-catch").exists()
    p = subprocess.run([MAKE, "--no-print-directory", "build"], cwd=src, capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT, env=clean_env(), stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"make build failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "make build: ./xtrace-catch runs .venv/bin/xtrace-catch" in p.stdout
    return src


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env if env is not None else clean_env())


def test_make_build_keeps_the_wheel_and_installs_into_the_venv(built: Path, tmp_path: Path) -> None:
    assert [w.name for w in (built / "dist").glob("*.whl")] == [f"xtrace_catch-{__version__}-py3-none-any.whl"]
    script = built / ".venv" / "bin" / "xtrace-catch"
    assert os.access(script, os.X_OK)
    p = run([str(built / ".venv" / "bin" / "python"), "-c", "import xtrace_catch; print(xtrace_catch.__file__)"],
            cwd=tmp_path)  # not the checkout: `python -c` would import from the current directory
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(built / "xtrace_catch" / "__init__.py")  # editable: the checkout's files


def test_launcher_version_from_the_checkout(built: Path) -> None:
    launcher = built / "xtrace-catch"
    assert launcher.is_file() and os.access(launcher, os.X_OK)
    p = run(["./xtrace-catch", "--version"], cwd=built)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"xtrace-catch {__version__}"
    assert lines[1].startswith("libbpf ") and any(x.startswith("kernel ") for x in lines)


def test_launcher_from_another_directory_with_sudos_environment(built: Path, tmp_path: Path) -> None:
    # sudo resets the environment: no venv on PATH, no VIRTUAL_ENV; the launcher finds its own.
    p = run([str(built / "xtrace-catch"), "--help"], cwd=tmp_path, env={"PATH": SUDO_PATH, "LANG": "C.UTF-8"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Usage: xtrace-catch ")
    assert "run" in p.stdout and "--version" in p.stdout


def test_launcher_through_a_symlink(built: Path, tmp_path: Path) -> None:
    link = tmp_path / "bin" / "xtrace-catch"
    link.parent.mkdir()
    link.symlink_to(built / "xtrace-catch")
    p = run(["xtrace-catch", "--version"], cwd=tmp_path, env={"PATH": f"{link.parent}:{SUDO_PATH}"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"xtrace-catch {__version__}"


def test_launcher_with_sudo(built: Path, tmp_path: Path) -> None:
    sudo = shutil.which("sudo")
    if sudo is None:
        pytest.skip("sudo is not installed here; the sudo-like bare environment is tested above")
    p = run([sudo, "-n", str(built / "xtrace-catch"), "--version"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"xtrace-catch {__version__}"


def test_launcher_is_git_ignored() -> None:
    for name in ("xtrace-catch", "xtrace-catch.tmp"):
        res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", name], capture_output=True, timeout=30)
        assert res.returncode == 0, f"{name} is not ignored by .gitignore"
    # ... at the top level only: a file of that name elsewhere is not.
    res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "deploy/xtrace-catch"], capture_output=True)
    assert res.returncode == 1


def test_launcher_without_its_venv_says_what_to_do_and_clean_removes_it(built: Path, tmp_path: Path) -> None:
    """Last (the module's tests share `built`): moves the venv away, then runs make clean."""
    (built / ".venv").rename(built / ".venv-away")
    try:
        p = run([str(built / "xtrace-catch"), "--version"], cwd=tmp_path)
        assert p.returncode == 1
        assert p.stderr.strip() == (f"{built}/xtrace-catch: {built}/.venv/bin/xtrace-catch is missing: "
                                    f"run make build in {built}")
    finally:
        (built / ".venv-away").rename(built / ".venv")
    p = subprocess.run([MAKE, "--no-print-directory", "clean"], cwd=built, capture_output=True, text=True,
                       timeout=120, env=clean_env())
    assert p.returncode == 0, p.stderr
    assert not (built / "xtrace-catch").exists() and not (built / ".venv").exists()
    assert not (built / "dist").exists()
