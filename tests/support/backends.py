"""Backend profiles: which metadata database and blob store a Berth under test runs on.

A profile names the pytest fixtures that provide its services. Each such fixture is
session-scoped (the service starts once) and returns a factory: calling it makes a fresh,
empty database or bucket and returns the `BERTH_*` environment that points Berth at it.
`sqlite-fs` needs no fixture: Berth's embedded defaults.

`BERTH_E2E_BACKENDS` (comma-separated, or `all`) chooses the profiles the full end-to-end
suite runs on; `make test` runs it on `sqlite-fs` and a smaller smoke test on every other
profile, `make test-slow` the full suite on all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

EnvFactory = Callable[[], dict[str, str]]

# profile → fixtures whose factories together configure it
PROFILES: dict[str, tuple[str, ...]] = {
    "sqlite-fs": (),
    "postgres-fs": ("postgres_metadata",),  # tests/support/postgres.py
    "sqlite-s3": ("s3_storage",),  # tests/support/seaweedfs.py
    "postgres-s3": ("postgres_metadata", "s3_storage"),
    "sqlite-azure": ("azure_storage",),  # tests/support/azurite.py
}


def e2e_profiles() -> list[str]:
    chosen = os.environ.get("BERTH_E2E_BACKENDS", "sqlite-fs")
    names = list(PROFILES) if chosen == "all" else [n.strip() for n in chosen.split(",") if n]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise pytest.UsageError(f"BERTH_E2E_BACKENDS: unknown profile(s) {unknown}")
    return names


def profile_env(request: pytest.FixtureRequest, profile: str) -> dict[str, str]:
    """The environment for a fresh Berth on `profile` (each call: new database/bucket)."""
    env: dict[str, str] = {}
    for fixture in PROFILES[profile]:
        factory: EnvFactory = request.getfixturevalue(fixture)
        env.update(factory())
    return env
