"""What a running agent imports: nothing it does not use (RSS, docs/PERFORMANCE.md), and the
shallow pyroute2 import stays a normal pyroute2 for anyone who asks for more; and the package's
import rules (one door per outside library, rooms import only downwards)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
        "import sys, xtrace_catch.attach.netlink as a\n"
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
        "import pyroute2, xtrace_catch.attach.netlink as a\n"
        "print(a.IPRoute is pyroute2.IPRoute)\n"
    )
    assert out == "True"


def test_protobuf_messages_still_load_on_use() -> None:
    out = _run(
        "from xtrace_catch.export.remote_write import messages\n"
        "print(sorted(messages()))\n"
    )
    assert out == "['Label', 'Sample', 'TimeSeries', 'WriteRequest']"


# The package's rooms and what each may import (runtime imports; `if TYPE_CHECKING:` blocks
# are annotations only). docs/ARCHITECTURE.md states the same rules in words.
OUTSIDE_LIBRARIES = {  # an outside library -> the only place that may import it
    "ctypes": "kernel/",
    "pyroute2": "attach/netlink.py",
    "httpx": "export/",
    "google": "export/",  # protobuf
    "cramjam": "export/",
}
MAY_IMPORT = {  # a room -> the rooms it may import (besides itself)
    "errors": set(),
    "notify": set(),
    "kernel": {"errors", "notify"},
    "settings": {"errors", "kernel"},
    "attach": {"errors", "notify", "kernel", "settings"},
    "flows": {"errors", "notify", "kernel", "settings"},
    "export": {"errors", "notify", "kernel", "settings", "flows"},
    "rdma": {"errors", "notify", "kernel", "settings", "attach", "flows", "export", "loop"},
    "loop": {"errors", "notify", "settings", "export"},
    "agent": {"errors", "notify", "kernel", "settings", "attach", "flows", "export", "rdma", "loop"},
    "cli": {"errors", "notify", "kernel", "settings", "attach", "flows", "export", "rdma", "agent", "__init__"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import not under `if TYPE_CHECKING:`, at any depth (lazy imports count)."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append(child)
            visit(child)

    visit(tree)
    return out


def _imports_by_module() -> dict[str, set[str]]:
    """'kernel/maps.py' -> the dotted names it imports, relative imports made absolute."""
    pkg = ROOT / "xtrace_catch"
    found: dict[str, set[str]] = {}
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        here = ["xtrace_catch", *rel.parent.parts]
        names: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
                continue
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names |= {f"{mod}.{a.name}" for a in node.names} if not node.module else {mod}
        found[rel.as_posix()] = names
    return found


def _room(rel: str) -> str:
    return rel.split("/")[0] if "/" in rel else rel.removesuffix(".py")


def test_each_outside_library_has_one_door() -> None:
    """Only kernel/ imports ctypes, only attach/netlink.py pyroute2, only export/ httpx, protobuf, cramjam."""
    modules = _imports_by_module()
    assert len(modules) > 30  # the walk found the package
    wrong = sorted((rel, name) for rel, names in modules.items() for name in names
                   for lib, door in OUTSIDE_LIBRARIES.items()
                   if (name == lib or name.startswith(lib + ".")) and not rel.startswith(door))
    assert not wrong, wrong
    assert any(n.startswith("pyroute2") for n in modules["attach/netlink.py"])
    assert "ctypes" in modules["kernel/libbpf.py"] and "httpx" in modules["export/push.py"]


def test_rooms_import_only_downwards() -> None:
    """kernel/ sees nothing above it, flows/ never imports export/ or attach/, and so on (MAY_IMPORT)."""
    wrong = []
    for rel, names in _imports_by_module().items():
        room = _room(rel)
        assert room in MAY_IMPORT, f"{rel}: a new room; give it a rule in MAY_IMPORT"
        for name in names:
            parts = name.split(".")
            if parts[0] != "xtrace_catch" or len(parts) < 2:
                continue
            target = parts[1] if parts[1] in MAY_IMPORT else "__init__"  # __version__: the package root
            if target != room and target not in MAY_IMPORT[room]:
                wrong.append((rel, name))
    assert not wrong, sorted(wrong)


def test_the_rule_checker_sees_a_broken_rule() -> None:
    """The walk catches a lazy import inside a function and ignores TYPE_CHECKING blocks."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import httpx\n"
                     "def f():\n    import pyroute2.iproute\n")
    names = {a.name for n in _runtime_imports(tree) if isinstance(n, ast.Import) for a in n.names}
    assert names == {"pyroute2.iproute"}
