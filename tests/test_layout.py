"""Pure tier: the BTF parser, the Python mirror of ebpf/xtrace.h against the committed
object and the C header, and the ctypes mirrors of libbpf's structs. No root needed."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile
from frames import SKB_GSO_SEGS_OFF, SKB_GSO_SIZE_OFF, SKB_SIZE
from tools import find_tool, require_file, require_tool

from xtrace_catch.errors import ObjectError
from xtrace_catch.kernel import layout
from xtrace_catch.kernel.btf import Btf
from xtrace_catch.kernel.datapath import OBJECT_PATH, Datapath, DatapathConfig
from xtrace_catch.kernel.layout import (
    FLOW_KEY,
    FLOW_VALUE,
    RODATA_VARS,
    STATS,
    STATS_FIELDS,
    VALUE_FIELDS,
    Direction,
    Filter,
    LinkType,
    TrafficType,
    check_layout,
)
from xtrace_catch.kernel.uapi import MapBatchOpts, TestRunOpts

REPO = Path(__file__).resolve().parent.parent
HEADER_DIR = REPO / "ebpf"
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

# struct flow_key as written in ebpf/xtrace.h: name -> (offset, size)
FLOW_KEY_LAYOUT = {
    "src_addr": (0, 16), "dst_addr": (16, 16), "src_port": (32, 2), "dst_port": (34, 2), "dst_qp": (36, 4),
    "eth_proto": (40, 2), "vlan_id": (42, 2), "protocol": (44, 1), "traffic_type": (45, 1), "direction": (46, 1),
    "pad": (47, 1),
}


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.from_elf(OBJECT_PATH)


def _members(btf: Btf, name: str) -> dict[str, tuple[int, int]]:
    return {m.name: (m.offset, m.size) for m in btf.struct(name).members.values()}


def _dtype_members(dt: np.dtype) -> dict[str, tuple[int, int]]:
    return {n: (dt.fields[n][1], dt.fields[n][0].itemsize) for n in dt.names}


# -- BTF parser on the committed object ---------------------------------------------------


def test_btf_structs_of_committed_object(btf: Btf) -> None:
    assert btf.struct("flow_key").size == 48
    assert _members(btf, "flow_key") == FLOW_KEY_LAYOUT
    assert btf.struct("flow_value").size == 96
    assert _members(btf, "flow_value") == {n: (8 * i, 8) for i, n in enumerate(VALUE_FIELDS)}
    assert btf.struct("xtrace_stats").size == 80
    assert _members(btf, "xtrace_stats") == {n: (8 * i, 8) for i, n in enumerate(STATS_FIELDS)}


def test_btf_unknown_struct_is_keyerror(btf: Btf) -> None:
    with pytest.raises(KeyError):
        btf.struct("no_such_struct")


def test_btf_rodata_variables(btf: Btf) -> None:
    rodata = btf.datasec(".rodata")
    assert {name: m.size for name, m in rodata.items()} == RODATA_VARS


def _elf_symbols(section: str) -> dict[str, tuple[int, int]]:
    elf = ELFFile(io.BytesIO(OBJECT_PATH.read_bytes()))
    index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == section)
    return {s.name: (s["st_value"], s["st_size"]) for s in elf.get_section_by_name(".symtab").iter_symbols()
            if s["st_shndx"] == index and s.name}


def test_rodata_offsets_are_where_the_tunables_are(btf: Btf) -> None:
    """Datapath writes each tunable at Btf.datasec('.rodata')[name].offset. clang leaves
    DATASEC offsets of global variables 0 in the object (libbpf fixes them from the ELF
    symbol table at open), so they must match the symbols, or every tunable lands on
    the first one (cfg_filter)."""
    syms = _elf_symbols(".rodata")
    assert {n: syms[n] for n in RODATA_VARS} == {"cfg_filter": (0, 4), "cfg_exclude_dns": (4, 4),
                                                  "cfg_link_type": (8, 4)}
    rodata = btf.datasec(".rodata")
    assert {n: (rodata[n].offset, rodata[n].size) for n in RODATA_VARS} == {n: syms[n] for n in RODATA_VARS}


def test_btf_of_running_kernel_sk_buff() -> None:
    """The parser reads a large real BTF (vmlinux) too; and the __sk_buff offsets the TC
    GSO tests put gso_segs/gso_size at are the kernel's."""
    if not VMLINUX_BTF.exists():
        pytest.skip("no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)")
    skb = Btf(VMLINUX_BTF.read_bytes()).struct("__sk_buff")
    assert skb.size == SKB_SIZE
    assert (skb.members["gso_segs"].offset, skb.members["gso_segs"].size) == (SKB_GSO_SEGS_OFF, 4)
    assert (skb.members["gso_size"].offset, skb.members["gso_size"].size) == (SKB_GSO_SIZE_OFF, 4)
    assert skb.members["len"].offset == 0


