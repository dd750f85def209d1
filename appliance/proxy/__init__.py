"""Pull-through cache and mirroring of upstream registries (proxy namespaces)."""
