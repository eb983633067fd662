"""The ctypes libbpf binding: version, error translation, fd ownership, bad inputs.

Tests that load the object (the ``datapath`` fixture, or marked ``kernel``) need root;
the rest are pure."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xtrace_catch.kernel import libbpf, uapi
from xtrace_catch.kernel.datapath import OBJECT_PATH, PROG_XDP, Datapath, DatapathConfig
from xtrace_catch.errors import LibbpfError, LoadError, MapError, ObjectError, OpenError
from xtrace_catch.kernel.object import BpfObject

REPO = Path(__file__).resolve().parent.parent


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "XTRACE_LIBBPF"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=60,
                          cwd=REPO)


_GET_AND_REPORT = """
from xtrace_catch.kernel import libbpf
from xtrace_catch.errors import LibbpfNotFound
try:
    libbpf.get()
except LibbpfNotFound as exc:
    print("LibbpfNotFound:", exc)
else:
    print("loaded")
"""


# -- loading and version -----------------------------------------------------------------


def test_version_and_info() -> None:
    lib = libbpf.get()
    assert lib is libbpf.get()  # one process-wide instance
    assert lib.version >= libbpf.MIN_VERSION
    assert lib.version_string == f"v{lib.version[0]}.{lib.version[1]}"
    info = lib.info()
    assert Path(info.path).is_file() and "libbpf" in Path(info.path).name
    assert info.source in ("system", "vendored", "XTRACE_LIBBPF")
    assert lib.ncpus >= 1 and lib.ncpus >= len(os.sched_getaffinity(0))


def test_xtrace_libbpf_missing_file_is_libbpf_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "libbpf.so.1"
    res = _run_python(_GET_AND_REPORT, XTRACE_LIBBPF=str(missing))
    assert res.returncode == 0, res.stderr
    out = res.stdout.strip()
    assert out.startswith("LibbpfNotFound:"), out
    assert str(missing) in out and "XTRACE_LIBBPF" in out  # what failed and how to fix it


def test_xtrace_libbpf_not_libbpf_is_libbpf_not_found() -> None:
    """A real shared library that is not libbpf (libc) lacks libbpf's symbols."""
    libc = ctypes.util.find_library("c")
    assert libc
    res = _run_python(_GET_AND_REPORT, XTRACE_LIBBPF=libc)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("LibbpfNotFound:") and "lacks" in res.stdout, res.stdout


def test_too_old_libbpf_is_refused(gcc: str, tmp_path: Path) -> None:
    """A stub library with every symbol the binding declares, claiming version 0.8."""
    names = list(uapi.PROTOTYPES)
    assert "bpf_prog_test_run_opts" in names and "libbpf_major_version" in names
    src = tmp_path / "stub.c"
    body = []
    for n in names:
        value = {"libbpf_major_version": 0, "libbpf_minor_version": 8}.get(n, 0)
        body.append(f"long {n}(void) {{ return {value}; }}")
    src.write_text("\n".join(body) + "\n")
    so = tmp_path / "libbpf.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(so), str(src)], check=True, capture_output=True, timeout=60)
    res = _run_python(_GET_AND_REPORT, XTRACE_LIBBPF=str(so))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("LibbpfNotFound:"), res.stdout
    assert "0.8" in res.stdout and "too old" in res.stdout and ">= 1.1" in res.stdout


# -- error translation (pure) --------------------------------------------------------------


def test_errno_names() -> None:
    assert libbpf.errno_name(-errno.EPERM) == "EPERM (Operation not permitted)"
    assert libbpf.errno_name(errno.ENOENT) == "ENOENT (No such file or directory)"


def test_check_int_raises_the_given_class_with_errno_name_and_hint() -> None:
    assert libbpf.Libbpf.check_int(5, "x") == 5
    with pytest.raises(MapError) as exc:
        libbpf.Libbpf.check_int(-errno.E2BIG, "bpf_map_update_elem", MapError)
    assert exc.value.errno == errno.E2BIG
    assert str(exc.value) == "bpf_map_update_elem failed: E2BIG (Argument list too long); the map is full"
    with pytest.raises(LibbpfError) as exc2:
        libbpf.Libbpf.check_int(-errno.EPERM, "bpf_prog_load")
    assert "EPERM" in str(exc2.value) and "run as root" in str(exc2.value)


def test_check_ptr_uses_errno() -> None:
    assert libbpf.Libbpf.check_ptr(1234, "x") == 1234
    ctypes.set_errno(errno.EACCES)
    with pytest.raises(OpenError) as exc:
        libbpf.Libbpf.check_ptr(None, "opening thing", OpenError)
    assert exc.value.errno == errno.EACCES and "EACCES" in str(exc.value)
    assert isinstance(exc.value, ObjectError) and isinstance(exc.value, LibbpfError)


# -- against the kernel --------------------------------------------------------------------


