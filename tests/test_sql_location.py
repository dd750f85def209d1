"""Where SQL may be written, read from the source (the AST), not by importing it.

SQL belongs to the metadata package (appliance/metadata/) or to a feature's own records module
(a module named `records.py`: scan/records.py, backup/records.py, ...). Everything else calls
their named functions, so a table's statements are found in one place and a handler, a page
or a job never holds a query of its own.

What does not follow the rule yet is listed below, each with its reason; an entry that no
longer applies fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.test_imports import imported_names, module_name, modules

ROOT = Path(__file__).resolve().parents[1]

# A statement's opening words, in capitals as Berth writes SQL (prose and docstrings that
# mention a table are not statements).
SQL = re.compile(
    r"\b(SELECT\s|INSERT\s+INTO\s|DELETE\s+FROM\s|UPDATE\s+\w+\s+SET\s)"
    r"|^\s*(PRAGMA|BEGIN|COMMIT|VACUUM|CREATE|ALTER|DROP)\b"
)

# module -> why it may hold SQL for now.
ALLOWED = {
    "appliance.scan.packages": "reads the RPM package database (a SQLite file) found in an "
    "image's layers: the image's data, not Berth's records",
}


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def sql_lines(tree: ast.Module) -> list[int]:
    """Lines of the string literals (f-strings' fixed parts too) that are SQL statements."""
    docs = _docstrings(tree)
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docs
        and SQL.search(node.value)
    )


def may_hold_sql(name: str) -> bool:
    return (
        name == "appliance.metadata"
        or name.startswith("appliance.metadata.")
        or (name.rpartition(".")[2] == "records")
    )


def test_sql_is_only_in_metadata_and_records_modules() -> None:
    found = {
        name: lines
        for name, tree in modules().items()
        if not may_hold_sql(name) and (lines := sql_lines(tree))
    }
    stray = {name: lines for name, lines in found.items() if name not in ALLOWED}
    assert stray == {}, "SQL outside metadata/ and records modules (module: lines)"
    assert ALLOWED.keys() - found.keys() == set(), "allowed, but no longer needed: remove"


def test_the_metadata_store_imports_no_feature() -> None:
    """A write's side effects reach the features through the store's hook (WriteEffects),
    registered at assembly: the store itself imports only what lies below it."""
    tree = modules()["appliance.metadata.store"]
    imported = {
        n
        for n in imported_names("appliance.metadata.store", tree, module_level=False)
        if n.startswith("appliance.")
    }
    below = {"appliance.errors", "appliance.metadata", "appliance.oci"}
    assert {n for n in imported if ".".join(n.split(".")[:2]) not in below} == set()


def test_the_finder_finds_planted_sql() -> None:
    """The check above passes on a clean tree; this is what it would catch."""
    planted = ast.parse(
        '"""A module that mentions SELECT x FROM y in its docstring only."""\n'
        "def page(tx, t):\n"
        '    """Reads a row: SELECT name FROM users (described, not run)."""\n'
        '    label = "Select a repository to delete from the list"\n'
        '    tx.execute("SELECT name FROM users "\n'
        '               "WHERE id = :id", {"id": 1})\n'
        '    tx.execute(f"DELETE FROM {t} WHERE x = 1")\n'
        '    tx.execute("UPDATE tags SET pulled_at = :at", {})\n'
        '    conn.execute("PRAGMA integrity_check")\n'
    )
    assert sql_lines(planted) == [5, 7, 8, 9]
    assert not may_hold_sql("appliance.console.pages.manage")
    assert may_hold_sql("appliance.scan.records")
    assert may_hold_sql("appliance.metadata.identity")
    assert module_name(ROOT / "appliance" / "scan" / "records.py") == "appliance.scan.records"
