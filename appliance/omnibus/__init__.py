"""Omnibus-style administration: `berth ctl`, the config template, and build information."""
