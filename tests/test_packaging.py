"""Packaging files (pure, fast): Dockerfile stages, compose, Grafana provisioning and
dashboard, the Kubernetes DaemonSet, the container make targets, the libbpf pin, and that no
file names a package registry's host (the machines reach registries through their clients'
own configuration; a hard-coded host breaks mirrors and proxies)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_compose import agent as compose_agent
from test_dockerfile import stages as dockerfile_stages

from xtrace_catch.export.push import PushFormat, classify_url

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DOCKER_TARGETS = (
    "docker-base", "docker-build", "docker-build-debug", "docker-run", "docker-up", "docker-up-xdp", "docker-up-rdma",
    "docker-up-nccl", "docker-down", "docker-logs", "docker-shell", "docker-info", "docker-test",
    "docker-clean", "docker-network-info",
)
COMPOSE_TARGETS = ("docker-up", "docker-up-xdp", "docker-up-rdma", "docker-up-nccl", "docker-down", "docker-logs")
# Build tools that must stay in the builder stage.
COMPILERS = ("gcc", "g++", "clang", "llvm", "make", "build-essential", "libbpf-dev", "libelf-dev",
             "zlib1g-dev", "dpkg-dev", "pkg-config", "python3-pip", "python3-venv", "python3-dev")


# --- Dockerfile -----------------------------------------------------------------------

def test_dockerfile_has_builder_and_final_stage() -> None:
    stages = dockerfile_stages()
    # builder, final (the slim image), debug (final + curl, wget, ping, ...), and the default
    # target: the last stage, which is final with nothing added (tests/test_dockerfile.py).
    assert [s.name for s in stages] == ["builder", "final", "debug", None]
    builder, final = stages[0], stages[1]
    assert builder.base == final.base == "${BASE_IMAGE}"
    assert (stages[-1].base, stages[-1].ins) == ("final", [])
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=debian:bookworm-slim$", text, re.MULTILINE)
    runs = builder.runs()
    for step in ("make bpf-check", "make libbpf", "make build"):
        assert step in runs
    assert ("ENTRYPOINT", '["xtrace-catch"]') in final.ins
    assert any(w == "COPY" and r.startswith("--from=builder ") for w, r in final.ins)


def test_dockerfile_final_stage_installs_no_compiler() -> None:
    final = next(s for s in dockerfile_stages() if s.name == "final")
    runs = final.runs()
    words = set(re.split(r"[\s;&|]+", runs))
    assert "python3" in words and "libelf1" in words
    assert not words & set(COMPILERS), f"build tools in the final stage: {sorted(words & set(COMPILERS))}"
    # The builder does install them: the check above would notice if the stages were swapped.
    builder_runs = dockerfile_stages()[0].runs()
    assert {"gcc", "clang", "make"} <= set(re.split(r"\s+", builder_runs))


def test_dockerignore_keeps_what_the_builder_needs() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"Makefile", "pyproject.toml", "README.md", "LICENSE", "ebpf", "xtrace_catch",
            "vendor-libbpf/build.sh", "vendor-libbpf/libbpf.pin"} <= kept


# --- compose ----------------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_agent() -> None:
    agent = _compose()["services"]["agent"]
    assert agent["network_mode"] == "host"
    assert agent.get("privileged") or {"BPF", "NET_ADMIN", "PERFMON"} <= set(agent["cap_add"])
    assert "/sys/fs/bpf:/sys/fs/bpf" in agent["volumes"]
    assert "/sys:/host/sys:ro" in agent["volumes"]
    env = compose_agent({})["environment"]  # as Compose reads it with nothing set (tests/test_compose.py)
    assert env["VICTORIAMETRICS_ENABLED"] == "true"
    assert env["VICTORIAMETRICS_REMOTE_WRITE"] == "http://127.0.0.1:8428/api/v1/write"
    assert classify_url(env["VICTORIAMETRICS_REMOTE_WRITE"]) is PushFormat.REMOTE_WRITE
    assert {"NETWORK_INTERFACE", "COLLECT_AGG"} <= set(env)
    assert env["XTRACE_SYSFS_ROOT"] == "/host/sys"  # where /sys is mounted
    assert agent["command"].split()[:2] == ["run", "-m"]


def test_compose_victoriametrics_and_grafana() -> None:
    services = _compose()["services"]
    vm = services["victoriametrics"]
    assert "127.0.0.1:8428:8428" in vm["ports"]  # where the host-network agent pushes
    graf = services["grafana"]
    mounts = dict(v.rsplit(":", 2)[:2] if v.endswith(":ro") else v.split(":", 1) for v in graf["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dash_dir = mounts["./deploy/grafana/dashboards"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "xtrace.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dash_dir
    for host_path in mounts:
        if host_path.startswith("./"):
            assert (ROOT / host_path).is_dir(), host_path


# --- Grafana ----------------------------------------------------------------------------

def _dashboard() -> dict[str, Any]:
    doc = json.loads((GRAFANA / "dashboards" / "xtrace.json").read_text())
    assert isinstance(doc, dict)
    return doc


def _exprs(dash: dict[str, Any]) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dash["panels"] if p["type"] != "row"}


def test_grafana_datasource_is_the_dashboards() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "victoriametrics.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://victoriametrics:8428"
    var = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert var["current"]["value"] == source["uid"]


def test_dashboard_panels() -> None:
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}"
    exprs = _exprs(dash)
    every = " ".join(e for es in exprs.values() for e in es)
    thr = exprs["Throughput by traffic type and direction"][0]
    assert "xtrace_network_bytes_total" in thr and "sum by (traffic_type, direction)" in thr and thr.endswith("* 8")
    assert "topk(" in exprs["Top flows"][0]
    cnp = next(t for t in exprs if "CNP" in t)
    for counter in ("np_cnp_sent", "rp_cnp_handled", "np_ecn_marked_roce_packets"):
        assert counter in exprs[cnp][0]
    assert "xtrace_rdma_hw_counter_total" in exprs[cnp][0]
    assert "not exported as metrics yet" in next(p for p in dash["panels"] if p["title"] == cnp)["description"]
    assert "xtrace_rdma_port_bytes_total" in every
    for m in ("packets_overflowed_total", "map_full", "push_failures_total", "samples_dropped_total",
              "collect_duration_seconds"):
        assert f"xtrace_agent_{m}" in every
    for e in (e for es in exprs.values() for e in es):
        for a, b in ("()", "{}", "[]"):
            assert e.count(a) == e.count(b), e


def test_dashboard_metrics_exist_in_the_agent() -> None:
    """Every metric the dashboard queries is one the agent's code names (catches typos)."""
    source = "\n".join(p.read_text() for p in (ROOT / "xtrace_catch").rglob("*.py"))
    named = set(re.findall(r"xtrace_[a-z_]+", json.dumps(_dashboard())))
    missing = {m for m in named if m not in source and not m.startswith("xtrace_catch")}
    assert not missing


