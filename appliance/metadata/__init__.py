"""Metadata: the database that is the source of truth for what the registry holds."""
