"""The attach boundary: no pyroute2 NetlinkError leaves attach/ (pure: netlink failures injected).

A NetlinkError reaching cli.main would be a traceback; every public entry point of attach/
turns it into our AttachError naming what failed and the errno, with the netlink error chained."""

from __future__ import annotations

import errno
import importlib
from collections.abc import Callable

import pytest

from xtrace_catch import attach
from xtrace_catch.attach import interfaces
from xtrace_catch.attach.netlink import NetlinkError
from xtrace_catch.errors import AttachError

cleanup_mod = importlib.import_module("xtrace_catch.attach.cleanup")  # the module: attach.cleanup is the function


class RefusingNetlink:
    """An IPRoute whose every request fails with `code`."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __enter__(self) -> RefusingNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., object]:
        def refuse(*args: object, **kwargs: object) -> object:
            raise NetlinkError(self.code, f"{name} refused")

        return refuse


@pytest.mark.parametrize(("call", "what"), [
    (lambda: attach.list_interfaces(), "listing interfaces"),
    (lambda: attach.find_interface("xtnone0"), "looking up the interface"),
    (lambda: attach.get_interface("xtnone0"), "looking up the interface"),
    (lambda: attach.cleanup("xtnone0"), "looking up the interface"),  # cleanup looks it up first
])
@pytest.mark.parametrize("code", [errno.EPERM, errno.EBUSY])
def test_netlink_errors_become_attach_errors(monkeypatch: pytest.MonkeyPatch, call: Callable[[], object],
                                             what: str, code: int) -> None:
    monkeypatch.setattr(interfaces, "open_ipr", lambda: RefusingNetlink(code))
    monkeypatch.setattr(cleanup_mod, "open_ipr", lambda: RefusingNetlink(code))
    with pytest.raises(AttachError) as info:
        call()
    name = errno.errorcode[code]
    assert str(info.value).startswith(f"{what} failed: the kernel answered {name} ("), str(info.value)
    assert isinstance(info.value.__cause__, NetlinkError)


def test_the_boundary_passes_our_own_errors_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """A UsageError (bad name) is not re-dressed as an attach failure."""
    from xtrace_catch.errors import UsageError

    with pytest.raises(UsageError, match="invalid interface name"):
        attach.get_interface("a/b")
