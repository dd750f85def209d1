"""Import rules of appliance/, read from the source (the AST), not by importing it.

1. Only the edges import click or Quart: the command line (appliance/cli/ and `berth ctl` in
   omnibus/), the APIs (appliance/api/, the management API in api/manage/ included) and the
   console. A feature package holds no web module of its own. Imports inside functions count
   too: a domain module that needs Quart for one function is still tied to the web layer.
2. No import cycles among appliance modules at module level. Imports inside functions (and
   under `if TYPE_CHECKING:`) run later, once every module is loaded, so they are not edges.
3. Layers: no module imports, at module level, a module of a layer above its own (`LAYERS`,
   bottom-up). Modules of one layer may import each other (a feature may use another).

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
}
# Module-level import cycles that remain, as sets of modules -> why.
CYCLES_ALLOWED: dict[frozenset[str], str] = {}

# The layers, bottom-up: a module belongs to the layer of its longest listed prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # What everything may use: domain errors, settings, the request context, small helpers.
    (
        "base",
        (
            "appliance",
            "appliance.errors",
            "appliance.config",
            "appliance.version",
            "appliance.backoff",
            "appliance.filemodes",
            "appliance.libc",
            "appliance.context",
        ),
    ),
    ("oci", ("appliance.oci",)),  # pure OCI knowledge, no I/O
    # Records and bytes: the metadata database (with the records written in the caller's
    # transaction: audit rows, queued events) and the blob store.
    ("records", ("appliance.metadata", "appliance.storage")),
    ("runtime", ("appliance.runtime",)),  # process infrastructure: logs, metrics, jobs, ...
    (
        "features",
        (
            "appliance.registry",
            "appliance.auth",
            "appliance.lifecycle",
            "appliance.backup",
            "appliance.scan",
            "appliance.proxy",
            "appliance.importer",
            "appliance.webhooks",
        ),
    ),
    # The edges: HTTP (/v2, /api/v1, middleware), the console, the command line, the install.
    (
        "edges",
        (
            "appliance.api",
            "appliance.console",
            "appliance.cli",
            "appliance.omnibus",
        ),
    ),
    # What assembles a running Berth from all of the above.
    (
        "assembly",
        (
            "appliance.app",
            "appliance.services",
            "appliance.importer.target",
            "appliance.operations",
            "appliance.server",
            "appliance.supervisor",
            "appliance.__main__",
        ),
    ),
)
# (module, imported module) -> why `module` may import a layer above its own, for now.
UPWARD_ALLOWED: dict[tuple[str, str], str] = {
    ("appliance.proxy.service", "appliance.api.asgi"): "the pull-through cache streams an "
    "upstream blob to the client as it arrives, so it writes raw ASGI messages (Send, "
    "header_list); the ASGI types belong below the features",
    ("appliance.proxy.service", "appliance.api"): "the package of appliance.api.asgi, above",
}


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


def layer(name: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int:
    """The index of `name`'s layer in `layers` (bottom-up)."""
    best, found = -1, None
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    assert found is not None, f"{name} is in no layer: add it to LAYERS"
    return found


def upward(
    edges: dict[str, set[str]], layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS
) -> set[tuple[str, str]]:
    """The module-level imports of a layer above the importer's own."""
    return {
        (name, target)
        for name, targets in edges.items()
        for target in targets
        if layer(target, layers) > layer(name, layers)
    }


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


def test_no_module_imports_a_layer_above_its_own() -> None:
    found = upward(graph(modules()))
    assert found - UPWARD_ALLOWED.keys() == set(), "imports of a higher layer"
    assert UPWARD_ALLOWED.keys() - found == set(), "allowed, but gone: remove from the list"


def test_the_layer_rule_finds_upward_imports() -> None:
    """What the layer check would catch: the metadata importing the runtime (as
    metadata/store.py once imported the operations package), or an edge's module imported by
    a feature; imports within a layer and downward pass."""
    layers = (("low", ("x.low",)), ("edges", ("x.edge",)), ("top", ("x.top",)))
    edges = {
        "x.low.store": {"x.edge.events"},
        "x.low.db": set(),
        "x.edge.http": {"x.low.db", "x.edge.events"},
        "x.edge.events": set(),
        "x.top.app": {"x.edge.http", "x.low.feature"},
        "x.low.feature": {"x.edge.http"},
    }
    assert upward(edges, layers) == {
        ("x.low.store", "x.edge.events"),
        ("x.low.feature", "x.edge.http"),
    }
    assert layer("appliance.metadata.audit") < layer("appliance.runtime.jobs")
    assert layer("appliance.api.manage.lifecycle") > layer("appliance.lifecycle.gc")


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
