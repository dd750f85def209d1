"""Fixtures for upgrade tests: `earlier_source(commit)` exports that commit of this repository
(tests/support/earlier.py) into a temporary directory, once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.earlier import export_commit

EarlierSource = Callable[[str], Path]


@pytest.fixture(scope="session")
def earlier_source(tmp_path_factory: pytest.TempPathFactory) -> EarlierSource:
    made: dict[str, Path] = {}

    def get(commit: str) -> Path:
        if commit not in made:
            made[commit] = export_commit(commit, tmp_path_factory.mktemp("earlier") / commit)
        return made[commit]

    return get
