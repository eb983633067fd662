"""A BPF object's life: open -> configure (rodata, map sizes, which programs) -> load -> fds -> close.

One owner for the object's kernel resources: :meth:`BpfObject.close` is idempotent and
the object is a context manager, so every fd it created is released exactly once.
"""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path
from types import TracebackType

from ..errors import LoadError, ObjectError, OpenError
from . import libbpf
from .maps import BpfMap, MapInfo

__all__ = ["BpfObject"]


class BpfObject:
    """An opened (then loaded) BPF object."""

    def __init__(self, data: bytes, name: str = "object") -> None:
        """Open the object from its ELF bytes (nothing reaches the kernel yet)."""
        self.lib = libbpf.get()
        self.name = name
        self._loaded = False
        # libbpf keeps pointers into the buffer until close: keep it alive.
        self._buf = ctypes.create_string_buffer(data, len(data))
        ptr = self.lib.lib.bpf_object__open_mem(self._buf, len(data), None)
        self._obj: int | None = self.lib.check_ptr(ptr, f"opening BPF object {name}", OpenError)

    @classmethod
    def from_file(cls, path: str | Path) -> BpfObject:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ObjectError(f"cannot read BPF object {path}: {exc.strerror}; reinstall xtrace-catch or run 'make bpf'") from exc
        return cls(data, str(path))

    # -- before load -----------------------------------------------------

    def _require_open(self) -> int:
        if self._obj is None:
            raise ObjectError(f"BPF object {self.name} is closed")
        return self._obj

    def _map_ptr(self, name: str) -> int:
        ptr = self.lib.lib.bpf_object__find_map_by_name(self._require_open(), name.encode())
        if not ptr:
            raise ObjectError(f"BPF object {self.name} has no map {name!r}; rebuild it with 'make bpf'")
        return ptr

    def _prog_ptr(self, name: str) -> int:
        ptr = self.lib.lib.bpf_object__find_program_by_name(self._require_open(), name.encode())
        if not ptr:
            raise ObjectError(f"BPF object {self.name} has no program {name!r}; rebuild it with 'make bpf'")
        return ptr

    def _require_unloaded(self, what: str) -> None:
        if self._loaded:
            raise ObjectError(f"{what} must happen before load")

    def program_names(self) -> list[str]:
        out, prog = [], None
        while prog := self.lib.lib.bpf_object__next_program(self._require_open(), prog):
            out.append(self.lib.lib.bpf_program__name(prog).decode())
        return out

    def set_max_entries(self, map_name: str, n: int) -> None:
        self._require_unloaded("resizing a map")
        self.lib.check_int(self.lib.lib.bpf_map__set_max_entries(self._map_ptr(map_name), n),
                           f"bpf_map__set_max_entries({map_name}, {n})")

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        self._require_unloaded("choosing programs")
        self.lib.check_int(self.lib.lib.bpf_program__set_autoload(self._prog_ptr(prog_name), autoload),
                           f"bpf_program__set_autoload({prog_name})")

    def write_rodata(self, patches: dict[int, bytes]) -> None:
        """Overwrite bytes of .rodata at the given offsets (const volatile tunables)."""
        self._require_unloaded("setting tunables")
        m = self._map_ptr(".rodata")
        size = ctypes.c_size_t()
        ptr = self.lib.check_ptr(self.lib.lib.bpf_map__initial_value(m, ctypes.byref(size)), "bpf_map__initial_value")
        buf = bytearray(ctypes.string_at(ptr, size.value))
        for off, data in patches.items():
            if off + len(data) > len(buf):
                raise ObjectError(f".rodata patch at {off} runs past its {len(buf)} bytes")
            buf[off:off + len(data)] = data
        cbuf = ctypes.create_string_buffer(bytes(buf), len(buf))
        self.lib.check_int(self.lib.lib.bpf_map__set_initial_value(m, cbuf, len(buf)), "bpf_map__set_initial_value")

    # -- load ------------------------------------------------------------

    def load(self) -> None:
        """Create the maps and load the programs into the kernel.

        Raises LoadError with libbpf's and the verifier's messages in ``.log``."""
        obj = self._require_open()
        self._require_unloaded("load")
        with self.lib.capture() as lines:
            ret = self.lib.lib.bpf_object__load(obj)
        text = "".join(lines)
        if ret < 0:
            err = -ret
            hint = libbpf.hint_for(err)
            if err in (errno.EPERM, errno.EACCES) and "verifier" not in text.lower() and "processed" not in text:
                hint = "run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (and raise RLIMIT_MEMLOCK on kernels < 5.11)"
            if "vmlinux BTF" in text or "failed to find valid kernel BTF" in text:
                hint = "this kernel has no BTF (/sys/kernel/btf/vmlinux); use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            msg = f"loading BPF object {self.name} failed: {libbpf.errno_name(err)}"
            raise LoadError(msg + (f"; {hint}" if hint else "") + " (-v shows libbpf's whole log)", err, text)
        self._loaded = True

    @property
    def loaded(self) -> bool:
        return self._loaded

    def map(self, name: str, **dtypes: object) -> BpfMap:
        """A loaded map by name. `dtypes` may give key_dtype= and value_dtype=."""
        m = self._map_ptr(name)
        L = self.lib.lib
        fd = L.bpf_map__fd(m)
        if fd < 0:
            raise ObjectError(f"map {name!r} has no fd: load the object first")
        info = MapInfo(
            name=name, fd=fd, map_type=L.bpf_map__type(m), key_size=L.bpf_map__key_size(m),
            value_size=L.bpf_map__value_size(m), max_entries=L.bpf_map__max_entries(m),
        )
        return BpfMap(info, **dtypes)  # type: ignore[arg-type]

    def prog_fd(self, name: str) -> int:
        fd = self.lib.lib.bpf_program__fd(self._prog_ptr(name))
        if fd < 0:
            raise ObjectError(f"program {name!r} is not loaded (autoload off, or load the object first)")
        return fd

    # -- teardown --------------------------------------------------------

    def close(self) -> None:
        """Release every fd of the object. Safe to call twice."""
        obj, self._obj = self._obj, None
        if obj is not None:
            self.lib.lib.bpf_object__close(obj)
        self._loaded = False

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