# --- Kubernetes -------------------------------------------------------------------------

# The oldest Kubernetes our users run (RHEL 9 / Ubuntu 22.04 clusters) and the newest schema.
K8S_VERSIONS = ("1.27", "1.37")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    """kubernetes-validate (strict: unknown fields are errors) on every document of every manifest."""
    import kubernetes_validate

    manifests = sorted((ROOT / "deploy" / "kubernetes").glob("*.y*ml"))
    assert manifests
    kinds = []
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{path.name}: {doc.get('kind')}: {exc.message}") from None
            kinds.append(doc["kind"])
    assert {"Namespace", "ConfigMap", "DaemonSet"} <= set(kinds)


def test_manifest_validation_catches_a_typo() -> None:
    """The validator is strict enough to matter: a misspelt field fails."""
    import kubernetes_validate

    ds = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
              if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="hostNetwrk"):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)

def test_daemonset() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text())}
    assert {"ConfigMap", "DaemonSet"} <= set(docs)
    cm, ds = docs["ConfigMap"], docs["DaemonSet"]
    url = cm["data"]["VICTORIAMETRICS_REMOTE_WRITE"]
    assert url == "http://vmagent.victoria-metrics.svc.cluster.local:8429/api/v1/write"  # the fleet path: vmagent
    assert classify_url(url) is PushFormat.REMOTE_WRITE
    assert cm["data"]["VICTORIAMETRICS_ENABLED"] == "true"
    assert cm["data"]["XTRACE_SYSFS_ROOT"] == "/host/sys"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostNetwork"] is True
    assert pod["terminationGracePeriodSeconds"] >= 10
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
    (c,) = pod["containers"]
    assert {"BPF", "NET_ADMIN", "PERFMON"} <= set(c["securityContext"]["capabilities"]["add"])
    assert c["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/sys/fs/bpf"]]["hostPath"]["path"] == "/sys/fs/bpf"
    assert vols[mounts["/host/sys"]]["hostPath"]["path"] == "/sys"
    assert all(m["name"] in vols for m in c["volumeMounts"])


# --- make targets -----------------------------------------------------------------------

