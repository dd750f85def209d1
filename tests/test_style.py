"""Habits of the code base that a reader relies on, checked from the source (the AST).

Each module of appliance/ opens with a docstring naming its responsibility: the first thing a
reader of an unfamiliar file sees is what it is for (and a module whose sentence cannot be
written is two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules_without_docstring(root: Path) -> list[str]:
    return [
        str(path.relative_to(root))
        for path in sorted(root.rglob("*.py"))
        if path.read_text().strip() and not ast.get_docstring(ast.parse(path.read_text()))
    ]


def test_every_module_opens_with_its_responsibility() -> None:
    assert modules_without_docstring(ROOT / "appliance") == []


def test_the_finder_sees_a_module_without_docstring(tmp_path: Path) -> None:
    (tmp_path / "documented.py").write_text('"""Does one thing."""\n\nX = 1\n')
    (tmp_path / "empty.py").write_text("")
    (tmp_path / "bare.py").write_text("# a comment is not a docstring\nX = 1\n")
    assert modules_without_docstring(tmp_path) == ["bare.py"]
