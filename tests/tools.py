"""The programs and files outside Python that some tests need (gcc, clang, tshark, tcpreplay,
libbpf's header). When one is missing the test stops, naming the thing and the Debian package
that provides it: under CI (the environment variable CI is set and is not "0"/"false"; .ci/run
exports CI=true) it FAILS, because CI installs all of them ('make deps-test', Makefile DEB_TEST)
and a missing one means a broken set-up; anywhere else it is skipped, with the same message.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when the environment variable CI says this is a CI run (any value but "", "0", "false", "no")."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str, package: str) -> NoReturn:
    """Stop the test: fail under CI, skip elsewhere; the message names `what` and `package`."""
    msg = f"{what} is missing: install it with 'apt-get install {package}' ('make deps-test' installs it)"
    if in_ci():
        pytest.fail(f"{msg} [CI is set: a missing test tool fails]", pytrace=False)
    pytest.skip(msg)


def find_tool(name: str, package: str, *alternatives: str) -> str | None:
    """Path of `name` (or of the first of `alternatives` found) on PATH. Missing: None outside CI
    (for a test whose check with the tool is one extra among others), a failure under CI."""
    for n in (name, *alternatives):
        path = shutil.which(n)
        if path:
            return path
    if in_ci():
        missing(" / ".join((name, *alternatives)), package)
    return None


def require_tool(name: str, package: str, *alternatives: str) -> str:
    """Path of `name` (or of the first of `alternatives` found) on PATH; missing: fail under CI,
    skip elsewhere, naming the Debian package (``require_tool("tshark", "tshark")``)."""
    path = find_tool(name, package, *alternatives)
    if path is None:
        missing(" / ".join((name, *alternatives)), package)
    return path


def require_file(path: str | Path, package: str, what: str = "") -> Path:
    """`path` if it exists; missing: fail under CI, skip elsewhere (a header, say: libbpf-dev's bpf.h)."""
    p = Path(path)
    if not p.exists():
        missing(f"{what} {p}" if what else str(p), package)
    return p
