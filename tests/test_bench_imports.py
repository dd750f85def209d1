"""Every bench script loads: mypy checks appliance/ only, so a name a bench module imports from
another (bench/system.py, bench/servers.py, ...) that was renamed would otherwise surface only
when someone runs `make bench`."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__"))
def test_bench_module_loads(name: str) -> None:
    importlib.import_module(f"bench.{name}")
