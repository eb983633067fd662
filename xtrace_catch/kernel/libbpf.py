"""ctypes binding to libbpf: the only module that calls libbpf (its ABI, the option structs and
the prototypes, is in :mod:`.uapi`).

libbpf's contract (1.0+ "strict" mode): int-returning calls return ``-errno``;
pointer-returning calls return NULL and set ``errno``. Both become
:class:`~xtrace_catch.errors.LibbpfError` subclasses here, with the operation,
the errno name and a hint. libbpf's own messages go to the ``xtrace_catch.libbpf``
logger; while an object loads they are also captured so a verifier log can be
attached to :class:`~xtrace_catch.errors.LoadError`.

Requires libbpf >= 1.1 (Debian 12's 1.1.2 works).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ctypes import (
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_void_p,
)
from dataclasses import dataclass
from pathlib import Path

from ..errors import LibbpfError, LibbpfNotFound, MapError
from .uapi import (
    BPF_ANY,
    BPF_TRACE_ITER,
    LIBBPF_ERRNO_ENDIAN,
    LIBBPF_ERRNO_FORMAT,
    LIBBPF_ERRNO_START,
    PRINT_FN,
    PROTOTYPES,
    LinkCreateOpts,
    MapBatchOpts,
    ProgInfo,
    ProgQueryOpts,
    TestRunOpts,
)

__all__ = ["Libbpf", "LibbpfInfo", "get", "errno_name", "hint_for"]

log = logging.getLogger("xtrace_catch.libbpf")

MIN_VERSION = (1, 1)
# libbpf_print_level
_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2


def errno_name(err: int) -> str:
    """E.g. 'EPERM (Operation not permitted)'; libbpf's own codes by libbpf's words."""
    err = abs(err)
    if err >= LIBBPF_ERRNO_START and _instance is not None:
        buf = ctypes.create_string_buffer(256)
        if _instance.lib.libbpf_strerror(err, buf, len(buf)) == 0:
            return f"libbpf error {err} ({buf.value.decode(errors='replace')})"
    return f"{errno.errorcode.get(err, 'E?')} ({os.strerror(err)})"


_HINTS = {
    LIBBPF_ERRNO_FORMAT: "the file is not a valid BPF ELF object: reinstall xtrace-catch or rebuild it with 'make bpf'",
    LIBBPF_ERRNO_ENDIAN: "the BPF object was built for another byte order: rebuild it with 'make bpf'",
    errno.EPERM: "run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
    errno.EACCES: "the verifier or a security policy refused it; run with -v to see libbpf's log",
    errno.ENOMEM: "raise RLIMIT_MEMLOCK (ulimit -l unlimited) or lower the flow map size",
    errno.E2BIG: "the map is full",
    errno.ENOSYS: "this kernel lacks the needed BPF feature (needs Linux >= 5.8 with BTF)",
    errno.EINVAL: "the kernel rejected an argument; run with -v to see libbpf's log",
    errno.ESRCH: "the kernel has no BTF at /sys/kernel/btf/vmlinux (needs CONFIG_DEBUG_INFO_BTF=y)",
}


def hint_for(err: int) -> str:
    """The next step to take for an errno, or ''."""
    return _HINTS.get(abs(err), "")


def _candidates() -> list[tuple[str, str]]:
    """Where libbpf may be, in order of preference, with a label for messages."""
    out: list[tuple[str, str]] = []
    env = os.environ.get("XTRACE_LIBBPF")
    if env:
        out.append((env, "XTRACE_LIBBPF"))
        return out
    here = Path(__file__).resolve().parent.parent  # the package root: lib/ sits beside kernel/
    for base in (here.parent / "vendor-libbpf" / "build", here / "lib"):
        for name in ("lib/libbpf.so.1", "lib64/libbpf.so.1", "libbpf.so.1"):
            p = base / name
            if p.exists():
                out.append((str(p), "vendored"))
    out.append(("libbpf.so.1", "system"))
    return out


@dataclass(frozen=True)
class LibbpfInfo:
    path: str
    version: str
    source: str


class Libbpf:
    """Typed handle on libbpf.so. Use :func:`get` for the process-wide instance."""

    def __init__(self) -> None:
        errors: list[str] = []
        for path, source in _candidates():
            try:
                self._lib = ctypes.CDLL(path, use_errno=True)
            except OSError as exc:
                errors.append(f"{path}: {exc}")
                continue
            self.source = source
            self.path = self._resolve_path(path)
            break
        else:
            if os.environ.get("XTRACE_LIBBPF"):
                raise LibbpfNotFound(f"XTRACE_LIBBPF={os.environ['XTRACE_LIBBPF']}: cannot load it ({errors[0]}); "
                                     "point it at a libbpf.so.1 or unset it")
            raise LibbpfNotFound(
                "libbpf not found (" + "; ".join(errors) + "); install it "
                "(Debian/Ubuntu: apt-get install libbpf1), run 'make libbpf', "
                "or point XTRACE_LIBBPF at a libbpf.so.1"
            )
        self._declare()
        self.version = (int(self._lib.libbpf_major_version()), int(self._lib.libbpf_minor_version()))
        if self.version < MIN_VERSION:
            raise LibbpfNotFound(
                f"libbpf {self.version[0]}.{self.version[1]} at {self.path} is too old: xtrace-catch needs "
                f">= {MIN_VERSION[0]}.{MIN_VERSION[1]}; upgrade it, run 'make libbpf', or set XTRACE_LIBBPF"
            )
        self.version_string = self._lib.libbpf_version_string().decode()
        # TCX links need libbpf >= 1.3 (its bpf_link_create knows the tcx options); the
        # symbol bpf_program__attach_tcx came with them.
        self.has_tcx = hasattr(self._lib, "bpf_program__attach_tcx")
        self.ncpus = self._num_possible_cpus()
        self._capture: list[str] | None = None
        self._capture_lock = threading.Lock()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        self._libc.vsnprintf.restype = c_int
        self._printbuf = ctypes.create_string_buffer(1 << 20)
        self._print_cb = PRINT_FN(self._on_print)
        self._lib.libbpf_set_print(self._print_cb)

    # -- set-up ------------------------------------------------------------

    @staticmethod
    def _resolve_path(path: str) -> str:
        if os.sep in path:
            return os.path.realpath(path)
        # Ask the dynamic loader where the bare soname came from.
        try:
            with open("/proc/self/maps") as fh:
                for line in fh:
                    if "libbpf.so" in line:
                        return os.path.realpath(line.split()[-1])
        except OSError:
            pass
        return path

    def _declare(self) -> None:
        L = self._lib
        for name, (argtypes, restype) in PROTOTYPES.items():
            try:
                fn = getattr(L, name)
            except AttributeError as exc:
                raise LibbpfNotFound(
                    f"libbpf at {self.path} lacks {name}(): it is too old or not libbpf; "
                    "install libbpf >= 1.1, run 'make libbpf', or set XTRACE_LIBBPF"
                ) from exc
            fn.argtypes = argtypes
            fn.restype = restype

    def _num_possible_cpus(self) -> int:
        n = int(self._lib.libbpf_num_possible_cpus())
        if n <= 0:
            raise LibbpfError(f"libbpf_num_possible_cpus failed: {errno_name(n)}", -n)
        return n

    def _on_print(self, level: int, fmt: bytes, args: int) -> int:
        n = self._libc.vsnprintf(self._printbuf, len(self._printbuf), fmt, args)
        if n <= 0:
            return 0
        text = self._printbuf.value.decode(errors="replace")
        capture = self._capture
        if capture is not None:
            capture.append(text)
        pylevel = {_LIBBPF_WARN: logging.WARNING, _LIBBPF_INFO: logging.INFO}.get(level, logging.DEBUG)
        # libbpf warns on things we handle (e.g. a probe failing); keep them out of
        # the user's way unless -v asked for them.
        log.log(logging.DEBUG if pylevel == logging.INFO else pylevel, "%s", text.rstrip("\n"))
        return 0

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Collect libbpf's messages (e.g. a verifier log) into the list given, while the block
        runs; one capture at a time (other threads wait)."""
        lines: list[str] = []
        with self._capture_lock:
            self._capture = lines
            try:
                yield lines
            finally:
                self._capture = None

    # -- raw access --------------------------------------------------------

    @property
    def lib(self) -> ctypes.CDLL:
        return self._lib

    def info(self) -> LibbpfInfo:
        return LibbpfInfo(path=self.path, version=self.version_string, source=self.source)

    @staticmethod
    def check_int(ret: int, what: str, exc: type[LibbpfError] = LibbpfError) -> int:
        """Raise `exc` for a negative (-errno) return."""
        if ret < 0:
            hint = hint_for(ret)
            raise exc(f"{what} failed: {errno_name(ret)}" + (f"; {hint}" if hint else ""), -ret)
        return ret

    @staticmethod
    def check_ptr(ptr: int | None, what: str, exc: type[LibbpfError] = LibbpfError) -> int:
        """Raise `exc` for a NULL return, using errno."""
        if not ptr:
            err = ctypes.get_errno() or errno.EINVAL
            hint = hint_for(err)
            raise exc(f"{what} failed: {errno_name(err)}" + (f"; {hint}" if hint else ""), err)
        return ptr

    def cpu_value_size(self, value_size: int) -> int:
        """Bytes of one per-CPU value as the syscall lays it out: rounded up to 8."""
        return (value_size + 7) & ~7

    # -- maps --------------------------------------------------------------

    def map_lookup(self, fd: int, key: bytes, value_len: int, flags: int = 0) -> bytes | None:
        """One element, or None when the key is absent. `flags`: BPF_F_LOCK copies under the
        value's spin lock."""
        return self._read_elem(self._lib.bpf_map_lookup_elem_flags, "bpf_map_lookup_elem", fd, key, value_len, flags)

    def map_update(self, fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self.check_int(self._lib.bpf_map_update_elem(fd, key, value, flags), "bpf_map_update_elem", MapError)

    def map_delete(self, fd: int, key: bytes) -> bool:
        """Delete one key; False when it was absent."""
        ret = self._lib.bpf_map_delete_elem(fd, key)
        if ret == -errno.ENOENT:
            return False
        self.check_int(ret, "bpf_map_delete_elem", MapError)
        return True

    def map_lookup_and_delete(self, fd: int, key: bytes, value_len: int, flags: int = 0) -> bytes | None:
        """Atomically read and delete one element (hash maps: Linux >= 5.14, as is BPF_F_LOCK in
        `flags`). None when the key is absent; MapError (EINVAL/ENOTSUPP) where unsupported."""
        return self._read_elem(self._lib.bpf_map_lookup_and_delete_elem_flags, "bpf_map_lookup_and_delete_elem",
                               fd, key, value_len, flags)

    def _read_elem(self, fn: Callable[..., int], what: str, fd: int, key: bytes, value_len: int,
                   flags: int) -> bytes | None:
        buf = ctypes.create_string_buffer(value_len)
        ret = fn(fd, key, buf, flags)
        if ret == -errno.ENOENT:
            return None
        self.check_int(ret, what, MapError)
        return buf.raw

    def map_next_key(self, fd: int, key: bytes | None, key_size: int) -> bytes | None:
        out = ctypes.create_string_buffer(key_size)
        ret = self._lib.bpf_map_get_next_key(fd, key, out)
        if ret == -errno.ENOENT:
            return None
        self.check_int(ret, "bpf_map_get_next_key", MapError)
        return out.raw

    def map_lookup_batch(
        self, fd: int, in_batch: c_void_p | None, out_batch: ctypes.Array[ctypes.c_char],
        keys: ctypes.Array[ctypes.c_char], values: ctypes.Array[ctypes.c_char], count: int, elem_flags: int = 0,
    ) -> tuple[int, bool]:
        """One batch call. Returns (elements read, reached the end). ENOSPC raises MapError
        with errno ENOSPC so the caller can grow its batch."""
        cnt = c_uint32(count)
        opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts), elem_flags=elem_flags)
        ret = self._lib.bpf_map_lookup_batch(fd, in_batch, out_batch, keys, values, ctypes.byref(cnt), ctypes.byref(opts))
        if ret == -errno.ENOENT:
            return cnt.value, True
        self.check_int(ret, "bpf_map_lookup_batch", MapError)
        return cnt.value, False

    def map_update_batch(self, fd: int, keys: bytes, values: bytes, count: int, elem_flags: int = BPF_ANY) -> int:
        cnt = c_uint32(count)
        opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts), elem_flags=elem_flags)
        self.check_int(
            self._lib.bpf_map_update_batch(fd, keys, values, ctypes.byref(cnt), ctypes.byref(opts)),
            "bpf_map_update_batch", MapError,
        )
        return cnt.value

    def map_delete_batch(self, fd: int, keys: bytes, count: int) -> int:
        """Delete `count` keys; returns how many were deleted before any error."""
        cnt = c_uint32(count)
        opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
        ret = self._lib.bpf_map_delete_batch(fd, keys, ctypes.byref(cnt), ctypes.byref(opts))
        if ret == -errno.ENOENT:
            return cnt.value
        self.check_int(ret, "bpf_map_delete_batch", MapError)
        return cnt.value

    # -- programs ------------------------------------------------------------

    def prog_test_run(
        self, prog_fd: int, data: bytes, repeat: int = 1, ctx: bytes | None = None, data_out_size: int = 0,
    ) -> TestRunOpts:
        """BPF_PROG_TEST_RUN: run a loaded program on `data` (`repeat` times). Returns the
        filled opts (retval, duration in ns per run, data_size_out)."""
        opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
        din = ctypes.create_string_buffer(data, len(data))
        opts.data_in = ctypes.cast(din, c_void_p)
        opts.data_size_in = len(data)
        if data_out_size:
            dout = ctypes.create_string_buffer(data_out_size)
            opts.data_out = ctypes.cast(dout, c_void_p)
            opts.data_size_out = data_out_size
        if ctx is not None:
            cin = ctypes.create_string_buffer(ctx, len(ctx))
            opts.ctx_in = ctypes.cast(cin, c_void_p)
            opts.ctx_size_in = len(ctx)
        opts.repeat = repeat
        self.check_int(self._lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "bpf_prog_test_run_opts")
        return opts

    def prog_info(self, fd: int) -> tuple[int, str, int]:
        """(id, name, type) of the program behind an fd."""
        info = ProgInfo()
        ln = c_uint32(ctypes.sizeof(info))
        self.check_int(self._lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(ln)),
                       "bpf_obj_get_info_by_fd")
        return int(info.id), info.name.decode(errors="replace"), int(info.type)

    def link_create(self, prog_fd: int, target: int, attach_type: int, flags: int = 0) -> int:
        """BPF_LINK_CREATE (target: an ifindex for XDP and TCX). Returns the link's fd: the
        attachment lasts while that fd is open, so it goes with the process that holds it.
        Raises LibbpfError with the errno (EINVAL/EOPNOTSUPP where the kernel lacks the hook)."""
        opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=flags)
        fd = self._lib.bpf_link_create(prog_fd, target, attach_type, ctypes.byref(opts))
        return self.check_int(fd, "bpf_link_create")

    def map_iter_link(self, prog_fd: int, map_fd: int) -> int:
        """A link of a bpf_iter program (SEC("iter/bpf_map_elem")) over one map (Linux >= 5.9).
        Returns its fd; each :meth:`iter_create` on it starts a walk of the map."""
        map_info = (c_uint32 * 4)(map_fd)  # union bpf_iter_link_info: .map.map_fd first
        opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), iter_info=ctypes.addressof(map_info),
                              iter_info_len=4)
        return self.check_int(self._lib.bpf_link_create(prog_fd, 0, BPF_TRACE_ITER, ctypes.byref(opts)),
                              "bpf_link_create(iter)")

    def iter_create(self, link_fd: int) -> int:
        """An fd whose read() yields what the iterator program writes, from the map's start."""
        return self.check_int(self._lib.bpf_iter_create(link_fd), "bpf_iter_create")

    def prog_query(self, target: int, attach_type: int) -> list[int]:
        """Ids of the programs attached at a hook (for TCX: target is an ifindex). [] where the
        kernel has no such hook (EINVAL) or nothing is attached."""
        ids = (c_uint32 * 64)()
        opts = ProgQueryOpts(sz=ctypes.sizeof(ProgQueryOpts), prog_ids=ids, prog_cnt=64)
        ret = self._lib.bpf_prog_query_opts(target, attach_type, ctypes.byref(opts))
        if ret in (-errno.EINVAL, -errno.ENOENT, -errno.EOPNOTSUPP, -errno.ENODEV):
            return []
        self.check_int(ret, "bpf_prog_query_opts")
        return list(ids[: min(opts.prog_cnt, 64)])

    def prog_fd_by_id(self, prog_id: int) -> int:
        return self.check_int(self._lib.bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")


_instance: Libbpf | None = None
_instance_lock = threading.Lock()


def get() -> Libbpf:
    """The process-wide libbpf handle (loaded on first use)."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Libbpf()
        return _instance
