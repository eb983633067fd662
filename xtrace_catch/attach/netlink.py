"""The one door to pyroute2: IPRoute, NetlinkError, and the translation of netlink errors to AttachError.

Rule: nothing else in the package imports pyroute2; the other attach modules take IPRoute and
NetlinkError from here, and every public entry point of attach/ lets no NetlinkError out."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from ..errors import AttachError
from ..kernel.libbpf import errno_name


def _shallow_pyroute2() -> None:
    """Make ``import pyroute2.<sub>`` load only the modules asked for.

    pyroute2's package ``__init__`` imports all of pyroute2 (NDB, IPDB, nftables, WireGuard,
    nl80211, Plan 9, ...): twice the RSS of the IPRoute the agent needs (docs/PERFORMANCE.md).
    So the package is registered without running its ``__init__``; the first time anything
    asks the package itself for a name (``from pyroute2 import NDB``), ``__init__`` runs then
    and the whole API is there, as usual. Nothing changes if pyroute2 is already imported."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    pkg = importlib.util.module_from_spec(spec)
    loading = False

    def whole(name: str) -> object:
        nonlocal loading
        if loading or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)  # a submodule (or __init__ running): the import system loads it
        loading = True
        del pkg.__dict__["__getattr__"]
        spec.loader.exec_module(pkg)  # type: ignore[union-attr]
        return getattr(pkg, name)

    pkg.__getattr__ = whole  # type: ignore[attr-defined]  # PEP 562
    sys.modules["pyroute2"] = pkg


_shallow_pyroute2()
from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402


def open_ipr() -> IPRoute:
    """An rtnetlink socket that asks for extended acks, so a refusal carries the kernel's reason."""
    try:
        return IPRoute(ext_ack=True)
    except OSError as exc:
        raise AttachError(f"cannot open a netlink socket: {exc}") from exc


def xdp_attrs(link: object) -> dict[str, object]:
    x = link.get_attr("IFLA_XDP")  # type: ignore[attr-defined]
    return dict(x["attrs"]) if x else {}


P = ParamSpec("P")
R = TypeVar("R")


def netlink_errno(exc: NetlinkError) -> int:
    return int(exc.code)


def netlink_reason(exc: NetlinkError) -> str:
    """The kernel's own words for a refusal (netlink's extended ack, e.g. "veth: Peer MTU is too
    large to set XDP"), or '' when it gave none."""
    msg = str(exc.args[1]) if len(exc.args) > 1 and exc.args[1] else ""
    return "" if msg == os.strerror(int(exc.code)) else msg


def boundary(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a public entry point of attach/: a NetlinkError leaving it becomes an AttachError
    naming `what` and the errno (the hook modules handle the errnos they expect themselves)."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except NetlinkError as exc:
                raise AttachError(f"{what} failed: the kernel answered {errno_name(netlink_errno(exc))} "
                                  "over netlink; run with -v for details") from exc

        return guarded

    return wrap