def test_kernel_errors_become_our_exceptions(datapath) -> None:  # type: ignore[no-untyped-def]
    dp = datapath(programs=frozenset({PROG_XDP}), max_flows=1)
    lib = libbpf.get()
    # a closed fd number
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(MapError) as exc:
        lib.map_lookup(r, b"\0" * 48, 96)
    assert exc.value.errno == errno.EBADF and "EBADF" in str(exc.value)
    # running a map as a program
    with pytest.raises(LibbpfError) as exc2:
        lib.prog_test_run(dp.flows.fd, b"\0" * 64)
    assert exc2.value.errno == errno.EINVAL and "EINVAL" in str(exc2.value)
    # a full hash map
    value = b"\0" * dp.flows.value_len
    dp.flows.update(b"\1" * 48, value)
    with pytest.raises(MapError) as exc3:
        dp.flows.update(b"\2" * 48, value)
    assert exc3.value.errno == errno.E2BIG and "map is full" in str(exc3.value)
    # a value of the wrong size never reaches the kernel
    with pytest.raises(MapError, match="value is 3 bytes"):
        dp.flows.update(b"\3" * 48, b"abc")
    assert dp.flows.delete(b"\1" * 48) and not dp.flows.delete(b"\1" * 48)
    assert dp.flows.lookup(b"\1" * 48) is None


@pytest.mark.kernel
def test_load_error_keeps_the_log() -> None:
    obj = BpfObject.from_file(OBJECT_PATH)
    try:
        obj.set_max_entries("flows", 0)
        with pytest.raises(LoadError) as exc:
            obj.load()
        assert exc.value.errno == errno.EINVAL and "EINVAL" in str(exc.value)
        assert "flows" in exc.value.log  # libbpf's own account of what failed
        # ... and its last lines are in the message itself, shown without -v
        assert exc.value.tail and exc.value.tail[-1] in exc.value.log
        assert str(exc.value).endswith("\n  | " + exc.value.tail[-1]) and "flows" in str(exc.value)
    finally:
        obj.close()


@pytest.mark.kernel
def test_no_fd_leak_over_many_cycles() -> None:
    """50 open/configure/load/use/close cycles, plus failing opens and loads, leave the
    process's fd table as it was."""
    lib = libbpf.get()
    warm = Datapath(DatapathConfig(programs=frozenset({PROG_XDP}), max_flows=16))
    warm.close()
    before = _fds()
    for _ in range(50):
        with Datapath(DatapathConfig(programs=frozenset({PROG_XDP}), max_flows=16)) as dp:
            assert lib.prog_test_run(dp.prog_fd(PROG_XDP), b"\xff" * 60).retval == 2
            dp.read_flows()
            dp.read_stats()
    for _ in range(5):
        with pytest.raises(OpenError):
            BpfObject(b"\x7fELF not really")
        obj = BpfObject.from_file(OBJECT_PATH)
        obj.set_max_entries("flows", 0)
        with pytest.raises(LoadError):
            obj.load()
        obj.close()
    assert _fds() == before


@pytest.mark.kernel
def test_close_is_idempotent_and_releases_fds() -> None:
    before = _fds()
    dp = Datapath(DatapathConfig(programs=frozenset({PROG_XDP}), max_flows=16))
    fd = dp.prog_fd(PROG_XDP)
    assert str(fd) in _fds() - before
    dp.close()
    dp.close()
    assert _fds() == before
    with pytest.raises(ObjectError, match="closed"):
        dp.prog_fd(PROG_XDP)
    with Datapath(DatapathConfig(programs=frozenset({PROG_XDP}), max_flows=16)) as dp2:
        pass
    dp2.close()
    assert _fds() == before


def test_program_not_loaded_is_object_error(datapath) -> None:  # type: ignore[no-untyped-def]
    dp = datapath(programs=frozenset({PROG_XDP}))
    with pytest.raises(ObjectError, match="not loaded"):
        dp.prog_fd("xtrace_tc_ingress")
    with pytest.raises(ObjectError, match="no program"):
        dp.prog_fd("no_such_prog")


# -- bad objects ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x7fELF" + bytes(60)], ids=["empty", "text", "elf-header"])
def test_bad_object_bytes_are_open_errors(data: bytes) -> None:
    with pytest.raises(OpenError) as exc:
        BpfObject(data, "bad.o")
    assert isinstance(exc.value, ObjectError) and exc.value.errno > 0
    assert "bad.o" in str(exc.value)


def test_open_error_message_is_readable() -> None:
    """libbpf reports a malformed object with its own error codes (>= 4000,
    LIBBPF_ERRNO__*); the message must name the problem, not 'E? (Unknown error 4001)'."""
    with pytest.raises(OpenError) as exc:
        BpfObject(b"garbage", "bad.o")
    msg = str(exc.value)
    assert "Unknown error" not in msg and "E?" not in msg, msg


def test_bad_object_files_are_object_errors(tmp_path: Path) -> None:
    """Datapath reads and checks the object before libbpf sees it (pure: no syscalls)."""
    missing = tmp_path / "missing.bpf.o"
    with pytest.raises(ObjectError, match="missing.bpf.o"):
        Datapath(object_path=missing)
    garbage = tmp_path / "garbage.bpf.o"
    garbage.write_bytes(b"garbage")
    with pytest.raises(ObjectError, match="ELF"):
        Datapath(object_path=garbage)
    nobtf = tmp_path / "true.o"
    nobtf.write_bytes(Path("/bin/true").read_bytes())  # an ELF, but not BPF and without .BTF
    with pytest.raises(ObjectError, match="BTF"):
        Datapath(object_path=nobtf)