def test_btf_rejects_garbage() -> None:
    with pytest.raises(ObjectError, match="magic"):
        Btf(b"\x00" * 32)
    with pytest.raises(ObjectError, match="too short"):
        Btf(b"\x9f\xeb")
    with pytest.raises(ObjectError, match="ELF"):
        Btf.from_elf(b"this is not an ELF file at all")


# -- the Python mirror --------------------------------------------------------------------


def test_python_records_match_the_object(btf: Btf) -> None:
    check_layout(btf)  # the committed object is current
    assert _dtype_members(FLOW_KEY) == _members(btf, "flow_key")
    assert _dtype_members(FLOW_VALUE) == _members(btf, "flow_value")
    assert _dtype_members(STATS) == _members(btf, "xtrace_stats")
    assert (FLOW_KEY.itemsize, FLOW_VALUE.itemsize, STATS.itemsize) == (48, 96, 80)


def _altered(dt: np.dtype, field: str | None = None, *, offset: int | None = None, fmt: str | None = None,
             drop: bool = False, size: int | None = None) -> np.dtype:
    names, formats, offsets = [], [], []
    for n in dt.names:
        if n == field and drop:
            continue
        f, off = dt.fields[n][0], dt.fields[n][1]
        names.append(n)
        formats.append(fmt if n == field and fmt else f)
        offsets.append(offset if n == field and offset is not None else off)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": size or dt.itemsize})


@pytest.mark.parametrize("struct, altered, words", [
    ("flow_key", _altered(FLOW_KEY, "vlan_id", offset=40, fmt="<u2"), ["flow_key.vlan_id", "offset 42", "offset 40"]),
    ("flow_key", _altered(FLOW_KEY, "dst_qp", fmt="<u2"), ["flow_key.dst_qp", "size 4", "size 2"]),
    ("flow_value", _altered(FLOW_VALUE, "cnp", drop=True), ["flow_value", "cnp"]),
    ("xtrace_stats", _altered(STATS, size=88), ["xtrace_stats", "80", "88"]),
])
def test_altered_python_layout_is_named(btf: Btf, monkeypatch: pytest.MonkeyPatch, struct: str,
                                        altered: np.dtype, words: list[str]) -> None:
    monkeypatch.setitem(layout._STRUCTS, struct, altered)
    with pytest.raises(ObjectError) as exc:
        check_layout(btf)
    for w in words:
        assert w in str(exc.value)
    assert "make bpf" in str(exc.value)  # says what to do


def test_altered_object_is_refused_before_any_syscall(tmp_path: Path) -> None:
    """An object whose flow_key field was renamed (a stale build): Datapath refuses it with
    the struct and both field names, before touching libbpf or the kernel."""
    raw = OBJECT_PATH.read_bytes()
    assert raw.count(b"\0vlan_id\0") == 1
    bad = tmp_path / "stale.bpf.o"
    bad.write_bytes(raw.replace(b"\0vlan_id\0", b"\0vlan_ix\0"))
    with pytest.raises(ObjectError) as exc:
        check_layout(Btf.from_elf(bad))
    assert "flow_key" in str(exc.value) and "vlan_id" in str(exc.value) and "vlan_ix" in str(exc.value)
    with pytest.raises(ObjectError, match="flow_key"):
        Datapath(DatapathConfig(), object_path=bad)


