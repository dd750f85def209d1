"""Import rules of appliance/, read from the source (the AST), not by importing it.

1. Only the edges import click or Quart: the command line (appliance/cli/ and `berth ctl` in
   omnibus/), the APIs (appliance/api/, the management API in api/manage/ included) and the
   console. A feature package holds no web module of its own. Imports inside functions count
   too: a domain module that needs Quart for one function is still tied to the web layer.
2. No import cycles among appliance modules at module level. Imports inside functions (and
   under `if TYPE_CHECKING:`) run later, once every module is loaded, so they are not edges.

What does not follow the rules yet is listed below, each with its reason; an entry that no
longer applies fails the test too, so the lists only shrink.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "appliance"

WEB_AND_CLI = ("click", "quart", "quart_trio")
# Where click and Quart belong.
EDGE_PACKAGES = ("appliance.cli", "appliance.api", "appliance.console")
# Command modules outside appliance/cli/ (they import from appliance.cli.common only).
EDGE_MODULES = {
    "appliance.omnibus.ctl",  # `berth ctl`: beside the templates and checks of an install
}
# module -> why it may import click or Quart for now.
EDGE_ALLOWED = {
    "appliance.app": "builds the QuartTrio application that serves /v2, /api/v1 and the "
    "console: the web edge's root",
    "appliance.ops.service": "labels the web app's requests for the metrics (register_web); "
    "moves next to the API when ops/ is split by layer (issue 19, item 3)",
}
# Module-level import cycles that remain, as sets of modules -> why.
CYCLES_ALLOWED: dict[frozenset[str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes: list[ast.stmt], module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements among `nodes`; with `module_level`, only those that run when the
    module is imported (not in functions, not under `if TYPE_CHECKING:`)."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if not module_level:
                yield from _imports(node.body, module_level)
        elif isinstance(node, ast.If) and module_level and _is_type_checking(node.test):
            yield from _imports(node.orelse, module_level)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from _imports(
                        [c for c in children if isinstance(c, ast.stmt | ast.excepthandler)],
                        module_level,
                    )


def imported_names(name: str, tree: ast.Module, module_level: bool) -> set[str]:
    """Dotted names `name` imports (`from a.b import c` gives a.b.c and a.b)."""
    package = name if tree_is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(tree.body, module_level):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        found.add(base)
        found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


_PACKAGES = {module_name(p.parent) for p in PACKAGE.rglob("__init__.py")}


def tree_is_package(name: str) -> bool:
    return name in _PACKAGES


def graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> appliance modules it imports at module level. Importing a.b.c runs the
    packages a.b and a first: they are edges too, except the importer's own ancestors
    (Python has put those in sys.modules before it runs the importer)."""
    edges: dict[str, set[str]] = {}
    for name, tree in trees.items():
        ancestors = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
        targets: set[str] = set()
        for dotted in imported_names(name, tree, module_level=True):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in trees and candidate not in ancestors:
                    targets.add(candidate)
        edges[name] = targets - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def is_edge(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in EDGE_PACKAGES) or name in EDGE_MODULES


def test_only_the_edges_import_click_or_quart() -> None:
    offenders = set()
    for name, tree in modules().items():
        roots = {n.split(".")[0] for n in imported_names(name, tree, module_level=False)}
        if roots & set(WEB_AND_CLI) and not is_edge(name):
            offenders.add(name)
    assert offenders - EDGE_ALLOWED.keys() == set(), "click or Quart outside the edges"
    assert EDGE_ALLOWED.keys() - offenders == set(), "allowed, but no longer needed: remove"


def test_no_import_cycles_at_module_level() -> None:
    found = set(cycles(graph(modules())))
    assert found - CYCLES_ALLOWED.keys() == set(), "new import cycles"
    assert CYCLES_ALLOWED.keys() - found == set(), "allowed, but gone: remove from the list"


def test_the_cycle_finder_finds_cycles() -> None:
    """The checks above pass on a clean tree; this is what they would catch."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []
    source = ast.parse(
        "import appliance.x\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import appliance.hidden\n"
        "def f():\n    import appliance.late\n"
        "try:\n    from appliance.y import z\nexcept ImportError:\n    pass\n"
    )
    level = imported_names("appliance.m", source, module_level=True)
    assert {"appliance.x", "appliance.y", "appliance.y.z"} <= level
    assert "appliance.hidden" not in level
    assert "appliance.late" not in level
    assert "appliance.late" in imported_names("appliance.m", source, module_level=False)


def test_the_root_group_loads_its_commands_lazily() -> None:
    """`berth` imports a command's module when the command runs (appliance.cli once imported
    every command module at its end, and they imported it back: a cycle). Every name the root
    group maps must be defined at the top of its module."""
    from appliance.cli import COMMANDS  # noqa: PLC0415

    trees = modules()
    edges = graph(trees)
    targets = {spec.partition(":")[0] for spec in COMMANDS.values()}
    assert edges["appliance.cli"] & targets == set()
    for spec in COMMANDS.values():
        module, _, attribute = spec.partition(":")
        defined = {
            node.name
            for node in trees[module].body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)
        }
        assert attribute in defined, spec
    for module in EDGE_MODULES:
        assert "appliance.cli.common" in edges[module], module


def test_serve_loads_no_other_command() -> None:
    """What `berth serve` imports before it decides its role: its own module and the shared
    one, not the other commands, the web stack or cryptography (the supervisor of N workers
    stays small; a worker loads the application itself)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    script = (
        "import sys\n"
        "from appliance.cli import main\n"
        "main(['serve', '--help'], standalone_mode=False)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('appliance.cli'))))\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    commands, roots = done.stdout.splitlines()[-2:]
    assert commands.split() == ["appliance.cli", "appliance.cli.common", "appliance.cli.serve"]
    assert {"quart", "quart_trio", "hypercorn", "cryptography"} & set(roots.split()) == set()
