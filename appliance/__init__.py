"""Berth: a self-hosted container registry appliance."""

__version__ = "0.1.0.dev0"
