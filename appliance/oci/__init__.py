"""Pure OCI knowledge: digests, the name and tag grammar, media types, manifest parsing.

Nothing in this package does I/O.
"""
