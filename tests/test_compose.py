"""docker-compose.yml as Compose reads it (pure, fast): the file parsed as YAML, then the
Compose specification's variable interpolation applied to every value, for the environments
users start it with: `docker compose up` alone, `INTERFACE=...` (the original XTrace-Catch's
variable), `NETWORK_INTERFACE=...` (which wins over INTERFACE), and an external
VictoriaMetrics (`VICTORIAMETRICS_REMOTE_WRITE`, `VICTORIAMETRICS_ENABLED`). Every variable
the file uses is documented in its header comment, and `make docker-up`'s variables reach the
agent. Where `docker compose` runs, its own `config` output is compared as well.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
MAKE = shutil.which("make") or "make"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_URL = "http://127.0.0.1:8428/api/v1/write"


class InterpolationError(ValueError):
    """A `${VAR:?msg}` / `${VAR?msg}` whose variable is missing, or a malformed reference."""


# -- the Compose specification's interpolation ---------------------------------------------------


def _braced_end(text: str, start: int) -> int:
    """Index of the `}` closing the `${` whose body starts at `start` (nested `${...}` skipped)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"unterminated ${{ in {text!r}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`text` with `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
    `${VAR?err}`, `${VAR:+alt}`, `${VAR+alt}` replaced from `env` and `$$` made `$`. Defaults
    and alternatives are interpolated themselves (nested defaults). Colon forms treat an empty
    value like an unset one. Raises InterpolationError for a required variable that is missing."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            end = _braced_end(text, i + 2)
            body = text[i + 2:end]
            i = end + 1
            m = NAME.match(body)
            if not m:
                raise InterpolationError(f"invalid reference ${{{body}}}")
            name, rest = m.group(), body[m.end():]
            value = env.get(name)
            if rest == "":
                out.append(value or "")
                continue
            op = rest[:2] if rest[:2] in (":-", ":?", ":+") else rest[:1]
            if op not in (":-", ":?", ":+", "-", "?", "+"):
                raise InterpolationError(f"invalid reference ${{{body}}}")
            arg = rest[len(op):]
            missing = value is None or (op.startswith(":") and value == "")
            if op.endswith("-"):
                out.append(interpolate(arg, env) if missing else value or "")
            elif op.endswith("?"):
                if missing:
                    raise InterpolationError(f"required variable {name} is missing: {interpolate(arg, env)}")
                out.append(value or "")
            else:  # "+": the alternative when set
                out.append("" if missing else interpolate(arg, env))
            continue
        m = NAME.match(text, i + 1)
        if m:
            out.append(env.get(m.group()) or "")
            i = m.end()
            continue
        out.append(c)  # a lone "$" stays (Compose warns; none of ours has one)
        i += 1
    return "".join(out)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Every string value of a parsed compose file interpolated (keys stay as written, as in Compose)."""
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def compose(env: Mapping[str, str]) -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    out = interpolate_tree(doc, env)
    assert isinstance(out, dict)
    return out


def agent(env: Mapping[str, str]) -> dict[str, Any]:
    a = compose(env)["services"]["agent"]
    assert isinstance(a, dict)
    return a


# -- the interpolation itself ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "env", "want"), [
    ("${A}", {"A": "x"}, "x"),
    ("${A}", {}, ""),
    ("$A/$B_2", {"A": "x", "B_2": "y"}, "x/y"),
    ("${A:-d}", {}, "d"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A-d}", {"A": ""}, ""),
    ("${A-d}", {}, "d"),
    ("${A:-${B:-eth0}}", {}, "eth0"),
    ("${A:-${B:-eth0}}", {"B": "ens1"}, "ens1"),
    ("${A:-${B:-eth0}}", {"A": "ib0", "B": "ens1"}, "ib0"),
    ("${A:-http://h:1/p}", {}, "http://h:1/p"),
    ("$${A} costs $$5", {"A": "x"}, "${A} costs $5"),
    ("${A:-$${B}}", {}, "${B}"),
    ("${A:+set}", {"A": "1"}, "set"),
    ("${A:+set}", {"A": ""}, ""),
    ("${A+set}", {"A": ""}, "set"),
    ("${A:?give A}", {"A": "v"}, "v"),
])
def test_interpolation(text: str, env: dict[str, str], want: str) -> None:
    assert interpolate(text, env) == want


@pytest.mark.parametrize(("text", "env"), [("${A:?give A}", {}), ("${A:?give A}", {"A": ""}), ("${A?give A}", {})])
def test_interpolation_required_variable(text: str, env: dict[str, str]) -> None:
    with pytest.raises(InterpolationError, match="required variable A is missing: give A"):
        interpolate(text, env)


def test_interpolation_required_but_empty_without_colon_is_fine() -> None:
    assert interpolate("${A?give A}", {"A": ""}) == ""


@pytest.mark.parametrize("text", ["${A", "${1A}", "${A!x}", "${}"])
def test_interpolation_malformed(text: str) -> None:
    with pytest.raises(InterpolationError):
        interpolate(text, {})


# -- the agent in each environment -----------------------------------------------------------------


@pytest.mark.parametrize(("env", "interface"), [
    ({}, "eth0"),
    ({"INTERFACE": "ens1f0"}, "ens1f0"),
    ({"NETWORK_INTERFACE": "ib0"}, "ib0"),
    ({"INTERFACE": "ens1f0", "NETWORK_INTERFACE": "ib0"}, "ib0"),
    ({"INTERFACE": "ens1f0", "NETWORK_INTERFACE": ""}, "ens1f0"),  # empty is unset (the agent rejects "")
    ({"INTERFACE": ""}, "eth0"),
], ids=["nothing", "INTERFACE", "NETWORK_INTERFACE", "both", "NETWORK_INTERFACE-empty", "INTERFACE-empty"])
def test_agent_interface(env: dict[str, str], interface: str) -> None:
    a = agent(env)
    assert a["environment"]["NETWORK_INTERFACE"] == interface


def test_nothing_set_is_the_bundled_victoriametrics() -> None:
    a = agent({})
    e = a["environment"]
    assert (e["VICTORIAMETRICS_ENABLED"], e["VICTORIAMETRICS_REMOTE_WRITE"]) == ("true", DEFAULT_URL)
    assert (e["COLLECT_AGG"], e["XTRACE_SYSFS_ROOT"]) == ("default", "/host/sys")
    assert a["command"].split() == ["run", "-m", "xdp"]
    assert a["image"] == "xtrace-catch:latest"
    assert a["build"]["args"]["BASE_IMAGE"] == "debian:bookworm-slim"
    # The bundled VictoriaMetrics is where the default URL points.
    assert "127.0.0.1:8428:8428" in compose({})["services"]["victoriametrics"]["ports"]


def test_external_victoriametrics() -> None:
    url = "http://vm.example:8428/api/v1/write"
    e = agent({"VICTORIAMETRICS_REMOTE_WRITE": url})["environment"]
    assert (e["VICTORIAMETRICS_ENABLED"], e["VICTORIAMETRICS_REMOTE_WRITE"]) == ("true", url)
    e = agent({"VICTORIAMETRICS_REMOTE_WRITE": url, "VICTORIAMETRICS_ENABLED": "false"})["environment"]
    assert (e["VICTORIAMETRICS_ENABLED"], e["VICTORIAMETRICS_REMOTE_WRITE"]) == ("false", url)


def test_every_environment_value_is_a_string() -> None:
    """Compose refuses a boolean in `environment`; the quoted default keeps "true" a string."""
    for env in ({}, {"VICTORIAMETRICS_ENABLED": "false"}):
        values = agent(env)["environment"].values()
        assert all(isinstance(v, str) for v in values)


def test_mode_and_args_reach_the_command() -> None:
    a = agent({"XTRACE_MODE": "tc", "XTRACE_ARGS": "-d both", "INTERFACE": "ens1f0", "COLLECT_AGG": "rack1"})
    assert a["command"].split() == ["run", "-m", "tc", "-d", "both"]
    assert (a["environment"]["NETWORK_INTERFACE"], a["environment"]["COLLECT_AGG"]) == ("ens1f0", "rack1")


def test_grafana_address_and_password() -> None:
    g = compose({"GRAFANA_ADDR": "0.0.0.0", "GRAFANA_ADMIN_PASSWORD": "s3cret"})["services"]["grafana"]
    assert "0.0.0.0:3000:3000" in g["ports"]
    assert g["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    assert "127.0.0.1:3000:3000" in compose({})["services"]["grafana"]["ports"]


# -- the header documents every variable -----------------------------------------------------------


def header_and_body() -> tuple[str, str]:
    lines = COMPOSE_FILE.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    body = "\n".join(line for line in lines[n:] if not line.lstrip().startswith("#"))
    return "\n".join(lines[:n]), body


def variables_used(text: str) -> set[str]:
    text = text.replace("$$", "")
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))


def test_header_documents_every_variable() -> None:
    header, body = header_and_body()
    used = variables_used(body)
    assert {"NETWORK_INTERFACE", "INTERFACE", "VICTORIAMETRICS_ENABLED", "VICTORIAMETRICS_REMOTE_WRITE"} <= used
    documented = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", header))
    assert sorted(used - documented) == [], "used in docker-compose.yml but not in its header comment"


def test_no_variable_is_required() -> None:
    """`docker compose up` with nothing set works: no `${VAR:?}` / `${VAR?}` in the file."""
    _, body = header_and_body()
    assert not re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?", body)


# -- make docker-up's variables --------------------------------------------------------------------


def make_compose_env(*args: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables `make -n docker-up ARGS` puts before the compose command."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "INTERFACE", "NETWORK_INTERFACE")}
    res = subprocess.run([MAKE, "-n", "--no-print-directory", "-C", str(ROOT), "docker-up", *args],
                         capture_output=True, text=True, timeout=30, env={**base, **(env or {})})
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if "tool.sh compose" in x)
    out: dict[str, str] = {}
    for word in shlex.split(line):
        m = re.fullmatch(r"([A-Z_]+)=(.*)", word, re.S)
        if not m:
            break
        out[m.group(1)] = m.group(2)
    return out


def test_make_docker_up_reaches_the_agent() -> None:
    vars_ = make_compose_env("INTERFACE=ens1f0", "MODE=tc")
    assert vars_["NETWORK_INTERFACE"] == "ens1f0"
    # The shell's INTERFACE (another value) loses against what make sets: NETWORK_INTERFACE wins.
    a = agent({**vars_, "INTERFACE": "eth9"})
    assert a["environment"]["NETWORK_INTERFACE"] == "ens1f0"
    assert a["command"].split() == ["run", "-m", "tc", "-d", "both"]
    assert a["image"] == "xtrace-catch:latest"


def test_make_docker_up_takes_interface_from_the_environment() -> None:
    vars_ = make_compose_env(env={"INTERFACE": "ens2"})
    assert agent(vars_)["environment"]["NETWORK_INTERFACE"] == "ens2"


# -- Compose itself, where it is installed ---------------------------------------------------------


def test_docker_compose_config_agrees() -> None:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode:
        pytest.skip("'docker compose' (Compose v2) is not installed here: the interpolation above stands in for it")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "INTERFACE": "ens1f0",
           "VICTORIAMETRICS_REMOTE_WRITE": "http://vm.example:8428/api/v1/write"}
    res = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    theirs = json.loads(res.stdout)["services"]["agent"]["environment"]
    ours = agent(env)["environment"]
    assert {k: theirs[k] for k in ours} == ours
