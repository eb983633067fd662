"""What a running agent imports: nothing it does not use (RSS, docs/PERFORMANCE.md), and the
shallow pyroute2 import stays a normal pyroute2 for anyone who asks for more."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_agent_imports_leave_out_what_it_does_not_use() -> None:
    out = _run(
        "import sys\n"
        "import xtrace_catch.cli, xtrace_catch.agent, xtrace_catch.export.push, xtrace_catch.export.remote_write\n"
        "mods = ('pyroute2.ndb.main', 'pyroute2.ipdb', 'pyroute2.nftables.main', 'pydantic', 'google.protobuf')\n"
        "print([m for m in mods if m in sys.modules], 'pyroute2.iproute.linux' in sys.modules)\n"
    )
    assert out == "[] True"


def test_pyroute2_is_whole_when_asked_for() -> None:
    out = _run(
        "import sys, xtrace_catch.attach as a\n"
        "import pyroute2\n"
        "print(isinstance(pyroute2.__version__, str))\n"
        "from pyroute2 import NDB, IPRoute, NetNS\n"
        "print(IPRoute is a.IPRoute, 'pyroute2.ndb.main' in sys.modules)\n"
        "from pyroute2 import iproute, config\n"
        "print(iproute.__name__, config.__name__)\n"
    )
    assert out.splitlines() == ["True", "True True", "pyroute2.iproute pyroute2.config"]


def test_pyroute2_imported_first_is_left_alone() -> None:
    out = _run(
        "import pyroute2, xtrace_catch.attach as a\n"
        "print(a.IPRoute is pyroute2.IPRoute)\n"
    )
    assert out == "True"


def test_protobuf_messages_still_load_on_use() -> None:
    out = _run(
        "from xtrace_catch.export.remote_write import messages\n"
        "print(sorted(messages()))\n"
    )
    assert out == "['Label', 'Sample', 'TimeSeries', 'WriteRequest']"
