"""The exception tree. Every error a user can meet says what happened and what to do next.

    XtraceError
    ├── UsageError            bad option or environment value (exit 2)
    ├── LibbpfError           libbpf missing, too old, or a call failed
    │   ├── LibbpfNotFound
    │   ├── LoadError         the kernel refused the object (verifier log kept)
    │   └── MapError          a map operation failed
    ├── ObjectError           the BPF object file is missing or does not match the Python layout
    │   └── OpenError         libbpf could not open it (also a LibbpfError)
    ├── PrivilegeError        not root / missing capabilities
    └── AttachError           attaching to or detaching from an interface failed
        └── HookBusyError     another program or agent holds the hook (exit 2)

Exit code 2 means the user can fix it (an option, the environment, privileges, a libbpf to
install, another program to stop); 1 means an internal fault or a kernel refusal.
"""

from __future__ import annotations

__all__ = [
    "XtraceError",
    "UsageError",
    "LibbpfError",
    "LibbpfNotFound",
    "LoadError",
    "MapError",
    "ObjectError",
    "OpenError",
    "PrivilegeError",
    "AttachError",
    "HookBusyError",
]


class XtraceError(Exception):
    """Base of every error xtrace-catch raises on purpose; its message is shown to the user as is."""

    exit_code = 1


class UsageError(XtraceError):
    """A bad option or environment value."""

    exit_code = 2


class LibbpfError(XtraceError):
    """libbpf is missing, too old, or one of its calls failed."""

    def __init__(self, message: str, errno_: int = 0) -> None:
        super().__init__(message)
        self.errno = errno_


class LibbpfNotFound(LibbpfError):
    """No usable libbpf shared library was found (a bad XTRACE_LIBBPF, none installed, too old)."""

    exit_code = 2


class LoadError(LibbpfError):
    """The kernel refused to load the object; `log` holds libbpf's and the verifier's output.

    The message ends with the log's last lines (the verifier's verdict is there), so the reason
    shows without -v; -v prints the whole log."""

    TAIL_LINES = 6

    def __init__(self, message: str, errno_: int = 0, log: str = "") -> None:
        self.log = log
        self.tail = [ln.rstrip() for ln in log.splitlines() if ln.strip()][-self.TAIL_LINES:]
        super().__init__(message + "".join(f"\n  | {ln}" for ln in self.tail), errno_)


class MapError(LibbpfError):
    """A BPF map operation failed."""


class ObjectError(XtraceError):
    """The BPF object is missing, unreadable, or its structs do not match the Python layout."""


class OpenError(LibbpfError, ObjectError):
    """libbpf could not open the object (corrupt, or not a BPF ELF)."""


class PrivilegeError(XtraceError):
    """The process lacks root or the capabilities BPF needs."""

    exit_code = 2


class AttachError(XtraceError):
    """Attaching to or detaching from an interface failed."""


class NativeXdpRefused(AttachError):
    """--xdp-mode native, and the driver refused native XDP (the kernel's reason in the message)."""

    exit_code = 2


class HookBusyError(AttachError):
    """Another program (or another xtrace-catch) holds the XDP/TC hook; we never replace it."""

    exit_code = 2
