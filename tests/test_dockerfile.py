"""The Dockerfile's stages and the image make targets (pure, fast; the container tool is a stub).

- The default target (the last stage, what `docker build` with no --target makes) is the slim
  image: it adds nothing to the `final` stage, which installs no compiler and no curl, wget,
  ping or tcpdump. `--target debug` (make docker-build-debug) is `final` plus those.
- `make docker-test` builds IMAGE first when the tool does not have it, saying so in one line,
  and not when it has it; a missing tool fails without building.
- `make docker-shell` opens the debug image when it is there and IMAGE was not given.
The real builds of both images, and what is in them, are tests/test_image.py's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make") or "make"
DEBUG_TOOLS = ("curl", "wget", "iputils-ping")
NOT_IN_DEFAULT = (*DEBUG_TOOLS, "ping", "tcpdump", "iproute2", "gcc", "clang", "make", "python3-pip")


@dataclass
class Stage:
    base: str
    name: str | None
    ins: list[tuple[str, str]] = field(default_factory=list)

    def runs(self) -> str:
        return " ".join(r for w, r in self.ins if w == "RUN")


def stages() -> list[Stage]:
    """The Dockerfile's stages: instructions with continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    out: list[Stage] = []
    for ins in logical:
        word, _, rest = ins.strip().partition(" ")
        if word.upper() == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert m, f"unparsed FROM: {ins}"
            out.append(Stage(m.group(1), m.group(2)))
        elif out:
            out[-1].ins.append((word.upper(), rest.strip()))
    return out


def chain(target: str | None = None) -> list[Stage]:
    """The stages an image is made of, base first: `target`'s, or the default (last) stage's."""
    all_ = stages()
    by_name = {s.name: s for s in all_ if s.name}
    stage = by_name[target] if target else all_[-1]
    out = [stage]
    while stage.base in by_name:
        stage = by_name[stage.base]
        out.insert(0, stage)
    return out


def installed(image_stages: list[Stage]) -> set[str]:
    words: set[str] = set()
    for s in image_stages:
        words |= set(re.split(r"[\s;&|]+", s.runs()))
    return words


def test_stage_names() -> None:
    assert [s.name for s in stages()] == ["builder", "final", "debug", None]


def test_default_target_is_the_final_stage_unchanged() -> None:
    default = chain()
    assert [s.name for s in default] == ["final", None]
    assert default[-1].ins == [], "the last stage must add nothing: it is the slim image as built in 'final'"
    assert default[0].base == "${BASE_IMAGE}"
    assert ("ENTRYPOINT", '["xtrace-catch"]') in default[0].ins
    assert any(w == "COPY" and r.startswith("--from=builder ") for w, r in default[0].ins)


def test_default_image_has_no_debug_tools_and_no_compiler() -> None:
    words = installed(chain())
    assert {"python3", "libelf1", "ca-certificates"} <= words
    assert not words & set(NOT_IN_DEFAULT), sorted(words & set(NOT_IN_DEFAULT))


def test_debug_image_is_final_plus_tools() -> None:
    debug = chain("debug")
    assert [s.name for s in debug] == ["final", "debug"]
    added = installed(debug[1:])
    assert set(DEBUG_TOOLS) <= added
    assert not added & {"gcc", "clang", "make", "python3-pip"}
    # Kept small: the package lists are cleaned as in final, and recommends are not pulled in.
    assert "--no-install-recommends" in debug[1].runs() and "rm -rf /var/lib/apt/lists/*" in debug[1].runs()


# -- make targets, with a stub container tool ------------------------------------------------------


def clean_env(**kw: str) -> dict[str, str]:
    """The environment without an outer make's variables (make test runs these under make)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "IMAGE", "IMAGE_DEBUG", "SMOKE_BPF")}
    return {**env, **kw}


def stub_docker(tmp_path: Path, images: tuple[str, ...]) -> tuple[Path, Path]:
    """A `docker` that has `images` (and what it builds: `build ... -t TAG`), logs every other
    call and succeeds; `image inspect` of another image fails as Docker's does."""
    log, store = tmp_path / "docker.log", tmp_path / "images"
    store.write_text("".join(f"{i}\n" for i in images))
    b = tmp_path / "bin"
    b.mkdir()
    docker = b / "docker"
    docker.write_text(f"""#!/usr/bin/env bash
if [ "$1 $2" = "image inspect" ]; then
  grep -qxF -- "${{@: -1}}" {store} && {{ echo '[xtrace-catch]'; exit 0; }}
  echo "Error: No such image: ${{@: -1}}" >&2; exit 1
fi
[ "$1" = buildx ] && exit 0
echo "$*" >> {log}
if [ "$1" = build ]; then
  while [ $# -gt 0 ]; do [ "$1" = -t ] && echo "$2" >> {store}; shift; done
fi
exit 0
""")
    docker.chmod(0o755)
    return docker, log


