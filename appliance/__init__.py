"""Berth: a self-hosted container registry appliance."""

from typing import Any


def __getattr__(name: str) -> Any:
    # `appliance.__version__` is decided once, on first use (appliance/version.py), so that
    # importing the package never runs git.
    if name == "__version__":
        from appliance.version import version  # noqa: PLC0415

        return version()
    raise AttributeError(f"module 'appliance' has no attribute {name!r}")