@pytest.mark.parametrize("target", DOCKER_TARGETS)
def test_make_docker_target_uses_docker_variable(target: str) -> None:
    make = shutil.which("make")
    assert make, "make is needed (the README's set-up installs it)"
    fake = "xtrace-fake-docker"
    res = subprocess.run([make, "-n", "-C", str(ROOT), target, f"DOCKER={fake}"], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert fake in res.stdout
    if target in COMPOSE_TARGETS:  # through deploy/container/tool.sh (Compose v2 or podman's compose)
        assert f"DOCKER='{fake}' bash deploy/container/tool.sh compose" in res.stdout


@pytest.mark.parametrize(("mode", "expected"), [
    ("xdp", "XTRACE_MODE='xdp' XTRACE_ARGS=''"), ("tc", "XTRACE_MODE='tc' XTRACE_ARGS='-d both'"),
    ("rdma", "XTRACE_MODE='rdma' XTRACE_ARGS='--device mlx5_0'"), ("nccl", "XTRACE_MODE='nccl'"),
])
def test_make_docker_up_mode(mode: str, expected: str) -> None:
    res = subprocess.run(["make", "-n", "-C", str(ROOT), f"docker-up-{mode}" if mode != "tc" else "docker-up",
                          f"MODE={mode}", "INTERFACE=ens1f0", "DEVICE=mlx5_0" if mode == "rdma" else "DEVICE="],
                         capture_output=True, text=True, timeout=30)
    assert expected in res.stdout and "NETWORK_INTERFACE='ens1f0'" in res.stdout


# --- vendored libbpf pin ----------------------------------------------------------------

def test_libbpf_pin_format() -> None:
    pin: dict[str, str] = {}
    for line in (ROOT / "vendor-libbpf" / "libbpf.pin").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Z0-9_]+)=(\S+)", line)  # the syntax vendor-libbpf/build.sh accepts
        assert m, line
        assert m.group(1) not in pin
        pin[m.group(1)] = m.group(2)
    assert set(pin) == {"PACKAGE", "VERSION", "UPSTREAM_VERSION", "SUITE", "DSC_SHA256", "ORIG_SHA256",
                        "DEBIAN_SHA256"}
    assert pin["PACKAGE"] == "libbpf"
    for k in ("DSC_SHA256", "ORIG_SHA256", "DEBIAN_SHA256"):
        assert re.fullmatch(r"[0-9a-f]{64}", pin[k]), k
    up = pin["UPSTREAM_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", up)
    assert re.fullmatch(re.escape(up) + r"-[0-9A-Za-z.+~]+", pin["VERSION"])
    assert tuple(int(x) for x in up.split(".")) > (1, 1, 2)  # newer than Debian 12's


@pytest.mark.parametrize("path", ["vendor-libbpf/build/lib/libbpf.so.1", "vendor-libbpf/src/libbpf-1.5.0/src/libbpf.c"])
def test_vendored_libbpf_build_is_never_committed(path: str) -> None:
    res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], capture_output=True)
    assert res.returncode != 128, res.stderr.decode()
    assert res.returncode == 0, f"{path} is not ignored by .gitignore"


# --- no registry hosts ------------------------------------------------------------------

# Spelled in pieces so that this file passes its own check.
REGISTRY_HOSTS = tuple(".".join(p) for p in (
    ("deb", "debian", "org"), ("pypi", "org"), ("registry", "npmjs", "org"), ("files", "pythonhosted", "org"),
    ("snapshot", "debian", "org"), ("security", "debian", "org"), ("archive", "ubuntu", "com"),
))


def test_no_file_hard_codes_a_registry_host() -> None:
    res = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True)
    offenders = []
    for rel in filter(None, res.stdout.decode().split("\0")):
        p = ROOT / rel
        if not p.is_file():
            continue
        data = p.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (pcaps, the BPF object)
        text = data.decode("utf-8", errors="replace").lower()
        offenders += [f"{rel}: {h}" for h in REGISTRY_HOSTS if h in text]
    assert not offenders


# --- licence ----------------------------------------------------------------------------

def test_license_file_covers_the_package_and_the_bpf_object() -> None:
    """LICENSE names MIT for the package and GPL-2.0-only OR BSD-2-Clause for the BPF programs,
    which is what the sources' SPDX lines, the object's license section and pyproject say."""
    text = (ROOT / "LICENSE").read_text()
    assert "MIT License" in text and "BSD 2-Clause License" in text and "GPL-2.0-only OR BSD-2-Clause" in text
    for src in ("ebpf/xtrace.bpf.c", "ebpf/xtrace.h"):
        assert "SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)" in (ROOT / src).read_text().splitlines()[0]
    from elftools.elf.elffile import ELFFile

    with open(ROOT / "xtrace_catch" / "bpf" / "xtrace.bpf.o", "rb") as f:
        declared = ELFFile(f).get_section_by_name("license").data().rstrip(b"\0").decode()
    assert declared == "Dual BSD/GPL"  # GPL-compatible to the kernel: bpf_seq_write is GPL-only
    assert 'license = { text = "MIT AND (GPL-2.0-only OR BSD-2-Clause)" }' in (ROOT / "pyproject.toml").read_text()