def test_object_without_rodata_tunable_is_refused(tmp_path: Path) -> None:
    raw = OBJECT_PATH.read_bytes()
    assert raw.count(b"\0cfg_link_type\0") == 2  # the BTF and the ELF symbol names
    bad = tmp_path / "old.bpf.o"
    bad.write_bytes(raw.replace(b"\0cfg_link_type\0", b"\0cfg_link_typo\0"))
    with pytest.raises(ObjectError, match="cfg_link_type"):
        check_layout(Btf.from_elf(bad))


# -- against the C headers (compiled with the host compiler) ------------------------------


def _run_c(gcc: str, tmp_path: Path, source: str, *include_dirs: Path) -> dict[str, int]:
    src = tmp_path / "probe.c"
    src.write_text(source)
    exe = tmp_path / "probe"
    cmd = [gcc, "-std=gnu11", "-Wall", "-Werror", "-o", str(exe), str(src)] + [f"-I{d}" for d in include_dirs]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=10).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def _probe(prefix: str, struct: str, fields: list[str]) -> str:
    lines = [f'P("{prefix}.sizeof", sizeof(struct {struct}));']
    lines += [f'P("{prefix}.{f}.off", offsetof(struct {struct}, {f})); '
              f'P("{prefix}.{f}.size", sizeof(((struct {struct} *)0)->{f}));' for f in fields]
    return "\n".join(lines)


def test_header_matches_python_mirror(gcc: str, tmp_path: Path) -> None:
    enums = {
        "XT_TYPE_OTHER": TrafficType.OTHER, "XT_TYPE_TCP": TrafficType.TCP, "XT_TYPE_UDP": TrafficType.UDP,
        "XT_TYPE_ICMP": TrafficType.ICMP, "XT_TYPE_ROCE_V2": TrafficType.ROCE_V2,
        "XT_TYPE_ROCE_V1": TrafficType.ROCE_V1, "XT_TYPE_IPOIB": TrafficType.IPOIB, "XT_TYPE_MAX": layout.TYPE_SLOTS,
        "XT_DIR_INGRESS": Direction.INGRESS, "XT_DIR_EGRESS": Direction.EGRESS, "XT_DIR_MAX": len(Direction),
        "XT_FILTER_ALL": Filter.ALL, "XT_FILTER_TCP": Filter.TCP, "XT_FILTER_UDP": Filter.UDP,
        "XT_FILTER_ROCE": Filter.ROCE, "XT_FILTER_ROCE_V1": Filter.ROCE_V1, "XT_FILTER_ROCE_V2": Filter.ROCE_V2,
        "XT_FILTER_IB": Filter.IB, "XT_LINK_ETHERNET": LinkType.ETHERNET, "XT_LINK_INFINIBAND": LinkType.INFINIBAND,
        "XT_DEFAULT_FLOWS": layout.DEFAULT_FLOWS, "XT_DNS_SERVERS_MAX": layout.DNS_SERVERS_MAX,
    }
    body = "\n".join([
        _probe("flow_key", "flow_key", list(FLOW_KEY.names)),
        _probe("flow_value", "flow_value", list(VALUE_FIELDS)),
        _probe("xtrace_stats", "xtrace_stats", list(STATS_FIELDS)),
    ] + [f'P("{name}", {name});' for name in enums])
    got = _run_c(gcc, tmp_path, f"""
#include <stddef.h>
#include <stdio.h>
#include "xtrace.h"
#define P(name, v) printf("%s %lld\\n", name, (long long)(v))
int main(void) {{
{body}
return 0; }}
""", HEADER_DIR)
    for prefix, dt in (("flow_key", FLOW_KEY), ("flow_value", FLOW_VALUE), ("xtrace_stats", STATS)):
        assert got[f"{prefix}.sizeof"] == dt.itemsize
        for name, (off, size) in _dtype_members(dt).items():
            assert (got[f"{prefix}.{name}.off"], got[f"{prefix}.{name}.size"]) == (off, size), f"{prefix}.{name}"
    assert {name: got[name] for name in enums} == {name: int(v) for name, v in enums.items()}


