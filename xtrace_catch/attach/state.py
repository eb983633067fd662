"""State that outlives a run: the per-hook lock (one agent per hook) and the records that let
cleanup after SIGKILL remove exactly what a run created (a clsact qdisc, an XDP program)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from ..errors import HookBusyError
from .names import Interface

log = logging.getLogger(__name__)


def _state_dir() -> Path:
    return Path(os.environ.get("XTRACE_STATE_DIR", "/run/xtrace-catch"))


def _netns_id() -> str:
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "0"


def state_file(ifname: str) -> Path:
    return _state_dir() / f"{_netns_id()}-{ifname}.json"


def write_record(path: Path, data: dict[str, object], what: str) -> None:
    """A crash-state record (with our pid); failing to write one is logged, not fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**data, "pid": os.getpid()}))
    except OSError as exc:
        log.info("cannot record %s (%s)", what, exc)


def xdp_state_file(ifname: str) -> Path:
    """Records the id of the XDP program we attached: without CAP_SYS_ADMIN a program's name
    cannot be read back (bpf_prog_get_fd_by_id), so a killed run's program is known by its id."""
    return _state_dir() / f"{_netns_id()}-{ifname}-xdp.json"


def recorded_xdp_id(ifname: str, index: int) -> int:
    try:
        st = json.loads(xdp_state_file(ifname).read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(st, dict) or st.get("ifindex") != index:
        return 0
    return int(st.get("prog_id") or 0)


class HookLock:
    """An exclusive lock per network namespace, interface and hook (xdp, tc-ingress, tc-egress).

    A second agent on the same hook would otherwise take our filter for a stale one and
    replace it. flock() dies with its process, so a SIGKILLed run leaves no lock behind."""

    def __init__(self, ifname: str, hook: str) -> None:
        self.path = _state_dir() / f"{_netns_id()}-{ifname}-{hook}.lock"
        self.ifname, self.hook = ifname, hook
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot create lock %s (%s): not guarding against a second agent", self.path, exc.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise HookBusyError(
                f"another xtrace-catch (pid {other}) is already watching {self.ifname} ({self.hook}); "
                f"stop it first (kill {other}), or watch another hook"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
            os.close(fd)


def stale_state_is_ours(iface: Interface) -> bool:
    """Whether the state file says a run of ours, no longer alive, created the interface's clsact."""
    try:
        st = json.loads(state_file(iface.name).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(st, dict) or not st.get("created_clsact") or st.get("ifindex") != iface.index:
        return False
    pid = st.get("pid")
    if isinstance(pid, int) and pid > 0 and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False  # that run is still alive: the qdisc is its to remove
    return True
