"""The real container image, built and smoke-tested without a daemon as `make image-test` does:
buildah (vfs storage, chroot isolation), the base made by mmdebstrap when it is not there, then
`make docker-build` and `SMOKE_BPF=1 make docker-test` (deploy/container/smoke-test.sh: the
vendored libbpf, -h, -l, no compiler, and the TC program loaded inside the container on a veth
pair between two throw-away network namespaces). Then the debug variant: `make
docker-build-debug` is the default image plus one layer holding curl, wget, ping, ip and
tcpdump, none of which is in the default image.

Kernel tier (root: mmdebstrap, namespaces, BPF). Without buildah or mmdebstrap the tests are
skipped, naming the package; under CI (which installs them with 'make deps-test') they fail.
~1.5 min for a build without cache here (2 CPUs), seconds with buildah's layer cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make") or "make"
IMAGE = "xtrace-catch:pytest"
IMAGE_DEBUG = "xtrace-catch:pytest-debug"
BASE_IMAGE = "debian:bookworm-slim"
DEBUG_TOOLS = ("curl", "wget", "ping", "ip", "tcpdump")

pytestmark = pytest.mark.kernel


def env() -> dict[str, str]:
    """This environment without an outer make's variables, with the Makefile's buildah defaults."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "IMAGE", "IMAGE_DEBUG", "SMOKE_BPF")}
    e.setdefault("STORAGE_DRIVER", "vfs")
    e.setdefault("BUILDAH_ISOLATION", "chroot")
    return e


def make(*args: str, timeout: float, **extra: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), *args, "DOCKER=buildah",
                        f"IMAGE={IMAGE}", f"IMAGE_DEBUG={IMAGE_DEBUG}", f"BASE_IMAGE={BASE_IMAGE}"],
                       capture_output=True, text=True, timeout=timeout, env={**env(), **extra},
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"make {' '.join(args)} failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


def buildah(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout, env=env(),
                       stdin=subprocess.DEVNULL)
    if check:
        assert p.returncode == 0, f"buildah {' '.join(args)}: {p.stderr}"
    return p


def has_image(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """IMAGE built from this checkout (and the base, when it is missing); removed afterwards
    (buildah's layer cache stays, so the next build is quick)."""
    require_tool("buildah", "buildah")
    require_tool("mmdebstrap", "mmdebstrap")
    if not has_image(BASE_IMAGE):
        make("docker-base", timeout=900)
    make("docker-build", timeout=1800)
    try:
        yield IMAGE
    finally:
        for name in (IMAGE_DEBUG, IMAGE):  # the debug image first: it is built on IMAGE
            if has_image(name):
                buildah("rmi", name, check=False)


def test_image_passes_the_smoke_test_with_bpf(image: str) -> None:
    p = make("docker-test", timeout=600, SMOKE_BPF="1")
    assert "building" not in p.stdout  # docker-test found the image docker-build made
    for check in ("--version", "no compiler, no pip", "BPF attach in the container", "UDP flow counted"):
        assert f"ok   {check}" in p.stdout, p.stdout
    assert f"smoke test of {image}: passed" in p.stdout


def found_in(name: str, tools: tuple[str, ...]) -> set[str]:
    """Which of `tools` are on the PATH of image `name`."""
    ctr = buildah("from", "--pull=never", "--quiet", name).stdout.strip()
    try:
        script = 'for t in "$@"; do command -v "$t" >/dev/null && echo "$t"; done; true'
        p = buildah("run", ctr, "--", "sh", "-c", script, "sh", *tools)
        return set(p.stdout.split())
    finally:
        buildah("rm", ctr, check=False)


def diff_ids(name: str) -> list[str]:
    return buildah("inspect", "--type", "image", "--format", "{{.OCIv1.RootFS.DiffIDs}}", name).stdout.strip(
        "[] \n").split()


def test_debug_image_is_the_default_plus_the_tools(image: str) -> None:
    make("docker-build-debug", timeout=900)
    # The default again, from the layer cache the debug build just used: had a file of the build
    # context changed since the fixture's build (someone editing the checkout), the builder ran
    # again, and its venv's files are not byte-for-byte reproducible.
    make("docker-build", timeout=1800)
    assert found_in(IMAGE_DEBUG, DEBUG_TOOLS) == set(DEBUG_TOOLS)
    assert found_in(image, DEBUG_TOOLS) == set()
    # The default image is a prefix of the debug one: the slim image, and one layer on top.
    base, debug = diff_ids(image), diff_ids(IMAGE_DEBUG)
    assert len(debug) == len(base) + 1 and debug[:len(base)] == base
    # The debug image still runs the agent (same entrypoint), and curl works in it.
    ctr = buildah("from", "--pull=never", "--quiet", IMAGE_DEBUG).stdout.strip()
    try:
        p = buildah("run", ctr, "--", "xtrace-catch", "--version")
        assert p.stdout.startswith("xtrace-catch ")
        p = buildah("run", ctr, "--", "curl", "--version")
        assert p.stdout.startswith("curl ")
    finally:
        buildah("rm", ctr, check=False)