def test_ctypes_opts_match_libbpf_header(gcc: str, tmp_path: Path) -> None:
    """TestRunOpts and MapBatchOpts are byte for byte libbpf's bpf_test_run_opts and
    bpf_map_batch_opts (/usr/include/bpf/bpf.h): libbpf reads `sz` bytes of them."""
    require_file("/usr/include/bpf/bpf.h", "libbpf-dev", "libbpf's development header")
    run_fields = [f for f, _t in TestRunOpts._fields_]
    batch_fields = [f for f, _t in MapBatchOpts._fields_]
    got = _run_c(gcc, tmp_path, f"""
#include <stddef.h>
#include <stdio.h>
#include <bpf/bpf.h>
#define P(name, v) printf("%s %lld\\n", name, (long long)(v))
int main(void) {{
{_probe("run", "bpf_test_run_opts", run_fields)}
{_probe("batch", "bpf_map_batch_opts", batch_fields)}
return 0; }}
""")
    import ctypes

    for prefix, cls, fields in (("run", TestRunOpts, run_fields), ("batch", MapBatchOpts, batch_fields)):
        assert ctypes.sizeof(cls) == got[f"{prefix}.sizeof"], cls.__name__
        for f in fields:
            desc = getattr(cls, f)
            assert (desc.offset, desc.size) == (got[f"{prefix}.{f}.off"], got[f"{prefix}.{f}.size"]), f"{cls.__name__}.{f}"


def test_sk_buff_offsets_match_uapi_header(gcc: str, tmp_path: Path) -> None:
    got = _run_c(gcc, tmp_path, f"""
#include <stddef.h>
#include <stdio.h>
#include <linux/bpf.h>
#define P(name, v) printf("%s %lld\\n", name, (long long)(v))
int main(void) {{
{_probe("skb", "__sk_buff", ["gso_segs", "gso_size"])}
return 0; }}
""")
    assert (got["skb.sizeof"], got["skb.gso_segs.off"], got["skb.gso_size.off"]) == (
        SKB_SIZE, SKB_GSO_SEGS_OFF, SKB_GSO_SIZE_OFF)


# -- tests/tools.py: a missing tool fails under CI and is skipped elsewhere, naming the package --

NO_TOOL = "xtrace-no-such-tool"


@pytest.fixture
def tool_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only an executable `fake-tool`."""
    tool = tmp_path / "fake-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    return tool


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_missing_tool_fails_under_ci(ci: str, tool_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tool(NO_TOOL, "no-such-package")
    assert str(failed.value) == (f"{NO_TOOL} is missing: install it with 'apt-get install no-such-package' "
                                 "('make deps-test' installs it) [CI is set: a missing test tool fails]")
    assert not failed.value.pytrace
    with pytest.raises(pytest.fail.Exception, match=f"^{NO_TOOL} is missing: .*'apt-get install no-such-package'"):
        find_tool(NO_TOOL, "no-such-package")  # the optional form fails under CI too
    with pytest.raises(pytest.fail.Exception, match=r"^libbpf's development header /nonexistent/bpf\.h is missing: "
                                                    r"install it with 'apt-get install libbpf-dev'"):
        require_file("/nonexistent/bpf.h", "libbpf-dev", "libbpf's development header")


@pytest.mark.parametrize("ci", [None, "", "0", "false", "False", "no"])
def test_missing_tool_skips_outside_ci(ci: str | None, tool_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tool(NO_TOOL, "no-such-package")
    assert str(skipped.value) == (f"{NO_TOOL} is missing: install it with 'apt-get install no-such-package' "
                                  "('make deps-test' installs it)")
    assert find_tool(NO_TOOL, "no-such-package") is None  # the optional form: the test goes on without it
    with pytest.raises(pytest.skip.Exception, match=r"^/nonexistent/bpf\.h is missing: .*'apt-get install libbpf-dev'"):
        require_file("/nonexistent/bpf.h", "libbpf-dev")


@pytest.mark.parametrize("ci", [None, "true"])
def test_present_tool_is_found_ci_or_not(ci: str | None, tool_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert require_tool("fake-tool", "fake-package") == str(tool_path)
    assert require_tool(NO_TOOL, "fake-package", "fake-tool") == str(tool_path)  # an alternative (gcc, else cc)
    assert find_tool("fake-tool", "fake-package") == str(tool_path)
    assert require_file(tool_path, "fake-package") == tool_path
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception), match=f"^{NO_TOOL} / other-tool is missing"):
        require_tool(NO_TOOL, "fake-package", "other-tool")