def run_make(docker: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), *args, f"DOCKER={docker}"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=clean_env(PATH=f"{docker.parent}:{os.environ['PATH']}"))


def logged(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_docker_build_debug_targets_the_debug_stage(tmp_path: Path) -> None:
    docker, log = stub_docker(tmp_path, ())
    p = run_make(docker, "docker-build-debug")
    assert p.returncode == 0, p.stderr
    (build,) = logged(log)
    assert build.startswith("build ") and " --target debug " in build and " -t xtrace-catch:debug " in build
    p = run_make(docker, "docker-build")
    assert p.returncode == 0, p.stderr
    # The default target's stage by name (the same image; see the Makefile on buildah).
    assert " --target final -t xtrace-catch:latest " in logged(log)[-1]


def test_docker_test_builds_a_missing_image_first(tmp_path: Path) -> None:
    docker, log = stub_docker(tmp_path, ())
    p = run_make(docker, "docker-test", "IMAGE=xtrace-test:stub")
    # The stub's smoke test fails (its `run` prints nothing): what matters is what came first.
    assert "make docker-test: xtrace-test:stub is not there: building it (make docker-build)" in p.stdout.splitlines()
    calls = logged(log)
    assert calls[0].startswith("build ") and " --target final -t xtrace-test:stub " in calls[0], calls
    assert calls[1].startswith("run --rm xtrace-test:stub --version"), calls


def test_docker_test_uses_an_image_that_is_there(tmp_path: Path) -> None:
    docker, log = stub_docker(tmp_path, ("xtrace-test:stub",))
    p = run_make(docker, "docker-test", "IMAGE=xtrace-test:stub")
    assert "building" not in p.stdout
    assert not any(c.startswith("build ") for c in logged(log))
    assert logged(log)[0].startswith("run --rm xtrace-test:stub --version")


def test_docker_test_without_the_tool_fails_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "docker"
    p = run_make(missing, "docker-test")
    assert p.returncode != 0
    assert f"make: {missing} not found:" in p.stderr
    assert "building" not in p.stdout


@pytest.mark.parametrize(("images", "args", "used"), [
    (("xtrace-catch:latest", "xtrace-catch:debug"), (), "xtrace-catch:debug"),
    (("xtrace-catch:latest",), (), "xtrace-catch:latest"),
    (("xtrace-catch:latest", "xtrace-catch:debug"), ("IMAGE=xtrace-catch:latest",), "xtrace-catch:latest"),
    (("mine:1", "xtrace-catch:debug"), ("IMAGE=mine:1",), "mine:1"),
    (("xtrace-catch:latest", "dbg:2"), ("IMAGE_DEBUG=dbg:2",), "dbg:2"),
], ids=["debug-there", "no-debug", "IMAGE-given", "IMAGE-other", "IMAGE_DEBUG-given"])
def test_docker_shell_prefers_the_debug_image(tmp_path: Path, images: tuple[str, ...], args: tuple[str, ...],
                                              used: str) -> None:
    docker, log = stub_docker(tmp_path, images)
    p = run_make(docker, "docker-shell", *args)
    assert p.returncode == 0, p.stderr
    (call,) = logged(log)
    assert call.startswith("run --rm -it --privileged --network host ") and call.endswith(
        f" --entrypoint /bin/bash {used}"), call
    assert f"make docker-shell: {used}" in p.stdout.splitlines()
    if used == "xtrace-catch:latest" and not args:
        assert "make docker-build-debug adds them" in p.stdout


def test_help_names_the_debug_targets() -> None:
    p = subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "help"], capture_output=True, text=True,
                       timeout=30, env=clean_env())
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(x.startswith("make docker-build-debug ") and "curl" in x for x in lines)
    shell = next(i for i, x in enumerate(lines) if x.startswith("make docker-shell "))
    assert "IMAGE_DEBUG" in lines[shell] and "curl, ping, wget" in lines[shell + 1]
    assert any("builds IMAGE first" in x for x in lines)
